//! Signing connectors end to end through HTTPS_PROXY: Kalshi (RSA-PSS and
//! Ed25519 keys made at test time), Coinbase (CDP JWT with the SDK's EC test
//! key and an Ed25519 key, and the legacy HMAC scheme), and the body buffer
//! limit of body-signing connectors. Every signature is checked in the test
//! with the public key (or an independent HMAC), never with clavis code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::signature::{
    UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ED25519, RSA_PSS_2048_8192_SHA256,
};
use serde_json::Value;
use support::*;

const KALSHI_HOST: &str = "external-api.kalshi.com";
const KALSHI_KEY_ID: &str = "a952bcbe-ec3b-4b5b-b8f9-11dae589608c";
const KALSHI_ED_KEY_ID: &str = "0f5e3c2a-ed25-4519-9d1b-000000000001";
const COINBASE_HOST: &str = "api.coinbase.com";
const HOSTS: &[&str] = &[KALSHI_HOST, COINBASE_HOST, "api.openai.com"];

// connectors.md §10.1: the coinbase-advanced-py test keys (public, fake).
const CB_KEY_NAME: &str = "organizations/test-organization/apiKeys/test-api-key";
const CB_EC_SECRET: &str = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIKwf3Uox30cRWzRBOPoPOH5p0Gpb0Dt8zUKXUEM5fMkGoAoGCCqGSM49\nAwEHoUQDQgAEbAtpLlSZYVOwYICz+uEyxcS29vRIujiES/gQ1DC7FV4zK4JuYE9v\nqDyGZQYjdXHLM7I6f/QnnOITL+dXYWBHRA==\n-----END EC PRIVATE KEY-----\n";
const CB_ED_SECRET: &str =
    "k0BUni0p0vZG1BdpVjS6ogBJ7kxm630AJ2dN+tuputDOKsRAwgyrpEQLeBtS1znTmzPX6Xr2eOWpzx6nW8knkA==";
const CB_ED_PKCS8_SECRET: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJNAVJ4tKdL2RtQXaVY0uqIASe5MZut9ACdnTfrbqbrQ\n-----END PRIVATE KEY-----\n";
/// The public key of the seed above (connectors.md §10.2).
const CB_ED_PUBLIC: &str = "zirEQMIMq6REC3gbUtc505sz1+l69njlqc8ep1vJJ5A=";
// Legacy HMAC: the doc example key and secret (connectors.md §7.2).
const CB_HMAC_KEY: &str = "g3BLnUYMOQsIo9V5";
const CB_HMAC_SECRET: &str = "M4009eFnOoPwhNoMwJlsAHgIgleGVFPl";

const ORDER_BODY: &str = r#"{"ticker":"KXBTC-25DEC31","side":"yes","action":"buy","count":3,"type":"limit","yes_price":42}"#;

// ------------------------------------------------------------------ helpers

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl CLI");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A fresh RSA-2048 key: (PKCS#8 PEM path, PKCS#1 PEM path, RSAPublicKey DER).
fn rsa_key(dir: &Path) -> (PathBuf, PathBuf, Vec<u8>) {
    let pkcs8 = dir.join("kalshi-rsa.pem");
    let pkcs1 = dir.join("kalshi-rsa-pkcs1.pem");
    let public = dir.join("kalshi-rsa.pub.der");
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        path_str(&pkcs8),
    ]);
    openssl(&[
        "rsa",
        "-in",
        path_str(&pkcs8),
        "-traditional",
        "-out",
        path_str(&pkcs1),
    ]);
    openssl(&[
        "rsa",
        "-in",
        path_str(&pkcs8),
        "-RSAPublicKey_out",
        "-outform",
        "DER",
        "-out",
        path_str(&public),
    ]);
    assert!(std::fs::read_to_string(&pkcs1)
        .unwrap()
        .contains("BEGIN RSA PRIVATE KEY"));
    (pkcs8, pkcs1, std::fs::read(public).unwrap())
}

