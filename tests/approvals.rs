//! Approvals through the real proxy (SPEC §12): a refund an `approve` rule
//! matches is held; a person decides on the admin port; the fake Stripe
//! upstream counts what reaches it, so every test can say exactly which
//! requests went out and how many times.
//!
//! Times are real (the sweeper and the hold run on the wall clock), kept
//! short: `hold: 1s` where the test wants the agent's `approval-pending`
//! answer, a long hold where it wants the held request answered. Nothing
//! sleeps to synchronise: every wait polls with a deadline.

// Helpers here are not `#[test]` functions, so clippy.toml's
// allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use support::*;

const ADMIN: &str = "admin-token-approvals-0123456789";
const CODEX: (&str, &str) = ("codex", "codex-token");
const OTHER: (&str, &str) = ("other", "other-token");
const REFUNDS: &str = "https://api.stripe.com/v1/refunds";

/// clavis with a Stripe service whose refunds need a person's approval.
fn yaml(hold: &str, ttl: &str, extra: &str) -> String {
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
  - {{ name: other, token: other-token, services: ["*"] }}
approvals:
  hold: {hold}
  ttl: {ttl}
{extra}"#
    )
}

/// An answer as the agent saw it.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    json: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The approval an `approval-*` refusal names, checked for the shape
    /// SPEC §9 and §12 give it: a problem document with `approval_id`, the
    /// same id in `Clavis-Approval`, the kind in `Clavis-Error`.
    fn refused(&self, kind: &str) -> String {
        assert_eq!(self.status, 403, "want 403 {kind}: {self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{self:?}"
        );
        assert_eq!(self.header("clavis-error"), Some(kind), "{self:?}");
        let j = &self.json;
        assert_eq!(j["type"], format!("urn:clavis:problem:{kind}"), "{j}");
        assert_eq!(j["status"], 403, "{j}");
        assert_eq!(
            j["error"]["type"],
            format!("clavis_{}", kind.replace('-', "_"))
        );
        assert_eq!(j["error"]["message"], j["detail"], "{j}");
        let id = j["approval_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no approval_id: {j}"))
            .to_owned();
        assert!(id.starts_with("apr_"), "{id}");
        assert_eq!(
            self.header("clavis-approval"),
            Some(id.as_str()),
            "{self:?}"
        );
        let detail = j["detail"].as_str().unwrap();
        assert!(
            detail.contains(&id),
            "the detail names the approval: {detail}"
        );
        assert!(!detail.contains(REAL_STRIPE), "{detail}");
        id
    }
}

struct Env {
    _ca: TestCa,
    up: Upstream,
    clavis: Clavis,
    http: reqwest::Client,
}

impl Env {
    async fn new(hold: &str, ttl: &str) -> Arc<Env> {
        Env::with(&yaml(hold, ttl, ""), &[]).await
    }

    async fn with(yaml: &str, resolve: &[(&str, &str)]) -> Arc<Env> {
        let ca = TestCa::new();
        let mut hosts = ALL_HOSTS.to_vec();
        hosts.push("hooks.test.example");
        let up = Upstream::start(&ca, &hosts).await;
        let mut builder = Clavis::builder(yaml);
        for (host, addr) in resolve {
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

    /// An agent's HTTPS client through the proxy (h2 or HTTP/1.1 inside).
    fn agent(&self, who: (&str, &str)) -> reqwest::Client {
        self.clavis
            .client_builder(Some(who))
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap()
    }

    /// `POST url` with a form body, as the Stripe SDK sends a refund.
    async fn post(&self, client: &reqwest::Client, url: &str, body: &str) -> Answer {
        let r = client
            .post(url)
            .header("authorization", "Bearer sk_test_placeholder")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            headers,
            json,
        }
    }

    async fn refund(&self, who: (&str, &str), body: &str) -> Answer {
        self.post(&self.agent(who), REFUNDS, body).await
    }

    /// The refund in the background (it is held), from a client of its own.
    fn refund_later(
        self: &Arc<Self>,
        who: (&str, &str),
        body: &str,
    ) -> tokio::task::JoinHandle<Answer> {
        self.post_later(self.agent(who), REFUNDS, body)
    }

    fn post_later(
        self: &Arc<Self>,
        client: reqwest::Client,
        url: &str,
        body: &str,
    ) -> tokio::task::JoinHandle<Answer> {
        let (me, url, body) = (self.clone(), url.to_owned(), body.to_owned());
        tokio::spawn(async move { me.post(&client, &url, &body).await })
    }

    async fn admin_get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.admin_url(path))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn approval(&self, id: &str) -> Value {
        let (status, v) = self.admin_get(&format!("/v1/approvals/{id}")).await;
        assert_eq!(status, 200, "GET /v1/approvals/{id}: {v}");
        v
    }

