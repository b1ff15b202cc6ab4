//! User-defined connectors (SPEC §4.2), from YAML only, end to end through
//! HTTPS_PROXY: header and query injection, an HMAC recipe checked against an
//! independent HMAC, wildcard host matching (one or more labels, never the
//! apex), and
//! every config error with the key path it names.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::*;

const REAL_HDR: &str = "REAL-header-key-0123";
const REAL_QUERY: &str = "REAL-query key&=0123";
const REAL_SIGN_KEY: &str = "REAL-sign-key-id";
const REAL_SIGN_SECRET: &str = "REAL-sign-secret-0123456789";
const REAL_WILD: &str = "REAL-wild-key-0123";

const HOSTS: &[&str] = &[
    "api.hdr.example",
    "api.query.example",
    "api.signed.example",
    "a.svc.example",
    "svc.example",
    "a.b.svc.example",
    "api.example.com",
    "api.example.com.evil.net",
];

fn yaml() -> String {
    format!(
        r#"
connectors:
  - name: hdr-api
    hosts: ["api.hdr.example"]
    strip: [Authorization]
    inject:
      headers: {{ X-Api-Key: "{{api_key}}" }}
    fields: [api_key]
  - name: query-api
    hosts: ["api.query.example"]
    inject:
      query: {{ key: "{{api_key}}" }}
    fields: [api_key]
  - name: signed-api
    hosts: ["api.signed.example"]
    sign:
      algorithm: hmac-sha256
      secret: "{{api_secret}}"
      message: "{{timestamp}}{{method}}{{path}}{{body}}"
      encoding: hex
      headers: {{ X-Key: "{{api_key}}", X-Sign: "{{signature}}", X-Ts: "{{timestamp}}" }}
    fields: [api_key, api_secret]
  - name: wild-api
    hosts: ["*.svc.example", "api.example.com"]
    strip: [X-Wild]
    inject:
      headers: {{ X-Wild: "{{api_key}}" }}
    fields: [api_key]
services:
  - {{ name: hdr, connector: hdr-api, credentials: {{ api_key: "{REAL_HDR}" }} }}
  - {{ name: query, connector: query-api, credentials: {{ api_key: "{REAL_QUERY}" }} }}
  - name: signed
    connector: signed-api
    credentials: {{ api_key: "{REAL_SIGN_KEY}", api_secret: "{REAL_SIGN_SECRET}" }}
  - {{ name: wild, connector: wild-api, credentials: {{ api_key: "{REAL_WILD}" }} }}
agents:
  - {{ name: agent, token: agent-token, services: ["*"] }}
"#
    )
}

async fn setup() -> (TestCa, Upstream, Clavis) {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, HOSTS).await;
    let clavis = Clavis::builder(&yaml()).start(Some(&up), Some(&ca)).await;
    (ca, up, clavis)
}

async fn echo(r: reqwest::Response) -> Value {
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn assert_no_agent_values(seen: &Seen) {
    for (name, value) in &seen.headers {
        assert!(!value.contains("AGENT"), "{name}: {value}");
    }
    assert!(!seen.path.contains("AGENT"), "{}", seen.path);
}

#[tokio::test]
async fn header_connector_injects_and_strips() {
    let (_ca, up, clavis) = setup().await;
    let r = clavis
        .client(Some(("agent", "agent-token")))
        .post("https://api.hdr.example/v1/things?x=1")
        .header("Authorization", "Bearer AGENT-placeholder")
        .header("x-api-key", "AGENT-key")
        .header("X_API_KEY", "AGENT-underscore")
        .body("{}")
        .send()
        .await
        .unwrap();
    echo(r).await;
    let seen = up.last();
    assert_eq!(seen.all("x-api-key"), vec![REAL_HDR]);
    assert!(seen.header("authorization").is_none());
    assert_eq!(seen.path, "/v1/things?x=1");
    assert_no_agent_values(&seen);
}

/// A redirect that repeats the request's query would hand the agent the
/// injected key in `Location`: the header is masked like a body echo
/// (length kept), the redirect is not followed, and the echo is audited.
#[tokio::test]
async fn a_query_credential_echoed_in_location_is_masked() {
    let (_ca, up, clavis) = setup().await;
    let client = clavis.client(Some(("agent", "agent-token")));
    let r = client
        .get("https://api.query.example/redirect?page=2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        up.last().path.contains("REAL-query%20key"),
        "the upstream got the key"
    );
    assert!(
        location.starts_with("https://evil.test/steal?page=2&key=[REDACTED]")
            && !location.contains("REAL")
            && !location.contains("0123"),
        "{location}"
    );
    assert_eq!(
        location.len(),
        "https://evil.test/steal?page=2&key=REAL-query%20key%26%3D0123".len()
    );
    let audit = clavis.state.audit_events(10);
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "denied" && e["entry"] == "query"),
        "{audit:?}"
    );
}