/// A fresh Ed25519 key: (PKCS#8 PEM path, raw 32-byte public key).
fn ed25519_key(dir: &Path) -> (PathBuf, Vec<u8>) {
    let pem = dir.join("kalshi-ed25519.pem");
    openssl(&["genpkey", "-algorithm", "ed25519", "-out", path_str(&pem)]);
    let spki = openssl(&["pkey", "-in", path_str(&pem), "-pubout", "-outform", "DER"]);
    (pem, spki[spki.len() - 32..].to_vec())
}

/// The uncompressed P-256 point of a PEM EC key, via openssl.
fn ec_public_point(dir: &Path, pem: &str) -> Vec<u8> {
    let path = dir.join("cb-ec.pem");
    std::fs::write(&path, pem).unwrap();
    let spki = openssl(&["pkey", "-in", path_str(&path), "-pubout", "-outform", "DER"]);
    let point = spki[spki.len() - 65..].to_vec();
    assert_eq!(point[0], 0x04, "uncompressed point");
    point
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// No header the agent sent (all marked with `AGENT`) reached the upstream.
fn assert_no_agent_values(seen: &Seen) {
    for (name, value) in &seen.headers {
        assert!(
            !value.contains("AGENT") && !value.contains("clavis:"),
            "agent value reached the upstream in {name}: {value}"
        );
        assert!(!name.starts_with("proxy-"), "{name} reached the upstream");
    }
}

async fn echo(r: reqwest::Response) -> Value {
    assert_eq!(r.status(), 200, "agent saw {}", r.status());
    r.json().await.unwrap()
}

// ------------------------------------------------------------------ Kalshi

enum KalshiPublic {
    Rsa(Vec<u8>),
    Ed25519(Vec<u8>),
}

/// Checks the three KALSHI-ACCESS-* headers (one each) and the signature over
/// `timestamp + METHOD + path-without-query`.
fn check_kalshi(seen: &Seen, key_id: &str, method: &str, path: &str, public: &KalshiPublic) {
    assert_eq!(seen.all("kalshi-access-key"), vec![key_id]);
    let ts = seen.all("kalshi-access-timestamp");
    let sig = seen.all("kalshi-access-signature");
    assert_eq!((ts.len(), sig.len()), (1, 1), "{:?}", seen.headers);
    let ts_ms: u64 = ts[0].parse().expect("timestamp in milliseconds");
    assert!(
        ts_ms.abs_diff(now_millis()) < 30_000,
        "timestamp {ts_ms} is not now in ms"
    );
    let sig = STANDARD.decode(sig[0]).expect("standard base64 signature");
    let message = format!("{}{method}{path}", ts[0]);
    let result = match public {
        KalshiPublic::Rsa(der) => {
            UnparsedPublicKey::new(&RSA_PSS_2048_8192_SHA256, der).verify(message.as_bytes(), &sig)
        }
        KalshiPublic::Ed25519(raw) => {
            UnparsedPublicKey::new(&ED25519, raw).verify(message.as_bytes(), &sig)
        }
    };
    assert!(result.is_ok(), "signature does not verify over {message:?}");
    // The query is not signed: the same signature must not verify over it.
    if let Some((_, q)) = seen.path.split_once('?') {
        let with_query = format!("{message}?{q}");
        let bad = match public {
            KalshiPublic::Rsa(der) => UnparsedPublicKey::new(&RSA_PSS_2048_8192_SHA256, der)
                .verify(with_query.as_bytes(), &sig),
            KalshiPublic::Ed25519(raw) => {
                UnparsedPublicKey::new(&ED25519, raw).verify(with_query.as_bytes(), &sig)
            }
        };
        assert!(bad.is_err());
    }
    assert_no_agent_values(seen);
}

fn agent_kalshi_headers(rb: reqwest::RequestBuilder, selector: &str) -> reqwest::RequestBuilder {
    rb.header("KALSHI-ACCESS-KEY", selector)
        .header("KALSHI-ACCESS-TIMESTAMP", "1703123456789")
        .header("KALSHI-ACCESS-SIGNATURE", "AGENTSIGNATURE==")
        .header("kalshi_access_signature", "AGENT-underscore")
        .header("Kalshi-Access-Timestamp", "AGENT-1")
}

async fn kalshi_roundtrip(
    clavis: &Clavis,
    up: &Upstream,
    selector: &str,
    key_id: &str,
    public: &KalshiPublic,
) {
    let client = clavis.client(Some(("agent", "agent-token")));
    // GET with a query: the query reaches the upstream but is not signed.
    let r = agent_kalshi_headers(
        client.get(format!(
            "https://{KALSHI_HOST}/trade-api/v2/portfolio/orders?limit=5&status=resting"
        )),
        selector,
    )
    .send()
    .await
    .unwrap();
    echo(r).await;
    let seen = up.last();
    assert_eq!(seen.method, "GET");
    assert_eq!(
        seen.path,
        "/trade-api/v2/portfolio/orders?limit=5&status=resting"
    );
    check_kalshi(
        &seen,
        key_id,
        "GET",
        "/trade-api/v2/portfolio/orders",
        public,
    );

    // POST with a JSON body: the body arrives intact and is not signed.
    let r = agent_kalshi_headers(
        client
            .post(format!(
                "https://{KALSHI_HOST}/trade-api/v2/portfolio/orders"
            ))
            .header("content-type", "application/json")
            .body(ORDER_BODY),
        selector,
    )
    .send()
    .await
    .unwrap();
    let body = echo(r).await;
    assert_eq!(body["body"], ORDER_BODY);
    let seen = up.last();
    assert_eq!(seen.method, "POST");
    check_kalshi(
        &seen,
        key_id,
        "POST",
        "/trade-api/v2/portfolio/orders",
        public,
    );
}

#[tokio::test]
async fn kalshi_rsa_pss_and_ed25519_signatures_verify() {
    let keys = tempfile::tempdir().unwrap();
    let (rsa_pkcs8, rsa_pkcs1, rsa_public) = rsa_key(keys.path());
    let (ed_pem, ed_public) = ed25519_key(keys.path());
    let ca = TestCa::new();
    let up = Upstream::start(&ca, HOSTS).await;
    let yaml = format!(
        r#"
services:
  - name: kalshi-rsa
    connector: kalshi
    default: true
    credentials: {{ api_key_id: "{KALSHI_KEY_ID}", private_key: "${{file:{rsa}}}" }}
  - name: kalshi-rsa1
    connector: kalshi
    credentials: {{ api_key_id: "{KALSHI_KEY_ID}", private_key: "${{file:{rsa1}}}" }}
  - name: kalshi-ed
    connector: kalshi
    credentials: {{ api_key_id: "{KALSHI_ED_KEY_ID}", private_key: "${{file:{ed}}}" }}
agents:
  - {{ name: agent, token: agent-token, services: ["*"] }}
"#,
        rsa = rsa_pkcs8.display(),
        rsa1 = rsa_pkcs1.display(),
        ed = ed_pem.display(),
    );
    let clavis = Clavis::builder(&yaml).start(Some(&up), Some(&ca)).await;
    let rsa = KalshiPublic::Rsa(rsa_public);
    // The default service, with the SDK's throw-away key id in the header.
    kalshi_roundtrip(&clavis, &up, "AGENT-dummy-key-id", KALSHI_KEY_ID, &rsa).await;
    // The same RSA key as a PKCS#1 PEM, picked by a placeholder.
    kalshi_roundtrip(&clavis, &up, "clavis:kalshi-rsa1", KALSHI_KEY_ID, &rsa).await;
    // Ed25519, picked by a placeholder.
    kalshi_roundtrip(
        &clavis,
        &up,
        "clavis:kalshi-ed",
        KALSHI_ED_KEY_ID,
        &KalshiPublic::Ed25519(ed_public),
    )
    .await;
}

// ------------------------------------------------------------------ Coinbase

fn coinbase_yaml(extra: &str) -> String {
    format!(
        r#"
services:
  - name: cb-ec
    connector: coinbase
    default: true
    credentials: {{ api_key: "{CB_KEY_NAME}", api_secret: "${{CB_EC_SECRET}}" }}
  - name: cb-ec-escaped
    connector: coinbase
    credentials: {{ api_key: "{CB_KEY_NAME}", api_secret: '{escaped}' }}
  - name: cb-ed
    connector: coinbase
    credentials: {{ api_key: "{CB_KEY_NAME}", api_secret: "{CB_ED_SECRET}" }}
  - name: cb-ed-pem
    connector: coinbase
    credentials: {{ api_key: "{CB_KEY_NAME}", api_secret: "${{CB_ED_PKCS8}}" }}
  - name: cb-hmac
    connector: coinbase
    credentials: {{ api_key: "{CB_HMAC_KEY}", api_secret: "{CB_HMAC_SECRET}" }}
{extra}
agents:
  - {{ name: agent, token: agent-token, services: ["*"] }}
"#,
        escaped = CB_EC_SECRET.replace('\n', "\\n"),
    )
}

async fn coinbase_clavis(yaml: &str) -> (TestCa, Upstream, Clavis) {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, HOSTS).await;
    let clavis = Clavis::builder(yaml)
        .env("CB_EC_SECRET", CB_EC_SECRET)
        .env("CB_ED_PKCS8", CB_ED_PKCS8_SECRET)
        .start(Some(&up), Some(&ca))
        .await;
    (ca, up, clavis)
}

