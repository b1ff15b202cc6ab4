//! The response scrubber: when an upstream echoes the credential clavis just
//! injected (raw, base64, percent- or hex-encoded, split across chunks), the
//! bytes are masked before they reach the agent. The mask keeps the length
//! (`[REDACTED]` padded with `*`), so `Content-Length` stays true and SSE
//! keeps streaming; only a possible partial match at a chunk's end is held
//! back, never a whole event.
//!
//! Two stages keep the common case (no echo) cheap without keeping a secret
//! in the clear between requests: [`Anchors`], cached per service, hold only
//! the first [`ANCHOR`] bytes of each encoded form and are searched with
//! SIMD; only a frame where an anchor shows up asks its [`Source`] for the
//! full [`Patterns`] (opened from the sealed store for that one body, wiped
//! when the body ends), and from then on the body is matched exactly.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine;
use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use zeroize::Zeroizing;

use crate::body::{Body, BoxError};
use crate::store::Credentials;

fn hex(bytes: &[u8], digits: &[u8; 16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(digits[(b >> 4) as usize]);
        out.push(digits[(b & 15) as usize]);
    }
    out
}

/// Shorter values (flags, digits, regions) would mask innocent text.
const MIN_SECRET: usize = 10;
const MASK: &[u8] = b"[REDACTED]";

/// The encoded forms of one exchange's secrets; wiped on drop.
pub struct Patterns {
    list: Vec<Zeroizing<Vec<u8>>>,
    longest: usize,
}

impl std::fmt::Debug for Patterns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Patterns({})", self.list.len())
    }
}

impl Patterns {
    pub fn new() -> Patterns {
        Patterns {
            list: Vec::new(),
            longest: 0,
        }
    }

    pub fn from_credentials(creds: &Credentials) -> Patterns {
        let mut p = Patterns::new();
        for name in creds.names() {
            if let Some(value) = creds.get(name) {
                p.add(value.as_bytes());
            }
        }
        p
    }

    /// Adds a secret in every form an echo endpoint might use.
    pub fn add(&mut self, secret: &[u8]) {
        if secret.len() < MIN_SECRET {
            return;
        }
        self.push(secret.to_vec());
        self.push(hex(secret, b"0123456789abcdef"));
        self.push(hex(secret, b"0123456789ABCDEF"));
        let pct = crate::connector::inject::percent_encode(&String::from_utf8_lossy(secret));
        self.push(pct.into_bytes());
        // Base64 at each of the three alignments it can have inside a longer
        // encoded value (e.g. `Basic base64(user:secret)`): only the
        // characters fully determined by the secret.
        let mut padded = Zeroizing::new(Vec::with_capacity(secret.len() + 2));
        for k in 0..3usize {
            padded.clear();
            padded.resize(k, 0);
            padded.extend_from_slice(secret);
            let start = (8 * k).div_ceil(6);
            let end = (8 * (k + secret.len())) / 6;
            for engine in [
                &base64::engine::general_purpose::STANDARD,
                &base64::engine::general_purpose::URL_SAFE,
            ] {
                let mut enc = engine.encode(padded.as_slice()).into_bytes();
                if end > start && end <= enc.len() {
                    enc.truncate(end);
                    enc.drain(..start);
                    self.push(enc);
                }
            }
        }
    }

