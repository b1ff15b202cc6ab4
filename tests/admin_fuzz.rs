//! Malformed bodies against the admin API's three JSON-taking routes:
//! `POST /v1/services`, `POST /v1/services/{id}/credentials` and
//! `POST /v1/proxy/{name}`. Every body is generated from a fixed seed (a tiny
//! xorshift generator, no extra crates), so a failure reproduces exactly.
//!
//! Each answer must be a 4xx with `{"error":{"type":"clavis_…","message":…}}`,
//! nothing may reach the upstream, no service may appear or change, and
//! clavis must still answer `/healthz` afterwards.

// Helpers here are not `#[test]` functions, so clippy.toml's
// allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{json, Map, Value};
use support::*;

const ADMIN: &str = "admin-token-fuzz-0123456789abcdef";
const CASES_PER_ROUTE: usize = 300;

/// xorshift64*: deterministic, good enough to pick shapes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// A short random string: letters, digits, punctuation, spaces, control
/// characters and a little non-ASCII. Never a real connector name or key
/// prefix: it always starts with `~`.
fn random_string(rng: &mut Rng) -> String {
    const PIECES: &[&str] = &[
        "a", "Z", "0", "9", "-", "_", ".", " ", "/", "\\", "\"", "'", "{", "}", "[", "]", ":", ",",
        "\n", "\r", "\t", "\u{0}", "\u{7f}", "é", "ß", "☃", "𝄞", "\u{202e}", "\u{feff}", "%00",
        "${X}", "clavis:", "sk", "Bearer ",
    ];
    let mut s = String::from("~");
    for _ in 0..rng.below(24) {
        s.push_str(rng.pick(PIECES));
    }
    s
}

fn random_number(rng: &mut Rng) -> Value {
    match rng.below(5) {
        0 => json!(0),
        1 => json!(-(rng.below(1_000_000) as i64)),
        2 => json!(u64::MAX - rng.below(1000) as u64),
        3 => json!(rng.below(1_000_000) as f64 / 7.0),
        _ => json!(i64::MIN),
    }
}

/// Any JSON value, at most `depth` levels deep.
fn random_value(rng: &mut Rng, depth: usize) -> Value {
    let kinds = if depth == 0 { 4 } else { 6 };
    match rng.below(kinds) {
        0 => Value::Null,
        1 => Value::Bool(rng.coin()),
        2 => random_number(rng),
        3 => Value::String(random_string(rng)),
        4 => Value::Array(
            (0..rng.below(5))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        ),
        _ => {
            let mut m = Map::new();
            for _ in 0..rng.below(5) {
                m.insert(random_string(rng), random_value(rng, depth - 1));
            }
            Value::Object(m)
        }
    }
}

/// A value that is not a string.
fn non_string(rng: &mut Rng) -> Value {
    loop {
        let v = random_value(rng, 2);
        if !v.is_string() {
            return v;
        }
    }
}

/// A value that is not an object.
fn non_object(rng: &mut Rng) -> Value {
    loop {
        let v = random_value(rng, 2);
        if !v.is_object() {
            return v;
        }
    }
}

/// A top-level value that no route accepts: a scalar, an array, or an
/// object whose keys are all random (so required fields are missing).
fn random_top(rng: &mut Rng) -> Value {
    match random_value(rng, 3) {
        Value::Object(m) if m.is_empty() => json!([]),
        v => v,
    }
}

