//! Per-request signers (Kalshi, Coinbase, user HMAC recipes, AWS SigV4): pure functions from credentials and the outgoing request to the headers to set.

pub(crate) mod coinbase;
pub(crate) mod jwt;
pub(crate) mod kalshi;
pub(crate) mod recipe;
pub(crate) mod sigv4;

use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::PrivateKeyDer;
use zeroize::Zeroizing;

use crate::encoding::hex;

/// What a signer sees of the outgoing request, after the agent's auth headers were stripped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SignInput<'a> {
    /// Uppercase.
    pub(crate) method: &'a str,
    /// No port, e.g. `api.coinbase.com`.
    pub(crate) host: &'a str,
    /// Path only, no query, as sent on the wire (percent-encoded).
    pub(crate) path: &'a str,
    /// Raw query without `?`, may be empty.
    pub(crate) query: &'a str,
    /// For SigV4's signed headers (`content-type`).
    pub(crate) headers: &'a http::HeaderMap,
    pub(crate) body: &'a [u8],
    pub(crate) now: SystemTime,
}

/// Headers to set on the request (values marked sensitive by the caller).
pub(crate) type Signed = Vec<(HeaderName, HeaderValue)>;

/// Why a request could not be signed. Messages name fields and headers, never
/// their values, and never quote key material or parser output that could.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SignError {
    #[error("credential field {0:?} is missing or empty")]
    MissingField(String),
    #[error("credential field {field:?} is not a usable key: {reason}")]
    BadKey { field: String, reason: String },
    #[error("the signed value for header {0} is not a valid header value")]
    BadHeaderValue(String),
    #[error("the request body is not UTF-8 but the signing message includes {{body}}")]
    BodyNotUtf8,
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    #[error("the system clock is before 1970")]
    Clock,
    #[error("the signing operation failed")]
    Crypto,
}

impl SignError {
    fn bad_key(field: &str, reason: impl Into<String>) -> SignError {
        SignError::BadKey {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }
}

/// A credential field that must be present and non-empty.
fn required<'c>(
    creds: &'c crate::credentials::Credentials,
    field: &str,
) -> Result<&'c str, SignError> {
    creds
        .get(field)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| SignError::MissingField(field.to_owned()))
}

fn unix_secs(now: SystemTime) -> Result<u64, SignError> {
    Ok(now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| SignError::Clock)?
        .as_secs())
}

fn unix_millis(now: SystemTime) -> Result<u128, SignError> {
    Ok(now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| SignError::Clock)?
        .as_millis())
}

/// A header from a static lowercase name and a value that may not be a valid
/// header value (a key id with a newline); the error names only the header.
fn header(name: &'static str, value: &str) -> Result<(HeaderName, HeaderValue), SignError> {
    let mut value =
        HeaderValue::from_str(value).map_err(|_| SignError::BadHeaderValue(name.to_owned()))?;
    value.set_sensitive(true);
    Ok((HeaderName::from_static(name), value))
}

/// Keys pasted from `.env` files and JSON often carry `\n` as two characters
/// (the Coinbase SDK `unicode_escape`-decodes its secret for this reason).
fn unescape_newlines(text: &str) -> Zeroizing<String> {
    Zeroizing::new(text.replace("\\r", "").replace("\\n", "\n"))
}

/// The first private key in a PEM text. The PEM parser's own errors quote
/// input lines, so only the kind of failure is reported.
fn parse_pem(field: &str, text: &str) -> Result<Zeroizing<PrivateKeyDer<'static>>, SignError> {
    match PrivateKeyDer::from_pem_slice(text.as_bytes()) {
        Ok(der) => Ok(Zeroizing::new(der)),
        Err(pem::Error::NoItemsFound) => Err(SignError::bad_key(
            field,
            "no PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block in the PEM text",
        )),
        Err(pem::Error::Base64Decode(_)) => Err(SignError::bad_key(
            field,
            "the PEM block is not valid base64",
        )),
        Err(_) => Err(SignError::bad_key(field, "malformed PEM text")),
    }
}

/// Wraps a SEC1 `ECPrivateKey` (P-256) in a PKCS#8 envelope: ring only reads
/// EC keys as PKCS#8, and it checks the curve in the SEC1 parameters itself.
fn sec1_p256_to_pkcs8(sec1: &[u8]) -> Zeroizing<Vec<u8>> {
    // AlgorithmIdentifier { id-ecPublicKey, prime256v1 }
    const ALG_ID: &[u8] = &[
        0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
        0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ];
    let mut inner = Zeroizing::new(vec![0x02, 0x01, 0x00]);
    inner.extend_from_slice(ALG_ID);
    der_push(&mut inner, 0x04, sec1);
    let mut out = Zeroizing::new(Vec::with_capacity(inner.len() + 4));
    der_push(&mut out, 0x30, &inner);
    out
}

/// Appends one DER TLV (definite length, short or long form).
fn der_push(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
}

#[cfg(test)]
mod tests {
    use super::*;

    mod helpers {
        use super::*;

        #[test]
        fn der_long_lengths() {
            let mut out = Vec::new();
            der_push(&mut out, 0x04, &[0u8; 200]);
            assert_eq!(&out[..3], &[0x04, 0x81, 200]);
            let mut out = Vec::new();
            der_push(&mut out, 0x04, &[0u8; 300]);
            assert_eq!(&out[..4], &[0x04, 0x82, 0x01, 0x2c]);
        }

        #[test]
        fn pem_errors_do_not_quote_input() {
            let e = parse_pem("k", "-----BEGIN PRIVATE KEY-----\nSECRETSTUFF!!\n").unwrap_err();
            assert!(!e.to_string().contains("SECRET"), "{e}");
            assert!(!format!("{e:?}").contains("SECRET"));
        }
    }
}
