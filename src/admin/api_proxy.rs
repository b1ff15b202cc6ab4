//! `POST /v1/proxy/{name}`: a request described as JSON, sent through the
//! same injection path as the proxy port ([`exchange::forward`]), with the
//! upstream's status, headers and body streamed back as they are. The
//! caller names the service; the destination, the framing and the
//! credential are clavis's (`422` for a header that would set them).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State as AxumState};
use axum::http::HeaderMap;
use axum::Extension;
use http::{header, HeaderName, HeaderValue, Method, Request};
use serde::Deserialize;
use serde_json::Value;

use super::json;
use crate::body;
use crate::error::{ProxyError, RequestError};
use crate::identity::Caller;
use crate::proxy::exchange::{self, Choice, Target};
use crate::state::State;

fn invalid(text: String) -> ProxyError {
    RequestError::Invalid(text).into()
}

/// The JSON shape shared by `/v1/proxy` and MCP `proxy_request`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProxyCall {
    #[serde(default)]
    method: Option<String>,
    path: String,
    #[serde(default)]
    params: BTreeMap<String, Value>,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<Value>,
}

impl ProxyCall {
    /// Builds the request; the URI carries only path and query, the
    /// destination comes from the service's connector.
    pub(super) fn into_request(self) -> Result<Request<body::Body>, ProxyError> {
        let method = self.method.as_deref().unwrap_or("GET").to_ascii_uppercase();
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| invalid(format!("method {method:?} is not an HTTP method")))?;
        if method == Method::CONNECT {
            return Err(invalid("method CONNECT is not allowed".into()));
        }
        let path = &self.path;
        if !path.starts_with('/')
            || path.starts_with("//")
            || path.contains(['#', '\\'])
            || path.bytes().any(|b| b <= b' ' || b == 0x7f)
        {
            return Err(invalid(format!(
                "path {path:?} must start with a single '/' and contain no spaces, control characters, backslash or fragment"
            )));
        }
        let mut target = crate::encoding::Target::new(path);
        for (key, value) in &self.params {
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => {
                    return Err(invalid(format!(
                        "params.{key} must be a string, number or boolean"
                    )))
                }
            };
            target.push(key, &text);
        }
        let mut req = Request::builder()
            .method(method)
            .uri(target.finish())
            .body(())
            .map_err(|_| invalid(format!("path {path:?} is not a valid request target")))?;
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(format!("headers: {name:?} is not a header name")))?;
            if set_by_clavis(&name) {
                return Err(invalid(format!(
                    "headers.{name}: clavis sets the destination and the framing; remove it"
                )));
            }
            let value = HeaderValue::from_str(value)
                .map_err(|_| invalid(format!("headers.{name}: value has control characters")))?;
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
                serde_json::to_vec(&other)
                    .map_err(|_| ProxyError::Internal("a JSON value did not serialize"))?
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
pub(super) async fn call(
    state: &State,
    who: &Caller,
    service: &str,
    call: ProxyCall,
) -> Result<http::Response<body::Body>, ProxyError> {
    let service = super::services::visible(state, who, service)?;
    let connector = service.connector.clone();
    let host = connector
        .primary_host()
        .ok_or_else(|| {
            invalid(format!(
                "connector {:?} has only wildcard hosts",
                connector.name
            ))
        })?
        .to_owned();
    // The credential is clavis's to set (threat model T10): an auth header
    // the connector strips is refused rather than silently dropped, so the
    // caller learns its value never went anywhere.
    if let Some(name) = call.headers.keys().find(|name| {
        HeaderName::from_bytes(name.as_bytes())
            .is_ok_and(|n| crate::proxy::headers::is_auth_header(&n, &connector.strip))
    }) {
        return Err(invalid(format!(
            "headers.{}: service {:?} authenticates with its own credential (connector {:?}); remove the header",
            name.to_ascii_lowercase(),
            service.name,
            connector.name
        )));
    }
    let target = std::sync::Arc::new(Target::new(
        state,
        state.live(),
        host,
        connector.port,
        connector,
    )?);
    let caller = std::sync::Arc::new(who.clone());
    let req = call.into_request()?;
    exchange::forward(state, &caller, &target, Choice::Named(&service.name), req).await
}

pub(super) async fn handle(
    AxumState(state): AxumState<State>,
    Extension(who): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::response::Response, ProxyError> {
    let req: ProxyCall = json::parse(&headers, body, state.config.limits.admin_body)?;
    let response = call(&state, &who, &name, req).await?;
    Ok(response.map(axum::body::Body::new))
}
