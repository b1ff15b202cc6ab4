//! `clavis audit --follow`: new audit events as they happen, from
//! `GET /v1/audit/stream` (Server-Sent Events, `event: audit` with the
//! event's JSON as `data`) where clavis serves it, else by polling
//! `GET /v1/audit`. Both are a [`Source`] of events; which one is used is
//! decided once, by whether the stream route answers `404`.

use std::collections::{HashSet, VecDeque};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use http::Method;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;

use super::admin::{audit_row, AUDIT_HEADER};
use super::client::Client;
use super::{out, table, CliError};

const POLL_EVERY: Duration = Duration::from_secs(1);
/// How many events one poll asks for.
const POLL_WINDOW: usize = 200;
/// A use whose answer has not come yet waits this long for its status.
const STATUS_WAIT: Duration = Duration::from_secs(10);
/// Keys of events already printed, remembered for deduplication.
const REMEMBER: usize = 4096;
/// An SSE event larger than this is refused (the stream is broken).
const MAX_EVENT: usize = 1 << 20;

/// Which events to print (the stream sends all).
pub(crate) struct Filter {
    pub(crate) actor: Option<String>,
    pub(crate) entry: Option<String>,
}

impl Filter {
    fn keeps(&self, e: &Value) -> bool {
        let is = |key: &str, want: &Option<String>| {
            want.as_deref()
                .is_none_or(|w| e.get(key).and_then(Value::as_str) == Some(w))
        };
        is("actor", &self.actor) && is("entry", &self.entry)
    }
}

/// Prints `initial` (oldest first), then every new event until Ctrl-C.
pub(crate) async fn follow(
    client: &Client,
    initial: Vec<Value>,
    filter: Filter,
    json: bool,
) -> Result<ExitCode, CliError> {
    if !json {
        out(&format!("{}\n", AUDIT_HEADER.join("  ")))?;
    }
    let mut seen = Seen::default();
    for e in &initial {
        seen.insert(key(e));
        print(e, json)?;
    }
    let mut source = match client.open_stream("/v1/audit/stream").await? {
        Some(response) => Source::Stream(Sse::new(response)),
        None => {
            let mut poll = Poll {
                query: poll_query(&filter),
                seen,
                waiting: Vec::new(),
            };
            poll.prime(client).await?;
            Source::Poll(poll)
        }
    };
    loop {
        let events = tokio::select! {
            r = source.next(client) => r?,
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        };
        for e in events.iter().filter(|e| filter.keeps(e)) {
            print(e, json)?;
        }
    }
}

fn print(e: &Value, json: bool) -> Result<(), CliError> {
    if json {
        return out(&format!("{e}\n"));
    }
    let row: Vec<String> = audit_row(e).iter().map(|c| table::printable(c)).collect();
    out(&format!("{}\n", row.join("  ")))
}

fn poll_query(filter: &Filter) -> String {
    let mut q = format!("/v1/audit?limit={POLL_WINDOW}");
    for (k, v) in [("actor", &filter.actor), ("entry", &filter.entry)] {
        if let Some(v) = v {
            q.push_str(&format!(
                "&{k}={}",
                crate::encoding::percent_encode(v.as_bytes())
            ));
        }
    }
    q
}

/// Where new events come from.
enum Source {
    Stream(Sse),
    Poll(Poll),
}

impl Source {
    /// The next events (possibly none), oldest first.
    async fn next(&mut self, client: &Client) -> Result<Vec<Value>, CliError> {
        match self {
            Source::Stream(sse) => sse.next().await.map(|e| vec![e]),
            Source::Poll(poll) => poll.next(client).await,
        }
    }
}

/// A Server-Sent Events body, cut into events at blank lines.
struct Sse {
    body: Incoming,
    buf: BytesMut,
}

impl Sse {
    fn new(response: http::Response<Incoming>) -> Sse {
        Sse {
            body: response.into_body(),
            buf: BytesMut::new(),
        }
    }

    /// The next `audit` event's JSON.
    async fn next(&mut self) -> Result<Value, CliError> {
        loop {
            while let Some(block) = cut_event(&mut self.buf) {
                if let Some(event) = parse_event(&block) {
                    return Ok(event);
                }
            }
            if self.buf.len() > MAX_EVENT {
                return Err(CliError::Failed(
                    "the audit stream sent an event over 1 MiB".into(),
                ));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    return Err(CliError::Failed(format!("the audit stream broke off: {e}")))
                }
                None => {
                    return Err(CliError::Failed(
                        "the audit stream ended (clavis stopped?)".into(),
                    ))
                }
            }
        }
    }
}

