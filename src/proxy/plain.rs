//! Absolute-form `http://` requests: forwarded as a plain proxy for unclaimed
//! hosts, refused with 403 for claimed ones (a credential never travels over
//! plaintext), also when they arrive through `CONNECT host:80`.

use http::{header, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use tokio::sync::OwnedSemaphorePermit;

use super::{headers, Ctx};
use crate::body::{self, Body};
use crate::error::{ProxyError, Refusal, RequestError};
use crate::identity::Caller;

fn plaintext_refused(host: &str) -> ProxyError {
    Refusal::Plaintext {
        host: host.to_owned(),
    }
    .into()
}

pub(super) async fn handle(
    ctx: &Ctx,
    caller: &Caller,
    req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    if req.uri().scheme() != Some(&http::uri::Scheme::HTTP) {
        return Err(RequestError::Malformed(
            "only http:// URLs are proxied as plain requests; https goes through CONNECT".into(),
        )
        .into());
    }
    let authority = req.uri().authority().map(|a| a.as_str()).unwrap_or("");
    let (host, port) = crate::host::split_host_port(authority)
        .ok_or_else(|| RequestError::Malformed(format!("{authority:?} is not a valid host")))?;
    let port = port.unwrap_or(80);
    let live = ctx.state.live();
    if live.registry.lookup(&host).is_some() {
        return Err(plaintext_refused(&host));
    }
    super::refuse_token_host(&live, &host)?;
    super::refuse_unmatched(&ctx.state, &host, port)?;
    tracing::debug!(agent = %caller.actor(), host = %host, port, "plain request");
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
pub(super) async fn refuse_claimed(
    ctx: Ctx,
    io: Upgraded,
    host: String,
    _permit: OwnedSemaphorePermit,
) {
    let host: std::sync::Arc<str> = host.into();
    let service = service_fn(move |_req: Request<Incoming>| refuse(host.clone()));
    let conn =
        crate::server::http1_server(ctx.state.config.limits.heads()).serve_connection(io, service);
    let _ = ctx.drain.watch(conn, |c| c.graceful_shutdown()).await;
}
