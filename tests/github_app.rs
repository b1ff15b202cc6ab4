//! The built-in `github-app` connector (SPEC §13.1) through HTTPS_PROXY,
//! against a fake api.github.com (`support::fakes::GithubFake`) that
//! verifies the app JWT with the app's public key (the `jsonwebtoken`
//! crate) and issues installation tokens with the repositories and
//! permissions asked for: each agent's `github_app` scope gets a token of
//! its own, cached per scope and renewed before it expires; `github` and
//! `github-app` share their hosts and the service picks which applies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::fakes::GithubFake;
use support::*;

const APP_ID: u64 = 123456;
const INSTALLATION: u64 = 7890;

fn yaml(extra_services: &str, agents: &str) -> String {
    format!(
        r#"
services:
  - name: gh-app
    connector: github-app
    credentials: {{ app_id: "{APP_ID}", installation_id: "{INSTALLATION}", private_key: "${{GH_APP_KEY}}" }}
{extra_services}
agents:
{agents}
"#
    )
}

const AGENTS: &str = r#"
  - { name: reader, token: reader-token-0123456789, services: [gh-app], github_app: { repositories: [alpha], permissions: { contents: read } } }
  - { name: reader2, token: reader2-token-0123456789, services: [gh-app], github_app: { permissions: { contents: read }, repositories: [alpha, alpha] } }
  - { name: triager, token: triager-token-0123456789, services: [gh-app], github_app: { repositories: [beta, alpha], permissions: { issues: write, metadata: read } } }
  - { name: full, token: full-token-0123456789, services: [gh-app] }
"#;

async fn setup(extra_services: &str, agents: &str) -> (TestCa, Arc<GithubFake>, Clavis) {
    let ca = TestCa::new();
    let (pkcs1, _pkcs8, public) = fakes::rsa_key();
    let fake = GithubFake::start(&ca, APP_ID, INSTALLATION, &public).await;
    let addr = fake.addr.to_string();
    let clavis = Clavis::builder(&yaml(extra_services, agents))
        .env("GH_APP_KEY", &pkcs1)
        .resolve("api.github.com:443", &addr)
        .resolve("uploads.github.com:443", &addr)
        .resolve("github.com:443", &addr)
        .start(None, Some(&ca))
        .await;
    (ca, fake, clavis)
}

fn client(clavis: &Clavis, agent: &str) -> reqwest::Client {
    clavis.client(Some((agent, &format!("{agent}-token-0123456789"))))
}

/// What the fake API saw and answered for `GET /repos/acme/alpha` by `agent`.
async fn repo(clavis: &Clavis, agent: &str) -> Value {
    let r = client(clavis, agent)
        .get("https://api.github.com/repos/acme/alpha")
        .header("Authorization", "token placeholder")
        .header("User-Agent", "test")
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{agent}: {body}");
    body
}