/// One event's lines, up to the blank line that ends it (`\n\n` or
/// `\r\n\r\n`), taken off the front of `buf`.
fn cut_event(buf: &mut BytesMut) -> Option<String> {
    let text = buf.as_ref();
    let (at, len) = [&b"\r\n\r\n"[..], b"\n\n", b"\r\r"]
        .iter()
        .filter_map(|sep| memchr::memmem::find(text, sep).map(|i| (i, sep.len())))
        .min()?;
    let block = String::from_utf8_lossy(&text[..at]).into_owned();
    buf.advance(at + len);
    Some(block)
}

/// An `audit` event's `data` as JSON; other events and comments: `None`.
fn parse_event(block: &str) -> Option<Value> {
    let mut name = "message";
    let mut data = String::new();
    for line in block.lines() {
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => name = value,
            "data" => {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            _ => {}
        }
    }
    if name != "audit" {
        return None;
    }
    serde_json::from_str(&data).ok()
}

/// Polling `GET /v1/audit`: events are told apart by their content
/// without the status (which clavis fills in when the answer comes).
struct Poll {
    query: String,
    seen: Seen,
    /// New uses without a status yet, and since when: printed once the
    /// status is there, or after [`STATUS_WAIT`].
    waiting: Vec<(String, Instant)>,
}

impl Poll {
    /// Marks the whole window as seen: what came before `--limit` is old.
    async fn prime(&mut self, client: &Client) -> Result<(), CliError> {
        let v = client.call(Method::GET, &self.query, None).await?;
        for e in v.as_array().map_or(&[][..], Vec::as_slice) {
            self.seen.insert(key(e));
        }
        Ok(())
    }

    async fn next(&mut self, client: &Client) -> Result<Vec<Value>, CliError> {
        tokio::time::sleep(POLL_EVERY).await;
        let v = client.call(Method::GET, &self.query, None).await?;
        let mut fresh = Vec::new();
        let list = v.as_array().map_or(&[][..], Vec::as_slice);
        for e in list.iter().rev() {
            let k = key(e);
            if self.seen.contains(&k) {
                continue;
            }
            let has_status = e.pointer("/detail/status").is_some();
            let is_use = matches!(
                e.get("action").and_then(Value::as_str),
                Some("inject" | "proxy")
            );
            if is_use && !has_status {
                let since = match self.waiting.iter().find(|(w, _)| *w == k) {
                    Some((_, t)) => *t,
                    None => {
                        self.waiting.push((k.clone(), Instant::now()));
                        Instant::now()
                    }
                };
                if since.elapsed() < STATUS_WAIT {
                    continue;
                }
            }
            self.waiting.retain(|(w, _)| *w != k);
            self.seen.insert(k);
            fresh.push(e.clone());
        }
        Ok(fresh)
    }
}

/// An event's identity: its JSON without `detail.status`.
fn key(e: &Value) -> String {
    let mut e = e.clone();
    if let Some(d) = e.get_mut("detail").and_then(Value::as_object_mut) {
        d.remove("status");
    }
    e.to_string()
}

/// The keys printed, the oldest forgotten first.
#[derive(Default)]
struct Seen {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    fn contains(&self, k: &str) -> bool {
        self.set.contains(k)
    }

    fn insert(&mut self, k: String) {
        if self.set.insert(k.clone()) {
            self.order.push_back(k);
        }
        while self.order.len() > REMEMBER {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_cut_at_blank_lines() {
        let mut buf = BytesMut::from(
            &b": comment\n\nevent: audit\ndata: {\"action\":\"inject\"}\n\nevent: ping\ndata: x\r\n\r\nevent: audit\ndata: {\"a\":"[..],
        );
        let blocks: Vec<String> = std::iter::from_fn(|| cut_event(&mut buf)).collect();
        assert_eq!(blocks.len(), 3);
        assert_eq!(parse_event(&blocks[0]), None);
        assert_eq!(parse_event(&blocks[1]).unwrap()["action"], "inject");
        assert_eq!(parse_event(&blocks[2]), None);
        assert_eq!(&buf[..], b"event: audit\ndata: {\"a\":");
    }

    #[test]
    fn multi_line_data_joins() {
        let e = parse_event("event: audit\ndata: {\"a\":\ndata: 1}").unwrap();
        assert_eq!(e["a"], 1);
    }

    #[test]
    fn keys_ignore_the_status() {
        let a = serde_json::json!({"time": "t", "detail": {"path": "/", "status": 200}});
        let b = serde_json::json!({"time": "t", "detail": {"path": "/"}});
        assert_eq!(key(&a), key(&b));
    }

    #[test]
    fn filter_by_actor_and_entry() {
        let f = Filter {
            actor: Some("proxy:a".into()),
            entry: None,
        };
        assert!(f.keeps(&serde_json::json!({"actor": "proxy:a", "entry": "x"})));
        assert!(!f.keeps(&serde_json::json!({"actor": "admin"})));
    }
}
