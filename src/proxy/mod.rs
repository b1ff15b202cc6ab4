//! The proxy port: accept loop, one hyper HTTP/1 connection per client with
//! upgrades (CONNECT), and the dispatch of each request:
//! `auth → CONNECT (connect.rs) | absolute http:// (plain.rs) | 400`.

pub mod auth;
pub mod connect;
pub mod exchange;
pub mod framing;
pub mod headers;
pub mod mitm;
pub mod plain;
mod relay;
pub mod scrub;

use std::net::SocketAddr;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::State;
use crate::body::Body;
use crate::error::ProxyError;

/// What every connection task holds: the state, its graceful-shutdown watcher,
/// its graceful-shutdown handle, and the signal that ends tunnels when the drain deadline passes.
#[derive(Clone)]
pub struct Ctx {
    pub state: State,
    pub drain: crate::app::Drain,
    pub hard_stop: watch::Receiver<bool>,
}

/// Accepts until `stop` fires. Connections beyond `limits.max_connections`
/// are closed at once.
pub async fn serve(ctx: Ctx, listener: TcpListener, stop: watch::Receiver<bool>) {
    let limit = ctx.state.config.limits.max_connections;
    crate::app::accept_loop("proxy", listener, stop, limit, |tcp, peer| {
        serve_connection(ctx.clone(), tcp, peer)
    })
    .await;
}

/// The HTTP/1 server side of every port and tunnel: request heads within
/// `limits.header_read_timeout` (which also closes idle keep-alive
/// connections) and within the header size and count caps.
pub fn http1_server(limits: &crate::config::Limits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.0)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers);
    builder
}

/// Whether a request target is longer than `limits.max_uri_bytes`, measured
/// without formatting it.
pub fn check_target_len(uri: &http::Uri, max: usize) -> Result<(), ProxyError> {
    let len = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if len > max {
        return Err(ProxyError::BadRequest(format!(
            "request target is longer than limits.max_uri_bytes ({max})"
        )));
    }
    Ok(())
}

async fn serve_connection(ctx: Ctx, tcp: tokio::net::TcpStream, peer: SocketAddr) {
    let service_ctx = ctx.clone();
    let service = service_fn(move |req| handle(service_ctx.clone(), req));
    let conn = http1_server(&ctx.state.config.limits)
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    if let Err(e) = ctx.drain.watch(conn, |c| c.graceful_shutdown()).await {
        tracing::debug!(%peer, error = %e, "proxy connection ended with error");
    }
}

async fn handle(
    ctx: Ctx,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let ctx = &ctx;
    let result = async {
        check_target_len(req.uri(), ctx.state.config.limits.max_uri_bytes)?;
        let caller = auth::identify(&ctx.state, req.headers())?;
        if req.method() == Method::CONNECT {
            connect::handle(ctx, caller, req).await
        } else if req.uri().scheme().is_some() {
            plain::handle(ctx, &caller, req).await
        } else {
            Err(ProxyError::BadRequest(
                "this is a forward proxy: send CONNECT or an absolute http:// URL (set HTTPS_PROXY)".into(),
            ))
        }
    }
    .await;
    Ok(result.unwrap_or_else(ProxyError::response))
}
