//! Destination binding and the proxy port's refusals (SPEC §3, §3.1): the
//! CONNECT authority alone decides where a request goes; anything inside the
//! tunnel that disagrees with it is refused and nothing reaches the upstream.

// Helpers here are not `#[test]` functions, so clippy.toml's
// allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;

const OPENAI: &str = "api.openai.com:443";

async fn setup() -> (TestCa, Upstream, Clavis) {
    setup_with("").await
}

async fn setup_with(extra_yaml: &str) -> (TestCa, Upstream, Clavis) {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    let yaml = format!("{}{extra_yaml}\n", standard_yaml());
    let clavis = Clavis::builder(&yaml).start(Some(&up), Some(&ca)).await;
    (ca, up, clavis)
}

/// A TLS stream inside a tunnel CONNECTed to api.openai.com:443, SNI
/// api.openai.com, with the given ALPN.
async fn openai_tunnel(
    clavis: &Clavis,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let (status, tcp) = connect_raw(clavis.proxy, OPENAI, "").await;
    assert_eq!(status, 200);
    tls_over(tcp, "api.openai.com", &clavis.ca_pem(), alpn)
        .await
        .unwrap()
}

fn assert_error(response: &str, status: u16, kind: &str) -> serde_json::Value {
    assert_eq!(status_of(response), status, "{response}");
    let json = json_of(response);
    assert_eq!(json["error"]["type"], kind, "{response}");
    json
}

#[tokio::test]
async fn host_header_mismatch_is_misdirected() {
    let (_ca, up, clavis) = setup().await;
    let mut tls = openai_tunnel(&clavis, &[b"http/1.1"]).await;
    let r = raw_exchange(
        &mut tls,
        "GET /v1/models HTTP/1.1\r\nHost: evil.test\r\nAuthorization: Bearer placeholder\r\n\r\n",
    )
    .await;
    let json = assert_error(&r, 421, "clavis_misdirected");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("evil.test"),
        "{r}"
    );
    assert!(up.seen().is_empty(), "forwarded: {:?}", up.seen());
}

#[tokio::test]
async fn absolute_form_target_mismatch_is_misdirected() {
    let (_ca, up, clavis) = setup().await;
    let mut tls = openai_tunnel(&clavis, &[b"http/1.1"]).await;
    let r = raw_exchange(
        &mut tls,
        "GET https://evil.test/ HTTP/1.1\r\nHost: api.openai.com\r\nAuthorization: Bearer placeholder\r\n\r\n",
    )
    .await;
    assert_error(&r, 421, "clavis_misdirected");
    assert!(up.seen().is_empty(), "forwarded: {:?}", up.seen());
}

#[tokio::test]
async fn h2_authority_mismatch_is_misdirected() {
    let (_ca, up, clavis) = setup().await;
    let tls = openai_tunnel(&clavis, &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);

    let evil = http::Request::get("https://evil.test/v1/models")
        .header("authorization", "Bearer placeholder")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let r = sender.send_request(evil).await.unwrap();
    assert_eq!(r.status(), 421);
    let body = r.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"]["type"], "clavis_misdirected");
    assert!(up.seen().is_empty(), "forwarded: {:?}", up.seen());

    // The same connection still serves a request for the right authority.
    let good = http::Request::get("https://api.openai.com/v1/models")
        .header("authorization", "Bearer placeholder")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let r = sender.send_request(good).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.seen().len(), 1);
    assert_eq!(up.last().host, "api.openai.com");
}

#[tokio::test]
async fn wrong_host_on_a_kept_alive_connection_is_refused() {
    let (_ca, up, clavis) = setup().await;
    let mut tls = openai_tunnel(&clavis, &[b"http/1.1"]).await;
    let first = raw_exchange(
        &mut tls,
        "GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\nAuthorization: Bearer placeholder\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&first), 200, "{first}");
    let second = raw_exchange(
        &mut tls,
        "GET /v1/models HTTP/1.1\r\nHost: evil.test\r\nAuthorization: Bearer placeholder\r\n\r\n",
    )
    .await;
    assert_error(&second, 421, "clavis_misdirected");
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].host, "api.openai.com");
}