    async fn list(&self, status: &str) -> Vec<Value> {
        let (code, v) = self
            .admin_get(&format!("/v1/approvals?status={status}"))
            .await;
        assert_eq!(code, 200, "{v}");
        v.as_array().unwrap().clone()
    }

    /// Waits until `n` approvals are pending; them, newest first.
    async fn pending(&self, n: usize) -> Vec<Value> {
        until(&format!("{n} pending approvals"), 20, || async {
            let list = self.list("pending").await;
            (list.len() >= n).then_some(list)
        })
        .await
    }

    /// `POST /v1/approvals/{id}/approve|deny`, `{"reason"}` if given.
    async fn decide(&self, id: &str, verb: &str, reason: Option<&str>) -> (u16, Value) {
        let mut r = self
            .http
            .post(self.admin_url(&format!("/v1/approvals/{id}/{verb}")))
            .bearer_auth(ADMIN);
        if let Some(reason) = reason {
            r = r.json(&json!({ "reason": reason }));
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn approve(&self, id: &str) -> Value {
        let (status, v) = self.decide(id, "approve", Some("fine")).await;
        assert_eq!(status, 200, "approve {id}: {v}");
        v
    }

    /// The bodies of the refunds the upstream received, in order.
    fn refunds_seen(&self) -> Vec<String> {
        self.up
            .seen()
            .into_iter()
            .filter(|s| s.path.starts_with("/v1/refunds"))
            .map(|s| s.body)
            .collect()
    }

    async fn audit(&self) -> Vec<Value> {
        let (status, v) = self.admin_get("/v1/audit?limit=1000").await;
        assert_eq!(status, 200, "{v}");
        v.as_array().unwrap().clone()
    }

    /// The `approval_*` audit events of approval `id`, oldest first.
    async fn audit_of(&self, id: &str) -> Vec<Value> {
        let mut events: Vec<Value> = self
            .audit()
            .await
            .into_iter()
            .filter(|e| {
                e["action"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("approval_"))
            })
            .filter(|e| e["detail"]["note"].as_str().is_some_and(|n| n.contains(id)))
            .collect();
        events.reverse();
        events
    }
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn unix(text: &Value) -> u64 {
    let t = humantime::parse_rfc3339(
        text.as_str()
            .unwrap_or_else(|| panic!("not a time: {text}")),
    )
    .unwrap();
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

// ------------------------------------------------------------------ decided within the hold

#[tokio::test]
async fn a_refund_approved_within_the_hold_gets_the_upstreams_answer_once() {
    let env = Env::new("30s", "15m").await;
    let body = "charge=ch_1&amount=9000";
    let held = env.refund_later(CODEX, body);
    let rec = env.pending(1).await.remove(0);
    // Held: nothing went out, the agent has no answer yet.
    assert!(env.refunds_seen().is_empty());
    assert!(!held.is_finished());
    // The record binds the request (SPEC §12's fields, plus policy).
    assert_eq!(rec["status"], "pending");
    assert_eq!(rec["agent"], "codex");
    assert_eq!(rec["service"], "my-stripe");
    assert_eq!(rec["method"], "POST");
    assert_eq!(rec["url"], REFUNDS);
    assert_eq!(rec["policy"], "refunds");
    assert_eq!(rec["rule"], "large");
    assert_eq!(rec["body_sha256"], sha256_hex(body));
    assert_eq!(rec["body_preview"], body);
    assert_eq!(unix(&rec["expires_at"]) - unix(&rec["created_at"]), 900);
    for absent in ["decided_at", "decided_by", "reason"] {
        assert!(rec[absent].is_null(), "{absent}: {rec}");
    }
    let id = rec["id"].as_str().unwrap();

    let decided = env.approve(id).await;
    assert_eq!(decided["status"], "approved");
    assert_eq!(decided["decided_by"], "admin");
    assert_eq!(decided["reason"], "fine");
    assert!(decided["decided_at"].is_string(), "{decided}");

    let answer = held.await.unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    // The upstream's own answer (the echo), with the real key injected.
    assert_eq!(answer.json["path"], "/v1/refunds");
    assert_eq!(answer.json["body"], body);
    assert_eq!(env.refunds_seen(), vec![body.to_owned()]);
    let seen = env.up.last();
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {REAL_STRIPE}").as_str())
    );
    assert_eq!(env.approval(id).await["status"], "used");
}

// ------------------------------------------------------------------ undecided within the hold

#[tokio::test]
async fn undecided_within_the_hold_is_approval_pending_then_the_identical_request_goes_once() {
    let env = Env::new("1s", "15m").await;
    let body = "charge=ch_2&amount=12000";
    let first = env.refund(CODEX, body).await;
    let id = first.refused("approval-pending");
    let detail = first.json["detail"].as_str().unwrap();
    assert!(
        detail.contains("POST /v1/refunds") || detail.contains(REFUNDS),
        "the detail says what waits: {detail}"
    );
    assert!(
        detail.contains("/api/approvals/"),
        "and how to wait: {detail}"
    );
    assert!(env.refunds_seen().is_empty());
    assert_eq!(env.approval(&id).await["status"], "pending");

    env.approve(&id).await;
    let replay = env.refund(CODEX, body).await;
    assert_eq!(replay.status, 200, "{replay:?}");
    assert_eq!(replay.json["body"], body);
    assert_eq!(env.refunds_seen(), vec![body.to_owned()]);
    assert_eq!(env.approval(&id).await["status"], "used");

    // Used: the same request again asks anew; it does not go out.
    let again = env.refund(CODEX, body).await;
    let new_id = again.refused("approval-pending");
    assert_ne!(new_id, id);
    assert_eq!(env.refunds_seen().len(), 1);
}

// ------------------------------------------------------------------ races

#[tokio::test]
async fn a_second_decision_on_one_approval_answers_409() {
    let env = Env::new("1s", "15m").await;
    let body = "charge=ch_3&amount=7000";
    let id = env.refund(CODEX, body).await.refused("approval-pending");

    // A denial needs a reason: 422, and the approval stays pending.
    let (status, v) = env.decide(&id, "deny", None).await;
    assert_eq!(status, 422, "{v}");
    let (status, v) = env.decide(&id, "deny", Some("  ")).await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(env.approval(&id).await["status"], "pending");

    // Two people approve at once: one wins, the other is told 409.
    let (a, b) = tokio::join!(
        env.decide(&id, "approve", None),
        env.decide(&id, "approve", Some("me too"))
    );
    let mut codes = [a.0, b.0];
    codes.sort_unstable();
    assert_eq!(codes, [200, 409], "{a:?} {b:?}");
    let loser = if a.0 == 409 { &a.1 } else { &b.1 };
    assert_eq!(loser["error"]["type"], "clavis_conflict", "{loser}");
    let message = loser["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&id) && message.contains("approved"),
        "{loser}"
    );
    // Nor can a later denial undo it.
    let (status, _) = env.decide(&id, "deny", Some("changed my mind")).await;
    assert_eq!(status, 409);
    assert_eq!(env.approval(&id).await["status"], "approved");
    let (status, _) = env.decide("apr_000000000000000000", "approve", None).await;
    assert_eq!(status, 404);

    assert_eq!(env.refund(CODEX, body).await.status, 200);
    assert_eq!(env.refunds_seen(), vec![body.to_owned()]);
    // One grant in the audit log, whoever clicked second.
    let granted = env
        .audit_of(&id)
        .await
        .into_iter()
        .filter(|e| e["action"] == "approval_granted")
        .count();
    assert_eq!(granted, 1);
}

/// Approvals race the expiry at the second boundary (and the sweep, and a
/// listing that expires too): each ends one way, approved (and then sent
/// once) or expired (and never sent), never both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn approving_at_the_moment_of_expiry_is_one_outcome_never_both() {
    let env = Env::new("1s", "2s").await;
    // Offsets (ms) from the expiry second at which the approval is sent.
    let offsets: [i64; 6] = [-300, -40, -10, 0, 10, 40];
    let mut rounds = Vec::new();
    for (i, offset) in offsets.into_iter().enumerate() {
        let env = env.clone();
        rounds.push(tokio::spawn(async move {
            let body = format!("charge=ch_exp{i}&amount=5000");
            let id = env.refund(CODEX, &body).await.refused("approval-pending");
            let at = i128::from(unix(&env.approval(&id).await["expires_at"])) * 1000
                + i128::from(offset);
            while (now_ms() as i128) < at {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let (decided, _) = tokio::join!(
                env.decide(&id, "approve", None),
                env.admin_get("/v1/approvals?status=pending")
            );
            let rec = env.approval(&id).await;
            let actions: Vec<String> = env
                .audit_of(&id)
                .await
                .iter()
                .map(|e| e["action"].as_str().unwrap().to_owned())
                .collect();
            let has = |a: &str| actions.iter().any(|x| x == a);
            let approved = match decided.0 {
                200 => {
                    assert_eq!(rec["status"], "approved", "{rec}");
                    assert!(
                        has("approval_granted") && !has("approval_expired"),
                        "{actions:?}"
                    );
                    true
                }
                409 => {
                    assert_eq!(rec["status"], "expired", "{rec}");
                    assert!(
                        has("approval_expired") && !has("approval_granted"),
                        "{actions:?}"
                    );
                    false
                }
                other => panic!("approve answered {other}: {:?}", decided.1),
            };
            let replay = env.refund(CODEX, &body).await;
            if approved {
                assert_eq!(replay.status, 200, "{replay:?}");
                assert_eq!(env.approval(&id).await["status"], "used");
            } else {
                assert_ne!(replay.refused("approval-pending"), id);
            }
            let sent = env.refunds_seen().iter().filter(|b| **b == body).count();
            assert_eq!(sent, usize::from(approved), "{body}");
            (offset, approved)
        }));
    }
    let mut outcomes = Vec::new();
    for r in rounds {
        outcomes.push(r.await.unwrap());
    }
    println!("offset ms -> approved: {outcomes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_approved_request_replayed_twice_goes_once() {
    let env = Env::new("1s", "15m").await;
    for round in 0..3 {
        let body = format!("charge=ch_replay{round}&amount=9900");
        let id = env.refund(CODEX, &body).await.refused("approval-pending");
        env.approve(&id).await;
        // Two clients (two tunnels) send it at once.
        let (a, b) = tokio::join!(env.refund(CODEX, &body), env.refund(CODEX, &body));
        let (won, lost) = match (a.status, b.status) {
            (200, _) => (a, b),
            (_, 200) => (b, a),
            _ => panic!("neither went out: {a:?} {b:?}"),
        };
        assert_eq!(won.json["body"], body.as_str());
        let new_id = lost.refused("approval-pending");
        assert_ne!(new_id, id, "the refused one asks anew");
        let sent = env.refunds_seen().iter().filter(|b| **b == body).count();
        assert_eq!(sent, 1, "round {round}");
        assert_eq!(env.approval(&id).await["status"], "used");
        assert_eq!(env.approval(&new_id).await["status"], "pending");
    }
}

/// The identical request sent again while its approval is pending waits
/// on that approval (no second one for the same request); approved, it
/// goes out once. (Two requests woken by the one approval: the unit test
/// `two_requests_held_on_one_approval_take_it_once`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_identical_request_sent_again_while_pending_waits_on_the_same_approval() {
    let env = Env::new("2s", "15m").await;
    let body = "charge=ch_twice&amount=9900";
    let a = env.refund_later(CODEX, body);
    let id = env.pending(1).await[0]["id"].as_str().unwrap().to_owned();
    let b = env.refund(CODEX, body).await;
    assert_eq!(b.refused("approval-pending"), id);
    assert_eq!(a.await.unwrap().refused("approval-pending"), id);
    assert_eq!(env.list("").await.len(), 1);
    env.approve(&id).await;
    assert_eq!(env.refund(CODEX, body).await.status, 200);
    assert_eq!(env.refunds_seen(), vec![body.to_owned()]);
}

/// An approval is a permission to send the request once, soon: approved
/// and not used within the ttl (counted from the decision), it expires.
#[tokio::test]
async fn an_approval_not_used_within_its_ttl_expires() {
    let env = Env::new("1s", "2s").await;
    let body = "charge=ch_late&amount=9000";
    let id = env.refund(CODEX, body).await.refused("approval-pending");
    let rec = env.approve(&id).await;
    assert!(
        unix(&rec["expires_at"]) >= unix(&rec["decided_at"]) + 2,
        "the ttl counts from the decision: {rec}"
    );
    let rec = until("the unused approval to expire", 10, || async {
        let rec = env.approval(&id).await;
        (rec["status"] == "expired").then_some(rec)
    })
    .await;
    assert_eq!(rec["decided_by"], "admin", "{rec}");
    let new_id = env.refund(CODEX, body).await.refused("approval-pending");
    assert_ne!(new_id, id);
    assert!(env.refunds_seen().is_empty());
    let note = env
        .audit_of(&id)
        .await
        .into_iter()
        .find(|e| e["action"] == "approval_expired")
        .expect("approval_expired audited");
    assert!(
        note["detail"]["note"]
            .as_str()
            .unwrap()
            .contains("not used"),
        "{note}"
    );
}

/// Budgets are checked before a person is asked: a refund the budget
/// refuses never becomes an approval, and an approval is never spent on a
/// request that then does not go out.
#[tokio::test]
async fn a_refund_over_budget_is_refused_before_a_person_is_asked() {
    let budget = "budgets:\n  - { name: codex-refunds, agent: codex, service: my-stripe, window: 1d, limit: { spend: 10000 } }\n";
    let env = Env::with(&yaml("1s", "15m", budget), &[]).await;
    let over = env.refund(CODEX, "charge=ch_b1&amount=20000").await;
    assert_eq!(over.status, 429, "{over:?}");
    assert_eq!(over.header("clavis-error"), Some("budget-exceeded"));
    assert!(env.list("").await.is_empty(), "nobody is asked about it");

    let body = "charge=ch_b2&amount=9000";
    let id = env.refund(CODEX, body).await.refused("approval-pending");
    env.approve(&id).await;
    assert_eq!(env.refund(CODEX, body).await.status, 200);
    // 1000 left: the next refund is refused by the budget, unasked.
    let over = env.refund(CODEX, "charge=ch_b3&amount=5000").await;
    assert_eq!(over.status, 429, "{over:?}");
    assert_eq!(env.list("").await.len(), 1);
    assert_eq!(env.refunds_seen(), vec![body.to_owned()]);
}

#[tokio::test]
async fn a_changed_request_after_approval_needs_its_own_approval() {
    let env = Env::new("1s", "15m").await;
    let body = "charge=ch_4&amount=9000";
    let id = env.refund(CODEX, body).await.refused("approval-pending");
    env.approve(&id).await;

    // Another amount: refused, a new approval; nothing sent.
    let changed = "charge=ch_4&amount=90000";
    let other_id = env.refund(CODEX, changed).await.refused("approval-pending");
    assert_ne!(other_id, id);
    let rec = env.approval(&other_id).await;
    assert_eq!(rec["body_sha256"], sha256_hex(changed));
    assert_eq!(rec["status"], "pending");
    // Another URL (a query added), or another agent: not this approval either.
    let codex = env.agent(CODEX);
    let query = env
        .post(&codex, &format!("{REFUNDS}?expand[]=charge"), body)
        .await
        .refused("approval-pending");
    let by_other = env.refund(OTHER, body).await.refused("approval-pending");
    for new in [&query, &by_other] {
        assert_ne!(*new, id);
        assert_ne!(*new, other_id);
    }
    assert_eq!(env.approval(&by_other).await["agent"], "other");
    assert!(env.refunds_seen().is_empty());
    assert_eq!(env.approval(&id).await["status"], "approved");

    // The approved one still goes, once.
    assert_eq!(env.refund(CODEX, body).await.status, 200);
    assert_eq!(env.refunds_seen(), vec![body.to_owned()]);
}

/// 50 refunds held at once (half over HTTP/1.1 tunnels, half multiplexed
/// on h2), decided in a random order, some approved, some denied: the
/// upstream sees exactly the approved ones, once each, and every agent
/// gets its own outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_held_requests_decided_in_random_order_go_out_exactly_as_decided() {
    let env = Env::new("60s", "15m").await;
    let h2 = env.agent(CODEX);
    let mut held = Vec::new();
    for i in 0..50 {
        let body = format!("charge=ch_many&amount={}", 1000 + i);
        let client = if i % 2 == 0 {
            env.clavis
                .client_builder_alpn(Some(CODEX), &[b"http/1.1"])
                .timeout(Duration::from_secs(90))
                .build()
                .unwrap()
        } else {
            h2.clone()
        };
        held.push((body.clone(), env.post_later(client, REFUNDS, &body)));
    }
    let mut pending = env.pending(50).await;
    assert_eq!(pending.len(), 50);
    assert!(env.refunds_seen().is_empty());

    let seed = (now_ms() as u64) | 1;
    println!("decision order seed {seed}");
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // Fisher–Yates, then each one approved or denied by a coin.
    for i in (1..pending.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        pending.swap(i, j);
    }
    let mut approved = BTreeSet::new();
    let mut denied = BTreeSet::new();
    for rec in &pending {
        let id = rec["id"].as_str().unwrap();
        let preview = rec["body_preview"].as_str().unwrap().to_owned();
        if next() % 2 == 0 {
            env.approve(id).await;
            approved.insert(preview);
        } else {
            let (status, v) = env.decide(id, "deny", Some("not today")).await;
            assert_eq!(status, 200, "{v}");
            denied.insert(preview);
        }
    }
    for (body, task) in held {
        let answer = task.await.unwrap();
        if approved.contains(&body) {
            assert_eq!(answer.status, 200, "{body}: {answer:?}");
            assert_eq!(answer.json["body"], body.as_str());
        } else {
            assert!(denied.contains(&body));
            answer.refused("approval-denied");
            let detail = answer.json["detail"].as_str().unwrap();
            assert!(
                detail.contains("not today"),
                "the reason reaches the agent: {detail}"
            );
        }
    }
    let mut sent: BTreeMap<String, usize> = BTreeMap::new();
    for body in env.refunds_seen() {
        *sent.entry(body).or_default() += 1;
    }
    assert!(sent.values().all(|n| *n == 1), "sent twice: {sent:?}");
    assert_eq!(sent.keys().cloned().collect::<BTreeSet<_>>(), approved);
    assert_eq!(env.list("used").await.len(), approved.len());
    assert_eq!(env.list("denied").await.len(), denied.len());
}

// ------------------------------------------------------------------ ttl and denial

#[tokio::test]
async fn undecided_past_its_ttl_an_approval_is_expired() {
    let env = Env::new("1s", "2s").await;
    let body = "charge=ch_5&amount=8000";
    let id = env.refund(CODEX, body).await.refused("approval-pending");
    let rec = until("the approval to expire", 10, || async {
        let rec = env.approval(&id).await;
        (rec["status"] == "expired").then_some(rec)
    })
    .await;
    assert_eq!(rec["reason"], "ttl passed");
    assert!(unix(&rec["expires_at"]) <= unix_now());
    assert!(env
        .list("expired")
        .await
        .iter()
        .any(|r| r["id"] == id.as_str()));
    assert!(env.list("pending").await.is_empty());
    let (status, v) = env.decide(&id, "approve", None).await;
    assert_eq!(status, 409, "{v}");
    // Sent again, it asks anew; the expired one never lets it out.
    let new_id = env.refund(CODEX, body).await.refused("approval-pending");
    assert_ne!(new_id, id);
    assert!(env.refunds_seen().is_empty());
    let expired: Vec<Value> = env
        .audit_of(&id)
        .await
        .into_iter()
        .filter(|e| e["action"] == "approval_expired")
        .collect();
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0]["actor"], "clavis");
}

