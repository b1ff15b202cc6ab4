//! OAuth 2.0 token sources of user connectors (SPEC §13.1) through
//! HTTPS_PROXY, against a fake provider (`support::fakes::OAuthFake`) that
//! checks the client, the grant and the JWT assertion itself: the first
//! request fetches a token, a known lifetime is renewed at 80 %, a `401`
//! renews once and replays, many requests after expiry share one fetch, a
//! rotated refresh token outlives a restart until the config names a new
//! one, the agent never reaches the token endpoint, and a refused token
//! request is a `502` `token-refresh-failed` without a secret.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::fakes::{OAuthConfig, OAuthFake};
use support::*;

const API: &str = "api.mail.test.example";
const AUTH: &str = "auth.mail.test.example";
const CLIENT_ID: &str = "client-0001";
const CLIENT_SECRET: &str = "REAL-client-secret-0123456789";
const REFRESH: &str = "rt-configured-0123456789";
const SCOPES: &str = "mail.read mail.send";
const AGENT: (&str, &str) = ("agent", "agent-token-0123456789");

fn oauth(rotate: bool, service_account: Option<(String, String, String)>) -> OAuthConfig {
    OAuthConfig {
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        refresh_tokens: vec![REFRESH.into()],
        rotate,
        service_account,
        scope: SCOPES.into(),
    }
}

/// A `mail` connector on [`API`] whose tokens come from `token_url` with
/// `grant`, one service `my-mail` with `credentials`, one agent.
fn yaml(grant: &str, token_url: &str, credentials: &str, extra: &str) -> String {
    format!(
        r#"
connectors:
  - name: mail
    hosts: [{API}]
    auth:
      oauth2:
        token_url: {token_url}
        grant: {grant}
        scopes: [mail.read, mail.send]
services:
  - name: my-mail
    connector: mail
    credentials: {credentials}
agents:
  - {{ name: agent, token: agent-token-0123456789, services: ["*"] }}
{extra}
"#
    )
}

fn refresh_credentials(refresh: &str, secret: &str) -> String {
    format!(
        r#"{{ client_id: "{CLIENT_ID}", client_secret: "{secret}", refresh_token: "{refresh}" }}"#
    )
}

async fn start(ca: &TestCa, fake: &OAuthFake, yaml: &str) -> Clavis {
    let addr = fake.addr.to_string();
    Clavis::builder(yaml)
        .resolve(&format!("{API}:443"), &addr)
        .resolve(&format!("{AUTH}:443"), &addr)
        .start(None, Some(ca))
        .await
}

async fn refresh_setup(rotate: bool) -> (TestCa, Arc<OAuthFake>, Clavis) {
    let ca = TestCa::new();
    let fake = OAuthFake::start(&ca, AUTH, API, oauth(rotate, None)).await;
    let config = yaml(
        "refresh_token",
        &fake.token_url,
        &refresh_credentials(REFRESH, CLIENT_SECRET),
        "",
    );
    let clavis = start(&ca, &fake, &config).await;
    (ca, fake, clavis)
}

async fn get(client: &reqwest::Client, path: &str) -> reqwest::Response {
    client
        .get(format!("https://{API}{path}"))
        .header("Authorization", "Bearer AGENT-placeholder")
        .send()
        .await
        .unwrap()
}

/// The Bearer token the API saw last.
fn last_api_token(fake: &OAuthFake) -> String {
    fake.api_requests()
        .last()
        .and_then(|r| r.bearer().map(str::to_owned))
        .unwrap()
}

/// Waits until `at` (a real wait: expiry is what these tests are about).
async fn until(at: Instant) {
    tokio::time::sleep(at.saturating_duration_since(Instant::now())).await;
}

