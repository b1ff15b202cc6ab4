//! Credentials stored through the API and then used every way there is (the
//! proxy port through `HTTPS_PROXY`, `/v1/proxy`, reveal) must show up in no
//! API answer but reveal's, in no audit entry (ring or file), in no
//! `/metrics` line, in no byte of the sealed snapshot, and in no line of the
//! real binary's trace-level log — in raw, base64 or hex form.

// Helpers here are not `#[test]` functions, so clippy.toml's
// allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use support::*;

const ADMIN: &str = "admin-token-secrets-0123456789";

/// Stored through the API: (service, connector, host, secret).
const STORED: &[(&str, &str, &str, &str)] = &[
    (
        "api-openai",
        "openai",
        "api.openai.com",
        "sk-SECRET-everywhere-openai-7f3a9c51",
    ),
    (
        "api-anthropic",
        "anthropic",
        "api.anthropic.com",
        "sk-ant-SECRET-everywhere-2b8e1d64",
    ),
    (
        "api-github",
        "github",
        "api.github.com",
        "ghp_SECRETeverywhere5c4d3e2f1a0b",
    ),
    (
        "api-stripe",
        "stripe",
        "api.stripe.com",
        "sk_test_SECRETeverywhere9a8b7c6d",
    ),
];
/// Defined in the config file.
const CONFIG_BRAVE: &str = "BSA-SECRET-config-brave-4e5f6a7b8c";
/// Sent in a refused store: never stored, never echoed either.
const REFUSED: &str = "pk-SECRET-refused-value-1d2c3b4a";

fn secrets() -> Vec<&'static str> {
    let mut v: Vec<&str> = STORED.iter().map(|s| s.3).collect();
    v.push(CONFIG_BRAVE);
    v.push(REFUSED);
    v
}

/// The forms a secret could take in a text or byte stream: raw, hex (both
/// cases), base64 and base64url at each of the three alignments (the part
/// that depends on the secret alone).
fn forms(secret: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![("raw".to_owned(), secret.as_bytes().to_vec())];
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    out.push(("hex".into(), hex.clone().into_bytes()));
    out.push(("HEX".into(), hex.to_uppercase().into_bytes()));
    for (label, engine) in [
        ("base64", &base64::engine::general_purpose::STANDARD),
        ("base64url", &base64::engine::general_purpose::URL_SAFE),
    ] {
        for pad in 0..3usize {
            let mut input = vec![0u8; pad];
            input.extend_from_slice(secret.as_bytes());
            let enc = engine.encode(&input);
            let skip = (pad * 8).div_ceil(6);
            let inner = &enc[skip..enc.len() - 4];
            out.push((format!("{label}@{pad}"), inner.as_bytes().to_vec()));
        }
    }
    out
}

/// Which secret, in which form, `haystack` contains.
fn leaks(haystack: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for s in secrets() {
        for (form, needle) in forms(s) {
            if haystack
                .windows(needle.len())
                .any(|w| w == needle.as_slice())
            {
                found.push(format!("{s} ({form})"));
            }
        }
    }
    found
}

/// The detector itself: each form is found inside a larger encoded stream.
#[test]
fn leak_detector_finds_every_form() {
    let secret = STORED[0].3;
    for prefix in ["", "a", "ab", "abc"] {
        let payload = format!("{prefix}{{\"k\":\"{secret}\"}}tail");
        for encoded in [
            base64::engine::general_purpose::STANDARD.encode(&payload),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&payload),
            payload.bytes().map(|b| format!("{b:02x}")).collect(),
            payload.bytes().map(|b| format!("{b:02X}")).collect(),
            payload.clone(),
        ] {
            assert!(!leaks(encoded.as_bytes()).is_empty(), "missed in {encoded}");
        }
    }
    assert!(leaks(b"nothing to see").is_empty());
}

struct Proc {
    child: Child,
    dir: tempfile::TempDir,
    admin: SocketAddr,
    proxy: SocketAddr,
}

impl Proc {
    fn log(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("clavis.log")).unwrap_or_default()
    }

    fn snapshot(&self) -> PathBuf {
        self.dir.path().join("store.snap")
    }

    fn base(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// An HTTPS client going through the proxy port as agent `codex`,
    /// trusting the binary's CA only (as the kit's `Clavis::client`).
    fn agent_client(&self) -> reqwest::Client {
        use rustls::pki_types::pem::PemObject;
        let pem = std::fs::read(self.dir.path().join("ca/ca.pem")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(c.unwrap()).unwrap();
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .proxy(reqwest::Proxy::all(format!("http://codex:codex-token@{}", self.proxy)).unwrap())
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL);
            }
            let _ = self.child.wait();
        }
    }
}

