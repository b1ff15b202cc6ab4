//! MCP over Streamable HTTP at `/mcp` (rmcp, both protocol eras, stateless).
//! Authentication, `Host` and `Origin` checks happen in the admin port's
//! middleware before rmcp sees the request; each tool call then acts as
//! `mcp:<agent>` through the same functions as the REST routes.

use std::borrow::Cow;
use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, ServerHandler};
use serde_json::{json, Value};

use super::api_proxy::{self, ProxyCall};
use super::entries;
use crate::error::{ProxyError, RequestError};
use crate::identity::{Caller, ScopeError, Via};
use crate::state::State;
use crate::upstream::{Cause, UpstreamError};

pub(super) type Service = StreamableHttpService<Mcp, NeverSessionManager>;

pub(super) fn service(state: State) -> Service {
    let limit = state.config.limits.admin_body;
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .with_max_request_body_bytes(limit)
        // Host and Origin are checked by the admin middleware, with the
        // configured allow-lists, before rmcp runs.
        .disable_allowed_hosts()
        .disable_allowed_origins();
    StreamableHttpService::new(
        move || {
            Ok(Mcp {
                state: state.clone(),
            })
        },
        Arc::new(NeverSessionManager::default()),
        config,
    )
}

#[derive(Clone)]
pub(super) struct Mcp {
    state: State,
}

fn schema(v: Value) -> Arc<JsonObject> {
    match v {
        Value::Object(map) => Arc::new(map),
        _ => Arc::new(JsonObject::new()),
    }
}

/// `{"<key>": [entry…]}`: the shape of list_services and search_entries.
fn entry_list(key: &str) -> Arc<JsonObject> {
    schema(json!({
        "type": "object",
        "properties": {key: {"type": "array", "items": {
            "type": "object",
            "properties": {
                "id": {"type": "string"}, "name": {"type": "string"}, "connector": {"type": "string"},
                "hosts": {"type": "array", "items": {"type": "string"}}, "notes": {"type": "string"},
                "url": {"type": ["string", "null"]}, "username": {"type": ["string", "null"]},
                "fields": {"type": "object"}, "has_credentials": {"type": "boolean"}
            },
            "required": ["id", "name", "connector", "hosts"]
        }}},
        "required": [key]
    }))
}

fn service_arg() -> Value {
    json!({"type": "string", "description": "service name or id"})
}

/// Every tool, in a fixed order; `get_token` only for agents with `reveal`.
fn tools(who: &Caller) -> Vec<Tool> {
    let mut tools = vec![
        Tool::new(
            "list_services",
            "List the services (API credentials held by clavis) this agent may use. Never returns secrets.",
            schema(json!({"type": "object", "properties": {}, "additionalProperties": false})),
        )
        .with_raw_output_schema(entry_list("services")),
        Tool::new(
            "search_entries",
            "Search entries by name, connector, host, notes or field names (case-insensitive).",
            schema(json!({"type": "object", "properties": {"query": {"type": "string", "maxLength": 256}}, "required": ["query"], "additionalProperties": false})),
        )
        .with_raw_output_schema(entry_list("entries")),
        Tool::new(
            "get_totp",
            "Current one-time code (RFC 6238) of a service whose credentials hold a TOTP secret.",
            schema(json!({"type": "object", "properties": {"service": service_arg()}, "required": ["service"], "additionalProperties": false})),
        )
        .with_raw_output_schema(schema(json!({
            "type": "object",
            "properties": {"code": {"type": "string"}, "period": {"type": "integer"}, "expires_in": {"type": "integer"}},
            "required": ["code", "period", "expires_in"]
        }))),
        Tool::new(
            "proxy_request",
            "Call the service's API with the real credential injected by clavis. The agent never sees the credential.",
            schema(json!({
                "type": "object",
                "properties": {
                    "service": service_arg(),
                    "method": {"type": "string", "description": "HTTP method, default GET"},
                    "path": {"type": "string", "description": "path and optional query, starting with /"},
                    "params": {"type": "object", "description": "query parameters", "additionalProperties": {"type": ["string", "number", "boolean"]}},
                    "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                    "body": {"description": "a string is sent as-is; any other JSON value is sent as application/json"}
                },
                "required": ["service", "path"],
                "additionalProperties": false
            })),
        )
        .with_raw_output_schema(schema(json!({
            "type": "object",
            "properties": {"status": {"type": "integer"}, "headers": {"type": "object"}, "body": {}},
            "required": ["status", "headers", "body"]
        }))),
        Tool::new(
            "wait_for_approval",
            "Wait (up to timeout_s, at most 60) for a person to decide an approval clavis asked for (the approval_id of an approval-pending answer); returns its record. Approved: send the identical request again.",
            schema(json!({"type": "object", "properties": {"id": {"type": "string"}, "timeout_s": {"type": "integer", "minimum": 0, "maximum": 60}}, "required": ["id"], "additionalProperties": false})),
        )
        .with_raw_output_schema(schema(json!({
            "type": "object",
            "properties": {"id": {"type": "string"}, "status": {"type": "string"}, "reason": {"type": ["string", "null"]}},
            "required": ["id", "status"]
        }))),
        Tool::new(
            "get_budgets",
            "Budgets and rate limits that apply to this agent: what is used, reserved and left, and when each resets.",
            schema(json!({"type": "object", "properties": {}, "additionalProperties": false})),
        )
        .with_raw_output_schema(schema(json!({
            "type": "object",
            "properties": {"budgets": {"type": "array", "items": {"type": "object"}}},
            "required": ["budgets"]
        }))),
        Tool::new(
            "generate_password",
            "A random password from the OS CSPRNG (8-128 characters, every character class present).",
            schema(json!({"type": "object", "properties": {"length": {"type": "integer", "minimum": 8, "maximum": 128}, "symbols": {"type": "boolean"}}, "additionalProperties": false})),
        )
        .with_raw_output_schema(schema(json!({
            "type": "object",
            "properties": {"password": {"type": "string"}, "length": {"type": "integer"}},
            "required": ["password", "length"]
        }))),
    ];
    if who.require_reveal().is_ok() {
        tools.push(Tool::new(
            "get_token",
            "Read a service's raw secret. Only for agents allowed to reveal; every call is audited.",
            schema(json!({"type": "object", "properties": {"service": service_arg()}, "required": ["service"], "additionalProperties": false})),
        )
        .with_raw_output_schema(schema(json!({
            "type": "object",
            "properties": {"access_token": {"type": "string"}, "token_type": {"type": "string"}, "expires_at": {}},
            "required": ["access_token", "token_type"]
        }))));
    }
    tools
}

