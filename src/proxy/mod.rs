//! The proxy port: accept loop, one hyper HTTP/1 connection per client with
//! upgrades (CONNECT) over the framing guard, and the dispatch of each
//! request: `framing (400, closed) → auth → CONNECT (connect.rs) | absolute
//! http:// (plain.rs) | 400`.
//! Inside an intercepted tunnel every request becomes an exchange
//! ([`exchange::forward`]).

mod auth;
mod connect;
pub(crate) mod decode;
pub(crate) mod exchange;
pub(crate) mod framing;
pub(crate) mod headers;
mod mitm;
mod plain;
mod relay;
pub(crate) mod scrub;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::{header, Method, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::Body;
use crate::catalog::Live;
use crate::config::Unmatched;
use crate::error::{ProxyError, Refusal, RequestError};
use crate::server::Drain;
use crate::state::State;

/// What every connection task holds: the state and its graceful-shutdown
/// watcher.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub(crate) state: State,
    pub(crate) drain: Drain,
}

/// Accepts until `stop` fires. Connections beyond `limits.max_connections`
/// are closed at once.
pub(crate) async fn serve(ctx: Ctx, listener: TcpListener, stop: watch::Receiver<bool>) {
    let limit = ctx.state.config.limits.max_connections;
    crate::server::accept_loop("proxy", listener, stop, limit, |tcp, peer| {
        serve_connection(ctx.clone(), tcp, peer)
    })
    .await;
}

/// Whether a request target is longer than `limits.max_uri_bytes`, measured
/// without formatting it.
fn check_target_len(uri: &http::Uri, max: usize) -> Result<(), ProxyError> {
    let len = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if len > max {
        return Err(RequestError::Malformed(format!(
            "request target is longer than limits.max_uri_bytes ({max})"
        ))
        .into());
    }
    Ok(())
}

/// A token source's token endpoint on a host no connector claims (an
/// OAuth token URL): clavis calls it, agents may not reach it at all
/// (SPEC §13.1).
fn refuse_token_host(live: &Live, host: &str) -> Result<(), ProxyError> {
    if live.registry.serves_tokens(host) {
        return Err(Refusal::TokenEndpoint {
            host: host.to_owned(),
        }
        .into());
    }
    Ok(())
}

/// A host no connector claims (or a claimed one on another port), with
/// `proxy.unmatched: deny`: refused on every path that could reach it.
fn refuse_unmatched(state: &State, host: &str, port: u16) -> Result<(), ProxyError> {
    if state.config.proxy.unmatched == Unmatched::Deny {
        return Err(Refusal::Unmatched {
            host: host.to_owned(),
            port,
        }
        .into());
    }
    Ok(())
}

async fn serve_connection(ctx: Ctx, tcp: tokio::net::TcpStream, peer: SocketAddr) {
    // The framing guard reads under hyper (which would normalize what must
    // be refused); requests are served in order, so the n-th call is the
    // n-th head it saw.
    let verdicts = Arc::new(framing::Verdicts::default());
    let io = framing::Guard::new(tcp, verdicts.clone(), true);
    let served = Arc::new(AtomicU64::new(0));
    let service_ctx = ctx.clone();
    let service = service_fn(move |req| {
        let n = served.fetch_add(1, Ordering::Relaxed) + 1;
        handle(service_ctx.clone(), req, verdicts.flaw(n))
    });
    let conn = crate::server::http1_server(ctx.state.config.limits.heads())
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if let Err(e) = ctx.drain.watch(conn, |c| c.graceful_shutdown()).await {
        tracing::debug!(%peer, error = %e, "proxy connection ended with error");
    }
}

/// The proxy port's own framing rules (SPEC §3.1): a head the guard found
/// flawed, and a `CONNECT` that is not `host:port` with no body, are
/// refused and the connection closed.
fn check_framing(req: &Request<Incoming>, flaw: Option<framing::Flaw>) -> Result<(), ProxyError> {
    let desync = |text: String| -> ProxyError { RequestError::Desync(text).into() };
    if let Some(flaw) = flaw {
        return Err(desync(format!(
            "ambiguous framing ({}) is refused",
            flaw.describe()
        )));
    }
    if req.method() != Method::CONNECT {
        return Ok(());
    }
    let uri = req.uri();
    if uri.scheme().is_some() || uri.path_and_query().is_some() {
        return Err(desync(format!(
            "CONNECT takes host:port only (no scheme, no path), not {uri}"
        )));
    }
    let h = req.headers();
    let body = h.contains_key(header::TRANSFER_ENCODING)
        || h.get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes() != b"0");
    if body {
        return Err(desync(
            "CONNECT carries no body (Content-Length other than 0 or Transfer-Encoding)".into(),
        ));
    }
    Ok(())
}

async fn handle(
    ctx: Ctx,
    req: Request<Incoming>,
    flaw: Option<framing::Flaw>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let ctx = &ctx;
    let result = async {
        check_framing(&req, flaw)?;
        check_target_len(req.uri(), ctx.state.config.limits.max_uri_bytes)?;
        let caller = auth::identify(&ctx.state, req.headers())?;
        if req.method() == Method::CONNECT {
            connect::handle(ctx, caller, req).await
        } else if req.uri().scheme().is_some() {
            plain::handle(ctx, &caller, req).await
        } else {
            Err(RequestError::Malformed(
                "this is a forward proxy: send CONNECT or an absolute http:// URL (set HTTPS_PROXY)".into(),
            )
            .into())
        }
    }
    .await;
    Ok(result.unwrap_or_else(ProxyError::response))
}