fn b64url_json(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

/// Decodes and checks the CDP JWT the upstream received, and verifies its
/// signature with `verify`.
fn check_jwt(seen: &Seen, alg: &str, uri: &str, verify: impl Fn(&[u8], &[u8]) -> bool) {
    let auth = seen.all("authorization");
    assert_eq!(auth.len(), 1, "{:?}", seen.headers);
    let jwt = auth[0].strip_prefix("Bearer ").expect("Bearer scheme");
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "{jwt}");
    let head = b64url_json(parts[0]);
    let claims = b64url_json(parts[1]);
    assert_eq!(head["alg"], alg);
    assert_eq!(head["kid"], CB_KEY_NAME);
    assert_eq!(head["typ"], "JWT");
    let nonce = head["nonce"].as_str().expect("nonce");
    assert!(
        nonce.len() == 64 && nonce.bytes().all(|b| b.is_ascii_hexdigit()),
        "{nonce}"
    );
    assert_eq!(claims["sub"], CB_KEY_NAME);
    assert_eq!(claims["iss"], "cdp");
    assert_eq!(claims["uri"], uri);
    let nbf = claims["nbf"].as_u64().expect("nbf");
    assert!(nbf.abs_diff(unix_now()) <= 30, "nbf {nbf} is not now");
    assert_eq!(claims["exp"].as_u64(), Some(nbf + 120));
    let signature = URL_SAFE_NO_PAD.decode(parts[2]).expect("signature");
    let signed = format!("{}.{}", parts[0], parts[1]);
    assert!(
        verify(signed.as_bytes(), &signature),
        "{alg} JWT signature does not verify"
    );
    assert_no_agent_values(seen);
}

