//! SPEC §3.1, no desync (threat model T6, T7): framing a server could read
//! differently from clavis (several `Transfer-Encoding` lines or codings,
//! bare-LF line endings, obs-fold), a `CONNECT` that is not `host:port` or
//! that carries a body, and a refused upgrade are answered `400` (or the
//! refusal) and the connection closed, on the proxy port and inside a
//! tunnel; nothing after them is read as a new request.

// Helpers here are not `#[test]` functions, so clippy.toml's
// allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

async fn setup() -> (TestCa, Upstream, Clavis) {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    let clavis = Clavis::builder(&standard_yaml())
        .start(Some(&up), Some(&ca))
        .await;
    (ca, up, clavis)
}

async fn openai_tunnel(clavis: &Clavis) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let (status, tcp) = connect_raw(clavis.proxy, "api.openai.com:443", "").await;
    assert_eq!(status, 200);
    tls_over(tcp, "api.openai.com", &clavis.ca_pem(), &[b"http/1.1"])
        .await
        .unwrap()
}

/// The peer closed: the next read ends (EOF or reset) instead of waiting.
async fn assert_closed<S: AsyncRead + Unpin>(stream: &mut S, what: &str) {
    let mut rest = [0u8; 256];
    let mut seen = Vec::new();
    loop {
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut rest)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => seen.extend_from_slice(&rest[..n]),
            Err(_) => panic!(
                "{what}: the connection stayed open; after the answer came {:?}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
}

/// A raw request on a fresh proxy-port connection: the answer's head (up
/// to the blank line) and the connection.
async fn on_proxy_port(clavis: &Clavis, request: &str) -> (String, tokio::net::TcpStream) {
    send_head(clavis.proxy, request).await
}

#[tokio::test]
async fn two_transfer_encoding_lines_are_refused_and_the_connection_closed() {
    let (_ca, up, clavis) = setup().await;
    let plain = "POST http://plain.test.example/x HTTP/1.1\r\nHost: plain.test.example\r\n\
Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let (head, mut conn) = on_proxy_port(&clavis, plain).await;
    assert_eq!(status_of(&head), 400, "{head}");
    assert_eq!(header_of(&head, "connection"), Some("close"), "{head}");
    assert_closed(&mut conn, "proxy port").await;
    for coding in [
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: gzip, chunked",
    ] {
        let mut tls = openai_tunnel(&clavis).await;
        let request =
            format!("POST /v1/files HTTP/1.1\r\nHost: api.openai.com\r\n{coding}\r\n\r\n0\r\n\r\n");
        let r = raw_exchange(&mut tls, &request).await;
        assert_eq!(status_of(&r), 400, "{coding}: {r}");
        assert!(r.contains("Transfer-Encoding"), "{r}");
        assert_eq!(header_of(&r, "connection"), Some("close"), "{r}");
        assert_closed(&mut tls, coding).await;
    }
    assert!(up.seen().is_empty(), "forwarded: {:?}", up.seen());
}

#[tokio::test]
async fn bare_lf_requests_are_refused_on_the_proxy_port_and_in_tunnels() {
    let (_ca, up, clavis) = setup().await;
    let (head, mut conn) = on_proxy_port(
        &clavis,
        "GET http://plain.test.example/x HTTP/1.1\nHost: plain.test.example\n\n",
    )
    .await;
    assert_eq!(status_of(&head), 400, "{head}");
    assert_closed(&mut conn, "proxy port").await;
    let (head, mut conn) = on_proxy_port(
        &clavis,
        "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\n\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 400, "{head}");
    assert_closed(&mut conn, "CONNECT").await;
    for request in [
        "GET /v1/models HTTP/1.1\nHost: api.openai.com\n\n",
        "GET /v1/models HTTP/1.1\r\nHost: api.openai.com\nAccept: */*\r\n\r\n",
        "GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\nX-A: 1\r\n 2\r\n\r\n",
    ] {
        let mut tls = openai_tunnel(&clavis).await;
        let r = raw_exchange(&mut tls, request).await;
        assert_eq!(status_of(&r), 400, "{request:?}: {r}");
        assert_closed(&mut tls, request).await;
    }
    assert!(up.seen().is_empty(), "forwarded: {:?}", up.seen());
}

#[tokio::test]
async fn connect_takes_the_authority_form_only() {
    let (_ca, _up, clavis) = setup().await;
    for target in [
        "https://api.openai.com:443/v1/models",
        "http://api.openai.com:443",
        "api.openai.com:443/x",
    ] {
        let (head, mut conn) = on_proxy_port(
            &clavis,
            &format!("CONNECT {target} HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n"),
        )
        .await;
        assert_eq!(status_of(&head), 400, "CONNECT {target}: {head}");
        assert_closed(&mut conn, target).await;
    }
    assert_eq!(clavis.state.open_tunnels(), 0);
}

#[tokio::test]
async fn connect_with_a_body_is_refused_and_closed() {
    let (_ca, _up, clavis) = setup().await;
    for framing in [
        "Content-Length: 5\r\n\r\nhello",
        "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        let (head, mut conn) = on_proxy_port(
            &clavis,
            &format!(
                "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n{framing}"
            ),
        )
        .await;
        assert_eq!(status_of(&head), 400, "{framing:?}: {head}");
        assert_closed(&mut conn, framing).await;
    }
    // `Content-Length: 0` is no body.
    let (status, _tcp) =
        connect_raw(clavis.proxy, "api.openai.com:443", "Content-Length: 0\r\n").await;
    assert_eq!(status, 200);
}

/// RFC 9931: an agent may send websocket frames right after its upgrade
/// request. If the upstream answers anything but `101`, those bytes must
/// not be read as a new request: the answer goes back, then the
/// connection closes.
#[tokio::test]
async fn a_refused_websocket_upgrade_closes_the_connection() {
    let (_ca, up, clavis) = setup().await;
    let mut tls = openai_tunnel(&clavis).await;
    // The echo upstream answers 403 (no 101) to this path.
    let upgrade = "GET /status/403 HTTP/1.1\r\nHost: api.openai.com\r\nConnection: Upgrade\r\n\
Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    // Optimistic bytes that would parse as a request of their own.
    let optimistic = "GET /smuggled HTTP/1.1\r\nHost: api.openai.com\r\n\r\n";
    tls.write_all(format!("{upgrade}{optimistic}").as_bytes())
        .await
        .unwrap();
    let r = raw_exchange(&mut tls, "").await;
    assert_eq!(status_of(&r), 403, "{r}");
    assert_eq!(header_of(&r, "connection"), Some("close"), "{r}");
    assert_closed(&mut tls, "refused upgrade").await;
    let paths: Vec<String> = up.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/status/403"], "the optimistic bytes were read");

    // An upgrade clavis refuses itself closes the connection as well.
    let mut tls = openai_tunnel(&clavis).await;
    let h2c =
        "GET / HTTP/1.1\r\nHost: api.openai.com\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";
    tls.write_all(format!("{h2c}{optimistic}").as_bytes())
        .await
        .unwrap();
    let r = raw_exchange(&mut tls, "").await;
    assert_eq!(status_of(&r), 400, "{r}");
    assert_closed(&mut tls, "h2c").await;
    assert_eq!(up.seen().len(), 1);
}

/// Well-formed requests keep their keep-alive connection.
#[tokio::test]
async fn clean_requests_keep_the_connection() {
    let (_ca, up, clavis) = setup().await;
    let mut tls = openai_tunnel(&clavis).await;
    for _ in 0..3 {
        let r = raw_exchange(
            &mut tls,
            "POST /v1/files HTTP/1.1\r\nHost: api.openai.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(status_of(&r), 200, "{r}");
        assert_ne!(header_of(&r, "connection"), Some("close"), "{r}");
    }
    let (head, mut conn) = on_proxy_port(
        &clavis,
        "GET http://plain.test.example/a HTTP/1.1\r\nHost: plain.test.example\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 200, "{head}");
    let mut body = vec![0u8; 2048];
    let _ = tokio::time::timeout(Duration::from_millis(500), conn.read(&mut body)).await;
    assert_eq!(up.seen().len(), 4);
}
