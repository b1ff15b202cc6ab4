//! Upstream connections kept for reuse.
//!
//! An HTTP/1 connection carries one exchange at a time: it is checked out of
//! its upstream's idle list, used, and put back once its response has been
//! read (at once for a small response, which arrives with its head). While
//! its response body streams it stays listed as busy, and a checkout takes it
//! the moment the exchange is over, before the task that watches it has had a
//! turn to put it back: an agent's request right after a stream would
//! otherwise, on a multi-threaded runtime, sometimes pay for a new TCP + TLS
//! handshake. An
//! HTTP/2 connection is shared: one per upstream, cloned for every request.
//! Every tunnel and the admin port draw from the same pool, so a new tunnel
//! per request still reuses upstream connections, and idle tunnels hold
//! none.
//!
//! Dials are single-flight where that can pay off: while a connection to an
//! upstream that spoke h2 last time (or was never dialed) is being set up,
//! other requests to it wait for that one instead of each opening their own;
//! a burst then shares one h2 connection. Upstreams known to speak HTTP/1
//! only, or whose last dial failed, are dialed in parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use http::Uri;
use hyper::client::conn::{http1, http2};
use tokio::sync::watch;

use crate::body::Body;

/// Idle HTTP/1 connections kept per upstream, beyond which a returned one is
/// closed.
const MAX_IDLE_PER_UPSTREAM: usize = 1024;

/// One upstream: scheme, host and port, as the request URI names them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Key {
    pub(crate) tls: bool,
    pub(crate) host: Box<str>,
    pub(crate) port: u16,
}

impl Key {
    pub(crate) fn of(uri: &Uri) -> Result<Key, &'static str> {
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("the request URI has no http or https scheme"),
        };
        let host = uri.host().ok_or("the request URI has no host")?;
        Ok(Key {
            tls,
            host: host.into(),
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
        })
    }
}

pub(super) enum Sender {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

/// A connection in use by one request.
pub(super) struct Pooled {
    pub(crate) key: Arc<Key>,
    pub(crate) sender: Sender,
    /// Taken from the pool rather than dialed for this request:
    /// the upstream may have closed it meanwhile, so a request that was
    /// never written on it may be retried on a fresh one.
    pub(crate) reused: bool,
}

struct Entry {
    key: Arc<Key>,
    /// Most recently returned last.
    idle: Vec<(http1::SendRequest<Body>, Instant)>,
    /// Connections whose response body is still being read, each watched by
    /// a task ([`returned`]) that moves it to `idle` when the exchange ends;
    /// a checkout that finds one ready first takes it instead. By id.
    busy: Vec<(u64, http1::SendRequest<Body>)>,
    next_busy: u64,
    shared: Option<http2::SendRequest<Body>>,
    /// What the last dial found.
    last_dial: LastDial,
    /// A single-flight dial in progress: its end (success, failure or
    /// cancellation) closes the channel and wakes the waiters.
    dialing: Option<watch::Receiver<()>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LastDial {
    Never,
    Http1,
    Http2,
    Failed,
}

/// What a request does for a connection.
pub(super) enum Checkout {
    Ready(Pooled),
    /// Another request is dialing: wait for `changed()` to end, then look again.
    Wait(watch::Receiver<()>),
    /// Dial; the ticket (when there is one) makes it the single flight.
    Dial(Option<DialTicket>),
}

/// Held by the one request dialing for the others; dropping it (after the
/// connection is shared, or on failure or cancellation) wakes them.
pub(super) struct DialTicket {
    inner: Arc<Inner>,
    key: Arc<Key>,
    done: watch::Sender<()>,
}

impl Drop for DialTicket {
    fn drop(&mut self) {
        let mut upstreams = self.inner.upstreams();
        if let Some(entry) = upstreams.get_mut(&self.key) {
            let ours = self.done.subscribe();
            if entry
                .dialing
                .as_ref()
                .is_some_and(|d| d.same_channel(&ours))
            {
                entry.dialing = None;
            }
        }
        // The sender drops after the lock: waiters find the entry settled.
    }
}

struct Inner {
    upstreams: Mutex<HashMap<Arc<Key>, Entry>>,
    idle_timeout: Duration,
}

impl Inner {
    fn upstreams(&self) -> MutexGuard<'_, HashMap<Arc<Key>, Entry>> {
        // The map stays consistent whatever a panicking holder was doing:
        // every mutation is a single push, pop or insert.
        self.upstreams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes back an HTTP/1 connection whose exchange is over, or will be
    /// once its response body has been read.
    fn put(self: &Arc<Self>, key: Arc<Key>, sender: http1::SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut upstreams = self.upstreams();
        let entry = entry(&mut upstreams, &key);
        if sender.is_ready() {
            entry.keep_idle(sender);
            return;
        }
        // The response body is still streaming: the end of the exchange is
        // awaited off the request's path. If the body is abandoned the
        // connection closes and the wait ends with an error.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let id = entry.next_busy;
        entry.next_busy += 1;
        entry.busy.push((id, sender));
        // Listed first: the sweep keeps an entry with busy connections, so
        // the watcher finds its connection (or knows a checkout took it).
        drop(upstreams);
        runtime.spawn(returned(Arc::downgrade(self), key, id));
    }

