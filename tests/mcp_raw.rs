//! MCP at `/mcp` spoken as raw JSON-RPC over HTTP (no SDK), in both protocol
//! eras: the legacy one (`initialize` handshake, `MCP-Protocol-Version:
//! 2025-06-18`) and the modern one (2026-07-28: per-request `_meta`,
//! `Mcp-Method` / `Mcp-Name` headers). Every tool is called; errors are MCP
//! errors; the admin port's token / Origin / Host checks cover `/mcp`; calls
//! are audited as `mcp:<agent>`.
// Helpers below are not `#[test]` functions, so clippy.toml's
// allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{json, Value};
use support::*;

const ADMIN: &str = "admin-token-mcp-0123456789";
const PLAIN: &str = "plain-agent-token-0123456789";
const REVEALER: &str = "revealer-agent-token-0123456789";

const ALPHA_KEY: &str = "sk-ALPHAmcpcredential-7f3a9c";
const BETA_KEY: &str = "BSA-BETAmcpcredential-41d2e8";
const GAMMA_KEY: &str = "ghp_GAMMAmcpcredential5b6c7d";
const SENSITIVE: &str = "hunter2-quasar-mcp-sensitive";
const SEED: &[u8] = b"12345678901234567890";

const LEGACY: &str = "2025-06-18";
const MODERN: &str = "2026-07-28";

const BASE_TOOLS: &[&str] = &[
    "list_services",
    "search_entries",
    "get_totp",
    "proxy_request",
    "wait_for_approval",
    "get_budgets",
    "generate_password",
];

fn yaml() -> String {
    let totp = base32(SEED);
    format!(
        r#"
admin: {{ token: "{ADMIN}" }}
services:
  - name: alpha-mail
    connector: openai
    credentials: {{ api_key: "{ALPHA_KEY}", totp_secret: "{totp}" }}
    notes: "Mail relay for the Zephyr project"
    fields:
      - {{ name: recovery_code, value: "{SENSITIVE}", sensitive: true }}
  - name: beta-search
    connector: brave-search
    credentials: {{ api_key: "{BETA_KEY}" }}
    notes: "Orion lookup"
  - name: gamma-code
    connector: github
    credentials: {{ api_key: "{GAMMA_KEY}" }}
agents:
  - {{ name: plain, token: "{PLAIN}", services: [alpha-mail, gamma-code] }}
  - {{ name: revealer, token: "{REVEALER}", services: [alpha-mail], reveal: true }}
"#
    )
}

struct Env {
    _ca: TestCa,
    up: Upstream,
    clavis: Clavis,
    c: reqwest::Client,
}

impl Env {
    async fn new() -> Env {
        let ca = TestCa::new();
        let up = Upstream::start(&ca, ALL_HOSTS).await;
        let clavis = Clavis::builder(&yaml()).start(Some(&up), Some(&ca)).await;
        Env {
            _ca: ca,
            up,
            clavis,
            c: admin_client(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.clavis.admin)
    }

    fn client(&self, token: &'static str, era: &'static str) -> Mcp<'_> {
        Mcp {
            env: self,
            token,
            era,
            next_id: std::sync::atomic::AtomicU64::new(1),
        }
    }

    async fn audit(&self, query: &str) -> Vec<Value> {
        let r = self
            .c
            .get(self.url(&format!("/v1/audit?{query}")))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap().as_array().unwrap().clone()
    }
}

/// One MCP client: a token and a protocol era.
struct Mcp<'a> {
    env: &'a Env,
    token: &'static str,
    era: &'static str,
    next_id: std::sync::atomic::AtomicU64,
}

/// A JSON-RPC answer from the HTTP response (plain JSON or one SSE event).
async fn rpc_body(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = r.text().await.unwrap();
    if text.is_empty() {
        return (status, Value::Null);
    }
    let v = if ctype.starts_with("text/event-stream") {
        let data = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim)
            .rfind(|d| !d.is_empty())
            .unwrap_or_else(|| panic!("no SSE data: {text}"));
        serde_json::from_str(data).unwrap()
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    (status, v)
}