#[tokio::test]
async fn query_connector_replaces_the_agents_key() {
    let (_ca, up, clavis) = setup().await;
    let client = clavis.client(Some(("agent", "agent-token")));
    let r = client
        .get("https://api.query.example/search?key=AGENT-placeholder&q=rust&key=AGENT-2")
        .send()
        .await
        .unwrap();
    echo(r).await;
    let seen = up.last();
    assert_eq!(
        seen.path, "/search?q=rust&key=REAL-query%20key%26%3D0123",
        "agent's key= removed, the real one appended percent-encoded"
    );
    assert_no_agent_values(&seen);

    // No query at all: one is added.
    echo(
        client
            .get("https://api.query.example/v1/list")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(up.last().path, "/v1/list?key=REAL-query%20key%26%3D0123");
}

#[tokio::test]
async fn hmac_recipe_matches_an_independent_hmac() {
    let (_ca, up, clavis) = setup().await;
    let client = clavis.client(Some(("agent", "agent-token")));
    let body = r#"{"amount":"12.50","currency":"EUR"}"#;
    let r = client
        .post("https://api.signed.example/v2/orders?dry_run=1")
        .header("X-Sign", "AGENT-sig")
        .header("x-ts", "AGENT-ts")
        .header("X-Key", "AGENT-key")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(echo(r).await["body"], body);
    let seen = up.last();
    assert_eq!(seen.all("x-key"), vec![REAL_SIGN_KEY]);
    let ts = seen.all("x-ts");
    assert_eq!(ts.len(), 1);
    let secs: u64 = ts[0].parse().expect("unix seconds");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(secs.abs_diff(now) <= 30);
    // {path} is the path alone: the query is not part of the message.
    let expected = hmac_hex(REAL_SIGN_SECRET, &format!("{}POST/v2/orders{body}", ts[0]));
    assert_eq!(seen.all("x-sign"), vec![expected.as_str()]);
    assert_eq!(seen.path, "/v2/orders?dry_run=1");
    assert_no_agent_values(&seen);

    // GET: empty body.
    echo(
        client
            .get("https://api.signed.example/v2/balance")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let seen = up.last();
    let ts = seen.header("x-ts").unwrap();
    assert_eq!(
        seen.header("x-sign"),
        Some(hmac_hex(REAL_SIGN_SECRET, &format!("{ts}GET/v2/balance")).as_str())
    );
}

/// A client that trusts only the fake upstream's CA: it can complete TLS
/// only with the upstream itself, i.e. through a blind tunnel, never through
/// clavis's interception.
fn tunnel_client(clavis: &Clavis, ca: &TestCa) -> reqwest::Client {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .proxy(reqwest::Proxy::all(clavis.proxy_url(Some(("agent", "agent-token")))).unwrap())
        .build()
        .unwrap()
}

#[tokio::test]
async fn wildcard_claims_one_or_more_labels_and_never_the_apex_or_suffix_tricks() {
    let (ca, up, clavis) = setup().await;

    // Claimed: intercepted with clavis's CA, the credential injected
    // (threat model T2: a wildcard matches one or more extra labels).
    for host in ["a.svc.example", "a.b.svc.example", "api.example.com"] {
        let r = clavis
            .client(Some(("agent", "agent-token")))
            .get(format!("https://{host}/x"))
            .header("X-Wild", "AGENT-wild")
            .send()
            .await
            .unwrap();
        echo(r).await;
        let seen = up.last();
        assert_eq!(seen.all("x-wild"), vec![REAL_WILD], "{host}");
        assert_no_agent_values(&seen);
    }

    // Not claimed: tunnelled untouched. The upstream's own certificate is
    // what the client sees, and the agent's header arrives as sent.
    let tunnel = tunnel_client(&clavis, &ca);
    for host in ["svc.example", "api.example.com.evil.net"] {
        let r = tunnel
            .get(format!("https://{host}/x"))
            .header("X-Wild", "AGENT-wild")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{host}: not tunnelled: {e:?}"));
        echo(r).await;
        let seen = up.last();
        assert_eq!(seen.all("x-wild"), vec!["AGENT-wild"], "{host}");
        assert!(
            seen.headers.iter().all(|(_, v)| !v.contains("REAL")),
            "{host}: something injected"
        );
    }

    // And a client trusting only clavis's CA cannot talk to them: clavis did
    // not mint a certificate for an unclaimed host.
    let r = clavis
        .client(None)
        .get("https://svc.example/x")
        .send()
        .await;
    assert!(r.is_err(), "svc.example was intercepted");
}

// ------------------------------------------------------------------ config errors

fn config_error(yaml: &str) -> String {
    match clavis::Settings::from_yaml(yaml, &HashMap::new()) {
        Ok(_) => panic!("config accepted:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

fn connector(body: &str) -> String {
    format!("connectors:\n  - name: mine\n    hosts: [\"api.mine.example\"]\n{body}")
}

const HDR_INJECT: &str = "    inject:\n      headers: { X-Api-Key: \"{api_key}\" }\n";

#[test]
fn the_spec_example_is_accepted() {
    let yaml = r#"
connectors:
  - name: internal-api
    hosts: ["api.internal.example", "*.svc.example"]
    strip: [Authorization, X-Api-Key]
    inject:
      headers: { X-Api-Key: "{api_key}" }
      query: { key: "{api_key}" }
    fields: [api_key]
  - name: signed-api
    hosts: ["api.signed.example"]
    sign:
      algorithm: hmac-sha256
      secret: "{api_secret}"
      message: "{timestamp}{method}{path}{body}"
      encoding: hex
      headers: { X-Key: "{api_key}", X-Sign: "{signature}", X-Ts: "{timestamp}" }
    fields: [api_key, api_secret]
"#;
    clavis::Settings::from_yaml(yaml, &HashMap::new()).unwrap();
}

#[test]
fn unknown_placeholder_names_the_template_key() {
    let e = config_error(&connector(
        "    inject:\n      headers: { X-Api-Key: \"{api_kye}\" }\n    fields: [api_key]\n",
    ));
    assert!(
        e.contains("connectors[0].inject.headers.X-Api-Key") && e.contains("{api_kye}"),
        "{e}"
    );
    let e = config_error(&connector(
        "    inject:\n      query: { key: \"{nope}\" }\n    fields: [api_key]\n",
    ));
    assert!(
        e.contains("connectors[0].inject.query.key") && e.contains("{nope}"),
        "{e}"
    );
}

#[test]
fn undeclared_credential_field_in_a_recipe_is_named() {
    let e = config_error(&connector(
        "    sign:\n      algorithm: hmac-sha256\n      secret: \"{api_secret}\"\n      message: \"{timestamp}{path}\"\n      headers: { X-Sign: \"{signature}\" }\n    fields: [api_key]\n",
    ));
    assert!(
        e.contains("connectors[0].sign.secret") && e.contains("{api_secret}"),
        "{e}"
    );
}

#[test]
fn unknown_fields_are_named_with_their_path() {
    // At the connector level.
    let e = config_error(&connector(&format!(
        "{HDR_INJECT}    fields: [api_key]\n    hedaers: {{}}\n"
    )));
    assert!(e.contains("connectors[0]") && e.contains("hedaers"), "{e}");
    // Inside inject.
    let e = config_error(&connector(
        "    inject:\n      header: { X-Api-Key: \"{api_key}\" }\n    fields: [api_key]\n",
    ));
    assert!(
        e.contains("connectors[0].inject") && e.contains("header"),
        "{e}"
    );
    // Inside sign.
    let e = config_error(&connector(
        "    sign:\n      algorithm: hmac-sha256\n      secret: \"{api_secret}\"\n      message: \"{path}\"\n      digest: hex\n      headers: { X-Sign: \"{signature}\" }\n    fields: [api_secret]\n",
    ));
    assert!(
        e.contains("connectors[0].sign") && e.contains("digest"),
        "{e}"
    );
}

#[test]
fn duplicate_host_claims_are_errors_naming_both_connectors() {
    let yaml = format!(
        "{}  - name: theirs\n    hosts: [\"API.Mine.Example\"]\n{HDR_INJECT}    fields: [api_key]\n",
        connector(&format!("{HDR_INJECT}    fields: [api_key]\n"))
    );
    let e = config_error(&yaml);
    assert!(
        e.contains("connectors") && e.contains("api.mine.example"),
        "{e}"
    );
    assert!(e.contains("\"mine\"") && e.contains("\"theirs\""), "{e}");

    // Against a built-in host.
    let yaml = format!(
        "connectors:\n  - name: mine\n    hosts: [\"api.openai.com\"]\n{HDR_INJECT}    fields: [api_key]\n"
    );
    let e = config_error(&yaml);
    assert!(
        e.contains("connectors") && e.contains("api.openai.com") && e.contains("\"openai\""),
        "{e}"
    );
}

/// The duplicate-claim and built-in-name errors should point at the entry
/// (and its line), like every other connector error does.
#[test]
fn duplicate_claims_name_the_offending_entry() {
    let yaml = format!(
        "{}  - name: theirs\n    hosts: [\"x.example\", \"api.mine.example\"]\n{HDR_INJECT}    fields: [api_key]\n",
        connector(&format!("{HDR_INJECT}    fields: [api_key]\n"))
    );
    let e = config_error(&yaml);
    assert!(e.contains("connectors[1].hosts[1]"), "{e}");
    let e = config_error(&format!(
        "connectors:\n  - name: openai\n    hosts: [\"api.mine.example\"]\n{HDR_INJECT}    fields: [api_key]\n"
    ));
    assert!(e.contains("connectors[0].name"), "{e}");
}

#[test]
fn invalid_header_names_are_named() {
    let e = config_error(&connector(
        "    inject:\n      headers: { \"Bad Header\": \"{api_key}\" }\n    fields: [api_key]\n",
    ));
    assert!(
        e.contains("connectors[0].inject.headers.Bad Header") && e.contains("header name"),
        "{e}"
    );
    let e = config_error(&connector(&format!(
        "    strip: [Authorization, \"X:Evil\"]\n{HDR_INJECT}    fields: [api_key]\n"
    )));
    assert!(e.contains("connectors[0].strip[1]"), "{e}");
    let e = config_error(&connector(
        "    sign:\n      algorithm: hmac-sha256\n      secret: \"{api_secret}\"\n      message: \"{path}\"\n      headers: { \"X Sign\": \"{signature}\" }\n    fields: [api_secret]\n",
    ));
    assert!(e.contains("connectors[0].sign.headers.X Sign"), "{e}");
}

#[test]
fn wildcards_over_a_tld_or_public_suffix_are_refused() {
    for host in ["*.com", "*.example"] {
        let e = config_error(&format!(
            "connectors:\n  - name: mine\n    hosts: [\"api.ok.example\", \"{host}\"]\n{HDR_INJECT}    fields: [api_key]\n"
        ));
        assert!(
            e.contains("connectors[0].hosts[1]") && e.contains(host),
            "{host}: {e}"
        );
    }
    for host in ["*.github.io", "*.workers.dev", "*.co.uk"] {
        let e = config_error(&format!(
            "connectors:\n  - name: mine\n    hosts: [\"{host}\"]\n{HDR_INJECT}    fields: [api_key]\n"
        ));
        assert!(
            e.contains("connectors[0].hosts[0]") && e.contains("public suffix"),
            "{host}: {e}"
        );
    }
    for host in [
        "*.*.svc.example",
        "a.*.svc.example",
        "api.example.com:443",
        "a b.example",
    ] {
        let e = config_error(&format!(
            "connectors:\n  - name: mine\n    hosts: [\"{host}\"]\n{HDR_INJECT}    fields: [api_key]\n"
        ));
        assert!(e.contains("connectors[0].hosts[0]"), "{host}: {e}");
    }
}

#[test]
fn built_in_names_cannot_be_redefined() {
    for name in ["openai", "kalshi", "coinbase"] {
        let e = config_error(&format!(
            "connectors:\n  - name: {name}\n    hosts: [\"api.mine.example\"]\n{HDR_INJECT}    fields: [api_key]\n"
        ));
        assert!(
            e.contains("connectors")
                && e.contains(&format!("\"{name}\""))
                && e.contains("built-in"),
            "{name}: {e}"
        );
    }
    // Two user connectors with one name.
    let yaml = format!(
        "{}  - name: mine\n    hosts: [\"other.example\"]\n{HDR_INJECT}    fields: [api_key]\n",
        connector(&format!("{HDR_INJECT}    fields: [api_key]\n"))
    );
    let e = config_error(&yaml);
    assert!(e.contains("\"mine\""), "{e}");
}

#[test]
fn unknown_algorithm_and_encoding_are_named() {
    let e = config_error(&connector(
        "    sign:\n      algorithm: hmac-md5\n      secret: \"{api_secret}\"\n      message: \"{path}\"\n      headers: { X-Sign: \"{signature}\" }\n    fields: [api_secret]\n",
    ));
    assert!(
        e.contains("connectors[0].sign.algorithm") && e.contains("hmac-md5"),
        "{e}"
    );
    let e = config_error(&connector(
        "    sign:\n      algorithm: hmac-sha512\n      secret: \"{api_secret}\"\n      message: \"{path}\"\n      encoding: base32\n      headers: { X-Sign: \"{signature}\" }\n    fields: [api_secret]\n",
    ));
    assert!(
        e.contains("connectors[0].sign.encoding") && e.contains("base32"),
        "{e}"
    );
}

#[test]
fn errors_carry_the_line() {
    let yaml = connector(
        "    inject:\n      headers: { X-Api-Key: \"{api_kye}\" }\n    fields: [api_key]\n",
    );
    let e = config_error(&yaml);
    assert!(e.contains("(line "), "{e}");
}