#[tokio::test]
async fn a_denied_request_stays_denied_until_the_ttl_then_asks_anew() {
    let env = Env::new("1s", "3s").await;
    let body = "charge=ch_6&amount=66000";
    let id = env.refund(CODEX, body).await.refused("approval-pending");
    let (status, rec) = env
        .decide(&id, "deny", Some("too large <b>today</b>"))
        .await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["status"], "denied");
    assert_eq!(rec["reason"], "too large <b>today</b>");
    // Sent again before the ttl: the same denial, no new approval.
    let again = env.refund(CODEX, body).await;
    assert_eq!(again.refused("approval-denied"), id);
    let detail = again.json["detail"].as_str().unwrap();
    assert!(
        detail.contains("too large <b>today</b>") && detail.contains("admin"),
        "{detail}"
    );
    assert!(env.list("pending").await.is_empty());
    // After it: a new approval.
    let expires = unix(&rec["expires_at"]);
    until("the denial's ttl", 10, || async {
        (unix_now() >= expires).then_some(())
    })
    .await;
    let new_id = env.refund(CODEX, body).await.refused("approval-pending");
    assert_ne!(new_id, id);
    assert_eq!(env.approval(&id).await["status"], "denied");
    assert!(env.refunds_seen().is_empty());
}

// ------------------------------------------------------------------ audit

