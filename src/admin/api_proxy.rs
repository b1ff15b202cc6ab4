//! `POST /v1/proxy/{name}`: a request described as JSON, sent through the
//! same injection path as the proxy port ([`exchange::forward`]), with the
//! upstream's status, headers and body streamed back as they are.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State as AxumState};
use axum::http::HeaderMap;
use axum::Extension;
use http::{header, HeaderName, HeaderValue, Method, Request};
use serde::Deserialize;
use serde_json::Value;

use super::auth::Principal;
use super::json;
use crate::app::State;
use crate::audit::Actor;
use crate::body;
use crate::connector::inject::percent_encode;
use crate::error::ProxyError;
use crate::proxy::exchange::{self, Caller, Choice, Target};

/// The JSON shape shared by `/v1/proxy` and MCP `proxy_request`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyCall {
    #[serde(default)]
    pub method: Option<String>,
    pub path: String,
    #[serde(default)]
    pub params: BTreeMap<String, Value>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: Option<Value>,
}

impl ProxyCall {
    /// Builds the request; the URI carries only path and query, the
    /// destination comes from the service's connector.
    pub fn into_request(self) -> Result<Request<body::Body>, ProxyError> {
        let method = self.method.as_deref().unwrap_or("GET").to_ascii_uppercase();
        let method = Method::from_bytes(method.as_bytes()).map_err(|_| {
            ProxyError::Unprocessable(format!("method {method:?} is not an HTTP method"))
        })?;
        if method == Method::CONNECT {
            return Err(ProxyError::Unprocessable(
                "method CONNECT is not allowed".into(),
            ));
        }
        let path = &self.path;
        if !path.starts_with('/')
            || path.starts_with("//")
            || path.contains(['#', '\\'])
            || path.bytes().any(|b| b <= b' ' || b == 0x7f)
        {
            return Err(ProxyError::Unprocessable(format!(
                "path {path:?} must start with a single '/' and contain no spaces, control characters, backslash or fragment"
            )));
        }
        let mut target = path.clone();
        let mut sep = if target.contains('?') { '&' } else { '?' };
        for (key, value) in &self.params {
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => {
                    return Err(ProxyError::Unprocessable(format!(
                        "params.{key} must be a string, number or boolean"
                    )))
                }
            };
            target.push(sep);
            target.push_str(&percent_encode(key));
            target.push('=');
            target.push_str(&percent_encode(&text));
            sep = '&';
        }
        let mut req = Request::builder()
            .method(method)
            .uri(&target)
            .body(())
            .map_err(|_| {
                ProxyError::Unprocessable(format!("path {path:?} is not a valid request target"))
            })?;
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                ProxyError::Unprocessable(format!("headers: {name:?} is not a header name"))
            })?;
            if set_by_clavis(&name) {
                return Err(ProxyError::Unprocessable(format!(
                    "headers.{name}: clavis sets the destination and the framing; remove it"
                )));
            }
            let value = HeaderValue::from_str(value).map_err(|_| {
                ProxyError::Unprocessable(format!("headers.{name}: value has control characters"))
            })?;
            req.headers_mut().append(name, value);
        }
        let bytes = match self.body {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => s.into_bytes(),
            Some(other) => {
                if !req.headers().contains_key(header::CONTENT_TYPE) {
                    req.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                }
                serde_json::to_vec(&other).map_err(|e| ProxyError::Internal(e.to_string()))?
            }
        };
        Ok(req.map(|()| body::full(bytes)))
    }
}

/// Headers a `/v1/proxy` or MCP caller may not set: the destination and
/// the message framing are clavis's (a `Content-Length` that disagrees with
/// the body must never reach a pooled upstream connection).
fn set_by_clavis(name: &HeaderName) -> bool {
    let name = name.as_str();
    matches!(name, "host" | "content-length") || crate::proxy::headers::is_hop_by_hop(name)
}

/// Resolves the service (404 outside scope) and forwards the call.
pub async fn call(
    state: &State,
    who: &Principal,
    actor: Actor,
    service: &str,
    call: ProxyCall,
) -> Result<http::Response<body::Body>, ProxyError> {
    let service = super::services::visible(state, who, service)?;
    let connector = service.connector.clone();
    let host = connector
        .primary_host()
        .ok_or_else(|| {
            ProxyError::Unprocessable(format!(
                "connector {:?} has only wildcard hosts",
                connector.name
            ))
        })?
        .to_owned();
    let target = std::sync::Arc::new(Target::new(state, host, connector.port, connector)?);
    let caller = std::sync::Arc::new(Caller {
        agent: who.agent().cloned(),
        actor,
    });
    let req = call.into_request()?;
    exchange::forward(state, &caller, &target, Choice::Named(&service.name), req).await
}

pub async fn handle(
    AxumState(state): AxumState<State>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::response::Response, ProxyError> {
    let req: ProxyCall = json::parse(&headers, body, state.config.limits.admin_body)?;
    let response = call(&state, &who, who.actor(), &name, req).await?;
    Ok(response.map(axum::body::Body::new))
}
