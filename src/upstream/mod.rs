//! The upstream side: clavis's own connection pool (keep-alive HTTP/1,
//! shared h2 when the upstream offers it over ALPN)
//! over connections dialed through [`Dialer`] with TLS verified for the
//! URI's host. Shared by the proxy port, `/v1/proxy` and MCP, so every path
//! has the same resolution, trust and timeouts.

mod dial;
mod dns;
mod pool;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub(crate) use dial::{DialError, Dialer};

use crate::body::Body;
use pool::{Checkout, Key, Pool, Pooled, Sender};

/// Why an upstream exchange failed. Messages name the upstream, never a
/// header or body.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// Not dialed at all: a private address or clavis itself.
    #[error(transparent)]
    Refused(DialError),
    #[error("upstream {host} unreachable: {cause}")]
    Unreachable { host: String, cause: Cause },
    #[error("upstream {host} did not answer within {after:?}")]
    Timeout { host: String, after: Duration },
    /// An answer in a `Content-Encoding` clavis cannot decode, so it
    /// cannot be checked for an echoed credential: refused.
    #[error("upstream {host} answered with Content-Encoding {coding:?}, which clavis cannot decode to check it for an echoed credential; refused")]
    Encoding { host: String, coding: String },
    /// A request clavis built without a destination: a bug.
    #[error("request to {host}: {what}")]
    Target { host: String, what: &'static str },
}

/// What broke an upstream connection: the dial or TLS, or HTTP (hyper's
/// messages describe framing and connection faults, never bodies).
#[derive(Debug)]
pub(crate) enum Cause {
    Dial(DialError),
    Http(hyper::Error),
    /// The response body ended with an error after its head arrived.
    BodyBroken,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Dial(e) => write!(f, "{e}"),
            Cause::BodyBroken => f.write_str("response body failed"),
            Cause::Http(e) => {
                write!(f, "{e}")?;
                let mut source = std::error::Error::source(e);
                while let Some(inner) = source {
                    write!(f, ": {inner}")?;
                    source = inner.source();
                }
                Ok(())
            }
        }
    }
}

impl UpstreamError {
    fn http(host: &str, e: hyper::Error) -> UpstreamError {
        UpstreamError::Unreachable {
            host: host.to_owned(),
            cause: Cause::Http(e),
        }
    }
}

impl From<DialError> for UpstreamError {
    fn from(e: DialError) -> UpstreamError {
        match e {
            DialError::Private { .. } | DialError::OwnPort { .. } => UpstreamError::Refused(e),
            DialError::Timeout { host, after, .. } => UpstreamError::Timeout { host, after },
            DialError::Resolve { ref host, .. }
            | DialError::Connect { ref host, .. }
            | DialError::Tls { ref host, .. } => UpstreamError::Unreachable {
                host: host.clone(),
                cause: Cause::Dial(e),
            },
        }
    }
}

pub(crate) struct Upstream {
    pool: Pool,
    dialer: Arc<Dialer>,
    tls: TlsConnector,
    /// ALPN http/1.1 only: a websocket upgrade needs an HTTP/1.1 connection
    /// of its own, never a pooled (possibly h2) one.
    upgrade_tls: TlsConnector,
    request_timeout: Duration,
    /// New upstream connections (`clavis_upstream_dials_total`).
    dials: prometheus_client::metrics::counter::Counter,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").finish_non_exhaustive()
    }
}

impl Upstream {
    /// Idle connections are closed after `idle_timeout`; the sweeper that
    /// does it starts with [`Upstream::start`]. `dials` counts every new
    /// upstream connection.
    pub(crate) fn new(
        dialer: Dialer,
        tls: Arc<rustls::ClientConfig>,
        request_timeout: Duration,
        idle_timeout: Duration,
        dials: prometheus_client::metrics::counter::Counter,
    ) -> Upstream {
        let mut h1_only = (*tls).clone();
        h1_only.alpn_protocols = vec![b"http/1.1".to_vec()];
        Upstream {
            pool: Pool::new(idle_timeout),
            dialer: Arc::new(dialer),
            tls: TlsConnector::from(tls),
            upgrade_tls: TlsConnector::from(Arc::new(h1_only)),
            request_timeout,
            dials,
        }
    }