/// A client-side certificate verifier that accepts any certificate for any
/// name (it still checks the handshake signatures, so the handshake is real)
/// and counts the certificates it was shown: with it, only the server can
/// make a handshake fail.
#[derive(Debug)]
struct AnyCert {
    provider: Arc<rustls::crypto::CryptoProvider>,
    shown: AtomicUsize,
}

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.shown.fetch_add(1, Ordering::SeqCst);
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// TLS with SNI `sni` inside a fresh tunnel CONNECTed to api.openai.com:443,
/// from a client that accepts any certificate. Returns the handshake's
/// result and how many certificates the client was shown.
async fn any_cert_handshake(
    clavis: &Clavis,
    sni: &str,
) -> (
    std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    usize,
) {
    let (status, tcp) = connect_raw(clavis.proxy, OPENAI, "").await;
    assert_eq!(status, 200);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AnyCert {
        provider: provider.clone(),
        shown: AtomicUsize::new(0),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await;
    (tls, verifier.shown.load(Ordering::SeqCst))
}

/// The client here checks no certificate, so the refusal can only be
/// clavis's: it ends the connection after the ClientHello, before any
/// certificate is sent. The same client with the CONNECT host as SNI
/// completes the handshake and is served, so the client is not what fails.
#[tokio::test]
async fn sni_other_than_the_connect_host_fails_the_handshake() {
    let (_ca, up, clavis) = setup().await;

    let (tls, shown) = any_cert_handshake(&clavis, "evil.test").await;
    let err = tls.expect_err("handshake with SNI evil.test succeeded");
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::UnexpectedEof,
        "want clavis to close the connection: {err:?}"
    );
    assert_eq!(shown, 0, "clavis sent a certificate to SNI evil.test");

    let (tls, shown) = any_cert_handshake(&clavis, "api.openai.com").await;
    let mut tls = tls.expect("the same client with SNI api.openai.com");
    assert_eq!(shown, 1);
    let r = raw_exchange(
        &mut tls,
        "GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\nAuthorization: Bearer placeholder\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&r), 200, "{r}");
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].host, "api.openai.com");
}

