//! The approval webhook (SPEC §12), received by a local TLS server that
//! clavis reaches by host name through `upstream.resolve` and trusts through
//! `upstream.extra_ca`, as any upstream: a signed JSON message per change,
//! or Slack's shape; a receiver that fails (500) or is down never holds up
//! an approval, and each failed attempt is logged, counted and retried with
//! a growing pause.
//!
//! One tracing subscriber for the whole binary (it is global), capturing
//! clavis's log so the tests can read what it said.

// Helpers here are not `#[test]` functions, so clippy.toml's
// allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::logs::Capture;
use support::*;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const ADMIN: &str = "admin-token-webhook-0123456789";
const CODEX: (&str, &str) = ("codex", "codex-token");
const HOOK_SECRET: &str = "whsec-REAL-hook-secret-0123456789";
const HOOK_HOST: &str = "hooks.test.example";
const REFUNDS: &str = "https://api.stripe.com/v1/refunds";

/// clavis's log so far, every test of this binary together.
fn log() -> String {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    let capture = CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new("clavis=debug"))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(capture.clone()),
            )
            .init();
        capture
    });
    capture.text()
}

fn yaml(hold: &str, ttl: &str, webhook: &str) -> String {
    format!(
        r#"
admin: {{ token: "{ADMIN}" }}
policies:
  - name: refunds
    default: allow
    rules:
      - {{ name: large, approve: {{ methods: [POST], path: /v1/refunds }} }}
services:
  - {{ name: my-stripe, connector: stripe, credentials: {{ api_key: "{REAL_STRIPE}" }}, policy: refunds }}
agents:
  - {{ name: codex, token: codex-token, services: ["*"] }}
approvals:
  hold: {hold}
  ttl: {ttl}
  webhook: {webhook}
"#
    )
}

struct Env {
    _ca: TestCa,
    up: Upstream,
    clavis: Clavis,
    http: reqwest::Client,
}