/// The real binary at trace level, logs to a file, with a snapshot and an
/// audit file, `upstream.resolve` pointing every host at the echo upstream.
async fn start(up: &Upstream, ca: &TestCa) -> Proc {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    std::fs::write(dir.path().join("master.key"), "7".repeat(64)).unwrap();
    // Master key files readable by others are refused.
    std::fs::set_permissions(
        dir.path().join("master.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let proxy = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut yaml = format!(
        "proxy: {{ listen: \"{proxy}\" }}\n\
         admin: {{ listen: \"{admin}\", token: \"{ADMIN}\" }}\n\
         audit: {{ file: \"{d}/audit.jsonl\" }}\n\
         ca: {{ cert: \"{d}/ca/ca.pem\", key: \"{d}/ca/ca.key\", bundle: \"{d}/ca/bundle.pem\" }}\n\
         store: {{ master_key_file: \"{d}/master.key\", snapshot: \"{d}/store.snap\" }}\n\
         upstream:\n  extra_ca: [\"{}\"]\n  resolve:\n",
        ca.pem_path().display()
    );
    for host in &up.hosts {
        yaml.push_str(&format!("    \"{host}:443\": \"{}\"\n", up.addr));
    }
    yaml.push_str(&format!(
        "services:\n  - {{ name: my-brave, connector: brave-search, credentials: {{ api_key: \"{CONFIG_BRAVE}\" }} }}\n\
         agents:\n  - {{ name: codex, token: codex-token, services: [\"*\"] }}\n  \
         - {{ name: revealer, token: revealer-token, services: [\"*\"], reveal: true }}\n"
    ));
    std::fs::write(dir.path().join("clavis.yaml"), &yaml).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_clavis"))
        .args(["serve", "--log-format", "json", "--config"])
        .arg(dir.path().join("clavis.yaml"))
        .env("RUST_LOG", "trace")
        // The single-threaded scheduler clavis picks on one CPU
        // (tests/persistence.rs runs the multi-threaded one).
        .env("TOKIO_WORKER_THREADS", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.path().join("clavis.stdout")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("clavis.log")).unwrap())
        .spawn()
        .unwrap();
    let mut p = Proc {
        child,
        dir,
        admin,
        proxy,
    };
    let c = admin_client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(s)) = p.child.try_wait() {
            panic!("clavis exited {s}:\n{}", String::from_utf8_lossy(&p.log()));
        }
        if let Ok(r) = c.get(format!("{}/readyz", p.base())).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "clavis not ready in 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = &mut p;
    p
}

