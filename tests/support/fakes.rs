//! Scripted token servers on loopback TLS, for token sources (SPEC §13.1):
//! an OAuth 2.0 provider (its token endpoint and the API it guards) and
//! GitHub's app installation tokens. Each verifies what clavis sends the
//! way the real one would — JWTs with the `jsonwebtoken` crate and its own
//! RustCrypto RSA, independent of clavis's signing — and records it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};

use super::TestCa;

/// One request as a fake saw it, body included.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The form body as decoded pairs.
    pub fn form(&self) -> HashMap<String, String> {
        url_decode_pairs(std::str::from_utf8(&self.body).unwrap_or(""))
    }

    /// `Authorization: Bearer <token>`'s token.
    pub fn bearer(&self) -> Option<&str> {
        self.header("authorization")?.strip_prefix("Bearer ")
    }
}

fn url_decode_pairs(text: &str) -> HashMap<String, String> {
    let decode = |s: &str| {
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).unwrap()
    };
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

type Handler = Arc<
    dyn Fn(Req) -> std::pin::Pin<Box<dyn std::future::Future<Output = (u16, Value)> + Send>>
        + Send
        + Sync,
>;

/// A TLS server for `hosts` answering every request with `handler`'s JSON.
async fn serve(ca: &TestCa, hosts: &[&str], handler: Handler) -> SocketAddr {
    let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config(hosts));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, handler) = (acceptor.clone(), handler.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let handler = handler.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let req = Req {
                            method: parts.method.to_string(),
                            path: parts
                                .uri
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default(),
                            headers: parts
                                .headers
                                .iter()
                                .map(|(k, v)| {
                                    (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into())
                                })
                                .collect(),
                            body,
                        };
                        let (status, value) = handler(req).await;
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(value.to_string())))
                                .unwrap(),
                        )
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

/// A fresh 2048-bit RSA key from the openssl CLI: (PKCS#1 PEM, PKCS#8 PEM,
/// public SPKI PEM).
pub fn rsa_key() -> (String, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("openssl CLI");
        assert!(out.status.success(), "openssl {args:?}");
    };
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        "k8.pem",
    ]);
    run(&["rsa", "-in", "k8.pem", "-traditional", "-out", "k1.pem"]);
    run(&["rsa", "-in", "k8.pem", "-pubout", "-out", "pub.pem"]);
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
    (read("k1.pem"), read("k8.pem"), read("pub.pem"))
}

