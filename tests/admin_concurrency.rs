//! 50 tasks hammer the admin API at once for a few seconds, each with its own
//! service names: register, store, proxy (to the echo upstream), store again,
//! proxy again, delete. Afterwards the service list matches every task's own
//! bookkeeping exactly (nothing lost, nothing duplicated), each proxied call
//! carried the credential its own task stored, nothing panicked, and the
//! audit log holds exactly one event per acknowledged store, proxy and delete.

// Helpers here are not `#[test]` functions, so clippy.toml's
// allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const ADMIN: &str = "admin-token-concurrency-0123456789";
const TASKS: usize = 50;
/// Bounded: 2 shared cores run this, and 5 s already makes thousands of calls.
const RUN_FOR: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Book {
    /// Services this task registered and has not deleted.
    alive: BTreeSet<String>,
    /// Every name this task registered.
    created: Vec<String>,
    /// Acknowledged credential-using, store and delete calls, per name.
    audited: BTreeMap<String, BTreeMap<&'static str, usize>>,
    errors: Vec<String>,
    calls: usize,
}

impl Book {
    fn audited(&mut self, name: &str, action: &'static str) {
        *self
            .audited
            .entry(name.to_owned())
            .or_default()
            .entry(action)
            .or_default() += 1;
    }
}

