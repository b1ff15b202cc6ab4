//! With every target logging at TRACE (clavis, hyper, h2, rustls…), a run of
//! successful, refused and failed exchanges for all five header connectors
//! leaves no secret in the log, in any encoding (SPEC §7).
//!
//! One test only: the tracing subscriber is global to this test binary.

// Helpers here are not `#[test]` functions, so clippy.toml's
// allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use base64::Engine;
use support::logs::Capture;
use support::*;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Each connector: a host, the auth header its SDK sends, and a value.
const CONNECTORS: &[(&str, &str, &str)] = &[
    ("api.openai.com", "authorization", "Bearer placeholder"),
    ("api.anthropic.com", "x-api-key", "placeholder"),
    ("api.github.com", "authorization", "token placeholder"),
    (
        "api.stripe.com",
        "authorization",
        "Bearer sk_test_placeholder",
    ),
    (
        "api.search.brave.com",
        "x-subscription-token",
        "placeholder",
    ),
];

/// The forms a secret could take in a log line: raw, hex, and base64 at each
/// of the three alignments it can have inside a longer encoded value, in
/// both base64 alphabets.
fn encodings(secret: &str) -> Vec<String> {
    let mut out = vec![
        secret.to_owned(),
        secret
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
    ];
    for engine in [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::URL_SAFE,
    ] {
        out.push(engine.encode(secret));
        for offset in 0..3 {
            let mut bytes = vec![b'\0'; offset];
            bytes.extend_from_slice(secret.as_bytes());
            let full = engine.encode(&bytes);
            // Drop the quads touched by the prefix and by the end.
            let start = if offset == 0 { 0 } else { 4 };
            let end = full.len() - 4;
            out.push(full[start..end].to_owned());
        }
    }
    out
}