#[tokio::test]
async fn first_use_fetches_a_token_and_sends_it_as_bearer() {
    let (_ca, fake, clavis) = refresh_setup(false).await;
    let client = clavis.client(Some(AGENT));
    assert!(fake.calls().is_empty(), "nothing fetched before first use");
    let r = get(&client, "/v1/messages?q=1").await;
    assert_eq!(r.status(), 200);
    let answer = r.text().await.unwrap();

    let calls = fake.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.req.method, "POST");
    assert_eq!(
        call.req.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        call.basic,
        Some((CLIENT_ID.to_owned(), CLIENT_SECRET.to_owned())),
        "client_secret_basic by default"
    );
    assert_eq!(call.form["grant_type"], "refresh_token");
    assert_eq!(call.form["refresh_token"], REFRESH);
    assert_eq!(call.form["scope"], SCOPES);
    assert!(!call.form.contains_key("client_secret"));

    let token = call.issued.clone().unwrap();
    // The API echoes the token it got; the agent never sees it.
    assert!(
        !answer.contains(&token) && answer.contains("[REDACTED]"),
        "{answer}"
    );
    let seen = fake.api_requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/messages?q=1");
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
    for (name, value) in &seen[0].headers {
        assert!(!value.contains("AGENT"), "{name}: {value}");
    }

    // Reused: a second request, and a POST whose body arrives intact.
    assert_eq!(get(&client, "/v1/labels").await.status(), 200);
    let r = client
        .post(format!("https://{API}/v1/messages/send"))
        .header("content-type", "application/json")
        .body(r#"{"to":"a@example.com"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echoed: Value = r.json().await.unwrap();
    assert_eq!(echoed["body"], r#"{"to":"a@example.com"}"#);
    assert_eq!(fake.calls().len(), 1, "one fetch for three requests");

    let audit = clavis.state.audit_events(1000);
    let refresh: Vec<&Value> = audit
        .iter()
        .filter(|e| e["action"] == "token_refresh")
        .collect();
    assert_eq!(refresh.len(), 1, "{audit:?}");
    assert_eq!(refresh[0]["entry"], "my-mail");
    assert_eq!(refresh[0]["actor"], "proxy:agent");
    assert_eq!(refresh[0]["detail"]["host"], AUTH);
    assert_eq!(refresh[0]["detail"]["path"], "/token");
    assert_eq!(refresh[0]["detail"]["status"], 200);
    let all = serde_json::to_string(&audit).unwrap();
    for secret in [CLIENT_SECRET, REFRESH, token.as_str()] {
        assert!(!all.contains(secret), "a secret in the audit log");
    }
}

#[tokio::test]
async fn a_token_is_renewed_at_80_percent_of_its_lifetime() {
    let ca = TestCa::new();
    let fake = OAuthFake::start(&ca, AUTH, API, oauth(false, None)).await;
    let config = yaml(
        "client_credentials",
        &fake.token_url,
        &format!(r#"{{ client_id: "{CLIENT_ID}", client_secret: "{CLIENT_SECRET}" }}"#),
        "",
    );
    let clavis = start(&ca, &fake, &config).await;
    let client = clavis.client(Some(AGENT));
    // The first token lives 10 s: renewed from 8 s on, expired at 10 s.
    fake.lifetimes(&[10]);
    let before = Instant::now();
    assert_eq!(get(&client, "/a").await.status(), 200);
    let fetched = Instant::now();
    let first = fake.last_issued().unwrap();
    assert_eq!(fake.calls()[0].form["grant_type"], "client_credentials");

    until(before + Duration::from_secs(6)).await;
    assert_eq!(get(&client, "/b").await.status(), 200);
    assert_eq!(fake.fetches(), 1, "not renewed before 80 %");
    assert_eq!(last_api_token(&fake), first);

    until(fetched + Duration::from_millis(8800)).await;
    assert_eq!(get(&client, "/c").await.status(), 200);
    let calls = fake.calls();
    assert_eq!(calls.len(), 2, "renewed once past 80 %");
    assert!(
        calls[1].previous_still_valid,
        "renewed ahead of expiry, while the first token still worked"
    );
    let second = calls[1].issued.clone().unwrap();
    assert_ne!(first, second);
    assert_eq!(last_api_token(&fake), second);
}

/// A token the API stops accepting (`401`): one renewal for every request
/// refused with it, each request replayed once with its body. clavis
/// renews on a `401` at most once per `RELOGIN_BACKOFF` (20 s) after the
/// last fetch, so the stale token must be older: this test waits 21 s.
#[tokio::test]
async fn a_401_renews_once_for_all_and_replays_each_request_once() {
    let (_ca, fake, clavis) = refresh_setup(false).await;
    let client = clavis.client(Some(AGENT));
    assert_eq!(get(&client, "/first").await.status(), 200);
    let first = fake.last_issued().unwrap();
    tokio::time::sleep(Duration::from_secs(21)).await;
    fake.revoke_all();
    let before = fake.api_requests().len();

    let body = r#"{"subject":"replayed"}"#;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let r = client
                    .post(format!("https://{API}/v1/drafts"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                (r.status(), r.json::<Value>().await.unwrap())
            })
        })
        .collect();
    for t in tasks {
        let (status, json) = t.await.unwrap();
        assert_eq!(status, 200, "{json}");
        assert_eq!(json["body"], body, "the replay carries the body");
    }
    assert_eq!(fake.fetches(), 2, "exactly one renewal");
    let second = fake.last_issued().unwrap();
    let new = &fake.api_requests()[before..];
    let with = |t: &str| new.iter().filter(|r| r.bearer() == Some(t)).count();
    assert_eq!(
        with(&second),
        20,
        "each request answered once with the new token"
    );
    let refused = with(&first);
    assert!(
        (1..=20).contains(&refused),
        "{refused} tries with the old token"
    );
    assert_eq!(new.len(), refused + 20, "no request sent more than twice");
}

