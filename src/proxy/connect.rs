//! CONNECT: a claimed host on its connector's port is intercepted (200, then
//! TLS with a minted leaf); a claimed host on port 80 gets plain HTTP answered
//! with 403; anything else is tunnelled byte for byte or denied, per
//! `proxy.unmatched`.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::exchange::Target;
use super::{mitm, plain, Ctx};
use crate::body::{self, Body};
use crate::error::{ProxyError, Refusal, RequestError};
use crate::identity::Caller;

pub(super) async fn handle(
    ctx: &Ctx,
    caller: Caller,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let (host, port) = match crate::host::split_host_port(&authority) {
        Some((host, Some(port))) => (host, port),
        _ => {
            return Err(RequestError::Malformed(format!(
                "CONNECT target {authority:?} is not host:port"
            ))
            .into())
        }
    };
    let permit = ctx
        .state
        .tunnels
        .clone()
        .try_acquire_owned()
        .map_err(|_| Refusal::Tunnels)?;
    // The tunnel's snapshot of the live config (SPEC §13.2): its requests
    // are served by the connectors, policies and budgets of this moment,
    // whatever a reload swaps in while it is open.
    let live = ctx.state.live();
    let connector = live.registry.lookup(&host).cloned();
    let on_upgrade = hyper::upgrade::on(&mut req);
    let ctx = ctx.clone();
    match connector {
        Some(connector) if port == connector.port => {
            let target = Arc::new(Target::new(&ctx.state, live, host, port, connector)?);
            let caller = Arc::new(caller);
            tokio::spawn(async move {
                if let Some(io) = upgraded(on_upgrade.await) {
                    mitm::serve(ctx, io, caller, target, permit).await;
                }
            });
        }
        Some(_) if port == 80 => {
            tokio::spawn(async move {
                if let Some(io) = upgraded(on_upgrade.await) {
                    plain::refuse_claimed(ctx, io.into_inner(), host, permit).await;
                }
            });
        }
        _ => {
            super::refuse_token_host(&live, &host)?;
            super::refuse_unmatched(&ctx.state, &host, port)?;
            // Dial before answering 200, so an unreachable or refused
            // destination is a clear 502/403 instead of a dead tunnel.
            let stream = ctx
                .state
                .upstream
                .dialer()
                .dial(&host, port)
                .await
                .map_err(crate::upstream::UpstreamError::from)?;
            tracing::debug!(agent = %caller.actor(), host = %host, port, "tunnel");
            tokio::spawn(async move {
                if let Some(io) = upgraded(on_upgrade.await) {
                    relay(ctx, io, stream, permit).await;
                }
            });
        }
    }
    Ok(Response::new(body::empty()))
}

fn upgraded(result: hyper::Result<Upgraded>) -> Option<TokioIo<Upgraded>> {
    match result {
        Ok(io) => Some(TokioIo::new(io)),
        Err(e) => {
            tracing::debug!(error = %e, "CONNECT upgrade failed");
            None
        }
    }
}

/// Copies bytes both ways until either side closes, nothing moves for
/// `limits.tunnel_idle_timeout`, or clavis stops for good.
async fn relay(
    ctx: Ctx,
    mut client: TokioIo<Upgraded>,
    mut server: TcpStream,
    _permit: OwnedSemaphorePermit,
) {
    let mut stop = ctx.drain.deadline();
    let idle = ctx.state.config.limits.tunnel_idle_timeout.0;
    tokio::select! {
        r = super::relay::relay(&mut client, &mut server, idle) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "tunnel closed with error");
            }
        }
        _ = stop.changed() => {}
    }
}