async fn tunnel_request(clavis: &Clavis, host: &str, request: &str) -> String {
    let (status, tcp) = connect_raw(clavis.proxy, &format!("{host}:443"), "").await;
    assert_eq!(status, 200);
    let mut tls = tls_over(tcp, host, &clavis.ca_pem(), &[b"http/1.1"])
        .await
        .unwrap();
    raw_exchange(&mut tls, request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_hold_no_secrets() {
    let capture = Capture::default();
    tracing_subscriber::registry()
        .with(EnvFilter::new("trace"))
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(capture.clone()),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(capture.clone()),
        )
        .init();

    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    let clavis = Clavis::builder(&standard_yaml())
        .start(Some(&up), Some(&ca))
        .await;
    let codex = clavis.client(Some(("codex", "codex-token")));
    let codex_h2 = clavis
        .client_builder(Some(("codex", "codex-token")))
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let narrow = clavis.client(Some(("narrow", "narrow-token")));

    for (host, header, value) in CONNECTORS {
        // Success, over h1 and h2.
        for client in [&codex, &codex_h2] {
            let r = client
                .post(format!("https://{host}/v1/things?limit=1"))
                .header(*header, *value)
                .body("{\"q\":1}")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{host}");
            r.bytes().await.unwrap();
        }
        // 403: out of scope for `narrow` (github: a service that does not exist).
        let placeholder = if *host == "api.github.com" {
            "token clavis:nope".to_owned()
        } else {
            (*value).to_owned()
        };
        let r = narrow
            .get(format!("https://{host}/v1/things"))
            .header(*header, placeholder)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{host}");
        // 421: Host differs from the tunnel.
        let r = tunnel_request(
            &clavis,
            host,
            &format!("GET /v1/x HTTP/1.1\r\nHost: evil.test\r\n{header}: {value}\r\n\r\n"),
        )
        .await;
        assert_eq!(status_of(&r), 421, "{host}: {r}");
        // 403: plain http.
        let r = codex
            .get(format!("http://{host}/v1/things"))
            .header(*header, *value)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{host}");
    }
    // A redirect, an SSE stream, a 407 with a wrong token, a tunnel.
    let r = codex
        .get("https://api.openai.com/redirect")
        .bearer_auth("placeholder")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let r = codex
        .get("https://api.openai.com/sse?n=3&gap_ms=10")
        .bearer_auth("placeholder")
        .send()
        .await
        .unwrap();
    r.bytes().await.unwrap();
    let r = clavis
        .client(Some(("codex", "wrong-token")))
        .get("https://api.openai.com/v1/models")
        .send()
        .await;
    assert!(r.is_err() || r.is_ok_and(|r| r.status() == 407));
    let r = codex
        .get("http://plain.test.example/x")
        .bearer_auth("placeholder")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // 502: every connector's upstream refuses connections…
    let mut builder = Clavis::builder(&standard_yaml());
    for (host, _, _) in CONNECTORS {
        builder = builder.resolve(&format!("{host}:443"), "127.0.0.1:1");
    }
    let down = builder.start(Some(&up), Some(&ca)).await;
    // …or presents a certificate clavis does not trust.
    let untrusted = Clavis::builder(&standard_yaml())
        .start(Some(&up), None)
        .await;
    for clavis in [&down, &untrusted] {
        let client = clavis.client(Some(("codex", "codex-token")));
        for (host, header, value) in CONNECTORS {
            let r = client
                .get(format!("https://{host}/v1/things"))
                .header(*header, *value)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 502, "{host}");
        }
    }

    // The generated admin token (written beside the CA key, never logged).
    let admin_tokens: Vec<String> = [&clavis, &down, &untrusted]
        .iter()
        .filter_map(|c| std::fs::read_to_string(c.dir.path().join("ca/admin.token")).ok())
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();

    // Let connection tasks finish and log their ends.
    clavis.stop().await;
    down.stop().await;
    untrusted.stop().await;

    let log = capture.text();
    assert!(!log.is_empty(), "nothing was logged");
    assert!(log.contains("exchange"), "no exchange line in the log");

    let mut secrets: Vec<String> = [
        REAL_OPENAI,
        REAL_ANTHROPIC,
        REAL_GITHUB,
        REAL_STRIPE,
        REAL_BRAVE,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut leaks = Vec::new();
    for secret in &secrets {
        for form in encodings(secret) {
            if let Some(at) = log.find(&form) {
                let line_start = log[..at].rfind('\n').map_or(0, |i| i + 1);
                let line_end = log[at..].find('\n').map_or(log.len(), |i| at + i);
                leaks.push(format!("{form:?} in: {}", &log[line_start..line_end]));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "secrets in the log:\n{}",
        leaks.join("\n")
    );

    // Agent tokens are secrets too (they appear base64'd in
    // Proxy-Authorization: `codex:codex-token`).
    secrets.clear();
    for (agent, token) in [
        ("codex", "codex-token"),
        ("narrow", "narrow-token"),
        ("codex", "wrong-token"),
    ] {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{agent}:{token}"));
        assert!(
            !log.contains(&basic),
            "Proxy-Authorization of {agent} logged"
        );
        secrets.push(token.to_owned());
    }
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "agent token {secret} logged"
        );
    }
    for token in &admin_tokens {
        assert!(!log.contains(token.as_str()), "the admin token was logged");
    }
}

#[test]
fn encodings_catch_a_secret_inside_a_longer_base64_value() {
    let secret = REAL_OPENAI;
    let forms = encodings(secret);
    for prefix in ["", "a", "ab", "user:", "Bearer "] {
        for suffix in ["", "z", "zz", "\n"] {
            let text = format!("{prefix}{secret}{suffix}");
            for engine in [
                base64::engine::general_purpose::STANDARD,
                base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ] {
                let encoded = engine.encode(&text);
                assert!(
                    forms.iter().any(|f| encoded.contains(f.as_str())),
                    "{text:?} → {encoded} not caught"
                );
            }
        }
    }
}