#[tokio::test]
async fn a_hundred_requests_after_expiry_cause_exactly_one_fetch() {
    let (_ca, fake, clavis) = refresh_setup(false).await;
    let client = clavis.client(Some(AGENT));
    fake.lifetimes(&[1]);
    assert_eq!(get(&client, "/warm").await.status(), 200);
    assert_eq!(fake.fetches(), 1);
    // Past 80 % of one second, and a slow endpoint to widen the race.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    fake.delay_ms
        .store(300, std::sync::atomic::Ordering::SeqCst);
    let before = fake.api_requests().len();
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { get(&client, &format!("/m?i={i}")).await.status() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(fake.calls().len(), 2, "one fetch for 100 requests");
    let second = fake.last_issued().unwrap();
    let new = &fake.api_requests()[before..];
    assert_eq!(new.len(), 100);
    assert!(new.iter().all(|r| r.bearer() == Some(second.as_str())));
}

const MASTER_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// A config with a master key file and a snapshot in `dir`.
fn persistent(fake: &OAuthFake, dir: &std::path::Path, refresh: &str) -> String {
    let key = dir.join("master.key");
    if !key.exists() {
        std::fs::write(&key, MASTER_KEY).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let store = format!(
        "store: {{ master_key_file: \"{}\", snapshot: \"{}\" }}",
        key.display(),
        dir.join("snapshot").display()
    );
    yaml(
        "refresh_token",
        &fake.token_url,
        &refresh_credentials(refresh, CLIENT_SECRET),
        &store,
    )
}

/// The endpoint rotates refresh tokens and accepts only the newest: a
/// restart that sent the configured one again would be refused.
#[tokio::test]
async fn a_rotated_refresh_token_survives_a_restart_until_the_config_names_a_new_one() {
    let ca = TestCa::new();
    let fake = OAuthFake::start(&ca, AUTH, API, oauth(true, None)).await;
    let dir = tempfile::tempdir().unwrap();

    let clavis = start(&ca, &fake, &persistent(&fake, dir.path(), REFRESH)).await;
    assert_eq!(get(&clavis.client(Some(AGENT)), "/1").await.status(), 200);
    clavis.stop().await;
    let snapshot = std::fs::read(dir.path().join("snapshot")).unwrap();
    assert!(
        !snapshot.windows(10).any(|w| w == b"rt-rotated"),
        "the rotated token is sealed in the snapshot"
    );

    // Restarted with the same config: the rotated token is used.
    let clavis = start(&ca, &fake, &persistent(&fake, dir.path(), REFRESH)).await;
    assert_eq!(get(&clavis.client(Some(AGENT)), "/2").await.status(), 200);
    clavis.stop().await;

    // A new refresh token in the config wins over the stored one.
    fake.accept_refresh_token("rt-new-in-config-42");
    let clavis = start(
        &ca,
        &fake,
        &persistent(&fake, dir.path(), "rt-new-in-config-42"),
    )
    .await;
    assert_eq!(get(&clavis.client(Some(AGENT)), "/3").await.status(), 200);
    clavis.stop().await;

    let used: Vec<(String, u16)> = fake
        .calls()
        .iter()
        .map(|c| (c.form["refresh_token"].clone(), c.status))
        .collect();
    assert_eq!(
        used,
        vec![
            (REFRESH.to_owned(), 200),
            ("rt-rotated-1".to_owned(), 200),
            ("rt-new-in-config-42".to_owned(), 200),
        ]
    );
}

#[tokio::test]
async fn agents_never_reach_the_token_endpoint() {
    let (_ca, fake, clavis) = refresh_setup(false).await;
    // A tunnel to the token URL's host, on any port, or plain http to it.
    for target in [format!("{AUTH}:443"), format!("{AUTH}:8443")] {
        let (status, _) = connect_raw(clavis.proxy, &target, "").await;
        assert_eq!(status, 403, "CONNECT {target}");
    }
    let (head, _) = send_head(
        clavis.proxy,
        &format!("POST http://{AUTH}/token HTTP/1.1\r\nHost: {AUTH}\r\nContent-Length: 0\r\n\r\n"),
    )
    .await;
    assert_eq!(status_of(&head), 403, "{head}");
    assert_eq!(header_of(&head, "clavis-error"), Some("forbidden"));
    assert!(
        fake.calls().is_empty(),
        "nothing reached the token endpoint"
    );
}

/// A token URL on the API's own host: its path is clavis's alone, however
/// it is spelled; the rest of the API works.
#[tokio::test]
async fn the_token_path_on_a_claimed_host_is_refused() {
    let ca = TestCa::new();
    let fake = OAuthFake::start(&ca, API, "unused.test.example", oauth(false, None)).await;
    let config = yaml(
        "refresh_token",
        &format!("https://{API}/token"),
        &refresh_credentials(REFRESH, CLIENT_SECRET),
        "",
    );
    let clavis = start(&ca, &fake, &config).await;
    let client = clavis.client(Some(AGENT));
    for path in ["/token", "/token/", "//token", "/%74oken", "/x/../token"] {
        let r = client
            .post(format!("https://{API}{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["type"], "clavis_forbidden", "{err}");
    }
    assert!(fake.calls().is_empty(), "no agent request reached /token");
    assert_eq!(get(&client, "/v1/messages").await.status(), 200);
    assert_eq!(fake.calls().len(), 1, "clavis's own fetch");
}

/// RFC 7523 with a Google service-account key file: the fake verifies the
/// assertion with the `jsonwebtoken` crate and the account's public key.
#[tokio::test]
async fn a_jwt_bearer_assertion_is_verified_by_an_independent_library() {
    let ca = TestCa::new();
    let (_pkcs1, pkcs8, public) = fakes::rsa_key();
    let email = "robot@project.iam.gserviceaccount.example";
    let kid = "0123456789abcdef0123456789abcdef01234567";
    let fake = OAuthFake::start(
        &ca,
        AUTH,
        API,
        oauth(false, Some((public, kid.into(), email.into()))),
    )
    .await;
    let key_file = serde_json::json!({
        "type": "service_account",
        "project_id": "project",
        "private_key_id": kid,
        "private_key": pkcs8,
        "client_email": email,
        "client_id": "1234567890",
        "token_uri": fake.token_url,
    });
    let config = yaml(
        "jwt_bearer",
        &fake.token_url,
        r#"{ service_account_json: "${file:SA_PATH}" }"#,
        "",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sa.json");
    std::fs::write(&path, serde_json::to_string_pretty(&key_file).unwrap()).unwrap();
    let config = config.replace("SA_PATH", &path.display().to_string());
    let clavis = start(&ca, &fake, &config).await;
    let r = get(&clavis.client(Some(AGENT)), "/v1/messages").await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    let call = &fake.calls()[0];
    assert_eq!(call.status, 200);
    assert_eq!(
        call.form["grant_type"],
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    assert!(call.basic.is_none());
    let (header, claims) = call.assertion.clone().unwrap();
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], kid);
    assert_eq!(claims["iss"], email);
    assert_eq!(claims["aud"], fake.token_url);
    assert_eq!(claims["scope"], SCOPES);
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 3600);
    assert!(iat.abs_diff(unix_now()) <= 5);
    assert_eq!(last_api_token(&fake), call.issued.clone().unwrap());
}

#[tokio::test]
async fn a_refused_token_request_is_a_502_token_refresh_failed_without_secrets() {
    let ca = TestCa::new();
    let fake = OAuthFake::start(&ca, AUTH, API, oauth(false, None)).await;
    let wrong = "WRONG-client-secret-do-not-leak";
    let config = yaml(
        "refresh_token",
        &fake.token_url,
        &refresh_credentials(REFRESH, wrong),
        "",
    );
    let clavis = start(&ca, &fake, &config).await;
    let r = get(&clavis.client(Some(AGENT)), "/v1/messages").await;
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["clavis-error"], "token-refresh-failed");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let text = r.text().await.unwrap();
    for secret in [wrong, REFRESH] {
        assert!(!text.contains(secret), "{text}");
    }
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["type"], "urn:clavis:problem:token-refresh-failed");
    assert_eq!(doc["title"], "Token refresh failed");
    assert_eq!(doc["status"], 502);
    assert_eq!(doc["error"]["type"], "clavis_token_refresh_failed");
    let detail = doc["detail"].as_str().unwrap();
    assert!(detail.contains("my-mail"), "{detail}");
    assert!(detail.contains("401 (invalid_client)"), "{detail}");
    assert!(
        fake.api_requests().is_empty(),
        "nothing forwarded without a token"
    );

    let audit = clavis.state.audit_events(1000);
    let refresh = audit
        .iter()
        .find(|e| e["action"] == "token_refresh")
        .unwrap_or_else(|| panic!("no token_refresh event in {audit:?}"));
    assert_eq!(refresh["detail"]["status"], 401);
    assert!(!serde_json::to_string(&audit).unwrap().contains(wrong));
}
