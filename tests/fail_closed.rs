//! clavis fails closed: a credential leaves only after its use is audited
//! (invariant I6; `audit.file` that cannot be written means `503` and
//! nothing upstream), and a claimed host whose service holds no credentials
//! is refused, never forwarded with the agent's placeholder (threat model T3).

// Helpers here are not `#[test]` functions, so clippy.toml's
// allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::Value;
use support::*;

#[tokio::test]
async fn an_unwritable_audit_file_stops_every_credential_use() {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    // /dev/full opens for writing and fails every write with ENOSPC.
    let yaml = standard_yaml() + "audit: { file: /dev/full }\n";
    let clavis = Clavis::builder(&yaml).start(Some(&up), Some(&ca)).await;
    let client = clavis.client(Some(("codex", "codex-token")));
    for url in [
        "https://api.openai.com/v1/models",
        "https://api.github.com/user",
    ] {
        let r = client
            .get(url)
            .bearer_auth("placeholder")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503, "{url}");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["type"], "clavis_audit_unavailable", "{err}");
    }
    assert!(
        up.seen().is_empty(),
        "forwarded without an audit record: {:?}",
        up.seen()
    );
    let metrics = admin_client()
        .get(format!("http://{}/metrics", clavis.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let failures = metrics
        .lines()
        .find(|l| l.starts_with("clavis_audit_failures_total"))
        .unwrap_or_else(|| panic!("no audit failure counter in\n{metrics}"));
    assert!(failures.ends_with(" 2"), "{failures}");
}

#[tokio::test]
async fn a_service_without_credentials_is_503_and_nothing_is_forwarded() {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    let yaml = "services:\n  - { name: empty-openai, connector: openai }\n";
    let clavis = Clavis::builder(yaml).start(Some(&up), Some(&ca)).await;
    let r = clavis
        .client(None)
        .get("https://api.openai.com/v1/models")
        .bearer_auth("sk-agent-placeholder-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["type"], "clavis_credentials_missing", "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("empty-openai"),
        "{err}"
    );
    assert!(
        up.seen().is_empty(),
        "the placeholder went upstream: {:?}",
        up.seen()
    );
    let audit = clavis.state.audit_events(10);
    assert_eq!(audit[0]["action"], "denied", "{audit:?}");
    assert_eq!(audit[0]["entry"], "empty-openai", "{audit:?}");
}
