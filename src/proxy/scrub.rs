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
//!
//! A compressed body (gzip, deflate, br, zstd) is decoded first, as it
//! streams and bounded (`proxy::decode`), and the agent gets the decoded
//! bytes the scrubber checked.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use zeroize::Zeroizing;

use super::decode::{Decoded, Decoder};
use crate::body::{Body, BoxError};
use crate::redact::{Anchors, Patterns};
use crate::store::StoreError;

/// What a scrubber needs from its exchange, asked at most once each.
pub(crate) trait Source: Send + Sync + 'static {
    /// The exchange's secrets in full, when an anchor shows up. An error
    /// ends the body (nothing unchecked is sent).
    fn patterns(&mut self) -> Result<Patterns, StoreError>;
    /// Reports the first masked echo (`hits` occurrences in that frame).
    fn masked(&self, hits: usize);
}

/// One response's scrubbing: its anchors, where the full patterns come
/// from, and what was opened and reported already.
pub(crate) struct Scrubber {
    anchors: Arc<Anchors>,
    source: Box<dyn Source>,
    // Opened the first time a value or frame shows an anchor; such frames
    // (and the ones after a held partial match) are matched exactly.
    patterns: Option<Patterns>,
    reported: bool,
}

impl Scrubber {
    pub(crate) fn new(anchors: Arc<Anchors>, source: Box<dyn Source>) -> Scrubber {
        Scrubber {
            anchors,
            source,
            patterns: None,
            reported: false,
        }
    }

    /// The full patterns, opened on first need.
    fn patterns(&mut self) -> Result<&Patterns, StoreError> {
        if self.patterns.is_none() {
            self.patterns = Some(self.source.patterns()?);
        }
        self.patterns
            .as_ref()
            .ok_or(StoreError::Corrupt("scrubber patterns".into()))
    }

    fn report(&mut self, hits: usize) {
        if hits > 0 && !self.reported {
            self.reported = true;
            self.source.masked(hits);
        }
    }

    /// Masks every header (or trailer) value holding an echo (a `Location`
    /// that repeats a query credential, a debug header echoing the key).
    /// An error (the secrets could not be opened) means the response must
    /// not be sent.
    pub(crate) fn mask_headers(&mut self, map: &mut http::HeaderMap) -> Result<(), StoreError> {
        let mut hits = 0;
        for value in map.values_mut() {
            if !self.anchors.contains_anchor(value.as_bytes()) {
                continue;
            }
            let mut bytes = Zeroizing::new(value.as_bytes().to_vec());
            let n = self.patterns()?.mask(&mut bytes);
            if n > 0 {
                // The mask is visible ASCII, so a valid value stays valid;
                // were it not, the value goes rather than the echo.
                *value = http::HeaderValue::from_bytes(&bytes)
                    .unwrap_or_else(|_| http::HeaderValue::from_static("[REDACTED]"));
                hits += n;
            }
        }
        self.report(hits);
        Ok(())
    }

    /// The body with echoes masked, in its frames and its trailers. A
    /// compressed body comes with its `decoder`: it is decoded as it
    /// streams and the decoded bytes are what is scanned and sent (see
    /// `proxy::decode` for why the compressed bytes never go on).
    pub(crate) fn wrap<B>(self, body: B, decoder: Option<Decoder>) -> Body
    where
        B: HttpBody<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        match decoder {
            None => http_body_util::BodyExt::boxed(self.scrubbed(body)),
            Some(d) => http_body_util::BodyExt::boxed(self.scrubbed(Decoded::new(body, d))),
        }
    }

    fn scrubbed<B>(self, body: B) -> Scrubbed<B> {
        Scrubbed {
            inner: body,
            scrubber: self,
            held: BytesMut::new(),
            trailers: None,
            done: false,
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body with the exchange's secrets masked.
    struct Scrubbed<B> {
        #[pin]
        inner: B,
        scrubber: Scrubber,
        held: BytesMut,
        // Trailers that arrived while bytes were held: sent right after them.
        trailers: Option<http::HeaderMap>,
        done: bool,
    }
}

impl<B> HttpBody for Scrubbed<B>
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
                        if let Err(e) = this.scrubber.mask_headers(&mut trailers) {
                            *this.done = true;
                            return Poll::Ready(Some(Err(e.into())));
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
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => (Bytes::new(), true),
            };
            // The common case: nothing held from the previous frame and
            // nothing here that could start an echo: the frame goes on
            // untouched, without a copy (also after an earlier frame needed
            // the exact match).
            if this.held.is_empty() && !this.scrubber.anchors.found_in(&data) {
                if last {
                    *this.done = true;
                    return Poll::Ready(None);
                }
                if data.is_empty() {
                    continue;
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            let patterns = match this.scrubber.patterns() {
                Ok(p) => p,
                Err(e) => {
                    *this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
            };
            this.held.extend_from_slice(&data);
            let hits = patterns.mask(this.held);
            let keep = if last {
                0
            } else {
                patterns.partial_suffix(this.held)
            };
            this.scrubber.report(hits);
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
    use base64::Engine;
    use http_body_util::BodyExt;

    /// Headers masked, body wrapped: what an exchange's relay does.
    fn scrub_response(
        headers: &mut http::HeaderMap,
        body: Body,
        anchors: Arc<Anchors>,
        source: Box<dyn Source>,
    ) -> Result<Body, StoreError> {
        let mut scrubber = Scrubber::new(anchors, source);
        scrubber.mask_headers(headers)?;
        Ok(scrubber.wrap(body, None))
    }

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
        fn patterns(&mut self) -> Result<Patterns, StoreError> {
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
            let pct = crate::encoding::percent_encode(SECRET.as_bytes());
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
                fn patterns(&mut self) -> Result<Patterns, StoreError> {
                    Err(StoreError::Corrupt("the secret was opened".into()))
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