    /// Starts closing idle connections past the idle timeout. Needs the
    /// tokio runtime, which `new` does not.
    pub(crate) fn start(&self, idle_timeout: Duration) {
        self.pool
            .sweep_every(idle_timeout.clamp(Duration::from_secs(1), Duration::from_secs(30)));
    }

    /// Sends an upgrade request (websocket) on a fresh HTTP/1.1 connection
    /// and returns the answer; on `101` the caller takes the upgraded stream
    /// with `hyper::upgrade::on(&mut response)`.
    pub(crate) async fn send_upgrade(
        &self,
        host: &str,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let work = async {
            let key = key_of(host, req.uri())?;
            let conn = self.open(&key, &self.upgrade_tls).await?;
            let mut sender = handshake_h1(host, conn, true).await?;
            to_origin_form(host, &mut req, &key)?;
            sender
                .send_request(req)
                .await
                .map_err(|e| UpstreamError::http(host, e))
        };
        self.in_time(host, work).await
    }

    pub(crate) fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// Sends one request and waits for the response head within
    /// `request_timeout`. Redirects are never followed. `host` names the
    /// upstream in errors.
    pub(crate) async fn send(
        &self,
        host: &str,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.in_time(host, self.exchange(host, req)).await
    }

    async fn in_time<T>(
        &self,
        host: &str,
        work: impl std::future::Future<Output = Result<T, UpstreamError>>,
    ) -> Result<T, UpstreamError> {
        let after = self.request_timeout;
        tokio::time::timeout(after, work)
            .await
            .map_err(|_| UpstreamError::Timeout {
                host: host.to_owned(),
                after,
            })?
    }

    async fn exchange(
        &self,
        host: &str,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let uri = req.uri().clone();
        let key = Arc::new(key_of(host, &uri)?);
        loop {
            let mut pooled = match self.pool.checkout(&key) {
                Checkout::Ready(pooled) => pooled,
                Checkout::Wait(mut dialing) => {
                    // Ends (as an error) when the other request's dial does.
                    let _ = dialing.changed().await;
                    continue;
                }
                // Boxed: dialing and the TLS handshake need kilobytes of
                // state that every request's future would otherwise carry.
                Checkout::Dial(ticket) => {
                    let dialed = Box::pin(self.connect(host, &key)).await;
                    let h2 = dialed
                        .as_ref()
                        .ok()
                        .map(|p| matches!(p.sender, Sender::H2(_)));
                    self.pool.dialed(&key, h2);
                    drop(ticket);
                    dialed?
                }
            };
            let sent = match &mut pooled.sender {
                Sender::H1(sender) => {
                    to_origin_form(host, &mut req, &key)?;
                    sender.try_send_request(req).await
                }
                Sender::H2(sender) => {
                    // The authority travels as `:authority`.
                    req.headers_mut().remove(header::HOST);
                    sender.try_send_request(req).await
                }
            };
            match sent {
                Ok(response) => {
                    self.pool.release(pooled);
                    return Ok(response);
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the pooled connection had been closed
                    // by the upstream. A fresh one is tried; a request that
                    // fails on a fresh connection is not retried.
                    Some(unsent) if pooled.reused => {
                        tracing::debug!(host, error = %e.error(), "pooled connection gone; retrying on another");
                        req = unsent;
                        *req.uri_mut() = uri.clone();
                    }
                    _ => return Err(UpstreamError::http(host, e.into_error())),
                },
            }
        }
    }

