//! RFC 6238 time-based one-time passwords, from a `totp_secret` credential
//! (base32, or an `otpauth://` URI) with optional `totp_digits`,
//! `totp_period`, `totp_algorithm`. The seed never leaves the sealed store;
//! only the current code does.

use std::time::{SystemTime, UNIX_EPOCH};

use ring::hmac;

use crate::credentials::Credentials;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum TotpError {
    #[error("the service has no totp_secret")]
    NoSecret,
    #[error("totp_secret is not valid base32")]
    BadSecret,
    #[error("{0}")]
    BadParameter(String),
}

/// A TOTP generator; the key bytes are wiped on drop.
pub(crate) struct Totp {
    key: zeroize::Zeroizing<Vec<u8>>,
    pub(crate) digits: u32,
    pub(crate) period: u64,
    pub(crate) algorithm: Algorithm,
}

impl std::fmt::Debug for Totp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Totp({:?}, {} digits, {}s)",
            self.algorithm, self.digits, self.period
        )
    }
}

impl Totp {
    pub(crate) fn from_credentials(creds: &Credentials) -> Result<Totp, TotpError> {
        let secret = creds.get("totp_secret").ok_or(TotpError::NoSecret)?;
        let mut digits = creds.get("totp_digits").map(str::to_owned);
        let mut period = creds.get("totp_period").map(str::to_owned);
        let mut algorithm = creds.get("totp_algorithm").map(str::to_owned);
        let mut seed = secret.to_owned();
        if let Some(rest) = secret.strip_prefix("otpauth://") {
            let query = rest.split_once('?').map_or("", |(_, q)| q);
            let mut found = None;
            for pair in query.split('&') {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                match k.to_ascii_lowercase().as_str() {
                    "secret" => found = Some(v.to_owned()),
                    "digits" => digits = Some(v.to_owned()),
                    "period" => period = Some(v.to_owned()),
                    "algorithm" => algorithm = Some(v.to_owned()),
                    _ => {}
                }
            }
            seed = found.ok_or(TotpError::BadSecret)?;
        }
        let key = zeroize::Zeroizing::new(base32_decode(&seed).ok_or(TotpError::BadSecret)?);
        let digits = match digits.as_deref() {
            None => 6,
            Some(d) => d
                .parse::<u32>()
                .ok()
                .filter(|d| (6..=10).contains(d))
                .ok_or_else(|| TotpError::BadParameter("totp_digits must be 6 to 10".into()))?,
        };
        let period = match period.as_deref() {
            None => 30,
            Some(p) => p
                .parse::<u64>()
                .ok()
                .filter(|p| (1..=3600).contains(p))
                .ok_or_else(|| {
                    TotpError::BadParameter("totp_period must be 1 to 3600 seconds".into())
                })?,
        };
        let algorithm = match algorithm.as_deref().map(str::to_ascii_uppercase).as_deref() {
            None | Some("SHA1") => Algorithm::Sha1,
            Some("SHA256") => Algorithm::Sha256,
            Some("SHA512") => Algorithm::Sha512,
            Some(_) => {
                return Err(TotpError::BadParameter(
                    "totp_algorithm must be SHA1, SHA256 or SHA512".into(),
                ))
            }
        };
        Ok(Totp {
            key,
            digits,
            period,
            algorithm,
        })
    }

    /// The code for a Unix time, zero-padded to `digits`.
    pub(crate) fn code_at(&self, unix: u64) -> String {
        let counter = unix / self.period;
        let alg = match self.algorithm {
            Algorithm::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            Algorithm::Sha256 => hmac::HMAC_SHA256,
            Algorithm::Sha512 => hmac::HMAC_SHA512,
        };
        let tag = hmac::sign(&hmac::Key::new(alg, &self.key), &counter.to_be_bytes());
        let mac = tag.as_ref();
        let offset = (mac[mac.len() - 1] & 0x0f) as usize;
        let bin = u32::from_be_bytes([
            mac[offset] & 0x7f,
            mac[offset + 1],
            mac[offset + 2],
            mac[offset + 3],
        ]);
        let code = u64::from(bin) % 10u64.pow(self.digits);
        format!("{code:0width$}", width = self.digits as usize)
    }