#[tokio::test]
async fn coinbase_cdp_jwt_es256_and_eddsa_verify() {
    let keys = tempfile::tempdir().unwrap();
    let ec_point = ec_public_point(keys.path(), CB_EC_SECRET);
    let ed_public = STANDARD.decode(CB_ED_PUBLIC).unwrap();
    let es256 = |msg: &[u8], sig: &[u8]| {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &ec_point)
            .verify(msg, sig)
            .is_ok()
    };
    let eddsa = |msg: &[u8], sig: &[u8]| {
        UnparsedPublicKey::new(&ED25519, &ed_public)
            .verify(msg, sig)
            .is_ok()
    };
    let (_ca, up, clavis) = coinbase_clavis(&coinbase_yaml("")).await;
    let client = clavis.client(Some(("agent", "agent-token")));

    // (placeholder in Authorization, expected alg, verifier)
    type Verify<'a> = &'a dyn Fn(&[u8], &[u8]) -> bool;
    let cases: [(&str, &str, Verify); 4] = [
        ("Bearer AGENT.dummy.jwt", "ES256", &es256),
        ("Bearer clavis:cb-ec-escaped", "ES256", &es256),
        ("Bearer clavis:cb-ed", "EdDSA", &eddsa),
        ("Bearer clavis:cb-ed-pem", "EdDSA", &eddsa),
    ];
    for (auth, alg, verify) in cases {
        // GET with a query: the `uri` claim has no query.
        let r = client
            .get(format!(
                "https://{COINBASE_HOST}/api/v3/brokerage/accounts?limit=5&cursor=abc"
            ))
            .header("Authorization", auth)
            .header("CB-ACCESS-SIGN", "AGENT-sign")
            .send()
            .await
            .unwrap();
        echo(r).await;
        let seen = up.last();
        assert_eq!(seen.path, "/api/v3/brokerage/accounts?limit=5&cursor=abc");
        check_jwt(
            &seen,
            alg,
            "GET api.coinbase.com/api/v3/brokerage/accounts",
            verify,
        );
        assert!(seen.header("cb-access-sign").is_none());

        // POST with a JSON body.
        let body = r#"{"client_order_id":"c-1","product_id":"BTC-USD","side":"BUY","order_configuration":{"market_market_ioc":{"quote_size":"10"}}}"#;
        let r = client
            .post(format!("https://{COINBASE_HOST}/api/v3/brokerage/orders"))
            .header("Authorization", auth)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(echo(r).await["body"], body);
        check_jwt(
            &up.last(),
            alg,
            "POST api.coinbase.com/api/v3/brokerage/orders",
            verify,
        );
    }
}