    /// Closes idle connections past the idle timeout or closed by the
    /// upstream, and forgets upstreams with nothing left.
    fn sweep(&self) {
        let idle_timeout = self.idle_timeout;
        self.upstreams().retain(|_, entry| {
            entry
                .idle
                .retain(|(s, since)| !s.is_closed() && since.elapsed() < idle_timeout);
            if entry.shared.as_ref().is_some_and(|s| s.is_closed()) {
                entry.shared = None;
            }
            // Busy connections are left to their watchers, which need the entry.
            !entry.idle.is_empty()
                || !entry.busy.is_empty()
                || entry.shared.is_some()
                || entry.dialing.is_some()
        });
    }
}

impl Entry {
    fn keep_idle(&mut self, sender: http1::SendRequest<Body>) {
        if self.idle.len() < MAX_IDLE_PER_UPSTREAM {
            self.idle.push((sender, Instant::now()));
        }
    }
}

/// Watches busy connection `id` of `key` until its exchange ends, then moves
/// it to the idle list (or forgets it if it closed). A checkout takes a busy
/// connection only once it is ready, and readiness is what wakes this task,
/// which then finds it gone and ends.
async fn returned(pool: Weak<Inner>, key: Arc<Key>, id: u64) {
    std::future::poll_fn(|cx| {
        let Some(pool) = pool.upgrade() else {
            return Poll::Ready(());
        };
        let mut upstreams = pool.upstreams();
        let Some(entry) = upstreams.get_mut(key.as_ref()) else {
            return Poll::Ready(());
        };
        let Some(at) = entry.busy.iter().position(|(b, _)| *b == id) else {
            return Poll::Ready(());
        };
        let ready = std::task::ready!(entry.busy[at].1.poll_ready(cx));
        let (_, sender) = entry.busy.swap_remove(at);
        if ready.is_ok() {
            entry.keep_idle(sender);
        }
        Poll::Ready(())
    })
    .await;
}

/// `key`'s entry, created empty if missing.
fn entry<'a>(upstreams: &'a mut HashMap<Arc<Key>, Entry>, key: &Arc<Key>) -> &'a mut Entry {
    upstreams.entry(key.clone()).or_insert_with(|| Entry {
        key: key.clone(),
        idle: Vec::new(),
        shared: None,
        busy: Vec::new(),
        next_busy: 0,
        last_dial: LastDial::Never,
        dialing: None,
    })
}

