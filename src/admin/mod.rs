//! The admin port: public health/CA routes, then the authenticated REST API
//! (`/v1/...`) behind [`auth::authenticate`]. The agent shares the pod's
//! localhost, so the port treats every caller as hostile.

mod agents;
mod api_proxy;
mod approvals;
mod auth;
mod console;
mod denied;
mod entries;
mod guardrails;
mod json;
mod live_check;
mod mcp;
mod reload;
mod services;
mod stream;

use std::net::SocketAddr;

use axum::extract::{Query, State as AxumState};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::error::{ProxyError, RequestError};
use crate::identity::Caller;
use crate::proxy::Ctx;
use crate::state::State;

/// The admin API's JSON request bodies, by route.
#[derive(Debug, Clone, Copy)]
pub(crate) enum BodyRoute {
    /// `POST /v1/services`
    CreateService,
    /// `POST /v1/services/{id}/credentials`
    StoreCredentials,
    /// `POST /v1/proxy/{name}` (and MCP `proxy_request`), up to the request it builds.
    Proxy,
    /// `POST /v1/approvals/{id}/approve` and `/deny`
    Decision,
}

/// Reads `body` as `route` does, without a server or state: the fuzz
/// targets' entry (hostile bytes must give an error, never a panic).
pub(crate) fn read_body(
    route: BodyRoute,
    content_type: &str,
    body: &[u8],
) -> Result<(), ProxyError> {
    let mut headers = axum::http::HeaderMap::new();
    if let Ok(v) = axum::http::HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    let bytes = Ok(axum::body::Bytes::copy_from_slice(body));
    let limit = crate::config::Limits::default().admin_body;
    match route {
        BodyRoute::CreateService => {
            json::parse::<services::Create>(&headers, bytes, limit).map(drop)
        }
        BodyRoute::StoreCredentials => {
            json::parse::<services::StoreCredentials>(&headers, bytes, limit).map(drop)
        }
        BodyRoute::Proxy => json::parse::<api_proxy::ProxyCall>(&headers, bytes, limit)?
            .into_request()
            .map(drop),
        BodyRoute::Decision => json::parse::<approvals::Decision>(&headers, bytes, limit).map(drop),
    }
}

pub(crate) fn router(state: State) -> Router {
    let api = Router::new()
        .route("/v1/services", post(services::create).get(services::list))
        .route(
            "/v1/services/{key}",
            get(services::get_one).delete(services::delete),
        )
        .route(
            "/v1/services/{key}/credentials",
            post(services::store_credentials),
        )
        .route("/v1/services/{key}/token", get(services::token))
        .route("/v1/proxy/{name}", post(api_proxy::handle))
        .route("/v1/audit", get(audit))
        .route("/v1/budgets", get(guardrails::budgets_route))
        .route("/api/budgets", get(guardrails::budgets_route))
        .route("/v1/policies", get(guardrails::policies_route))
        .route("/v1/audit/stream", get(stream::audit_stream))
        .route("/v1/approvals", get(approvals::list))
        .route("/v1/approvals/{id}", get(approvals::get_one))
        .route("/v1/approvals/{id}/approve", post(approvals::approve))
        .route("/v1/approvals/{id}/deny", post(approvals::deny))
        .route("/api/approvals/{id}", get(approvals::agent_wait))
        .route("/v1/agents", get(agents::list))
        .route("/v1/reload", post(reload::handle))
        .route("/api/entries", get(entries::list_route))
        .route("/api/entries/{key}", get(entries::read_route))
        .route("/api/search", get(entries::search_route))
        .route("/api/ext/totp/{key}", get(entries::totp_route))
        .route("/api/generate", get(entries::generate_route))
        .nest_service("/mcp", mcp::service(state.clone()))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(healthz))
        .route("/readyz", get(readyz))
        .route("/ca.pem", get(ca_pem))
        .route("/ca-bundle.pem", get(ca_bundle))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .route("/console", get(console::index))
        .route("/console/", get(console::index))
        .route("/console/console.js", get(console::script))
        .route("/console/console.css", get(console::style))
        .route("/console/favicon.svg", get(console::icon))
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(
            state.config.limits.admin_body,
        ))
        .with_state(state)
}

/// Serves the admin port until `stop` fires. The agent can reach it, so it
/// gets the proxy port's bounds: at most `limits.admin_connections` open,
/// request heads within `limits.header_read_timeout` (which also closes idle
/// keep-alive connections), and the same header caps.
pub(crate) async fn serve(ctx: Ctx, listener: TcpListener, stop: watch::Receiver<bool>) {
    let app = router(ctx.state.clone());
    let limit = ctx.state.config.limits.admin_connections;
    crate::server::accept_loop("admin", listener, stop, limit, |tcp, peer| {
        serve_connection(ctx.clone(), app.clone(), tcp, peer)
    })
    .await;
}

async fn serve_connection(ctx: Ctx, app: Router, tcp: tokio::net::TcpStream, peer: SocketAddr) {
    use tower_service::Service;
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            // What `auth` throttles failed logins by.
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            app.clone().call(req)
        });
    let conn = crate::server::http1_server(ctx.state.config.limits.heads())
        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
    if let Err(e) = ctx.drain.watch(conn, |c| c.graceful_shutdown()).await {
        tracing::debug!(%peer, error = %e, "admin connection ended with error");
    }
}

async fn not_found() -> ProxyError {
    RequestError::Missing("no such route; see GET /openapi.json".into()).into()
}

async fn method_not_allowed() -> ProxyError {
    RequestError::WrongMethod.into()
}

async fn healthz() -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"ok"}"#,
    )
}

async fn readyz(AxumState(state): AxumState<State>) -> impl IntoResponse {
    let (status, body) = if state.is_ready() {
        (StatusCode::OK, r#"{"status":"ready"}"#)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"starting"}"#)
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}

async fn ca_pem(AxumState(state): AxumState<State>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        state.ca.cert_pem.clone(),
    )
}

async fn ca_bundle(AxumState(state): AxumState<State>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        state.ca.bundle_pem.clone(),
    )
}

async fn metrics(AxumState(state): AxumState<State>) -> impl IntoResponse {
    guardrails::update_gauges(&state).await;
    let m = &state.metrics;
    m.tunnels_active.set(state.open_tunnels() as i64);
    m.cert_cache_entries.set(state.certs.len() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
}

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../../docs/openapi.json"),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    limit: Option<usize>,
    actor: Option<String>,
    entry: Option<String>,
}

async fn audit(
    AxumState(state): AxumState<State>,
    Extension(who): Extension<Caller>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ProxyError> {
    who.require_admin()?;
    let Query(q) = query.map_err(|e| RequestError::Malformed(e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > crate::audit::MAX_QUERY {
        return Err(RequestError::Malformed(format!(
            "limit must be 1..={}",
            crate::audit::MAX_QUERY
        ))
        .into());
    }
    Ok(Json(Value::Array(state.audit.query(
        limit,
        q.actor.as_deref(),
        q.entry.as_deref(),
    ))))
}
