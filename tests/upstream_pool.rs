//! Upstream connection reuse, seen from outside: a tunnel keeps reusing one
//! upstream connection, a connection outlives the tunnel that opened it and
//! serves the next one, concurrent tunnels never wait for each other, a
//! pooled connection the upstream closed behind clavis's back never surfaces
//! as an error, the request after a streamed response takes that stream's
//! connection, and HTTP/2 upstreams are shared by every tunnel.
//!
//! Most tests use [`Fake`], an upstream written here that speaks HTTP/1.1
//! only (the kit's echo offers h2, which clavis would pick and multiplex, so
//! HTTP/1 reuse could not be told apart from h2 sharing), and that tags every
//! request with the number of the TCP connection it arrived on.

// Helpers here are not `#[test]` functions, so clippy.toml's
// allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use support::*;

const OPENAI: &str = "api.openai.com";

/// Every test body runs under this bound, so a regression hangs nothing.
async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test did not finish within 60 s")
}

fn real_bearer() -> String {
    format!("Bearer {REAL_OPENAI}")
}

/// An agent that speaks HTTP/1.1 inside its tunnel (one tunnel per client,
/// kept alive by reqwest between requests).
fn h1_agent(clavis: &Clavis) -> reqwest::Client {
    clavis
        .client_builder_alpn(Some(("codex", "codex-token")), &[b"http/1.1"])
        .http1_only()
        .build()
        .unwrap()
}

