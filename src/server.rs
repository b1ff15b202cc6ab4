//! Server plumbing both ports share: the HTTP/1 server builder with the
//! header bounds, the accept loop with its connection cap, graceful
//! shutdown ([`Drain`]), and the idle timer that closes connections nobody
//! uses.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

/// The bounds of a request head, for every HTTP/1 server clavis runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadLimits {
    /// Also closes idle keep-alive connections.
    pub(crate) read_timeout: Duration,
    pub(crate) max_bytes: usize,
    pub(crate) max_count: usize,
}

/// The HTTP/1 server side of every port and tunnel: request heads within
/// the read timeout and within the size and count caps.
pub(crate) fn http1_server(limits: HeadLimits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout)
        .max_buf_size(limits.max_bytes.max(8192))
        .max_headers(limits.max_count);
    builder
}

/// Accepts on `listener` until `stop` fires, each connection in its own
/// task. Beyond `limit` open connections a new one is closed at once, so a
/// flood of idle sockets cannot take every file descriptor.
pub(crate) async fn accept_loop<F, Fut>(
    port: &'static str,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    limit: usize,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(limit));
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(port, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(port, %peer, "connection limit reached; closing");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let conn = serve(tcp, peer);
        tokio::spawn(async move {
            let _permit = permit;
            conn.await;
        });
    }
}

/// The controlling end of shutdown, held by whoever runs the ports.
pub(crate) struct Shutdown {
    stop: watch::Sender<bool>,
    hard: watch::Sender<bool>,
    alive: mpsc::Receiver<()>,
}

/// What every connection task watches: the start of the drain (finish
/// in-flight requests, then close) and its deadline (close now).
#[derive(Clone)]
pub(crate) struct Drain {
    stop: watch::Receiver<bool>,
    hard: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
}

pub(crate) fn shutdown() -> (Shutdown, Drain) {
    let (stop, stop_rx) = watch::channel(false);
    let (hard, hard_rx) = watch::channel(false);
    let (alive_tx, alive) = mpsc::channel(1);
    (
        Shutdown { stop, hard, alive },
        Drain {
            stop: stop_rx,
            hard: hard_rx,
            alive: alive_tx,
        },
    )
}

impl Shutdown {
    /// Fires when the drain starts (accept loops stop).
    pub(crate) fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Starts the drain.
    pub(crate) fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits for every watched connection to finish, at most `deadline`,
    /// then ends whatever is left (tunnels). False if the deadline passed.
    pub(crate) async fn drain(mut self, deadline: Duration) -> bool {
        let done = tokio::time::timeout(deadline, self.alive.recv())
            .await
            .is_ok();
        let _ = self.hard.send(true);
        done
    }
}

impl Drain {
    /// Runs `conn` to completion; once the drain starts it is asked to
    /// finish its in-flight requests and close (h1: no keep-alive, h2:
    /// GOAWAY).
    ///
    /// `conn` is boxed here, once: as an `async fn` argument it would be
    /// stored in the future twice (argument and pinned local), and the
    /// caller's future a third time, which for an idle tunnel is most of
    /// what it costs.
    pub(crate) fn watch<C: Future>(
        &self,
        conn: C,
        shutdown: impl FnOnce(Pin<&mut C>),
    ) -> impl Future<Output = C::Output> {
        let mut conn = Box::pin(conn);
        let alive = self.alive.clone();
        let mut stop = self.stop.clone();
        async move {
            let _alive = alive;
            tokio::select! {
                result = conn.as_mut() => return result,
                _ = stop.wait_for(|s| *s) => {}
            }
            shutdown(conn.as_mut());
            conn.await
        }
    }

    /// Fires when the drain deadline passed: connections still open end.
    pub(crate) fn deadline(&self) -> watch::Receiver<bool> {
        self.hard.clone()
    }
}

pin_project_lite::pin_project! {
    /// Fires once an activity count has not moved for a whole period: the
    /// idle close of raw tunnels and websockets (bytes read) and of h2
    /// tunnels (requests started).
    pub(crate) struct IdleTimer {
        #[pin]
        tick: tokio::time::Sleep,
        seen: u64,
        idle: Duration,
    }
}

impl IdleTimer {
    pub(crate) fn new(idle: Duration, count: u64) -> IdleTimer {
        IdleTimer {
            tick: tokio::time::sleep(idle),
            seen: count,
            idle,
        }
    }

    /// Ready when `count` (the activity so far) is what it was one period ago.
    pub(crate) fn poll_idle(self: Pin<&mut Self>, cx: &mut Context<'_>, count: u64) -> Poll<()> {
        let mut this = self.project();
        while this.tick.as_mut().poll(cx).is_ready() {
            if count == *this.seen {
                return Poll::Ready(());
            }
            *this.seen = count;
            let next = tokio::time::Instant::now() + *this.idle;
            this.tick.as_mut().reset(next);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_idle_timer_fires_only_after_a_still_period() {
        let count = std::sync::atomic::AtomicU64::new(0);
        let mut timer = std::pin::pin!(IdleTimer::new(Duration::from_secs(10), 0));
        let started = tokio::time::Instant::now();
        let bump = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        };
        let idle = std::future::poll_fn(|cx| {
            timer
                .as_mut()
                .poll_idle(cx, count.load(std::sync::atomic::Ordering::Relaxed))
        });
        tokio::join!(bump, idle);
        // Activity at 5 s: the first check (10 s) sees it, the second (20 s) does not.
        assert_eq!(started.elapsed(), Duration::from_secs(20));
    }
}
