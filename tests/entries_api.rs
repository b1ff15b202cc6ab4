//! The agent-facing entries API (SPEC §5 `/api/...`): list, read and search
//! scoped per agent, redaction of sensitive fields, TOTP codes checked against
//! an independent RFC 6238 computation, `/api/generate` bounds, audit records,
//! and the admin port's Origin / token checks on these routes.
// Helpers below are not `#[test]` functions, so clippy.toml's
// allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{json, Value};
use support::*;

const ADMIN: &str = "admin-token-entries-0123456789";
const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-0123456789";

// Secrets: none of these may ever appear in a REST answer.
const ALPHA_KEY: &str = "sk-ALPHAcredentialvalue-7f3a9c";
const BETA_KEY: &str = "BSA-BETAcredentialvalue-41d2e8";
const GAMMA_KEY: &str = "ghp_GAMMAcredentialvalue5b6c7d";
const ALPHA_SENSITIVE: &str = "hunter2-quasar-sensitive-value";
const BETA_SENSITIVE: &str = "pin-nebula-sensitive-4711";
/// RFC 6238's SHA-1 seed; the config carries it in base32.
const ALPHA_SEED: &[u8] = b"12345678901234567890";
/// RFC 6238's SHA-256 seed, given to bob's service as an otpauth:// URI.
const BETA_SEED: &[u8] = b"12345678901234567890123456789012";

/// Every string that must never appear in an answer.
fn secrets() -> Vec<String> {
    vec![
        ALPHA_KEY.into(),
        BETA_KEY.into(),
        GAMMA_KEY.into(),
        ALPHA_SENSITIVE.into(),
        BETA_SENSITIVE.into(),
        base32(ALPHA_SEED),
        base32(BETA_SEED),
        // Distinctive substrings, in case a value is shown partly.
        "credentialvalue".into(),
        "quasar".into(),
        "nebula".into(),
    ]
}

fn yaml() -> String {
    let alpha_totp = base32(ALPHA_SEED);
    let beta_totp = format!(
        "otpauth://totp/Beta:bob?secret={}&issuer=Beta&algorithm=SHA256&digits=8&period=60",
        base32(BETA_SEED)
    );
    format!(
        r#"
admin: {{ token: "{ADMIN}" }}
services:
  - name: alpha-mail
    connector: openai
    credentials: {{ api_key: "{ALPHA_KEY}", totp_secret: "{alpha_totp}" }}
    notes: "Mail relay for the Zephyr project"
    url: "https://mail.alpha.example"
    username: "ops@alpha.example"
    fields:
      - {{ name: recovery_code, value: "{ALPHA_SENSITIVE}", sensitive: true }}
      - {{ name: region, value: "eu-west-quokka", sensitive: false }}
  - name: beta-search
    connector: brave-search
    credentials: {{ api_key: "{BETA_KEY}", totp_secret: "{beta_totp}" }}
    notes: "Lookup tool for the Orion team"
    fields:
      - {{ name: backup_pin, value: "{BETA_SENSITIVE}", sensitive: true }}
  - name: gamma-code
    connector: github
    credentials: {{ api_key: "{GAMMA_KEY}" }}
agents:
  - {{ name: alice, token: "{ALICE}", services: [alpha-mail, gamma-code] }}
  - {{ name: bob, token: "{BOB}", services: [beta-search] }}
"#
    )
}

struct Env {
    _ca: TestCa,
    _up: Upstream,
    clavis: Clavis,
    c: reqwest::Client,
    /// Every body received, for the no-secret sweep.
    bodies: std::sync::Mutex<Vec<String>>,
}

impl Env {
    async fn new() -> Env {
        let ca = TestCa::new();
        let up = Upstream::start(&ca, ALL_HOSTS).await;
        let clavis = Clavis::builder(&yaml()).start(Some(&up), Some(&ca)).await;
        Env {
            _ca: ca,
            _up: up,
            clavis,
            c: admin_client(),
            bodies: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.clavis.admin)
    }

    /// GET with a bearer token: (status, body text).
    async fn get_raw(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut r = self.c.get(self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        self.bodies.lock().unwrap().push(text.clone());
        (status, text)
    }

    async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let (status, text) = self.get_raw(path, Some(token)).await;
        let v = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {text}"));
        (status, v)
    }