#[tokio::test]
async fn coinbase_legacy_hmac_matches_an_independent_hmac() {
    let (_ca, up, clavis) = coinbase_clavis(&coinbase_yaml("")).await;
    let client = clavis.client(Some(("agent", "agent-token")));
    let body = r#"{"product_id":"BTC-USD","side":"BUY","size":"0.01"}"#;
    let r = client
        .post(format!("https://{COINBASE_HOST}/api/v3/brokerage/orders"))
        .header("CB-ACCESS-KEY", "clavis:cb-hmac")
        .header("CB-ACCESS-SIGN", "AGENT-sign")
        .header("CB-ACCESS-TIMESTAMP", "AGENT-1")
        .header("cb-access-passphrase", "AGENT-pass")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(echo(r).await["body"], body);
    let seen = up.last();
    assert_eq!(seen.all("cb-access-key"), vec![CB_HMAC_KEY]);
    let ts = seen.all("cb-access-timestamp");
    assert_eq!(ts.len(), 1);
    let secs: u64 = ts[0].parse().expect("integer seconds");
    assert!(secs.abs_diff(unix_now()) <= 30);
    let expected = hmac_hex(
        CB_HMAC_SECRET,
        &format!("{}POST/api/v3/brokerage/orders{body}", ts[0]),
    );
    assert_eq!(seen.all("cb-access-sign"), vec![expected.as_str()]);
    assert!(seen.header("authorization").is_none());
    assert!(seen.header("cb-access-passphrase").is_none());
    assert_no_agent_values(&seen);

    // GET with a query: v3 signs the path without the query, body "".
    let r = client
        .get(format!(
            "https://{COINBASE_HOST}/api/v3/brokerage/accounts?limit=5"
        ))
        .header("CB-ACCESS-KEY", "clavis:cb-hmac")
        .send()
        .await
        .unwrap();
    echo(r).await;
    let seen = up.last();
    let ts = seen.header("cb-access-timestamp").unwrap();
    assert_eq!(
        seen.header("cb-access-sign"),
        Some(
            hmac_hex(
                CB_HMAC_SECRET,
                &format!("{ts}GET/api/v3/brokerage/accounts")
            )
            .as_str()
        )
    );
}

