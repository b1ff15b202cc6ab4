//! hudsucker-inject: the hudsucker peer for the clavis benchmark.
//!
//! Does the same work as clavis for the bench host: checks the agent's
//! Proxy-Authorization on CONNECT, MITMs with a leaf minted by an rcgen CA,
//! sets `Authorization: Bearer <key>` for the test host, and forwards over TLS
//! verified against the bench test CA (never disabled), with the test host's
//! address pinned by a custom connector (like curl --resolve).
//!
//! usage: hudsucker-inject --listen ADDR --ca-cert PEM --ca-key PEM
//!        --upstream-ca PEM --resolve HOST:PORT=IP:PORT --host HOST
//!        --auth-header VALUE --proxy-auth USER:PASS

use base64::Engine as _;
use hudsucker::{
    certificate_authority::RcgenAuthority,
    hyper::{header, Method, Request, Response, StatusCode, Uri},
    rcgen::{Issuer, KeyPair},
    rustls::{
        crypto::aws_lc_rs,
        pki_types::{pem::PemObject, CertificateDer},
        ClientConfig, RootCertStore,
    },
    Body, HttpContext, HttpHandler, Proxy, RequestOrResponse,
};
use hyper_util::rt::TokioIo;
use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};
use tokio::net::{TcpSocket, TcpStream};

/// TCP connector that sends "host:port" to a fixed address (curl --resolve).
#[derive(Clone)]
struct PinnedConnector {
    map: Arc<HashMap<String, SocketAddr>>,
}

impl tower_service::Service<Uri> for PinnedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let host = uri.host().unwrap_or_default().to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("http") => 80,
            _ => 443,
        });
        let target = self.map.get(&format!("{host}:{port}")).copied();
        Box::pin(async move {
            let addr = target.ok_or_else(|| {
                io::Error::new(io::ErrorKind::PermissionDenied, format!("{host}:{port} not allowed"))
            })?;
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}

#[derive(Clone)]
struct Inject {
    host: Arc<str>,
    auth_value: header::HeaderValue,
    proxy_auth: Arc<str>,
}

impl HttpHandler for Inject {
    async fn handle_request(&mut self, _ctx: &HttpContext, mut req: Request<Body>) -> RequestOrResponse {
        if req.method() == Method::CONNECT {
            let ok = req
                .headers()
                .get(header::PROXY_AUTHORIZATION)
                .is_some_and(|v| v.as_bytes() == self.proxy_auth.as_bytes());
            if !ok {
                let mut res = Response::new(Body::empty());
                *res.status_mut() = StatusCode::PROXY_AUTHENTICATION_REQUIRED;
                res.headers_mut().insert(
                    header::PROXY_AUTHENTICATE,
                    header::HeaderValue::from_static("Basic realm=\"bench\""),
                );
                return res.into();
            }
            return req.into();
        }
        let host_matches = req
            .uri()
            .host()
            .is_some_and(|h| h.eq_ignore_ascii_case(&self.host));
        let headers = req.headers_mut();
        // Hop-by-hop headers are not forwarded (RFC 9110 §7.6.1); hudsucker
        // passes them on, and a client's `Connection: close` would then close
        // the pooled upstream connection too.
        // (Upgrade requests keep theirs: hudsucker handles them itself.)
        headers.remove(header::PROXY_AUTHORIZATION);
        headers.remove("proxy-connection");
        if !headers.contains_key(header::UPGRADE) {
            for name in [header::CONNECTION, header::TE, header::TRAILER] {
                headers.remove(name);
            }
            headers.remove("keep-alive");
        }
        if host_matches {
            headers.remove(header::AUTHORIZATION);
            headers.insert(header::AUTHORIZATION, self.auth_value.clone());
        }
        req.into()
    }
}

fn arg(args: &[String], name: &str) -> String {
    match args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)) {
        Some(v) => v.clone(),
        None => {
            eprintln!("missing {name}");
            std::process::exit(2);
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen: SocketAddr = arg(&args, "--listen").parse().expect("--listen");
    let ca_cert = std::fs::read_to_string(arg(&args, "--ca-cert")).expect("read --ca-cert");
    let ca_key = std::fs::read_to_string(arg(&args, "--ca-key")).expect("read --ca-key");
    let upstream_ca = arg(&args, "--upstream-ca");
    let (from, to) = arg(&args, "--resolve").split_once('=').map(|(a, b)| (a.to_string(), b.to_string())).expect("--resolve A=B");
    let host = arg(&args, "--host");
    let auth_value = header::HeaderValue::from_str(&arg(&args, "--auth-header")).expect("--auth-header");
    let proxy_auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(arg(&args, "--proxy-auth"))
    );

    let key = KeyPair::from_pem(&ca_key).expect("CA key");
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, key).expect("CA cert");
    let ca = RcgenAuthority::new(issuer, 1_000, aws_lc_rs::default_provider());

    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&upstream_ca).expect("read --upstream-ca") {
        roots.add(cert.expect("parse --upstream-ca")).expect("add root");
    }
    let tls = ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut map = HashMap::new();
    map.insert(from.to_ascii_lowercase(), to.parse::<SocketAddr>().expect("--resolve target"));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(PinnedConnector { map: Arc::new(map) });

    // TCP_NODELAY on the listener is inherited by accepted sockets on Linux;
    // hudsucker itself does not set it, and without it a new connection's TLS
    // handshake stalls ~40 ms on delayed ACKs.
    let socket = if listen.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.expect("socket");
    socket.set_reuseaddr(true).expect("reuseaddr");
    socket.set_nodelay(true).expect("nodelay");
    socket.bind(listen).expect("bind --listen");
    let listener = socket.listen(1024).expect("listen");

    let proxy = Proxy::builder()
        .with_listener(listener)
        .with_ca(ca)
        .with_http_connector(https)
        .with_http_handler(Inject { host: host.into(), auth_value, proxy_auth: proxy_auth.into() })
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .build()
        .expect("build proxy");
    eprintln!("hudsucker-inject listening on {listen}");
    if let Err(e) = proxy.start().await {
        eprintln!("proxy error: {e}");
        std::process::exit(1);
    }
}
