//! Echoed secrets are scrubbed inside compressed answers too (SPEC §3.1,
//! threat model T5): an upstream that echoes the injected key in a gzip,
//! deflate, br or zstd body no longer slips it past the scrubber. The
//! body is decoded as it streams and the agent gets the decoded, checked
//! bytes (no `Content-Encoding`); an encoding clavis cannot decode is
//! refused rather than passed unchecked; compressed SSE still arrives
//! event by event.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;
use support::*;

async fn setup() -> (TestCa, Upstream, Clavis) {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    let clavis = Clavis::builder(&standard_yaml())
        .start(Some(&up), Some(&ca))
        .await;
    (ca, up, clavis)
}

fn echoed_notes(clavis: &Clavis) -> usize {
    clavis
        .state
        .audit_events(100)
        .iter()
        .filter(|e| {
            e["action"] == "denied"
                && e["detail"]["note"]
                    .as_str()
                    .is_some_and(|n| n.contains("echoed"))
        })
        .count()
}

#[tokio::test]
async fn an_echo_inside_a_compressed_body_is_masked() {
    let (_ca, _up, clavis) = setup().await;
    // reqwest here decodes nothing: what arrives is what clavis sent.
    let client = clavis.client(Some(("codex", "codex-token")));
    for (i, coding) in ["gzip", "deflate", "br", "zstd"].into_iter().enumerate() {
        let r = client
            .get(format!("https://api.openai.com/encoded/{coding}"))
            .header("accept-encoding", coding)
            .bearer_auth("placeholder")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{coding}");
        assert!(
            r.headers().get("content-encoding").is_none(),
            "{coding}: the agent gets the decoded body"
        );
        assert!(r.headers().get("content-length").is_none(), "{coding}");
        assert_eq!(r.headers()["etag"], "W/\"v1\"", "{coding}");
        let text = r.text().await.unwrap();
        assert!(
            !text.contains(REAL_OPENAI),
            "{coding}: the key went out: {text}"
        );
        assert!(text.contains("[REDACTED]"), "{coding}: {text}");
        let echo: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(echo["path"], format!("/encoded/{coding}"));
        assert_eq!(echoed_notes(&clavis), i + 1, "{coding}: audited");
    }
}

/// Decoding changes the representation, not the content: everything but
/// the masked key arrives as the upstream sent it.
#[tokio::test]
async fn a_compressed_answer_arrives_decoded_and_otherwise_intact() {
    let (_ca, up, clavis) = setup().await;
    let client = clavis.client(Some(("codex", "codex-token")));
    let r = client
        .get("https://api.openai.com/encoded/gzip")
        .header("x-probe", "clean")
        .bearer_auth("placeholder")
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    let echo: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(echo["method"], "GET");
    let probe = echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "x-probe")
        .cloned();
    assert_eq!(probe, Some(serde_json::json!(["x-probe", "clean"])));
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn an_encoding_clavis_cannot_decode_is_refused() {
    let (_ca, _up, clavis) = setup().await;
    let client = clavis.client(Some(("codex", "codex-token")));
    for coding in ["compress", "gzip,br"] {
        let r = client
            .get(format!("https://api.openai.com/encoded/{coding}"))
            .bearer_auth("placeholder")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502, "{coding}");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["type"], "clavis_upstream_encoding", "{err}");
        assert!(!err.to_string().contains(REAL_OPENAI));
    }
}

/// A gzip stream flushed per event is decoded per event: SSE keeps
/// streaming, and the key each event echoes is masked.
#[tokio::test]
async fn compressed_server_sent_events_still_arrive_one_by_one() {
    let (_ca, _up, clavis) = setup().await;
    let client = clavis.client(Some(("codex", "codex-token")));
    let started = Instant::now();
    let r = client
        .get("https://api.openai.com/gzip-sse?n=4&gap_ms=300")
        .bearer_auth("placeholder")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-encoding").is_none());
    let mut arrivals = Vec::new();
    let mut stream = r.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if !chunk.is_empty() {
            arrivals.push((started.elapsed(), chunk));
        }
    }
    let text: String = arrivals
        .iter()
        .map(|(_, c)| String::from_utf8_lossy(c).into_owned())
        .collect();
    assert_eq!(text.matches("data: ").count(), 4, "{text}");
    assert!(!text.contains(REAL_OPENAI), "{text}");
    assert_eq!(text.matches("[REDACTED]").count(), 4, "{text}");
    assert!(
        arrivals.len() >= 3,
        "events were buffered: {} arrivals at {:?}",
        arrivals.len(),
        arrivals.iter().map(|(t, _)| *t).collect::<Vec<_>>()
    );
    let spread = arrivals.last().unwrap().0 - arrivals.first().unwrap().0;
    assert!(spread >= Duration::from_millis(600), "{spread:?}");
}
