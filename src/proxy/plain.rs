//! Absolute-form `http://` requests: forwarded as a plain proxy for unclaimed
//! hosts, refused with 403 for claimed ones (a credential never travels over
//! plaintext), also when they arrive through `CONNECT host:80`.

use http::{header, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::sync::OwnedSemaphorePermit;

use super::exchange::Caller;
use super::{headers, Ctx};
use crate::body::{self, Body};
use crate::config::Unmatched;
use crate::error::ProxyError;

fn plaintext_refused(host: &str) -> ProxyError {
    ProxyError::Forbidden(format!(
        "{host} is served over https only: clavis never sends a credential over plain http; use https://{host}/"
    ))
}

pub async fn handle(
    ctx: &Ctx,
    caller: &Caller,
    req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    if req.uri().scheme() != Some(&http::uri::Scheme::HTTP) {
        return Err(ProxyError::BadRequest(
            "only http:// URLs are proxied as plain requests; https goes through CONNECT".into(),
        ));
    }
    let authority = req.uri().authority().map(|a| a.as_str()).unwrap_or("");
    let (host, port) = headers::split_host_port(authority)
        .ok_or_else(|| ProxyError::BadRequest(format!("{authority:?} is not a valid host")))?;
    let port = port.unwrap_or(80);
    if ctx.state.config.registry.lookup(&host).is_some() {
        return Err(plaintext_refused(&host));
    }
    if ctx.state.config.proxy.unmatched == Unmatched::Deny {
        return Err(ProxyError::Forbidden(format!(
            "{host}:{port} is not claimed by any connector and proxy.unmatched is deny"
        )));
    }
    tracing::debug!(agent = %caller.actor, host = %host, port, "plain request");
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    parts.version = http::Version::HTTP_11;
    let response = ctx
        .state
        .upstream
        .send(&host, Request::from_parts(parts, body::boxed(body)))
        .await?;
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, body::boxed(body)))
}

async fn refuse(host: std::sync::Arc<str>) -> Result<Response<Body>, std::convert::Infallible> {
    Ok(plaintext_refused(&host).response())
}

/// `CONNECT claimed-host:80` (Node's env proxy tunnels even http:// URLs):
/// speak HTTP inside and answer every request with the plaintext refusal.
pub async fn refuse_claimed(ctx: Ctx, io: Upgraded, host: String, _permit: OwnedSemaphorePermit) {
    let host: std::sync::Arc<str> = host.into();
    let service = service_fn(move |_req: Request<Incoming>| refuse(host.clone()));
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.state.config.limits.header_read_timeout.0);
    let conn = builder.serve_connection(io, service);
    let _ = ctx.drain.watch(conn, |c| c.graceful_shutdown()).await;
}