#[tokio::test]
async fn connect_inside_a_tunnel_is_not_allowed() {
    let (_ca, up, clavis) = setup().await;
    let mut tls = openai_tunnel(&clavis, &[b"http/1.1"]).await;
    let r = raw_exchange(
        &mut tls,
        "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n",
    )
    .await;
    assert_error(&r, 405, "clavis_method_not_allowed");
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn plain_http_to_a_claimed_host_is_refused() {
    let (_ca, up, clavis) = setup().await;
    let r = clavis
        .client(Some(("codex", "codex-token")))
        .get("http://api.openai.com/v1/models")
        .bearer_auth("placeholder")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let json: serde_json::Value = r.json().await.unwrap();
    assert_eq!(json["error"]["type"], "clavis_forbidden");
    assert!(
        json["error"]["message"].as_str().unwrap().contains("https"),
        "{json}"
    );
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn unclaimed_host_is_tunnelled_untouched() {
    let (_ca, up, clavis) = setup().await;
    let (status, mut tcp) = connect_raw(clavis.proxy, "plain.test.example:80", "").await;
    assert_eq!(status, 200);
    let r = raw_exchange(
        &mut tcp,
        "GET /tunnelled HTTP/1.1\r\nHost: plain.test.example\r\nAuthorization: Bearer placeholder\r\nX-Custom: kept\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&r), 200, "{r}");
    let seen = up.last();
    assert_eq!(seen.path, "/tunnelled");
    assert_eq!(seen.host, "plain.test.example");
    assert_eq!(seen.all("authorization"), vec!["Bearer placeholder"]);
    assert_eq!(seen.header("x-custom"), Some("kept"));
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn unmatched_deny_refuses_unclaimed_hosts() {
    let (_ca, up, clavis) = setup_with("proxy: { unmatched: deny }").await;
    let (status, _) = connect_raw(clavis.proxy, "plain.test.example:80", "").await;
    assert_eq!(status, 403);
    // Claimed hosts are still intercepted.
    let r = clavis
        .client(None)
        .get("https://api.openai.com/v1/models")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn wrong_proxy_password_gets_the_basic_challenge() {
    let (_ca, up, clavis) = setup().await;
    let creds = base64::engine::general_purpose::STANDARD.encode("codex:wrong-token");
    let (head, _) = send_head(
        clavis.proxy,
        &format!(
            "CONNECT {OPENAI} HTTP/1.1\r\nHost: {OPENAI}\r\nProxy-Authorization: Basic {creds}\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status_of(&head), 407, "{head}");
    assert_eq!(
        header_of(&head, "proxy-authenticate"),
        Some("Basic realm=\"clavis\"")
    );
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn require_auth_without_credentials_gets_407() {
    let (_ca, up, clavis) = setup_with("proxy: { require_auth: true }").await;
    let (head, _) = send_head(
        clavis.proxy,
        &format!("CONNECT {OPENAI} HTTP/1.1\r\nHost: {OPENAI}\r\n\r\n"),
    )
    .await;
    assert_eq!(status_of(&head), 407, "{head}");
    assert_eq!(
        header_of(&head, "proxy-authenticate"),
        Some("Basic realm=\"clavis\"")
    );
    // A plain request too.
    let r = clavis
        .client(None)
        .get("http://plain.test.example/x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 407);
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn agent_outside_its_scope_is_forbidden() {
    let (_ca, up, clavis) = setup().await;
    let r = clavis
        .client(Some(("narrow", "narrow-token")))
        .get("https://api.openai.com/v1/models")
        .bearer_auth("placeholder")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let json: serde_json::Value = r.json().await.unwrap();
    assert_eq!(json["error"]["type"], "clavis_forbidden");
    assert!(up.seen().is_empty(), "forwarded: {:?}", up.seen());
    // Naming the service explicitly does not get around the scope.
    let r = clavis
        .client(Some(("narrow", "narrow-token")))
        .get("https://api.openai.com/v1/models")
        .bearer_auth("clavis:my-openai")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(up.seen().is_empty());
}

/// `limits.max_uri_bytes` holds inside a tunnel too, not only on the proxy
/// port's own request line.
#[tokio::test]
async fn an_overlong_request_target_is_refused_on_both_layers() {
    let (_ca, up, clavis) = setup().await;
    let long = format!("/v1/{}", "a".repeat(9000));
    let mut tls = openai_tunnel(&clavis, &[b"http/1.1"]).await;
    let r = raw_exchange(
        &mut tls,
        &format!("GET {long} HTTP/1.1\r\nHost: api.openai.com\r\n\r\n"),
    )
    .await;
    assert_eq!(status_of(&r), 400, "{r}");
    assert!(r.contains("max_uri_bytes"), "{r}");
    let (head, _conn) = send_head(
        clavis.proxy,
        &format!(
            "GET http://plain.test.example{long} HTTP/1.1\r\nHost: plain.test.example\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status_of(&head), 400, "{head}");
    assert!(up.seen().is_empty(), "forwarded: {:?}", up.seen());
}

#[tokio::test]
async fn transfer_encoding_with_content_length_is_rejected() {
    let (_ca, up, clavis) = setup().await;
    for request in [
        "POST /v1/files HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST /v1/files HTTP/1.1\r\nHost: api.openai.com\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    ] {
        let mut tls = openai_tunnel(&clavis, &[b"http/1.1"]).await;
        let r = raw_exchange(&mut tls, request).await;
        assert_eq!(status_of(&r), 400, "{request:?} → {r}");
        assert!(up.seen().is_empty(), "{request:?} forwarded: {:?}", up.seen());
        // The bytes after such a head cannot be trusted to frame anything:
        // the connection is closed, not read on (threat model T6).
        assert_eq!(header_of(&r, "connection"), Some("close"), "{r}");
        let mut rest = [0u8; 64];
        let end = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::io::AsyncReadExt::read(&mut tls, &mut rest),
        )
        .await;
        assert!(
            matches!(end, Ok(Ok(0)) | Ok(Err(_))),
            "{request:?}: the connection stayed open ({end:?})"
        );
    }
}

#[tokio::test]
async fn private_destinations_are_refused() {
    let (_ca, up, clavis) = setup().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap().to_string();
    let own = clavis.proxy.to_string();
    let admin = clavis.admin.to_string();
    for target in [
        local.as_str(),
        "169.254.169.254:80",
        own.as_str(),
        admin.as_str(),
    ] {
        let (head, _) = send_head(
            clavis.proxy,
            &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"),
        )
        .await;
        assert_eq!(status_of(&head), 403, "CONNECT {target}: {head}");
    }
    // Nothing was accepted on the local listener.
    let accepted = tokio::time::timeout(Duration::from_millis(1), listener.accept()).await;
    assert!(accepted.is_err(), "clavis dialed {local}");
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn redirects_are_returned_not_followed() {
    let (_ca, up, clavis) = setup().await;
    let r = clavis
        .client(Some(("codex", "codex-token")))
        .get("https://api.openai.com/redirect")
        .bearer_auth("placeholder")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(
        r.headers().get("location").unwrap(),
        "https://evil.test/steal"
    );
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, "/redirect");
}