#[tokio::test]
async fn each_agent_gets_an_installation_token_scoped_as_configured() {
    let (_ca, fake, clavis) = setup("", AGENTS).await;
    let reader = repo(&clavis, "reader").await;
    let triager = repo(&clavis, "triager").await;
    let full = repo(&clavis, "full").await;
    assert_eq!(reader["repositories"], json!(["alpha"]));
    assert_eq!(reader["permissions"], json!({"contents": "read"}));
    assert_eq!(triager["repositories"], json!(["alpha", "beta"]));
    assert_eq!(
        triager["permissions"],
        json!({"issues": "write", "metadata": "read"})
    );
    assert_eq!(full["repositories"], Value::Null, "the installation's own");
    let tokens = [&reader["token_id"], &triager["token_id"], &full["token_id"]];
    assert!(tokens[0] != tokens[1] && tokens[1] != tokens[2] && tokens[0] != tokens[2]);

    // Cached per scope: again, and an agent with the same scope written
    // differently, share the tokens already minted.
    assert_eq!(
        repo(&clavis, "reader").await["token_id"],
        reader["token_id"]
    );
    assert_eq!(
        repo(&clavis, "reader2").await["token_id"],
        reader["token_id"]
    );
    assert_eq!(repo(&clavis, "full").await["token_id"], full["token_id"]);

    let calls = fake.calls();
    assert_eq!(calls.len(), 3, "one token per scope");
    let bodies: Vec<&Value> = calls.iter().map(|c| &c.body).collect();
    assert_eq!(
        bodies,
        [
            &json!({"permissions": {"contents": "read"}, "repositories": ["alpha"]}),
            &json!({"permissions": {"issues": "write", "metadata": "read"}, "repositories": ["alpha", "beta"]}),
            &json!({}),
        ]
    );
    for call in &calls {
        assert_eq!(call.status, 201);
        assert_eq!(
            call.path,
            format!("/app/installations/{INSTALLATION}/access_tokens")
        );
        let claims = call.claims.as_ref().unwrap();
        assert_eq!(claims["iss"], APP_ID.to_string());
        let (iat, exp) = (
            claims["iat"].as_u64().unwrap(),
            claims["exp"].as_u64().unwrap(),
        );
        assert!(exp - iat <= 600, "{claims}");
        assert!(
            iat + 50 <= unix_now() && unix_now() <= iat + 70,
            "iat is a minute back"
        );
    }

    // What went upstream: the installation token as Bearer, never the
    // agent's placeholder or the app's key material.
    for (req, grant) in fake.api_requests() {
        let grant = grant.unwrap();
        assert_eq!(
            req.header("authorization"),
            Some(format!("Bearer {}", grant.token).as_str())
        );
        assert!(req.headers.iter().all(|(_, v)| !v.contains("placeholder")));
    }
    let audit = clavis.state.audit_events(1000);
    let minted: Vec<&Value> = audit
        .iter()
        .filter(|e| e["action"] == "token_refresh")
        .collect();
    assert_eq!(minted.len(), 3);
    assert!(minted
        .iter()
        .all(|e| e["detail"]["host"] == "api.github.com"));
    assert!(minted.iter().any(|e| e["actor"] == "proxy:reader"
        && e["detail"]["note"]
            .as_str()
            .is_some_and(|n| n.contains("\"contents\":\"read\""))));
    let all = serde_json::to_string(&audit).unwrap();
    assert!(!all.contains("ghs_"), "no token in the audit log");
}

#[tokio::test]
async fn the_installation_token_is_renewed_before_it_expires() {
    let (_ca, fake, clavis) = setup("", AGENTS).await;
    fake.lifetime.store(10, std::sync::atomic::Ordering::SeqCst);
    let first = repo(&clavis, "reader").await["token_id"].clone();
    let fetched = Instant::now();
    // `expires_at` has whole seconds: clavis sees 9 to 10 s and renews
    // from 7.2 to 8 s on; the token works until 10 s.
    tokio::time::sleep_until((fetched + Duration::from_millis(8800)).into()).await;
    let second = repo(&clavis, "reader").await["token_id"].clone();
    assert_ne!(first, second, "renewed");
    let calls = fake.calls();
    assert_eq!(calls.len(), 2);
    assert!(calls[1].previous_still_valid, "renewed ahead of expiry");
    assert_eq!(calls[1].body, calls[0].body, "with the same scope");
}

const PAT: &str = "ghp_REALgithub0123456789abcdef";

