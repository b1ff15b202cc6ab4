//! Responses stream back as they arrive (SSE event by event), and large
//! bodies flow through in both directions without being buffered.

// Helpers here are not `#[test]` functions, so clippy.toml's
// allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use support::*;

const HUNDRED_MIB: usize = 100 * 1024 * 1024;
const RSS_BOUND_KIB: u64 = 64 * 1024;

/// The two 100 MiB tests measure the RSS of the whole test process, so they
/// must not run at the same time.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn setup() -> (TestCa, Upstream, Clavis) {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    // Large transfers on a shared, debug-built machine: a generous timeout
    // (it bounds the wait for the response head only).
    let clavis = Clavis::builder(&standard_yaml())
        .request_timeout("60s")
        .start(Some(&up), Some(&ca))
        .await;
    (ca, up, clavis)
}

/// VmRSS of this process (clavis runs in it), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn sse_arrives_event_by_event(client: reqwest::Client, version: reqwest::Version) {
    let started = Instant::now();
    let r = client
        .get("https://api.openai.com/sse?n=5&gap_ms=300")
        .bearer_auth("placeholder")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), version);
    assert_eq!(
        r.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
    let mut arrivals: Vec<(Duration, Bytes)> = Vec::new();
    let mut stream = r.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if !chunk.is_empty() {
            arrivals.push((started.elapsed(), chunk));
        }
    }
    let all: Vec<u8> = arrivals.iter().flat_map(|(_, c)| c.to_vec()).collect();
    let text = String::from_utf8(all).unwrap();
    assert_eq!(text.matches("data: ").count(), 5, "{text}");
    for i in 0..5 {
        assert!(text.contains(&format!("data: {{\"i\":{i}}}\n\n")), "{text}");
    }
    assert!(
        arrivals.len() >= 4,
        "events were buffered: {} arrivals at {:?}",
        arrivals.len(),
        arrivals.iter().map(|(t, _)| *t).collect::<Vec<_>>()
    );
    let first = arrivals.iter().position(|(_, c)| c.starts_with(b"data: "));
    let last = arrivals.iter().rposition(|(_, c)| c.ends_with(b"\n\n"));
    let (first, last) = (arrivals[first.unwrap()].0, arrivals[last.unwrap()].0);
    assert!(
        last - first >= Duration::from_millis(900),
        "first event at {first:?}, last at {last:?}: not streamed"
    );
}

#[tokio::test]
async fn sse_streams_over_h1() {
    let (_ca, up, clavis) = setup().await;
    let client = clavis
        .client_builder_alpn(Some(("codex", "codex-token")), &[b"http/1.1"])
        .http1_only()
        .build()
        .unwrap();
    sse_arrives_event_by_event(client, reqwest::Version::HTTP_11).await;
    assert_eq!(
        up.last().header("authorization"),
        Some(format!("Bearer {REAL_OPENAI}").as_str())
    );
}

#[tokio::test]
async fn sse_streams_over_h2() {
    let (_ca, up, clavis) = setup().await;
    let client = clavis
        .client_builder(Some(("codex", "codex-token")))
        .http2_prior_knowledge()
        .build()
        .unwrap();
    sse_arrives_event_by_event(client, reqwest::Version::HTTP_2).await;
    assert_eq!(
        up.last().header("authorization"),
        Some(format!("Bearer {REAL_OPENAI}").as_str())
    );
}

#[tokio::test]
async fn hundred_mib_download_is_streamed() {
    let _heavy = HEAVY.lock().await;
    let (_ca, up, clavis) = setup().await;
    let client = clavis.client(Some(("codex", "codex-token")));
    // Warm up: connections, pools, leaf certificate, TLS sessions.
    let r = client
        .get("https://api.openai.com/bytes?n=1048576")
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), 1024 * 1024);

    let before = rss_kib();
    let r = client
        .get(format!("https://api.openai.com/bytes?n={HUNDRED_MIB}"))
        .bearer_auth("placeholder")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut total = 0usize;
    let mut peak = before;
    let mut stream = r.bytes_stream();
    while let Some(chunk) = stream.next().await {
        total += chunk.unwrap().len();
        if total % (8 * 1024 * 1024) < 64 * 1024 {
            peak = peak.max(rss_kib());
        }
    }
    let after = rss_kib();
    peak = peak.max(after);
    assert_eq!(total, HUNDRED_MIB);
    assert!(
        peak.saturating_sub(before) < RSS_BOUND_KIB,
        "RSS grew from {before} KiB to {peak} KiB during a 100 MiB download"
    );
    assert_eq!(up.seen().len(), 2);
    assert_eq!(
        up.last().header("authorization"),
        Some(format!("Bearer {REAL_OPENAI}").as_str())
    );
}

#[tokio::test]
async fn hundred_mib_chunked_upload_is_streamed() {
    let _heavy = HEAVY.lock().await;
    let (_ca, up, clavis) = setup().await;
    let client = clavis.client(Some(("codex", "codex-token")));
    // Warm up.
    let r = client
        .post("https://api.openai.com/v1/files")
        .body(vec![b'y'; 1024 * 1024])
        .send()
        .await
        .unwrap();
    let json: serde_json::Value = r.json().await.unwrap();
    assert_eq!(json["body_len"], 1024 * 1024);

    let before = rss_kib();
    let chunk = Bytes::from(vec![b'z'; 64 * 1024]);
    let chunks = HUNDRED_MIB / chunk.len();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let p = peak.clone();
    let body = futures_util::stream::iter(0..chunks).map(move |i| {
        if i % 128 == 0 {
            p.fetch_max(rss_kib(), std::sync::atomic::Ordering::Relaxed);
        }
        Ok::<_, std::io::Error>(chunk.clone())
    });
    let r = client
        .post("https://api.openai.com/v1/files")
        .bearer_auth("placeholder")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let json: serde_json::Value = r.json().await.unwrap();
    let after = rss_kib();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed).max(after);
    assert_eq!(json["body_len"], HUNDRED_MIB);
    assert_eq!(up.last().body_len, HUNDRED_MIB);
    assert_eq!(
        up.last().header("authorization"),
        Some(format!("Bearer {REAL_OPENAI}").as_str())
    );
    assert!(
        peak.saturating_sub(before) < RSS_BOUND_KIB,
        "RSS grew from {before} KiB to {peak} KiB during a 100 MiB upload"
    );
}
