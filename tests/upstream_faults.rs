//! When the upstream fails, the agent gets clavis's own JSON error with the
//! fitting status (502 unreachable, 504 timeout), never a secret, and never
//! an unverified upstream.

// Helpers here are not `#[test]` functions, so clippy.toml's
// allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use support::*;

/// A loopback port with nothing listening on it.
async fn closed_port() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

#[tokio::test]
async fn upstream_down_is_502_without_secrets() {
    let ca = TestCa::new();
    let closed = closed_port().await;
    // A whole `upstream:` block written here, so the kit adds none.
    let yaml = format!(
        "{}
upstream:
  extra_ca: [\"{}\"]
  connect_timeout: 2s
  request_timeout: 5s
  resolve:
    \"api.openai.com:443\": \"{closed}\"
",
        standard_yaml(),
        ca.pem_path().display()
    );
    let clavis = Clavis::builder(&yaml).start(None, Some(&ca)).await;
    let r = clavis
        .client(Some(("codex", "codex-token")))
        .post("https://api.openai.com/v1/chat/completions")
        .bearer_auth("placeholder")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    // SPEC §9: clavis's own answers are problem documents, marked as its.
    assert_eq!(
        r.headers().get("content-type").unwrap(),
        "application/problem+json"
    );
    assert_eq!(
        r.headers().get("clavis-error").unwrap(),
        "upstream-unreachable"
    );
    let text = r.text().await.unwrap();
    assert!(!text.contains(REAL_OPENAI), "{text}");
    assert!(!text.contains("placeholder"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        json["error"]["type"], "clavis_upstream_unreachable",
        "{text}"
    );
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("api.openai.com"),
        "{text}"
    );
}

#[tokio::test]
async fn silent_upstream_is_504_after_request_timeout() {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    let clavis = Clavis::builder(&standard_yaml())
        .request_timeout("1s")
        .start(Some(&up), Some(&ca))
        .await;
    let client = clavis.client(Some(("codex", "codex-token")));
    // Connections and the leaf certificate are ready before the clock starts.
    let r = client
        .get("https://api.openai.com/v1/models")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let started = Instant::now();
    let r = client
        .get("https://api.openai.com/slow")
        .bearer_auth("placeholder")
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 504);
    let text = r.text().await.unwrap();
    assert!(!text.contains(REAL_OPENAI), "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["error"]["type"], "clavis_upstream_timeout", "{text}");
    assert!(
        took >= Duration::from_millis(900) && took <= Duration::from_secs(3),
        "504 after {took:?}, request_timeout is 1s"
    );
    assert_eq!(up.last().path, "/slow");
}

#[tokio::test]
async fn untrusted_upstream_certificate_is_502_then_trusted_is_200() {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;

    let untrusting = Clavis::builder(&standard_yaml())
        .start(Some(&up), None)
        .await;
    let r = untrusting
        .client(Some(("codex", "codex-token")))
        .get("https://api.openai.com/v1/models")
        .bearer_auth("placeholder")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let text = r.text().await.unwrap();
    assert!(!text.contains(REAL_OPENAI), "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        json["error"]["type"], "clavis_upstream_unreachable",
        "{text}"
    );
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("certificate"),
        "{text}"
    );
    assert!(
        up.seen().is_empty(),
        "a request crossed an unverified TLS connection"
    );
    untrusting.stop().await;

    let trusting = Clavis::builder(&standard_yaml())
        .start(Some(&up), Some(&ca))
        .await;
    let r = trusting
        .client(Some(("codex", "codex-token")))
        .get("https://api.openai.com/v1/models")
        .bearer_auth("placeholder")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.seen().len(), 1);
    assert_eq!(
        up.last().header("authorization"),
        Some(format!("Bearer {REAL_OPENAI}").as_str())
    );
}

/// `GET https://api.openai.com/slow` (which the upstream never answers)
/// with a placeholder key, in the background.
fn slow_call(
    client: &reqwest::Client,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let client = client.clone();
    tokio::spawn(async move {
        client
            .get("https://api.openai.com/slow")
            .bearer_auth("placeholder")
            .send()
            .await
    })
}

/// The status of `GET url` through `client`.
async fn status(client: &reqwest::Client, url: &str) -> u16 {
    client.get(url).send().await.unwrap().status().as_u16()
}

