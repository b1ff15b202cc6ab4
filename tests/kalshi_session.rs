//! Kalshi email + password sessions through HTTPS_PROXY: clavis logs in
//! (`POST /trade-api/v2/login`), sends `Authorization: Bearer <token>`, logs
//! in once for many concurrent requests, again on expiry and on a 401 (the
//! refused request replayed once), reports a refused login as 502 without the
//! password, and keeps the login endpoint to itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::upstream::{KALSHI_EMAIL, KALSHI_PASSWORD};
use support::*;

const HOST: &str = "external-api.kalshi.com";
const BALANCE: &str = "/trade-api/v2/portfolio/balance";

fn yaml(password: &str, limits: &str) -> String {
    format!(
        r#"
services:
  - name: kalshi-session
    connector: kalshi
    credentials: {{ email: "{KALSHI_EMAIL}", password: "{password}" }}
agents:
  - {{ name: agent, token: agent-token, services: ["*"] }}
{limits}
"#
    )
}

async fn setup(password: &str, limits: &str) -> (TestCa, Upstream, Clavis) {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, &[HOST]).await;
    let clavis = Clavis::builder(&yaml(password, limits))
        .start(Some(&up), Some(&ca))
        .await;
    (ca, up, clavis)
}

fn client(clavis: &Clavis) -> reqwest::Client {
    clavis.client(Some(("agent", "agent-token")))
}

async fn get(client: &reqwest::Client, path: &str) -> reqwest::Response {
    client
        .get(format!("https://{HOST}{path}"))
        .header("Authorization", "Bearer AGENT-placeholder")
        .send()
        .await
        .unwrap()
}

/// Requests the upstream saw on `path` (ignoring the query).
fn seen_on(up: &Upstream, path: &str) -> Vec<Seen> {
    up.seen()
        .into_iter()
        .filter(|s| s.path.split('?').next() == Some(path))
        .collect()
}