async fn store(c: &reqwest::Client, base: &str, key: &str, api_key: &str) -> (u16, Value) {
    let r = c
        .post(format!("{base}/v1/services/{key}/credentials"))
        .bearer_auth(ADMIN)
        .json(&json!({"token_type": "api_key", "data": {"api_key": api_key}}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn proxy(c: &reqwest::Client, base: &str, name: &str, n: usize) -> (u16, Value) {
    let r = c
        .post(format!("{base}/v1/proxy/{name}"))
        .bearer_auth(ADMIN)
        .json(&json!({
            "method": "POST",
            "path": "/digest/v1/messages",
            "body": {"model": "claude", "max_tokens": n, "messages": [{"role": "user", "content": name}]}
        }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The SHA-256 (hex) of the header value the upstream reports having
/// received (`/digest` answers digests, so clavis has no echo to scrub).
fn echoed_header<'a>(echo: &'a Value, name: &str) -> Option<&'a str> {
    echo["header_sha256"]
        .as_array()?
        .iter()
        .find_map(|h| (h[0].as_str()? == name).then(|| h[1].as_str()).flatten())
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn task(c: reqwest::Client, base: String, t: usize, until: Instant) -> Book {
    let mut b = Book::default();
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        let name = format!("conc-{t:02}-{n}");
        b.calls += 1;
        let r = c
            .post(format!("{base}/v1/services"))
            .bearer_auth(ADMIN)
            .json(&json!({"name": name, "connector_name": "anthropic"}))
            .send()
            .await
            .unwrap();
        if r.status() != 201 {
            b.errors.push(format!(
                "create {name}: {} {}",
                r.status(),
                r.text().await.unwrap()
            ));
            continue;
        }
        let id = r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        b.alive.insert(name.clone());
        b.created.push(name.clone());

        // Store by id, proxy, store again by name (replacing), proxy again.
        for (round, key) in [(0, id.as_str()), (1, name.as_str())] {
            let secret = format!("sk-ant-conc-{t}-{n}-{round}");
            b.calls += 1;
            let (status, body) = store(&c, &base, key, &secret).await;
            if status != 200 || body != json!({"status": "stored", "validated": false}) {
                b.errors
                    .push(format!("store {name} round {round}: {status} {body}"));
                continue;
            }
            b.audited(&name, "store");
            b.calls += 1;
            let (status, echo) = proxy(&c, &base, &name, n).await;
            if status == 200 {
                b.audited(&name, "proxy");
                let got = echoed_header(&echo, "x-api-key");
                if got != Some(sha256_hex(&secret).as_str()) {
                    b.errors.push(format!(
                        "proxy {name} round {round}: upstream saw x-api-key {got:?}, want {secret:?}"
                    ));
                }
            } else {
                b.errors
                    .push(format!("proxy {name} round {round}: {status} {echo}"));
            }
        }

        // Every other service is deleted again; a deleted one is gone.
        if n % 2 == 0 {
            b.calls += 1;
            let r = c
                .delete(format!("{base}/v1/services/{name}"))
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap();
            if r.status() == 200 {
                b.alive.remove(&name);
                b.audited(&name, "delete");
                b.calls += 1;
                let r = c
                    .get(format!("{base}/v1/services/{name}"))
                    .bearer_auth(ADMIN)
                    .send()
                    .await
                    .unwrap();
                if r.status() != 404 {
                    b.errors
                        .push(format!("get {name} after delete: {}", r.status()));
                }
            } else {
                b.errors.push(format!("delete {name}: {}", r.status()));
            }
        }
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_tasks_register_store_proxy_delete() {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    // A ring far larger than this run needs, so no event is evicted.
    let yaml = format!(
        "admin: {{ token: \"{ADMIN}\" }}\naudit: {{ ring: 1000000 }}\n{}",
        standard_yaml()
    );
    let clavis = Clavis::builder(&yaml).start(Some(&up), Some(&ca)).await;
    let base = format!("http://{}", clavis.admin);
    let c = admin_client();

    let until = Instant::now() + RUN_FOR;
    let handles: Vec<_> = (0..TASKS)
        .map(|t| tokio::spawn(task(c.clone(), base.clone(), t, until)))
        .collect();
    let mut books = Vec::new();
    for (t, h) in handles.into_iter().enumerate() {
        match h.await {
            Ok(b) => books.push(b),
            Err(e) => panic!("task {t} panicked: {e}"),
        }
    }
    let calls: usize = books.iter().map(|b| b.calls).sum();
    let created: usize = books.iter().map(|b| b.created.len()).sum();
    eprintln!("{calls} admin calls, {created} services registered by {TASKS} tasks");
    let errors: Vec<&String> = books.iter().flat_map(|b| &b.errors).collect();
    assert!(
        errors.is_empty(),
        "{} calls failed:\n{}",
        errors.len(),
        errors
            .iter()
            .take(50)
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(created >= TASKS, "only {created} services registered");

    // clavis is alive and the list matches the bookkeeping exactly.
    assert_eq!(
        c.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let list: Value = get_json(&c, format!("{base}/v1/services"), ADMIN).await;
    let listed: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .filter(|n| n.starts_with("conc-"))
        .collect();
    let listed_set: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(listed.len(), listed_set.len(), "duplicated services listed");
    let expected: BTreeSet<String> = books.iter().flat_map(|b| b.alive.clone()).collect();
    let lost: Vec<_> = expected.difference(&listed_set).collect();
    let extra: Vec<_> = listed_set.difference(&expected).collect();
    assert!(
        lost.is_empty() && extra.is_empty(),
        "service list differs from the tasks' bookkeeping: lost {lost:?}, unexpected {extra:?}"
    );
    let ids: BTreeSet<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), list.as_array().unwrap().len(), "duplicate ids");
    for s in list.as_array().unwrap() {
        if s["name"].as_str().unwrap().starts_with("conc-") {
            assert_eq!(s["has_credentials"], true, "{s}");
        }
    }

    // One audit event per acknowledged store / proxy / delete, per name.
    let mut mismatches = Vec::new();
    let mut total = 0;
    for b in &books {
        for name in &b.created {
            let events: Value = get_json(
                &c,
                format!("{base}/v1/audit?limit=1000&entry={name}"),
                ADMIN,
            )
            .await;
            let mut got = BTreeMap::<String, usize>::new();
            for e in events.as_array().unwrap() {
                assert_eq!(e["actor"], "admin", "{e}");
                *got.entry(e["action"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
            let want: BTreeMap<String, usize> = b
                .audited
                .get(name)
                .map(|m| m.iter().map(|(k, v)| (k.to_string(), *v)).collect())
                .unwrap_or_default();
            total += want.values().sum::<usize>();
            if got != want {
                mismatches.push(format!("{name}: audit {got:?}, acknowledged {want:?}"));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "audit differs from acknowledged calls for {} services:\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(30)].join("\n")
    );
    // And the ring as a whole holds exactly these events (nothing else ran).
    assert_eq!(clavis.state.audit_len(), total);
    // Every proxied call reached the upstream once.
    let proxied: usize = books
        .iter()
        .flat_map(|b| b.audited.values())
        .map(|m| m.get("proxy").copied().unwrap_or(0))
        .sum();
    assert_eq!(
        up.seen()
            .iter()
            .filter(|s| s.path == "/digest/v1/messages")
            .count(),
        proxied
    );
}
