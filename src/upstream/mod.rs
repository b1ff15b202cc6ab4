//! The upstream side: clavis's own connection pool (keep-alive HTTP/1,
//! shared h2 when the upstream offers it over ALPN)
//! over connections dialed through [`Dialer`] with TLS verified for the
//! URI's host. Shared by the proxy port, `/v1/proxy` and MCP, so every path
//! has the same resolution, trust and timeouts.

mod dial;
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

pub use dial::{is_private, DialError, Dialer, IpNet};

use crate::body::Body;
use crate::error::ProxyError;
use pool::{Checkout, Key, Pool, Pooled, Sender};

pub struct Upstream {
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
    pub fn new(
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
    pub fn start(&self, idle_timeout: Duration) {
        self.pool
            .sweep_every(idle_timeout.clamp(Duration::from_secs(1), Duration::from_secs(30)));
    }

    /// Sends an upgrade request (websocket) on a fresh HTTP/1.1 connection
    /// and returns the answer; on `101` the caller takes the upgraded stream
    /// with `hyper::upgrade::on(&mut response)`.
    pub async fn send_upgrade(
        &self,
        host: &str,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let after = self.request_timeout;
        let work = async {
            let port = req.uri().port_u16().unwrap_or(443);
            let tcp = self
                .dialer
                .dial(host, port)
                .await
                .map_err(|e| dial_error(&e))?;
            self.dials.inc();
            let tls = tls_connect(&self.upgrade_tls, host, tcp)
                .await
                .map_err(|e| dial_error(&e))?;
            let (mut sender, conn) = http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| unreachable(host, &e))?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "upgraded upstream connection ended");
                }
            });
            let mut req = req;
            let key = Key::of(req.uri()).map_err(|e| ProxyError::Internal(e.into()))?;
            to_origin_form(&mut req, &key)?;
            sender
                .send_request(req)
                .await
                .map_err(|e| unreachable(host, &e))
        };
        tokio::time::timeout(after, work)
            .await
            .map_err(|_| ProxyError::UpstreamTimeout {
                host: host.to_owned(),
                after,
            })?
    }

    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Sends one request and waits for the response head within
    /// `request_timeout`. Redirects are never followed. `host` names the
    /// upstream in errors.
    pub async fn send(
        &self,
        host: &str,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        match tokio::time::timeout(self.request_timeout, self.exchange(host, req)).await {
            Err(_) => Err(ProxyError::UpstreamTimeout {
                host: host.to_owned(),
                after: self.request_timeout,
            }),
            Ok(result) => result,
        }
    }

    async fn exchange(
        &self,
        host: &str,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let uri = req.uri().clone();
        let key = Arc::new(Key::of(&uri).map_err(|e| ProxyError::Internal(e.into()))?);
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
                    to_origin_form(&mut req, &key)?;
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
                    _ => return Err(unreachable(host, e.error())),
                },
            }
        }
    }

    /// Dials `key`'s upstream, verifies its certificate, and speaks h2 if
    /// it chose h2 over ALPN, else HTTP/1.1.
    async fn connect(&self, host: &str, key: &Arc<Key>) -> Result<Pooled, ProxyError> {
        let tcp = self
            .dialer
            .dial(&key.host, key.port)
            .await
            .map_err(|e| dial_error(&e))?;
        self.dials.inc();
        let io = if key.tls {
            let bare = key.host.trim_start_matches('[').trim_end_matches(']');
            let tls = tls_connect(&self.tls, bare, tcp)
                .await
                .map_err(|e| dial_error(&e))?;
            Conn::Tls(Box::new(TokioIo::new(tls)))
        } else {
            Conn::Plain(TokioIo::new(tcp))
        };
        let sender = if io.is_h2() {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30))
                .keep_alive_while_idle(false)
                .handshake(io)
                .await
                .map_err(|e| unreachable(host, &e))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream h2 connection ended");
                }
            });
            self.pool.share(key, &sender);
            Sender::H2(sender)
        } else {
            let (sender, conn) = http1::handshake(io)
                .await
                .map_err(|e| unreachable(host, &e))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
            });
            Sender::H1(sender)
        };
        Ok(Pooled {
            key: key.clone(),
            sender,
            reused: false,
        })
    }
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
fn to_origin_form(req: &mut Request<Body>, key: &Key) -> Result<(), ProxyError> {
    if !req.headers().contains_key(header::HOST) {
        req.headers_mut().insert(header::HOST, host_header(key)?);
    }
    let origin = match req.uri().path_and_query() {
        Some(pq) if pq.as_str() != "*" => Uri::from(pq.clone()),
        _ => Uri::from_static("/"),
    };
    *req.uri_mut() = origin;
    Ok(())
}

/// `Host` for `key`: the host, and the port unless it is the scheme's own.
fn host_header(key: &Key) -> Result<HeaderValue, ProxyError> {
    let default = if key.tls { 443 } else { 80 };
    let value = if key.port == default {
        HeaderValue::from_str(&key.host)
    } else {
        HeaderValue::from_str(&format!("{}:{}", key.host, key.port))
    };
    value.map_err(|_| ProxyError::Internal(format!("{:?} is not a valid Host", key.host)))
}

/// A connection fault as the agent sees it. hyper's messages describe
/// framing and connection faults, never bodies.
fn unreachable(host: &str, err: &hyper::Error) -> ProxyError {
    let mut reason = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        reason = format!("{reason}: {e}");
        source = e.source();
    }
    ProxyError::UpstreamUnreachable {
        host: host.to_owned(),
        reason,
    }
}

pub fn dial_error(e: &DialError) -> ProxyError {
    match e {
        DialError::Private { .. } | DialError::OwnPort { .. } => {
            ProxyError::Forbidden(e.to_string())
        }
        DialError::Timeout { host, after, .. } => ProxyError::UpstreamTimeout {
            host: host.clone(),
            after: *after,
        },
        DialError::Resolve { host, .. }
        | DialError::Connect { host, .. }
        | DialError::Tls { host, .. } => ProxyError::UpstreamUnreachable {
            host: host.clone(),
            reason: e.to_string(),
        },
    }
}

/// An upstream connection, plain (tunnels' HTTP) or TLS.
pub enum Conn {
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
