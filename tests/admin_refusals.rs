//! Every refusal on the admin port and MCP is audited as `denied` (SPEC §5,
//! threat model T9: "throttle and audit failures"): `get_token` without
//! `reveal` (REST and MCP), admin-only routes asked by an agent, lookups
//! outside the agent's scope, a foreign `Host` or `Origin`. An agent cannot
//! flood the log with them: each caller has a budget a minute, past which
//! one line says so and the rest go unrecorded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{json, Value};
use support::*;

const ADMIN: &str = "admin-token-refusals-0123456789";
const NARROW: &str = "narrow-agent-token-0123456789";

async fn setup() -> (TestCa, Upstream, Clavis) {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    let yaml = format!(
        "admin: {{ token: \"{ADMIN}\" }}\n{}",
        standard_yaml().replace(
            "  - { name: narrow, token: narrow-token, services: [my-github] }",
            &format!("  - {{ name: narrow, token: \"{NARROW}\", services: [my-github] }}"),
        )
    );
    let clavis = Clavis::builder(&yaml).start(Some(&up), Some(&ca)).await;
    (ca, up, clavis)
}

fn url(clavis: &Clavis, path: &str) -> String {
    format!("http://{}{path}", clavis.admin)
}

/// The `denied` events of `actor`, newest first.
fn denied(clavis: &Clavis, actor: &str) -> Vec<Value> {
    clavis
        .state
        .audit_events(1000)
        .into_iter()
        .filter(|e| e["action"] == "denied" && e["actor"] == actor)
        .collect()
}

async fn mcp_call(clavis: &Clavis, token: &str, tool: &str, args: Value) -> Value {
    let r = admin_client()
        .post(url(clavis, "/mcp"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2025-06-18")
        .body(
            json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                   "params": {"name": tool, "arguments": args}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn get_token_without_reveal_is_audited_as_denied_over_rest_and_mcp() {
    let (_ca, _up, clavis) = setup().await;
    let r = admin_client()
        .get(url(&clavis, "/v1/services/my-github/token"))
        .bearer_auth(NARROW)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let rest = denied(&clavis, "api:narrow");
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(rest[0]["detail"]["path"], "/v1/services/my-github/token");
    assert_eq!(rest[0]["detail"]["status"], 403);
    assert!(rest[0]["detail"]["note"]
        .as_str()
        .unwrap()
        .contains("reveal"));

    let v = mcp_call(
        &clavis,
        NARROW,
        "get_token",
        json!({"service": "my-github"}),
    )
    .await;
    assert!(v["error"].is_object(), "not callable without reveal: {v}");
    let mcp = denied(&clavis, "mcp:narrow");
    assert_eq!(mcp.len(), 1, "{mcp:?}");
    assert!(mcp[0]["detail"]["note"]
        .as_str()
        .unwrap()
        .contains("get_token"));
    let all = serde_json::to_string(&clavis.state.audit_events(1000)).unwrap();
    assert!(!all.contains(REAL_GITHUB));
}

#[tokio::test]
async fn admin_only_routes_refused_to_an_agent_are_audited_as_denied() {
    let (_ca, _up, clavis) = setup().await;
    let c = admin_client();
    let r = c
        .post(url(&clavis, "/v1/services"))
        .bearer_auth(NARROW)
        .json(&json!({"name": "x", "connector_name": "openai"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(get_status(&c, url(&clavis, "/v1/audit"), NARROW).await, 403);
    let r = c
        .delete(url(&clavis, "/v1/services/my-github"))
        .bearer_auth(NARROW)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let events = denied(&clavis, "api:narrow");
    let paths: Vec<&str> = events
        .iter()
        .map(|e| e["detail"]["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["/v1/services/my-github", "/v1/audit", "/v1/services"],
        "{events:?}"
    );
    assert!(events.iter().all(|e| e["detail"]["status"] == 403));
}

#[tokio::test]
async fn lookups_outside_the_agents_scope_are_audited_as_denied() {
    let (_ca, up, clavis) = setup().await;
    let c = admin_client();
    assert_eq!(
        get_status(&c, url(&clavis, "/v1/services/my-openai"), NARROW).await,
        404
    );
    assert_eq!(
        get_status(&c, url(&clavis, "/api/entries/my-stripe"), NARROW).await,
        404
    );
    let r = c
        .post(url(&clavis, "/v1/proxy/my-openai"))
        .bearer_auth(NARROW)
        .json(&json!({"path": "/v1/models"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v = mcp_call(
        &clavis,
        NARROW,
        "proxy_request",
        json!({"service": "my-openai", "path": "/v1/models"}),
    )
    .await;
    assert_eq!(v["result"]["isError"], true, "{v}");
    assert!(up.seen().is_empty(), "nothing was sent");
    assert_eq!(denied(&clavis, "api:narrow").len(), 3);
    assert_eq!(denied(&clavis, "mcp:narrow").len(), 1);
    // The admin asking for a service that does not exist is a miss, not a
    // refusal.
    assert_eq!(
        get_status(&c, url(&clavis, "/v1/services/nope"), ADMIN).await,
        404
    );
    assert!(denied(&clavis, "admin").is_empty());
}

#[tokio::test]
async fn a_foreign_host_or_origin_is_audited_as_denied() {
    let (_ca, _up, clavis) = setup().await;
    let c = admin_client();
    let r = c
        .get(url(&clavis, "/v1/services"))
        .bearer_auth(NARROW)
        .header("host", "rebind.evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .get(url(&clavis, "/v1/services"))
        .bearer_auth(NARROW)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let events = denied(&clavis, "api:unauthenticated@127.0.0.1");
    assert_eq!(events.len(), 2, "{events:?}");
    let all = serde_json::to_string(&events).unwrap();
    assert!(!all.contains(NARROW), "the token is never audited");
}

/// An agent refused again and again leaves a bounded trace: its budget
/// (30 a minute), then one line saying the rest go unrecorded. Other
/// callers keep their own budgets.
#[tokio::test]
async fn an_agent_cannot_flood_the_audit_log_with_refusals() {
    let (_ca, _up, clavis) = setup().await;
    let c = admin_client();
    let before = clavis.state.audit_len();
    for _ in 0..200 {
        assert_eq!(get_status(&c, url(&clavis, "/v1/audit"), NARROW).await, 403);
    }
    for _ in 0..20 {
        mcp_call(
            &clavis,
            NARROW,
            "get_token",
            json!({"service": "my-github"}),
        )
        .await;
    }
    let events = denied(&clavis, "api:narrow");
    let mcp = denied(&clavis, "mcp:narrow");
    assert_eq!(events.len() + mcp.len(), 31, "the budget and one note");
    assert_eq!(clavis.state.audit_len() - before, 31);
    assert!(events[0]["detail"]["note"]
        .as_str()
        .unwrap()
        .contains("not audited"));
    // The answers themselves did not change: still 403, never 429.
    assert_eq!(get_status(&c, url(&clavis, "/v1/audit"), NARROW).await, 403);
    // Another caller is refused and audited as before.
    assert_eq!(
        get_status(&c, url(&clavis, "/v1/audit"), "codex-token").await,
        403
    );
    assert_eq!(denied(&clavis, "api:codex").len(), 1);
}
