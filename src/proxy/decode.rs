//! Compressed answers, decoded so the scrubber sees an echoed credential
//! inside a gzip, deflate, br or zstd body too (SPEC §3.1).
//!
//! Why the agent gets the decoded body rather than the upstream's
//! compressed bytes: a side copy decoded "just to detect" would have to
//! hold back each compressed byte until everything it decodes to has been
//! checked, and a streaming decoder does not say when that is. A zstd block
//! is decoded only once the whole block arrived, yet its literals may sit
//! verbatim in the block's first bytes; deflate and brotli have stored
//! blocks, and every decoder keeps a few bits of a symbol back. Released
//! early, those bytes carry the secret past the check, and sent bytes cannot
//! be recalled. Re-encoding what was checked would cost a compressor's CPU
//! for a hop that is usually localhost. So the body is decoded as it
//! streams, in bounded steps, and what the agent receives is that decoded
//! stream, checked and masked like any identity body: `Content-Encoding`
//! and `Content-Length` go, a strong `ETag` becomes weak (the
//! representation changed). Every byte the agent receives is a byte the
//! scrubber saw.
//!
//! Bounds: a step decodes into a fixed buffer (memory per answer is the
//! decoder's window, at most 8 MiB for zstd as RFC 8878 allows HTTP, 16 MiB
//! for brotli without large windows, 32 KiB for deflate, plus the buffer),
//! and the decoded bytes may exceed [`FREE_DECODED`] only by [`MAX_RATIO`]
//! times the compressed bytes read (a decompression bomb ends the body with
//! an error, as a broken upstream would). A body that does not decode ends
//! the same way: what cannot be checked is not sent.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::{header, HeaderMap, HeaderValue};
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::body::BoxError;

/// Decoded bytes allowed whatever the ratio: every answer up to this size
/// decodes, however well it compressed.
pub(crate) const FREE_DECODED: u64 = 10 * 1024 * 1024;

/// Past [`FREE_DECODED`], at most this many decoded bytes per compressed
/// byte read (SPEC §3.1: no input costs clavis 100 times what it costs its
/// sender).
pub(crate) const MAX_RATIO: u64 = 100;

/// Decoded bytes per step (one frame to the agent at most).
const STEP: usize = 32 * 1024;

/// zstd windows beyond 8 MiB are refused (RFC 8878 §3.1.1.1.2 for HTTP).
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// The longest gzip header kept while it arrives (names and comments).
const MAX_GZIP_HEADER: usize = 64 * 1024;

/// A content coding clavis decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coding {
    Gzip,
    Deflate,
    Brotli,
    Zstd,
}

/// A `Content-Encoding` clavis cannot decode (an unknown coding, or
/// several stacked): the answer cannot be checked, so it is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unsupported(pub(crate) String);

/// The coding to undo before scanning an answer with these headers, if
/// any, and the headers rewritten for the decoded body it becomes.
pub(crate) fn prepare(headers: &mut HeaderMap) -> Result<Option<Coding>, Unsupported> {
    let mut codings = Vec::new();
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let text = value
            .to_str()
            .map_err(|_| Unsupported("<not text>".into()))?;
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if !token.eq_ignore_ascii_case("identity") {
                codings.push(token.to_ascii_lowercase());
            }
        }
    }
    let coding = match codings.as_slice() {
        [] => return Ok(None),
        [one] => match one.as_str() {
            "gzip" | "x-gzip" => Coding::Gzip,
            "deflate" => Coding::Deflate,
            "br" => Coding::Brotli,
            "zstd" => Coding::Zstd,
            other => return Err(Unsupported(other.to_owned())),
        },
        several => return Err(Unsupported(several.join(", "))),
    };
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::CONTENT_LENGTH);
    if let Some(etag) = headers.get(header::ETAG) {
        if !etag.as_bytes().starts_with(b"W/") {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(etag.as_bytes());
            match HeaderValue::from_bytes(&weak) {
                Ok(v) => headers.insert(header::ETAG, v),
                Err(_) => headers.remove(header::ETAG),
            };
        }
    }
    Ok(Some(coding))
}

/// Why a compressed body stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("the {0:?} body does not decode; ended rather than passed unchecked")]
    Corrupt(Coding),
    #[error("the {coding:?} body decodes to more than {FREE_DECODED} bytes and {MAX_RATIO} times its compressed size ({compressed} bytes so far): a decompression bomb, ended")]
    Bomb { coding: Coding, compressed: u64 },
}