/// The admin-port caller, now acting through MCP.
fn caller(context: &RequestContext<RoleServer>) -> Result<Caller, ErrorData> {
    context
        .extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Caller>())
        .map(|who| who.over(Via::Mcp))
        .ok_or_else(|| {
            ErrorData::internal_error("request reached MCP without authentication", None)
        })
}

fn string_arg(args: &JsonObject, name: &str) -> Result<String, ErrorData> {
    match args.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ErrorData::invalid_params(
            format!("argument {name:?} must be a string"),
            None,
        )),
        None => Err(ErrorData::invalid_params(
            format!("missing argument {name:?}"),
            None,
        )),
    }
}

fn only(args: &JsonObject, allowed: &[&str]) -> Result<(), ErrorData> {
    match args.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ErrorData::invalid_params(
            format!("unknown argument {k:?}"),
            None,
        )),
        None => Ok(()),
    }
}

fn ok(value: Value) -> CallToolResponse {
    let text = value.to_string();
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    result.structured_content = Some(value);
    result.into()
}

fn tool_error(e: ProxyError) -> CallToolResponse {
    CallToolResult::error(vec![ContentBlock::text(e.to_json().to_string())]).into()
}

impl Mcp {
    async fn run(
        &self,
        who: &Caller,
        name: &str,
        args: &JsonObject,
    ) -> Result<Result<Value, ProxyError>, ErrorData> {
        let state = &self.state;
        Ok(match name {
            "list_services" => {
                only(args, &[])?;
                entries::list(state, who).map(|s| json!({"services": s}))
            }
            "search_entries" => {
                only(args, &["query"])?;
                let q = string_arg(args, "query")?;
                entries::search(state, who, &q).map(|e| json!({"entries": e}))
            }
            "get_totp" => {
                only(args, &["service"])?;
                entries::totp(state, who, &string_arg(args, "service")?)
            }
            "wait_for_approval" => {
                only(args, &["id", "timeout_s"])?;
                let id = string_arg(args, "id")?;
                let secs = match args.get("timeout_s") {
                    None => 30,
                    Some(v) => v.as_u64().ok_or_else(|| {
                        ErrorData::invalid_params(
                            "timeout_s must be a whole number of seconds",
                            None,
                        )
                    })?,
                };
                super::approvals::wait(state, who, &id, std::time::Duration::from_secs(secs)).await
            }
            "get_budgets" => {
                only(args, &[])?;
                super::guardrails::budgets(state, who)
                    .await
                    .map(|b| json!({"budgets": b}))
            }
            "generate_password" => {
                only(args, &["length", "symbols"])?;
                let length = match args.get("length") {
                    None => 32,
                    Some(v) => v.as_u64().ok_or_else(|| {
                        ErrorData::invalid_params("length must be an integer", None)
                    })? as usize,
                };
                let symbols = match args.get("symbols") {
                    None => true,
                    Some(v) => v.as_bool().ok_or_else(|| {
                        ErrorData::invalid_params("symbols must be a boolean", None)
                    })?,
                };
                entries::generate(length, symbols)
            }
            "get_token" => {
                only(args, &["service"])?;
                let service = string_arg(args, "service")?;
                super::services::reveal(state, who, &service)
            }
            "proxy_request" => {
                let service = string_arg(args, "service")?;
                let mut rest = args.clone();
                rest.remove("service");
                let call: ProxyCall = serde_json::from_value(Value::Object(rest))
                    .map_err(|e| ErrorData::invalid_params(format!("proxy_request: {e}"), None))?;
                proxy(self.state.clone(), who.clone(), service, call).await
            }
            other => {
                return Err(ErrorData::invalid_params(
                    format!("unknown tool {other:?}"),
                    None,
                ))
            }
        })
    }
}

