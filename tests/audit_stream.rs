//! `GET /v1/audit/stream` (SPEC §12, the console's live audit): Server-Sent
//! Events `id: <seq>`, `event: audit`, `data: <event>`, the same event (same
//! `id`) that `GET /v1/audit` lists; `Last-Event-ID` replays what a client
//! missed; admin only.

// Helpers here are not `#[test]` functions, so clippy.toml's
// allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

const ADMIN: &str = "admin-token-stream-0123456789";

/// One SSE frame: its fields.
#[derive(Debug, Default)]
struct Frame {
    id: Option<u64>,
    event: Option<String>,
    data: Vec<String>,
}

/// Reads a text/event-stream response frame by frame.
struct Reader {
    res: reqwest::Response,
    buf: String,
}

impl Reader {
    /// The next frame with data (comments skipped), within 10 s.
    async fn next(&mut self) -> Frame {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(end) = self.buf.find("\n\n") {
                    let block: String = self.buf.drain(..end + 2).collect();
                    let mut frame = Frame::default();
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("id: ") {
                            frame.id = Some(v.parse().unwrap());
                        } else if let Some(v) = line.strip_prefix("event: ") {
                            frame.event = Some(v.to_owned());
                        } else if let Some(v) = line.strip_prefix("data: ") {
                            frame.data.push(v.to_owned());
                        }
                    }
                    if !frame.data.is_empty() {
                        return frame;
                    }
                    continue;
                }
                let chunk = self.res.chunk().await.unwrap().expect("the stream ended");
                self.buf.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await
        .expect("no frame within 10 s")
    }

    /// The next frame's event, checked for the frame's shape.
    async fn event(&mut self) -> Value {
        let frame = self.next().await;
        assert_eq!(frame.event.as_deref(), Some("audit"), "{frame:?}");
        assert_eq!(frame.data.len(), 1, "one data line: {frame:?}");
        let event: Value = serde_json::from_str(&frame.data[0]).unwrap();
        assert_eq!(Some(event["id"].as_u64().unwrap()), frame.id, "{frame:?}");
        event
    }
}

async fn open(c: &Clavis, token: &str, last: Option<u64>) -> reqwest::Response {
    let mut r = admin_client()
        .get(format!("http://{}/v1/audit/stream", c.admin))
        .bearer_auth(token);
    if let Some(id) = last {
        r = r.header("last-event-id", id.to_string());
    }
    r.send().await.unwrap()
}

async fn get_openai(c: &Clavis, path: &str) {
    let r = c
        .client(Some(("codex", "codex-token")))
        .get(format!("https://api.openai.com{path}"))
        .bearer_auth("placeholder")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn the_audit_stream_sends_each_event_once_with_its_id_and_replays_after_last_event_id() {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    let yaml = format!("admin: {{ token: \"{ADMIN}\" }}\n{}", standard_yaml());
    let c = Clavis::builder(&yaml).start(Some(&up), Some(&ca)).await;

    assert_eq!(open(&c, "codex-token", None).await.status(), 403);
    assert_eq!(open(&c, "wrong", None).await.status(), 401);

    let res = open(&c, ADMIN, None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    assert_eq!(res.headers()["cache-control"], "no-store");
    let mut live = Reader {
        res,
        buf: String::new(),
    };
    get_openai(&c, "/digest/one").await;
    let first = live.event().await;
    assert_eq!(first["action"], "inject");
    assert_eq!(first["detail"]["path"], "/digest/one");
    get_openai(&c, "/digest/two").await;
    let second = live.event().await;
    assert_eq!(
        second["detail"]["path"], "/digest/two",
        "{first} then {second}"
    );
    assert!(second["id"].as_u64() > first["id"].as_u64());

    // The history lists the same events under the same ids, with the
    // upstream's status (the stream sent them when recorded, before it).
    let history = get_json(
        &admin_client(),
        format!("http://{}/v1/audit", c.admin),
        ADMIN,
    )
    .await;
    let listed = history
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == first["id"])
        .expect("the streamed event is in GET /v1/audit");
    assert_eq!(listed["detail"]["path"], "/digest/one");
    assert_eq!(listed["detail"]["status"], 200);

    // A client that reconnects after `first` gets what came since, in order.
    get_openai(&c, "/digest/three").await;
    let mut again = Reader {
        res: open(&c, ADMIN, first["id"].as_u64()).await,
        buf: String::new(),
    };
    let replayed = again.event().await;
    assert_eq!(replayed["id"], second["id"]);
    let next = again.event().await;
    assert_eq!(next["detail"]["path"], "/digest/three");
}