/// One coding's streaming decoder: each step consumes some input and
/// produces at most the output buffer's length.
pub(crate) struct Decoder(Codec);

enum Codec {
    Gzip(Gzip),
    /// The `deflate` coding is zlib (RFC 1950); some servers send raw
    /// deflate. Which one is known after two bytes.
    Deflate {
        start: Vec<u8>,
        inflate: Option<flate2::Decompress>,
    },
    Brotli(Box<BrotliState>),
    Zstd(Box<zstd::stream::raw::Decoder<'static>>),
}

type BrotliState = brotli_decompressor::BrotliState<
    brotli_decompressor::StandardAlloc,
    brotli_decompressor::StandardAlloc,
    brotli_decompressor::StandardAlloc,
>;

/// gzip (RFC 1952): a header, deflate, an 8-byte trailer; members may
/// follow one another.
enum Gzip {
    Header(Vec<u8>),
    Body(Box<flate2::Decompress>),
    Trailer(usize),
}

impl Decoder {
    pub(crate) fn new(coding: Coding) -> Result<Decoder, DecodeError> {
        Ok(Decoder(match coding {
            Coding::Gzip => Codec::Gzip(Gzip::Header(Vec::new())),
            Coding::Deflate => Codec::Deflate {
                start: Vec::new(),
                inflate: None,
            },
            Coding::Brotli => {
                use brotli_decompressor::StandardAlloc;
                // new_strict: RFC 7932 windows only (large windows reach 1 GiB).
                Codec::Brotli(Box::new(BrotliState::new_strict(
                    StandardAlloc::default(),
                    StandardAlloc::default(),
                    StandardAlloc::default(),
                )))
            }
            Coding::Zstd => {
                use zstd::stream::raw::DParameter;
                let mut d = zstd::stream::raw::Decoder::new()
                    .map_err(|_| DecodeError::Corrupt(Coding::Zstd))?;
                d.set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))
                    .map_err(|_| DecodeError::Corrupt(Coding::Zstd))?;
                Codec::Zstd(Box::new(d))
            }
        }))
    }

    fn coding(&self) -> Coding {
        match self.0 {
            Codec::Gzip(_) => Coding::Gzip,
            Codec::Deflate { .. } => Coding::Deflate,
            Codec::Brotli(_) => Coding::Brotli,
            Codec::Zstd(_) => Coding::Zstd,
        }
    }

    /// One step: `(consumed, produced)`. `(0, 0)` means it needs more
    /// input. A decoder that panics on hostile input (a bug of its own)
    /// counts as corrupt input, never as a crash.
    fn step(&mut self, input: &[u8], out: &mut [u8]) -> Result<(usize, usize), DecodeError> {
        let coding = self.coding();
        let stepped =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &mut self.0 {
                Codec::Gzip(g) => g.step(input, out),
                Codec::Deflate { start, inflate } => deflate_step(start, inflate, input, out),
                Codec::Brotli(state) => brotli_step(state, input, out),
                Codec::Zstd(d) => zstd_step(d, input, out),
            }));
        match stepped {
            Ok(Some(progress)) => Ok(progress),
            Ok(None) | Err(_) => Err(DecodeError::Corrupt(coding)),
        }
    }
}

/// Runs inflate once; `None` when the data is not deflate.
fn inflate(
    d: &mut flate2::Decompress,
    input: &[u8],
    out: &mut [u8],
) -> Option<(usize, usize, bool)> {
    let (before_in, before_out) = (d.total_in(), d.total_out());
    let status = d
        .decompress(input, out, flate2::FlushDecompress::None)
        .ok()?;
    let consumed = usize::try_from(d.total_in() - before_in).ok()?;
    let produced = usize::try_from(d.total_out() - before_out).ok()?;
    Some((consumed, produced, status == flate2::Status::StreamEnd))
}

