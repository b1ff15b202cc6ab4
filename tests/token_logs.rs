//! With every target logging at TRACE, token sources (SPEC §13.1) that
//! fetch, rotate, get refused and mint scoped GitHub App tokens leave no
//! secret in the log — client secrets, refresh tokens (configured and
//! rotated), access and installation tokens, private keys — in any
//! encoding, and none in an error answer or the audit log (SPEC §7).
//!
//! One test only: the tracing subscriber is global to this test binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use base64::Engine;
use support::fakes::{GithubFake, OAuthConfig, OAuthFake};
use support::logs::Capture;
use support::*;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Raw, hex, and base64 in both alphabets.
fn encodings(secret: &str) -> Vec<String> {
    vec![
        secret.to_owned(),
        secret.bytes().map(|b| format!("{b:02x}")).collect(),
        base64::engine::general_purpose::STANDARD.encode(secret),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
    ]
}

const SECRET: &str = "REAL-client-secret-for-logs-0123";
const REFRESH: &str = "rt-configured-for-logs-0123456";

fn oauth_service(name: &str, secret: &str) -> String {
    format!(
        r#"
  - name: {name}
    connector: mail
    credentials: {{ client_id: "client-1", client_secret: "{secret}", refresh_token: "{REFRESH}" }}"#,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_hold_no_token_source_secret() {
    let capture = Capture::default();
    tracing_subscriber::registry()
        .with(EnvFilter::new("trace"))
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(capture.clone()),
        )
        .init();

    let ca = TestCa::new();
    let oauth = OAuthFake::start(
        &ca,
        "auth.mail.test.example",
        "api.mail.test.example",
        OAuthConfig {
            client_id: "client-1".into(),
            client_secret: SECRET.into(),
            refresh_tokens: vec![REFRESH.into()],
            rotate: true,
            service_account: None,
            scope: String::new(),
        },
    )
    .await;
    let (pkcs1, _, public) = fakes::rsa_key();
    let github = GithubFake::start(&ca, 42, 4242, &public).await;
    let yaml = format!(
        r#"
connectors:
  - name: mail
    hosts: [api.mail.test.example]
    auth: {{ oauth2: {{ token_url: "{url}", grant: refresh_token }} }}
services:{good}{bad}
  - name: gh-app
    connector: github-app
    credentials: {{ app_id: "42", installation_id: "4242", private_key: "${{GH_KEY}}" }}
agents:
  - {{ name: a, token: a-token-0123456789abcdef, services: ["*"], github_app: {{ repositories: [alpha] }} }}
"#,
        url = oauth.token_url,
        good = oauth_service("mail-good", SECRET),
        bad = oauth_service("mail-bad", "WRONG-secret-for-logs-0123"),
    );
    let (o, g) = (oauth.addr.to_string(), github.addr.to_string());
    let clavis = Clavis::builder(&yaml)
        .env("GH_KEY", &pkcs1)
        .resolve("api.mail.test.example:443", &o)
        .resolve("auth.mail.test.example:443", &o)
        .resolve("api.github.com:443", &g)
        .start(None, Some(&ca))
        .await;
    let client = clavis.client(Some(("a", "a-token-0123456789abcdef")));
    let mut answers = String::new();
    for (url, auth) in [
        ("https://api.mail.test.example/m", "Bearer clavis:mail-good"),
        ("https://api.mail.test.example/m", "Bearer clavis:mail-bad"),
        (
            "https://api.github.com/repos/acme/alpha",
            "token clavis:gh-app",
        ),
    ] {
        let r = client
            .get(url)
            .header("Authorization", auth)
            .header("User-Agent", "t")
            .send()
            .await
            .unwrap();
        answers.push_str(&r.text().await.unwrap());
    }
    assert_eq!(oauth.fetches(), 1, "the good service fetched");
    assert_eq!(github.calls().len(), 1, "the app minted");

    let mut secrets: Vec<String> = vec![
        SECRET.into(),
        "WRONG-secret-for-logs-0123".into(),
        REFRESH.into(),
        "rt-rotated-1".into(),
        oauth.last_issued().unwrap(),
        github.calls()[0].issued.clone().unwrap(),
    ];
    // A line of the private key's base64 body.
    secrets.push(pkcs1.lines().nth(3).unwrap().to_owned());
    let logs = capture.text();
    assert!(logs.contains("token"), "the run logged something");
    let audit = serde_json::to_string(&clavis.state.audit_events(1000)).unwrap();
    for secret in &secrets {
        for form in encodings(secret) {
            assert!(!logs.contains(&form), "a secret in the log");
            assert!(!audit.contains(&form), "a secret in the audit log");
            assert!(!answers.contains(&form), "a secret in an answer");
        }
    }
}
