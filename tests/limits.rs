//! Both ports bound what one client can hold (threat model T17): a request
//! head that never completes, or an idle keep-alive connection, is closed
//! after `limits.header_read_timeout`; connections beyond the port's cap
//! (`limits.max_connections`, `limits.admin_connections`) are closed at once.
//! The agent reaches the admin port too, so it gets the same bounds.

// Helpers here are not `#[test]` functions, so clippy.toml's
// allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn clavis() -> Clavis {
    let yaml = standard_yaml()
        + "limits: { header_read_timeout: 1s, max_connections: 3, admin_connections: 3 }\n";
    Clavis::builder(&yaml).start(None, None).await
}

/// How long until the peer closes `stream` (reading and discarding), or
/// `None` if it is still open after `within`.
async fn closed_after(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((started + within).into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

/// A GET on a new connection to `addr`: the status, with the connection
/// kept open afterwards.
async fn get(addr: SocketAddr, request: &str) -> (u16, TcpStream) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).await.unwrap(),
            1,
            "closed before the head ended"
        );
        head.push(byte[0]);
    }
    (status_of(&String::from_utf8_lossy(&head)), s)
}

const ADMIN_GET: &str = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
/// A complete proxy-port request answered without closing the connection:
/// wrong proxy credentials get `407`.
const PROXY_GET: &str = "GET http://plain.test.example/ HTTP/1.1\r\nHost: plain.test.example\r\nProxy-Authorization: Basic bm9ib2R5Om5vdGhpbmc=\r\n\r\n";

#[tokio::test]
async fn an_unfinished_request_head_is_closed_on_both_ports() {
    let clavis = clavis().await;
    for (port, addr) in [("proxy", clavis.proxy), ("admin", clavis.admin)] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .await
            .unwrap();
        let took = closed_after(&mut s, Duration::from_secs(5)).await;
        assert!(
            took.is_some_and(|t| t >= Duration::from_millis(800)),
            "{port}: a 1 s header timeout closed it after {took:?}"
        );
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_on_both_ports() {
    let clavis = clavis().await;
    for (port, addr, request) in [
        ("proxy", clavis.proxy, PROXY_GET),
        ("admin", clavis.admin, ADMIN_GET),
    ] {
        let (status, mut s) = get(addr, request).await;
        assert!(status > 0, "{port}: no answer");
        let took = closed_after(&mut s, Duration::from_secs(5)).await;
        assert!(
            took.is_some(),
            "{port}: an idle connection stayed open for 5 s"
        );
    }
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let clavis = clavis().await;
    for (port, addr, request) in [
        ("proxy", clavis.proxy, PROXY_GET),
        ("admin", clavis.admin, ADMIN_GET),
    ] {
        // Three connections that answered once and are kept: the cap.
        let mut held = Vec::new();
        for _ in 0..3 {
            let (status, s) = get(addr, request).await;
            assert!(status > 0, "{port}: no answer");
            held.push(s);
        }
        let mut fourth = TcpStream::connect(addr).await.unwrap();
        let took = closed_after(&mut fourth, Duration::from_millis(500)).await;
        assert!(took.is_some(), "{port}: a fourth connection was kept open");
        // One closes: there is room again.
        drop(held.pop());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, _s) = get(addr, request).await;
        assert!(status > 0, "{port}: no room after a connection closed");
    }
}

fn open_tunnels(clavis: &Clavis) -> usize {
    clavis.state.open_tunnels()
}

/// An h2 tunnel in which no request started for `limits.idle_timeout` gets
/// GOAWAY and gives its tunnel slot back; a stream still running is not cut.
#[tokio::test]
async fn an_idle_h2_tunnel_is_closed_but_a_long_stream_is_not() {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    let yaml = standard_yaml() + "limits: { idle_timeout: 1s }\n";
    let clavis = Clavis::builder(&yaml).start(Some(&up), Some(&ca)).await;
    let agent = clavis
        .client_builder_alpn(Some(("codex", "codex-token")), &[b"h2"])
        .build()
        .unwrap();

    // Three events 800 ms apart: the stream outlives the idle timeout.
    let r = agent
        .get("https://api.openai.com/sse?n=3&gap_ms=800")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let body = r.text().await.unwrap();
    assert_eq!(body.matches("data: ").count(), 3, "{body}");

    // Then nothing: the tunnel closes.
    let deadline = Instant::now() + Duration::from_secs(6);
    while open_tunnels(&clavis) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(open_tunnels(&clavis), 0, "the idle h2 tunnel is still open");
    // The client just opens a new one.
    let r = agent
        .get("https://api.openai.com/v1/models")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// A raw tunnel (a host no connector claims) closes once no byte has moved
/// either way for `limits.tunnel_idle_timeout`; traffic keeps it open.
#[tokio::test]
async fn a_silent_raw_tunnel_is_closed_but_a_busy_one_is_not() {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    let yaml = standard_yaml() + "limits: { tunnel_idle_timeout: 1s }\n";
    let clavis = Clavis::builder(&yaml).start(Some(&up), Some(&ca)).await;
    let request = "GET /echo HTTP/1.1\r\nHost: plain.test.example\r\n\r\n";

    // Busy: a request every 400 ms for 2.4 s, on the same tunnel.
    let (status, mut busy) = connect_raw(clavis.proxy, "plain.test.example:80", "").await;
    assert_eq!(status, 200);
    for i in 0..6 {
        let r = raw_exchange(&mut busy, request).await;
        assert_eq!(status_of(&r), 200, "request {i} on a busy tunnel: {r}");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }

    // Silent: closed after about a second.
    let (status, mut silent) = connect_raw(clavis.proxy, "plain.test.example:80", "").await;
    assert_eq!(status, 200);
    let took = closed_after(&mut silent, Duration::from_secs(5)).await;
    assert!(
        took.is_some_and(|t| t >= Duration::from_millis(800)),
        "a 1 s idle timeout closed it after {took:?}"
    );
}