#[tokio::test]
async fn first_request_logs_in_once_and_carries_the_token() {
    let (_ca, up, clavis) = setup(KALSHI_PASSWORD, "").await;
    let client = client(&clavis);
    let r = get(&client, &format!("{BALANCE}?subaccount=0")).await;
    assert_eq!(r.status(), 200);
    let logins = up.kalshi.logins.lock().unwrap().clone();
    assert_eq!(logins.len(), 1);
    assert_eq!(
        logins[0],
        serde_json::json!({"email": KALSHI_EMAIL, "password": KALSHI_PASSWORD})
    );
    let login = &seen_on(&up, "/trade-api/v2/login")[0];
    assert_eq!(login.method, "POST");
    assert!(login
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    assert!(login.header("authorization").is_none());

    let token = up.kalshi.current().unwrap();
    let seen = up.last();
    assert_eq!(seen.path, format!("{BALANCE}?subaccount=0"));
    assert_eq!(
        seen.all("authorization"),
        vec![format!("Bearer {token}").as_str()]
    );
    for (name, value) in &seen.headers {
        assert!(!value.contains("AGENT"), "{name}: {value}");
        assert!(!value.contains(KALSHI_PASSWORD), "{name}");
    }

    // The session is reused: no second login, a POST body is replayed intact.
    let body = r#"{"ticker":"KXBTC","side":"yes","count":1}"#;
    let r = client
        .post(format!("https://{HOST}/trade-api/v2/portfolio/orders"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echoed: Value = r.json().await.unwrap();
    assert_eq!(echoed["body"], body);
    assert_eq!(up.kalshi.login_count(), 1);
}

#[tokio::test]
async fn concurrent_requests_share_one_login() {
    let (_ca, up, clavis) = setup(KALSHI_PASSWORD, "").await;
    up.kalshi.set_login_delay(300);
    let client = client(&clavis);
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { get(&client, &format!("{BALANCE}?i={i}")).await.status() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(
        up.kalshi.login_count(),
        1,
        "exactly one login for 100 requests"
    );
    let token = format!("Bearer {}", up.kalshi.current().unwrap());
    let balance = seen_on(&up, BALANCE);
    assert_eq!(balance.len(), 100);
    assert!(balance
        .iter()
        .all(|s| s.header("authorization") == Some(token.as_str())));
}

#[tokio::test]
async fn idle_expiry_logs_in_again() {
    let (_ca, up, clavis) = setup(KALSHI_PASSWORD, "limits: { session_idle: 1s }").await;
    let client = client(&clavis);
    assert_eq!(get(&client, BALANCE).await.status(), 200);
    let first = up.kalshi.current().unwrap();
    assert_eq!(get(&client, BALANCE).await.status(), 200);
    assert_eq!(up.kalshi.login_count(), 1);
    // Expiry is the point of this test: a real wait past the idle limit.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get(&client, BALANCE).await.status(), 200);
    assert_eq!(up.kalshi.login_count(), 2);
    let second = up.kalshi.current().unwrap();
    assert_ne!(first, second);
    assert_eq!(
        up.last().header("authorization"),
        Some(format!("Bearer {second}").as_str())
    );
}

/// A token the upstream stops accepting (401) → one new login and the request
/// replayed once; the agent sees 200. clavis logs in again on a 401 at most
/// once per 20 s (`RELOGIN_BACKOFF`), so the stale token must be older than
/// that: this test really waits 21 s.
#[tokio::test]
async fn stale_token_401_relogs_in_once_and_replays() {
    let (_ca, up, clavis) = setup(KALSHI_PASSWORD, "").await;
    let client = client(&clavis);
    assert_eq!(get(&client, BALANCE).await.status(), 200);
    let first = up.kalshi.current().unwrap();
    tokio::time::sleep(Duration::from_secs(21)).await;
    up.kalshi.revoke();
    let before = seen_on(&up, BALANCE).len();

    // Twenty requests hit the stale token together: one re-login for all.
    let body = r#"{"ticker":"KXBTC","count":2}"#;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let r = client
                    .post(format!("https://{HOST}{BALANCE}"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                let json: Value = r.json().await.unwrap();
                (status, json)
            })
        })
        .collect();
    for t in tasks {
        let (status, json) = t.await.unwrap();
        assert_eq!(status, 200, "{json}");
        assert_eq!(json["body"], body, "the replay carries the body");
    }
    assert_eq!(up.kalshi.login_count(), 2, "exactly one re-login");
    let second = up.kalshi.current().unwrap();
    assert_ne!(first, second);
    let after = seen_on(&up, BALANCE);
    let new = &after[before..];
    let stale = format!("Bearer {first}");
    let fresh = format!("Bearer {second}");
    let refused = new
        .iter()
        .filter(|s| s.header("authorization") == Some(stale.as_str()))
        .count();
    let accepted = new
        .iter()
        .filter(|s| s.header("authorization") == Some(fresh.as_str()))
        .count();
    assert_eq!(
        accepted, 20,
        "each request answered once with the new token"
    );
    assert!(
        (1..=20).contains(&refused),
        "{refused} tries with the stale token"
    );
    assert_eq!(
        new.len(),
        refused + accepted,
        "no request sent more than twice"
    );
}

/// Within the backoff, a 401 for a token that was just issued does not cause
/// another login (no login storm): the agent gets a 502 naming the service.
#[tokio::test]
async fn a_refused_fresh_token_does_not_cause_a_login_storm() {
    let (_ca, up, clavis) = setup(KALSHI_PASSWORD, "").await;
    let client = client(&clavis);
    assert_eq!(get(&client, BALANCE).await.status(), 200);
    up.kalshi.revoke();
    for _ in 0..5 {
        let r = get(&client, BALANCE).await;
        assert_eq!(r.status(), 502);
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["type"], "clavis_login_failed", "{err}");
        assert!(err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("kalshi-session"));
    }
    assert_eq!(up.kalshi.login_count(), 1);
}

#[tokio::test]
async fn wrong_password_is_a_502_naming_the_service_not_the_password() {
    let wrong = "WRONG-password-do-not-leak-42";
    let (_ca, up, clavis) = setup(wrong, "").await;
    let r = get(&client(&clavis), BALANCE).await;
    assert_eq!(r.status(), 502);
    let text = r.text().await.unwrap();
    assert!(!text.contains(wrong), "{text}");
    let err: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(err["error"]["type"], "clavis_login_failed", "{text}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(message.contains("kalshi-session"), "{message}");
    assert_eq!(up.kalshi.login_count(), 1);
    assert!(
        seen_on(&up, BALANCE).is_empty(),
        "nothing forwarded without a session"
    );

    let audit = clavis.state.audit_events(1000);
    let login = audit
        .iter()
        .find(|e| e["action"] == "login")
        .unwrap_or_else(|| panic!("no login event in {audit:?}"));
    assert_eq!(login["entry"], "kalshi-session");
    assert_eq!(login["detail"]["path"], "/trade-api/v2/login");
    assert_eq!(login["detail"]["status"], 401);
    let all = serde_json::to_string(&audit).unwrap();
    assert!(!all.contains(wrong), "password in the audit log");

    // More requests within the backoff do not try the password again.
    for _ in 0..5 {
        let r = get(&client(&clavis), BALANCE).await;
        assert_eq!(r.status(), 502);
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["type"], "clavis_login_failed", "{err}");
    }
    assert_eq!(
        up.kalshi.login_count(),
        1,
        "a wrong password is tried once per backoff"
    );
}

#[tokio::test]
async fn agents_may_not_call_the_login_endpoint() {
    let (_ca, up, clavis) = setup(KALSHI_PASSWORD, "").await;
    let client = client(&clavis);
    for path in [
        "/trade-api/v2/login",
        "/trade-api/v2/login?x=1",
        "/trade-api/v2/login/",
        "//trade-api/v2/login",
        "/trade-api/v2/%6cogin",
        "/trade-api/v2/./login",
    ] {
        let r = client
            .post(format!("https://{HOST}{path}"))
            .header("content-type", "application/json")
            .body(r#"{"email":"agent@evil.example","password":"x"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["type"], "clavis_forbidden", "{err}");
    }
    assert_eq!(up.kalshi.login_count(), 0, "nothing reached the upstream");
    assert!(up.seen().is_empty());
}

const ADMIN: &str = "admin-token-0123456789abcdef";

/// Stores Kalshi credentials for `kalshi-session` through the admin API.
async fn store_password(clavis: &Clavis, password: &str) {
    let r = admin_client()
        .post(format!(
            "http://{}/v1/services/kalshi-session/credentials",
            clavis.admin
        ))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({
            "token_type": "api_key",
            "data": {"email": KALSHI_EMAIL, "password": password},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// New credentials end the cached session: the next request logs in with
/// them, and a fixed password is tried at once, whatever the backoff.
#[tokio::test]
async fn changed_credentials_log_in_again_at_once() {
    let admin = format!("admin: {{ token: \"{ADMIN}\" }}");
    let (_ca, up, clavis) = setup("WRONG-password-first", &admin).await;
    let client = client(&clavis);
    assert_eq!(get(&client, BALANCE).await.status(), 502);
    assert_eq!(up.kalshi.login_count(), 1);

    store_password(&clavis, KALSHI_PASSWORD).await;
    assert_eq!(get(&client, BALANCE).await.status(), 200);
    assert_eq!(up.kalshi.login_count(), 2, "the fixed password logs in");

    // The same value stored again is still new credentials: a new login.
    store_password(&clavis, KALSHI_PASSWORD).await;
    assert_eq!(get(&client, BALANCE).await.status(), 200);
    assert_eq!(up.kalshi.login_count(), 3);
    let last = up.kalshi.logins.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last["password"], KALSHI_PASSWORD);

    // A deleted service's session is gone with it.
    let r = admin_client()
        .delete(format!(
            "http://{}/v1/services/kalshi-session",
            clavis.admin
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(get(&client, BALANCE).await.status(), 403);
    assert_eq!(up.kalshi.login_count(), 3);
}