// ------------------------------------------------------------------ body limit

#[tokio::test]
async fn body_signing_connectors_refuse_bodies_over_the_buffer_limit() {
    let keys = tempfile::tempdir().unwrap();
    let (rsa_pkcs8, _, _) = rsa_key(keys.path());
    let extra = format!(
        r#"  - name: kalshi-rsa
    connector: kalshi
    credentials: {{ api_key_id: "{KALSHI_KEY_ID}", private_key: "${{file:{}}}" }}
  - name: my-openai
    connector: openai
    credentials: {{ api_key: "{REAL_OPENAI}" }}
  - name: hmac-api
    connector: signed-api
    credentials: {{ api_key: "k-1", api_secret: "s-1" }}
connectors:
  - name: signed-api
    hosts: ["api.signed.example"]
    sign:
      algorithm: hmac-sha256
      secret: "{{api_secret}}"
      message: "{{timestamp}}{{method}}{{path}}{{body}}"
      headers: {{ X-Sign: "{{signature}}" }}
    fields: [api_key, api_secret]
limits: {{ max_body_buffer: 1024 }}"#,
        rsa_pkcs8.display()
    );
    let ca = TestCa::new();
    let mut hosts = HOSTS.to_vec();
    hosts.push("api.signed.example");
    let up = Upstream::start(&ca, &hosts).await;
    let clavis = Clavis::builder(&coinbase_yaml(&extra))
        .env("CB_EC_SECRET", CB_EC_SECRET)
        .env("CB_ED_PKCS8", CB_ED_PKCS8_SECRET)
        .start(Some(&up), Some(&ca))
        .await;
    let client = clavis.client(Some(("agent", "agent-token")));
    let big = "x".repeat(4096);

    // Body-signing: legacy Coinbase HMAC and a user HMAC recipe over {body}.
    for (url, header, value) in [
        (
            format!("https://{COINBASE_HOST}/api/v3/brokerage/orders"),
            "CB-ACCESS-KEY",
            "clavis:cb-hmac",
        ),
        (
            "https://api.signed.example/upload".to_owned(),
            "X-Other",
            "1",
        ),
    ] {
        let before = up.seen().len();
        let r = client
            .post(&url)
            .header(header, value)
            .body(big.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413, "{url}");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["type"], "clavis_payload_too_large", "{err}");
        assert_eq!(up.seen().len(), before, "{url}: something was forwarded");

        // A body under the limit still goes through.
        let r = client
            .post(&url)
            .header(header, value)
            .body("small")
            .send()
            .await
            .unwrap();
        assert_eq!(echo(r).await["body_len"], 5, "{url}");
    }

    // Connectors that do not sign the body stream a larger one.
    let large = vec![b'y'; 256 * 1024];
    for (url, header, value) in [
        (
            "https://api.openai.com/v1/files".to_owned(),
            "Authorization",
            "Bearer placeholder",
        ),
        (
            format!("https://{COINBASE_HOST}/api/v3/brokerage/orders"),
            "Authorization",
            "Bearer clavis:cb-ec",
        ),
        (
            format!("https://{KALSHI_HOST}/trade-api/v2/portfolio/orders"),
            "KALSHI-ACCESS-KEY",
            "AGENT-key",
        ),
    ] {
        let r = client
            .post(&url)
            .header(header, value)
            .body(large.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(echo(r).await["body_len"], large.len(), "{url}");
        assert_eq!(up.last().body_len, large.len());
    }
}
