//! Each built-in header connector, end to end through HTTPS_PROXY: the
//! upstream receives the real credential and no trace of the placeholder.

mod support;

use support::*;

async fn setup() -> (TestCa, Upstream, Clavis) {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    let clavis = Clavis::builder(&standard_yaml())
        .start(Some(&up), Some(&ca))
        .await;
    (ca, up, clavis)
}

fn assert_no_placeholder(seen: &Seen) {
    for (name, value) in &seen.headers {
        assert!(
            !value.contains("placeholder"),
            "placeholder leaked in {name}: {value}"
        );
        assert!(!name.starts_with("proxy-"), "{name} reached the upstream");
    }
}

#[tokio::test]
async fn openai_gets_bearer_real_key() {
    let (_ca, up, clavis) = setup().await;
    let r = clavis
        .client(Some(("codex", "codex-token")))
        .post("https://api.openai.com/v1/chat/completions")
        .bearer_auth("placeholder")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {REAL_OPENAI}").as_str())
    );
    assert_eq!(seen.all("authorization").len(), 1);
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_no_placeholder(&seen);
}

#[tokio::test]
async fn anthropic_strips_both_key_headers_and_defaults_version() {
    let (_ca, up, clavis) = setup().await;
    let r = clavis
        .client(Some(("codex", "codex-token")))
        .post("https://api.anthropic.com/v1/messages")
        .header("x-api-key", "placeholder")
        .header("Authorization", "Bearer placeholder")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(seen.header("x-api-key"), Some(REAL_ANTHROPIC));
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    assert_no_placeholder(&seen);
}

#[tokio::test]
async fn anthropic_keeps_the_agents_version() {
    let (_ca, up, clavis) = setup().await;
    clavis
        .client(None)
        .get("https://api.anthropic.com/v1/models")
        .header("anthropic-version", "2026-10-21")
        .header("X-Api-Key", "placeholder")
        .send()
        .await
        .unwrap();
    assert_eq!(up.last().header("anthropic-version"), Some("2026-10-21"));
}

#[tokio::test]
async fn github_replaces_pygithub_token_form() {
    let (_ca, up, clavis) = setup().await;
    for host in ["api.github.com", "uploads.github.com"] {
        let r = clavis
            .client(Some(("codex", "codex-token")))
            .get(format!("https://{host}/user"))
            .header("Authorization", "token placeholder")
            .header("authorization", "Token placeholder2")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let seen = up.last();
        assert_eq!(
            seen.all("authorization"),
            vec![format!("Bearer {REAL_GITHUB}")]
        );
        assert_no_placeholder(&seen);
    }
}

#[tokio::test]
async fn stripe_and_brave() {
    let (_ca, up, clavis) = setup().await;
    let client = clavis.client(Some(("codex", "codex-token")));
    client
        .get("https://api.stripe.com/v1/balance")
        .bearer_auth("sk_test_placeholder")
        .send()
        .await
        .unwrap();
    assert_eq!(
        up.last().header("authorization"),
        Some(format!("Bearer {REAL_STRIPE}").as_str())
    );
    client
        .get("https://api.search.brave.com/res/v1/web/search?q=rust")
        .header("X-Subscription-Token", "placeholder")
        .header("x_subscription_token", "placeholder")
        .send()
        .await
        .unwrap();
    let seen = up.last();
    assert_eq!(seen.all("x-subscription-token"), vec![REAL_BRAVE]);
    assert_eq!(seen.path, "/res/v1/web/search?q=rust");
    assert_no_placeholder(&seen);
}

#[tokio::test]
async fn h2_from_the_client_works_and_is_checked() {
    let (_ca, up, clavis) = setup().await;
    let r = clavis
        .client_builder(Some(("codex", "codex-token")))
        .http2_prior_knowledge()
        .build()
        .unwrap()
        .get("https://api.openai.com/v1/models")
        .bearer_auth("placeholder")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(
        up.last().header("authorization"),
        Some(format!("Bearer {REAL_OPENAI}").as_str())
    );
}

#[tokio::test]
async fn placeholder_names_the_service() {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    let yaml = r#"
services:
  - { name: work, connector: openai, credentials: { api_key: "sk-work-key" } }
  - { name: home, connector: openai, credentials: { api_key: "sk-home-key" }, default: true }
"#;
    let clavis = Clavis::builder(yaml).start(Some(&up), Some(&ca)).await;
    let client = clavis.client(None);
    client
        .get("https://api.openai.com/v1/models")
        .bearer_auth("clavis:work")
        .send()
        .await
        .unwrap();
    assert_eq!(
        up.last().header("authorization"),
        Some("Bearer sk-work-key")
    );
    client
        .get("https://api.openai.com/v1/models")
        .bearer_auth("whatever")
        .send()
        .await
        .unwrap();
    assert_eq!(
        up.last().header("authorization"),
        Some("Bearer sk-home-key")
    );
    let r = client
        .get("https://api.openai.com/v1/models")
        .bearer_auth("clavis:nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}
