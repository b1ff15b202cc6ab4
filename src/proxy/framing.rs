//! A byte-level guard under hyper for HTTP/1 connections: the proxy port
//! itself and every intercepted tunnel. hyper normalizes what clavis must
//! refuse (SPEC §3.1, threat model T6: request smuggling) before the
//! service sees it: a request carrying both `Transfer-Encoding` and
//! `Content-Length` (chunked wins, the length is dropped), differing
//! `Content-Length` values, several `Transfer-Encoding` lines or codings,
//! obs-fold, heads ended by bare `LF`. This guard watches the request heads
//! as they are read, follows each body's framing to find the next head, and
//! notes the flaw of every request whose head had one; the request is then
//! answered `400` and the connection closed. After a `CONNECT` head the
//! bytes are a tunnel's, and the guard stops watching.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Heads (and chunk-size lines) are followed up to this size; the config
/// keeps `limits.max_header_bytes` within it, so hyper refuses a longer one.
const MAX_HEAD: usize = crate::config::HEAD_LIMIT;

/// Flaws kept per connection: the first flawed request served closes the
/// connection, so only the earliest ones can ever be asked about.
const MAX_FLAWS: usize = 16;

/// What is wrong with a request head's framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flaw {
    LengthWithChunked,
    DifferingLengths,
    SeveralCodings,
    BareLf,
    ObsFold,
}

impl Flaw {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Flaw::LengthWithChunked => "both Transfer-Encoding and Content-Length",
            Flaw::DifferingLengths => "differing Content-Length values",
            Flaw::SeveralCodings => "more than one Transfer-Encoding line or coding",
            Flaw::BareLf => "a line ended by a bare LF",
            Flaw::ObsFold => "a folded header line (obs-fold)",
        }
    }
}

/// Which requests (1-based, in order) had a flawed head, and the flaw.
#[derive(Debug, Default)]
pub(crate) struct Verdicts {
    flawed: Mutex<Vec<(u64, Flaw)>>,
}

impl Verdicts {
    /// The flaw of the `request`-th head, if it had one. A poisoned lock
    /// (a bug) refuses rather than passes.
    pub(crate) fn flaw(&self, request: u64) -> Option<Flaw> {
        match self.flawed.lock() {
            Ok(v) => v.iter().find(|(n, _)| *n == request).map(|(_, f)| *f),
            Err(_) => Some(Flaw::DifferingLengths),
        }
    }

