//! `GET /v1/agents` (admin only): the agents, their services and reveal
//! right, for `clavis agents list` and the console; never a token.

mod support;

use support::*;

#[tokio::test]
async fn admin_lists_agents_without_tokens() {
    let yaml = r#"
services:
  - { name: my-github, connector: github, credentials: { api_key: "ghp_REALgithub0123456789abcdef" } }
  - { name: an-openai, connector: openai, credentials: { api_key: "sk-REAL-openai-0123456789" } }
agents:
  - { name: codex, token: codex-token, services: ["*"] }
  - { name: narrow, token: narrow-token, services: [my-github, an-openai], reveal: true }
"#;
    let clavis = Clavis::builder(yaml).start(None, None).await;
    let admin_token = std::fs::read_to_string(clavis.dir.path().join("ca/admin.token")).unwrap();
    let url = format!("http://{}/v1/agents", clavis.admin);
    let agents = get_json(&admin_client(), &url, admin_token.trim()).await;
    assert_eq!(
        agents,
        serde_json::json!([
            {"name": "codex", "services": ["*"], "reveal": false},
            {"name": "narrow", "services": ["an-openai", "my-github"], "reveal": true},
        ])
    );
    let status = get_status(&admin_client(), &url, "codex-token").await;
    assert_eq!(status, 403);
}
