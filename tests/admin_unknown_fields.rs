//! SPEC §5: a request body with a field the route does not know is `422`
//! naming the field, on every route (a typo in `POST /v1/services` must not
//! register a service without what it meant), and nothing happens. The
//! routes are read from `docs/openapi.json`, so a new route with a body is
//! walked too (and fails here until it has a fixture). Query strings with
//! an unknown parameter are refused (`400`) naming it; MCP tool arguments
//! likewise (`-32602`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{json, Value};
use support::*;

const ADMIN: &str = "admin-token-fields-0123456789";
const TYPO: &str = "conector_name";

async fn setup() -> (TestCa, Upstream, Clavis) {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    let yaml = format!("admin: {{ token: \"{ADMIN}\" }}\n{}", standard_yaml());
    let clavis = Clavis::builder(&yaml).start(Some(&up), Some(&ca)).await;
    (ca, up, clavis)
}

fn openapi() -> Value {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A valid body for each route that takes one, with `where_` saying where
/// in it the unknown field goes (`""`: the top level).
fn fixture(path: &str) -> Option<(Value, &'static str)> {
    Some(match path {
        "/v1/services" => (
            json!({"name": "typo-svc", "connector_name": "openai",
                   "fields": [{"name": "account", "value": "x"}]}),
            "",
        ),
        "/v1/services/{key}/credentials" => (
            json!({"token_type": "api_key", "data": {"api_key": "sk-from-a-fixture-0123"}}),
            "",
        ),
        "/v1/proxy/{name}" => (json!({"method": "GET", "path": "/v1/models"}), ""),
        _ => return None,
    })
}

#[tokio::test]
async fn every_admin_route_refuses_a_body_field_it_does_not_know() {
    let (_ca, up, clavis) = setup().await;
    let c = admin_client();
    let spec = openapi();
    let mut walked = Vec::new();
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            if op.get("requestBody").is_none() || path == "/mcp" {
                continue;
            }
            let (valid, _) = fixture(path)
                .unwrap_or_else(|| panic!("{method} {path} takes a body: add a fixture here"));
            let mut body = valid.clone();
            body[TYPO] = json!("openai");
            let url = format!(
                "http://{}{}",
                clavis.admin,
                path.replace("{key}", "my-openai")
                    .replace("{name}", "my-openai")
            );
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = c
                .request(method.clone(), &url)
                .bearer_auth(ADMIN)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status();
            let err: Value = r.json().await.unwrap();
            assert_eq!(status, 422, "{method} {path}: {err}");
            assert_eq!(err["error"]["type"], "clavis_unprocessable", "{err}");
            let message = err["error"]["message"].as_str().unwrap();
            assert!(message.contains(TYPO), "{method} {path}: {message}");
            walked.push(format!("{method} {path}"));
        }
    }
    assert_eq!(walked.len(), 3, "{walked:?}");
    // Nothing happened: no service registered, nothing sent upstream, the
    // stored credential unchanged.
    let list: Value = get_json(&c, format!("http://{}/v1/services", clavis.admin), ADMIN).await;
    assert!(!list.to_string().contains("typo-svc"), "{list}");
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    let token: Value = get_json(
        &c,
        format!("http://{}/v1/services/my-openai/token", clavis.admin),
        ADMIN,
    )
    .await;
    assert_eq!(token["access_token"], REAL_OPENAI);
}

#[tokio::test]
async fn a_nested_unknown_field_is_refused_too() {
    let (_ca, _up, clavis) = setup().await;
    let r = admin_client()
        .post(format!("http://{}/v1/services", clavis.admin))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "nested", "connector_name": "openai",
                      "fields": [{"name": "pin", "value": "1", "senstive": true}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let err: Value = r.json().await.unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("senstive"),
        "{err}"
    );
}

#[tokio::test]
async fn every_query_route_refuses_a_parameter_it_does_not_know() {
    let (_ca, _up, clavis) = setup().await;
    let c = admin_client();
    let spec = openapi();
    let mut walked = 0;
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let params: Vec<&str> = op
                .get("parameters")
                .and_then(|p| p.as_array())
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "query")
                .filter_map(|p| p["name"].as_str())
                .collect();
            if params.is_empty() {
                continue;
            }
            assert_eq!(method, "get", "{path}");
            let known = if params.contains(&"q") { "q=a&" } else { "" };
            let url = format!("http://{}{path}?{known}limt=5", clavis.admin);
            let r = c.get(&url).bearer_auth(ADMIN).send().await.unwrap();
            let status = r.status();
            let text = r.text().await.unwrap();
            assert_eq!(status, 400, "{path}: {text}");
            assert!(text.contains("limt"), "{path}: {text}");
            walked += 1;
        }
    }
    assert_eq!(walked, 3);
}

#[tokio::test]
async fn mcp_tool_arguments_it_does_not_know_are_refused() {
    let (_ca, up, clavis) = setup().await;
    for (tool, args) in [
        (
            "proxy_request",
            json!({"service": "my-openai", "path": "/v1/models", "hedaers": {}}),
        ),
        ("list_services", json!({"hedaers": 1})),
        ("generate_password", json!({"lenght": 12})),
    ] {
        let r = admin_client()
            .post(format!("http://{}/mcp", clavis.admin))
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("MCP-Protocol-Version", "2025-06-18")
            .body(
                json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": tool, "arguments": args}})
                .to_string(),
            )
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], -32602, "{tool}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("hedaers") || message.contains("lenght"),
            "{tool}: {message}"
        );
    }
    assert!(up.seen().is_empty());
}