impl Env {
    /// clavis and a receiver for the webhook's host (and Stripe's).
    async fn new(yaml: &str, resolve: Option<(&str, &str)>) -> Arc<Env> {
        log();
        let ca = TestCa::new();
        let up = Upstream::start(&ca, &["api.stripe.com", HOOK_HOST]).await;
        let mut builder = Clavis::builder(yaml);
        if let Some((host, addr)) = resolve {
            builder = builder.resolve(host, addr);
        }
        let clavis = builder.start(Some(&up), Some(&ca)).await;
        Arc::new(Env {
            _ca: ca,
            up,
            clavis,
            http: admin_client(),
        })
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.clavis.admin)
    }

    /// A refund in the background: its status when answered.
    fn refund_later(self: &Arc<Self>, body: &str) -> tokio::task::JoinHandle<u16> {
        let client = self
            .clavis
            .client_builder(Some(CODEX))
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let body = body.to_owned();
        tokio::spawn(async move {
            client
                .post(REFUNDS)
                .header("authorization", "Bearer sk_test_placeholder")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    }

    async fn refund(self: &Arc<Self>, body: &str) -> u16 {
        self.refund_later(body).await.unwrap()
    }

    /// The one pending approval's id, once there is one.
    async fn pending_id(&self) -> String {
        until("a pending approval", 20, || async {
            let list = get_json(
                &self.http,
                self.admin_url("/v1/approvals?status=pending"),
                ADMIN,
            )
            .await;
            list[0]["id"].as_str().map(str::to_owned)
        })
        .await
    }

    async fn decide(&self, id: &str, verb: &str, reason: &str) {
        let r = self
            .http
            .post(self.admin_url(&format!("/v1/approvals/{id}/{verb}")))
            .bearer_auth(ADMIN)
            .json(&json!({ "reason": reason }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{verb} {id}");
    }

    /// The webhook messages the receiver got at `path`, oldest first.
    fn hooks(&self, path: &str) -> Vec<Seen> {
        self.up
            .seen()
            .into_iter()
            .filter(|s| s.host.starts_with(HOOK_HOST) && s.path == path)
            .collect()
    }

    /// Waits for a webhook message at `path` about `id` with `event`.
    async fn hook(&self, path: &str, id: &str, event: &str) -> (Seen, Value) {
        until(&format!("webhook {event} for {id}"), 20, || async {
            self.hooks(path).into_iter().find_map(|s| {
                let v: Value = serde_json::from_str(&s.body).ok()?;
                (v["event"] == event && v["approval"]["id"] == id).then_some((s, v))
            })
        })
        .await
    }

    async fn failures(&self) -> u64 {
        let text = self
            .http
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("clavis_approval_webhook_failures_total "))
            .unwrap_or_else(|| panic!("no clavis_approval_webhook_failures_total in /metrics"))
            .trim()
            .parse()
            .unwrap()
    }
}

/// A JSON message: signed over its exact bytes with the secret.
fn check_signed(seen: &Seen) {
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert!(seen
        .header("user-agent")
        .unwrap_or("")
        .starts_with("clavis/"));
    let want = format!("sha256={}", hmac_hex(HOOK_SECRET, &seen.body));
    assert_eq!(seen.header("x-clavis-signature"), Some(want.as_str()));
    let forged = format!("sha256={}", hmac_hex("another-secret", &seen.body));
    assert_ne!(seen.header("x-clavis-signature"), Some(forged.as_str()));
    assert!(!seen.body.contains(HOOK_SECRET) && !seen.body.contains(REAL_STRIPE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_webhook_is_signed_and_tells_every_decision() {
    let webhook = format!(
        "{{ url: \"https://{HOOK_HOST}/hooks/clavis\", secret: \"{HOOK_SECRET}\", format: json }}"
    );
    let env = Env::new(&yaml("1s", "2s", &webhook), None).await;
    let path = "/hooks/clavis";

    // Approved, then used.
    assert_eq!(env.refund("charge=ch_w1&amount=9000").await, 403);
    let granted = env.pending_id().await;
    let (seen, v) = env.hook(path, &granted, "approval_requested").await;
    check_signed(&seen);
    let rec = &v["approval"];
    assert_eq!(v.as_object().unwrap().len(), 2, "{{event, approval}}: {v}");
    for (field, want) in [
        ("status", "pending"),
        ("agent", "codex"),
        ("service", "my-stripe"),
        ("method", "POST"),
        ("url", REFUNDS),
        ("policy", "refunds"),
        ("rule", "large"),
        ("body_preview", "charge=ch_w1&amount=9000"),
    ] {
        assert_eq!(rec[field], want, "{field}: {v}");
    }
    assert_eq!(rec["body_sha256"].as_str().unwrap().len(), 64);
    env.decide(&granted, "approve", "ok").await;
    let (seen, v) = env.hook(path, &granted, "approval_granted").await;
    check_signed(&seen);
    assert_eq!(v["approval"]["status"], "approved");
    assert_eq!(v["approval"]["decided_by"], "admin");
    assert_eq!(env.refund("charge=ch_w1&amount=9000").await, 200);

    // Denied, with the reason.
    assert_eq!(env.refund("charge=ch_w2&amount=9000").await, 403);
    let denied = env.pending_id().await;
    env.decide(&denied, "deny", "not this one").await;
    let (seen, v) = env.hook(path, &denied, "approval_denied").await;
    check_signed(&seen);
    assert_eq!(v["approval"]["reason"], "not this one");

    // Left alone: expired.
    assert_eq!(env.refund("charge=ch_w3&amount=9000").await, 403);
    let expired = env.pending_id().await;
    let (seen, v) = env.hook(path, &expired, "approval_expired").await;
    check_signed(&seen);
    assert_eq!(v["approval"]["status"], "expired");

    // Each change told once (the receiver answered 200 every time).
    let mut told: Vec<(String, String)> = env
        .hooks(path)
        .iter()
        .map(|s| {
            let v: Value = serde_json::from_str(&s.body).unwrap();
            (
                v["approval"]["id"].as_str().unwrap().to_owned(),
                v["event"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    told.sort();
    let mut want = vec![
        (granted.clone(), "approval_granted".to_owned()),
        (granted.clone(), "approval_requested".to_owned()),
        (denied.clone(), "approval_denied".to_owned()),
        (denied.clone(), "approval_requested".to_owned()),
        (expired.clone(), "approval_expired".to_owned()),
        (expired.clone(), "approval_requested".to_owned()),
    ];
    want.sort();
    assert_eq!(told, want);
    assert_eq!(env.failures().await, 0);
}

#[tokio::test]
async fn the_slack_webhook_sends_slacks_text_message() {
    let webhook =
        format!("{{ url: \"https://{HOOK_HOST}/services/T000/B000/slackpath\", format: slack }}");
    let env = Env::new(&yaml("1s", "15m", &webhook), None).await;
    assert_eq!(env.refund("charge=ch_s1&amount=9000").await, 403);
    let id = env.pending_id().await;
    let path = "/services/T000/B000/slackpath";
    let seen = until("the slack message", 20, || async {
        env.hooks(path).into_iter().next()
    })
    .await;
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(
        seen.header("x-clavis-signature"),
        None,
        "no secret, no signature"
    );
    let v: Value = serde_json::from_str(&seen.body).unwrap();
    assert_eq!(
        v.as_object().unwrap().len(),
        1,
        "Slack's incoming-webhook shape: {v}"
    );
    let text = v["text"].as_str().unwrap();
    for part in [
        id.as_str(),
        "codex",
        "POST",
        REFUNDS,
        "my-stripe",
        "pending",
        "large",
    ] {
        assert!(text.contains(part), "{part:?} not in {text:?}");
    }
    // A Slack webhook's URL is its secret: never in the log.
    assert!(
        !log().contains("slackpath"),
        "the webhook URL reached the log"
    );
}

/// The receiver answers 500: the held request is answered as soon as it is
/// approved, while the message is retried after 1 s, then 2 s more; each
/// failed attempt is logged and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_webhook_never_holds_an_approval_and_is_retried_with_backoff() {
    let webhook = format!(
        "{{ url: \"https://{HOOK_HOST}/status/500\", secret: \"{HOOK_SECRET}\", format: json }}"
    );
    let env = Env::new(&yaml("30s", "15m", &webhook), None).await;
    let held = env.refund_later("charge=ch_f1&amount=9000");
    let id = env.pending_id().await;
    let decided = Instant::now();
    env.decide(&id, "approve", "ok").await;
    assert_eq!(held.await.unwrap(), 200);
    assert!(
        decided.elapsed() < Duration::from_secs(5),
        "{:?}",
        decided.elapsed()
    );

    let attempts = until("three attempts of the first message", 20, || async {
        let tries: Vec<Instant> = env
            .hooks("/status/500")
            .into_iter()
            .filter(|s| s.body.contains("approval_requested"))
            .map(|s| s.at)
            .collect();
        (tries.len() >= 3).then_some(tries)
    })
    .await;
    let first = attempts[1] - attempts[0];
    let second = attempts[2] - attempts[1];
    assert!(first >= Duration::from_millis(900), "first pause {first:?}");
    assert!(
        second >= Duration::from_millis(1800),
        "second pause {second:?}"
    );
    assert!(second > first, "the pause grows: {first:?} then {second:?}");
    // Every attempt is signed alike.
    for s in env.hooks("/status/500") {
        check_signed(&s);
    }
    assert!(env.failures().await >= 3);
    until("the failure in the log", 10, || async {
        log()
            .lines()
            .any(|l| l.contains("approval webhook refused") && l.contains(&id) && l.contains("500"))
            .then_some(())
    })
    .await;
    let text = log();
    assert!(!text.contains(HOOK_SECRET) && !text.contains(REAL_STRIPE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_webhook_never_holds_an_approval() {
    let webhook = format!(
        "{{ url: \"https://{HOOK_HOST}/hooks/clavis\", secret: \"{HOOK_SECRET}\", format: json }}"
    );
    // The receiver's host points at a port nothing listens on.
    let env = Env::new(
        &yaml("30s", "15m", &webhook),
        Some((&format!("{HOOK_HOST}:443"), "127.0.0.1:1")),
    )
    .await;
    let held = env.refund_later("charge=ch_f2&amount=9000");
    let id = env.pending_id().await;
    env.decide(&id, "approve", "ok").await;
    assert_eq!(held.await.unwrap(), 200);
    until("a counted failure", 10, || async {
        (env.failures().await >= 1).then_some(())
    })
    .await;
    until("the failure in the log", 10, || async {
        log()
            .lines()
            .any(|l| l.contains("approval webhook failed") && l.contains(&id))
            .then_some(())
    })
    .await;
    assert!(env.hooks("/hooks/clavis").is_empty());
}