#[tokio::test]
async fn every_step_is_audited_with_the_actor_that_took_it() {
    let env = Env::new("1s", "15m").await;
    let body = "charge=ch_7&amount=9000";
    let url = format!("{REFUNDS}?expand[]=secretive-query-value");
    let codex = env.agent(CODEX);
    let granted = env
        .post(&codex, &url, body)
        .await
        .refused("approval-pending");
    env.approve(&granted).await;
    assert_eq!(env.post(&codex, &url, body).await.status, 200);
    let denied = env
        .refund(CODEX, "amount=1")
        .await
        .refused("approval-pending");
    env.decide(&denied, "deny", Some("no refunds on Fridays"))
        .await;

    let actions = |events: &[Value]| -> Vec<(String, String)> {
        events
            .iter()
            .map(|e| {
                (
                    e["action"].as_str().unwrap().to_owned(),
                    e["actor"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    let events = env.audit_of(&granted).await;
    assert_eq!(
        actions(&events),
        vec![
            pair("approval_requested", "proxy:codex"),
            pair("approval_granted", "admin"),
            pair("approval_used", "proxy:codex"),
        ],
        "{events:#?}"
    );
    for e in &events {
        assert_eq!(e["entry"], "my-stripe", "{e}");
        assert_eq!(e["detail"]["method"], "POST", "{e}");
        assert_eq!(e["detail"]["host"], "api.stripe.com", "{e}");
        assert_eq!(
            e["detail"]["path"], "/v1/refunds",
            "the path, never the query: {e}"
        );
        assert!(!e.to_string().contains("secretive-query-value"), "{e}");
    }
    assert!(events[0]["detail"]["note"]
        .as_str()
        .unwrap()
        .contains("\"large\""));
    let events = env.audit_of(&denied).await;
    assert_eq!(
        actions(&events),
        vec![
            pair("approval_requested", "proxy:codex"),
            pair("approval_denied", "admin")
        ]
    );
    assert!(
        events[1]["detail"]["note"]
            .as_str()
            .unwrap()
            .contains("no refunds on Fridays"),
        "the denial's reason is audited: {}",
        events[1]
    );
    // The held requests' refusals are audited too, as every refusal is,
    // with the path and never the query.
    let all = env.audit().await;
    for id in [&granted, &denied] {
        let refusal = all
            .iter()
            .find(|e| {
                e["action"] == "denied"
                    && e["detail"]["note"]
                        .as_str()
                        .is_some_and(|n| n.contains(id.as_str()))
            })
            .unwrap_or_else(|| panic!("no `denied` event for the request held on {id}"));
        assert_eq!(refusal["detail"]["status"], 403, "{refusal}");
        assert!(
            refusal["detail"]["note"]
                .as_str()
                .unwrap()
                .contains("POST /v1/refunds"),
            "{refusal}"
        );
    }
    assert!(
        !all.iter()
            .any(|e| e.to_string().contains("secretive-query-value")),
        "a query value reached the audit log"
    );
}

// ------------------------------------------------------------------ restart

#[tokio::test]
async fn pending_approvals_survive_a_restart() {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    let dir = tempfile::tempdir().unwrap();
    write_master_key(
        &dir.path().join("master.key"),
        "0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0\n",
    );
    let store = format!(
        "store: {{ master_key_file: \"{d}/master.key\", snapshot: \"{d}/store.snap\" }}\n",
        d = dir.path().display()
    );
    let config = yaml("1s", "15m", &store);
    let start = || Clavis::builder(&config).start(Some(&up), Some(&ca));
    let http = admin_client();
    let proxy = |c: &Clavis| c.client_builder(Some(CODEX)).build().unwrap();
    let refund = |client: reqwest::Client| async move {
        client
            .post(REFUNDS)
            .header("authorization", "Bearer sk_test_placeholder")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("charge=ch_8&amount=31000")
            .send()
            .await
            .unwrap()
    };
    let pending = |c: &Clavis| {
        let url = format!("http://{}/v1/approvals?status=pending", c.admin);
        let http = http.clone();
        async move { get_json(&http, url, ADMIN).await }
    };

    let first = start().await;
    let r = refund(proxy(&first)).await;
    assert_eq!(r.status(), 403);
    let id = r.headers()["clavis-approval"].to_str().unwrap().to_owned();
    let before = pending(&first).await;
    first.stop().await;

    let second = start().await;
    let after = pending(&second).await;
    assert_eq!(after, before, "the same pending approvals, as they were");
    assert_eq!(after[0]["id"], id.as_str());
    let r = http
        .post(format!("http://{}/v1/approvals/{id}/approve", second.admin))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(refund(proxy(&second)).await.status(), 200);
    let sent = up.seen().iter().filter(|s| s.path == "/v1/refunds").count();
    assert_eq!(sent, 1);
}

// ------------------------------------------------------------------ the agent waits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_waits_for_its_own_approval_on_the_admin_port() {
    let env = Env::new("1s", "15m").await;
    let body = "charge=ch_9&amount=9000";
    let id = env.refund(CODEX, body).await.refused("approval-pending");
    let wait = |token: &'static str, query: &str| {
        let url = env.admin_url(&format!("/api/approvals/{id}{query}"));
        let http = env.http.clone();
        async move {
            let r = http.get(url).bearer_auth(token).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // No wait: the record now. Another agent's approval reads as missing;
    // without a token, 401.
    let (status, rec) = wait("codex-token", "").await;
    assert_eq!(
        (status, rec["status"].clone()),
        (200, json!("pending")),
        "{rec}"
    );
    assert_eq!(wait("other-token", "?wait=1s").await.0, 404);
    assert_eq!(wait("not-a-token", "").await.0, 401);
    assert_eq!(wait("codex-token", "?wait=soon").await.0, 400);
    assert_eq!(
        env.http
            .get(env.admin_url("/api/approvals/apr_unknown?wait=1s"))
            .bearer_auth("codex-token")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    // The operator's list is not the agent's.
    assert_eq!(
        get_status(&env.http, env.admin_url("/v1/approvals"), "codex-token").await,
        403
    );

    // A long poll: answered when the decision comes, not at its end.
    let waiting = tokio::spawn(wait("codex-token", "?wait=30s"));
    let asked = Instant::now();
    env.approve(&id).await;
    let (status, rec) = waiting.await.unwrap();
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["status"], "approved", "{rec}");
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(env.refund(CODEX, body).await.status, 200);
    let (_, rec) = wait("codex-token", "?wait=1s").await;
    assert_eq!(rec["status"], "used");
}

/// MCP `wait_for_approval`, as an agent's MCP client calls it (the legacy
/// handshake, then `tools/call`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_waits_over_mcp_with_wait_for_approval() {
    let env = Env::new("1s", "15m").await;
    let id = env
        .refund(CODEX, "charge=ch_10&amount=9000")
        .await
        .refused("approval-pending");
    let mcp = |token: &'static str, body: Value| {
        let http = env.http.clone();
        let url = env.admin_url("/mcp");
        async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2025-06-18")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            let data = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim)
                .rfind(|d| !d.is_empty())
                .map(str::to_owned)
                .unwrap_or(text);
            (
                status,
                serde_json::from_str::<Value>(&data).unwrap_or(Value::Null),
            )
        }
    };
    let call = |token: &'static str, args: Value| {
        mcp(
            token,
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                   "params": {"name": "wait_for_approval", "arguments": args}}),
        )
    };
    for token in ["codex-token", "other-token"] {
        let (status, v) = mcp(
            token,
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "approvals-test", "version": "1"}}}),
        )
        .await;
        assert_eq!(status, 200, "{v}");
    }
    // Someone else's approval: an error, not its record.
    let (_, v) = call("other-token", json!({"id": id, "timeout_s": 1})).await;
    assert!(
        v["error"].is_object() || v["result"]["isError"] == true,
        "another agent read the approval: {v}"
    );
    assert!(!v.to_string().contains("ch_10"), "{v}");

    let waiting = tokio::spawn(call("codex-token", json!({"id": id, "timeout_s": 30})));
    let asked = Instant::now();
    let (status, v) = env.decide(&id, "deny", Some("use a credit note")).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = waiting.await.unwrap();
    assert_eq!(status, 200, "{v}");
    assert!(asked.elapsed() < Duration::from_secs(15));
    let rec = &v["result"]["structuredContent"];
    assert_eq!(rec["id"], id.as_str(), "{v}");
    assert_eq!(rec["status"], "denied", "{v}");
    assert_eq!(rec["reason"], "use a credit note", "{v}");
}