    async fn ok(&self, path: &str, token: &str) -> Value {
        let (status, v) = self.get(path, token).await;
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    async fn names(&self, path: &str, token: &str) -> Vec<String> {
        let v = self.ok(path, token).await;
        let mut names: Vec<String> = v
            .as_array()
            .unwrap_or_else(|| panic!("GET {path}: not an array: {v}"))
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    }

    async fn audit(&self, query: &str) -> Vec<Value> {
        let v = self.ok(&format!("/v1/audit?{query}"), ADMIN).await;
        v.as_array().unwrap().clone()
    }

    /// No answer received so far holds a credential or sensitive value.
    fn assert_no_secrets(&self) {
        let bodies = self.bodies.lock().unwrap();
        assert!(!bodies.is_empty());
        for body in bodies.iter() {
            for s in secrets() {
                assert!(!body.contains(&s), "answer leaks {s:?}: {body}");
            }
        }
    }
}

#[tokio::test]
async fn list_and_read_are_scoped_per_agent() {
    let env = Env::new().await;
    assert_eq!(
        env.names("/api/entries", ALICE).await,
        vec!["alpha-mail", "gamma-code"]
    );
    assert_eq!(env.names("/api/entries", BOB).await, vec!["beta-search"]);
    assert_eq!(
        env.names("/api/entries", ADMIN).await,
        vec!["alpha-mail", "beta-search", "gamma-code"]
    );

    // Ids, from the admin's view.
    let all = env.ok("/api/entries", ADMIN).await;
    let id_of = |name: &str| {
        all.as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (alpha_id, beta_id) = (id_of("alpha-mail"), id_of("beta-search"));

    // In scope: by name and by id.
    let by_name = env.ok("/api/entries/alpha-mail", ALICE).await;
    let by_id = env.ok(&format!("/api/entries/{alpha_id}"), ALICE).await;
    assert_eq!(by_name, by_id);
    assert_eq!(by_name["name"], "alpha-mail");
    assert_eq!(by_name["connector"], "openai");
    assert!(by_name["hosts"]
        .as_array()
        .unwrap()
        .contains(&json!("api.openai.com")));
    assert_eq!(by_name["notes"], "Mail relay for the Zephyr project");
    assert_eq!(by_name["url"], "https://mail.alpha.example");
    assert_eq!(by_name["username"], "ops@alpha.example");

    // Out of scope: 404 by name and by id, both ways, and for unknown names.
    for (path, token) in [
        ("/api/entries/beta-search".to_owned(), ALICE),
        (format!("/api/entries/{beta_id}"), ALICE),
        ("/api/entries/alpha-mail".to_owned(), BOB),
        (format!("/api/entries/{alpha_id}"), BOB),
        ("/api/entries/gamma-code".to_owned(), BOB),
        ("/api/entries/no-such-service".to_owned(), ALICE),
        ("/api/entries/no-such-service".to_owned(), ADMIN),
    ] {
        let (status, v) = env.get(&path, token).await;
        assert_eq!(status, 404, "GET {path}: {v}");
        assert!(v["error"]["type"].is_string(), "{v}");
    }
    // A 404 for a foreign service looks like one for a missing service: the
    // message must not confirm that the name exists elsewhere.
    let (_, foreign) = env.get("/api/entries/beta-search", ALICE).await;
    assert!(
        !foreign.to_string().contains("bob"),
        "404 mentions the other agent: {foreign}"
    );
    env.assert_no_secrets();
}

#[tokio::test]
async fn sensitive_fields_are_redacted_and_nothing_leaks() {
    let env = Env::new().await;
    for token in [ALICE, ADMIN] {
        let e = env.ok("/api/entries/alpha-mail", token).await;
        assert_eq!(
            e["fields"]["recovery_code"],
            json!({"value": "[REDACTED]", "l2": true}),
            "{e}"
        );
        assert_eq!(e["fields"]["region"]["value"], "eu-west-quokka", "{e}");
        assert_ne!(e["fields"]["region"]["l2"], true, "{e}");
    }
    let e = env.ok("/api/entries/beta-search", BOB).await;
    assert_eq!(
        e["fields"]["backup_pin"],
        json!({"value": "[REDACTED]", "l2": true})
    );
    // Every route that shows entries, for every caller.
    for token in [ALICE, BOB, ADMIN] {
        env.ok("/api/entries", token).await;
        for q in ["a", "e", "-", "recovery", "pin", "api", "ZEPHYR"] {
            env.ok(&format!("/api/search?q={q}"), token).await;
        }
    }
    for name in ["alpha-mail", "beta-search", "gamma-code"] {
        env.ok(&format!("/api/entries/{name}"), ADMIN).await;
        env.get(&format!("/api/ext/totp/{name}"), ADMIN).await;
    }
    env.ok("/v1/services", ADMIN).await;
    env.ok("/v1/audit?limit=1000", ADMIN).await;
    env.assert_no_secrets();
}

#[tokio::test]
async fn search_is_case_insensitive_over_metadata_only() {
    let env = Env::new().await;
    let s = |q: &'static str, token: &'static str| {
        let env = &env;
        async move { env.names(&format!("/api/search?q={q}"), token).await }
    };
    // Name, connector, host, notes, field names; any case.
    assert_eq!(s("ALPHA-MAIL", ALICE).await, vec!["alpha-mail"]);
    assert_eq!(s("OpenAI", ALICE).await, vec!["alpha-mail"]);
    assert_eq!(s("API.GITHUB.COM", ALICE).await, vec!["gamma-code"]);
    assert_eq!(s("uploads.github", ALICE).await, vec!["gamma-code"]);
    assert_eq!(s("zephyr", ALICE).await, vec!["alpha-mail"]);
    assert_eq!(s("Recovery_Code", ALICE).await, vec!["alpha-mail"]);
    assert_eq!(s("BACKUP_PIN", BOB).await, vec!["beta-search"]);
    assert_eq!(s("orion", BOB).await, vec!["beta-search"]);
    assert_eq!(s("brave", BOB).await, vec!["beta-search"]);

    // Scope: bob's service never shows up for alice, whatever matches it.
    for q in ["beta", "orion", "brave", "backup_pin", "search.brave.com"] {
        assert!(
            env.names(&format!("/api/search?q={q}"), ALICE)
                .await
                .is_empty(),
            "alice found bob's service with {q:?}"
        );
    }
    for q in ["alpha", "zephyr", "openai", "github", "recovery_code"] {
        assert!(
            env.names(&format!("/api/search?q={q}"), BOB)
                .await
                .is_empty(),
            "bob found alice's service with {q:?}"
        );
    }
    // The admin sees every match.
    assert_eq!(
        s("a", ADMIN).await,
        vec!["alpha-mail", "beta-search", "gamma-code"]
    );

    // Never over credential values or sensitive field values, for anyone.
    let base32_alpha = base32(ALPHA_SEED);
    let needles = [
        ALPHA_KEY,
        "credentialvalue",
        "ALPHAcredential",
        BETA_KEY,
        GAMMA_KEY,
        ALPHA_SENSITIVE,
        "quasar",
        BETA_SENSITIVE,
        "nebula",
        base32_alpha.as_str(),
        "otpauth",
    ];
    for token in [ALICE, BOB, ADMIN] {
        for q in needles {
            let names = env.names(&format!("/api/search?q={q}"), token).await;
            assert!(names.is_empty(), "q={q:?} matched a secret: {names:?}");
        }
    }

    // Bad queries.
    let (status, _) = env.get("/api/search", ALICE).await;
    assert_eq!(status, 400);
    let long = "x".repeat(257);
    let (status, _) = env.get(&format!("/api/search?q={long}"), ALICE).await;
    assert_eq!(status, 400);
    env.assert_no_secrets();
}

/// RFC 6238 with ring's HMAC, independent of clavis's own implementation.
fn rfc6238(seed: &[u8], alg: ring::hmac::Algorithm, digits: u32, period: u64, unix: u64) -> String {
    let key = ring::hmac::Key::new(alg, seed);
    let tag = ring::hmac::sign(&key, &(unix / period).to_be_bytes());
    let mac = tag.as_ref();
    let offset = (mac[mac.len() - 1] & 0x0f) as usize;
    let bin = (u32::from(mac[offset] & 0x7f) << 24)
        | (u32::from(mac[offset + 1]) << 16)
        | (u32::from(mac[offset + 2]) << 8)
        | u32::from(mac[offset + 3]);
    format!(
        "{:0width$}",
        u64::from(bin) % 10u64.pow(digits),
        width = digits as usize
    )
}

/// Fetches the TOTP answer and checks it against the reference for the time
/// window(s) the request spanned.
async fn check_totp(
    env: &Env,
    key: &str,
    token: &str,
    seed: &[u8],
    alg: ring::hmac::Algorithm,
    digits: u32,
    period: u64,
) {
    let before = unix_now();
    let v = env.ok(&format!("/api/ext/totp/{key}"), token).await;
    let after = unix_now();
    let code = v["code"]
        .as_str()
        .unwrap_or_else(|| panic!("code not a string: {v}"));
    assert_eq!(code.len(), digits as usize, "{v}");
    assert!(code.bytes().all(|b| b.is_ascii_digit()), "{v}");
    assert_eq!(v["period"], period, "{v}");
    let expires_in = v["expires_in"].as_u64().unwrap();
    assert!((1..=period).contains(&expires_in), "{v}");
    // The request may straddle a window boundary (expires_in near 0 or near
    // `period`): accept the code of any window the request spanned.
    let mut candidates = vec![
        rfc6238(seed, alg, digits, period, before),
        rfc6238(seed, alg, digits, period, after),
    ];
    if expires_in <= 1 {
        candidates.push(rfc6238(seed, alg, digits, period, before.saturating_sub(1)));
    }
    assert!(
        candidates.iter().any(|c| c == code),
        "{key}: code {code} is none of {candidates:?} (t={before}..{after})"
    );
    let expected = [period - before % period, period - after % period];
    assert!(
        expected.contains(&expires_in),
        "expires_in {expires_in} not in {expected:?}"
    );
}

#[tokio::test]
async fn totp_matches_rfc6238_and_is_scoped() {
    let env = Env::new().await;
    let sha1 = ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY;
    let sha256 = ring::hmac::HMAC_SHA256;
    // Base32 secret, defaults (SHA-1, 6 digits, 30 s): by name and by id.
    check_totp(&env, "alpha-mail", ALICE, ALPHA_SEED, sha1, 6, 30).await;
    check_totp(&env, "alpha-mail", ADMIN, ALPHA_SEED, sha1, 6, 30).await;
    let alpha_id = env.ok("/api/entries/alpha-mail", ADMIN).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    check_totp(&env, &alpha_id, ALICE, ALPHA_SEED, sha1, 6, 30).await;
    // otpauth:// URI with SHA256, 8 digits, 60 s.
    check_totp(&env, "beta-search", BOB, BETA_SEED, sha256, 8, 60).await;

    // Out of scope: 404, no code.
    for (key, token) in [
        ("beta-search", ALICE),
        ("alpha-mail", BOB),
        (alpha_id.as_str(), BOB),
        ("gamma-code", BOB),
        ("nope", ALICE),
    ] {
        let (status, v) = env.get(&format!("/api/ext/totp/{key}"), token).await;
        assert_eq!(status, 404, "{key} as {token}: {v}");
        assert!(v.get("code").is_none(), "{v}");
    }
    // In scope but without a TOTP secret: 404, no code.
    let (status, v) = env.get("/api/ext/totp/gamma-code", ALICE).await;
    assert_eq!(status, 404, "{v}");
    assert!(v.get("code").is_none(), "{v}");
    env.assert_no_secrets();
}

#[tokio::test]
async fn totp_for_a_service_registered_over_the_api() {
    let env = Env::new().await;
    let c = &env.c;
    let r = c
        .post(env.url("/v1/services"))
        .bearer_auth(ADMIN)
        .json(&json!({
            "name": "delta-vault",
            "connector_name": "github",
            "notes": "Registered with fields over REST",
            "url": "https://delta.example",
            "username": "delta-user",
            "fields": [
                {"name": "security_answer", "value": "api-sensitive-marmot", "sensitive": true},
                {"name": "team", "value": "platform", "sensitive": false}
            ]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created = r.text().await.unwrap();
    assert!(!created.contains("marmot"), "{created}");
    // TOTP-only credentials (no connector key).
    let r = c
        .post(env.url("/v1/services/delta-vault/credentials"))
        .bearer_auth(ADMIN)
        .json(&json!({"token_type": "totp", "data": {"totp_secret": base32(ALPHA_SEED).to_lowercase()}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let e = env.ok("/api/entries/delta-vault", ADMIN).await;
    assert_eq!(
        e["fields"]["security_answer"],
        json!({"value": "[REDACTED]", "l2": true})
    );
    assert_eq!(e["fields"]["team"]["value"], "platform");
    assert_eq!(e["notes"], "Registered with fields over REST");
    assert_eq!(
        env.names("/api/search?q=SECURITY_ANSWER", ADMIN).await,
        vec!["delta-vault"]
    );
    assert!(env.names("/api/search?q=marmot", ADMIN).await.is_empty());
    check_totp(
        &env,
        "delta-vault",
        ADMIN,
        ALPHA_SEED,
        ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        6,
        30,
    )
    .await;
    // Not in alice's list (her scope is fixed by name).
    let (status, _) = env.get("/api/ext/totp/delta-vault", ALICE).await;
    assert_eq!(status, 404);
    let bodies = env.bodies.lock().unwrap();
    for b in bodies.iter() {
        assert!(!b.contains("marmot"), "{b}");
        assert!(!b.contains(&base32(ALPHA_SEED)), "{b}");
        assert!(!b.contains(&base32(ALPHA_SEED).to_lowercase()), "{b}");
    }
}

#[tokio::test]
async fn generate_bounds_and_alphabet() {
    let env = Env::new().await;
    for token in [ALICE, ADMIN] {
        let v = env.ok("/api/generate", token).await;
        assert_eq!(v["length"], 32);
        assert_eq!(v["password"].as_str().unwrap().chars().count(), 32);
    }
    for len in [8, 9, 64, 127, 128] {
        let v = env.ok(&format!("/api/generate?length={len}"), ALICE).await;
        assert_eq!(v["length"], len);
        let p = v["password"].as_str().unwrap();
        assert_eq!(p.len(), len, "{p}");
        assert!(p.bytes().all(|b| b.is_ascii_graphic()), "{p}");
    }
    for bad in [
        "length=7",
        "length=129",
        "length=0",
        "length=-1",
        "length=abc",
        "length=99999999999999999999999",
        "symbols=maybe",
    ] {
        let (status, v) = env.get(&format!("/api/generate?{bad}"), ALICE).await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert!(v.get("password").is_none(), "{bad}: {v}");
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let v = env.ok("/api/generate?length=40&symbols=false", ALICE).await;
        let p = v["password"].as_str().unwrap().to_owned();
        assert_eq!(p.len(), 40);
        assert!(p.bytes().all(|b| b.is_ascii_alphanumeric()), "{p}");
        assert!(seen.insert(p), "a password repeated");
    }
    // With symbols (the default), over many draws at least one symbol shows.
    let mut any_symbol = false;
    for _ in 0..10 {
        let v = env.ok("/api/generate?length=32&symbols=true", ALICE).await;
        let p = v["password"].as_str().unwrap();
        any_symbol |= p.bytes().any(|b| !b.is_ascii_alphanumeric());
    }
    assert!(any_symbol);
}

#[tokio::test]
async fn reads_searches_and_totp_are_audited() {
    let env = Env::new().await;
    env.ok("/api/entries", ALICE).await;
    env.ok("/api/entries/alpha-mail", ALICE).await;
    env.ok("/api/search?q=ZephyrAuditProbe", ALICE).await;
    env.ok("/api/ext/totp/alpha-mail", ALICE).await;
    env.ok("/api/ext/totp/beta-search", BOB).await;
    env.ok("/api/search?q=orion", BOB).await;

    let alice = env.audit("actor=api:alice&limit=100").await;
    let has = |events: &[Value], action: &str, entry: &str| {
        events
            .iter()
            .any(|e| e["action"] == action && e["entry"] == entry)
    };
    assert!(has(&alice, "read", "alpha-mail"), "{alice:?}");
    assert!(has(&alice, "totp", "alpha-mail"), "{alice:?}");
    assert!(
        alice.iter().any(|e| e["action"] == "search"
            && e["detail"]["note"]
                .as_str()
                .is_some_and(|n| n.contains("ZephyrAuditProbe"))),
        "{alice:?}"
    );
    assert!(alice.iter().all(|e| e["actor"] == "api:alice"));
    // Three reads-or-more (list + one), one search, one totp.
    assert!(
        alice.iter().filter(|e| e["action"] == "read").count() >= 2,
        "{alice:?}"
    );
    for e in &alice {
        assert!(e["time"].is_string(), "{e}");
    }

    let bob = env.audit("actor=api:bob&limit=100").await;
    assert!(has(&bob, "totp", "beta-search"), "{bob:?}");
    assert!(
        bob.iter().any(|e| e["action"] == "search"
            && e["detail"]["note"]
                .as_str()
                .is_some_and(|n| n.contains("orion"))),
        "{bob:?}"
    );
    // Filter by entry as well.
    let by_entry = env.audit("entry=alpha-mail&limit=100").await;
    assert!(by_entry.iter().all(|e| e["entry"] == "alpha-mail"));
    assert!(has(&by_entry, "totp", "alpha-mail"));
    // Admin reads are audited as admin.
    env.ok("/api/entries/gamma-code", ADMIN).await;
    let admin = env.audit("actor=admin&limit=100").await;
    assert!(has(&admin, "read", "gamma-code"), "{admin:?}");
    // The audit itself holds no secret.
    env.assert_no_secrets();
}

#[tokio::test]
async fn agent_cannot_read_the_audit() {
    let env = Env::new().await;
    let (status, _) = env.get("/v1/audit", ALICE).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn foreign_origin_and_missing_token_are_refused() {
    let env = Env::new().await;
    let routes = [
        "/api/entries",
        "/api/entries/alpha-mail",
        "/api/search?q=alpha",
        "/api/ext/totp/alpha-mail",
        "/api/generate",
    ];
    for path in routes {
        for origin in [
            "https://evil.example",
            "http://localhost.evil.example",
            "null",
        ] {
            let r = env
                .c
                .get(env.url(path))
                .bearer_auth(ALICE)
                .header("origin", origin)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403, "{path} with Origin {origin}");
            let text = r.text().await.unwrap();
            assert!(!text.contains("alpha-mail\",\"connector"), "{text}");
            assert!(!text.contains("password"), "{text}");
        }
        // A loopback Origin is fine.
        let r = env
            .c
            .get(env.url(path))
            .bearer_auth(ALICE)
            .header("origin", format!("http://{}", env.clavis.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} with a loopback Origin");
        // A foreign Host (DNS rebinding).
        let r = env
            .c
            .get(env.url(path))
            .bearer_auth(ALICE)
            .header("host", "rebind.evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path} with a foreign Host");
    }
    // No token, wrong token, token outside Authorization: 401. Kept under the
    // throttle's limit (10 failures a minute).
    for path in [
        "/api/entries",
        "/api/search?q=a",
        "/api/ext/totp/alpha-mail",
    ] {
        let (status, body) = env.get_raw(path, None).await;
        assert_eq!(status, 401, "{path}: {body}");
    }
    let (status, _) = env.get_raw("/api/generate", None).await;
    assert_eq!(status, 401);
    let (status, _) = env.get_raw("/api/entries", Some("not-a-token")).await;
    assert_eq!(status, 401);
    let r = env
        .c
        .get(env.url(&format!("/api/entries?token={ALICE}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = env
        .c
        .get(env.url("/api/entries"))
        .header("x-api-key", ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = env
        .c
        .get(env.url("/api/entries"))
        .basic_auth("alice", Some(ALICE))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    env.assert_no_secrets();
}

/// An agent that pastes a key into a search must not put it in the audit
/// log; ordinary queries stay readable there.
#[tokio::test]
async fn a_search_for_a_credential_is_audited_redacted() {
    let env = Env::new().await;
    // Another agent's key, the caller's own, the start of one, and a
    // sensitive entry field (sealed like a credential).
    for q in [BETA_KEY, ALPHA_KEY, "ghp_GAMMAcred", BETA_SENSITIVE] {
        let names = env.names(&format!("/api/search?q={q}"), ALICE).await;
        assert!(names.is_empty(), "{q}: {names:?}");
    }
    env.names("/api/search?q=zephyr", ALICE).await;
    let notes: Vec<String> = env
        .audit("limit=1000")
        .await
        .iter()
        .filter(|e| e["action"] == "search")
        .map(|e| e["detail"]["note"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        notes,
        [
            "q=zephyr",
            "q=[REDACTED]",
            "q=[REDACTED]",
            "q=[REDACTED]",
            "q=[REDACTED]"
        ],
        "newest first"
    );
    env.assert_no_secrets();
}
