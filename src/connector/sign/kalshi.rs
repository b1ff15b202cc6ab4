//! Kalshi: KALSHI-ACCESS-* headers, an RSA-PSS-SHA256 or Ed25519 signature over `timestamp_ms + METHOD + path`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, RsaKeyPair, RSA_PSS_SHA256};
use rustls_pki_types::PrivateKeyDer;

use super::{
    header, parse_pem, required, unescape_newlines, unix_millis, SignError, SignInput, Signed,
};
use crate::credentials::Credentials;

const KEY_FIELD: &str = "private_key";

/// A parsed Kalshi API key. No `Debug`: nothing about it needs printing.
pub(crate) enum KalshiKey {
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// Signs `input` with `api_key_id` + `private_key` (PEM: PKCS#1 RSA, or
/// PKCS#8 RSA or Ed25519). Neither the query nor the body is signed.
pub(crate) fn sign(creds: &Credentials, input: &SignInput) -> Result<Signed, SignError> {
    let key_id = required(creds, "api_key_id")?;
    let key = parse_key(required(creds, KEY_FIELD)?)?;
    let timestamp = unix_millis(input.now)?.to_string();
    let signature = key.sign(message(&timestamp, input.method, input.path).as_bytes())?;
    Ok(vec![
        header("kalshi-access-key", key_id)?,
        header("kalshi-access-timestamp", &timestamp)?,
        header("kalshi-access-signature", &STANDARD.encode(signature))?,
    ])
}

/// The signed string. The path includes `/trade-api/v2` and never the query
/// (cut here too in case a caller passes one).
pub(crate) fn message(timestamp_ms: &str, method: &str, path: &str) -> String {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    format!("{timestamp_ms}{method}{path}")
}

pub(crate) fn parse_key(pem: &str) -> Result<KalshiKey, SignError> {
    let der = parse_pem(KEY_FIELD, &unescape_newlines(pem))?;
    let rejected = |kind: &str, e: ring::error::KeyRejected| {
        SignError::bad_key(KEY_FIELD, format!("{kind} key rejected: {e}"))
    };
    match &*der {
        PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der())
            .map(KalshiKey::Rsa)
            .map_err(|e| rejected("RSA", e)),
        PrivateKeyDer::Pkcs8(k) => {
            let bytes = k.secret_pkcs8_der();
            if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes) {
                return Ok(KalshiKey::Ed25519(k));
            }
            RsaKeyPair::from_pkcs8(bytes)
                .map(KalshiKey::Rsa)
                .map_err(|e| rejected("PKCS#8 RSA (or Ed25519)", e))
        }
        _ => Err(SignError::bad_key(
            KEY_FIELD,
            "a Kalshi key is RSA or Ed25519, not EC",
        )),
    }
}

impl KalshiKey {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        match self {
            // ring's PSS uses a salt as long as the digest (32), as Kalshi's SDKs do.
            KalshiKey::Rsa(k) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(&RSA_PSS_SHA256, &SystemRandom::new(), message, &mut sig)
                    .map_err(|_| SignError::Crypto)?;
                Ok(sig)
            }
            KalshiKey::Ed25519(k) => Ok(k.sign(message).as_ref().to_vec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{KeyPair, UnparsedPublicKey, RSA_PSS_2048_8192_SHA256};
    use std::path::Path;
    use std::process::Command;
    use std::time::{Duration, UNIX_EPOCH};

    // The coinbase-advanced-py test seed as PKCS#8 (connectors.md §10.1).
    const ED_PKCS8: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJNAVJ4tKdL2RtQXaVY0uqIASe5MZut9ACdnTfrbqbrQ\n-----END PRIVATE KEY-----\n";
    const KEY_ID: &str = "a952bcbe-ec3b-4b5b-b8f9-11dae589608c";
    const BALANCE: &str = "/trade-api/v2/portfolio/balance";

    fn sign_at(pem: &str, method: &str, path: &str, ms: u64) -> Signed {
        let creds = Credentials::from_pairs([("api_key_id", KEY_ID), (KEY_FIELD, pem)]);
        let headers = http::HeaderMap::new();
        let input = SignInput {
            method,
            host: "external-api.kalshi.com",
            path,
            query: "limit=5",
            headers: &headers,
            body: b"{\"ignored\":true}",
            now: UNIX_EPOCH + Duration::from_millis(ms),
        };
        sign(&creds, &input).unwrap()
    }

    fn value(s: &Signed, name: &str) -> String {
        s.iter()
            .find(|(k, _)| k == name)
            .unwrap()
            .1
            .to_str()
            .unwrap()
            .to_owned()
    }

    /// A throw-away RSA key made by the openssl CLI (ring cannot generate RSA
    /// keys, and no private key is committed): PKCS#8 and PKCS#1 PEM, with
    /// `pub.pem` left in `dir`.
    fn openssl_rsa(dir: &Path) -> Option<(String, String)> {
        let run = |args: &[&str]| {
            Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .ok()
                .filter(|o| o.status.success())
        };
        run(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "k8.pem",
        ])?;
        run(&["pkey", "-in", "k8.pem", "-traditional", "-out", "k1.pem"])?;
        run(&["pkey", "-in", "k8.pem", "-pubout", "-out", "pub.pem"])?;
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        Some((read("k8.pem")?, read("k1.pem")?))
    }

