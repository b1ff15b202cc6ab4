//! Byte relays: a raw tunnel to an unclaimed host, a websocket after `101`.
//! Both directions are copied until either side closes, clavis stops, or no
//! byte has moved either way for `limits.tunnel_idle_timeout`.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Copies between `a` and `b`; ends with `TimedOut` after `idle` without a
/// byte read on either side.
pub async fn relay<A, B>(a: &mut A, b: &mut B, idle: Duration) -> std::io::Result<()>
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
    tokio::pin!(copy);
    let mut seen = 0;
    loop {
        tokio::select! {
            copied = &mut copy => return copied.map(drop),
            () = tokio::time::sleep(idle) => {
                let now = reads.load(Ordering::Relaxed);
                if now == seen {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no bytes either way for limits.tunnel_idle_timeout",
                    ));
                }
                seen = now;
            }
        }
    }
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