/// `proxy_request`: the shared injection path, then the answer collected
/// (capped) into `{status, headers, body}`. Boxed with owned arguments: the
/// future must be `Send` for every lifetime rmcp's trait asks about.
fn proxy(
    state: State,
    who: Caller,
    service: String,
    mut call: ProxyCall,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, ProxyError>> + Send>> {
    Box::pin(async move {
        // Ask for an identity encoding so the body is readable JSON or text.
        call.headers
            .retain(|k, _| !k.eq_ignore_ascii_case("accept-encoding"));
        let response = api_proxy::call(&state, &who, &service, call).await?;
        let limit = state.config.limits.max_body_buffer;
        let (parts, body) = response.into_parts();
        let bytes = crate::body::collect_capped(body, limit)
            .await
            .map_err(|e| match e {
                crate::body::Capped::TooLarge => ProxyError::from(RequestError::TooLarge { limit }),
                crate::body::Capped::Failed => ProxyError::from(UpstreamError::Unreachable {
                    host: service.clone(),
                    cause: Cause::BodyBroken,
                }),
            })?;
        let mut headers = serde_json::Map::new();
        for (k, v) in &parts.headers {
            headers.insert(
                k.as_str().to_owned(),
                json!(String::from_utf8_lossy(v.as_bytes())),
            );
        }
        let is_json = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.contains("json"));
        let body = match std::str::from_utf8(&bytes) {
            Ok(text) if is_json => serde_json::from_str(text).unwrap_or_else(|_| json!(text)),
            Ok(text) => json!(text),
            Err(_) => {
                use base64::Engine;
                json!({"base64": base64::engine::general_purpose::STANDARD.encode(&bytes)})
            }
        };
        Ok(json!({"status": parts.status.as_u16(), "headers": headers, "body": body}))
    })
}

impl ServerHandler for Mcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("clavis", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "clavis holds API credentials for this agent. Use proxy_request to call an API with the \
                 credential injected; list_services and search_entries show what is available.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let who = caller(&context)?;
        Ok(ListToolsResult::with_all_items(tools(&who)))
    }

    fn get_tool(&self, _name: &str) -> Option<Tool> {
        None
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let who = caller(&context)?;
        let name: Cow<'static, str> = request.name;
        if !tools(&who).iter().any(|t| t.name == name) {
            if name == "get_token" {
                // It exists, but not for this caller: a refusal.
                let why = ScopeError::NoReveal {
                    agent: who.name().to_owned(),
                };
                super::denied::tool(&self.state, &who, &name, &why.to_string(), false);
            }
            return Err(ErrorData::invalid_params(
                format!("unknown tool {name:?}"),
                None,
            ));
        }
        let args = request.arguments.unwrap_or_default();
        tracing::info!(actor = %who.actor(), tool = %name, "mcp tool call");
        Ok(match self.run(&who, &name, &args).await? {
            Ok(value) => ok(value),
            Err(e) => {
                if e.is_admin_refusal() {
                    let missing = e.status() == http::StatusCode::NOT_FOUND;
                    super::denied::tool(&self.state, &who, &name, &e.to_string(), missing);
                }
                tool_error(e)
            }
        })
    }
}
