//! The clavis CA: created on first start (ECDSA P-256, CA:true, keyCertSign,
//! key written 0600), loaded afterwards; the public bundle (Mozilla roots +
//! this CA) is rewritten at every start for `SSL_CERT_FILE` and friends.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use ring::rand::SecureRandom;
use rustls::pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

use super::{verify, TlsError};
use crate::config::CaConfig;

pub struct Ca {
    pub(super) issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
    /// Public roots followed by this CA, as served at `/ca-bundle.pem`.
    pub bundle_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ca({})", self.fingerprint())
    }
}

impl Ca {
    /// Loads the CA, creating it first when neither file exists. One file
    /// without the other is an error: clavis never overwrites a CA half.
    pub fn load_or_create(cfg: &CaConfig) -> Result<Ca, TlsError> {
        match (cfg.cert.exists(), cfg.key.exists()) {
            (false, false) => create(cfg)?,
            (true, false) => return Err(TlsError::file(&cfg.key, "CA certificate exists but its key is missing; restore the key or remove both to create a new CA")),
            (false, true) => return Err(TlsError::file(&cfg.cert, "CA key exists but its certificate is missing; restore it or remove both to create a new CA")),
            (true, true) => {}
        }
        let ca = Ca::load(cfg)?;
        write_file(
            &cfg.bundle,
            ca.bundle_pem.as_bytes(),
            0o644,
            Existing::Replace,
        )?;
        Ok(ca)
    }

    /// Loads an existing CA (for `clavis ca show` and `serve`).
    pub fn load(cfg: &CaConfig) -> Result<Ca, TlsError> {
        let cert_pem =
            std::fs::read_to_string(&cfg.cert).map_err(|e| TlsError::file(&cfg.cert, e))?;
        let key_pem = zeroize::Zeroizing::new(
            std::fs::read_to_string(&cfg.key).map_err(|e| TlsError::file(&cfg.key, e))?,
        );
        let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::file(&cfg.key, e))?;
        warn_if_shared(&cfg.key);
        let issuer =
            Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| TlsError::file(&cfg.cert, e))?;
        let cert_der = pem_to_der(&cert_pem)
            .ok_or_else(|| TlsError::file(&cfg.cert, "no PEM certificate found"))?;
        let bundle_pem = format!("{}{}", verify::public_roots_pem(), cert_pem);
        Ok(Ca {
            issuer,
            cert_pem,
            cert_der,
            bundle_pem,
        })
    }

    /// SHA-256 of the DER certificate, as colon-separated hex.
    pub fn fingerprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.cert_der);
        digest
            .as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

fn create(cfg: &CaConfig) -> Result<(), TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
        .distinguished_name
        .push(DnType::CommonName, "clavis local CA");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "clavis");
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(3650);
    params.serial_number = Some(random_serial()?);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
    write_file(&cfg.key, key_pem.as_bytes(), 0o600, Existing::Refuse)?;
    write_file(&cfg.cert, cert.pem().as_bytes(), 0o644, Existing::Refuse)?;
    tracing::info!(cert = %cfg.cert.display(), "created a new clavis CA");
    Ok(())
}

pub(super) fn random_serial() -> Result<SerialNumber, TlsError> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| TlsError::Rcgen(rcgen::Error::RingUnspecified))?;
    bytes[0] &= 0x7f; // positive
    Ok(SerialNumber::from_slice(&bytes))
}

/// A CA key others can read lets them impersonate every claimed host to the
/// agents that trust the CA. Warned, not refused: Secret mounts are often
/// group-readable by design (`fsGroup`).
fn warn_if_shared(key: &Path) {
    use crate::files::Readers;
    if let Ok((readers, mode)) = crate::files::readers(key) {
        if readers != Readers::Owner {
            tracing::warn!(
                key = %key.display(),
                mode = format!("{mode:o}"),
                "the CA key is readable by group or others; chmod 600 it"
            );
        }
    }
}

/// How [`write_file`] treats what is already at the path. Neither follows a
/// symlink there: the bundle may sit in a directory the agent can see, and a
/// planted link must not redirect clavis's write (or its CA key) elsewhere.
#[derive(Clone, Copy)]
enum Existing {
    /// The CA's key and certificate: nothing may exist there yet (`O_EXCL`).
    Refuse,
    /// The bundle, rewritten at every start.
    Replace,
}

/// Writes a file with `mode`, creating its directory (0700) when missing.
fn write_file(path: &Path, bytes: &[u8], mode: u32, how: Existing) -> Result<(), TlsError> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| TlsError::file(dir, e))?;
    }
    let put = match how {
        Existing::Refuse => crate::files::Put::New,
        Existing::Replace => crate::files::Put::Overwrite,
    };
    crate::files::write(path, bytes, mode, put).map_err(|e| TlsError::file(path, e))
}

fn pem_to_der(pem: &str) -> Option<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes()).next()?.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path) -> CaConfig {
        CaConfig {
            cert: dir.join("certs/ca.pem"),
            key: dir.join("certs/ca.key"),
            bundle: dir.join("certs/bundle.pem"),
        }
    }

    mod load_or_create {
        use super::*;
        use std::os::unix::fs::PermissionsExt;

        #[test]
        fn creates_once_then_loads_the_same_ca() {
            let dir = tempfile::tempdir().unwrap();
            let a = Ca::load_or_create(&cfg(dir.path())).unwrap();
            let b = Ca::load_or_create(&cfg(dir.path())).unwrap();
            assert_eq!(a.fingerprint(), b.fingerprint());
            let mode = std::fs::metadata(dir.path().join("certs/ca.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            let bundle = std::fs::read_to_string(dir.path().join("certs/bundle.pem")).unwrap();
            assert!(bundle.ends_with(&a.cert_pem));
            assert!(bundle.matches("BEGIN CERTIFICATE").count() > 100);
        }

        #[test]
        fn never_writes_through_a_planted_symlink() {
            let dir = tempfile::tempdir().unwrap();
            let elsewhere = dir.path().join("elsewhere");
            std::fs::create_dir_all(dir.path().join("certs")).unwrap();
            // A dangling link where the key would be created.
            std::os::unix::fs::symlink(&elsewhere, dir.path().join("certs/ca.key")).unwrap();
            assert!(Ca::load_or_create(&cfg(dir.path())).is_err());
            assert!(!elsewhere.exists(), "the key was written through the link");
            // A link where the bundle is rewritten.
            std::fs::remove_file(dir.path().join("certs/ca.key")).unwrap();
            let _ = std::fs::remove_file(dir.path().join("certs/ca.pem"));
            Ca::load_or_create(&cfg(dir.path())).unwrap();
            std::fs::remove_file(dir.path().join("certs/bundle.pem")).unwrap();
            std::os::unix::fs::symlink(&elsewhere, dir.path().join("certs/bundle.pem")).unwrap();
            let e = Ca::load_or_create(&cfg(dir.path())).unwrap_err();
            assert!(e.to_string().contains("bundle.pem"), "{e}");
            assert!(
                !elsewhere.exists(),
                "the bundle was written through the link"
            );
        }

        #[test]
        fn refuses_half_a_ca() {
            let dir = tempfile::tempdir().unwrap();
            Ca::load_or_create(&cfg(dir.path())).unwrap();
            std::fs::remove_file(dir.path().join("certs/ca.key")).unwrap();
            let e = Ca::load_or_create(&cfg(dir.path())).unwrap_err();
            assert!(e.to_string().contains("key is missing"), "{e}");
        }
    }
}
