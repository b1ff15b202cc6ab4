//! Plain-HTTP server-sent-events origin that nginx fronts as /sse.
//!
//! Each event carries the origin's send time (CLOCK_MONOTONIC, ns, which
//! every process on the machine shares and which, unlike the wall clock,
//! this VM never steps), so that a client on the same machine can measure
//! per-event latency exactly:
//!
//! ```text
//! data: {"i": 3, "t": 1712345678901234567}
//! ```
//!
//! Query: `n` (events, default 20, at most 1000), `ms` (interval, default
//! 100, at most 1000). nginx also sends `POST /v1/chat/completions` here (the
//! guardrails scenario); its body is read and ignored. The first event is
//! sent as soon as the headers are, then one every `ms` milliseconds; the
//! connection closes after the last.
//!
//! It shares the load core with nginx and the clients, so it is written to
//! cost little there: one thread, one task per stream, one write per event
//! (a Python asyncio origin took a third of that core at 10,000 events/s).
//!
//! Usage: `sse-origin PORT`.

use std::io::Write;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

const MAX_HEAD: usize = 64 * 1024;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let port: u16 = match std::env::args().nth(1).map(|p| p.parse()) {
        Some(Ok(p)) => p,
        _ => {
            eprintln!("usage: sse-origin PORT");
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sse-origin: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(async move {
                    // A broken or closed connection just ends its stream.
                    let _ = serve(stream).await;
                });
            }
            Err(e) => {
                eprintln!("sse-origin: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve(mut stream: TcpStream) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (head, extra) = read_head(&mut stream).await?;
    let request = Request::parse(&head)?;
    // Read the body, so closing the connection cannot reset what is unread.
    let mut left = request.content_length.saturating_sub(extra.len());
    let mut sink = [0u8; 8192];
    while left > 0 {
        let want = left.min(sink.len());
        let n = stream.read(&mut sink[..want]).await?;
        if n == 0 {
            return Ok(());
        }
        left -= n;
    }
    stream
        .write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
              Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\nConnection: close\r\n\r\n",
        )
        .await?;
    let start = Instant::now();
    let mut line = Vec::with_capacity(64);
    for i in 0..request.events {
        tokio::time::sleep_until(start + request.interval * i).await;
        line.clear();
        write!(line, "data: {{\"i\": {i}, \"t\": {}}}\n\n", monotonic_ns())?;
        stream.write_all(&line).await?;
    }
    stream.shutdown().await
}

/// The request head, and whatever of the body came with it.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(invalid("request head too large"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

struct Request {
    events: u32,
    interval: Duration,
    content_length: usize,
}

impl Request {
    fn parse(head: &[u8]) -> std::io::Result<Request> {
        let text = std::str::from_utf8(head).map_err(|_| invalid("head is not UTF-8"))?;
        let mut lines = text.split("\r\n");
        let target = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .ok_or_else(|| invalid("no request target"))?;
        let mut content_length = 0;
        for line in lines {
            if let Some((name, value)) = line.split_once(':') {
                if name.trim().eq_ignore_ascii_case("content-length") {
                    content_length = value
                        .trim()
                        .parse()
                        .map_err(|_| invalid("bad Content-Length"))?;
                }
            }
        }
        let (mut events, mut ms) = (20u32, 100f64);
        let query = target.split_once('?').map_or("", |(_, q)| q);
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("n", v)) => events = v.parse().map_err(|_| invalid("bad n"))?,
                Some(("ms", v)) => ms = v.parse().map_err(|_| invalid("bad ms"))?,
                _ => {}
            }
        }
        if !ms.is_finite() || ms < 0.0 {
            return Err(invalid("bad ms"));
        }
        Ok(Request {
            events: events.min(1000),
            interval: Duration::from_secs_f64(ms.min(1000.0) / 1000.0),
            content_length,
        })
    }
}

fn invalid(what: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// CLOCK_MONOTONIC in nanoseconds: what Python's `time.monotonic_ns()`
/// reads in the clients.
fn monotonic_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}
