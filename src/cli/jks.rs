//! A Java trust store (JKS) holding clavis's bundle (public roots + the
//! CA), beside the bundle: Java reads no CA variable, only
//! `-Djavax.net.ssl.trustStore`. JKS is the one store format every JVM
//! reads without a password-based MAC: a count, one trusted-certificate
//! entry per certificate, and a SHA-1 over the password and the content
//! (the integrity check keytool does; the JVM skips it for trust stores).

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// keytool's customary password: the store holds no secret.
pub(crate) const PASSWORD: &str = "changeit";

const MAGIC: u32 = 0xFEED_FEED;
const VERSION: u32 = 2;
const TRUSTED_CERT: u32 = 2;

/// The trust store for `bundle` (`<bundle>.jks`), written again when the
/// bundle is newer. `None`, with a note on stderr, when it cannot be made.
pub(crate) fn ensure(bundle: &Path) -> Option<PathBuf> {
    let store = bundle.with_extension("jks");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(s), Some(b)) = (modified(&store), modified(bundle)) {
        if s >= b {
            return Some(store);
        }
    }
    match write(bundle, &store) {
        Ok(()) => Some(store),
        Err(why) => {
            eprintln!(
                "clavis: note: no Java trust store ({}): {why}",
                store.display()
            );
            None
        }
    }
}

fn write(bundle: &Path, store: &Path) -> Result<(), String> {
    let pem =
        std::fs::read(bundle).map_err(|e| format!("cannot read {}: {e}", bundle.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not PEM: {e:?}", bundle.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", bundle.display()));
    }
    let bytes = encode(&certs, PASSWORD, now_millis());
    let tmp = store.with_extension("jks.tmp");
    std::fs::write(&tmp, &bytes).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, store).map_err(|e| format!("cannot write {}: {e}", store.display()))
}

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The JKS bytes: the last certificate (the bundle ends with clavis's CA)
/// is `clavis-ca`, the others `root-<n>`.
fn encode(certs: &[CertificateDer<'_>], password: &str, millis: u64) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.extend_from_slice(&VERSION.to_be_bytes());
    let count = u32::try_from(certs.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&count.to_be_bytes());
    for (i, cert) in certs.iter().enumerate().take(count as usize) {
        let alias = if i + 1 == certs.len() {
            "clavis-ca".to_owned()
        } else {
            format!("root-{i}")
        };
        out.extend_from_slice(&TRUSTED_CERT.to_be_bytes());
        put_utf(&mut out, &alias);
        out.extend_from_slice(&millis.to_be_bytes());
        put_utf(&mut out, "X.509");
        let der = cert.as_ref();
        out.extend_from_slice(&u32::try_from(der.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(der);
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    for unit in password.encode_utf16() {
        ctx.update(&unit.to_be_bytes());
    }
    ctx.update(b"Mighty Aphrodite");
    ctx.update(&out);
    out.extend_from_slice(ctx.finish().as_ref());
    out
}

/// Java's `writeUTF` for ASCII text: a 16-bit length, then the bytes.
fn put_utf(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&u16::try_from(text.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_digest() {
        let certs = [
            CertificateDer::from(vec![1u8, 2, 3]),
            CertificateDer::from(vec![9u8]),
        ];
        let bytes = encode(&certs, "changeit", 7);
        assert_eq!(
            &bytes[..12],
            &[0xFE, 0xED, 0xFE, 0xED, 0, 0, 0, 2, 0, 0, 0, 2]
        );
        // first entry: tag, alias "root-0", time, "X.509", length 3, DER
        let entry = [
            &[0, 0, 0, 2][..],
            &[0, 6],
            b"root-0",
            &7u64.to_be_bytes(),
            &[0, 5],
            b"X.509",
            &[0, 0, 0, 3, 1, 2, 3],
        ]
        .concat();
        assert_eq!(&bytes[12..12 + entry.len()], entry.as_slice());
        assert!(bytes.windows(9).any(|w| w == b"clavis-ca"));
        let (body, digest) = bytes.split_at(bytes.len() - 20);
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
        for c in "changeit".encode_utf16() {
            ctx.update(&c.to_be_bytes());
        }
        ctx.update(b"Mighty Aphrodite");
        ctx.update(body);
        assert_eq!(ctx.finish().as_ref(), digest);
    }
}