impl Gzip {
    fn step(&mut self, input: &[u8], out: &mut [u8]) -> Option<(usize, usize)> {
        match self {
            Gzip::Header(buf) => {
                // `buf` never holds more than MAX_GZIP_HEADER (else: refused).
                let take = input.len().min(MAX_GZIP_HEADER + 1 - buf.len());
                let before = buf.len();
                buf.extend_from_slice(&input[..take]);
                match gzip_header_len(buf) {
                    Ok(Some(len)) => {
                        *self = Gzip::Body(Box::new(flate2::Decompress::new(false)));
                        Some((len - before, 0))
                    }
                    Ok(None) if buf.len() > MAX_GZIP_HEADER => None,
                    Ok(None) => Some((take, 0)),
                    Err(()) => None,
                }
            }
            Gzip::Body(d) => {
                let (consumed, produced, end) = inflate(d, input, out)?;
                if end {
                    *self = Gzip::Trailer(8);
                }
                Some((consumed, produced))
            }
            Gzip::Trailer(left) => {
                let n = (*left).min(input.len());
                *left -= n;
                if *left == 0 {
                    // Another member may follow.
                    *self = Gzip::Header(Vec::new());
                }
                Some((n, 0))
            }
        }
    }
}

/// The length of a complete gzip member header at the start of `buf`,
/// `None` while it is incomplete, `Err` if it is no gzip header.
fn gzip_header_len(buf: &[u8]) -> Result<Option<usize>, ()> {
    const FHCRC: u8 = 2;
    const FEXTRA: u8 = 4;
    const FNAME: u8 = 8;
    const FCOMMENT: u8 = 16;
    let check = |i: usize, want: u8| match buf.get(i) {
        Some(b) if *b == want => Ok(()),
        Some(_) => Err(()),
        None => Ok(()),
    };
    check(0, 0x1f)?;
    check(1, 0x8b)?;
    check(2, 8)?;
    let Some(&flags) = buf.get(3) else {
        return Ok(None);
    };
    if flags & 0xe0 != 0 {
        return Err(());
    }
    let mut at = 10;
    if buf.len() < at {
        return Ok(None);
    }
    if flags & FEXTRA != 0 {
        let Some(len) = buf.get(at..at + 2) else {
            return Ok(None);
        };
        at += 2 + usize::from(u16::from_le_bytes([len[0], len[1]]));
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            let Some(rest) = buf.get(at..) else {
                return Ok(None);
            };
            let Some(nul) = memchr::memchr(0, rest) else {
                return Ok(None);
            };
            at += nul + 1;
        }
    }
    if flags & FHCRC != 0 {
        at += 2;
    }
    Ok((buf.len() >= at).then_some(at))
}

fn deflate_step(
    start: &mut Vec<u8>,
    inflate_state: &mut Option<flate2::Decompress>,
    input: &[u8],
    out: &mut [u8],
) -> Option<(usize, usize)> {
    if inflate_state.is_none() {
        // Two bytes tell zlib (CM 8, a header checksum) from raw deflate.
        let take = input.len().min(2 - start.len());
        if start.len() + take < 2 {
            start.extend_from_slice(&input[..take]);
            return Some((take, 0));
        }
        let first = start.first().copied().unwrap_or(input[0]);
        let second = if start.is_empty() { input[1] } else { input[0] };
        let zlib = first & 0x0f == 8 && (u16::from(first) << 8 | u16::from(second)) % 31 == 0;
        let mut d = flate2::Decompress::new(zlib);
        // A byte kept from an earlier frame goes in first; `input` follows.
        if !start.is_empty() {
            let (consumed, _, _) = inflate(&mut d, start, out)?;
            if consumed != start.len() {
                return None;
            }
            start.clear();
        }
        *inflate_state = Some(d);
    }
    let d = inflate_state.as_mut()?;
    let (consumed, produced, _) = inflate(d, input, out)?;
    Some((consumed, produced))
}

fn brotli_step(state: &mut BrotliState, input: &[u8], out: &mut [u8]) -> Option<(usize, usize)> {
    use brotli_decompressor::BrotliResult;
    let (mut available_in, mut input_offset) = (input.len(), 0);
    let (mut available_out, mut output_offset, mut total) = (out.len(), 0, 0);
    let result = brotli_decompressor::BrotliDecompressStream(
        &mut available_in,
        &mut input_offset,
        input,
        &mut available_out,
        &mut output_offset,
        out,
        &mut total,
        state,
    );
    match result {
        BrotliResult::ResultFailure => None,
        _ => Some((input_offset, output_offset)),
    }
}

