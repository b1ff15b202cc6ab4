//! A byte-level guard under hyper for HTTP/1 connections inside a tunnel.
//! hyper normalizes a request carrying both `Transfer-Encoding` and
//! `Content-Length` (chunked wins, the length is dropped) before the service
//! sees it; clavis refuses such ambiguous framing outright (request
//! smuggling, threat model T6). This guard watches the request heads as they
//! are read, follows each body's framing to find the next head, and marks the
//! number of every request whose head was ambiguous.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const MAX_HEAD: usize = 64 * 1024;

/// Which requests (1-based, in order) had ambiguous framing.
#[derive(Debug, Default)]
pub(crate) struct Verdicts {
    ambiguous: Mutex<Vec<u64>>,
}

impl Verdicts {
    pub(crate) fn is_ambiguous(&self, request: u64) -> bool {
        self.ambiguous
            .lock()
            .map(|v| v.contains(&request))
            .unwrap_or(true)
    }

    fn mark(&self, request: u64) {
        if let Ok(mut v) = self.ambiguous.lock() {
            v.push(request);
        }
    }
}

#[derive(Debug)]
enum State {
    Head(Vec<u8>),
    Body(u64),
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    ChunkCrlf(u8),
    Trailers(Vec<u8>),
    /// Lost track (unparseable): stop watching; hyper rejects such input.
    Off,
}

pin_project_lite::pin_project! {
    pub(crate) struct Guard<S> {
        #[pin]
        inner: S,
        state: State,
        requests: u64,
        verdicts: Arc<Verdicts>,
    }
}

impl<S> Guard<S> {
    /// `watch: false` (h2, whose frames carry no such ambiguity) passes bytes through.
    pub(crate) fn new(inner: S, verdicts: Arc<Verdicts>, watch: bool) -> Guard<S> {
        Guard {
            inner,
            state: if watch {
                State::Head(Vec::new())
            } else {
                State::Off
            },
            requests: 0,
            verdicts,
        }
    }
}