/// An agent that speaks HTTP/2 inside its tunnel.
fn h2_agent(clavis: &Clavis) -> reqwest::Client {
    clavis
        .client_builder_alpn(Some(("codex", "codex-token")), &[b"h2"])
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

/// Tunnels clavis holds open right now.
fn open_tunnels(clavis: &Clavis) -> usize {
    clavis.state.open_tunnels()
}

/// Waits until every tunnel has ended (the agent dropped its client), plus a
/// moment for the tunnel's upstream connection to reach the idle pool.
async fn wait_idle(clavis: &Clavis) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while open_tunnels(clavis) > 0 {
        assert!(
            Instant::now() < deadline,
            "{} tunnel(s) still open 5 s after their clients were dropped",
            open_tunnels(clavis)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// `GET https://api.openai.com{path}` with a placeholder key: status and body.
async fn get(client: &reqwest::Client, path: &str) -> (u16, String) {
    get_url(client, &format!("https://{OPENAI}{path}")).await
}

/// `GET url` with a placeholder key: status and body.
async fn get_url(client: &reqwest::Client, url: &str) -> (u16, String) {
    let r = client
        .get(url)
        .bearer_auth("placeholder")
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

// ---------------------------------------------------------------------------
// A scripted upstream.

type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// One request as the fake upstream saw it, with the number (from 1) of the
/// TCP connection it arrived on.
#[derive(Debug, Clone)]
struct Hit {
    conn: usize,
    seen: Seen,
}

/// A fake upstream for `api.openai.com` on loopback: TLS offering only
/// `alpn` (or plain TCP), counting accepted connections and recording every
/// request. Routes:
/// - `/delay?ms=N`: the response head comes after N ms;
/// - `/stream?ms=N`: the head and a first chunk at once, the last chunk
///   after N ms (the connection stays busy meanwhile);
/// - anything else: `200` with a small JSON body (`Content-Length`).
///
/// With `close_after`, every connection is dropped that long after its first
/// response (no `Connection: close`, no warning: what an upstream's idle
/// timeout or a load balancer does to a keep-alive connection).
struct Fake {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
    connections: Arc<AtomicUsize>,
}

impl Fake {
    /// A TLS upstream offering HTTP/1.1 only.
    async fn h1(ca: &TestCa) -> Fake {
        Fake::start(Some(ca), &[b"http/1.1"], None).await
    }

    async fn start(ca: Option<&TestCa>, alpn: &[&[u8]], close_after: Option<Duration>) -> Fake {
        let acceptor = ca.map(|ca| {
            let mut config = (*ca.server_config(&[OPENAI])).clone();
            config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (h, c) = (hits.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let conn = c.fetch_add(1, Ordering::SeqCst) + 1;
                let (hits, acceptor) = (h.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor {
                        Some(acceptor) => {
                            let Ok(tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            serve(TokioIo::new(tls), conn, hits, close_after).await;
                        }
                        None => serve(TokioIo::new(tcp), conn, hits, close_after).await,
                    }
                });
            }
        });
        Fake {
            addr,
            hits,
            connections,
        }
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    fn last(&self) -> Seen {
        self.hits()
            .last()
            .expect("upstream saw no request")
            .seen
            .clone()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The connection numbers of every request, in arrival order.
    fn conns(&self) -> Vec<usize> {
        self.hits().iter().map(|h| h.conn).collect()
    }

    /// Clavis with `api.openai.com:443` resolved to this upstream.
    async fn clavis(&self, ca: &TestCa) -> Clavis {
        Clavis::builder(&standard_yaml())
            .resolve(&format!("{OPENAI}:443"), &self.addr.to_string())
            .start(None, Some(ca))
            .await
    }
}

async fn serve<I>(
    io: TokioIo<I>,
    conn: usize,
    hits: Arc<Mutex<Vec<Hit>>>,
    close_after: Option<Duration>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let close = Arc::new(tokio::sync::Notify::new());
    let c = close.clone();
    let svc = hyper::service::service_fn(move |req| {
        let (hits, close) = (hits.clone(), c.clone());
        async move {
            let response = respond(conn, hits, req).await;
            if let Some(after) = close_after {
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    close.notify_one();
                });
            }
            response
        }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(io, svc);
    tokio::select! {
        _ = connection => {}
        // Dropping the connection closes the socket, mid-keep-alive.
        _ = close.notified() => {}
    }
}

fn query_ms(req: &Request<Incoming>) -> u64 {
    req.uri()
        .query()
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("ms=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn respond(
    conn: usize,
    hits: Arc<Mutex<Vec<Hit>>>,
    req: Request<Incoming>,
) -> Result<Response<BoxBody>, std::convert::Infallible> {
    let seen = Seen::head_of(&req);
    let path = req.uri().path().to_owned();
    let ms = Duration::from_millis(query_ms(&req));
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let mut seen = seen;
    seen.body_len = body.map(|b| b.len()).unwrap_or(0);
    hits.lock().unwrap().push(Hit { conn, seen });
    match path.as_str() {
        "/delay" => tokio::time::sleep(ms).await,
        "/stream" => {
            let (tx, mut rx) =
                tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(2);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from("first\n")))).await;
                tokio::time::sleep(ms).await;
                let _ = tx.send(Ok(Frame::data(Bytes::from("last\n")))).await;
            });
            let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
            return Ok(Response::builder()
                .header("content-type", "text/plain")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap());
        }
        _ => {}
    }
    let json = serde_json::json!({ "path": path, "conn": conn });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(
            http_body_util::Full::new(Bytes::from(json.to_string()))
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap())
}

// ---------------------------------------------------------------------------
// HTTP/1 upstream: reuse within a tunnel and across tunnels.

/// Sequential requests on one keep-alive tunnel all get the real key and
/// share a single upstream connection (no TCP + TLS handshake per request).
#[tokio::test]
async fn sequential_requests_in_one_tunnel_share_one_upstream_connection() {
    let ca = TestCa::new();
    let up = Fake::h1(&ca).await;
    let clavis = up.clavis(&ca).await;
    bounded(async {
        let agent = h1_agent(&clavis);
        for i in 0..5 {
            let (status, body) = get(&agent, &format!("/v1/models?i={i}")).await;
            assert_eq!(status, 200, "request {i}: {body}");
            let seen = up.last();
            assert_eq!(seen.path, format!("/v1/models?i={i}"));
            assert_eq!(seen.version, "HTTP/1.1");
            assert_eq!(seen.all("authorization"), vec![real_bearer().as_str()]);
        }
        assert_eq!(open_tunnels(&clavis), 1, "reqwest kept one tunnel");
        assert_eq!(up.conns(), vec![1; 5]);
        assert_eq!(up.connections(), 1);
    })
    .await;
}

/// One tunnel after another (a fresh CONNECT each time): the upstream
/// connection a finished tunnel used is handed to the next tunnel, so a
/// CLI that runs once per request still pays for one upstream handshake.
#[tokio::test]
async fn upstream_connection_outlives_its_tunnel_and_serves_the_next() {
    let ca = TestCa::new();
    let up = Fake::h1(&ca).await;
    let clavis = up.clavis(&ca).await;
    bounded(async {
        for i in 0..4 {
            let agent = h1_agent(&clavis);
            let (status, body) = get(&agent, &format!("/v1/models?tunnel={i}")).await;
            assert_eq!(status, 200, "tunnel {i}: {body}");
            assert_eq!(up.last().all("authorization"), vec![real_bearer().as_str()]);
            drop(agent);
            wait_idle(&clavis).await;
        }
        assert_eq!(up.hits().len(), 4);
        assert_eq!(up.conns(), vec![1; 4]);
        assert_eq!(up.connections(), 1);
    })
    .await;
}

/// Tunnels that stay open but idle hold no upstream connection: ten agents
/// keep their tunnels open and take turns, and one upstream connection
/// serves them all. (A tunnel pinning its last connection would need one
/// upstream connection per idle agent connection: ten thousand idle agents,
/// ten thousand upstream connections and file descriptors.)
#[tokio::test]
async fn idle_tunnels_hold_no_upstream_connection() {
    let ca = TestCa::new();
    let up = Fake::h1(&ca).await;
    let clavis = up.clavis(&ca).await;
    bounded(async {
        let agents: Vec<reqwest::Client> = (0..10).map(|_| h1_agent(&clavis)).collect();
        for round in 0..2 {
            for (i, agent) in agents.iter().enumerate() {
                let (status, body) =
                    get(agent, &format!("/v1/models?agent={i}&round={round}")).await;
                assert_eq!(status, 200, "agent {i}, round {round}: {body}");
            }
        }
        assert_eq!(
            open_tunnels(&clavis),
            10,
            "every agent's tunnel is still open"
        );
        assert_eq!(up.hits().len(), 20);
        assert_eq!(up.connections(), 1);
    })
    .await;
}

/// Shared part of the two concurrency tests: tunnel A has `slow` in flight;
/// tunnel B's request must complete meanwhile on a second upstream
/// connection; afterwards both connections keep being reused, by the same
/// tunnels and by new ones, and no third is opened.
async fn concurrent_tunnels_do_not_wait(slow: &str, slow_ms: u64) {
    let ca = TestCa::new();
    let up = Fake::h1(&ca).await;
    let clavis = up.clavis(&ca).await;
    bounded(async {
        let (a, b) = (h1_agent(&clavis), h1_agent(&clavis));
        let started = Instant::now();
        let slow_request = {
            let a = a.clone();
            let slow = slow.to_owned();
            tokio::spawn(async move {
                let (status, body) = get(&a, &slow).await;
                (status, body, Instant::now())
            })
        };
        // A's request has reached the upstream (so it holds a connection).
        while up.hits().is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "A never arrived"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (status, body) = get(&b, "/v1/models?tunnel=b").await;
        let b_done = Instant::now();
        assert_eq!(status, 200, "{body}");
        assert_eq!(up.last().all("authorization"), vec![real_bearer().as_str()]);
        assert!(
            b_done - started < Duration::from_millis(slow_ms / 2),
            "B took {:?}: it waited for A's slow request ({slow_ms} ms)",
            b_done - started
        );
        let (status, body, a_done) = slow_request.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(
            a_done - started >= Duration::from_millis(slow_ms),
            "A finished after {:?}, sooner than the upstream's {slow_ms} ms",
            a_done - started
        );
        assert!(b_done < a_done);
        assert_eq!(up.connections(), 2);
        let conns = up.conns();
        assert_ne!(conns[0], conns[1], "A and B shared a connection: {conns:?}");

        // Both tunnels keep going, in turns: nothing new is dialled.
        for i in 0..3 {
            for (name, agent) in [("a", &a), ("b", &b)] {
                let (status, body) = get(agent, &format!("/v1/models?{name}={i}")).await;
                assert_eq!(status, 200, "{body}");
            }
        }
        assert_eq!(up.connections(), 2, "requests: {:?}", up.conns());

        // Once both tunnels end, new tunnels take the pooled connections.
        drop((a, b));
        wait_idle(&clavis).await;
        for i in 0..3 {
            let agent = h1_agent(&clavis);
            let (status, body) = get(&agent, &format!("/v1/models?new={i}")).await;
            assert_eq!(status, 200, "{body}");
            drop(agent);
            wait_idle(&clavis).await;
        }
        assert_eq!(up.hits().len(), 2 + 6 + 3);
        assert_eq!(up.connections(), 2, "requests: {:?}", up.conns());
        for hit in up.hits() {
            assert_eq!(
                hit.seen.all("authorization"),
                vec![real_bearer().as_str()],
                "{}",
                hit.seen.path
            );
        }
    })
    .await;
}

/// `clavis_upstream_dials_total` as the admin port's `/metrics` shows it.
async fn dials(clavis: &Clavis) -> u64 {
    let text = admin_client()
        .get(format!("http://{}/metrics", clavis.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("clavis_upstream_dials_total "))
        .unwrap_or_else(|| panic!("no clavis_upstream_dials_total in /metrics:\n{text}"))
        .parse()
        .unwrap()
}

/// An agent's day: a streamed response read to its end, then at once the
/// next request on the same client connection, fifty times. The connection
/// that carried the stream serves the request after it: one upstream dial in
/// all, never a new TCP + TLS handshake after a stream. On several worker
/// threads, where the task that puts a connection back after its body ends
/// could run after the next request has already looked for one. (The agent
/// is a bare hyper connection: a pooled client such as reqwest has the same
/// race on its side and would open a second tunnel.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_request_after_a_stream_reuses_the_streams_connection() {
    let ca = TestCa::new();
    let up = Fake::h1(&ca).await;
    let clavis = up.clavis(&ca).await;
    bounded(async {
        assert_eq!(dials(&clavis).await, 0);
        let creds = base64::engine::general_purpose::STANDARD.encode("codex:codex-token");
        let (status, tcp) = connect_raw(
            clavis.proxy,
            &format!("{OPENAI}:443"),
            &format!("Proxy-Authorization: Basic {creds}\r\n"),
        )
        .await;
        assert_eq!(status, 200);
        let tls = tls_over(tcp, OPENAI, &clavis.ca_pem(), &[b"http/1.1"])
            .await
            .unwrap();
        let (mut agent, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        for i in 0..50 {
            for path in [
                format!("/stream?ms=5&i={i}"),
                format!("/v1/models?after={i}"),
            ] {
                agent.ready().await.unwrap();
                let request = Request::get(path.as_str())
                    .header("host", OPENAI)
                    .header("authorization", "Bearer placeholder")
                    .body(http_body_util::Empty::<Bytes>::new())
                    .unwrap();
                let response = agent.send_request(request).await.unwrap();
                assert_eq!(response.status(), 200, "{path}");
                let body = response.into_body().collect().await.unwrap().to_bytes();
                if path.starts_with("/stream") {
                    assert_eq!(&body[..], b"first\nlast\n", "{path}");
                }
            }
        }
        assert_eq!(open_tunnels(&clavis), 1);
        assert_eq!(up.hits().len(), 100);
        assert_eq!(up.connections(), 1, "requests: {:?}", up.conns());
        assert_eq!(dials(&clavis).await, 1);
        for hit in up.hits() {
            assert_eq!(hit.seen.all("authorization"), vec![real_bearer().as_str()]);
        }
    })
    .await;
}

/// While tunnel A waits for a slow response head, tunnel B is answered at
/// once over a second upstream connection; both connections are reused later.
#[tokio::test]
async fn concurrent_tunnel_does_not_wait_for_a_slow_response_head() {
    concurrent_tunnels_do_not_wait("/delay?ms=1500", 1500).await;
}

/// While tunnel A is still receiving a streamed response body, tunnel B is
/// answered at once over a second upstream connection (the first is busy
/// until A's body ends); both connections are reused later.
#[tokio::test]
async fn concurrent_tunnel_does_not_wait_for_a_streaming_response() {
    concurrent_tunnels_do_not_wait("/stream?ms=1500", 1500).await;
}

/// An HTTP/2 agent multiplexing requests in one tunnel to an HTTP/1
/// upstream: the requests run side by side (one upstream connection each),
/// not one after another, and later requests reuse those connections.
#[tokio::test]
async fn h2_tunnel_to_h1_upstream_runs_requests_side_by_side() {
    let ca = TestCa::new();
    let up = Fake::h1(&ca).await;
    let clavis = up.clavis(&ca).await;
    bounded(async {
        let agent = h2_agent(&clavis);
        let started = Instant::now();
        let requests = (0..3).map(|i| {
            let agent = agent.clone();
            async move {
                let r = agent
                    .get(format!("https://{OPENAI}/delay?ms=800&i={i}"))
                    .bearer_auth("placeholder")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.version(), reqwest::Version::HTTP_2);
                (r.status().as_u16(), r.text().await.unwrap())
            }
        });
        for (status, body) in futures_util::future::join_all(requests).await {
            assert_eq!(status, 200, "{body}");
        }
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(2000),
            "three 800 ms requests took {took:?}: they were serialized"
        );
        assert_eq!(open_tunnels(&clavis), 1, "one h2 tunnel");
        assert_eq!(up.connections(), 3);
        for i in 0..3 {
            let (status, body) = get(&agent, &format!("/v1/models?after={i}")).await;
            assert_eq!(status, 200, "{body}");
        }
        assert_eq!(up.connections(), 3, "requests: {:?}", up.conns());
        for hit in up.hits() {
            assert_eq!(hit.seen.version, "HTTP/1.1");
            assert_eq!(hit.seen.all("authorization"), vec![real_bearer().as_str()]);
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// Pooled connections the upstream closed.

/// The upstream drops each keep-alive connection 50 ms after answering (no
/// `Connection: close`). A request through a new tunnel 300 ms later still
/// gets 200: clavis notices the dead pooled connection, or retries the
/// unsent request on a fresh one; the agent never sees an error.
#[tokio::test]
async fn pooled_connection_closed_by_upstream_is_not_an_error_for_the_next_tunnel() {
    let ca = TestCa::new();
    let up = Fake::start(Some(&ca), &[b"http/1.1"], Some(Duration::from_millis(50))).await;
    let clavis = up.clavis(&ca).await;
    bounded(async {
        for i in 0..3 {
            let agent = h1_agent(&clavis);
            let (status, body) = get(&agent, &format!("/v1/models?tunnel={i}")).await;
            assert_eq!(status, 200, "tunnel {i}: {body}");
            assert_eq!(up.last().all("authorization"), vec![real_bearer().as_str()]);
            drop(agent);
            wait_idle(&clavis).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // Each request arrived once, each on a connection of its own.
        assert_eq!(up.hits().len(), 3);
        assert_eq!(up.conns(), vec![1, 2, 3]);
        assert_eq!(up.connections(), 3);
    })
    .await;
}

/// The same, inside one tunnel: the upstream connection the tunnel used for
/// its previous request was closed by the upstream meanwhile; the next
/// request on that tunnel still gets 200, and the agent's connection to
/// clavis stays open throughout.
#[tokio::test]
async fn connection_closed_by_upstream_between_requests_of_one_tunnel_is_not_an_error() {
    let ca = TestCa::new();
    let up = Fake::start(Some(&ca), &[b"http/1.1"], Some(Duration::from_millis(50))).await;
    let clavis = up.clavis(&ca).await;
    bounded(async {
        let agent = h1_agent(&clavis);
        for i in 0..3 {
            let (status, body) = get(&agent, &format!("/v1/models?i={i}")).await;
            assert_eq!(status, 200, "request {i}: {body}");
            assert_eq!(up.last().all("authorization"), vec![real_bearer().as_str()]);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert_eq!(open_tunnels(&clavis), 1, "the agent's tunnel was cut");
        assert_eq!(up.hits().len(), 3);
        assert_eq!(up.conns(), vec![1, 2, 3]);
    })
    .await;
}

// ---------------------------------------------------------------------------
// HTTP/2 upstream and plain http://.

/// A burst on a cold pool: the first request dials and the others wait for
/// that dial instead of opening their own (an HTTP/1-only upstream, which
/// needs one connection per request, is h2_tunnel_to_h1_upstream_runs_requests_side_by_side);
/// an h2 upstream then serves every tunnel over that one connection.
#[tokio::test]
async fn a_cold_burst_to_an_h2_upstream_dials_once() {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    let clavis = Clavis::builder(&standard_yaml())
        .start(Some(&up), Some(&ca))
        .await;
    bounded(async {
        let agents: Vec<reqwest::Client> = (0..16).map(|_| h1_agent(&clavis)).collect();
        let requests = agents.iter().map(|agent| get(agent, "/v1/models"));
        for (status, body) in futures_util::future::join_all(requests).await {
            assert_eq!(status, 200, "{body}");
        }
        assert_eq!(open_tunnels(&clavis), 16);
        assert_eq!(up.connections.load(Ordering::SeqCst), 1);
        for s in up.seen() {
            assert_eq!(s.version, "HTTP/2.0");
            assert_eq!(s.all("authorization"), vec![real_bearer().as_str()]);
        }
    })
    .await;
}

/// An upstream that speaks HTTP/2 gets one connection, shared by every
/// tunnel: eight tunnels with a streaming request in flight at the same time
/// are all served over it, each with the real key.
#[tokio::test]
async fn h2_upstream_connection_is_shared_by_concurrent_tunnels() {
    let ca = TestCa::new();
    // The kit's echo offers h2 first (TestCa::server_config), and clavis
    // offers h2 upstream: the upstream side is HTTP/2.
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    let clavis = Clavis::builder(&standard_yaml())
        .start(Some(&up), Some(&ca))
        .await;
    bounded(async {
        // Warm up: the shared connection exists before the burst (a cold
        // burst is a_cold_burst_to_an_h2_upstream_dials_once).
        let (status, body) = get(&h1_agent(&clavis), "/v1/models").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(up.last().version, "HTTP/2.0");
        wait_idle(&clavis).await;
        assert_eq!(up.connections.load(Ordering::SeqCst), 1);

        let agents: Vec<reqwest::Client> = (0..8).map(|_| h1_agent(&clavis)).collect();
        let started = Instant::now();
        let requests = agents.iter().enumerate().map(|(i, agent)| async move {
            let r = agent
                .get(format!("https://{OPENAI}/sse?n=2&gap_ms=400&tunnel={i}"))
                .bearer_auth("placeholder")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let mut body = Vec::new();
            let mut stream = r.bytes_stream();
            while let Some(chunk) = stream.next().await {
                body.extend_from_slice(&chunk.unwrap());
            }
            String::from_utf8(body).unwrap()
        });
        let bodies = futures_util::future::join_all(requests).await;
        let took = started.elapsed();
        for body in &bodies {
            assert_eq!(body.matches("data: ").count(), 2, "{body}");
        }
        assert_eq!(open_tunnels(&clavis), 8);
        // Eight 800 ms streams, side by side.
        assert!(took < Duration::from_secs(3), "the burst took {took:?}");
        let seen = up.seen();
        assert_eq!(seen.len(), 9);
        for s in &seen {
            assert_eq!(s.version, "HTTP/2.0", "{}", s.path);
            assert_eq!(s.all("authorization"), vec![real_bearer().as_str()]);
        }
        assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    })
    .await;
}

/// Plain `http://` requests for a host no connector claims are forwarded
/// (absolute-form, no CONNECT), one after another on a kept-alive client,
/// untouched (the agent's own `Authorization` goes through as is).
#[tokio::test]
async fn plain_http_forwarding_serves_sequential_requests() {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    let clavis = Clavis::builder(&standard_yaml())
        .start(Some(&up), Some(&ca))
        .await;
    bounded(async {
        let agent = clavis.client(Some(("codex", "codex-token")));
        for i in 0..2 {
            let (status, body) =
                get_url(&agent, &format!("http://plain.test.example/plain?i={i}")).await;
            assert_eq!(status, 200);
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(json["path"], format!("/plain?i={i}"));
            let seen = up.last();
            assert_eq!(seen.path, format!("/plain?i={i}"));
            assert_eq!(seen.all("authorization"), vec!["Bearer placeholder"]);
            assert_eq!(seen.header("proxy-authorization"), None);
        }
        assert_eq!(up.seen().len(), 2);
        assert_eq!(open_tunnels(&clavis), 0, "no CONNECT was used");
    })
    .await;
}

/// Plain `http://` forwarding keeps its upstream connection alive too:
/// sequential requests reach the upstream over one TCP connection.
#[tokio::test]
async fn plain_http_forwarding_reuses_its_upstream_connection() {
    let ca = TestCa::new();
    let up = Fake::start(None, &[], None).await;
    let clavis = Clavis::builder(&standard_yaml())
        .resolve("plain.test.example:80", &up.addr.to_string())
        .start(None, Some(&ca))
        .await;
    bounded(async {
        let agent = clavis.client(Some(("codex", "codex-token")));
        for i in 0..3 {
            let (status, body) =
                get_url(&agent, &format!("http://plain.test.example/plain?i={i}")).await;
            assert_eq!(status, 200);
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(json["path"], "/plain");
        }
        assert_eq!(up.hits().len(), 3);
        assert_eq!(up.connections(), 1, "requests: {:?}", up.conns());
    })
    .await;
}

/// The upstream drops every connection right after its response (no
/// `Connection: close`): back-to-back requests, in one tunnel and across
/// tunnels, race clavis's view of the closed connection; none may fail.
#[tokio::test]
async fn upstream_closing_right_after_each_response_is_never_an_error() {
    let ca = TestCa::new();
    // 1 ms: the response is flushed first (it is written in the same poll
    // that produces it), the close follows at once.
    let up = Fake::start(Some(&ca), &[b"http/1.1"], Some(Duration::from_millis(1))).await;
    let clavis = up.clavis(&ca).await;
    bounded(async {
        let agent = h1_agent(&clavis);
        for i in 0..20 {
            let (status, body) = get(&agent, &format!("/v1/models?i={i}")).await;
            assert_eq!(status, 200, "request {i}: {body}");
        }
        drop(agent);
        for i in 0..10 {
            let (status, body) = get(&h1_agent(&clavis), &format!("/v1/models?t={i}")).await;
            assert_eq!(status, 200, "tunnel {i}: {body}");
        }
        assert_eq!(up.hits().len(), 30);
        assert_eq!(up.connections(), 30);
    })
    .await;
}
