//! Coinbase: a fresh CDP JWT (ES256 or EdDSA) per request, or the legacy CB-ACCESS-* HMAC when `api_secret` is a plain string.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use rustls_pki_types::PrivateKeyDer;
use zeroize::Zeroizing;

use super::{
    header, hex, parse_pem, required, sec1_p256_to_pkcs8, unescape_newlines, unix_secs, SignError,
    SignInput, Signed,
};
use crate::credentials::Credentials;

const SECRET: &str = "api_secret";
/// The CDP JWT lifetime the SDK and docs use.
const JWT_LIFETIME_SECS: u64 = 120;
/// Shortest base64 text treated as an Ed25519 key rather than an HMAC secret:
/// legacy HMAC secrets are 32 characters, a base64 seed is 44.
const MIN_BASE64_KEY_LEN: usize = 40;

/// A parsed CDP signing key. No `Debug`: nothing about it needs printing.
pub(crate) enum CdpKey {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

impl CdpKey {
    fn alg(&self) -> &'static str {
        match self {
            CdpKey::Es256(_) => "ES256",
            CdpKey::EdDsa(_) => "EdDSA",
        }
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        match self {
            CdpKey::Es256(k) => Ok(k
                .sign(&SystemRandom::new(), message)
                .map_err(|_| SignError::Crypto)?
                .as_ref()
                .to_vec()),
            CdpKey::EdDsa(k) => Ok(k.sign(message).as_ref().to_vec()),
        }
    }
}

/// Signs `input` with the scheme the form of `api_secret` selects: EC PEM →
/// ES256 JWT, Ed25519 PEM or base64 → EdDSA JWT, anything else → legacy HMAC.
pub(crate) fn sign(creds: &Credentials, input: &SignInput) -> Result<Signed, SignError> {
    let key_name = required(creds, "api_key")?;
    let secret = required(creds, SECRET)?;
    let now = unix_secs(input.now)?;
    match parse_secret(secret)? {
        Some(key) => {
            let uri = format!("{} {}{}", input.method, input.host, input.path);
            let jwt = jwt_with_nonce(key_name, &key, Some(&uri), now, &random_nonce()?)?;
            let value = Zeroizing::new(format!("Bearer {}", jwt.as_str()));
            Ok(vec![header("authorization", &value)?])
        }
        None => legacy_hmac(key_name, secret, now, input),
    }
}

/// Cheap check of the scheme without parsing the key: the legacy HMAC scheme
/// signs the body, so the proxy must buffer it. Mirrors [`parse_secret`].
pub(crate) fn is_legacy_hmac_secret(secret: &str) -> bool {
    !looks_like_key(unescape_newlines(secret).trim())
}

/// PEM, or 40+ base64 characters (an Ed25519 key): the JWT scheme. Decided
/// by form alone, so the proxy can plan without parsing the key twice.
fn looks_like_key(trimmed: &str) -> bool {
    trimmed.starts_with("-----BEGIN")
        || (trimmed.len() >= MIN_BASE64_KEY_LEN
            && trimmed
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')))
}

/// `None` means "plain string": the legacy HMAC scheme. A secret that looks
/// like a PEM or base64 key but does not parse is an error, as in the SDK,
/// rather than silently becoming an HMAC secret that upstream will reject.
pub(crate) fn parse_secret(secret: &str) -> Result<Option<CdpKey>, SignError> {
    let text = unescape_newlines(secret);
    let trimmed = text.trim();
    if trimmed.starts_with("-----BEGIN") {
        return parse_pem_key(trimmed).map(Some);
    }
    if !looks_like_key(trimmed) {
        return Ok(None);
    }
    let raw = Zeroizing::new(STANDARD.decode(trimmed).map_err(|_| {
        SignError::bad_key(
            SECRET,
            "looks like a base64 Ed25519 key but is not valid base64",
        )
    })?);
    // Like the SDK: a 64-byte secret is seed‖public key, only the seed is used.
    let seed = match raw.len() {
        32 | 64 => &raw[..32],
        n => {
            return Err(SignError::bad_key(
                SECRET,
                format!("base64 decodes to {n} bytes; an Ed25519 key is 32 (seed) or 64 (seed and public key) bytes"),
            ))
        }
    };
    let key = Ed25519KeyPair::from_seed_unchecked(seed)
        .map_err(|e| SignError::bad_key(SECRET, format!("Ed25519 seed rejected: {e}")))?;
    Ok(Some(CdpKey::EdDsa(key)))
}

fn parse_pem_key(pem: &str) -> Result<CdpKey, SignError> {
    let der = parse_pem(SECRET, pem)?;
    let rng = SystemRandom::new();
    match &*der {
        PrivateKeyDer::Sec1(sec1) => {
            let pkcs8 = sec1_p256_to_pkcs8(sec1.secret_sec1_der());
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
                .map(CdpKey::Es256)
                .map_err(|e| SignError::bad_key(SECRET, format!("EC P-256 key rejected: {e}")))
        }
        PrivateKeyDer::Pkcs8(p) => {
            let bytes = p.secret_pkcs8_der();
            if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes) {
                return Ok(CdpKey::EdDsa(k));
            }
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, bytes, &rng)
                .map(CdpKey::Es256)
                .map_err(|_| {
                    SignError::bad_key(SECRET, "PKCS#8 key is neither Ed25519 nor EC P-256")
                })
        }
        _ => Err(SignError::bad_key(
            SECRET,
            "a CDP key is EC P-256 or Ed25519, not RSA",
        )),
    }
}

