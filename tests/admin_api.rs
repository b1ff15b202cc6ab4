//! The management REST API: the four calls existing clients make, scopes,
//! and every error status.

mod support;

use serde_json::{json, Value};
use support::*;

const ADMIN: &str = "admin-token-0123456789abcdef";

async fn setup(extra: &str) -> (TestCa, Upstream, Clavis) {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    let yaml = format!(
        "admin: {{ token: \"{ADMIN}\" }}\n{}\n{extra}",
        standard_yaml().replace(
            "  - { name: narrow, token: narrow-token, services: [my-github] }",
            "  - { name: narrow, token: narrow-token, services: [my-github] }\n  - { name: revealer, token: revealer-token, services: [my-openai], reveal: true }"
        )
    );
    let clavis = Clavis::builder(&yaml).start(Some(&up), Some(&ca)).await;
    (ca, up, clavis)
}

fn api(clavis: &Clavis) -> String {
    format!("http://{}", clavis.admin)
}

fn http() -> reqwest::Client {
    admin_client()
}

#[tokio::test]
async fn register_store_reveal_and_proxy() {
    let (_ca, up, clavis) = setup("").await;
    let c = http();
    let r = c
        .post(format!("{}/v1/services", api(&clavis)))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "my-anthropic2", "connector_name": "anthropic"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["connector_name"], "anthropic");
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));

    let r = c
        .post(format!("{}/v1/services/{id}/credentials", api(&clavis)))
        .bearer_auth(ADMIN)
        .json(&json!({"token_type": "api_key", "data": {"api_key": "sk-ant-stored-by-api-123"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"status": "stored", "validated": false})
    );

    let r = c
        .get(format!("{}/v1/services/my-anthropic2/token", api(&clavis)))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["access_token"],
        "sk-ant-stored-by-api-123"
    );

    let r = c
        .post(format!("{}/v1/proxy/my-anthropic2", api(&clavis)))
        .bearer_auth(ADMIN)
        .json(&json!({"method": "POST", "path": "/v1/messages", "body": {"model": "claude", "max_tokens": 5}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(seen.host, "api.anthropic.com");
    assert_eq!(seen.header("x-api-key"), Some("sk-ant-stored-by-api-123"));
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(seen.body_len, r#"{"max_tokens":5,"model":"claude"}"#.len());

    let audit: Value = get_json(&c, format!("{}/v1/audit?limit=10", api(&clavis)), ADMIN).await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    // The echo upstream sends the injected key back: the scrubber masks it
    // and records the event (newest first).
    assert_eq!(actions, vec!["denied", "proxy", "reveal", "store"]);
    assert!(audit[0]["detail"]["note"]
        .as_str()
        .unwrap()
        .contains("echoed"));
    assert_eq!(audit[1]["actor"], "admin");
    assert_eq!(audit[1]["detail"]["status"], 200);
    assert!(!audit.to_string().contains("sk-ant-stored"));
}

#[tokio::test]
async fn agents_see_their_scope_only() {
    let (_ca, up, clavis) = setup("").await;
    let c = http();
    let list: Value = get_json(&c, format!("{}/v1/services", api(&clavis)), "narrow-token").await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["my-github"]);
    assert!(!list.to_string().contains(REAL_GITHUB));
    let get = |key: &'static str, token: &'static str| {
        let c = c.clone();
        let url = format!("{}/v1/services/{key}", api(&clavis));
        async move { get_status(&c, url, token).await }
    };
    assert_eq!(get("my-openai", "narrow-token").await, 404);
    assert_eq!(get("my-github", "narrow-token").await, 200);
    // Agent on admin-only routes: 403; non-reveal agent reading a token: 403.
    let r = c
        .post(format!("{}/v1/services", api(&clavis)))
        .bearer_auth("narrow-token")
        .json(&json!({"name": "x", "connector_name": "openai"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .get(format!("{}/v1/services/my-github/token", api(&clavis)))
        .bearer_auth("narrow-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .get(format!("{}/v1/services/my-openai/token", api(&clavis)))
        .bearer_auth("revealer-token")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["access_token"],
        REAL_OPENAI
    );
    // /v1/proxy outside scope: 404 and nothing sent.
    let before = up.seen().len();
    let r = c
        .post(format!("{}/v1/proxy/my-openai", api(&clavis)))
        .bearer_auth("narrow-token")
        .json(&json!({"path": "/v1/models"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(up.seen().len(), before);
    let r = c
        .post(format!("{}/v1/proxy/my-github", api(&clavis)))
        .bearer_auth("narrow-token")
        .json(&json!({"path": "/user", "params": {"per_page": 5}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().path, "/user?per_page=5");
    assert_eq!(
        up.last().header("authorization"),
        Some(format!("Bearer {REAL_GITHUB}").as_str())
    );
}

#[tokio::test]
async fn error_statuses() {
    let (_ca, _up, clavis) = setup("").await;
    let c = http();
    let url = |p: &str| format!("{}{p}", api(&clavis));
    let post = |path: &str, ctype: &str, body: &str| {
        c.post(url(path))
            .bearer_auth(ADMIN)
            .header("content-type", ctype.to_owned())
            .body(body.to_owned())
    };
    assert_eq!(
        c.get(url("/v1/services")).send().await.unwrap().status(),
        401
    );
    assert_eq!(get_status(&c, url("/v1/services"), "nope").await, 401);
    assert_eq!(
        c.get(url("/v1/services?token=x"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let r = post(
        "/v1/services",
        "application/json",
        r#"{"name":"a","connector_name":"opnai"}"#,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("opnai"));
    let r = post(
        "/v1/services",
        "application/json",
        r#"{"name":"my-openai","connector_name":"openai"}"#,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 409);
    let r = post(
        "/v1/services",
        "application/json",
        r#"{"name": "a", "connector_name"#,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("column"));
    let r = post(
        "/v1/services",
        "text/plain",
        r#"{"name":"a","connector_name":"openai"}"#,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 415);
    let big = format!(
        r#"{{"name":"{}","connector_name":"openai"}}"#,
        "a".repeat(2 * 1024 * 1024)
    );
    let r = post("/v1/services", "application/json", &big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = post(
        "/v1/services/my-openai/credentials",
        "application/json",
        r#"{"token_type":"api_key","data":{"api_key":"pk-wrong"}}"#,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 422);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("api_key") && !body.contains("pk-wrong"),
        "{body}"
    );
    // A line break would only fail later, on every request, as a header
    // that cannot be built: refused when stored, naming the field only.
    let r = post(
        "/v1/services/my-openai/credentials",
        "application/json",
        r#"{"token_type":"api_key","data":{"api_key":"sk-crlf\r\nX-Injected: 1"}}"#,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 422);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("api_key") && body.contains("control character") && !body.contains("sk-crlf"),
        "{body}"
    );
    let r = post(
        "/v1/services/my-openai/credentials",
        "application/json",
        r#"{"token_type":"api_key","data":{}}"#,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 422);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("missing credential field \\\"api_key\\\""));
    assert_eq!(get_status(&c, url("/v1/services/nope"), ADMIN).await, 404);
    assert_eq!(get_status(&c, url("/v1/nope"), ADMIN).await, 404);
    assert_eq!(
        c.put(url("/v1/services"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
    let r = c
        .get(url("/v1/services"))
        .bearer_auth(ADMIN)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .get(url("/v1/services"))
        .bearer_auth(ADMIN)
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .get(url("/v1/audit?limit=100000"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .delete(url("/v1/services/my-stripe"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        get_status(&c, url("/v1/services/my-stripe"), ADMIN).await,
        404
    );
}

#[tokio::test]
async fn repeated_auth_failures_are_throttled() {
    let (_ca, _up, clavis) = setup("").await;
    let c = http();
    let url = format!("{}/v1/services", api(&clavis));
    for _ in 0..10 {
        assert_eq!(get_status(&c, &url, "wrong").await, 401);
    }
    assert_eq!(get_status(&c, &url, "wrong").await, 429);
    // Only failing attempts are throttled: the admin is still served.
    assert_eq!(get_status(&c, &url, ADMIN).await, 200);
    // Each failure up to the throttle left a trace; the refused guesses
    // after it do not flood the log.
    let audit = clavis.state.audit_events(100);
    let failures: Vec<_> = audit
        .iter()
        .filter(|e| e["detail"]["note"] == "authentication failed")
        .collect();
    assert_eq!(failures.len(), 10, "{audit:?}");
    assert_eq!(failures[0]["action"], "denied");
    assert_eq!(failures[0]["actor"], "api:unauthenticated@127.0.0.1");
    assert_eq!(failures[0]["detail"]["path"], "/v1/services");
    assert!(!serde_json::to_string(&audit).unwrap().contains("wrong"));
}

/// The agent shares the admin's address (a pod's localhost), so a
/// per-address lockout would let it lock the operator out with ten wrong
/// tokens. Only failing attempts are slowed (`429` with `Retry-After`);
/// the admin token, agent tokens, `/mcp` and `/v1/audit` keep working.
#[tokio::test]
async fn a_flood_of_wrong_tokens_never_locks_out_a_valid_token() {
    let (_ca, _up, clavis) = setup("").await;
    let c = http();
    let url = |p: &str| format!("{}{p}", api(&clavis));
    for _ in 0..30 {
        let r = c
            .get(url("/v1/services"))
            .bearer_auth("guess")
            .send()
            .await
            .unwrap();
        assert!(matches!(r.status().as_u16(), 401 | 429));
    }
    let r = c
        .get(url("/v1/services"))
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let none = c.get(url("/v1/services")).send().await.unwrap();
    assert_eq!(none.status(), 429, "no token is a failing attempt too");

    assert_eq!(get_status(&c, url("/v1/services"), ADMIN).await, 200);
    assert_eq!(get_status(&c, url("/v1/audit"), ADMIN).await, 200);
    assert_eq!(
        get_status(&c, url("/v1/services"), "codex-token").await,
        200
    );
    assert_eq!(
        get_status(&c, url("/api/entries"), "codex-token").await,
        200
    );
    for token in [ADMIN, "codex-token"] {
        let r = c
            .post(url("/mcp"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(
                json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": {"name": "t", "version": "1"}}})
                .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "/mcp with a valid token");
    }
    // Past the throttle the guesses are not audited one by one.
    let audit = clavis.state.audit_events(1000);
    let guesses = audit
        .iter()
        .filter(|e| e["actor"] == "api:unauthenticated@127.0.0.1")
        .count();
    assert_eq!(
        guesses, 11,
        "ten failures and one note that the rest are throttled"
    );
}

#[tokio::test]
async fn live_check_rejects_a_bad_github_token() {
    let (_ca, up, clavis) = setup("").await;
    let _ = &up;
    let c = http();
    // The echo upstream answers 200 for /user: the credential validates.
    let r = c
        .post(format!(
            "{}/v1/services/my-github/credentials",
            api(&clavis)
        ))
        .bearer_auth(ADMIN)
        .json(&json!({"token_type": "api_key", "data": {"api_key": "ghp_newtoken123"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"status": "stored", "validated": true})
    );
    assert_eq!(up.last().path, "/user");
    assert_eq!(
        up.last().header("authorization"),
        Some("Bearer ghp_newtoken123")
    );
}

/// `/v1/proxy` input that could change where or how a request is framed is
/// refused with 422 naming it; TRACE, which would echo the injected
/// credential, is refused on the API and the proxy port alike. Nothing
/// reaches the upstream.
/// Threat model T10: the credential is clavis's to set. A `/v1/proxy` or
/// MCP `proxy_request` call carrying one of the connector's own auth
/// headers (any case, `_` for `-`) is `422` naming it, not silently
/// stripped, and nothing is sent.
#[tokio::test]
async fn proxy_calls_may_not_set_the_connectors_auth_headers() {
    let (_ca, up, clavis) = setup("").await;
    let c = http();
    for (service, header) in [
        ("my-openai", "Authorization"),
        ("my-openai", "api-key"),
        ("my-anthropic", "X-Api-Key"),
        ("my-anthropic", "x_api_key"),
        ("my-brave", "X-Subscription-Token"),
        ("my-github", "AUTHORIZATION"),
    ] {
        let r = c
            .post(format!("{}/v1/proxy/{service}", api(&clavis)))
            .bearer_auth(ADMIN)
            .json(&json!({"path": "/v1/x", "headers": {header: "Bearer clavis:placeholder"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{service} {header}");
        let err: Value = r.json().await.unwrap();
        let message = err["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("headers.{}", header.to_ascii_lowercase())),
            "{message}"
        );
    }
    // The same through MCP: a tool error naming the header.
    let r = c
        .post(format!("{}/mcp", api(&clavis)))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2025-06-18")
        .body(
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
                "name": "proxy_request",
                "arguments": {"service": "my-openai", "path": "/v1/models",
                              "headers": {"authorization": "Bearer sk-agent-own"}}}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["result"]["isError"], true, "{v}");
    let text = v["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("headers.authorization"), "{text}");
    assert!(text.contains("clavis_unprocessable"), "{text}");
    assert!(up.seen().is_empty(), "forwarded: {:?}", up.seen());
    // Other headers still pass.
    let r = c
        .post(format!("{}/v1/proxy/my-openai", api(&clavis)))
        .bearer_auth(ADMIN)
        .json(&json!({"path": "/v1/x", "headers": {"x-trace-id": "abc"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().header("x-trace-id"), Some("abc"));
}

#[tokio::test]
async fn proxy_calls_may_not_set_framing_or_destination() {
    let (_ca, up, clavis) = setup("").await;
    let c = http();
    let call = |body: Value| {
        c.post(format!("{}/v1/proxy/my-openai", api(&clavis)))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
    };
    for (body, names) in [
        (
            json!({"path": "/v1/x", "headers": {"Content-Length": "1000"}}),
            "content-length",
        ),
        (
            json!({"path": "/v1/x", "headers": {"Transfer-Encoding": "chunked"}}),
            "transfer-encoding",
        ),
        (
            json!({"path": "/v1/x", "headers": {"Host": "evil.test"}}),
            "host",
        ),
        (
            json!({"path": "/v1/x", "headers": {"Proxy-Authorization": "Basic eA=="}}),
            "proxy-authorization",
        ),
        (json!({"path": "/v1\\..\\login"}), "backslash"),
        (json!({"method": "TRACE", "path": "/v1/x"}), "TRACE"),
    ] {
        let r = call(body.clone()).await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert!(matches!(status, 405 | 422), "{body}: {status} {text}");
        assert!(text.contains(names), "{body}: {text}");
    }
    let r = clavis
        .client(Some(("codex", "codex-token")))
        .request(reqwest::Method::TRACE, "https://api.openai.com/v1/models")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert!(up.seen().is_empty(), "forwarded: {:?}", up.seen());
}