    /// `(code, seconds until it changes)` now.
    pub(crate) fn now(&self) -> (String, u64) {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        (self.code_at(unix), self.period - unix % self.period)
    }
}

/// RFC 4648 base32, case-insensitive, padding and spaces ignored.
pub(crate) fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut buffer, mut bits) = (0u64, 0u32);
    for c in text.chars().filter(|c| !matches!(c, '=' | ' ' | '-')) {
        let v = match c.to_ascii_uppercase() {
            c @ 'A'..='Z' => c as u64 - 'A' as u64,
            c @ '2'..='7' => c as u64 - '2' as u64 + 26,
            _ => return None,
        };
        buffer = (buffer << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base32(bytes: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        let mut out = String::new();
        let (mut buf, mut bits) = (0u64, 0);
        for b in bytes {
            buf = (buf << 8) | *b as u64;
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                out.push(A[((buf >> bits) & 31) as usize] as char);
            }
        }
        if bits > 0 {
            out.push(A[((buf << (5 - bits)) & 31) as usize] as char);
        }
        out
    }

    fn totp(seed: &[u8], alg: &str) -> Totp {
        let creds = Credentials::from_pairs([
            ("totp_secret", base32(seed).as_str()),
            ("totp_digits", "8"),
            ("totp_algorithm", alg),
        ]);
        Totp::from_credentials(&creds).unwrap()
    }

    mod code_at {
        use super::*;

        /// RFC 6238 Appendix B.
        #[test]
        fn rfc6238_vectors() {
            let sha1 = totp(b"12345678901234567890", "SHA1");
            let sha256 = totp(b"12345678901234567890123456789012", "SHA256");
            let sha512 = totp(
                b"1234567890123456789012345678901234567890123456789012345678901234",
                "SHA512",
            );
            let table = [
                (59, "94287082", "46119246", "90693936"),
                (1111111109, "07081804", "68084774", "25091201"),
                (1111111111, "14050471", "67062674", "99943326"),
                (1234567890, "89005924", "91819424", "93441116"),
                (2000000000, "69279037", "90698825", "38618901"),
                (20000000000, "65353130", "77737706", "47863826"),
            ];
            for (t, a, b, c) in table {
                assert_eq!(sha1.code_at(t), a, "sha1 {t}");
                assert_eq!(sha256.code_at(t), b, "sha256 {t}");
                assert_eq!(sha512.code_at(t), c, "sha512 {t}");
            }
        }

        #[test]
        fn otpauth_uri_and_defaults() {
            let uri = format!(
                "otpauth://totp/x:y?secret={}&issuer=x",
                base32(b"12345678901234567890")
            );
            let t =
                Totp::from_credentials(&Credentials::from_pairs([("totp_secret", uri.as_str())]))
                    .unwrap();
            assert_eq!((t.digits, t.period), (6, 30));
            assert_eq!(t.code_at(59), "287082");
        }

        #[test]
        fn bad_inputs_are_named() {
            let bad = Credentials::from_pairs([("totp_secret", "not base32!")]);
            assert_eq!(
                Totp::from_credentials(&bad).unwrap_err(),
                TotpError::BadSecret
            );
            let bad = Credentials::from_pairs([("totp_secret", "GEZDGNBV"), ("totp_digits", "3")]);
            assert!(matches!(
                Totp::from_credentials(&bad),
                Err(TotpError::BadParameter(_))
            ));
            assert_eq!(
                Totp::from_credentials(&Credentials::default()).unwrap_err(),
                TotpError::NoSecret
            );
        }
    }
}