fn nested_arrays(depth: usize) -> Vec<u8> {
    let mut v = vec![b'['; depth];
    v.extend(std::iter::repeat_n(b']', depth));
    v
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Route {
    Services,
    Credentials,
    Proxy,
}

impl Route {
    fn path(self) -> &'static str {
        match self {
            Route::Services => "/v1/services",
            Route::Credentials => "/v1/services/my-openai/credentials",
            Route::Proxy => "/v1/proxy/my-openai",
        }
    }

    /// A body this route would accept (never sent as-is with a JSON type).
    fn template(self) -> Map<String, Value> {
        let v = match self {
            Route::Services => json!({"name": "fuzz-new", "connector_name": "openai"}),
            Route::Credentials => {
                json!({"token_type": "api_key", "data": {"api_key": "sk-fuzz-0123456789"}})
            }
            Route::Proxy => json!({
                "method": "POST",
                "path": "/v1/chat/completions",
                "params": {"a": 1},
                "headers": {"x-test": "1"},
                "body": {"model": "m"}
            }),
        };
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    /// A JSON-typed body that is well-formed but wrong for this route.
    fn wrong_shape(self, rng: &mut Rng) -> Value {
        let mut t = self.template();
        match self {
            Route::Services => match rng.below(6) {
                0 => {
                    t.insert("name".into(), non_string(rng));
                }
                1 => {
                    t.insert("connector_name".into(), non_string(rng));
                }
                2 => {
                    t.remove(if rng.coin() { "name" } else { "connector_name" });
                }
                3 => {
                    // A name or connector that is a string, but not a valid one.
                    t.insert("name".into(), json!(random_string(rng)));
                    if rng.coin() {
                        t.insert("connector_name".into(), json!(random_string(rng)));
                    }
                }
                4 => {
                    t.insert("connector_name".into(), json!(random_string(rng)));
                }
                _ => {
                    t.insert(
                        "default".into(),
                        loop {
                            let v = random_value(rng, 1);
                            if !v.is_boolean() {
                                break v;
                            }
                        },
                    );
                }
            },
            Route::Credentials => match rng.below(6) {
                0 => {
                    t.insert("token_type".into(), non_string(rng));
                }
                1 => {
                    t.insert("data".into(), non_object(rng));
                }
                2 => {
                    t.remove(if rng.coin() { "token_type" } else { "data" });
                }
                3 => {
                    t.insert("data".into(), json!({"api_key": non_string(rng)}));
                }
                4 => {
                    // Fields that fail the connector's validation.
                    let data = match rng.below(3) {
                        0 => json!({}),
                        1 => json!({"api_key": random_string(rng)}),
                        _ => json!({ random_string(rng): "sk-valid-looking-0123" }),
                    };
                    t.insert("data".into(), data);
                }
                _ => {
                    t.insert("token_type".into(), json!(""));
                }
            },
            Route::Proxy => match rng.below(8) {
                0 => {
                    // `null` would mean "no method" (GET), which is valid.
                    let v = loop {
                        let v = non_string(rng);
                        if !v.is_null() {
                            break v;
                        }
                    };
                    t.insert("method".into(), v);
                }
                1 => {
                    if rng.coin() {
                        t.insert("path".into(), non_string(rng));
                    } else {
                        t.remove("path");
                    }
                }
                2 => {
                    let bad = rng.pick(&[
                        "",
                        "v1/models",
                        "//evil.example/x",
                        "/a b",
                        "/x#frag",
                        "/\u{0}",
                        "/\u{7f}",
                        "/\r\nHost: evil",
                        "http://evil.example/",
                        "*",
                    ]);
                    t.insert("path".into(), json!(bad));
                }
                3 => {
                    let bad = rng.pick(&["GE T", "", "CONNECT", "connect", "(", "G\u{0}T", "é"]);
                    t.insert("method".into(), json!(bad));
                }
                4 => {
                    let v = match rng.below(3) {
                        0 => Value::Null,
                        1 => json!([1, 2]),
                        _ => json!({"nested": random_string(rng)}),
                    };
                    t.insert("params".into(), json!({ "k": v }));
                }
                5 => {
                    let headers = match rng.below(5) {
                        0 => json!({"bad name": "v"}),
                        1 => json!({"": "v"}),
                        2 => json!({"x-ok": "a\r\nInjected: 1"}),
                        3 => json!({"x-ok": non_string(rng)}),
                        _ => non_object(rng),
                    };
                    t.insert("headers".into(), headers);
                }
                6 => {
                    t.insert("params".into(), non_object(rng));
                }
                _ => {
                    // Unknown fields are refused (deny_unknown_fields).
                    t.insert(format!("x{}", random_string(rng)), random_value(rng, 1));
                }
            },
        }
        Value::Object(t)
    }
}

/// One malformed request: body bytes and the Content-Type to send (None: none).
struct Case {
    what: String,
    body: Vec<u8>,
    content_type: Option<&'static str>,
}

fn case(rng: &mut Rng, route: Route, i: usize) -> Case {
    let json_type = Some("application/json");
    let template = Value::Object(route.template());
    let valid = serde_json::to_vec(&template).unwrap();
    let mk = |what: &str, body: Vec<u8>, content_type| Case {
        what: what.to_owned(),
        body,
        content_type,
    };
    match i % 14 {
        0 => mk(
            "random top-level value",
            serde_json::to_vec(&random_top(rng)).unwrap(),
            json_type,
        ),
        1 | 2 => mk(
            "wrong shape or type",
            serde_json::to_vec(&route.wrong_shape(rng)).unwrap(),
            json_type,
        ),
        3 => {
            // Never the whole body: every strict prefix of an object is invalid.
            let cut = rng.below(valid.len());
            mk("truncated JSON", valid[..cut].to_vec(), json_type)
        }
        4 => {
            // Invalid UTF-8 inside a string or between tokens.
            let bad: &[&[u8]] = &[
                b"\xff",
                b"\xc3\x28",
                b"\xed\xa0\x80",
                b"\xf8\x88\x80\x80\x80",
                b"\xe2\x82",
            ];
            let junk = rng.pick(bad);
            let text = serde_json::to_string(&template).unwrap();
            let at = text.find(":\"").map_or(1, |p| p + 2);
            let mut body = text.as_bytes()[..at].to_vec();
            body.extend_from_slice(junk);
            body.extend_from_slice(&text.as_bytes()[at..]);
            if rng.coin() {
                body = junk.to_vec();
            }
            mk("invalid UTF-8", body, json_type)
        }
        5 => {
            let depth = rng.pick(&[129usize, 1_000, 100_000, 600_000]);
            if rng.coin() {
                mk("deeply nested arrays", nested_arrays(depth), json_type)
            } else {
                // Nested inside the first field.
                let text = serde_json::to_string(&template).unwrap();
                let key = text[1..].split('"').nth(1).unwrap_or("x").to_owned();
                let mut body = format!("{{\"{key}\":").into_bytes();
                body.extend(nested_arrays(depth));
                body.push(b'}');
                mk("deeply nested arrays in a field", body, json_type)
            }
        }
        6 => {
            // Up to ~2 MiB: above the 1 MiB admin body limit (413), or below
            // it but far too long for any field (422).
            let len = rng.pick(&[2 * 1024 * 1024, 1024 * 1024 + 1, 900 * 1024, 64 * 1024]);
            let mut t = route.template();
            let field = match route {
                Route::Services => "name",
                Route::Credentials => "token_type",
                Route::Proxy => "path",
            };
            let huge = "A".repeat(len);
            if route == Route::Credentials {
                // A huge value in a field that fails validation.
                t.insert("data".into(), json!({"api_key": huge}));
            } else {
                t.insert(field.into(), json!(huge));
            }
            mk(
                "huge string",
                serde_json::to_vec(&Value::Object(t)).unwrap(),
                json_type,
            )
        }
        7 | 8 => {
            let ct = rng.pick(&[
                "text/plain",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "application/xml",
                "text/json",
                "application/jsonx",
                "application/json-seq",
                "json",
                "*/*",
                "",
            ]);
            let ct = if ct.is_empty() { None } else { Some(ct) };
            mk(
                &format!("valid body, wrong content type {ct:?}"),
                valid.clone(),
                ct,
            )
        }
        9 => {
            let mut body = valid.clone();
            let junk: &[&[u8]] = &[b"x", b"{}", b",", b"]", b"\x00", b"null"];
            body.extend_from_slice(rng.pick(junk));
            mk("trailing garbage", body, json_type)
        }
        10 => {
            let text = serde_json::to_string(&template).unwrap();
            let body = match rng.below(5) {
                0 => text.replacen("\":", "\":1e999,\"zz\":", 1),
                1 => text.replacen("\":\"", "\":\"\\ud800", 1),
                2 => format!("\u{feff}{text}"),
                3 => text.replacen('"', "'", 2),
                _ => text.replacen("\":\"", "\":\"\\x41", 1),
            };
            mk("lexically invalid JSON", body.into_bytes(), json_type)
        }
        11 => {
            // A duplicated key: serde's derive refuses it.
            let text = serde_json::to_string(&template).unwrap();
            let inner = &text[1..text.len() - 1];
            mk(
                "duplicate keys",
                format!("{{{inner},{inner}}}").into_bytes(),
                json_type,
            )
        }
        12 => mk(
            "empty body",
            if rng.coin() {
                Vec::new()
            } else {
                b"   ".to_vec()
            },
            json_type,
        ),
        _ => {
            let mut body = vec![0u8; rng.below(512) + 1];
            for b in &mut body {
                *b = rng.next() as u8;
            }
            mk("random bytes", body, json_type)
        }
    }
}

#[tokio::test]
async fn malformed_bodies_get_4xx_json_errors() {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    let yaml = format!("admin: {{ token: \"{ADMIN}\" }}\n{}", standard_yaml());
    let clavis = Clavis::builder(&yaml).start(Some(&up), Some(&ca)).await;
    let base = format!("http://{}", clavis.admin);
    let c = admin_client();

    let services_before: Value = get_json(&c, format!("{base}/v1/services"), ADMIN).await;

    let mut rng = Rng(0x00C1_A715_F022_5EED);
    let mut failures = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for route in [Route::Services, Route::Credentials, Route::Proxy] {
        for i in 0..CASES_PER_ROUTE {
            let case = case(&mut rng, route, i);
            let mut req = c
                .post(format!("{base}{}", route.path()))
                .bearer_auth(ADMIN)
                .body(case.body.clone());
            if let Some(ct) = case.content_type {
                req = req.header("content-type", ct);
            }
            let preview =
                String::from_utf8_lossy(&case.body[..case.body.len().min(120)]).into_owned();
            let r = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    failures.push(format!(
                        "{route:?} #{i} ({}): no answer: {e}; body {preview:?}",
                        case.what
                    ));
                    continue;
                }
            };
            let status = r.status().as_u16();
            *statuses.entry(status).or_default() += 1;
            let ctype = r
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let text = r.text().await.unwrap_or_default();
            let parsed: Option<Value> = serde_json::from_str(&text).ok();
            let shape_ok = parsed.as_ref().is_some_and(|v| {
                v["error"]["type"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("clavis_"))
                    && v["error"]["message"].is_string()
                    && v.as_object().is_some_and(|o| o.len() == 1)
            });
            if !(400..500).contains(&status) || !shape_ok || !ctype.starts_with("application/json")
            {
                failures.push(format!(
                    "{route:?} #{i} ({}): {status} {ctype:?} {:?}; body {preview:?} ({} bytes, type {:?})",
                    case.what,
                    &text[..text.len().min(300)],
                    case.body.len(),
                    case.content_type
                ));
            }
        }
    }
    eprintln!("statuses: {statuses:?}");
    assert!(
        failures.is_empty(),
        "{} of {} malformed requests were not answered with a 4xx clavis JSON error:\n{}",
        failures.len(),
        3 * CASES_PER_ROUTE,
        failures.join("\n")
    );

    // Nothing was sent upstream, nothing was created or changed.
    assert!(
        up.seen().is_empty(),
        "a malformed /v1/proxy call reached the upstream: {:?}",
        up.seen()
    );
    let services_after: Value = get_json(&c, format!("{base}/v1/services"), ADMIN).await;
    assert_eq!(services_before, services_after);
    let token: Value = get_json(&c, format!("{base}/v1/services/my-openai/token"), ADMIN).await;
    assert_eq!(token["access_token"], REAL_OPENAI);

    let r = c.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // And the API itself still works.
    let r = c
        .post(format!("{base}/v1/services"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "after-fuzz", "connector_name": "openai"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}
