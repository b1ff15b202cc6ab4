//! RS256 JSON Web Tokens (RFC 7515, RFC 7519) that token sources sign to
//! ask for an access token: Google service-account assertions (RFC 7523)
//! and GitHub App JWTs. RSASSA-PKCS1-v1_5 with SHA-256, by ring.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use rustls_pki_types::PrivateKeyDer;
use serde_json::{Map, Value};

use super::{parse_pem, unescape_newlines, SignError};

/// An RSA private key from PEM: PKCS#1 (`RSA PRIVATE KEY`, GitHub's
/// download) or PKCS#8 (`PRIVATE KEY`, Google's key files). `field` names
/// the credential in errors; the key is never quoted.
pub(crate) fn rsa_key(field: &str, pem: &str) -> Result<RsaKeyPair, SignError> {
    let der = parse_pem(field, &unescape_newlines(pem))?;
    let rejected =
        |e: ring::error::KeyRejected| SignError::bad_key(field, format!("RSA key rejected: {e}"));
    match &*der {
        PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()).map_err(rejected),
        PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()).map_err(rejected),
        _ => Err(SignError::bad_key(field, "an RSA key is needed, not EC")),
    }
}

/// `header.claims.signature`: the header is `{"alg":"RS256","typ":"JWT"}`
/// plus `kid` when given; `claims` is serialized as it is.
pub(crate) fn rs256(
    key: &RsaKeyPair,
    kid: Option<&str>,
    claims: &Map<String, Value>,
) -> Result<String, SignError> {
    let mut header = Map::new();
    header.insert("alg".into(), "RS256".into());
    header.insert("typ".into(), "JWT".into());
    if let Some(kid) = kid {
        header.insert("kid".into(), kid.into());
    }
    let encode = |v: &Map<String, Value>| {
        serde_json::to_vec(v)
            .map(|bytes| URL_SAFE_NO_PAD.encode(bytes))
            .map_err(|_| SignError::Crypto)
    };
    let mut jwt = format!("{}.{}", encode(&header)?, encode(claims)?);
    let mut signature = vec![0u8; key.public().modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        jwt.as_bytes(),
        &mut signature,
    )
    .map_err(|_| SignError::Crypto)?;
    jwt.push('.');
    jwt.push_str(&URL_SAFE_NO_PAD.encode(signature));
    Ok(jwt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{KeyPair, UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
    use std::process::Command;

    /// A fresh RSA key from the openssl CLI, as PKCS#1 and PKCS#8 PEM.
    fn keys() -> (String, String) {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(out.status.success(), "openssl {args:?}");
        };
        run(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "k8.pem",
        ]);
        run(&["rsa", "-in", "k8.pem", "-traditional", "-out", "k1.pem"]);
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        (read("k1.pem"), read("k8.pem"))
    }

    #[test]
    fn signs_a_verifiable_jwt_from_pkcs1_and_pkcs8() {
        let (pkcs1, pkcs8) = keys();
        for pem in [pkcs1.as_str(), pkcs8.as_str(), &pkcs8.replace('\n', "\\n")] {
            let key = rsa_key("private_key", pem).unwrap();
            let mut claims = Map::new();
            claims.insert("iss".into(), "me@example.iam".into());
            let jwt = rs256(&key, Some("kid-1"), &claims).unwrap();
            let parts: Vec<&str> = jwt.split('.').collect();
            assert_eq!(parts.len(), 3);
            let json = |p: &str| -> Value {
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap()
            };
            assert_eq!(
                json(parts[0]),
                serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "kid-1"})
            );
            assert_eq!(json(parts[1])["iss"], "me@example.iam");
            let public = UnparsedPublicKey::new(
                &RSA_PKCS1_2048_8192_SHA256,
                key.public_key().as_ref().to_vec(),
            );
            let signed = format!("{}.{}", parts[0], parts[1]);
            public
                .verify(
                    signed.as_bytes(),
                    &URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
                )
                .unwrap();
        }
    }

    #[test]
    fn bad_keys_are_named_not_quoted() {
        let e = rsa_key(
            "private_key",
            "-----BEGIN PRIVATE KEY-----\nSECRETSTUFF\n-----END PRIVATE KEY-----\n",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("private_key") && !e.contains("SECRET"), "{e}");
        let ec = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIIrYSSNQFaA2Hwf1duRSxKtLYX5CB04fSeQ6tF1aY/PuoAoGCCqGSM49AwEHoUQDQgAEPR3tU2Fta9ktY+6P9G0cWO+0kETA6SFs38GecTyudlHz6xvCdz8q5F06n3kPgPETbZmeaX/l0CDkEuupIoaokw==\n-----END EC PRIVATE KEY-----\n";
        assert!(rsa_key("private_key", ec).is_err());
    }
}