    /// Independent check with openssl that the signature is PSS with a 32-byte salt.
    fn openssl_verifies(dir: &Path, msg: &str, sig: &[u8]) -> bool {
        std::fs::write(dir.join("msg"), msg).unwrap();
        std::fs::write(dir.join("sig"), sig).unwrap();
        Command::new("openssl")
            .args([
                "dgst",
                "-sha256",
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:32",
            ])
            .args(["-verify", "pub.pem", "-signature", "sig", "msg"])
            .current_dir(dir)
            .output()
            .is_ok_and(|o| o.status.success())
    }

    mod message {
        use super::*;

        #[test]
        fn matches_the_documented_string_and_drops_the_query() {
            assert_eq!(
                message("1703123456789", "GET", BALANCE),
                "1703123456789GET/trade-api/v2/portfolio/balance"
            );
            assert_eq!(
                message("1", "GET", "/trade-api/v2/portfolio/orders?limit=5"),
                "1GET/trade-api/v2/portfolio/orders"
            );
        }
    }

    mod parse_key {
        use super::*;

        #[test]
        fn refuses_ec_and_garbage_without_quoting() {
            let ec = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIKwf3Uox30cRWzRBOPoPOH5p0Gpb0Dt8zUKXUEM5fMkGoAoGCCqGSM49\nAwEHoUQDQgAEbAtpLlSZYVOwYICz+uEyxcS29vRIujiES/gQ1DC7FV4zK4JuYE9v\nqDyGZQYjdXHLM7I6f/QnnOITL+dXYWBHRA==\n-----END EC PRIVATE KEY-----\n";
            assert!(parse_key(ec).is_err());
            let e = parse_key("not a pem SECRETVALUE").err().unwrap();
            assert!(!e.to_string().contains("SECRETVALUE"), "{e}");
            let bad =
                "-----BEGIN RSA PRIVATE KEY-----\nMIIBSECRET\n-----END RSA PRIVATE KEY-----\n";
            let e = parse_key(bad).err().unwrap();
            assert!(!format!("{e} {e:?}").contains("SECRET"), "{e}");
        }
    }

    mod sign {
        use super::*;

        #[test]
        fn ed25519_matches_the_vector() {
            let s = sign_at(ED_PKCS8, "GET", BALANCE, 1_703_123_456_789);
            assert_eq!(value(&s, "kalshi-access-key"), KEY_ID);
            assert_eq!(value(&s, "kalshi-access-timestamp"), "1703123456789");
            assert_eq!(
                value(&s, "kalshi-access-signature"),
                "Ze3rYcguuKvIP95hvheeKOtgdqcTyOaQa6at1CK2kqo7LCgBnZZwZ7JDmpUlm0C4Lcr2+ydmfBq4FbHCAsxTCQ=="
            );
            // Literal "\n" sequences (a key pasted into one line) parse too.
            let one_line = ED_PKCS8.replace('\n', "\\n");
            assert_eq!(sign_at(&one_line, "GET", BALANCE, 1_703_123_456_789), s);
        }

        #[test]
        fn rsa_pss_verifies_for_pkcs8_and_pkcs1() {
            let dir = tempfile::tempdir().unwrap();
            let dir = dir.path();
            let Some((pkcs8, pkcs1)) = openssl_rsa(dir) else {
                eprintln!("openssl CLI unavailable: RSA sign-then-verify skipped");
                return;
            };
            for pem in [&pkcs8, &pkcs1] {
                let KalshiKey::Rsa(pair) = parse_key(pem).unwrap() else {
                    panic!("not parsed as RSA")
                };
                let s = sign_at(
                    pem,
                    "POST",
                    "/trade-api/v2/portfolio/orders",
                    1_703_123_456_789,
                );
                assert_eq!(value(&s, "kalshi-access-timestamp"), "1703123456789");
                let sig = STANDARD
                    .decode(value(&s, "kalshi-access-signature"))
                    .unwrap();
                assert_eq!(sig.len(), 256);
                let msg = "1703123456789POST/trade-api/v2/portfolio/orders";
                UnparsedPublicKey::new(&RSA_PSS_2048_8192_SHA256, pair.public_key().as_ref())
                    .verify(msg.as_bytes(), &sig)
                    .unwrap();
                assert!(
                    openssl_verifies(dir, msg, &sig),
                    "openssl rejects the PSS signature"
                );
            }
        }

        #[test]
        fn missing_fields_are_named() {
            let creds = Credentials::from_pairs([("api_key_id", KEY_ID)]);
            let headers = http::HeaderMap::new();
            let input = SignInput {
                method: "GET",
                host: "h",
                path: BALANCE,
                query: "",
                headers: &headers,
                body: b"",
                now: UNIX_EPOCH,
            };
            let e = sign(&creds, &input).unwrap_err();
            assert!(matches!(e, SignError::MissingField(ref f) if f == "private_key"));
        }
    }
}