/// 32 random bytes as 64 hex characters, like the SDK's `secrets.token_hex()`.
fn random_nonce() -> Result<String, SignError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| SignError::Crypto)?;
    Ok(hex(&bytes))
}

/// A CDP JWT. Header keys sorted and payload keys in the SDK's order, both
/// compact, so fixed inputs give the documented bytes. `uri` is `None` for
/// the WebSocket form.
pub(crate) fn jwt_with_nonce(
    key_name: &str,
    key: &CdpKey,
    uri: Option<&str>,
    nbf: u64,
    nonce: &str,
) -> Result<String, SignError> {
    let quote = |s: &str| serde_json::to_string(s).map_err(|_| SignError::Crypto);
    let head = format!(
        r#"{{"alg":"{}","kid":{},"nonce":{},"typ":"JWT"}}"#,
        key.alg(),
        quote(key_name)?,
        quote(nonce)?
    );
    let mut claims = format!(
        r#"{{"sub":{},"iss":"cdp","nbf":{nbf},"exp":{}"#,
        quote(key_name)?,
        nbf + JWT_LIFETIME_SECS
    );
    if let Some(uri) = uri {
        claims.push_str(&format!(r#","uri":{}"#, quote(uri)?));
    }
    claims.push('}');
    let mut jwt = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(head),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = key.sign(jwt.as_bytes())?;
    jwt.push('.');
    jwt.push_str(&URL_SAFE_NO_PAD.encode(signature));
    Ok(jwt)
}

/// Legacy Advanced Trade HMAC: key = the secret's raw bytes, lowercase hex of
/// `timestamp + METHOD + path + body`; v3 signs the path without its query.
fn legacy_hmac(
    key_name: &str,
    secret: &str,
    now: u64,
    input: &SignInput,
) -> Result<Signed, SignError> {
    let timestamp = now.to_string();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = ring::hmac::Context::with_key(&key);
    for part in [
        timestamp.as_bytes(),
        input.method.as_bytes(),
        input.path.as_bytes(),
        input.body,
    ] {
        ctx.update(part);
    }
    let signature = hex(ctx.sign().as_ref());
    Ok(vec![
        header("cb-access-key", key_name)?,
        header("cb-access-timestamp", &timestamp)?,
        header("cb-access-sign", &signature)?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ED25519};
    use std::time::{Duration, UNIX_EPOCH};

    // Fake keys from the coinbase-advanced-py tests (connectors.md §10.1).
    const KEY: &str = "organizations/test-organization/apiKeys/test-api-key";
    const EC: &str = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIKwf3Uox30cRWzRBOPoPOH5p0Gpb0Dt8zUKXUEM5fMkGoAoGCCqGSM49\nAwEHoUQDQgAEbAtpLlSZYVOwYICz+uEyxcS29vRIujiES/gQ1DC7FV4zK4JuYE9v\nqDyGZQYjdXHLM7I6f/QnnOITL+dXYWBHRA==\n-----END EC PRIVATE KEY-----\n";
    const ED_64: &str =
        "k0BUni0p0vZG1BdpVjS6ogBJ7kxm630AJ2dN+tuputDOKsRAwgyrpEQLeBtS1znTmzPX6Xr2eOWpzx6nW8knkA==";
    const ED_PKCS8: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJNAVJ4tKdL2RtQXaVY0uqIASe5MZut9ACdnTfrbqbrQ\n-----END PRIVATE KEY-----\n";
    const ED_SEED: &str = "k0BUni0p0vZG1BdpVjS6ogBJ7kxm630AJ2dN+tuputA=";
    const ED_PUB: &str = "zirEQMIMq6REC3gbUtc505sz1+l69njlqc8ep1vJJ5A=";
    const LEGACY_SECRET: &str = "M4009eFnOoPwhNoMwJlsAHgIgleGVFPl";
    const PATH: &str = "/api/v3/brokerage/accounts";

    fn input<'a>(
        method: &'a str,
        path: &'a str,
        body: &'a [u8],
        headers: &'a http::HeaderMap,
        secs: u64,
    ) -> SignInput<'a> {
        SignInput {
            method,
            host: "api.coinbase.com",
            path,
            query: "limit=5",
            headers,
            body,
            now: UNIX_EPOCH + Duration::from_secs(secs),
        }
    }

    fn sign_with(secret: &str, secs: u64) -> Signed {
        let creds = Credentials::from_pairs([("api_key", KEY), ("api_secret", secret)]);
        let h = http::HeaderMap::new();
        sign(&creds, &input("GET", PATH, b"", &h, secs)).unwrap()
    }

    /// Splits a JWT into its decoded header, claims, signing input and signature.
    fn decode(jwt: &str) -> (serde_json::Value, serde_json::Value, String, Vec<u8>) {
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let json = |p: &str| serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap();
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        (
            json(parts[0]),
            json(parts[1]),
            format!("{}.{}", parts[0], parts[1]),
            sig,
        )
    }

    fn bearer(signed: &Signed) -> String {
        assert_eq!(signed.len(), 1);
        assert_eq!(signed[0].0, "authorization");
        let v = signed[0].1.to_str().unwrap();
        v.strip_prefix("Bearer ").unwrap().to_owned()
    }

    mod parse_secret {
        use super::*;

        #[test]
        fn ec_sec1_pem_is_es256_even_with_literal_backslash_n() {
            assert!(matches!(parse_secret(EC), Ok(Some(CdpKey::Es256(_)))));
            let escaped = EC.replace('\n', "\\n");
            assert!(matches!(parse_secret(&escaped), Ok(Some(CdpKey::Es256(_)))));
        }

        #[test]
        fn ec_pkcs8_pem_is_es256() {
            let rng = SystemRandom::new();
            let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            let pem = format!(
                "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                STANDARD.encode(doc.as_ref())
            );
            assert!(matches!(parse_secret(&pem), Ok(Some(CdpKey::Es256(_)))));
        }

        #[test]
        fn all_ed25519_encodings_give_the_same_key() {
            for secret in [
                ED_64,
                ED_PKCS8,
                ED_SEED,
                "k0BUni0p0vZG1BdpVjS6ogBJ7kxm630AJ2dN+tuputA=\n",
            ] {
                match parse_secret(secret) {
                    Ok(Some(CdpKey::EdDsa(k))) => {
                        assert_eq!(STANDARD.encode(k.public_key().as_ref()), ED_PUB, "{secret}")
                    }
                    _ => panic!("{secret} is not an Ed25519 key"),
                }
            }
        }

        #[test]
        fn wrong_length_base64_is_refused() {
            for n in [31usize, 33, 65] {
                let secret = STANDARD.encode(vec![7u8; n]);
                let e = parse_secret(&secret).err().unwrap();
                assert!(e.to_string().contains(&format!("{n} bytes")), "{e}");
            }
        }

        #[test]
        fn malformed_pem_is_refused_without_quoting_it() {
            let broken = EC.replace("MHcCAQEE", "MHcC!!EE");
            let e = parse_secret(&broken).err().unwrap();
            assert!(!e.to_string().contains("MHcC"), "{e}");
            let rsa_like = "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----\n";
            assert!(parse_secret(rsa_like).is_err());
        }

        #[test]
        fn plain_strings_are_hmac_secrets() {
            for s in ["bad_secret", LEGACY_SECRET] {
                assert!(matches!(parse_secret(s), Ok(None)), "{s}");
            }
        }
    }

    mod jwt_with_nonce {
        use super::*;

        #[test]
        fn eddsa_matches_the_documented_vector() {
            let Ok(Some(key)) = parse_secret(ED_SEED) else {
                panic!("seed did not parse")
            };
            let uri = format!("GET api.coinbase.com{PATH}");
            let jwt =
                jwt_with_nonce(KEY, &key, Some(&uri), 1_700_000_000, &"0".repeat(64)).unwrap();
            assert_eq!(jwt, "eyJhbGciOiJFZERTQSIsImtpZCI6Im9yZ2FuaXphdGlvbnMvdGVzdC1vcmdhbml6YXRpb24vYXBpS2V5cy90ZXN0LWFwaS1rZXkiLCJub25jZSI6IjAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAiLCJ0eXAiOiJKV1QifQ.eyJzdWIiOiJvcmdhbml6YXRpb25zL3Rlc3Qtb3JnYW5pemF0aW9uL2FwaUtleXMvdGVzdC1hcGkta2V5IiwiaXNzIjoiY2RwIiwibmJmIjoxNzAwMDAwMDAwLCJleHAiOjE3MDAwMDAxMjAsInVyaSI6IkdFVCBhcGkuY29pbmJhc2UuY29tL2FwaS92My9icm9rZXJhZ2UvYWNjb3VudHMifQ.mzotK28Xii4EuzURc7DBeP1Xp7RKlamKqtWi2hEkA61-KO5MztIfYzA_F8DhZhb6tb1ypbl-0e-kWsXEKNypCg");
        }

        #[test]
        fn websocket_form_has_no_uri() {
            let Ok(Some(key)) = parse_secret(EC) else {
                panic!("EC key did not parse")
            };
            let (_, claims, _, _) = decode(&jwt_with_nonce(KEY, &key, None, 5, "ab").unwrap());
            assert!(claims.get("uri").is_none());
            assert_eq!(claims["exp"], 125);
        }
    }

    mod sign {
        use super::*;

        #[test]
        fn es256_jwt_has_sdk_fields_and_verifies() {
            let Ok(Some(CdpKey::Es256(pair))) = parse_secret(EC) else {
                panic!("EC key did not parse")
            };
            let jwt = bearer(&sign_with(EC, 1_700_000_000));
            let (head, claims, signed, sig) = decode(&jwt);
            assert_eq!(head["alg"], "ES256");
            assert_eq!(head["kid"], KEY);
            assert_eq!(head["typ"], "JWT");
            let nonce = head["nonce"].as_str().unwrap();
            assert!(nonce.len() == 64 && nonce.bytes().all(|b| b.is_ascii_hexdigit()));
            assert_eq!(claims["sub"], KEY);
            assert_eq!(claims["iss"], "cdp");
            assert_eq!(claims["nbf"], 1_700_000_000);
            assert_eq!(claims["exp"], 1_700_000_120);
            // The query (limit=5) is not part of the uri claim.
            assert_eq!(
                claims["uri"],
                "GET api.coinbase.com/api/v3/brokerage/accounts"
            );
            assert_eq!(sig.len(), 64, "raw r||s");
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, pair.public_key().as_ref())
                .verify(signed.as_bytes(), &sig)
                .unwrap();
        }

        #[test]
        fn eddsa_jwt_from_every_encoding_verifies() {
            let public = STANDARD.decode(ED_PUB).unwrap();
            for secret in [ED_64, ED_PKCS8, ED_SEED] {
                let (head, claims, signed, sig) = decode(&bearer(&sign_with(secret, 1)));
                assert_eq!(head["alg"], "EdDSA");
                assert_eq!(head["kid"], KEY);
                assert_eq!(
                    claims["uri"],
                    "GET api.coinbase.com/api/v3/brokerage/accounts"
                );
                UnparsedPublicKey::new(&ED25519, &public)
                    .verify(signed.as_bytes(), &sig)
                    .unwrap();
            }
        }

        #[test]
        fn nonce_is_fresh_per_request() {
            let a = decode(&bearer(&sign_with(ED_SEED, 1))).0;
            let b = decode(&bearer(&sign_with(ED_SEED, 1))).0;
            assert_ne!(a["nonce"], b["nonce"]);
        }

        #[test]
        fn legacy_hmac_matches_vectors() {
            let creds = Credentials::from_pairs([
                ("api_key", "g3BLnUYMOQsIo9V5"),
                ("api_secret", LEGACY_SECRET),
            ]);
            let h = http::HeaderMap::new();
            let get = sign(&creds, &input("GET", PATH, b"", &h, 1_667_500_462)).unwrap();
            let value = |s: &Signed, n: &str| {
                s.iter()
                    .find(|(k, _)| k == n)
                    .unwrap()
                    .1
                    .to_str()
                    .unwrap()
                    .to_owned()
            };
            assert_eq!(value(&get, "cb-access-key"), "g3BLnUYMOQsIo9V5");
            assert_eq!(value(&get, "cb-access-timestamp"), "1667500462");
            assert_eq!(
                value(&get, "cb-access-sign"),
                "240bfe4ba26bcbe0d5e54efa1a3a5e21e565aabee8b9407ef5565f1d81cf5178"
            );
            let body = br#"{"product_id":"BTC-USD"}"#;
            let post = sign(
                &creds,
                &input("POST", "/api/v3/brokerage/orders", body, &h, 1_667_500_462),
            )
            .unwrap();
            assert_eq!(
                value(&post, "cb-access-sign"),
                "cdc8b1b079fe55ed0c55de1cc430ef977a36808b19f7d3bd39b22c8185c35d63"
            );
        }

        #[test]
        fn missing_fields_are_named() {
            let creds = Credentials::from_pairs([("api_key", KEY)]);
            let h = http::HeaderMap::new();
            let e = sign(&creds, &input("GET", PATH, b"", &h, 1)).unwrap_err();
            assert!(matches!(e, SignError::MissingField(ref f) if f == "api_secret"));
        }
    }
}