/// The connections of every upstream, shared by all tunnels and the admin
/// port.
pub(super) struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    pub(crate) fn new(idle_timeout: Duration) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                upstreams: Mutex::new(HashMap::new()),
                idle_timeout,
            }),
        }
    }

    /// Starts the sweeper, which ends when the pool is dropped. Needs a
    /// tokio runtime.
    pub(crate) fn sweep_every(&self, period: Duration) {
        let pool = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                match pool.upgrade() {
                    Some(pool) => pool.sweep(),
                    None => return,
                }
            }
        });
    }

    /// A live connection to `key`'s upstream (the shared HTTP/2 one, else
    /// the most recently returned idle HTTP/1 one), or what to do instead.
    pub(crate) fn checkout(&self, key: &Arc<Key>) -> Checkout {
        let mut upstreams = self.inner.upstreams();
        if let Some(pooled) = upstreams
            .get_mut(key.as_ref())
            .and_then(|entry| Self::live(entry, self.inner.idle_timeout))
        {
            return Checkout::Ready(pooled);
        }
        let entry = entry(&mut upstreams, key);
        if let Some(dialing) = &entry.dialing {
            return Checkout::Wait(dialing.clone());
        }
        match entry.last_dial {
            LastDial::Http1 | LastDial::Failed => Checkout::Dial(None),
            LastDial::Never | LastDial::Http2 => {
                let (done, dialing) = watch::channel(());
                entry.dialing = Some(dialing);
                Checkout::Dial(Some(DialTicket {
                    inner: self.inner.clone(),
                    key: entry.key.clone(),
                    done,
                }))
            }
        }
    }

    /// Records what a dial to `key` found (`None`: it failed).
    pub(crate) fn dialed(&self, key: &Arc<Key>, h2: Option<bool>) {
        let mut upstreams = self.inner.upstreams();
        entry(&mut upstreams, key).last_dial = match h2 {
            Some(true) => LastDial::Http2,
            Some(false) => LastDial::Http1,
            None => LastDial::Failed,
        };
    }

    fn live(entry: &mut Entry, idle_timeout: Duration) -> Option<Pooled> {
        let key = entry.key.clone();
        if let Some(shared) = &entry.shared {
            if !shared.is_closed() {
                return Some(Pooled {
                    key,
                    sender: Sender::H2(shared.clone()),
                    reused: true,
                });
            }
            entry.shared = None;
        }
        while let Some((sender, since)) = entry.idle.pop() {
            if since.elapsed() >= idle_timeout {
                // Everything below is older still.
                entry.idle.clear();
                break;
            }
            if sender.is_ready() {
                return Some(Pooled {
                    key,
                    sender: Sender::H1(sender),
                    reused: true,
                });
            }
            // Closed by the upstream while idle: dropped.
        }
        // A connection whose response has just been read to its end, which
        // its watcher has not put back yet.
        let at = entry.busy.iter().position(|(_, s)| s.is_ready())?;
        let (_, sender) = entry.busy.swap_remove(at);
        Some(Pooled {
            key,
            sender: Sender::H1(sender),
            reused: true,
        })
    }

    /// Shares a new HTTP/2 connection with later requests, unless another
    /// one to the same upstream was set up meanwhile (then this one serves
    /// only the request that dialed it).
    pub(crate) fn share(&self, key: &Arc<Key>, sender: &http2::SendRequest<Body>) {
        let mut upstreams = self.inner.upstreams();
        let entry = entry(&mut upstreams, key);
        if entry.shared.as_ref().is_none_or(|s| s.is_closed()) {
            entry.shared = Some(sender.clone());
        }
    }

    /// Takes a connection back after its response head arrived.
    pub(crate) fn release(&self, conn: Pooled) {
        match conn.sender {
            Sender::H1(sender) => self.inner.put(conn.key, sender),
            // Already shared from the pool since it was dialed.
            Sender::H2(_) => {}
        }
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.inner.upstreams().values().map(|e| e.idle.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP/1 connection over an in-memory pipe to a server answering
    /// `200 ok`, or for `/slow` a body whose second half comes 100 ms after
    /// the first; the server ends when
    /// `close` is sent.
    async fn connection() -> (http1::SendRequest<Body>, tokio::sync::oneshot::Sender<()>) {
        use futures_util::StreamExt;
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (close, closed) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|req: http::Request<_>| async move {
                let body = if req.uri().path() == "/slow" {
                    let first = hyper::body::Frame::data(bytes::Bytes::from_static(b"x"));
                    let rest = async {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok(hyper::body::Frame::data(bytes::Bytes::from_static(b"y")))
                    };
                    let halves = futures_util::stream::once(async { Ok(first) })
                        .chain(futures_util::stream::once(rest));
                    http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(halves))
                } else {
                    crate::body::full(bytes::Bytes::from_static(b"ok"))
                };
                Ok::<_, std::convert::Infallible>(http::Response::new(body))
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(server), service);
            tokio::select! {
                _ = conn => {}
                _ = closed => {}
            }
        });
        let (mut sender, conn) = http1::handshake(hyper_util::rt::TokioIo::new(client))
            .await
            .unwrap();
        tokio::spawn(conn);
        sender.ready().await.unwrap();
        (sender, close)
    }

    fn slow() -> http::Request<Body> {
        http::Request::get("/slow")
            .body(crate::body::empty())
            .unwrap()
    }

    fn key() -> Arc<Key> {
        Arc::new(Key::of(&Uri::from_static("https://api.example.com/v1")).unwrap())
    }

    fn ready(checkout: Checkout) -> Option<Pooled> {
        match checkout {
            Checkout::Ready(pooled) => Some(pooled),
            _ => None,
        }
    }

    fn pooled(sender: http1::SendRequest<Body>) -> Pooled {
        Pooled {
            key: key(),
            sender: Sender::H1(sender),
            reused: false,
        }
    }

    mod key {
        use super::*;

        #[test]
        fn default_ports_follow_the_scheme() {
            let k = Key::of(&Uri::from_static("https://a.example/x")).unwrap();
            assert_eq!((k.tls, &*k.host, k.port), (true, "a.example", 443));
            let k = Key::of(&Uri::from_static("http://a.example/x")).unwrap();
            assert_eq!((k.tls, k.port), (false, 80));
            let k = Key::of(&Uri::from_static("https://a.example:8443/")).unwrap();
            assert_eq!(k.port, 8443);
        }

        #[test]
        fn a_uri_without_scheme_or_host_is_an_error() {
            assert!(Key::of(&Uri::from_static("/v1")).is_err());
            assert!(Key::of(&Uri::from_static("ftp://a.example/")).is_err());
        }
    }

    mod pool {
        use super::*;

        #[tokio::test]
        async fn a_returned_connection_is_checked_out_again() {
            let pool = Pool::new(Duration::from_secs(60));
            assert!(ready(pool.checkout(&key())).is_none());
            let (sender, _close) = connection().await;
            pool.release(pooled(sender));
            assert_eq!(pool.idle_count(), 1);
            let again = ready(pool.checkout(&key())).expect("the idle connection");
            assert!(again.reused);
            assert_eq!(pool.idle_count(), 0);
        }

        #[tokio::test]
        async fn idle_connections_expire() {
            let pool = Pool::new(Duration::from_millis(30));
            let (sender, _close) = connection().await;
            pool.release(pooled(sender));
            tokio::time::sleep(Duration::from_millis(60)).await;
            assert!(ready(pool.checkout(&key())).is_none());
            assert_eq!(pool.idle_count(), 0);
        }

        #[tokio::test]
        async fn the_sweep_closes_expired_and_closed_connections() {
            let pool = Pool::new(Duration::from_millis(30));
            let (old, _keep) = connection().await;
            pool.release(pooled(old));
            tokio::time::sleep(Duration::from_millis(60)).await;
            let (fresh, close) = connection().await;
            pool.release(pooled(fresh));
            assert_eq!(pool.idle_count(), 2);
            pool.inner.sweep();
            assert_eq!(pool.idle_count(), 1, "the expired one is gone");
            close.send(()).unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
            pool.inner.sweep();
            assert_eq!(pool.idle_count(), 0, "the one the server closed is gone");
            assert!(pool.inner.upstreams().is_empty());
        }

        #[tokio::test]
        async fn a_connection_closed_by_the_server_is_not_checked_out() {
            let pool = Pool::new(Duration::from_secs(60));
            let (sender, close) = connection().await;
            pool.release(pooled(sender));
            close.send(()).unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
            assert!(ready(pool.checkout(&key())).is_none());
        }

        #[tokio::test]
        async fn one_dial_at_a_time_unless_the_upstream_is_known_http1() {
            let pool = Pool::new(Duration::from_secs(60));
            let Checkout::Dial(Some(ticket)) = pool.checkout(&key()) else {
                panic!("a never-dialed upstream is dialed by one request");
            };
            let Checkout::Wait(mut waiting) = pool.checkout(&key()) else {
                panic!("the next request waits for that dial");
            };
            pool.dialed(&key(), Some(false));
            drop(ticket);
            tokio::time::timeout(Duration::from_secs(1), waiting.changed())
                .await
                .expect("the end of the dial wakes the waiter")
                .unwrap_err();
            // HTTP/1 only: each request dials its own, without waiting.
            assert!(matches!(pool.checkout(&key()), Checkout::Dial(None)));
            assert!(matches!(pool.checkout(&key()), Checkout::Dial(None)));
            // An h2 upstream is single-flight again; a failed dial is not.
            pool.dialed(&key(), Some(true));
            let Checkout::Dial(Some(ticket)) = pool.checkout(&key()) else {
                panic!("h2: one dial for all");
            };
            pool.dialed(&key(), None);
            drop(ticket);
            assert!(matches!(pool.checkout(&key()), Checkout::Dial(None)));
        }

        #[tokio::test]
        async fn a_cancelled_dial_hands_over() {
            let pool = Pool::new(Duration::from_secs(60));
            let Checkout::Dial(Some(ticket)) = pool.checkout(&key()) else {
                panic!("first dial");
            };
            let Checkout::Wait(mut waiting) = pool.checkout(&key()) else {
                panic!("waits");
            };
            drop(ticket); // the dialing request went away
            assert!(waiting.changed().await.is_err());
            assert!(
                matches!(pool.checkout(&key()), Checkout::Dial(Some(_))),
                "a waiter takes over the dial"
            );
        }

        #[tokio::test]
        async fn a_busy_connection_returns_when_its_response_ends() {
            let pool = Pool::new(Duration::from_secs(60));
            let (mut sender, _close) = connection().await;
            let response = sender.send_request(slow()).await.unwrap();
            assert!(!sender.is_ready(), "the body is not read yet");
            pool.release(pooled(sender));
            assert_eq!(pool.idle_count(), 0);
            http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap();
            for _ in 0..50 {
                if pool.idle_count() == 1 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the connection never came back to the pool");
        }

        #[tokio::test]
        async fn a_connection_whose_response_just_ended_is_checked_out_before_its_watcher_runs() {
            // A spawned task, like a tunnel's: the end of the body wakes it
            // before the watcher (a test's own body would run after both).
            tokio::spawn(async {
                let pool = Pool::new(Duration::from_secs(60));
                let (mut sender, _close) = connection().await;
                let response = sender.send_request(slow()).await.unwrap();
                pool.release(pooled(sender));
                http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .unwrap();
                assert_eq!(pool.idle_count(), 0, "the watcher has not had a turn");
                let again = ready(pool.checkout(&key())).expect("the connection just freed");
                assert!(again.reused);
                assert!(
                    ready(pool.checkout(&key())).is_none(),
                    "it was the only one"
                );
            })
            .await
            .unwrap();
        }

        #[tokio::test]
        async fn the_watcher_of_a_connection_taken_early_ends() {
            tokio::spawn(async {
                let pool = Pool::new(Duration::from_secs(60));
                let (mut sender, _close) = connection().await;
                let tasks = || {
                    tokio::runtime::Handle::current()
                        .metrics()
                        .num_alive_tasks()
                };
                let before = tasks();
                let response = sender.send_request(slow()).await.unwrap();
                pool.release(pooled(sender));
                tokio::task::yield_now().await; // the watcher starts waiting
                assert_eq!(tasks(), before + 1, "one watcher");
                http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .unwrap();
                assert_eq!(pool.idle_count(), 0, "the watcher has not had a turn");
                let mut again = ready(pool.checkout(&key())).expect("the connection just freed");
                for _ in 0..50 {
                    if tasks() == before {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                assert_eq!(tasks(), before, "the watcher is gone");
                // The connection serves its new user, and comes back after it.
                let Sender::H1(sender) = &mut again.sender else {
                    panic!("an HTTP/1 connection");
                };
                let response = sender.send_request(slow()).await.unwrap();
                pool.release(again);
                http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .unwrap();
                for _ in 0..50 {
                    if pool.idle_count() == 1 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("the connection never came back to the pool");
            })
            .await
            .unwrap();
        }
    }
}
