//! Leaf certificates for intercepted hosts, minted from the clavis CA on first
//! use and cached: a burst of connections for a new host mints it once
//! (single flight), and a leaf is replaced well before it expires.

use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;
use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};
use rustls::ServerConfig;
use time::{Duration, OffsetDateTime};
use tokio::sync::OnceCell;

use super::{Ca, TlsError};

/// Leaves live a week and are replaced after six days, so a connection never
/// meets an expired leaf and a stolen leaf is useful briefly.
const LEAF_DAYS: i64 = 7;
const RENEW_AFTER: std::time::Duration = std::time::Duration::from_secs(6 * 24 * 3600);

struct Leaf {
    config: Arc<ServerConfig>,
    minted: Instant,
}

pub(crate) struct LeafCache {
    ca: Arc<Ca>,
    /// One leaf key per process (as mitmproxy does): minting is then a single
    /// ECDSA signature.
    key: KeyPair,
    sessions: Arc<dyn StoresServerSessions>,
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
    cache: DashMap<String, Arc<OnceCell<Leaf>>>,
    cap: usize,
    issued: prometheus_client::metrics::counter::Counter,
}

impl std::fmt::Debug for LeafCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafCache")
            .field("entries", &self.cache.len())
            .finish_non_exhaustive()
    }
}

impl LeafCache {
    pub(crate) fn new(
        ca: Arc<Ca>,
        cap: usize,
        issued: prometheus_client::metrics::counter::Counter,
    ) -> Result<LeafCache, TlsError> {
        Ok(LeafCache {
            ca,
            key: KeyPair::generate()?,
            sessions: ServerSessionMemoryCache::new(4096),
            ticketer: rustls::crypto::ring::Ticketer::new()?,
            cache: DashMap::new(),
            cap: cap.max(1),
            issued,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.cache.len()
    }

    /// The TLS server config presenting a leaf for `host` (already normalized).
    pub(crate) async fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, TlsError> {
        let cell = self.cell(host);
        let leaf = cell.get_or_try_init(|| async { self.mint(host) }).await?;
        if leaf.minted.elapsed() < RENEW_AFTER {
            return Ok(leaf.config.clone());
        }
        // Stale: drop this cell (unless another task already replaced it) and mint anew.
        self.cache.remove_if(host, |_, c| Arc::ptr_eq(c, &cell));
        let cell = self.cell(host);
        let leaf = cell.get_or_try_init(|| async { self.mint(host) }).await?;
        Ok(leaf.config.clone())
    }

    fn cell(&self, host: &str) -> Arc<OnceCell<Leaf>> {
        if let Some(c) = self.cache.get(host) {
            return c.clone();
        }
        if self.cache.len() >= self.cap {
            // Bounded: evict one arbitrary entry; claimed hosts are few, so
            // this only triggers under abuse or huge wildcard fan-out.
            if let Some(victim) = self.cache.iter().next().map(|e| e.key().clone()) {
                self.cache.remove(&victim);
            }
        }
        self.cache
            .entry(host.to_owned())
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone()
    }

    fn mint(&self, host: &str) -> Result<Leaf, TlsError> {
        let started = Instant::now();
        let mut params = CertificateParams::new(vec![host.to_owned()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(LEAF_DAYS);
        params.serial_number = Some(super::ca::random_serial()?);
        let cert = params.signed_by(&self.key, &self.ca.issuer)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()));
        let mut config = ServerConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone(), self.ca.cert_der.clone()], key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.session_storage = self.sessions.clone();
        config.ticketer = self.ticketer.clone();
        self.issued.inc();
        tracing::debug!(
            host,
            micros = started.elapsed().as_micros() as u64,
            "minted leaf certificate"
        );
        Ok(Leaf {
            config: Arc::new(config),
            minted: Instant::now(),
        })
    }
}
