//! Inside an intercepted tunnel: read the ClientHello, refuse an SNI that is
//! not the CONNECT host, present a leaf minted for that host (ALPN h2 and
//! http/1.1), then serve every request through [`exchange::tunneled`].

use std::sync::Arc;

use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::LazyConfigAcceptor;

use super::exchange::{self, Target};
use super::{framing, Ctx};
use crate::identity::Caller;
use crate::server::IdleTimer;
use std::sync::atomic::{AtomicU64, Ordering};

pub(super) async fn serve(
    ctx: Ctx,
    io: TokioIo<Upgraded>,
    caller: Arc<Caller>,
    target: Arc<Target>,
    _permit: OwnedSemaphorePermit,
) {
    let limits = &ctx.state.config.limits;
    // Boxed: the handshake's state is only needed until it completes, and
    // each idle tunnel's task keeps just what serving requests needs.
    let Some((tls, h1)) = Box::pin(accept(&ctx, io, &caller, &target)).await else {
        return;
    };
    let state = ctx.state.clone();
    let verdicts = Arc::new(framing::Verdicts::default());
    let io = framing::Guard::new(tls, verdicts.clone(), h1);
    // HTTP/1 requests are served in order, so the n-th call is the n-th head.
    // The count also tells an idle h2 connection from a busy one.
    let served = Arc::new(AtomicU64::new(0));
    let requests = served.clone();
    let service = service_fn(move |req| {
        let n = requests.fetch_add(1, Ordering::Relaxed) + 1;
        let flaw = if h1 { verdicts.flaw(n) } else { None };
        exchange::tunneled(state.clone(), caller.clone(), target.clone(), req, flaw)
    });
    // ALPN already chose the protocol: serve it directly (no sniffing layer).
    let io = TokioIo::new(io);
    let ended = if h1 {
        let conn = crate::server::http1_server(limits.heads())
            .serve_connection(io, service)
            .with_upgrades();
        ctx.drain.watch(conn, |c| c.graceful_shutdown()).await
    } else {
        let conn = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.h2_max_streams)
            .max_header_list_size(limits.max_header_bytes as u32)
            .initial_stream_window_size(1024 * 1024)
            .initial_connection_window_size(4 * 1024 * 1024)
            .max_pending_accept_reset_streams(20)
            .keep_alive_interval(Some(std::time::Duration::from_secs(60)))
            .serve_connection(io, service);
        // HTTP/1 connections idle past the header timeout close; an h2 one
        // gets GOAWAY once no request started for `limits.idle_timeout`
        // (streams still running finish first), so idle tunnels give their
        // slot back.
        let conn = IdleClose::new(conn, served, limits.idle_timeout.0, |c| {
            c.graceful_shutdown()
        });
        ctx.drain.watch(conn, |c| c.graceful_shutdown()).await
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "intercepted connection ended with error");
    }
}

/// ClientHello, SNI check, leaf, handshake; `None` (logged) ends the tunnel.
/// With the stream comes whether it speaks HTTP/1 (ALPN did not choose h2),
/// asked here so the caller never borrows the stream: a borrowed local
/// keeps its room in the tunnel's future for as long as the tunnel lives.
async fn accept(
    ctx: &Ctx,
    io: TokioIo<Upgraded>,
    caller: &Caller,
    target: &Target,
) -> Option<(tokio_rustls::server::TlsStream<TokioIo<Upgraded>>, bool)> {
    let handshake = ctx.state.config.limits.tls_handshake_timeout.0;
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let start = match tokio::time::timeout(handshake, acceptor).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => {
            tracing::debug!(host = %target.host, error = %e, "bad ClientHello");
            return None;
        }
        Err(_) => {
            tracing::debug!(host = %target.host, "ClientHello timed out");
            return None;
        }
    };
    // SNI is only checked against the CONNECT host, never used to choose anything.
    if let Some(sni) = start.client_hello().server_name() {
        let same = crate::host::split_host_port(sni)
            .is_some_and(|(h, port)| port.is_none() && h == target.host);
        if !same {
            tracing::warn!(agent = %caller.actor(), host = %target.host, sni, "TLS SNI differs from the CONNECT host; refused");
            return None;
        }
    }
    let config = match ctx.state.certs.server_config(&target.host).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(host = %target.host, error = %e, "cannot mint a leaf certificate");
            return None;
        }
    };
    match tokio::time::timeout(handshake, start.into_stream(config)).await {
        Ok(Ok(tls)) => {
            let h1 = tls.get_ref().1.alpn_protocol() != Some(b"h2");
            Some((tls, h1))
        }
        Ok(Err(e)) => {
            tracing::debug!(host = %target.host, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(host = %target.host, "TLS handshake timed out");
            None
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection that is asked to shut down gracefully once `served` has
    /// not moved for a whole idle period.
    struct IdleClose<C> {
        #[pin]
        conn: C,
        #[pin]
        timer: IdleTimer,
        served: Arc<AtomicU64>,
        shutdown: fn(std::pin::Pin<&mut C>),
        closing: bool,
    }
}

impl<C: std::future::Future> IdleClose<C> {
    fn new(
        conn: C,
        served: Arc<AtomicU64>,
        idle: std::time::Duration,
        shutdown: fn(std::pin::Pin<&mut C>),
    ) -> Self {
        IdleClose {
            conn,
            timer: IdleTimer::new(idle, served.load(Ordering::Relaxed)),
            served,
            shutdown,
            closing: false,
        }
    }

    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        let this = self.project();
        if !*this.closing {
            *this.closing = true;
            (this.shutdown)(this.conn);
        }
    }
}

impl<C: std::future::Future> std::future::Future for IdleClose<C> {
    type Output = C::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<C::Output> {
        if let std::task::Poll::Ready(out) = self.as_mut().project().conn.poll(cx) {
            return std::task::Poll::Ready(out);
        }
        let this = self.as_mut().project();
        let served = this.served.load(Ordering::Relaxed);
        if !*this.closing && this.timer.poll_idle(cx, served).is_ready() {
            self.as_mut().graceful_shutdown();
            // Drive the GOAWAY out.
            return self.project().conn.poll(cx);
        }
        std::task::Poll::Pending
    }
}
