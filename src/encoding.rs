//! The byte encodings several layers need, written once: hex (signatures,
//! ids, fingerprints, key files, the scrubber's echo forms), RFC 3986
//! percent-encoding (query parameters, SigV4, path checks) and query
//! strings built from encoded pairs.

const LOWER: &[u8; 16] = b"0123456789abcdef";
const UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Hex digits of `bytes` appended to `out`, lowercase or uppercase.
pub(crate) fn hex_into(out: &mut Vec<u8>, bytes: &[u8], upper: bool) {
    let digits = if upper { UPPER } else { LOWER };
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(digits[usize::from(b >> 4)]);
        out.push(digits[usize::from(b & 0x0f)]);
    }
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    hex_into(&mut out, bytes, false);
    // Only ASCII digits were pushed.
    String::from_utf8(out).unwrap_or_default()
}

/// Decodes exactly `N` bytes from `2 × N` hex digits (either case).
pub(crate) fn hex_decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    let bytes = text.as_bytes();
    if bytes.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        *slot = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// `%XX` escapes decoded; a malformed escape is kept as literal text.
pub(crate) fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex_at = |j: usize| bytes.get(j).and_then(|c| char::from(*c).to_digit(16));
        match (bytes[i], hex_at(i + 1), hex_at(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// RFC 3986 percent-encoding of everything but unreserved characters.
pub(crate) fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    percent_encode_into(&mut out, bytes);
    out
}

/// [`percent_encode`] appended to `out` (uppercase hex).
pub(crate) fn percent_encode_into(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(UPPER[usize::from(b >> 4)]));
            out.push(char::from(UPPER[usize::from(b & 0x0f)]));
        }
    }
}

/// A request target built by appending query parameters to a path that may
/// already carry a query.
pub(crate) struct Target {
    text: String,
    sep: char,
}

impl Target {
    pub(crate) fn new(path_and_query: &str) -> Target {
        Target {
            sep: if path_and_query.contains('?') {
                '&'
            } else {
                '?'
            },
            text: path_and_query.to_owned(),
        }
    }

    /// Appends `pair` exactly as given (already encoded).
    pub(crate) fn push_raw(&mut self, pair: &str) {
        self.text.push(self.sep);
        self.text.push_str(pair);
        self.sep = '&';
    }

    /// Appends `key=value`, both percent-encoded.
    pub(crate) fn push(&mut self, key: &str, value: &str) {
        self.text.push(self.sep);
        percent_encode_into(&mut self.text, key.as_bytes());
        self.text.push('=');
        percent_encode_into(&mut self.text, value.as_bytes());
        self.sep = '&';
    }

    pub(crate) fn finish(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_bad_digits() {
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
        let mut upper = Vec::new();
        hex_into(&mut upper, &[0xab], true);
        assert_eq!(upper, b"AB");
        assert_eq!(hex_decode::<3>("00ABff"), Some([0x00, 0xab, 0xff]));
        assert_eq!(hex_decode::<2>("00ab0"), None);
        assert_eq!(hex_decode::<1>("zz"), None);
    }

    #[test]
    fn percent_encoding_keeps_unreserved_only() {
        assert_eq!(percent_encode(b"a b&c~"), "a%20b%26c~");
        assert_eq!(percent_decode("k%65y%zz"), b"key%zz");
    }

    #[test]
    fn targets_continue_an_existing_query() {
        let mut t = Target::new("/x?a=1");
        t.push("b c", "d&e");
        assert_eq!(t.finish(), "/x?a=1&b%20c=d%26e");
        let mut t = Target::new("/x");
        t.push_raw("q=1");
        t.push("k", "v");
        assert_eq!(t.finish(), "/x?q=1&k=v");
    }
}