/// `github` (a stored token) and `github-app` claim the same hosts: the
/// placeholder, or the agent's only service, picks the connector, and its
/// credential is the one injected.
#[tokio::test]
async fn github_and_github_app_share_hosts_and_the_service_picks() {
    let services =
        format!("  - {{ name: gh-pat, connector: github, credentials: {{ api_key: \"{PAT}\" }} }}");
    let agents = r#"
  - { name: both, token: both-token-0123456789, services: [gh-app, gh-pat] }
  - { name: reader, token: reader-token-0123456789, services: [gh-app], github_app: { repositories: [alpha] } }
"#;
    let (_ca, fake, clavis) = setup(&services, agents).await;
    let both = client(&clavis, "both");
    let call = |auth: &'static str| {
        let both = both.clone();
        async move {
            both.get("https://uploads.github.com/repos/acme/alpha/releases")
                .header("Authorization", auth)
                .header("User-Agent", "test")
                .send()
                .await
                .unwrap()
        }
    };
    let r = call("token clavis:gh-pat").await;
    assert_eq!(r.status(), 401, "the fake knows no PAT; what it saw counts");
    let (seen, _) = fake.api_requests().last().cloned().unwrap();
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {PAT}").as_str())
    );
    assert!(
        fake.calls().is_empty(),
        "no installation token for a PAT service"
    );

    let r = call("Bearer clavis:gh-app").await;
    assert_eq!(r.status(), 200);
    let (seen, grant) = fake.api_requests().last().cloned().unwrap();
    let token = grant.unwrap().token;
    assert!(token.starts_with("ghs_"));
    assert_eq!(seen.bearer(), Some(token.as_str()));
    assert_eq!(
        r.json::<Value>().await.unwrap()["token_id"],
        fakes::token_id(&token)
    );
    assert_eq!(fake.calls().len(), 1);

    // Both and no placeholder: which one is for the agent to say.
    let r = call("token nothing").await;
    assert_eq!(r.status(), 403);
    let err: Value = r.json().await.unwrap();
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("gh-app") && message.contains("gh-pat"),
        "{message}"
    );

    // The only service of an agent needs no placeholder.
    assert_eq!(
        repo(&clavis, "reader").await["repositories"],
        json!(["alpha"])
    );
}

#[tokio::test]
async fn git_over_https_gets_the_installation_token_as_gits_basic_credential() {
    let (_ca, fake, clavis) = setup("", AGENTS).await;
    // git's credential helper may hand a placeholder in a Basic header.
    let placeholder = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            "x-access-token:clavis:gh-app"
        )
    );
    let r = client(&clavis, "reader")
        .get("https://github.com/acme/alpha.git/info/refs?service=git-upload-pack")
        .header("Authorization", placeholder)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["repositories"], json!(["alpha"]), "the agent's scope");
    let (seen, grant) = fake.api_requests().last().cloned().unwrap();
    let token = grant.unwrap().token;
    assert_eq!(seen.bearer(), None, "git takes no bearer");
    let expected = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("x-access-token:{token}"),
    );
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Basic {expected}").as_str())
    );
    // A web page of github.com goes out with nothing injected.
    let r = client(&clavis, "reader")
        .get("https://github.com/acme/alpha")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the fake saw no credential");
    let (seen, _) = fake.api_requests().last().cloned().unwrap();
    assert_eq!(seen.header("authorization"), None);
}

#[tokio::test]
async fn agents_may_not_mint_installation_tokens_themselves() {
    let (_ca, fake, clavis) = setup("", AGENTS).await;
    for path in [
        format!("/app/installations/{INSTALLATION}/access_tokens"),
        "/app/installations/1/access_tokens/".to_owned(),
        format!("//app/installations/{INSTALLATION}/%61ccess_tokens"),
    ] {
        let r = client(&clavis, "full")
            .post(format!("https://api.github.com{path}"))
            .header("User-Agent", "test")
            .json(&json!({"permissions": {"administration": "write"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["type"], "clavis_forbidden", "{err}");
    }
    assert!(
        fake.calls().is_empty(),
        "nothing reached the token endpoint"
    );
}

#[tokio::test]
async fn a_bad_scope_is_a_config_error_naming_the_key() {
    let yaml = yaml(
        "",
        "  - { name: a, token: a-token-0123456789abcd, services: [gh-app], github_app: { repositories: [acme/alpha] } }\n",
    );
    let env: std::collections::HashMap<String, String> =
        [("GH_APP_KEY".to_owned(), "x".to_owned())].into();
    let e = clavis::Settings::from_yaml(&yaml, &env)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("agents[0].github_app.repositories[0]") && e.contains("without its owner"),
        "{e}"
    );
}