    fn mark(&self, request: u64, flaw: Flaw) {
        if let Ok(mut v) = self.flawed.lock() {
            if v.len() < MAX_FLAWS {
                v.push((request, flaw));
            }
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

/// What a request head says about its body.
#[derive(Debug, Default, PartialEq, Eq)]
struct Framing {
    flaw: Option<Flaw>,
    length: Option<u64>,
    chunked: bool,
    connect: bool,
}

/// Reads a head (up to, not including, the `\n` that ends its last line)
/// without copying it; `bare_end` says the empty line that ended it was a
/// bare `LF`.
fn inspect(head: &[u8], bare_end: bool) -> Framing {
    let mut first_length: Option<&[u8]> = None;
    let mut flaw = bare_end.then_some(Flaw::BareLf);
    let mut note = |f: Flaw| {
        flaw.get_or_insert(f);
    };
    let (mut te_lines, mut chunked) = (0usize, false);
    for (i, line) in head.split(|b| *b == b'\n').enumerate() {
        // Noted, and still read: the framing decides where the next head is.
        let line = line.strip_suffix(b"\r").unwrap_or_else(|| {
            note(Flaw::BareLf);
            line
        });
        if i == 0 {
            continue;
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            note(Flaw::ObsFold);
            continue;
        }
        // Only `content-length` and `transfer-encoding` matter: skip the
        // other lines on their first byte.
        if !matches!(line.first().map(|b| b | 0x20), Some(b'c' | b't')) {
            continue;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let (name, value) = (line[..colon].trim_ascii(), line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            match first_length {
                None => first_length = Some(value),
                Some(first) if first != value => note(Flaw::DifferingLengths),
                Some(_) => {}
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te_lines += 1;
            let codings = value
                .split(|b| *b == b',')
                .filter(|c| !c.trim_ascii().is_empty())
                .count();
            if te_lines > 1 || codings > 1 {
                note(Flaw::SeveralCodings);
            }
            chunked = value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
    }
    if te_lines > 0 && first_length.is_some() {
        note(Flaw::LengthWithChunked);
    }
    let length = first_length
        .and_then(|l| std::str::from_utf8(l).ok())
        .and_then(|l| l.parse().ok());
    Framing {
        flaw,
        length: if te_lines > 0 { None } else { length },
        chunked,
        connect: head.starts_with(b"CONNECT "),
    }
}

/// After a head: where its body's framing leads.
fn after_head(head: &[u8], bare_end: bool, requests: &mut u64, verdicts: &Verdicts) -> State {
    *requests += 1;
    let framing = inspect(head, bare_end);
    if let Some(flaw) = framing.flaw {
        verdicts.mark(*requests, flaw);
    }
    if framing.connect {
        // What follows is the tunnel's (or nothing, if it is refused).
        return State::Off;
    }
    if framing.chunked {
        State::ChunkSize(Vec::new())
    } else {
        match framing.length {
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
                        *state = after_head(&data[..end], next == end + 2, requests, verdicts);
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
                *state = after_head(&head[..end], next == end + 2, requests, verdicts);
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
                    // hyper accepts up to 16 KiB of chunk extensions: the
                    // guard must not stop watching before hyper refuses.
                    if line.len() > MAX_HEAD {
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
                // The trailers' end is looked for in this read itself when
                // nothing is kept: copying every pipelined request after
                // them (and recursing once per request) cost time
                // quadratic in the requests one read holds.
                let before = buf.len();
                let end = if before == 0 {
                    trailers_end(data)
                } else {
                    buf.extend_from_slice(data);
                    trailers_end(buf)
                };
                let Some(end) = end else {
                    if before == 0 {
                        buf.extend_from_slice(data);
                    }
                    if buf.len() > MAX_HEAD {
                        *state = State::Off;
                    }
                    return;
                };
                // `end + 2` bytes of `buf + data` are the trailers; the
                // kept part held no end, so they reach into `data`.
                data = &data[end + 2 - before..];
                *state = State::Head(Vec::new());
            }
        }
    }
}

/// Where the trailers (or the empty line after the last chunk) end: the
/// index of their final CRLF.
fn trailers_end(buf: &[u8]) -> Option<usize> {
    if buf.starts_with(b"\r\n") {
        Some(0)
    } else {
        find(buf, b"\r\n\r\n").map(|e| e + 2)
    }
}

/// The flaws a guard notes over these reads, in order: the guard's logic
/// without a socket, for the fuzz targets and the property tests (the
/// verdicts must not depend on where the reads split the bytes).
pub(crate) fn judge<'a>(reads: impl IntoIterator<Item = &'a [u8]>) -> Vec<(u64, Flaw)> {
    let verdicts = Verdicts::default();
    let (mut state, mut requests) = (State::Head(Vec::new()), 0);
    for read in reads {
        advance(&mut state, &mut requests, &verdicts, read);
    }
    verdicts.flawed.into_inner().unwrap_or_default()
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

    fn run(chunks: &[&[u8]]) -> (u64, Vec<(u64, Flaw)>) {
        let v = Verdicts::default();
        let (mut state, mut requests) = (State::Head(Vec::new()), 0);
        for c in chunks {
            advance(&mut state, &mut requests, &v, c);
        }
        let marked = v.flawed.lock().unwrap().clone();
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

        /// A chunk-size line with a 2000-byte extension (hyper takes up to
        /// 16 KiB) arriving over several reads turned the guard off (its
        /// limit was 1024), so the smuggling head pipelined after it went
        /// unnoticed; read at once, it was caught.
        #[test]
        fn keeps_watching_past_a_long_chunk_extension_split_across_reads() {
            let mut stream =
                b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;".to_vec();
            stream.extend(std::iter::repeat_n(b'x', 2000));
            stream.extend_from_slice(
                b"\r\nhello\r\n0\r\n\r\nPOST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            );
            let want = (2, vec![(2, Flaw::LengthWithChunked)]);
            assert_eq!(run(&[&stream]), want);
            let reads: Vec<&[u8]> = stream.chunks(255).collect();
            assert_eq!(run(&reads), want);
        }

        #[test]
        fn follows_many_pipelined_chunked_requests_with_trailers_in_one_read() {
            let one: &[u8] =
                b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n\r\n";
            let flawed: &[u8] = b"GET / HTTP/1.1\nHost: h\r\n\r\n";
            let mut stream = one.repeat(2000);
            stream.extend_from_slice(flawed);
            stream.extend_from_slice(&one.repeat(3));
            let want = (2004, vec![(2001, Flaw::BareLf)]);
            assert_eq!(run(&[&stream]), want);
            let reads: Vec<&[u8]> = stream.chunks(7).collect();
            assert_eq!(run(&reads), want);
        }

        #[test]
        fn marks_te_with_cl_and_differing_lengths() {
            let te_cl: &[u8] = b"GET / HTTP/1.1\r\nHost: h\r\n\r\nPOST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
            assert_eq!(run(&[te_cl]), (2, vec![(2, Flaw::LengthWithChunked)]));
            let dup: &[u8] =
                b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx";
            assert_eq!(run(&[dup]).1, vec![(1, Flaw::DifferingLengths)]);
            let cases: &[u8] =
                b"POST /x HTTP/1.1\r\nhost: h\r\nCONTENT-LENGTH: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
            assert_eq!(run(&[cases]), (1, vec![(1, Flaw::LengthWithChunked)]));
            let same: &[u8] =
                b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx";
            assert_eq!(run(&[same]).1, vec![]);
        }

        #[test]
        fn marks_several_transfer_encodings_lines_or_codings() {
            for head in [
                &b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
                b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked,chunked\r\n\r\n0\r\n\r\n",
            ] {
                assert_eq!(run(&[head]), (1, vec![(1, Flaw::SeveralCodings)]));
            }
            let one: &[u8] =
                b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:  chunked \r\n\r\n0\r\n\r\n";
            assert_eq!(run(&[one]), (1, vec![]));
        }

        #[test]
        fn marks_bare_lf_anywhere_in_a_head_and_obs_fold() {
            let bare: &[u8] = b"GET /x HTTP/1.1\nHost: h\n\n";
            assert_eq!(run(&[bare]), (1, vec![(1, Flaw::BareLf)]));
            let one_line: &[u8] = b"GET /x HTTP/1.1\r\nHost: h\nAccept: */*\r\n\r\n";
            assert_eq!(run(&[one_line]).1, vec![(1, Flaw::BareLf)]);
            let last: &[u8] = b"GET /x HTTP/1.1\r\nHost: h\r\n\n";
            assert_eq!(run(&[last]).1, vec![(1, Flaw::BareLf)]);
            let split: Vec<&[u8]> = bare.chunks(1).collect();
            assert_eq!(run(&split).1, vec![(1, Flaw::BareLf)]);
            let bare_te_cl: &[u8] =
                b"POST /x HTTP/1.1\nHost: h\nContent-Length: 5\nTransfer-Encoding: chunked\n\n0\r\n\r\n";
            assert_eq!(run(&[bare_te_cl]), (1, vec![(1, Flaw::BareLf)]));
            let fold: &[u8] = b"GET /x HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n 2\r\n\r\n";
            assert_eq!(run(&[fold]).1, vec![(1, Flaw::ObsFold)]);
        }

        #[test]
        fn stops_after_a_connect_head() {
            let connect: &[u8] =
                b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n\x16\x03\x01 GET / HTTP/1.1\nX: y\n\n";
            assert_eq!(run(&[connect]), (1, vec![]));
        }

        #[test]
        fn keeps_only_the_earliest_flaws() {
            let bare: &[u8] = b"GET /x HTTP/1.1\nHost: h\n\n";
            let many: Vec<&[u8]> = std::iter::repeat_n(bare, 100).collect();
            let (requests, marked) = run(&many);
            assert_eq!(requests, 100);
            assert_eq!(marked.len(), MAX_FLAWS);
            assert_eq!(marked[0], (1, Flaw::BareLf));
        }
    }
}