impl Mcp<'_> {
    fn request(&self, method: &str, params: Value, name: Option<&str>) -> reqwest::RequestBuilder {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut params = params;
        if self.era == MODERN && method != "initialize" {
            let obj = params.as_object_mut().unwrap();
            let meta = obj.entry("_meta").or_insert_with(|| json!({}));
            meta["io.modelcontextprotocol/protocolVersion"] = json!(MODERN);
            meta["io.modelcontextprotocol/clientInfo"] =
                json!({"name": "clavis-mcp-raw", "version": "1.0"});
            meta["io.modelcontextprotocol/clientCapabilities"] = json!({});
        }
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let mut r = self
            .env
            .c
            .post(self.env.url("/mcp"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .bearer_auth(self.token)
            .body(body.to_string());
        if method != "initialize" {
            r = r.header("MCP-Protocol-Version", self.era);
        }
        if self.era == MODERN {
            r = r.header("Mcp-Method", method);
            if let Some(name) = name {
                r = r.header("Mcp-Name", name);
            }
        }
        r
    }

    /// Sends a request; (HTTP status, JSON-RPC answer).
    async fn send(&self, method: &str, params: Value, name: Option<&str>) -> (u16, Value) {
        rpc_body(self.request(method, params, name).send().await.unwrap()).await
    }

    /// The legacy handshake: `initialize`, then `notifications/initialized`.
    async fn initialize(&self) -> Value {
        let (status, v) = self
            .send(
                "initialize",
                json!({
                    "protocolVersion": LEGACY,
                    "capabilities": {},
                    "clientInfo": {"name": "clavis-mcp-raw", "version": "1.0"}
                }),
                None,
            )
            .await;
        assert_eq!(status, 200, "{v}");
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let r = self
            .env
            .c
            .post(self.env.url("/mcp"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("MCP-Protocol-Version", LEGACY)
            .bearer_auth(self.token)
            .body(note.to_string())
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "notifications/initialized: {}",
            r.status()
        );
        v["result"].clone()
    }

    /// Starts the era: legacy does the handshake, modern needs none.
    async fn start(&self) {
        if self.era == LEGACY {
            let info = self.initialize().await;
            assert_eq!(info["protocolVersion"], LEGACY, "{info}");
            assert_eq!(info["serverInfo"]["name"], "clavis", "{info}");
            assert!(info["capabilities"]["tools"].is_object(), "{info}");
        }
    }

    async fn tool_names(&self) -> Vec<String> {
        let (status, v) = self.send("tools/list", json!({}), None).await;
        assert_eq!(status, 200, "{v}");
        let tools = v["result"]["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("tools/list: {v}"));
        for t in tools {
            assert!(t["description"].is_string(), "{t}");
            assert_eq!(t["inputSchema"]["type"], "object", "{t}");
        }
        tools
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// `tools/call`: the whole JSON-RPC answer.
    async fn call_raw(&self, tool: &str, args: Value) -> (u16, Value) {
        self.send(
            "tools/call",
            json!({"name": tool, "arguments": args}),
            Some(tool),
        )
        .await
    }

    /// A successful tool call: its structured content (checked against the
    /// text content).
    async fn call(&self, tool: &str, args: Value) -> Value {
        let (status, v) = self.call_raw(tool, args.clone()).await;
        assert_eq!(status, 200, "{tool} {args}: {v}");
        let result = &v["result"];
        assert!(result.is_object(), "{tool} {args}: {v}");
        assert_ne!(result["isError"], true, "{tool} {args}: {v}");
        let structured = result["structuredContent"].clone();
        assert!(structured.is_object(), "{tool}: no structuredContent: {v}");
        let text = result["content"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("{tool}: no text content: {v}"));
        assert_eq!(
            serde_json::from_str::<Value>(text).unwrap(),
            structured,
            "{tool}: text and structured content differ"
        );
        structured
    }

    /// A JSON-RPC error (not a result): its code.
    async fn call_error(&self, tool: &str, args: Value) -> i64 {
        let (status, v) = self.call_raw(tool, args.clone()).await;
        assert!(status < 500, "{tool} {args}: HTTP {status}: {v}");
        assert!(
            v["result"].is_null(),
            "{tool} {args}: expected an error: {v}"
        );
        v["error"]["code"]
            .as_i64()
            .unwrap_or_else(|| panic!("{tool} {args}: no error code: {v}"))
    }

    /// A tool result with `isError: true`: its text.
    async fn call_tool_error(&self, tool: &str, args: Value) -> String {
        let (status, v) = self.call_raw(tool, args.clone()).await;
        assert_eq!(status, 200, "{tool} {args}: {v}");
        assert_eq!(v["result"]["isError"], true, "{tool} {args}: {v}");
        v["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

fn totp_candidates(unix: &[u64]) -> Vec<String> {
    unix.iter()
        .map(|t| {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, SEED);
            let tag = ring::hmac::sign(&key, &(t / 30).to_be_bytes());
            let mac = tag.as_ref();
            let o = (mac[19] & 0x0f) as usize;
            let bin = (u32::from(mac[o] & 0x7f) << 24)
                | (u32::from(mac[o + 1]) << 16)
                | (u32::from(mac[o + 2]) << 8)
                | u32::from(mac[o + 3]);
            format!("{:06}", bin % 1_000_000)
        })
        .collect()
}

fn no_secret(v: &Value) {
    let text = v.to_string();
    for s in [
        ALPHA_KEY,
        BETA_KEY,
        GAMMA_KEY,
        SENSITIVE,
        &base32(SEED),
        "mcpcredential",
    ] {
        assert!(!text.contains(s), "leaks {s:?}: {text}");
    }
}

/// Every tool once, as `plain` (and `get_token` as `revealer`), in one era.
async fn every_tool(era: &'static str) {
    let env = Env::new().await;
    let plain = env.client(PLAIN, era);
    plain.start().await;
    let revealer = env.client(REVEALER, era);
    revealer.start().await;
    let admin = env.client(ADMIN, era);
    admin.start().await;

    assert_eq!(plain.tool_names().await, BASE_TOOLS);
    let mut with_reveal: Vec<&str> = BASE_TOOLS.to_vec();
    with_reveal.push("get_token");
    assert_eq!(revealer.tool_names().await, with_reveal);
    assert_eq!(admin.tool_names().await, with_reveal);

    // list_services: scope only, no secrets.
    let v = plain.call("list_services", json!({})).await;
    let mut names: Vec<&str> = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, vec!["alpha-mail", "gamma-code"], "{v}");
    no_secret(&v);

    // search_entries: case-insensitive, scoped, never over secrets.
    let v = plain
        .call("search_entries", json!({"query": "ZEPHYR"}))
        .await;
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{v}");
    assert_eq!(entries[0]["name"], "alpha-mail");
    assert_eq!(
        entries[0]["fields"]["recovery_code"],
        json!({"value": "[REDACTED]", "l2": true})
    );
    no_secret(&v);
    let v = plain
        .call("search_entries", json!({"query": "orion"}))
        .await;
    assert_eq!(v["entries"], json!([]), "plain found beta-search: {v}");
    let v = plain
        .call("search_entries", json!({"query": "quasar"}))
        .await;
    assert_eq!(v["entries"], json!([]), "matched a sensitive value: {v}");

    // get_totp: equals RFC 6238 for this window.
    let before = unix_now();
    let v = plain
        .call("get_totp", json!({"service": "alpha-mail"}))
        .await;
    let after = unix_now();
    assert_eq!(v["period"], 30, "{v}");
    let code = v["code"].as_str().unwrap();
    let candidates = totp_candidates(&[before, after, before.saturating_sub(1)]);
    assert!(
        candidates.iter().any(|c| c == code),
        "{code} vs {candidates:?}"
    );
    let e = v["expires_in"].as_u64().unwrap();
    assert!((1..=30).contains(&e), "{v}");

    // proxy_request: reaches the echo upstream with the real key; the result
    // is {status, headers, body}.
    let before = env.up.seen().len();
    let v = plain
        .call(
            "proxy_request",
            json!({
                "service": "alpha-mail",
                "method": "POST",
                "path": "/v1/chat/completions",
                "params": {"probe": "mcp", "n": 2},
                "headers": {"x-probe": "raw-mcp"},
                "body": {"model": "gpt-test", "messages": []}
            }),
        )
        .await;
    assert_eq!(env.up.seen().len(), before + 1);
    let seen = env.up.last();
    assert_eq!(seen.host, "api.openai.com");
    assert_eq!(seen.method, "POST");
    assert!(
        seen.path.starts_with("/v1/chat/completions?"),
        "{}",
        seen.path
    );
    assert!(seen.path.contains("probe=mcp"), "{}", seen.path);
    assert!(seen.path.contains("n=2"), "{}", seen.path);
    assert_eq!(
        seen.all("authorization"),
        vec![format!("Bearer {ALPHA_KEY}").as_str()],
        "the real key, exactly once"
    );
    assert_eq!(seen.header("x-probe"), Some("raw-mcp"));
    assert_eq!(
        seen.body_len,
        json!({"model": "gpt-test", "messages": []})
            .to_string()
            .len()
    );
    assert_eq!(v["status"], 200, "{v}");
    assert!(v["headers"].is_object(), "{v}");
    assert!(
        v["headers"]["content-type"]
            .as_str()
            .is_some_and(|c| c.contains("json")),
        "{v}"
    );
    assert_eq!(v["body"]["method"], "POST", "{v}");
    assert_eq!(v["body"]["host"], "api.openai.com", "{v}");
    // The echo repeats the injected header: it comes back scrubbed.
    no_secret(&v);

    // proxy_request: an upstream error status is a result, not an error.
    let v = plain
        .call(
            "proxy_request",
            json!({"service": "gamma-code", "path": "/status/404"}),
        )
        .await;
    assert_eq!(v["status"], 404, "{v}");
    assert_eq!(
        env.up.last().header("authorization"),
        Some(format!("Bearer {GAMMA_KEY}").as_str())
    );
    no_secret(&v);

    // generate_password.
    let v = plain
        .call("generate_password", json!({"length": 20, "symbols": false}))
        .await;
    let p = v["password"].as_str().unwrap();
    assert_eq!(p.len(), 20, "{v}");
    assert!(p.bytes().all(|b| b.is_ascii_alphanumeric()), "{v}");
    // No budget is configured here: an empty list, not an error.
    let v = plain.call("get_budgets", json!({})).await;
    assert_eq!(v["budgets"], json!([]), "{v}");
    let v = plain.call("generate_password", json!({})).await;
    assert_eq!(v["password"].as_str().unwrap().len(), 32, "{v}");

    // get_token: revealer only.
    let v = revealer
        .call("get_token", json!({"service": "alpha-mail"}))
        .await;
    assert_eq!(v["access_token"], ALPHA_KEY, "{v}");
    assert_eq!(
        plain
            .call_error("get_token", json!({"service": "alpha-mail"}))
            .await,
        -32602
    );

    // Audit: every call as mcp:<agent>.
    let audit = env.audit("actor=mcp:plain&limit=100").await;
    let actions: Vec<&str> = audit
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in ["read", "search", "totp", "proxy"] {
        assert!(actions.contains(&a), "no {a} in {actions:?}");
    }
    assert!(audit.iter().any(|e| e["action"] == "search"
        && e["detail"]["note"]
            .as_str()
            .is_some_and(|n| n.contains("ZEPHYR"))));
    assert!(audit
        .iter()
        .any(|e| e["action"] == "totp" && e["entry"] == "alpha-mail"));
    assert!(audit
        .iter()
        .any(|e| e["action"] == "proxy" && e["entry"] == "alpha-mail"));
    let audit = env.audit("actor=mcp:revealer&limit=100").await;
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "reveal" && e["entry"] == "alpha-mail"),
        "{audit:?}"
    );
    no_secret(&Value::Array(env.audit("limit=1000").await));
}

#[tokio::test]
async fn legacy_era_every_tool() {
    every_tool(LEGACY).await;
}

#[tokio::test]
async fn modern_era_every_tool() {
    every_tool(MODERN).await;
}

/// Bad calls are JSON-RPC errors or tool errors, never crashes; nothing out
/// of scope reaches the upstream.
async fn errors(era: &'static str) {
    let env = Env::new().await;
    let plain = env.client(PLAIN, era);
    plain.start().await;
    let revealer = env.client(REVEALER, era);
    revealer.start().await;

    // Unknown tool and bad arguments: -32602.
    assert_eq!(plain.call_error("no_such_tool", json!({})).await, -32602);
    assert_eq!(plain.call_error("get_totp", json!({})).await, -32602);
    assert_eq!(
        plain.call_error("get_totp", json!({"service": 42})).await,
        -32602
    );
    assert_eq!(
        plain
            .call_error("get_totp", json!({"service": "alpha-mail", "extra": 1}))
            .await,
        -32602
    );
    assert_eq!(
        plain.call_error("search_entries", json!({"q": "x"})).await,
        -32602
    );
    assert_eq!(
        plain
            .call_error("list_services", json!({"unexpected": true}))
            .await,
        -32602
    );
    assert_eq!(
        plain
            .call_error("generate_password", json!({"length": "twenty"}))
            .await,
        -32602
    );
    assert_eq!(
        plain
            .call_error("generate_password", json!({"symbols": "yes"}))
            .await,
        -32602
    );
    assert_eq!(
        plain
            .call_error("proxy_request", json!({"path": "/v1/models"}))
            .await,
        -32602
    );
    assert_eq!(
        plain
            .call_error(
                "proxy_request",
                json!({"service": "alpha-mail", "path": "/x", "bogus": 1})
            )
            .await,
        -32602
    );
    assert_eq!(
        plain
            .call_error(
                "proxy_request",
                json!({"service": "alpha-mail", "path": "/x", "headers": {"a": 1}})
            )
            .await,
        -32602
    );
    assert_eq!(
        plain
            .call_error("get_token", json!({"service": "alpha-mail"}))
            .await,
        -32602,
        "get_token is not a tool for a non-reveal agent"
    );
    // Out-of-range length: refused either way, never a password.
    let (_, v) = plain
        .call_raw("generate_password", json!({"length": 7}))
        .await;
    assert!(
        v["error"]["code"] == -32602 || v["result"]["isError"] == true,
        "{v}"
    );
    let (_, v) = plain
        .call_raw("generate_password", json!({"length": 129}))
        .await;
    assert!(
        v["error"]["code"] == -32602 || v["result"]["isError"] == true,
        "{v}"
    );

    // Out of scope: a tool result with isError, nothing sent upstream.
    let before = env.up.seen().len();
    let text = plain
        .call_tool_error("get_totp", json!({"service": "beta-search"}))
        .await;
    assert!(!text.contains("code\":"), "{text}");
    plain
        .call_tool_error(
            "proxy_request",
            json!({"service": "beta-search", "path": "/res/v1/web/search"}),
        )
        .await;
    plain
        .call_tool_error("get_totp", json!({"service": "no-such-service"}))
        .await;
    // In scope but without a TOTP secret.
    plain
        .call_tool_error("get_totp", json!({"service": "gamma-code"}))
        .await;
    let text = revealer
        .call_tool_error("get_token", json!({"service": "gamma-code"}))
        .await;
    assert!(!text.contains(GAMMA_KEY), "{text}");
    revealer
        .call_tool_error(
            "proxy_request",
            json!({"service": "gamma-code", "path": "/user"}),
        )
        .await;
    assert_eq!(env.up.seen().len(), before, "out-of-scope call went out");
    // Bad method: a tool error, not a crash.
    let (status, v) = plain
        .call_raw(
            "proxy_request",
            json!({"service": "alpha-mail", "method": "CONNECT", "path": "/"}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        v["result"]["isError"] == true || v["error"]["code"].is_i64(),
        "{v}"
    );
    assert_eq!(env.up.seen().len(), before);

    // Unknown JSON-RPC method: an error, not a crash.
    let (status, v) = plain.send("no/such/method", json!({}), None).await;
    assert!(status < 500, "{status}: {v}");
    assert!(v["error"]["code"].is_i64(), "{v}");

    // Still healthy after all that.
    assert_eq!(plain.tool_names().await, BASE_TOOLS);
    let denied: Vec<Value> = env.audit("limit=1000").await;
    no_secret(&Value::Array(denied));
}

#[tokio::test]
async fn legacy_era_errors() {
    errors(LEGACY).await;
}

#[tokio::test]
async fn modern_era_errors() {
    errors(MODERN).await;
}

#[tokio::test]
async fn legacy_initialize_negotiates() {
    let env = Env::new().await;
    let plain = env.client(PLAIN, LEGACY);
    // The previous revisions are echoed back.
    for version in ["2025-03-26", "2025-06-18"] {
        let (status, v) = plain
            .send(
                "initialize",
                json!({"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}),
                None,
            )
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["result"]["protocolVersion"], version, "{v}");
        assert_eq!(v["result"]["serverInfo"]["name"], "clavis");
    }
    // Stateless: no session id is handed out.
    let r = plain
        .request(
            "initialize",
            json!({"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}),
            None,
        )
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("mcp-session-id").is_none());
    // JSON responses, not SSE.
    assert!(r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json")));
}

#[tokio::test]
async fn modern_era_header_mismatch_is_refused() {
    let env = Env::new().await;
    let plain = env.client(PLAIN, MODERN);
    // Mcp-Name naming another tool than the body: refused before the tool runs.
    let before = env.up.seen().len();
    let body = json!({
        "jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {
            "name": "proxy_request",
            "arguments": {"service": "alpha-mail", "path": "/v1/models"},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
                "io.modelcontextprotocol/clientCapabilities": {}
            }
        }
    });
    let r = env
        .c
        .post(env.url("/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", MODERN)
        .header("Mcp-Method", "tools/call")
        .header("Mcp-Name", "list_services")
        .bearer_auth(plain.token)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let (status, v) = rpc_body(r).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"]["code"].is_i64(), "{v}");
    assert_eq!(env.up.seen().len(), before);
}

#[tokio::test]
async fn token_origin_and_host_are_checked() {
    let env = Env::new().await;
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {}
        }
    }});
    let post = || {
        env.c
            .post(env.url("/mcp"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("MCP-Protocol-Version", MODERN)
            .header("Mcp-Method", "tools/list")
            .body(list.to_string())
    };
    // Missing / wrong token / token elsewhere: 401, no tools.
    for r in [
        post(),
        post().bearer_auth("wrong-token"),
        post().header("x-api-key", PLAIN),
        post().basic_auth("plain", Some(PLAIN)),
    ] {
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 401);
        let text = r.text().await.unwrap();
        assert!(!text.contains("list_services"), "{text}");
    }
    let r = env
        .c
        .post(env.url(&format!("/mcp?token={PLAIN}")))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(list.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Foreign Origin (a browser page): 403 even with a good token.
    for origin in [
        "https://evil.example",
        "http://127.0.0.1.evil.example",
        "null",
    ] {
        let r = post()
            .bearer_auth(PLAIN)
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "Origin {origin}");
        let text = r.text().await.unwrap();
        assert!(!text.contains("list_services"), "{text}");
    }
    // A foreign Host (DNS rebinding): 403.
    let r = post()
        .bearer_auth(PLAIN)
        .header("host", "rebind.evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Loopback Origin and Host names: fine.
    for origin in [
        format!("http://{}", env.clavis.admin),
        "http://localhost:6274".to_owned(),
    ] {
        let r = post()
            .bearer_auth(PLAIN)
            .header("origin", origin.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "Origin {origin}");
    }
    let r = post()
        .bearer_auth(PLAIN)
        .header("host", format!("localhost:{}", env.clavis.admin.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, v) = rpc_body(r).await;
    assert_eq!(v["result"]["tools"].as_array().unwrap().len(), 7, "{v}");
}

#[tokio::test]
async fn admin_calls_are_audited_as_admin() {
    let env = Env::new().await;
    let admin = env.client(ADMIN, MODERN);
    let v = admin.call("list_services", json!({})).await;
    assert_eq!(v["services"].as_array().unwrap().len(), 3);
    let v = admin
        .call("get_token", json!({"service": "beta-search"}))
        .await;
    assert_eq!(v["access_token"], BETA_KEY);
    let audit = env.audit("actor=admin&limit=100").await;
    assert!(audit
        .iter()
        .any(|e| e["action"] == "reveal" && e["entry"] == "beta-search"));
}

/// SPEC §3.1 "Echoed secrets are scrubbed" and §7 "No secret appears in …
/// API answers": an upstream that echoes the injected key must not hand it
/// to the agent through `proxy_request`.
#[tokio::test]
async fn proxy_request_scrubs_echoed_credential() {
    let env = Env::new().await;
    for era in [LEGACY, MODERN] {
        let plain = env.client(PLAIN, era);
        plain.start().await;
        let v = plain
            .call(
                "proxy_request",
                json!({"service": "alpha-mail", "path": "/v1/models"}),
            )
            .await;
        assert_eq!(
            env.up.last().header("authorization"),
            Some(format!("Bearer {ALPHA_KEY}").as_str())
        );
        assert_eq!(v["status"], 200);
        no_secret(&v);
        assert!(v.to_string().contains("[REDACTED]"), "{v}");
    }
}