/// Everything one admin call answered: status line, headers and body.
async fn answer(label: &str, r: reqwest::Response) -> (String, u16, Vec<u8>) {
    let status = r.status().as_u16();
    let mut text = format!("{status}\n");
    for (k, v) in r.headers() {
        text.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
    }
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(&r.bytes().await.unwrap_or_default());
    (label.to_owned(), status, bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_answers_audit_metrics_snapshot_or_logs() {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    let p = start(&up, &ca).await;
    let base = p.base();
    // No redirect following: /v1/proxy hands 3xx back as they are.
    let c = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // (label, status, bytes) of every admin answer that must hold no secret.
    let mut answers = Vec::new();
    let mut reveals = Vec::new();

    // Store: register, store (one refused attempt first), read back.
    for (name, connector, _, secret) in STORED {
        let r = c
            .post(format!("{base}/v1/services"))
            .bearer_auth(ADMIN)
            .json(&json!({"name": name, "connector_name": connector}))
            .send()
            .await
            .unwrap();
        answers.push(answer(&format!("create {name}"), r).await);
        let r = c
            .post(format!("{base}/v1/services/{name}/credentials"))
            .bearer_auth(ADMIN)
            .json(&json!({"token_type": "api_key", "data": {"api_key": REFUSED}}))
            .send()
            .await
            .unwrap();
        let a = answer(&format!("refused store {name}"), r).await;
        assert_eq!(a.1, 422, "{}", String::from_utf8_lossy(&a.2));
        answers.push(a);
        let r = c
            .post(format!("{base}/v1/services/{name}/credentials"))
            .bearer_auth(ADMIN)
            .json(&json!({"token_type": "api_key", "data": {"api_key": secret, "note": "x"}}))
            .send()
            .await
            .unwrap();
        let a = answer(&format!("store {name}"), r).await;
        assert_eq!(a.1, 200, "{}", String::from_utf8_lossy(&a.2));
        answers.push(a);
    }

    // Use them through the proxy port, as an agent with HTTPS_PROXY does.
    // The echo upstream's /sse and /bytes routes answer without echoing the
    // request (echo scrubbing has its own test below).
    let agent = p.agent_client();
    let mut proxied = Vec::new();
    for (name, _, host, _) in STORED.iter().copied().chain([(
        "my-brave",
        "brave-search",
        "api.search.brave.com",
        CONFIG_BRAVE,
    )]) {
        for path in ["/sse?n=2&gap_ms=1", "/bytes?n=100", "/status/201"] {
            let r = agent
                .get(format!("https://{host}{path}"))
                .header("authorization", "Bearer placeholder")
                .header("x-api-key", "placeholder")
                .send()
                .await
                .unwrap_or_else(|e| panic!("proxy port {host}{path}: {e}"));
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            assert!(
                (200..300).contains(&status),
                "proxy port {host}{path} ({name}): {status} {text}"
            );
            if !path.starts_with("/status") {
                proxied.push((format!("proxy port {host}{path}"), text));
            }
        }
        // /v1/proxy as the admin and as an agent.
        for token in [ADMIN, "codex-token"] {
            let r = c
                .post(format!("{base}/v1/proxy/{name}"))
                .bearer_auth(token)
                .json(&json!({"method": "GET", "path": "/sse", "params": {"n": 2, "gap_ms": 1}}))
                .send()
                .await
                .unwrap();
            let a = answer(&format!("/v1/proxy/{name} /sse"), r).await;
            assert_eq!(a.1, 200, "{}", String::from_utf8_lossy(&a.2));
            answers.push(a);
            let r = c
                .post(format!("{base}/v1/proxy/{name}"))
                .bearer_auth(token)
                .json(&json!({"method": "POST", "path": "/redirect", "body": {"x": 1}}))
                .send()
                .await
                .unwrap();
            let a = answer(&format!("/v1/proxy/{name} /redirect"), r).await;
            assert_eq!(a.1, 302, "{}", String::from_utf8_lossy(&a.2));
            answers.push(a);
        }
        // Reveal: the one answer that carries the secret.
        for token in [ADMIN, "revealer-token"] {
            let r = c
                .get(format!("{base}/v1/services/{name}/token"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            reveals.push(r.json::<Value>().await.unwrap());
        }
        let r = c
            .get(format!("{base}/v1/services/{name}/token"))
            .bearer_auth("codex-token")
            .send()
            .await
            .unwrap();
        let a = answer(&format!("non-reveal agent token {name}"), r).await;
        assert_eq!(a.1, 403);
        answers.push(a);
    }
    for (i, (_, _, _, secret)) in STORED.iter().enumerate() {
        assert_eq!(reveals[2 * i]["access_token"], *secret);
    }
    // The upstream did receive the real credentials (so they were used).
    for (_, _, host, secret) in STORED {
        assert!(
            up.seen()
                .iter()
                .any(|s| s.host.starts_with(host)
                    && s.headers.iter().any(|(_, v)| v.contains(secret))),
            "{host} never saw its credential"
        );
    }

    // Every read-only view.
    for (label, url, token) in [
        ("list (admin)", "/v1/services", ADMIN),
        ("list (agent)", "/v1/services", "codex-token"),
        ("one", "/v1/services/api-openai", ADMIN),
        ("one by agent", "/v1/services/api-github", "codex-token"),
        ("config one", "/v1/services/my-brave", ADMIN),
        ("audit", "/v1/audit?limit=1000", ADMIN),
        (
            "audit by entry",
            "/v1/audit?limit=1000&entry=api-stripe",
            ADMIN,
        ),
        ("openapi", "/openapi.json", ADMIN),
        ("healthz", "/healthz", ADMIN),
        ("no route", "/v1/nope", ADMIN),
    ] {
        let r = c
            .get(format!("{base}{url}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        answers.push(answer(label, r).await);
    }
    let audit: Value = get_json(&c, format!("{base}/v1/audit?limit=1000"), ADMIN).await;
    let actions: std::collections::BTreeSet<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for want in ["store", "inject", "proxy", "reveal"] {
        assert!(
            actions.contains(want),
            "no {want:?} in the audit: {actions:?}"
        );
    }

    // SPEC §5 lists GET /metrics: an answer that is not the metrics (a 404,
    // an empty body) would leave the leak check below nothing to look at.
    let metrics = answer(
        "metrics",
        c.get(format!("{base}/metrics")).send().await.unwrap(),
    )
    .await;
    let text = String::from_utf8_lossy(&metrics.2);
    assert_eq!(metrics.1, 200, "GET /metrics: {text}");
    assert!(
        text.contains("clavis_requests_total{") && text.contains("clavis_build_info"),
        "GET /metrics holds no clavis metrics: {text}"
    );
    answers.push(metrics);

    let mut problems = Vec::new();
    for (label, _, bytes) in &answers {
        let l = leaks(bytes);
        if !l.is_empty() {
            problems.push(format!("answer {label:?}: {l:?}"));
        }
    }
    // Reveal answers hold their own secret and no other.
    for (i, r) in reveals.iter().enumerate() {
        let own = r["access_token"].as_str().unwrap_or_default().to_owned();
        let text = r.to_string().replace(&own, "");
        let l = leaks(text.as_bytes());
        if !l.is_empty() {
            problems.push(format!("reveal #{i} holds another secret: {l:?}"));
        }
    }
    let audit_file = std::fs::read(p.dir.path().join("audit.jsonl")).unwrap();
    assert!(!audit_file.is_empty(), "the audit file is empty");
    for (label, bytes) in [
        ("audit file", audit_file),
        ("snapshot", std::fs::read(p.snapshot()).unwrap()),
        (
            "snapshot temp file",
            std::fs::read(p.dir.path().join("store.snap.tmp")).unwrap_or_default(),
        ),
        (
            "stdout",
            std::fs::read(p.dir.path().join("clavis.stdout")).unwrap_or_default(),
        ),
    ] {
        let l = leaks(&bytes);
        if !l.is_empty() {
            problems.push(format!("{label}: {l:?}"));
        }
    }

    // Stop cleanly (the drain logs too), then read the whole trace log.
    let mut p = p;
    unsafe {
        libc::kill(p.child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while p.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = p.log();
    assert!(
        log.windows(7).any(|w| w == b"\"TRACE\""),
        "the log holds no trace-level line; was RUST_LOG=trace honoured?"
    );
    for (n, line) in log.split(|b| *b == b'\n').enumerate() {
        let l = leaks(line);
        if !l.is_empty() {
            problems.push(format!(
                "log line {}: {l:?}: {}",
                n + 1,
                String::from_utf8_lossy(&line[..line.len().min(400)])
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "secrets found:\n{}",
        problems
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    for (label, text) in proxied {
        assert!(leaks(text.as_bytes()).is_empty(), "{label}: {text}");
    }
}

/// An upstream that echoes the request back (the echo route reflects every
/// header it received) must not hand the injected credential to the caller:
/// SPEC §3.1 "Echoed secrets are scrubbed", on the proxy port and /v1/proxy.
#[tokio::test]
async fn echoed_credentials_are_scrubbed() {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    let p = start(&up, &ca).await;
    let base = p.base();
    let c = admin_client();
    let (name, connector, host, secret) = STORED[1];
    let r = c
        .post(format!("{base}/v1/services"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": name, "connector_name": connector}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .post(format!("{base}/v1/services/{name}/credentials"))
        .bearer_auth(ADMIN)
        .json(&json!({"token_type": "api_key", "data": {"api_key": secret}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = p
        .agent_client()
        .post(format!("https://{host}/v1/messages"))
        .header("x-api-key", "placeholder")
        .body("{}")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(leaks(text.as_bytes()).is_empty(), "proxy port: {text}");
    assert!(text.contains("[REDACTED]"), "proxy port: {text}");
    let text = c
        .post(format!("{base}/v1/proxy/{name}"))
        .bearer_auth(ADMIN)
        .json(&json!({"method": "POST", "path": "/v1/messages", "body": {}}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(leaks(text.as_bytes()).is_empty(), "/v1/proxy: {text}");
    assert!(text.contains("[REDACTED]"), "/v1/proxy: {text}");
}
