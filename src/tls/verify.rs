//! Upstream trust: Mozilla's public roots (compiled in, so a distroless image
//! works) plus `upstream.extra_ca`. Verification is never turned off.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::{pem::PemObject, CertificateDer};
use rustls::{ClientConfig, RootCertStore};

use super::TlsError;

/// The public roots as PEM, for the bundle file agents point `SSL_CERT_FILE` at.
pub(crate) fn public_roots_pem() -> &'static str {
    static PEM: OnceLock<String> = OnceLock::new();
    PEM.get_or_init(|| {
        use base64::Engine;
        let mut out = String::new();
        for cert in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
            let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
            out.push_str("-----BEGIN CERTIFICATE-----\n");
            for line in b64.as_bytes().chunks(64) {
                out.push_str(std::str::from_utf8(line).unwrap_or_default());
                out.push('\n');
            }
            out.push_str("-----END CERTIFICATE-----\n");
        }
        out
    })
}

/// The TLS client config for every upstream connection: roots + extra CAs,
/// ALPN h2 then http/1.1.
pub(crate) fn client_config(extra_ca: &[PathBuf]) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
    for path in extra_ca {
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| TlsError::file(path, e))? {
            let cert = cert.map_err(|e| TlsError::file(path, e))?;
            roots
                .add(cert)
                .map_err(|e| TlsError::file(path, format!("not a usable CA certificate: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(TlsError::file(path, "no PEM certificate found"));
        }
    }
    let mut config = ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
