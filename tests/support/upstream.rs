//! The echo upstream: a TLS server (h1 and h2) that records every request and
//! answers with what it received as JSON, plus a few scripted routes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

use super::TestCa;

type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub host: String,
    pub method: String,
    pub path: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    /// The body's first 64 KiB as text (lossy), for requests the echo reads.
    pub body: String,
    /// When the request's head arrived.
    pub at: std::time::Instant,
}

impl Seen {
    /// The request's head (`Host` before the URI's authority); the body
    /// length is left to the caller.
    pub fn head_of<B>(req: &Request<B>) -> Seen {
        Seen {
            host: req
                .headers()
                .get("host")
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
                .or_else(|| req.uri().authority().map(|a| a.to_string()))
                .unwrap_or_default(),
            method: req.method().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            version: format!("{:?}", req.version()),
            headers: req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body_len: 0,
            body: String::new(),
            at: std::time::Instant::now(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub hosts: Vec<String>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// A plain-HTTP echo for tunnel tests.
    pub plain_addr: Option<SocketAddr>,
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    /// The scripted Kalshi email + password login (see [`KalshiLogin`]).
    pub kalshi: Arc<KalshiLogin>,
    /// `/slow` requests still being handled: back to 0 once clavis cancels
    /// them (the handler is dropped when its stream or connection goes).
    pub slow_pending: Arc<std::sync::atomic::AtomicUsize>,
}

/// The email and password the scripted Kalshi login accepts.
pub const KALSHI_EMAIL: &str = "trader@kalshi.test.example";
pub const KALSHI_PASSWORD: &str = "REAL-kalshi-password-0123";

/// A scripted Kalshi session server, on every host of the upstream:
/// `POST /trade-api/v2/login` with `{"email","password"}` answers
/// `{"member_id","token"}` (a new token each time; 401 for a wrong password),
/// and any other `/trade-api/v2/...` request without `KALSHI-ACCESS-KEY`
/// answers 401 unless it carries `Authorization: Bearer <the latest token>`
/// (then it is echoed as usual).
#[derive(Debug, Default)]
pub struct KalshiLogin {
    /// The JSON bodies of every login attempt, in order.
    pub logins: Mutex<Vec<serde_json::Value>>,
    issued: std::sync::atomic::AtomicU64,
    valid: Mutex<Option<String>>,
    /// Delay before the login answers (to widen races in concurrency tests).
    pub login_delay_ms: std::sync::atomic::AtomicU64,
    /// Logins still succeed, but every session token is refused (a
    /// misbehaving upstream: the case a login storm would come from).
    pub refuse_tokens: std::sync::atomic::AtomicBool,
    /// Every login answers 401, whatever the password.
    pub refuse_logins: std::sync::atomic::AtomicBool,
}

impl KalshiLogin {
    pub fn login_count(&self) -> usize {
        self.logins.lock().unwrap().len()
    }

    /// The token currently accepted, if any.
    pub fn current(&self) -> Option<String> {
        self.valid.lock().unwrap().clone()
    }

    /// The current token stops being accepted (as if the session expired
    /// upstream); the next login issues a new one.
    pub fn revoke(&self) {
        *self.valid.lock().unwrap() = None;
    }

    /// From now on every login fails (401).
    pub fn refuse_all_logins(&self) {
        self.refuse_logins
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// From now on every session token is refused, fresh ones too.
    pub fn refuse_all_tokens(&self) {
        self.refuse_tokens
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn set_login_delay(&self, ms: u64) {
        self.login_delay_ms
            .store(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Upstream {
    pub async fn start(ca: &TestCa, hosts: &[&str]) -> Upstream {
        let config = ca.server_config(hosts);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let kalshi = Arc::new(KalshiLogin::default());
        let slow_pending = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, c, k, sp) = (
            seen.clone(),
            connections.clone(),
            kalshi.clone(),
            slow_pending.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let acceptor = acceptor.clone();
                let seen = s.clone();
                let kalshi = k.clone();
                let slow = sp.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        handle_kalshi(seen.clone(), kalshi.clone(), slow.clone(), req)
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let plain_addr = plain.local_addr().unwrap();
        let (s, sp) = (seen.clone(), slow_pending.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = plain.accept().await else {
                    return;
                };
                let (seen, slow) = (s.clone(), sp.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        handle(seen.clone(), slow.clone(), req)
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            seen,
            plain_addr: Some(plain_addr),
            connections,
            kalshi,
            slow_pending,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen()
            .last()
            .cloned()
            .expect("upstream saw no request")
    }
}

fn full(b: impl Into<Bytes>) -> BoxBody {
    http_body_util::Full::new(b.into())
        .map_err(|never| match never {})
        .boxed()
}

fn query_param(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

async fn handle(
    seen: Arc<Mutex<Vec<Seen>>>,
    slow_pending: Arc<std::sync::atomic::AtomicUsize>,
    req: Request<Incoming>,
) -> Result<Response<BoxBody>, std::convert::Infallible> {
    let path = req.uri().path().to_owned();
    // The URI's authority first (h2's `:authority`), then `Host`.
    let mut record = Seen::head_of(&req);
    if let Some(authority) = req.uri().authority() {
        record.host = authority.to_string();
    }
    let sse_n = query_param(&req, "n").unwrap_or(5);
    let gap = Duration::from_millis(query_param(&req, "gap_ms").unwrap_or(200));
    let bytes_n = query_param(&req, "n").unwrap_or(0);

    match path.as_str() {
        "/ws" => {
            // A raw echo after 101: enough to prove the bridge, no frame parsing.
            seen.lock().unwrap().push(record);
            let mut req = req;
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = on_upgrade.await {
                    let mut io = TokioIo::new(upgraded);
                    let (mut r, mut w) = tokio::io::split(&mut io);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            return Ok(Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                .body(full(""))
                .unwrap());
        }
        "/sse" => {
            seen.lock().unwrap().push(record);
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
            tokio::spawn(async move {
                for i in 0..sse_n {
                    let ev = format!("data: {{\"i\":{i}}}\n\n");
                    if tx.send(Ok(Frame::data(Bytes::from(ev)))).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(gap).await;
                }
            });
            let body = StreamBody::new(tokio_stream_from(rx)).boxed();
            return Ok(Response::builder()
                .header("content-type", "text/event-stream")
                .body(body)
                .unwrap());
        }
        "/gzip-sse" => {
            // Each event echoes the request's Authorization (the injected key).
            let echo = record
                .headers
                .iter()
                .find(|(k, _)| k == "authorization")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            seen.lock().unwrap().push(record);
            return Ok(Response::builder()
                .header("content-type", "text/event-stream")
                .header("content-encoding", "gzip")
                .body(gzip_sse(sse_n, gap, echo))
                .unwrap());
        }
        "/bytes" => {
            seen.lock().unwrap().push(record);
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(2);
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                let mut left = bytes_n as usize;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if tx.send(Ok(Frame::data(chunk.slice(..n)))).await.is_err() {
                        return;
                    }
                    left -= n;
                }
            });
            return Ok(Response::builder()
                .header("content-length", bytes_n.to_string())
                .body(StreamBody::new(tokio_stream_from(rx)).boxed())
                .unwrap());
        }
        "/slow" => {
            /// Counts the handler out when hyper drops it (a cancelled request).
            struct Pending(Arc<std::sync::atomic::AtomicUsize>);
            impl Drop for Pending {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
            slow_pending.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _pending = Pending(slow_pending);
            seen.lock().unwrap().push(record.clone());
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        "/redirect" => {
            seen.lock().unwrap().push(record);
            // The query goes along, as pagination links do: a query
            // credential comes back in `Location`.
            let location = match req.uri().query() {
                Some(q) => format!("https://evil.test/steal?{q}"),
                None => "https://evil.test/steal".to_owned(),
            };
            return Ok(Response::builder()
                .status(302)
                .header("location", location)
                .body(full(""))
                .unwrap());
        }
        _ => {}
    }
    // Echo: count the body without holding it (uploads can be large).
    let mut body = req.into_body();
    let mut len = 0usize;
    let mut text = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map(|f| f.into_data()) {
            if let Ok(d) = data {
                len += d.len();
                if text.len() < 64 * 1024 {
                    text.extend_from_slice(&d[..d.len().min(64 * 1024 - text.len())]);
                }
            }
        } else {
            break;
        }
    }
    record.body_len = len;
    record.body = String::from_utf8_lossy(&text).into_owned();
    // `/digest/...`: what arrived, with header values as SHA-256 digests, so a
    // test can check the exact credential without the answer echoing it.
    if path.starts_with("/digest") {
        use sha2::Digest;
        let digests: Vec<(String, String)> = record
            .headers
            .iter()
            .map(|(k, v)| {
                let d = sha2::Sha256::digest(v.as_bytes());
                (k.clone(), d.iter().map(|b| format!("{b:02x}")).collect())
            })
            .collect();
        let json = serde_json::json!({"path": record.path, "header_sha256": digests});
        seen.lock().unwrap().push(record);
        return Ok(Response::builder()
            .header("content-type", "application/json")
            .body(full(json.to_string()))
            .unwrap());
    }
    let json = serde_json::json!({
        "method": record.method,
        "path": record.path,
        "host": record.host,
        "version": record.version,
        "headers": record.headers,
        "body_len": len,
        "body": String::from_utf8_lossy(&text),
    });
    let head = record.method == "HEAD";
    seen.lock().unwrap().push(record);
    // `/encoded/<coding>`: the echo, compressed (`Content-Encoding: <coding>`).
    if let Some(coding) = path.strip_prefix("/encoded/") {
        let bytes = encode(coding, json.to_string().as_bytes());
        return Ok(Response::builder()
            .header("content-type", "application/json")
            .header("content-encoding", coding)
            .header("content-length", bytes.len().to_string())
            .header("etag", "\"v1\"")
            .body(full(bytes))
            .unwrap());
    }
    let status = path
        .strip_prefix("/status/")
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(200);
    // A HEAD answer has the GET's headers and no body, as a real server's
    // (hyper's h2 server would send one, which an h2 client refuses).
    let text = json.to_string();
    let body = if head { full("") } else { full(text.clone()) };
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", text.len())
        .body(body)
        .unwrap())
}

/// `data` in a content coding (`gzip`, `deflate`, `br`, `zstd`); any other
/// name leaves it as it is (for codings clavis must refuse).
pub fn encode(coding: &str, data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    match coding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "deflate" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "br" => {
            let mut out = Vec::new();
            let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            w.write_all(data).unwrap();
            drop(w);
            out
        }
        "zstd" => zstd::bulk::compress(data, 3).unwrap(),
        _ => data.to_vec(),
    }
}

/// Server-sent events compressed as one gzip stream, flushed after each
/// event (as servers that gzip SSE do), `n` events `gap` apart, each
/// echoing `echo`.
fn gzip_sse(n: u64, gap: Duration, echo: String) -> BoxBody {
    use std::io::Write;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    tokio::spawn(async move {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for i in 0..n {
            let ev = format!("data: {{\"i\":{i},\"echo\":\"{echo}\"}}\n\n");
            e.write_all(ev.as_bytes()).unwrap();
            e.flush().unwrap();
            let chunk = std::mem::take(e.get_mut());
            if tx.send(Ok(Frame::data(Bytes::from(chunk)))).await.is_err() {
                return;
            }
            tokio::time::sleep(gap).await;
        }
        let rest = e.finish().unwrap();
        let _ = tx.send(Ok(Frame::data(Bytes::from(rest)))).await;
    });
    StreamBody::new(tokio_stream_from(rx)).boxed()
}

/// The Kalshi session routes of [`KalshiLogin`], in front of [`handle`].
async fn handle_kalshi(
    seen: Arc<Mutex<Vec<Seen>>>,
    kalshi: Arc<KalshiLogin>,
    slow_pending: Arc<std::sync::atomic::AtomicUsize>,
    req: Request<Incoming>,
) -> Result<Response<BoxBody>, std::convert::Infallible> {
    use std::sync::atomic::Ordering;
    let path = req.uri().path().to_owned();
    if !path.starts_with("/trade-api/v2/") || req.headers().contains_key("kalshi-access-key") {
        return handle(seen, slow_pending, req).await;
    }
    let record = Seen::head_of(&req);
    let json = |status: u16, value: serde_json::Value| {
        Ok(Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(full(value.to_string()))
            .unwrap())
    };
    if path == "/trade-api/v2/login" {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut record = record;
        record.body_len = body.len();
        seen.lock().unwrap().push(record);
        let parsed: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        kalshi.logins.lock().unwrap().push(parsed.clone());
        let delay = kalshi.login_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if parsed["email"] != KALSHI_EMAIL
            || parsed["password"] != KALSHI_PASSWORD
            || kalshi.refuse_logins.load(Ordering::SeqCst)
        {
            return json(
                401,
                serde_json::json!({"error": {"code": "invalid_credentials", "message": "bad email or password"}}),
            );
        }
        let n = kalshi.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!("kalshi-session-{n}");
        *kalshi.valid.lock().unwrap() = Some(token.clone());
        return json(
            200,
            serde_json::json!({"member_id": "member-0001", "token": token}),
        );
    }
    let expected = kalshi.current().map(|t| format!("Bearer {t}"));
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    if expected.is_none()
        || given != expected.as_deref()
        || kalshi.refuse_tokens.load(Ordering::SeqCst)
    {
        seen.lock().unwrap().push(record);
        return json(
            401,
            serde_json::json!({"error": {"code": "authentication_error", "message": "session expired"}}),
        );
    }
    handle(seen, slow_pending, req).await
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
