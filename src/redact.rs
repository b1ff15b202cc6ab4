//! Redaction patterns: every encoded form of a secret an upstream might echo
//! (raw, hex, percent, base64 at each alignment), and the [`Anchors`] that
//! find where one could begin without holding the secret itself: only the
//! first [`ANCHOR`] bytes of each form, searched with SIMD. The response
//! scrubber (`proxy::scrub`) and the search audit (`admin::entries`) use
//! them.

use base64::Engine;
use zeroize::Zeroizing;

use crate::credentials::Credentials;
use crate::encoding;

/// Shorter values (flags, digits, regions) would mask innocent text.
const MIN_SECRET: usize = 10;
const MASK: &[u8] = b"[REDACTED]";

/// The encoded forms of one exchange's secrets; wiped on drop.
pub(crate) struct Patterns {
    list: Vec<Zeroizing<Vec<u8>>>,
    longest: usize,
}

impl std::fmt::Debug for Patterns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Patterns({})", self.list.len())
    }
}

impl Patterns {
    pub(crate) fn new() -> Patterns {
        Patterns {
            list: Vec::new(),
            longest: 0,
        }
    }

    pub(crate) fn from_credentials(creds: &Credentials) -> Patterns {
        let mut p = Patterns::new();
        for name in creds.names() {
            if let Some(value) = creds.get(name) {
                p.add(value.as_bytes());
            }
        }
        p
    }

    /// Adds a secret in every form an echo endpoint might use.
    pub(crate) fn add(&mut self, secret: &[u8]) {
        if secret.len() < MIN_SECRET {
            return;
        }
        self.push(secret.to_vec());
        for upper in [false, true] {
            let mut form = Vec::with_capacity(secret.len() * 2);
            encoding::hex_into(&mut form, secret, upper);
            self.push(form);
        }
        self.push(encoding::percent_encode(secret).into_bytes());
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

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Masks every complete match in place; returns how many were masked.
    /// Candidates come from a SIMD scan for each pattern's first byte, so a
    /// small frame costs no searcher set-up.
    pub(crate) fn mask(&self, data: &mut [u8]) -> usize {
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
    pub(crate) fn partial_suffix(&self, data: &[u8]) -> usize {
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
pub(crate) const ANCHOR: usize = 4;

/// Where an echo could begin: the first [`ANCHOR`] bytes of every form in a
/// [`Patterns`], never more (a form is at least [`MIN_SECRET`] long).
#[derive(Debug, Default)]
pub(crate) struct Anchors {
    /// Each anchor's bytes as one native-endian word.
    list: Vec<u32>,
    /// All anchors in one SIMD pass (None on a CPU without the instructions).
    searcher: Option<aho_corasick::packed::Searcher>,
    /// Without it: the distinct first bytes, searched three at a time.
    firsts: Vec<u8>,
}

impl Anchors {
    pub(crate) fn of(patterns: &Patterns) -> Anchors {
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

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether `data` holds an anchor, or ends with the start of one (which
    /// the next frame may complete).
    pub(crate) fn found_in(&self, data: &[u8]) -> bool {
        self.contains_anchor(data) || self.starts_in_tail(data)
    }

    /// Whether a whole anchor (the start of a secret's encoded form) is in
    /// `text`.
    pub(crate) fn contains_anchor(&self, text: &[u8]) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "sk-REAL-secret-0123456789";

    /// Every form of [`SECRET`].
    fn forms() -> Patterns {
        let mut p = Patterns::new();
        p.add(SECRET.as_bytes());
        p
    }

    mod anchors {
        use super::*;

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
    }
}
