//! Websocket upgrades pass, with the credential injected on the upgrade
//! request; any other upgrade is refused.

mod support;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: api.openai.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer placeholder\r\n\r\n";

#[tokio::test]
async fn websocket_upgrade_is_bridged_with_the_credential() {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    let clavis = Clavis::builder(&standard_yaml())
        .start(Some(&up), Some(&ca))
        .await;
    let (status, tcp) = connect_raw(clavis.proxy, "api.openai.com:443", "").await;
    assert_eq!(status, 200);
    let mut tls = tls_over(tcp, "api.openai.com", &clavis.ca_pem(), &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(UPGRADE.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            tls.read(&mut byte).await.unwrap(),
            1,
            "connection closed before the 101"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    // Bytes now flow both ways through the bridge.
    tls.write_all(b"hello over the bridge").await.unwrap();
    let mut buf = [0u8; 21];
    tokio::time::timeout(std::time::Duration::from_secs(5), tls.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"hello over the bridge");
    let seen = up.last();
    assert_eq!(seen.path, "/ws");
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {REAL_OPENAI}").as_str())
    );
    assert_eq!(seen.header("upgrade"), Some("websocket"));
}

#[tokio::test]
async fn other_upgrades_are_refused() {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    let clavis = Clavis::builder(&standard_yaml())
        .start(Some(&up), Some(&ca))
        .await;
    let (_, tcp) = connect_raw(clavis.proxy, "api.openai.com:443", "").await;
    let mut tls = tls_over(tcp, "api.openai.com", &clavis.ca_pem(), &[b"http/1.1"])
        .await
        .unwrap();
    let req = "GET / HTTP/1.1\r\nHost: api.openai.com\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n";
    let answer = raw_exchange(&mut tls, req).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(up.seen().is_empty());
}
