//! Kalshi email + password sessions through HTTPS_PROXY: clavis logs in
//! (`POST /trade-api/v2/login`), sends `Authorization: Bearer <token>`, logs
//! in once for many concurrent requests, again on expiry and on a 401 (one
//! re-login shared by every refused request, each replayed once), backs off
//! only when a token fresh from a re-login is refused again or a login
//! fails (then the agent gets the upstream's own 401), reports a refused
//! login as 502 without the password, and keeps the login endpoint to itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::upstream::{KALSHI_EMAIL, KALSHI_PASSWORD};
use support::*;

const HOST: &str = "external-api.kalshi.com";
/// Another host of the same connector (and service).
const HOST2: &str = "api.elections.kalshi.com";
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
    let up = Upstream::start(&ca, &[HOST, HOST2]).await;
    let clavis = Clavis::builder(&yaml(password, limits))
        .start(Some(&up), Some(&ca))
        .await;
    (ca, up, clavis)
}

fn client(clavis: &Clavis) -> reqwest::Client {
    clavis.client(Some(("agent", "agent-token")))
}

async fn get(client: &reqwest::Client, path: &str) -> reqwest::Response {
    get_on(client, HOST, path).await
}

async fn get_on(client: &reqwest::Client, host: &str, path: &str) -> reqwest::Response {
    client
        .get(format!("https://{host}{path}"))
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
/// replayed once; the agent sees 200.
#[tokio::test]
async fn stale_token_401_relogs_in_once_and_replays() {
    let (_ca, up, clavis) = setup(KALSHI_PASSWORD, "").await;
    let client = client(&clavis);
    assert_eq!(get(&client, BALANCE).await.status(), 200);
    let first = up.kalshi.current().unwrap();
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

/// A session revoked moments after the login (the upstream's choice, not a
/// sign of a storm): ten requests refused with it share one re-login and
/// all succeed, each sent at most twice.
#[tokio::test]
async fn ten_requests_refused_right_after_a_login_share_one_relogin_and_all_succeed() {
    let (_ca, up, clavis) = setup(KALSHI_PASSWORD, "").await;
    up.kalshi.set_login_delay(100);
    let client = client(&clavis);
    assert_eq!(get(&client, BALANCE).await.status(), 200);
    up.kalshi.revoke();
    let before = seen_on(&up, BALANCE).len();
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let r = get(&client, &format!("{BALANCE}?i={i}")).await;
                let status = r.status();
                (status, r.text().await.unwrap())
            })
        })
        .collect();
    for t in tasks {
        let (status, text) = t.await.unwrap();
        assert_eq!(status, 200, "{text}");
    }
    assert_eq!(up.kalshi.login_count(), 2, "one login, one shared re-login");
    let fresh = format!("Bearer {}", up.kalshi.current().unwrap());
    let after = seen_on(&up, BALANCE);
    let new = &after[before..];
    let accepted = new
        .iter()
        .filter(|s| s.header("authorization") == Some(fresh.as_str()))
        .count();
    assert_eq!(
        accepted, 10,
        "each request answered once with the new token"
    );
    assert!(new.len() <= 20, "no request sent more than twice");
}

/// The login storm guard: a token fresh from a re-login that the upstream
/// refuses again starts a back-off (1 s, doubling). Within it no login is
/// tried, and the agent gets the upstream's own 401 (scrubbed), not a
/// clavis error.
#[tokio::test]
async fn a_refused_fresh_token_does_not_cause_a_login_storm() {
    let (_ca, up, clavis) = setup(KALSHI_PASSWORD, "").await;
    let client = client(&clavis);
    assert_eq!(get(&client, BALANCE).await.status(), 200);
    up.kalshi.refuse_all_tokens();
    for _ in 0..5 {
        let r = get(&client, BALANCE).await;
        assert_eq!(r.status(), 401);
        assert!(r.headers().get("clavis-error").is_none());
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body["error"]["code"], "authentication_error",
            "the upstream's own answer: {body}"
        );
    }
    assert_eq!(
        up.kalshi.login_count(),
        2,
        "one re-login for the refused token, none for its refused successor"
    );
    let refused = seen_on(&up, BALANCE).len();
    assert_eq!(
        refused,
        1 + 2 + 4,
        "each request sent once, the first twice"
    );
}

/// A re-login that fails starts the back-off too: the refused request, and
/// every one refused with the old token within the back-off, get the
/// upstream's own 401, and the password is not tried again meanwhile.
#[tokio::test]
async fn a_failed_relogin_answers_the_upstreams_401_and_backs_off() {
    let (_ca, up, clavis) = setup(KALSHI_PASSWORD, "").await;
    let client = client(&clavis);
    assert_eq!(get(&client, BALANCE).await.status(), 200);
    up.kalshi.revoke();
    up.kalshi.refuse_all_logins();
    for _ in 0..5 {
        let r = get(&client, BALANCE).await;
        assert_eq!(r.status(), 401);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "authentication_error", "{body}");
    }
    assert_eq!(up.kalshi.login_count(), 2, "one failed re-login, then none");
    let text = serde_json::to_string(&clavis.state.audit_events(100)).unwrap();
    assert!(!text.contains(KALSHI_PASSWORD));
}

/// The back-off belongs to the token that was refused, not to the
/// service's other hosts: a revocation seen on one Kalshi host is renewed
/// and the request served, whichever host the next request goes to.
#[tokio::test]
async fn a_revocation_seen_on_one_host_does_not_refuse_the_others() {
    let (_ca, up, clavis) = setup(KALSHI_PASSWORD, "").await;
    let client = client(&clavis);
    assert_eq!(get_on(&client, HOST, BALANCE).await.status(), 200);
    up.kalshi.revoke();
    assert_eq!(get_on(&client, HOST2, BALANCE).await.status(), 200);
    assert_eq!(get_on(&client, HOST, BALANCE).await.status(), 200);
    assert_eq!(get_on(&client, HOST2, BALANCE).await.status(), 200);
    assert_eq!(up.kalshi.login_count(), 2);
    let login = seen_on(&up, "/trade-api/v2/login");
    assert_eq!(
        login[1].host, HOST2,
        "the re-login went to the refusing host"
    );
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
