//! Threat model T10 through real DNS: names that *resolve* to loopback,
//! RFC 1918, link-local (cloud metadata), `[::1]` or IPv4 hidden in IPv6
//! are refused on every path that dials: a tunnel, the plain proxy, an
//! intercepted (claimed) host, `/v1/proxy` and MCP `proxy_request`. The
//! names are answered by a DNS server in the test (`upstream.nameserver`),
//! so the resolution clavis checks is the one it really does; the
//! `upstream.resolve` overrides that other tests use are exceptions by
//! design and never apply here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{json, Value};
use support::dns::Dns;
use support::*;

const ADMIN: &str = "admin-token-dns-0123456789";

/// Name → the private address it resolves to.
const PRIVATE: &[(&str, &str)] = &[
    ("loopback.names.example", "127.0.0.1"),
    ("rfc1918.names.example", "10.1.2.3"),
    ("private192.names.example", "192.168.0.10"),
    ("metadata.names.example", "169.254.169.254"),
    ("v6-loopback.names.example", "::1"),
    ("v4-mapped.names.example", "::ffff:127.0.0.1"),
    ("nat64.names.example", "64:ff9b::a9fe:a9fe"),
    ("ula.names.example", "fd00::1"),
];

/// A user connector and a service per private name, so the admin paths
/// (which go to a service's host) can be pointed at each.
fn yaml() -> String {
    let mut y = format!("admin: {{ token: \"{ADMIN}\" }}\nconnectors:\n");
    for (i, (name, _)) in PRIVATE.iter().enumerate() {
        y.push_str(&format!(
            "  - {{ name: c{i}, hosts: [\"{name}\"], inject: {{ headers: {{ X-Key: \"{{api_key}}\" }} }}, fields: [api_key] }}\n"
        ));
    }
    y.push_str("services:\n");
    for i in 0..PRIVATE.len() {
        y.push_str(&format!(
            "  - {{ name: s{i}, connector: c{i}, credentials: {{ api_key: \"REAL-private-key-{i}-0123\" }} }}\n"
        ));
    }
    y
}

async fn setup(extra: &str) -> (Dns, Clavis) {
    let mut table: Vec<(&str, &str)> = PRIVATE.to_vec();
    table.push(("unclaimed-loopback.names.example", "127.0.0.1"));
    table.push(("unclaimed-metadata.names.example", "169.254.169.254"));
    table.push(("unclaimed-v6.names.example", "::1"));
    let dns = Dns::start(&table).await;
    let clavis = Clavis::builder(&format!("{}{extra}", yaml()))
        .nameserver(dns.addr)
        .start(None, None)
        .await;
    (dns, clavis)
}

/// The refusal names the private address the name resolved to.
fn assert_private(what: &str, status: u16, text: &str) {
    assert_eq!(status, 403, "{what}: {text}");
    assert!(text.contains("clavis_forbidden"), "{what}: {text}");
    assert!(
        text.contains("a private or local address"),
        "{what}: refused for another reason: {text}"
    );
}

#[tokio::test]
async fn a_tunnel_to_a_name_resolving_to_a_private_address_is_refused() {
    let (dns, clavis) = setup("").await;
    for name in [
        "unclaimed-loopback.names.example",
        "unclaimed-metadata.names.example",
        "unclaimed-v6.names.example",
    ] {
        let (head, _) = send_head(
            clavis.proxy,
            &format!("CONNECT {name}:443 HTTP/1.1\r\nHost: {name}:443\r\n\r\n"),
        )
        .await;
        assert_eq!(status_of(&head), 403, "CONNECT {name}: {head}");
    }
    assert!(
        dns.asked.lock().unwrap().len() >= 3,
        "the nameserver was asked"
    );
}

#[tokio::test]
async fn the_plain_proxy_refuses_a_name_resolving_to_a_private_address() {
    let (_dns, clavis) = setup("").await;
    for name in [
        "unclaimed-loopback.names.example",
        "unclaimed-metadata.names.example",
        "unclaimed-v6.names.example",
    ] {
        let mut conn = tokio::net::TcpStream::connect(clavis.proxy).await.unwrap();
        let r = raw_exchange(
            &mut conn,
            &format!("GET http://{name}/latest/meta-data HTTP/1.1\r\nHost: {name}\r\n\r\n"),
        )
        .await;
        assert_private(&format!("GET http://{name}"), status_of(&r), &r);
    }
}

#[tokio::test]
async fn an_intercepted_host_resolving_to_a_private_address_is_refused() {
    let (_dns, clavis) = setup("").await;
    for (name, ip) in PRIVATE {
        let (status, tcp) = connect_raw(clavis.proxy, &format!("{name}:443"), "").await;
        assert_eq!(status, 200, "{name}: intercepted");
        let mut tls = tls_over(tcp, name, &clavis.ca_pem(), &[b"http/1.1"])
            .await
            .unwrap();
        let r = raw_exchange(
            &mut tls,
            &format!("GET /x HTTP/1.1\r\nHost: {name}\r\nX-Key: placeholder\r\n\r\n"),
        )
        .await;
        assert_private(&format!("{name} ({ip})"), status_of(&r), &r);
        assert!(!r.contains("REAL-private-key"), "{r}");
    }
}

#[tokio::test]
async fn v1_proxy_and_mcp_refuse_a_service_whose_host_resolves_to_a_private_address() {
    let (_dns, clavis) = setup("").await;
    let c = admin_client();
    for (i, (name, ip)) in PRIVATE.iter().enumerate() {
        let r = c
            .post(format!("http://{}/v1/proxy/s{i}", clavis.admin))
            .bearer_auth(ADMIN)
            .json(&json!({"path": "/latest/meta-data"}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        assert_private(
            &format!("/v1/proxy {name} ({ip})"),
            status,
            &r.text().await.unwrap(),
        );

        let r = c
            .post(format!("http://{}/mcp", clavis.admin))
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("MCP-Protocol-Version", "2025-06-18")
            .body(
                json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
                    "name": "proxy_request",
                    "arguments": {"service": format!("s{i}"), "path": "/latest/meta-data"}}})
                .to_string(),
            )
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["result"]["isError"], true, "MCP {name}: {v}");
        let text = v["result"]["content"][0]["text"].as_str().unwrap();
        assert!(
            text.contains("a private or local address"),
            "MCP {name}: {text}"
        );
    }
}

/// The control: the same names do resolve through the test's nameserver
/// (an allowed range lets the dial through, to a listener of the test),
/// and a name it does not know is unreachable, not refused. So the `403`s
/// above are the address check, not a resolution failure.
#[tokio::test]
async fn the_refusals_come_from_the_address_check_not_from_resolution() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = tokio::spawn(async move { listener.accept().await.is_ok() });
    let (_dns, clavis) = setup("proxy: { allow_private: [\"127.0.0.0/8\"] }\n").await;
    let target = format!("unclaimed-loopback.names.example:{port}");
    let (status, _tcp) = connect_raw(clavis.proxy, &target, "").await;
    assert_eq!(status, 200, "allowed by proxy.allow_private");
    assert!(accepted.await.unwrap(), "dialed the resolved address");

    let (head, _) = send_head(
        clavis.proxy,
        "CONNECT nowhere.names.example:443 HTTP/1.1\r\nHost: nowhere.names.example:443\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 502, "{head}");
}