    /// A connection to `key`'s upstream: dialed through the [`Dialer`]
    /// (every address checked), then TLS verified for its host.
    async fn open(&self, key: &Key, tls: &TlsConnector) -> Result<Conn, UpstreamError> {
        let tcp = self.dialer.dial(&key.host, key.port).await?;
        self.dials.inc();
        if !key.tls {
            return Ok(Conn::Plain(TokioIo::new(tcp)));
        }
        let bare = key.host.trim_start_matches('[').trim_end_matches(']');
        let tls = tls_connect(tls, bare, tcp).await?;
        Ok(Conn::Tls(Box::new(TokioIo::new(tls))))
    }

    /// Opens a pooled connection: h2 if the upstream chose it over ALPN
    /// (then shared at once), else HTTP/1.1.
    async fn connect(&self, host: &str, key: &Arc<Key>) -> Result<Pooled, UpstreamError> {
        let io = self.open(key, &self.tls).await?;
        let sender = if io.is_h2() {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30))
                .keep_alive_while_idle(false)
                .handshake(io)
                .await
                .map_err(|e| UpstreamError::http(host, e))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream h2 connection ended");
                }
            });
            self.pool.share(key, &sender);
            Sender::H2(sender)
        } else {
            Sender::H1(handshake_h1(host, io, false).await?)
        };
        Ok(Pooled {
            key: key.clone(),
            sender,
            reused: false,
        })
    }
}

/// The HTTP/1.1 client handshake over `io`, its connection driven by a
/// task of its own (`upgrades`: one that can become a websocket).
async fn handshake_h1(
    host: &str,
    io: Conn,
    upgrades: bool,
) -> Result<http1::SendRequest<Body>, UpstreamError> {
    let (sender, conn) = http1::handshake(io)
        .await
        .map_err(|e| UpstreamError::http(host, e))?;
    tokio::spawn(async move {
        let ended = if upgrades {
            conn.with_upgrades().await
        } else {
            conn.await
        };
        if let Err(e) = ended {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}

fn key_of(host: &str, uri: &Uri) -> Result<Key, UpstreamError> {
    Key::of(uri).map_err(|what| UpstreamError::Target {
        host: host.to_owned(),
        what,
    })
}

/// TLS to `host` over `tcp`, verified for `host`.
async fn tls_connect(
    connector: &TlsConnector,
    host: &str,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, DialError> {
    let tls_error = |reason: String| DialError::Tls {
        host: host.to_owned(),
        reason,
    };
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| tls_error("not a valid TLS server name".into()))?;
    connector
        .connect(name, tcp)
        .await
        .map_err(|e| tls_error(e.to_string()))
}

/// HTTP/1 requests carry the path only; the authority goes in `Host`
/// (kept if the caller set one).
fn to_origin_form(host: &str, req: &mut Request<Body>, key: &Key) -> Result<(), UpstreamError> {
    if !req.headers().contains_key(header::HOST) {
        let value = host_header(key).ok_or_else(|| UpstreamError::Target {
            host: host.to_owned(),
            what: "the host is not a valid Host header",
        })?;
        req.headers_mut().insert(header::HOST, value);
    }
    let origin = match req.uri().path_and_query() {
        Some(pq) if pq.as_str() != "*" => Uri::from(pq.clone()),
        _ => Uri::from_static("/"),
    };
    *req.uri_mut() = origin;
    Ok(())
}

/// `Host` for `key`: the host, and the port unless it is the scheme's own.
fn host_header(key: &Key) -> Option<HeaderValue> {
    let default = if key.tls { 443 } else { 80 };
    if key.port == default {
        HeaderValue::from_str(&key.host).ok()
    } else {
        HeaderValue::from_str(&format!("{}:{}", key.host, key.port)).ok()
    }
}

/// An upstream connection, plain (tunnels' HTTP) or TLS.
pub(crate) enum Conn {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Conn {
    fn is_h2(&self) -> bool {
        match self {
            Conn::Plain(_) => false,
            Conn::Tls(s) => s.inner().get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }
}