    fn push(&mut self, form: Vec<u8>) {
        let form = Zeroizing::new(form);
        if form.len() >= MIN_SECRET && !self.list.iter().any(|p| p.as_slice() == form.as_slice()) {
            self.longest = self.longest.max(form.len());
            self.list.push(form);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Masks every complete match in place; returns how many were masked.
    /// Candidates come from a SIMD scan for each pattern's first byte, so a
    /// small frame costs no searcher set-up.
    fn mask(&self, data: &mut [u8]) -> usize {
        let mut hits = 0;
        for p in &self.list {
            let mut at = 0;
            while let Some(i) = memchr::memchr(p[0], &data[at..]) {
                let start = at + i;
                if data.len() - start < p.len() {
                    break;
                }
                if data[start..start + p.len()] == p[..] {
                    for (j, b) in data[start..start + p.len()].iter_mut().enumerate() {
                        *b = MASK.get(j).copied().unwrap_or(b'*');
                    }
                    hits += 1;
                    at = start + p.len();
                } else {
                    at = start + 1;
                }
            }
        }
        hits
    }

    /// The length of the longest suffix of `data` that could begin a match.
    fn partial_suffix(&self, data: &[u8]) -> usize {
        let Some(&last) = data.last() else {
            return 0;
        };
        let mut keep = 0;
        for p in &self.list {
            let max = (p.len() - 1).min(data.len());
            for k in (keep + 1..=max).rev() {
                // Cheap filter first: the candidate prefix must end with `last`.
                if p[k - 1] == last && data[data.len() - k..] == p[..k] {
                    keep = k;
                    break;
                }
            }
        }
        keep
    }
}

impl Default for Patterns {
    fn default() -> Self {
        Patterns::new()
    }
}

/// How many leading bytes of each encoded form the cached index keeps.
pub const ANCHOR: usize = 4;

/// Where an echo could begin: the first [`ANCHOR`] bytes of every form in a
/// [`Patterns`], never more (a form is at least [`MIN_SECRET`] long).
#[derive(Debug, Default)]
pub struct Anchors {
    /// Each anchor's bytes as one native-endian word.
    list: Vec<u32>,
    /// All anchors in one SIMD pass (None on a CPU without the instructions).
    searcher: Option<aho_corasick::packed::Searcher>,
    /// Without it: the distinct first bytes, searched three at a time.
    firsts: Vec<u8>,
}

impl Anchors {
    pub fn of(patterns: &Patterns) -> Anchors {
        let mut anchors = Anchors::default();
        for p in &patterns.list {
            let a = word(&p[..ANCHOR]);
            if !anchors.list.contains(&a) {
                anchors.list.push(a);
            }
            if !anchors.firsts.contains(&p[0]) {
                anchors.firsts.push(p[0]);
            }
        }
        if !anchors.list.is_empty() {
            let mut builder = aho_corasick::packed::Config::new().builder();
            for a in &anchors.list {
                builder.add(a.to_ne_bytes());
            }
            anchors.searcher = builder.build();
        }
        anchors
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether `data` holds an anchor, or ends with the start of one (which
    /// the next frame may complete).
    fn found_in(&self, data: &[u8]) -> bool {
        self.contains_anchor(data) || self.starts_in_tail(data)
    }

    /// Whether a whole anchor (the start of a secret's encoded form) is in
    /// `text`.
    pub fn contains_anchor(&self, text: &[u8]) -> bool {
        match &self.searcher {
            Some(searcher) => searcher.find(text).is_some(),
            None => {
                let hit = |i: usize| {
                    text.get(i..i + ANCHOR)
                        .is_some_and(|w| self.list.contains(&word(w)))
                };
                self.firsts.chunks(3).any(|set| match *set {
                    [a] => memchr::memchr_iter(a, text).any(hit),
                    [a, b] => memchr::memchr2_iter(a, b, text).any(hit),
                    [a, b, c] => memchr::memchr3_iter(a, b, c, text).any(hit),
                    _ => false,
                })
            }
        }
    }

    /// Whether the last 1..ANCHOR bytes are the beginning of an anchor.
    fn starts_in_tail(&self, data: &[u8]) -> bool {
        (1..ANCHOR.min(data.len() + 1)).any(|k| {
            let tail = &data[data.len() - k..];
            self.list.iter().any(|a| a.to_ne_bytes().starts_with(tail))
        })
    }
}

fn word(four: &[u8]) -> u32 {
    let mut w = [0u8; ANCHOR];
    w.copy_from_slice(four);
    u32::from_ne_bytes(w)
}

/// What a scrubbed body needs from its exchange, asked at most once each.
pub trait Source: Send + Sync + 'static {
    /// The exchange's secrets in full, when an anchor shows up. An error
    /// ends the body (nothing unchecked is sent).
    fn patterns(&mut self) -> Result<Patterns, BoxError>;
    /// Reports the first masked echo (`hits` occurrences in that frame).
    fn masked(&self, hits: usize);
}

pin_project_lite::pin_project! {
    /// A response body with the exchange's secrets masked.
    pub struct Scrubbed {
        #[pin]
        inner: Body,
        anchors: Arc<Anchors>,
        source: Box<dyn Source>,
        // Opened the first time a frame shows an anchor; such frames (and
        // the ones after a held partial match) are matched exactly.
        patterns: Option<Patterns>,
        held: BytesMut,
        // Trailers that arrived while bytes were held: sent right after them.
        trailers: Option<http::HeaderMap>,
        reported: bool,
        done: bool,
    }
}

/// Masks the exchange's secrets in a response's headers (a `Location` that
/// repeats a query credential, a debug header echoing the key) and wraps its
/// body to do the same there and in its trailers. With no anchors (no secret
/// long enough to mask) both are left as they are. An error (the secrets
/// could not be opened) means the response must not be sent.
pub fn scrub_response(
    headers: &mut http::HeaderMap,
    body: Body,
    anchors: Arc<Anchors>,
    source: Box<dyn Source>,
) -> Result<Body, BoxError> {
    if anchors.is_empty() {
        return Ok(body);
    }
    let mut scrubbed = Scrubbed {
        inner: body,
        anchors,
        source,
        patterns: None,
        held: BytesMut::new(),
        trailers: None,
        reported: false,
        done: false,
    };
    mask_map(
        headers,
        &scrubbed.anchors,
        &mut scrubbed.patterns,
        scrubbed.source.as_mut(),
        &mut scrubbed.reported,
    )?;
    Ok(http_body_util::BodyExt::boxed(scrubbed))
}

/// Masks every value of `map` holding an anchor (headers, trailers),
/// opening the secrets on the first such value.
fn mask_map(
    map: &mut http::HeaderMap,
    anchors: &Anchors,
    patterns: &mut Option<Patterns>,
    source: &mut dyn Source,
    reported: &mut bool,
) -> Result<(), BoxError> {
    let mut hits = 0;
    for value in map.values_mut() {
        if !anchors.contains_anchor(value.as_bytes()) {
            continue;
        }
        if patterns.is_none() {
            *patterns = Some(source.patterns()?);
        }
        let Some(patterns) = patterns.as_ref() else {
            continue;
        };
        let mut bytes = Zeroizing::new(value.as_bytes().to_vec());
        let n = patterns.mask(&mut bytes);
        if n > 0 {
            // The mask is visible ASCII, so a valid value stays valid.
            *value = http::HeaderValue::from_bytes(&bytes)?;
            hits += n;
        }
    }
    if hits > 0 && !*reported {
        *reported = true;
        source.masked(hits);
    }
    Ok(())
}

impl HttpBody for Scrubbed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if *this.done {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let frame = match this.inner.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(f) => f,
            };
            let (data, last) = match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => (data, false),
                    Err(trailers) => {
                        let Ok(mut trailers) = trailers.into_trailers() else {
                            continue;
                        };
                        if let Err(e) = mask_map(
                            &mut trailers,
                            this.anchors,
                            this.patterns,
                            this.source.as_mut(),
                            this.reported,
                        ) {
                            *this.done = true;
                            return Poll::Ready(Some(Err(e)));
                        }
                        // Trailers end the data: what was held goes first
                        // (no more bytes can complete a match), then them.
                        if this.held.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        *this.done = true;
                        *this.trailers = Some(trailers);
                        let rest = this.held.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => (Bytes::new(), true),
            };
            // The common case: nothing held from the previous frame and
            // nothing here that could start an echo: the frame goes on
            // untouched, without a copy (also after an earlier frame needed
            // the exact match).
            if this.held.is_empty() && !this.anchors.found_in(&data) {
                if last {
                    *this.done = true;
                    return Poll::Ready(None);
                }
                if data.is_empty() {
                    continue;
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if this.patterns.is_none() {
                match this.source.patterns() {
                    Ok(p) => *this.patterns = Some(p),
                    Err(e) => {
                        *this.done = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
            }
            let Some(patterns) = this.patterns.as_ref() else {
                continue;
            };
            this.held.extend_from_slice(&data);
            let hits = patterns.mask(this.held);
            if hits > 0 && !*this.reported {
                *this.reported = true;
                this.source.masked(hits);
            }
            let keep = if last {
                0
            } else {
                patterns.partial_suffix(this.held)
            };
            let ready = this.held.len() - keep;
            if last {
                *this.done = true;
            }
            if ready > 0 {
                return Poll::Ready(Some(Ok(Frame::data(this.held.split_to(ready).freeze()))));
            }
            if last {
                return Poll::Ready(None);
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // Masking keeps lengths, so the upstream's exact size stays exact.
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    const SECRET: &str = "sk-REAL-secret-0123456789";

    /// Every form of [`SECRET`].
    fn forms() -> Patterns {
        let mut p = Patterns::new();
        p.add(SECRET.as_bytes());
        p
    }

    /// `frames` scrubbed for [`SECRET`], its forms given up front; `hits`
    /// receives the reported echo count.
    fn scrubbed(
        frames: Vec<Result<Frame<Bytes>, BoxError>>,
        hits: Arc<std::sync::atomic::AtomicUsize>,
    ) -> Body {
        scrub_response(
            &mut http::HeaderMap::new(),
            http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed(),
            Arc::new(Anchors::of(&forms())),
            Box::new(Given {
                patterns: Some(forms()),
                hits,
            }),
        )
        .unwrap()
    }

    async fn run(chunks: Vec<&'static [u8]>) -> (Vec<u8>, usize) {
        let frames = chunks
            .into_iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let body = scrubbed(frames, hits.clone());
        let out = body.collect().await.unwrap().to_bytes().to_vec();
        (out, hits.load(std::sync::atomic::Ordering::SeqCst))
    }

    struct Given {
        patterns: Option<Patterns>,
        hits: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Source for Given {
        fn patterns(&mut self) -> Result<Patterns, BoxError> {
            Ok(self.patterns.take().expect("asked once"))
        }
        fn masked(&self, hits: usize) {
            self.hits.store(hits, std::sync::atomic::Ordering::SeqCst);
        }
    }

    mod scrub {
        use super::*;

        #[tokio::test]
        async fn masks_raw_split_across_chunks_keeping_length() {
            let (out, hits) = run(vec![
                b"{\"auth\":\"Bearer sk-REAL-se",
                b"cret-0123456789\"}",
            ])
            .await;
            let text = String::from_utf8(out).unwrap();
            assert!(!text.contains("secret-0123"), "{text}");
            assert!(text.contains("[REDACTED]"));
            assert_eq!(
                text.len(),
                "{\"auth\":\"Bearer sk-REAL-secret-0123456789\"}".len()
            );
            assert_eq!(hits, 1);
        }

        #[tokio::test]
        async fn masks_encoded_forms() {
            let b64 = base64::engine::general_purpose::STANDARD.encode(format!("user:{SECRET}"));
            let hex: String = SECRET.bytes().map(|b| format!("{b:02x}")).collect();
            let body = format!("{b64} {hex} sk-REAL-secret-0123456789");
            let leaked: &'static str = Box::leak(body.into_boxed_str());
            let (out, _) = run(vec![leaked.as_bytes()]).await;
            let text = String::from_utf8(out).unwrap();
            assert!(!text.contains(&hex) && !text.contains(SECRET), "{text}");
            let core =
                &base64::engine::general_purpose::STANDARD.encode(format!("user:{SECRET}"))[8..30];
            assert!(!text.contains(core), "{text}");
        }

        #[tokio::test]
        async fn holds_back_only_a_possible_prefix() {
            let p = forms();
            assert_eq!(p.partial_suffix(b"data: {}\n\n"), 0);
            assert_eq!(p.partial_suffix(b"xx sk-RE"), 5);
            let (out, hits) = run(vec![b"data: 1\n\n", b"data: 2\n\n"]).await;
            assert_eq!(out, b"data: 1\n\ndata: 2\n\n");
            assert_eq!(hits, 0);
        }

        #[tokio::test]
        async fn clean_frames_after_an_echo_pass_untouched_again() {
            let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let clean = Bytes::from_static(b"0123 plain data with no anchor at all\n");
            let ptr = clean.as_ptr();
            let frames = vec![
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(
                    b"echo sk-REAL-secret-0123456789 ",
                ))),
                Ok(Frame::data(clean)),
            ];
            let mut body = scrubbed(frames, hits.clone());
            let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
            assert!(!first.windows(6).any(|w| w == b"secret"));
            let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(
                second.as_ptr(),
                ptr,
                "exact matching is per frame, not for the rest of the body"
            );
            assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
        }

        #[tokio::test]
        async fn headers_and_trailers_are_masked_too() {
            let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let pct = crate::connector::inject::percent_encode(SECRET);
            let mut headers = http::HeaderMap::new();
            let location = format!("https://api.example/v1/next?key={SECRET}&page=2");
            headers.insert("location", location.parse().unwrap());
            headers.insert("x-debug-key", pct.parse().unwrap());
            headers.insert("content-type", "application/json".parse().unwrap());
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-echo", SECRET.parse().unwrap());
            let frames = vec![
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"{}"))),
                Ok(Frame::trailers(trailers)),
            ];
            let body = scrub_response(
                &mut headers,
                http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed(),
                Arc::new(Anchors::of(&forms())),
                Box::new(Given {
                    patterns: Some(forms()),
                    hits: hits.clone(),
                }),
            )
            .unwrap();
            let masked = headers["location"].to_str().unwrap();
            assert!(!masked.contains("secret-0123"), "{masked}");
            assert_eq!(masked.len(), location.len(), "lengths are kept");
            assert!(masked.starts_with("https://api.example/v1/next?key=[REDACTED]"));
            assert!(!headers["x-debug-key"].to_str().unwrap().contains("secret"));
            assert_eq!(headers["content-type"], "application/json");
            assert_eq!(
                hits.load(std::sync::atomic::Ordering::SeqCst),
                2,
                "reported once"
            );
            let collected = body.collect().await.unwrap();
            let echo = collected.trailers().unwrap()["x-echo"]
                .to_str()
                .unwrap()
                .to_owned();
            assert!(
                echo.starts_with("[REDACTED]") && !echo.contains("secret"),
                "{echo}"
            );
        }

        #[tokio::test]
        async fn trailers_after_held_bytes_are_kept() {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            let frames = vec![
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"tail sk-REAL"))),
                Ok(Frame::trailers(trailers)),
            ];
            let body = scrubbed(frames, Arc::new(std::sync::atomic::AtomicUsize::new(0)));
            let collected = body.collect().await.unwrap();
            assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
            assert_eq!(collected.to_bytes(), Bytes::from_static(b"tail sk-REAL"));
        }

        #[test]
        fn simd_and_fallback_searches_agree() {
            let simd = Anchors::of(&forms());
            let mut plain = Anchors::of(&forms());
            plain.searcher = None;
            let echo = format!("{{\"k\":\"{SECRET}\"}}");
            let b64 = base64::engine::general_purpose::STANDARD.encode(format!("u:{SECRET}"));
            for text in [
                "nothing here at all, 0.0007 score object",
                echo.as_str(),
                b64.as_str(),
                "ends with the start sk-R",
                "s",
                "",
            ] {
                assert_eq!(
                    simd.found_in(text.as_bytes()),
                    plain.found_in(text.as_bytes()),
                    "{text}"
                );
            }
            assert!(!simd.found_in(b"nothing here at all, 0.0007 score object"));
            assert!(simd.found_in(echo.as_bytes()) && simd.found_in(b64.as_bytes()));
            assert!(simd.found_in(b"ends with the start sk-R"));
        }

        #[tokio::test]
        async fn masks_an_echo_split_inside_its_anchor() {
            // Every split point, including inside the first ANCHOR bytes.
            let text: &'static str = "{\"echo\":\"sk-REAL-secret-0123456789\"}";
            for cut in 1..text.len() {
                let (a, b) = text.as_bytes().split_at(cut);
                let (out, hits) = run(vec![a, b]).await;
                let out = String::from_utf8(out).unwrap();
                assert!(!out.contains("secret-0123"), "cut {cut}: {out}");
                assert_eq!(out.len(), text.len());
                assert_eq!(hits, 1, "cut {cut}");
            }
        }

        #[tokio::test]
        async fn clean_frames_pass_without_a_copy_or_opening_the_secret() {
            let anchors = Arc::new(Anchors::of(&forms()));

            struct Refuse;
            impl Source for Refuse {
                fn patterns(&mut self) -> Result<Patterns, BoxError> {
                    Err("the secret was opened".into())
                }
                fn masked(&self, _: usize) {}
            }
            let chunk = Bytes::from_static(b"data: {\"score\": 0.75, \"skip\": true}\n\n");
            let ptr = chunk.as_ptr();
            let stream = futures_util::stream::iter(vec![Ok::<_, BoxError>(Frame::data(chunk))]);
            let mut headers = http::HeaderMap::new();
            headers.insert(
                "location",
                "https://api.example/next?page=2".parse().unwrap(),
            );
            let mut body = scrub_response(
                &mut headers,
                http_body_util::StreamBody::new(stream).boxed(),
                anchors.clone(),
                Box::new(Refuse),
            )
            .expect("clean headers do not open the secret");
            let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(frame.as_ptr(), ptr, "passed through untouched");
            assert!(body.frame().await.is_none());

            // An anchor in the response does open it, and a failure ends the body.
            let stream = futures_util::stream::iter(vec![Ok::<_, BoxError>(Frame::data(
                Bytes::from_static(b"key sk-REAL-"),
            ))]);
            let mut body = scrub_response(
                &mut http::HeaderMap::new(),
                http_body_util::StreamBody::new(stream).boxed(),
                anchors.clone(),
                Box::new(Refuse),
            )
            .unwrap();
            assert!(body.frame().await.unwrap().is_err());
            // So does one in a header, and the response is refused whole.
            let mut headers = http::HeaderMap::new();
            headers.insert("x-echo", "sk-REAL-secret".parse().unwrap());
            assert!(scrub_response(
                &mut headers,
                crate::body::empty(),
                anchors,
                Box::new(Refuse)
            )
            .is_err());
        }
    }
}
