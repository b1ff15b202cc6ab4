//! Secret material: zeroized on drop, redacted in `Debug`/`Display`, compared in constant time.

use std::fmt;

use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

/// A secret value. Its bytes are wiped when it is dropped and it never prints.
///
/// Reading it is explicit (`expose`), so every place that touches plaintext is
/// easy to find with grep.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T: Zeroize>(T);

impl<T: Zeroize> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T: Zeroize> Drop for Secret<T> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<T: Zeroize> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl<T: Zeroize> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl From<String> for Secret<String> {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret<String> {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

/// A scratch buffer for plaintext that is wiped on drop.
pub type Plain = Zeroizing<Vec<u8>>;

/// SHA-256 of a token, as stored for agents and the admin: the token itself is
/// never kept.
#[derive(Clone, Copy, Eq)]
pub struct TokenDigest([u8; 32]);

impl PartialEq for TokenDigest {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

impl TokenDigest {
    pub fn of(token: &[u8]) -> Self {
        TokenDigest(Sha256::digest(token).into())
    }

    /// Parses 64 hex characters (the `token_sha256` config form).
    pub fn from_hex(hex: &str) -> Option<Self> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(TokenDigest(out))
    }

    /// Constant-time comparison of a presented token with this digest.
    pub fn matches(&self, token: &[u8]) -> bool {
        ct_eq(&self.0, &TokenDigest::of(token).0)
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenDigest([REDACTED])")
    }
}

/// Compares two byte strings without an early exit on the first difference.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    mod secret {
        use super::*;

        #[test]
        fn debug_and_display_are_redacted() {
            let s = Secret::from("sk-live-123");
            assert_eq!(format!("{s:?}"), "[REDACTED]");
            assert_eq!(format!("{s}"), "[REDACTED]");
        }
    }

    mod token_digest {
        use super::*;

        #[test]
        fn matches_only_the_token() {
            let d = TokenDigest::of(b"hunter2");
            assert!(d.matches(b"hunter2"));
            assert!(!d.matches(b"hunter3"));
            assert!(!d.matches(b""));
        }

        #[test]
        fn parses_hex_form() {
            let hex = "f52fbd32b2b3b86ff88ef6c490628285f482af15ddcb29541f94bcf526a3f6c7";
            let d = TokenDigest::from_hex(hex).unwrap();
            assert!(d.matches(b"hunter2"));
            assert!(TokenDigest::from_hex("zz").is_none());
        }
    }
}
