//! TLS on both sides: the clavis CA ([`ca`]), leaf certificates minted from it
//! for intercepted hosts ([`mint`]), and verification of real upstreams
//! ([`verify`]). One crypto provider, ring, for all of it.

pub mod ca;
pub(crate) mod mint;
pub(crate) mod verify;

use std::sync::Arc;

pub use ca::Ca;
pub(crate) use mint::LeafCache;

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsError {
    pub(crate) fn file(path: &std::path::Path, message: impl std::fmt::Display) -> TlsError {
        TlsError::File {
            path: path.display().to_string(),
            message: message.to_string(),
        }
    }
}