/// Waits until `pending` reads `want`; false after `within`.
async fn settles(pending: &std::sync::atomic::AtomicUsize, want: usize, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if pending.load(std::sync::atomic::Ordering::SeqCst) == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// An agent that goes away (connection closed, or its h2 stream reset) must
/// not leave a credentialed request running upstream (threat model T17/T18:
/// cancel within about a second).
#[tokio::test]
async fn agent_going_away_cancels_the_upstream_request() {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    let clavis = Clavis::builder(&standard_yaml())
        .start(Some(&up), Some(&ca))
        .await;
    let agent = Some(("codex", "codex-token"));

    for (alpn, label) in [(&b"http/1.1"[..], "http/1.1"), (&b"h2"[..], "h2")] {
        let client = clavis.client_builder_alpn(agent, &[alpn]).build().unwrap();
        // Warm: the tunnel and the upstream connection exist.
        assert_eq!(
            status(&client, "https://api.openai.com/v1/models").await,
            200,
            "{label}"
        );

        let call = slow_call(&client);
        assert!(
            settles(&up.slow_pending, 1, Duration::from_secs(10)).await,
            "{label}: /slow never reached the upstream"
        );
        assert_eq!(
            up.last().header("authorization"),
            Some(format!("Bearer {REAL_OPENAI}").as_str())
        );
        // h1: the agent's connection closes; h2: its stream is reset.
        call.abort();
        let _ = call.await;
        if label == "http/1.1" {
            drop(client);
        }
        assert!(
            settles(&up.slow_pending, 0, Duration::from_secs(2)).await,
            "{label}: the upstream request was still running 2 s after the agent left"
        );
    }
}

/// Fifty in-flight streams reset at once (the pattern of Rapid Reset,
/// CVE-2023-44487) leave nothing running upstream, and clavis keeps serving.
#[tokio::test]
async fn reset_streams_leave_nothing_running_upstream() {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    let clavis = Clavis::builder(&standard_yaml())
        .start(Some(&up), Some(&ca))
        .await;
    let agent = Some(("codex", "codex-token"));
    let client = clavis.client_builder_alpn(agent, &[b"h2"]).build().unwrap();
    assert_eq!(
        status(&client, "https://api.openai.com/v1/models").await,
        200
    );

    let calls: Vec<_> = (0..50).map(|_| slow_call(&client)).collect();
    // All 50 are running upstream with the real key; then every stream is
    // reset at once.
    assert!(
        settles(&up.slow_pending, 50, Duration::from_secs(10)).await,
        "only {} of 50 requests reached the upstream",
        up.slow_pending.load(std::sync::atomic::Ordering::SeqCst)
    );
    for c in &calls {
        c.abort();
    }
    for c in calls {
        let _ = c.await;
    }
    assert!(
        settles(&up.slow_pending, 0, Duration::from_secs(2)).await,
        "{} upstream requests still running 2 s after their streams were reset",
        up.slow_pending.load(std::sync::atomic::Ordering::SeqCst)
    );
    let fresh = clavis.client(agent);
    assert_eq!(
        status(&fresh, "https://api.openai.com/v1/models").await,
        200
    );
}

/// However many streams an agent opens, it holds at most
/// `limits.max_upstream_requests` requests against one service at a time;
/// the next is `429` (audited), other services and agents are unaffected,
/// and a finished request frees its slot.
#[tokio::test]
async fn in_flight_requests_per_agent_and_service_are_capped() {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    let yaml = standard_yaml()
        + "  - { name: other, token: other-token, services: [\"*\"] }\n\
           limits: { max_upstream_requests: 2 }\n";
    let clavis = Clavis::builder(&yaml).start(Some(&up), Some(&ca)).await;
    let codex = clavis.client(Some(("codex", "codex-token")));
    let first = slow_call(&codex);
    let second = slow_call(&codex);
    assert!(settles(&up.slow_pending, 2, Duration::from_secs(10)).await);

    let r = codex
        .get("https://api.openai.com/v1/models")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let json: serde_json::Value = r.json().await.unwrap();
    assert_eq!(json["error"]["type"], "clavis_too_many_requests", "{json}");
    let message = json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("codex")
            && message.contains("my-openai")
            && message.contains("max_upstream_requests"),
        "{message}"
    );
    let audit = clavis.state.audit_events(1);
    let last = &audit[0];
    assert_eq!(last["action"], "denied", "{last}");
    assert_eq!(last["entry"], "my-openai", "{last}");

    // Another service of the same agent, and another agent on the same
    // service, have their own counts.
    assert_eq!(status(&codex, "https://api.github.com/user").await, 200);
    let other = clavis.client(Some(("other", "other-token")));
    assert_eq!(
        status(&other, "https://api.openai.com/v1/models").await,
        200
    );

    first.abort();
    let _ = first.await;
    assert!(settles(&up.slow_pending, 1, Duration::from_secs(2)).await);
    assert_eq!(
        status(&codex, "https://api.openai.com/v1/models").await,
        200,
        "the cancelled request's slot is free again"
    );
    second.abort();
}