/// Verifies an RS256 JWT with `public_pem` (signature, `exp`) and returns
/// its header and claims, or why it is refused.
pub fn verify_rs256(jwt: &str, public_pem: &str) -> Result<(Value, Value), String> {
    use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
    let key = DecodingKey::from_rsa_pem(public_pem.as_bytes()).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.leeway = 0;
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    let header = decode_header(jwt).map_err(|e| e.to_string())?;
    let data = decode::<Value>(jwt, &key, &validation).map_err(|e| e.to_string())?;
    Ok((serde_json::to_value(header).unwrap(), data.claims))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------- OAuth 2.0

/// What the token endpoint accepts and how it answers.
pub struct OAuthConfig {
    pub client_id: String,
    pub client_secret: String,
    /// Refresh tokens accepted now (rotation replaces the one used).
    pub refresh_tokens: Vec<String>,
    pub rotate: bool,
    /// For jwt_bearer: the service account's public key, key id, email.
    pub service_account: Option<(String, String, String)>,
    /// The scope string the token requests must carry (space-joined).
    pub scope: String,
}

/// A token request as the endpoint judged it.
#[derive(Debug, Clone)]
pub struct TokenCall {
    pub req: Req,
    pub form: HashMap<String, String>,
    /// `(id, secret)` from `Authorization: Basic`, form-decoded.
    pub basic: Option<(String, String)>,
    /// For jwt_bearer: the assertion's verified header and claims.
    pub assertion: Option<(Value, Value)>,
    /// The answer's status.
    pub status: u16,
    /// The token it issued.
    pub issued: Option<String>,
    /// Whether the token issued before this one was still valid then.
    pub previous_still_valid: bool,
}

#[derive(Default)]
struct OAuthState {
    refresh_tokens: HashSet<String>,
    /// access token → when it expires.
    valid: HashMap<String, Instant>,
    last_issued: Option<String>,
    /// `expires_in` of the next tokens, then `default_lifetime`.
    lifetimes: VecDeque<u64>,
    calls: Vec<TokenCall>,
    api: Vec<Req>,
    issued: u64,
    rotated: u64,
}

pub struct OAuthFake {
    pub addr: SocketAddr,
    pub token_url: String,
    config: OAuthConfig,
    state: Mutex<OAuthState>,
    pub default_lifetime: std::sync::atomic::AtomicU64,
    pub delay_ms: std::sync::atomic::AtomicU64,
}

impl OAuthFake {
    /// Serves `token_host` (`POST /token`) and `api_host` (anything else,
    /// `401` without a valid Bearer token) on one address.
    pub async fn start(
        ca: &TestCa,
        token_host: &str,
        api_host: &str,
        config: OAuthConfig,
    ) -> Arc<OAuthFake> {
        let cell: Arc<Mutex<Option<Arc<OAuthFake>>>> = Arc::new(Mutex::new(None));
        let c = cell.clone();
        let handler: Handler = Arc::new(move |req| {
            let fake = c.lock().unwrap().clone().unwrap();
            Box::pin(async move { fake.handle(req).await })
        });
        let addr = serve(ca, &[token_host, api_host], handler).await;
        let state = OAuthState {
            refresh_tokens: config.refresh_tokens.iter().cloned().collect(),
            ..OAuthState::default()
        };
        let fake = Arc::new(OAuthFake {
            addr,
            token_url: format!("https://{token_host}/token"),
            config,
            state: Mutex::new(state),
            default_lifetime: 3600.into(),
            delay_ms: 0.into(),
        });
        *cell.lock().unwrap() = Some(fake.clone());
        fake
    }

    /// The next tokens' `expires_in`, in order.
    pub fn lifetimes(&self, secs: &[u64]) {
        self.state.lock().unwrap().lifetimes.extend(secs);
    }

    pub fn calls(&self) -> Vec<TokenCall> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Successful token requests.
    pub fn fetches(&self) -> usize {
        self.calls().iter().filter(|c| c.status == 200).count()
    }

    pub fn api_requests(&self) -> Vec<Req> {
        self.state.lock().unwrap().api.clone()
    }

    /// Every access token stops working (revoked upstream).
    pub fn revoke_all(&self) {
        self.state.lock().unwrap().valid.clear();
    }

    /// Accepts `token` as a refresh token from now on.
    pub fn accept_refresh_token(&self, token: &str) {
        self.state
            .lock()
            .unwrap()
            .refresh_tokens
            .insert(token.into());
    }

    pub fn last_issued(&self) -> Option<String> {
        self.state.lock().unwrap().last_issued.clone()
    }

    async fn handle(&self, req: Req) -> (u16, Value) {
        if req.path.split('?').next() != Some("/token") {
            return self.api(req);
        }
        let delay = self.delay_ms.load(std::sync::atomic::Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let mut call = TokenCall {
            form: req.form(),
            basic: basic_of(&req),
            req,
            assertion: None,
            status: 0,
            issued: None,
            previous_still_valid: false,
        };
        let answer = self.token(&mut call);
        call.status = answer.0;
        self.state.lock().unwrap().calls.push(call);
        answer
    }

    fn token(&self, call: &mut TokenCall) -> (u16, Value) {
        let c = &self.config;
        let form = &call.form;
        let invalid = |code: &str| {
            (
                400,
                json!({"error": code, "error_description": "refused by the fake"}),
            )
        };
        if call.req.method != "POST" {
            return invalid("invalid_request");
        }
        let grant = form.get("grant_type").map(String::as_str).unwrap_or("");
        if grant != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
            // Client authentication: Basic, or both in the form.
            let client = call.basic.clone().or_else(|| {
                Some((
                    form.get("client_id")?.clone(),
                    form.get("client_secret")?.clone(),
                ))
            });
            if client != Some((c.client_id.clone(), c.client_secret.clone())) {
                return (401, json!({"error": "invalid_client"}));
            }
            if form.get("scope").map(String::as_str) != Some(c.scope.as_str())
                && !c.scope.is_empty()
            {
                return invalid("invalid_scope");
            }
        }
        let mut state = self.state.lock().unwrap();
        let mut new_refresh = None;
        match grant {
            "refresh_token" => {
                let used = form.get("refresh_token").cloned().unwrap_or_default();
                if !state.refresh_tokens.contains(&used) {
                    return invalid("invalid_grant");
                }
                if c.rotate {
                    state.refresh_tokens.remove(&used);
                    state.rotated += 1;
                    let next = format!("rt-rotated-{}", state.rotated);
                    state.refresh_tokens.insert(next.clone());
                    new_refresh = Some(next);
                }
            }
            "client_credentials" => {}
            "urn:ietf:params:oauth:grant-type:jwt-bearer" => {
                let Some((public, kid, email)) = &c.service_account else {
                    return invalid("unsupported_grant_type");
                };
                let Some(assertion) = form.get("assertion") else {
                    return invalid("invalid_request");
                };
                let (header, claims) = match verify_rs256(assertion, public) {
                    Ok(v) => v,
                    Err(_) => return invalid("invalid_grant"),
                };
                let now = now_secs();
                let iat = claims["iat"].as_u64().unwrap_or(0);
                let exp = claims["exp"].as_u64().unwrap_or(0);
                let good = header["kid"] == json!(kid)
                    && header["alg"] == "RS256"
                    && claims["iss"] == json!(email)
                    && claims["aud"] == json!(self.token_url)
                    && claims["scope"] == json!(c.scope)
                    && iat <= now + 5
                    && exp > now
                    && exp - iat <= 3600;
                call.assertion = Some((header, claims));
                if !good {
                    return invalid("invalid_grant");
                }
            }
            _ => return invalid("unsupported_grant_type"),
        }
        let now = Instant::now();
        call.previous_still_valid = state
            .last_issued
            .as_ref()
            .and_then(|t| state.valid.get(t))
            .is_some_and(|exp| now < *exp);
        let lifetime = state.lifetimes.pop_front().unwrap_or_else(|| {
            self.default_lifetime
                .load(std::sync::atomic::Ordering::SeqCst)
        });
        state.issued += 1;
        let token = format!("at-fake-{:04}-{}", state.issued, grant.len());
        state
            .valid
            .insert(token.clone(), now + Duration::from_secs(lifetime));
        state.last_issued = Some(token.clone());
        call.issued = Some(token.clone());
        let mut answer =
            json!({"access_token": token, "token_type": "Bearer", "expires_in": lifetime});
        if let Some(r) = new_refresh {
            answer["refresh_token"] = r.into();
        }
        (200, answer)
    }

    fn api(&self, req: Req) -> (u16, Value) {
        let mut state = self.state.lock().unwrap();
        let token = req.bearer().map(str::to_owned);
        let ok = token
            .as_ref()
            .and_then(|t| state.valid.get(t))
            .is_some_and(|exp| Instant::now() < *exp);
        state.api.push(req.clone());
        if !ok {
            return (401, json!({"error": "invalid_token"}));
        }
        (
            200,
            json!({"path": req.path, "method": req.method, "token": token, "body": String::from_utf8_lossy(&req.body)}),
        )
    }
}

fn basic_of(req: &Req) -> Option<(String, String)> {
    let b64 = req.header("authorization")?.strip_prefix("Basic ")?;
    let pair = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let text = String::from_utf8(pair).ok()?;
    let (id, secret) = text.split_once(':')?;
    let decode = |s: &str| {
        url_decode_pairs(&format!("x={s}"))
            .remove("x")
            .unwrap_or_default()
    };
    Some((decode(id), decode(secret)))
}

// ----------------------------------------------------------- GitHub App

/// What a fake echoes instead of a token (clavis masks echoed tokens).
pub fn token_id(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An installation token as issued.
#[derive(Debug, Clone)]
pub struct Installation {
    pub token: String,
    pub repositories: Option<Vec<String>>,
    pub permissions: Option<Value>,
    pub expires: Instant,
}

/// A call to the access-token endpoint.
#[derive(Debug, Clone)]
pub struct AccessCall {
    pub path: String,
    pub status: u16,
    pub body: Value,
    /// The app JWT's verified claims.
    pub claims: Option<Value>,
    pub issued: Option<String>,
    /// Whether the token issued before this one was still valid then.
    pub previous_still_valid: bool,
}

#[derive(Default)]
struct GithubState {
    tokens: HashMap<String, Installation>,
    calls: Vec<AccessCall>,
    api: Vec<(Req, Option<Installation>)>,
    last_issued: Option<String>,
    issued: u64,
}

/// api.github.com as far as app installations go: `POST
/// /app/installations/{id}/access_tokens` verifies the app JWT with the
/// app's public key and issues tokens with the requested repositories and
/// permissions; any other request needs a valid installation token and is
/// echoed with that token's scope.
pub struct GithubFake {
    pub addr: SocketAddr,
    app_id: u64,
    installation: u64,
    public_pem: String,
    /// Lifetime of the tokens issued, in seconds.
    pub lifetime: std::sync::atomic::AtomicU64,
    state: Mutex<GithubState>,
}

impl GithubFake {
    pub async fn start(
        ca: &TestCa,
        app_id: u64,
        installation: u64,
        public_pem: &str,
    ) -> Arc<GithubFake> {
        let cell: Arc<Mutex<Option<Arc<GithubFake>>>> = Arc::new(Mutex::new(None));
        let c = cell.clone();
        let handler: Handler = Arc::new(move |req| {
            let fake = c.lock().unwrap().clone().unwrap();
            Box::pin(async move { fake.handle(req) })
        });
        let addr = serve(
            ca,
            &["api.github.com", "uploads.github.com", "github.com"],
            handler,
        )
        .await;
        let fake = Arc::new(GithubFake {
            addr,
            app_id,
            installation,
            public_pem: public_pem.to_owned(),
            lifetime: 3600.into(),
            state: Mutex::new(GithubState::default()),
        });
        *cell.lock().unwrap() = Some(fake.clone());
        fake
    }

    pub fn calls(&self) -> Vec<AccessCall> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn api_requests(&self) -> Vec<(Req, Option<Installation>)> {
        self.state.lock().unwrap().api.clone()
    }

    fn handle(&self, req: Req) -> (u16, Value) {
        let path = req.path.split('?').next().unwrap_or("").to_owned();
        let segments: Vec<&str> = path.split('/').collect();
        if let ["", "app", "installations", id, "access_tokens"] = segments.as_slice() {
            let id = id.to_string();
            let mut call = AccessCall {
                path: path.clone(),
                status: 0,
                body: Value::Null,
                claims: None,
                issued: None,
                previous_still_valid: false,
            };
            let answer = self.access_tokens(&req, &id, &mut call);
            call.status = answer.0;
            self.state.lock().unwrap().calls.push(call);
            return answer;
        }
        // git over HTTPS (github.com) takes the token only as Basic
        // `x-access-token:<token>`, the REST API only as a bearer.
        let git = path.contains(".git/") || path.ends_with(".git");
        let basic = basic_of(&req).filter(|(user, _)| user == "x-access-token");
        let token = match git {
            true => basic.map(|(_, token)| token),
            false => req.bearer().map(str::to_owned),
        };
        let mut state = self.state.lock().unwrap();
        let grant = token
            .and_then(|t| state.tokens.get(&t))
            .filter(|g| Instant::now() < g.expires)
            .cloned();
        state.api.push((req.clone(), grant.clone()));
        match grant {
            Some(g) => (
                200,
                // The token's digest, not the token: clavis masks an echo.
                json!({"path": req.path, "token_id": token_id(&g.token), "repositories": g.repositories, "permissions": g.permissions}),
            ),
            None => (401, json!({"message": "Bad credentials", "status": "401"})),
        }
    }

    fn access_tokens(&self, req: &Req, id: &str, call: &mut AccessCall) -> (u16, Value) {
        let bad = || {
            (
                401,
                json!({"message": "A JSON web token could not be decoded"}),
            )
        };
        if req.method != "POST" || req.header("user-agent").is_none() {
            return (403, json!({"message": "Request forbidden"}));
        }
        let Some(jwt) = req.bearer() else {
            return bad();
        };
        let (header, claims) = match verify_rs256(jwt, &self.public_pem) {
            Ok(v) => v,
            Err(e) => {
                call.claims = Some(json!({"refused": e}));
                return bad();
            }
        };
        call.claims = Some(claims.clone());
        let now = now_secs();
        let iat = claims["iat"].as_u64().unwrap_or(u64::MAX);
        let exp = claims["exp"].as_u64().unwrap_or(0);
        let iss_ok =
            claims["iss"] == json!(self.app_id) || claims["iss"] == json!(self.app_id.to_string());
        if header["alg"] != "RS256" || !iss_ok || iat > now || exp <= now || exp - iat > 600 {
            return bad();
        }
        if id != self.installation.to_string() {
            return (404, json!({"message": "Not Found"}));
        }
        let body: Value = if req.body.is_empty() {
            json!({})
        } else {
            match serde_json::from_slice(&req.body) {
                Ok(v) => v,
                Err(_) => return (400, json!({"message": "Problems parsing JSON"})),
            }
        };
        call.body = body.clone();
        let repositories: Option<Vec<String>> = body
            .get("repositories")
            .map(|r| serde_json::from_value(r.clone()).unwrap());
        let permissions = body.get("permissions").cloned();
        let lifetime = self.lifetime.load(std::sync::atomic::Ordering::SeqCst);
        let mut state = self.state.lock().unwrap();
        let instant = Instant::now();
        call.previous_still_valid = state
            .last_issued
            .as_ref()
            .and_then(|t| state.tokens.get(t))
            .is_some_and(|g| instant < g.expires);
        state.issued += 1;
        let token = format!("ghs_fake{:04}installation", state.issued);
        state.tokens.insert(
            token.clone(),
            Installation {
                token: token.clone(),
                repositories: repositories.clone(),
                permissions: permissions.clone(),
                expires: instant + Duration::from_secs(lifetime),
            },
        );
        state.last_issued = Some(token.clone());
        call.issued = Some(token.clone());
        // GitHub's answer: whole seconds, UTC.
        let expires_at =
            humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(lifetime));
        let mut answer = json!({
            "token": token,
            "expires_at": expires_at.to_string(),
            "permissions": permissions.unwrap_or_else(|| json!({"contents": "write", "issues": "write", "metadata": "read"})),
            "repository_selection": if repositories.is_some() { "selected" } else { "all" },
        });
        if let Some(r) = repositories {
            answer["repositories"] = r.iter().map(|n| json!({"name": n})).collect();
        }
        (201, answer)
    }
}