/// What a request head says about its body: (ambiguous, length, chunked).
/// Works on the bytes as read, without copying them.
fn inspect(head: &[u8]) -> (bool, Option<u64>, bool) {
    let mut first_length: Option<&[u8]> = None;
    let mut differing = false;
    let mut te = false;
    let mut chunked = false;
    for line in head.split(|b| *b == b'\n').skip(1) {
        // Only `content-length` and `transfer-encoding` matter: skip the
        // other lines on their first byte.
        if !matches!(line.first().map(|b| b | 0x20), Some(b'c' | b't')) {
            continue;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let (name, value) = (line[..colon].trim_ascii(), line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            match first_length {
                None => first_length = Some(value),
                Some(first) => differing |= first != value,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te = true;
            chunked = value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
    }
    let ambiguous = (te && first_length.is_some()) || differing;
    let length = first_length
        .and_then(|l| std::str::from_utf8(l).ok())
        .and_then(|l| l.parse().ok());
    (ambiguous, if te { None } else { length }, chunked)
}

/// After a head: where its body's framing leads.
fn after_head(head: &[u8], requests: &mut u64, verdicts: &Verdicts) -> State {
    *requests += 1;
    let (ambiguous, length, chunked) = inspect(head);
    if ambiguous {
        verdicts.mark(*requests);
    }
    if chunked {
        State::ChunkSize(Vec::new())
    } else {
        match length {
            Some(n) if n > 0 => State::Body(n),
            _ => State::Head(Vec::new()),
        }
    }
}

fn advance(state: &mut State, requests: &mut u64, verdicts: &Verdicts, mut data: &[u8]) {
    while !data.is_empty() {
        match state {
            State::Off => return,
            State::Head(buf) => {
                // Skip stray CRLFs between messages (RFC 9112 §2.2).
                if buf.is_empty() && (data[0] == b'\r' || data[0] == b'\n') {
                    data = &data[1..];
                    continue;
                }
                // The usual case: the whole head arrived in one read.
                if buf.is_empty() {
                    if let Some((end, next)) = head_end(data) {
                        *state = after_head(&data[..end], requests, verdicts);
                        data = &data[next..];
                        continue;
                    }
                }
                let before = buf.len();
                buf.extend_from_slice(data);
                let Some((end, next)) = head_end(buf) else {
                    if buf.len() > MAX_HEAD {
                        *state = State::Off;
                    }
                    return;
                };
                data = &data[next - before..];
                let head = std::mem::take(buf);
                *state = after_head(&head[..end], requests, verdicts);
            }
            State::Body(left) => {
                let n = (*left).min(data.len() as u64);
                *left -= n;
                data = &data[n as usize..];
                if *left == 0 {
                    *state = State::Head(Vec::new());
                }
            }
            State::ChunkSize(line) => {
                let Some(nl) = data.iter().position(|b| *b == b'\n') else {
                    line.extend_from_slice(data);
                    if line.len() > 1024 {
                        *state = State::Off;
                    }
                    return;
                };
                line.extend_from_slice(&data[..nl]);
                data = &data[nl + 1..];
                let size = line
                    .split(|b| *b == b';')
                    .next()
                    .map(<[u8]>::trim_ascii)
                    .unwrap_or(b"");
                let size = std::str::from_utf8(size).unwrap_or("-");
                *state = match u64::from_str_radix(size, 16) {
                    Ok(0) => State::Trailers(Vec::new()),
                    Ok(n) => State::ChunkData(n),
                    Err(_) => State::Off,
                };
            }
            State::ChunkData(left) => {
                let n = (*left).min(data.len() as u64);
                *left -= n;
                data = &data[n as usize..];
                if *left == 0 {
                    *state = State::ChunkCrlf(2);
                }
            }
            State::ChunkCrlf(left) => {
                data = &data[1..];
                *left -= 1;
                if *left == 0 {
                    *state = State::ChunkSize(Vec::new());
                }
            }
            State::Trailers(buf) => {
                buf.extend_from_slice(data);
                let end = if buf.starts_with(b"\r\n") {
                    Some(0)
                } else {
                    find(buf, b"\r\n\r\n").map(|e| e + 2)
                };
                let Some(end) = end else {
                    if buf.len() > MAX_HEAD {
                        *state = State::Off;
                    }
                    return;
                };
                let rest = buf.split_off(end + 2);
                *state = State::Head(Vec::new());
                advance(state, requests, verdicts, &rest);
                return;
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// The end of a head (an empty line, `\r\n` or a bare `\n` as hyper also
/// accepts): where the head's text stops and where the body begins.
fn head_end(buf: &[u8]) -> Option<(usize, usize)> {
    memchr::memchr_iter(b'\n', buf).find_map(|i| match buf.get(i + 1..) {
        Some([b'\n', ..]) => Some((i, i + 2)),
        Some([b'\r', b'\n', ..]) => Some((i, i + 3)),
        _ => None,
    })
}

impl<S: AsyncRead> AsyncRead for Guard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.inner.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &result {
            advance(
                this.state,
                this.requests,
                this.verdicts,
                &buf.filled()[before..],
            );
        }
        result
    }
}

impl<S: AsyncWrite> AsyncWrite for Guard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> (u64, Vec<u64>) {
        let v = Verdicts::default();
        let (mut state, mut requests) = (State::Head(Vec::new()), 0);
        for c in chunks {
            advance(&mut state, &mut requests, &v, c);
        }
        let marked = v.ambiguous.lock().unwrap().clone();
        (requests, marked)
    }

    mod advance {
        use super::*;

        #[test]
        fn follows_lengths_and_chunks_to_each_head() {
            let stream: &[u8] = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: h\r\n\r\n\
POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
GET /d HTTP/1.1\r\nHost: h\r\n\r\n";
            // Byte by byte and all at once give the same count.
            let bytes: Vec<&[u8]> = stream.chunks(1).collect();
            assert_eq!(run(&bytes), (4, vec![]));
            assert_eq!(run(&[stream]), (4, vec![]));
        }

        #[test]
        fn marks_te_with_cl_and_differing_lengths() {
            let te_cl: &[u8] = b"GET / HTTP/1.1\r\nHost: h\r\n\r\nPOST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
            assert_eq!(run(&[te_cl]), (2, vec![2]));
            let dup: &[u8] =
                b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx";
            assert_eq!(run(&[dup]).1, vec![1]);
            let bare_lf: &[u8] =
                b"POST /x HTTP/1.1\nHost: h\nContent-Length: 5\nTransfer-Encoding: chunked\n\n0\r\n\r\n";
            assert_eq!(run(&[bare_lf]), (1, vec![1]));
            let cases: &[u8] =
                b"POST /x HTTP/1.1\r\nhost: h\r\nCONTENT-LENGTH: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
            assert_eq!(run(&[cases]), (1, vec![1]));
            let same: &[u8] =
                b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx";
            assert_eq!(run(&[same]).1, Vec::<u64>::new());
        }
    }
}
