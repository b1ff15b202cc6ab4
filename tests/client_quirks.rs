//! The ways real clients talk to a proxy (SPEC §3): Python's HTTP/1.0
//! CONNECT, Node's CONNECT host:80 for http:// URLs, Java's credentials
//! sent only after a 407 challenge.

// Helpers here are not `#[test]` functions, so clippy.toml's
// allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use base64::Engine;
use support::*;

async fn setup(extra_yaml: &str) -> (TestCa, Upstream, Clavis) {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    let yaml = format!("{}{extra_yaml}\n", standard_yaml());
    let clavis = Clavis::builder(&yaml).start(Some(&up), Some(&ca)).await;
    (ca, up, clavis)
}

/// One request to api.openai.com through an established tunnel; asserts
/// that it was answered and injected.
async fn request_through(tcp: tokio::net::TcpStream, clavis: &Clavis, up: &Upstream) {
    let mut tls = tls_over(tcp, "api.openai.com", &clavis.ca_pem(), &[b"http/1.1"])
        .await
        .unwrap();
    let r = raw_exchange(
        &mut tls,
        "GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\nAuthorization: Bearer placeholder\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&r), 200, "{r}");
    let seen = up.last();
    assert_eq!(seen.path, "/v1/models");
    assert_eq!(
        seen.all("authorization"),
        vec![format!("Bearer {REAL_OPENAI}")]
    );
}

#[tokio::test]
async fn python_http10_connect_works() {
    let (_ca, up, clavis) = setup("").await;
    // As http.client's set_tunnel sends it (older releases omit Host).
    for request in [
        "CONNECT api.openai.com:443 HTTP/1.0\r\n\r\n",
        "CONNECT api.openai.com:443 HTTP/1.0\r\nHost: api.openai.com:443\r\n\r\n",
    ] {
        let (head, tcp) = send_head(clavis.proxy, request).await;
        assert_eq!(status_of(&head), 200, "{request:?} → {head}");
        request_through(tcp, &clavis, &up).await;
    }
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test]
async fn node_connect_port_80_for_http_urls() {
    let (_ca, up, clavis) = setup("").await;
    // An unclaimed host: tunnelled, answered by the plain echo.
    let (status, mut tcp) = connect_raw(clavis.proxy, "plain.test.example:80", "").await;
    assert_eq!(status, 200);
    let r = raw_exchange(
        &mut tcp,
        "GET /node?x=1 HTTP/1.1\r\nHost: plain.test.example\r\nAuthorization: Bearer placeholder\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&r), 200, "{r}");
    let json = json_of(&r);
    assert_eq!(json["path"], "/node?x=1");
    let seen = up.last();
    assert_eq!(seen.path, "/node?x=1");
    assert_eq!(seen.header("authorization"), Some("Bearer placeholder"));
    assert_eq!(up.seen().len(), 1);

    // A claimed host on port 80: plain HTTP inside is refused, saying https.
    let (status, mut tcp) = connect_raw(clavis.proxy, "api.openai.com:80", "").await;
    assert_eq!(status, 200);
    let r = raw_exchange(
        &mut tcp,
        "GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\nAuthorization: Bearer placeholder\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&r), 403, "{r}");
    let json = json_of(&r);
    assert_eq!(json["error"]["type"], "clavis_forbidden");
    assert!(
        json["error"]["message"].as_str().unwrap().contains("https"),
        "{r}"
    );
    assert_eq!(up.seen().len(), 1, "the claimed host was reached");
}

#[tokio::test]
async fn java_sends_credentials_after_the_challenge() {
    let (_ca, up, clavis) = setup("proxy: { require_auth: true }").await;
    let (head, _) = send_head(
        clavis.proxy,
        "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 407, "{head}");
    assert_eq!(
        header_of(&head, "proxy-authenticate"),
        Some("Basic realm=\"clavis\"")
    );

    let creds = base64::engine::general_purpose::STANDARD.encode("codex:codex-token");
    let (head, tcp) = send_head(
        clavis.proxy,
        &format!(
            "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\nProxy-Authorization: Basic {creds}\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status_of(&head), 200, "{head}");
    request_through(tcp, &clavis, &up).await;
    assert!(up
        .last()
        .headers
        .iter()
        .all(|(n, _)| !n.starts_with("proxy-")));
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn credentials_after_the_challenge_on_the_same_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_ca, up, clavis) = setup("proxy: { require_auth: true }").await;
    let (head, mut tcp) = send_head(
        clavis.proxy,
        "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 407, "{head}");
    let len: usize = header_of(&head, "content-length").unwrap().parse().unwrap();
    let mut body = vec![0u8; len];
    tcp.read_exact(&mut body).await.unwrap();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"]["type"], "clavis_proxy_auth_required");

    let creds = base64::engine::general_purpose::STANDARD.encode("codex:codex-token");
    let connect = format!(
        "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\nProxy-Authorization: Basic {creds}\r\n\r\n"
    );
    tcp.write_all(connect.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "connection closed");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert_eq!(status_of(&head), 200, "{head}");
    request_through(tcp, &clavis, &up).await;
    assert_eq!(up.seen().len(), 1);
}