fn zstd_step(
    d: &mut zstd::stream::raw::Decoder<'static>,
    input: &[u8],
    out: &mut [u8],
) -> Option<(usize, usize)> {
    use zstd::stream::raw::Operation;
    let status = d.run_on_buffers(input, out).ok()?;
    Some((status.bytes_read, status.bytes_written))
}

pin_project_lite::pin_project! {
    /// A compressed body, decoded step by step as it arrives.
    pub(crate) struct Decoded<B> {
        #[pin]
        inner: B,
        decoder: Decoder,
        pending: Bytes,
        buf: Box<[u8]>,
        compressed: u64,
        decoded: u64,
        trailers: Option<HeaderMap>,
        inner_done: bool,
        done: bool,
    }
}

impl<B> Decoded<B> {
    pub(crate) fn new(inner: B, decoder: Decoder) -> Decoded<B> {
        Decoded {
            inner,
            decoder,
            pending: Bytes::new(),
            buf: vec![0u8; STEP].into_boxed_slice(),
            compressed: 0,
            decoded: 0,
            trailers: None,
            inner_done: false,
            done: false,
        }
    }
}

impl<B> HttpBody for Decoded<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if *this.done {
                return Poll::Ready(None);
            }
            // Decode what arrived (and, at the end, what the decoder still
            // holds) before reading more.
            if !this.pending.is_empty() || *this.inner_done {
                let stepped = this.decoder.step(&this.pending[..], &mut this.buf[..]);
                let (consumed, produced) = match stepped {
                    Ok(p) => p,
                    Err(e) => return Poll::Ready(Some(Err(ended(this.done, e)))),
                };
                this.pending.advance(consumed);
                *this.compressed += consumed as u64;
                *this.decoded += produced as u64;
                let allowed =
                    FREE_DECODED.saturating_add(this.compressed.saturating_mul(MAX_RATIO));
                if *this.decoded > allowed {
                    let e = DecodeError::Bomb {
                        coding: this.decoder.coding(),
                        compressed: *this.compressed,
                    };
                    return Poll::Ready(Some(Err(ended(this.done, e))));
                }
                if produced > 0 {
                    let data = Bytes::copy_from_slice(&this.buf[..produced]);
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                if consumed > 0 {
                    continue;
                }
                if *this.inner_done {
                    // Nothing more comes out: the end (a truncated stream
                    // ends here too; what decoded was checked).
                    *this.done = true;
                    return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
                }
                if !this.pending.is_empty() {
                    // Input left that the decoder will not take: after the
                    // end of its stream (trailing garbage) or stuck.
                    let e = DecodeError::Corrupt(this.decoder.coding());
                    return Poll::Ready(Some(Err(ended(this.done, e))));
                }
            }
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => *this.inner_done = true,
                Poll::Ready(Some(Err(e))) => {
                    *this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => *this.pending = data,
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            *this.trailers = Some(trailers);
                        }
                        *this.inner_done = true;
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

fn ended(done: &mut bool, e: DecodeError) -> BoxError {
    *done = true;
    tracing::warn!(error = %e, "compressed answer ended");
    e.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Decodes `encoded` fed in `chunk`-byte frames.
    async fn decode(coding: Coding, encoded: &[u8], chunk: usize) -> Result<Vec<u8>, String> {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = encoded
            .chunks(chunk.max(1))
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let decoder = Decoder::new(coding).map_err(|e| e.to_string())?;
        let decoded = Decoded::new(body, decoder);
        match decoded.collect().await {
            Ok(c) => Ok(c.to_bytes().to_vec()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn sample() -> Vec<u8> {
        let mut s = Vec::new();
        for i in 0..5000 {
            s.extend_from_slice(
                format!("{{\"i\":{i},\"echo\":\"sk-REAL-secret-0123456789\"}}\n").as_bytes(),
            );
        }
        s
    }

    mod prepare {
        use super::*;

        #[test]
        fn names_the_coding_and_rewrites_the_headers() {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_ENCODING, "GZIP".parse().unwrap());
            h.insert(header::CONTENT_LENGTH, "42".parse().unwrap());
            h.insert(header::ETAG, "\"abc\"".parse().unwrap());
            assert_eq!(prepare(&mut h), Ok(Some(Coding::Gzip)));
            assert!(!h.contains_key(header::CONTENT_ENCODING));
            assert!(!h.contains_key(header::CONTENT_LENGTH));
            assert_eq!(h[header::ETAG], "W/\"abc\"");
            for (value, coding) in [
                ("br", Coding::Brotli),
                ("zstd", Coding::Zstd),
                ("deflate", Coding::Deflate),
                ("identity, x-gzip", Coding::Gzip),
            ] {
                let mut h = HeaderMap::new();
                h.insert(header::CONTENT_ENCODING, value.parse().unwrap());
                assert_eq!(prepare(&mut h), Ok(Some(coding)), "{value}");
            }
        }

        #[test]
        fn identity_is_nothing_to_do_and_the_rest_is_refused() {
            let mut h = HeaderMap::new();
            assert_eq!(prepare(&mut h), Ok(None));
            h.insert(header::CONTENT_ENCODING, "identity".parse().unwrap());
            h.insert(header::CONTENT_LENGTH, "5".parse().unwrap());
            assert_eq!(prepare(&mut h), Ok(None));
            assert!(h.contains_key(header::CONTENT_LENGTH));
            for bad in ["compress", "gzip, br", "aes128gcm"] {
                let mut h = HeaderMap::new();
                h.insert(header::CONTENT_ENCODING, bad.parse().unwrap());
                assert!(prepare(&mut h).is_err(), "{bad}");
                assert!(h.contains_key(header::CONTENT_ENCODING), "{bad}: untouched");
            }
        }
    }

    mod decoded {
        use super::*;

        #[tokio::test]
        async fn every_coding_in_any_chunking() {
            let data = sample();
            let br = brotli_encode(&data);
            let zst = zstd_encode(&data);
            let cases = [
                (Coding::Gzip, gzip(&data)),
                (Coding::Deflate, zlib(&data)),
                (Coding::Deflate, raw_deflate(&data)),
                (Coding::Brotli, br),
                (Coding::Brotli, brotli_stored(&data)),
                (Coding::Zstd, zst),
            ];
            for (coding, encoded) in cases {
                for chunk in [1, 7, 1000, encoded.len()] {
                    let out = decode(coding, &encoded, chunk).await.unwrap();
                    assert!(out == data, "{coding:?} in {chunk}-byte frames");
                }
            }
        }

        #[tokio::test]
        async fn concatenated_gzip_members_and_header_fields() {
            let mut two = gzip(b"first ");
            two.extend_from_slice(&gzip(b"second"));
            assert_eq!(
                decode(Coding::Gzip, &two, 3).await.unwrap(),
                b"first second"
            );
            // FEXTRA, FNAME and FCOMMENT, by hand.
            let body = raw_deflate(b"named");
            let mut g = vec![
                0x1f,
                0x8b,
                8,
                4 | 8 | 16,
                0,
                0,
                0,
                0,
                0,
                255,
                3,
                0,
                b'a',
                b'b',
                b'c',
            ];
            g.extend_from_slice(b"file.txt\0a comment\0");
            g.extend_from_slice(&body);
            g.extend_from_slice(&[0; 8]);
            assert_eq!(decode(Coding::Gzip, &g, 2).await.unwrap(), b"named");
        }

        #[tokio::test]
        async fn garbage_and_truncation_end_the_body() {
            assert!(decode(Coding::Gzip, b"not gzip at all", 4).await.is_err());
            assert!(decode(Coding::Brotli, &[0xff; 64], 4).await.is_err());
            assert!(decode(Coding::Zstd, b"definitely not zstd", 4)
                .await
                .is_err());
            let mut trailing = gzip(b"ok");
            trailing.extend_from_slice(b"junk after the member");
            assert!(decode(Coding::Gzip, &trailing, 5).await.is_err());
            // A truncated stream ends quietly after what decoded.
            let full = gzip(&sample());
            let out = decode(Coding::Gzip, &full[..full.len() / 2], 100)
                .await
                .unwrap();
            assert!(sample().starts_with(&out) && !out.is_empty());
        }

        #[tokio::test]
        async fn a_decompression_bomb_is_cut_off() {
            // 64 MiB of zeros: zstd turns it into a few KiB.
            let zeros = vec![0u8; 64 * 1024 * 1024];
            let bomb = zstd_encode(&zeros);
            assert!(bomb.len() < 100_000, "{}", bomb.len());
            let e = decode(Coding::Zstd, &bomb, 4096).await.unwrap_err();
            assert!(e.contains("decompression bomb"), "{e}");
            let e = decode(Coding::Gzip, &gzip(&zeros), 4096).await.unwrap_err();
            assert!(e.contains("decompression bomb"), "{e}");
            // Up to FREE_DECODED anything goes.
            let small = vec![0u8; 8 * 1024 * 1024];
            assert_eq!(
                decode(Coding::Zstd, &zstd_encode(&small), 4096)
                    .await
                    .unwrap()
                    .len(),
                small.len()
            );
        }

        #[tokio::test]
        async fn a_zstd_window_beyond_8_mib_is_refused() {
            let mut e = zstd::stream::raw::Encoder::new(3).unwrap();
            use zstd::stream::raw::{CParameter, Operation};
            e.set_parameter(CParameter::WindowLog(27)).unwrap();
            e.set_parameter(CParameter::EnableLongDistanceMatching(true))
                .unwrap();
            let data = sample();
            let mut out = vec![0u8; data.len() + 1024];
            let mut input = zstd::stream::raw::InBuffer::around(&data);
            let mut output = zstd::stream::raw::OutBuffer::around(&mut out[..]);
            e.run(&mut input, &mut output).unwrap();
            e.finish(&mut output, true).unwrap();
            let n = output.pos();
            assert!(decode(Coding::Zstd, &out[..n], 1000).await.is_err());
        }

        #[tokio::test]
        async fn output_comes_in_bounded_steps() {
            let data = vec![b'a'; 1024 * 1024];
            let encoded = gzip(&data);
            let frames = vec![Ok::<_, BoxError>(Frame::data(Bytes::from(encoded)))];
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
            let mut decoded = Decoded::new(body, Decoder::new(Coding::Gzip).unwrap());
            let mut total = 0;
            while let Some(frame) = decoded.frame().await {
                let data = frame.unwrap().into_data().unwrap();
                assert!(data.len() <= STEP);
                total += data.len();
            }
            assert_eq!(total, data.len());
        }
    }

    fn zstd_encode(data: &[u8]) -> Vec<u8> {
        use zstd::stream::raw::{Encoder, InBuffer, Operation, OutBuffer};
        let mut e = Encoder::new(3).unwrap();
        let mut out = vec![0u8; data.len() / 2 + 1024];
        let mut output = OutBuffer::around(&mut out[..]);
        let mut input = InBuffer::around(data);
        while input.pos() < data.len() {
            e.run(&mut input, &mut output).unwrap();
        }
        while e.finish(&mut output, true).unwrap() > 0 {}
        let n = output.pos();
        out.truncate(n);
        out
    }

    fn brotli_encode(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 9, 22);
        w.write_all(data).unwrap();
        drop(w);
        out
    }

    /// Brotli as uncompressed meta-blocks (RFC 7932 §9.2): the secret sits
    /// verbatim in the compressed bytes, the case a side copy decoded "just
    /// to detect" could not catch in time.
    fn brotli_stored(data: &[u8]) -> Vec<u8> {
        let mut w = BitWriter::default();
        // WBITS = 16: a single 0 bit.
        w.bits(0, 1);
        for block in data.chunks(65536) {
            w.bits(0, 1); // ISLAST = 0
            let len = block.len() - 1;
            w.bits(0, 2); // MNIBBLES = 4
            w.bits(len as u64, 16);
            w.bits(1, 1); // ISUNCOMPRESSED
            w.align();
            w.bytes.extend_from_slice(block);
        }
        w.bits(1, 1); // ISLAST
        w.bits(1, 1); // ISLASTEMPTY
        w.align();
        w.bytes
    }

    #[derive(Default)]
    struct BitWriter {
        bytes: Vec<u8>,
        acc: u64,
        n: u32,
    }

    impl BitWriter {
        fn bits(&mut self, value: u64, count: u32) {
            self.acc |= value << self.n;
            self.n += count;
            while self.n >= 8 {
                self.bytes.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }

        fn align(&mut self) {
            if self.n > 0 {
                self.bytes.push(self.acc as u8);
                self.acc = 0;
                self.n = 0;
            }
        }
    }
}
