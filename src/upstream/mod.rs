//! The upstream side: a pooled hyper-util client (keep-alive, h2 when the
//! upstream offers it over ALPN) whose connector dials through [`Dialer`] and
//! verifies TLS for the URI's host. Shared by the proxy port, `/v1/proxy` and
//! MCP, so every path has the same resolution, trust and timeouts.

mod dial;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub use dial::{is_private, DialError, Dialer, IpNet};

use crate::body::{Body, BoxError};
use crate::error::ProxyError;

pub struct Upstream {
    client: Client<Connector, Body>,
    dialer: Arc<Dialer>,
    /// ALPN http/1.1 only: a websocket upgrade needs an HTTP/1.1 connection
    /// of its own, never a pooled (possibly h2) one.
    upgrade_tls: TlsConnector,
    request_timeout: Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").finish_non_exhaustive()
    }
}

impl Upstream {
    pub fn new(
        dialer: Dialer,
        tls: Arc<rustls::ClientConfig>,
        request_timeout: Duration,
        idle_timeout: Duration,
    ) -> Upstream {
        let dialer = Arc::new(dialer);
        let mut h1_only = (*tls).clone();
        h1_only.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = Connector {
            dialer: dialer.clone(),
            tls: TlsConnector::from(tls),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(idle_timeout)
            .pool_max_idle_per_host(1024)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_while_idle(false)
            .build(connector);
        Upstream {
            client,
            dialer,
            upgrade_tls: TlsConnector::from(Arc::new(h1_only)),
            request_timeout,
        }
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
            let name = ServerName::try_from(host.to_owned()).map_err(|_| {
                ProxyError::UpstreamUnreachable {
                    host: host.to_owned(),
                    reason: "not a valid TLS server name".into(),
                }
            })?;
            let tls = self.upgrade_tls.connect(name, tcp).await.map_err(|e| {
                dial_error(&DialError::Tls {
                    host: host.to_owned(),
                    reason: e.to_string(),
                })
            })?;
            let unreachable = |e: hyper::Error| ProxyError::UpstreamUnreachable {
                host: host.to_owned(),
                reason: e.to_string(),
            };
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(unreachable)?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "upgraded upstream connection ended");
                }
            });
            sender.send_request(req).await.map_err(unreachable)
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
        match tokio::time::timeout(self.request_timeout, self.client.request(req)).await {
            Err(_) => Err(ProxyError::UpstreamTimeout {
                host: host.to_owned(),
                after: self.request_timeout,
            }),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(classify(host, &e)),
        }
    }
}

/// Maps a client error to the answer the agent gets, keeping dial-time
/// refusals (private destinations) distinct from unreachable upstreams.
fn classify(host: &str, err: &hyper_util::client::legacy::Error) -> ProxyError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(dial) = e.downcast_ref::<DialError>() {
            return dial_error(dial);
        }
        source = e.source();
    }
    let reason = if err.is_connect() {
        "connection failed".to_owned()
    } else {
        // hyper's messages describe framing and connection faults, never bodies.
        let mut reason = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(e) = source {
            reason = format!("{reason}: {e}");
            source = e.source();
        }
        reason
    };
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

/// Dials through the [`Dialer`]; `https` URIs get TLS verified for the URI host
/// (which is always the CONNECT authority on the MITM path).
#[derive(Clone)]
pub struct Connector {
    dialer: Arc<Dialer>,
    tls: TlsConnector,
}

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri.host().ok_or("request URI has no host")?.to_owned();
            let tls = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
            let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
            let tcp = this.dialer.dial(&host, port).await?;
            if !tls {
                return Ok(Conn::Plain(TokioIo::new(tcp)));
            }
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let name = ServerName::try_from(bare.to_owned()).map_err(|_| DialError::Tls {
                host: host.clone(),
                reason: "not a valid TLS server name".into(),
            })?;
            let stream = this
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| DialError::Tls {
                    host: host.clone(),
                    reason: e.to_string(),
                })?;
            Ok(Conn::Tls(Box::new(TokioIo::new(stream))))
        })
    }
}

/// An upstream connection, plain (tunnels' HTTP) or TLS.
pub enum Conn {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        match self {
            Conn::Plain(_) => Connected::new(),
            Conn::Tls(s) => {
                let h2 = s.inner().get_ref().1.alpn_protocol() == Some(b"h2");
                if h2 {
                    Connected::new().negotiated_h2()
                } else {
                    Connected::new()
                }
            }
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
