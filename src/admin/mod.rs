//! The admin port: health, readiness and the CA files (the management REST
//! API and MCP mount here too). The agent shares the pod's localhost, so the
//! port treats every caller as hostile.

use axum::extract::State as AxumState;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::State;
use crate::proxy::Ctx;

pub fn router(state: State) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(healthz))
        .route("/readyz", get(readyz))
        .route("/ca.pem", get(ca_pem))
        .route("/ca-bundle.pem", get(ca_bundle))
        .with_state(state)
}

pub async fn serve(ctx: Ctx, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let app = router(ctx.state.clone());
    let shutdown = async move {
        let _ = stop.changed().await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "admin server failed");
    }
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
