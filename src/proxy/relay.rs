//! Byte relays: a raw tunnel to an unclaimed host, a websocket after `101`.
//! Both directions are copied until either side closes, clavis stops, or no
//! byte has moved either way for `limits.tunnel_idle_timeout`.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::server::IdleTimer;

/// Copies between `a` and `b`; ends with `TimedOut` after `idle` without a
/// byte read on either side.
pub(super) async fn relay<A, B>(a: &mut A, b: &mut B, idle: Duration) -> std::io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let reads = AtomicU64::new(0);
    let mut a = Counted {
        io: a,
        reads: &reads,
    };
    let mut b = Counted {
        io: b,
        reads: &reads,
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    let mut timer = std::pin::pin!(IdleTimer::new(idle, 0));
    let idle_for =
        std::future::poll_fn(|cx| timer.as_mut().poll_idle(cx, reads.load(Ordering::Relaxed)));
    tokio::select! {
        copied = copy => copied.map(drop),
        () = idle_for => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no bytes either way for limits.tunnel_idle_timeout",
        )),
    }
}

/// Joins an agent's websocket to the upstream's after `101`, in a task of
/// its own; frames pass both ways untouched (SPEC §3).
pub(super) fn websocket(client: OnUpgrade, upstream: OnUpgrade, idle: Duration) {
    tokio::spawn(async move {
        match tokio::try_join!(client, upstream) {
            Ok((client, upstream)) => {
                let mut client = hyper_util::rt::TokioIo::new(client);
                let mut upstream = hyper_util::rt::TokioIo::new(upstream);
                if let Err(e) = relay(&mut client, &mut upstream, idle).await {
                    tracing::debug!(error = %e, "websocket closed with error");
                }
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
}

/// An I/O object that counts the reads that brought bytes.
struct Counted<'a, T: ?Sized> {
    io: &'a mut T,
    reads: &'a AtomicU64,
}

impl<T: AsyncRead + Unpin + ?Sized> AsyncRead for Counted<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut *this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.reads.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin + ?Sized> AsyncWrite for Counted<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.get_mut().io).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_shutdown(cx)
    }
}
