//! The shared state both ports read: a cheap `Clone` handle over the
//! settings and every long-lived part (CA and leaf cache, sealed store,
//! audit log, upstream pool, tokens, metrics), built once at start by
//! [`State::new`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::approvals::Approvals;
use crate::audit::AuditLog;
use crate::budget::{BudgetError, Budgets};
use crate::catalog::{Applied, Live, Settings};
use crate::config::Config;
use crate::identity::InFlight;
use crate::store::{Sealer, Store, StoreError};
use crate::tls::{verify, Ca, LeafCache, TlsError};
use crate::tokens::{Fetcher, Tokens};
use crate::upstream::{Dialer, Upstream};

pub struct Shared {
    /// The config as started: what a reload cannot change (listen
    /// addresses, limits, CA, store, upstream). Its agents live in `live`.
    pub(crate) config: Config,
    /// The connectors, agents, policies and budgets now served, swapped
    /// whole by a reload; read with [`State::live`], once per tunnel or call.
    live: arc_swap::ArcSwap<Live>,
    /// What the live config was built from; held for a whole reload, so
    /// reloads run one at a time.
    pub(crate) applied: tokio::sync::Mutex<Applied>,
    pub(crate) ca: Arc<Ca>,
    pub(crate) certs: LeafCache,
    pub(crate) store: Store,
    pub(crate) audit: Arc<AuditLog>,
    pub(crate) upstream: Arc<Upstream>,
    /// `None` without `approvals:` in the config (approve rules refuse).
    pub(crate) approvals: Option<Approvals>,
    pub(crate) tunnels: Arc<Semaphore>,
    pub(crate) proxy_addr: SocketAddr,
    pub(crate) admin_addr: SocketAddr,
    /// The admin bearer token's digest (configured, or generated at start).
    pub(crate) admin_token: crate::secret::TokenDigest,
    pub(crate) admin_throttle: crate::identity::Throttle,
    /// Refusals audited per caller a minute (admin port and MCP).
    pub(crate) refusals: crate::identity::Budget<String>,
    pub(crate) metrics: crate::metrics::Metrics,
    pub(crate) tokens: Tokens,
    pub(crate) budgets: Budgets,
    /// In-flight upstream requests of callers without an agent (the admin,
    /// or anyone on loopback when `proxy.require_auth` is off).
    pub(crate) anonymous_in_flight: InFlight,
    /// Re-reads the config's `${vault:…}` secrets (`refresh`); a reload
    /// puts the new config's in its place.
    pub(crate) vault: arc_swap::ArcSwapOption<crate::vault::Resolver>,
    ready: AtomicBool,
}

/// A cheap handle to everything a request needs.
#[derive(Clone)]
pub struct State(Arc<Shared>);

impl std::ops::Deref for State {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("CA: {0}")]
    Ca(#[from] TlsError),
    #[error("master key {path}: {source}")]
    MasterKey {
        path: String,
        #[source]
        source: KeyFileError,
    },
    #[error("audit file: {0}")]
    Audit(#[source] std::io::Error),
    #[error("admin token {path}: {source}")]
    AdminToken {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the system random generator failed")]
    Random,
    #[error("store: {0}")]
    Snapshot(#[source] StoreError),
    #[error("budget_store: {0}")]
    Budgets(#[source] BudgetError),
    #[error("service {name:?}: {source}")]
    Service {
        name: String,
        #[source]
        source: StoreError,
    },
}

/// Why the master key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{0}")]
    Read(#[from] std::io::Error),
    #[error("readable by others (mode {mode:o}); it opens every credential: chmod 600 it")]
    Exposed { mode: u32 },
    #[error("{0}")]
    Key(#[from] crate::store::SealError),
}

impl State {
    /// Builds everything that does not need a socket: CA, store, agents,
    /// audit, upstream client. `proxy_addr`/`admin_addr` are the bound ports
    /// (never dialed as upstreams).
    pub fn new(
        settings: Settings,
        proxy_addr: SocketAddr,
        admin_addr: SocketAddr,
    ) -> Result<State, StartError> {
        let Settings {
            mut config,
            mut catalog,
            source,
            vault,
        } = settings;
        let applied = Applied::new(source, config.sources.clone(), &catalog.services);
        let ca = Arc::new(Ca::load_or_create(&config.ca)?);
        let metrics = crate::metrics::Metrics::new();
        let certs = LeafCache::new(
            ca.clone(),
            config.limits.leaf_cache,
            metrics.certs_issued.clone(),
        )?;
        let sealer = sealer(&config)?;
        if !sealer.key_locked() {
            tracing::warn!(
                "could not lock the master key's memory page (RLIMIT_MEMLOCK); \
                 it is kept out of core dumps but may be swapped"
            );
        }
        let store = Store::new(sealer);
        // Config credentials are sealed here and their plaintext dropped.
        for s in std::mem::take(&mut catalog.services) {
            let name = s.name.clone();
            crate::catalog::add_service(&store, s)
                .map_err(|source| StartError::Service { name, source })?;
        }
        // Loaded after the config services, so the config wins on a clash
        // and nothing is written before the snapshot was read.
        if let Some(path) = config.store.snapshot.clone() {
            let restored = store
                .restore(crate::store::Snapshot::new(path), &catalog.registry)
                .map_err(StartError::Snapshot)?;
            tracing::info!(services = restored, "restored services from the snapshot");
        }
        let tls = verify::client_config(&config.upstream.extra_ca)?;
        let dialer = Dialer {
            resolve: config.upstream.resolve.clone(),
            nameserver: config.upstream.nameserver,
            allow_private: config.proxy.allow_private.clone(),
            own: vec![proxy_addr, admin_addr],
            connect_timeout: config.upstream.connect_timeout,
        };
        let upstream = Arc::new(Upstream::new(
            dialer,
            tls,
            config.upstream.request_timeout,
            config.limits.idle_timeout.0,
            metrics.upstream_dials.clone(),
        ));
        let audit = Arc::new(AuditLog::open(&config.audit).map_err(StartError::Audit)?);
        let approvals = config.approvals.take().map(|a| {
            let approvals = Approvals::new(
                a,
                upstream.clone(),
                audit.clone(),
                metrics.webhook_failures.clone(),
            );
            if let Some(saved) = store.section("approvals") {
                approvals.restore(&saved);
            }
            approvals
        });
        let tunnels = Arc::new(Semaphore::new(config.limits.max_tunnels));
        let admin_token = match config.admin.token {
            Some(digest) => digest,
            None => generate_admin_token(&config)?,
        };
        let live = Live::take(&mut config, &mut catalog);
        let budgets = Budgets::new(&config.budget_store).map_err(StartError::Budgets)?;
        if let Some(saved) = store.section("budgets") {
            budgets.restore(&saved, &live.budgets);
        }
        let tokens = Tokens::new(
            config.limits.session_idle.0,
            config.limits.session_max_age.0,
        );
        Ok(State(Arc::new(Shared {
            config,
            live: arc_swap::ArcSwap::from_pointee(live),
            applied: tokio::sync::Mutex::new(applied),
            ca,
            certs,
            store,
            audit,
            upstream,
            approvals,
            tunnels,
            proxy_addr,
            admin_addr,
            admin_token,
            admin_throttle: Default::default(),
            refusals: crate::identity::Budget::new(
                crate::identity::REFUSALS_AUDITED,
                std::time::Duration::from_secs(60),
            ),
            tokens,
            budgets,
            metrics,
            anonymous_in_flight: Default::default(),
            vault: arc_swap::ArcSwapOption::new(vault),
            ready: AtomicBool::new(false),
        })))
    }

    /// The connectors, agents, policies and budgets now served: one
    /// atomic load; hold it for as long as one tunnel or call lasts.
    pub(crate) fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Serves `live` from now on (a reload); who holds the old one keeps it.
    pub(crate) fn swap_live(&self, live: Live) -> Arc<Live> {
        self.live.swap(Arc::new(live))
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Writes the budget counts to the snapshot if they changed (memory
    /// budget store with a snapshot; otherwise nothing to keep).
    pub(crate) fn persist_budgets(&self) {
        if let Some(counts) = self.budgets.to_snapshot() {
            if let Err(e) = self.store.write_section("budgets", counts) {
                tracing::warn!(error = %e, "could not keep the budget counts in the snapshot");
            }
        }
    }

    /// Writes the approvals to the snapshot if they changed.
    pub(crate) fn persist_approvals(&self) {
        let Some(approvals) = &self.approvals else {
            return;
        };
        if let Some(records) = approvals.to_snapshot() {
            if let Err(e) = self.store.write_section("approvals", records) {
                tracing::warn!(error = %e, "could not keep the approvals in the snapshot");
            }
        }
    }

    /// What fetching a token needs.
    pub(crate) fn fetcher(&self) -> Fetcher<'_> {
        Fetcher {
            upstream: &self.upstream,
            audit: &self.audit,
            store: &self.store,
        }
    }

    /// The newest audit events as JSON (newest first), for tests and tools.
    pub fn audit_events(&self, limit: usize) -> Vec<serde_json::Value> {
        self.audit.query(limit, None, None)
    }

    /// How many audit events the in-memory ring holds.
    pub fn audit_len(&self) -> usize {
        self.audit.len()
    }

    /// How many tunnels are open now.
    pub fn open_tunnels(&self) -> usize {
        self.config.limits.max_tunnels - self.tunnels.available_permits()
    }
}

/// The master key from `store.master_key_file`, or a fresh one per process.
/// A key file anyone on the machine can read is refused (it opens every
/// credential and the snapshot); one its group can read is warned about
/// (Kubernetes Secret mounts with `fsGroup` are).
fn sealer(config: &Config) -> Result<Sealer, StartError> {
    use crate::files::Readers;
    let Some(path) = &config.store.master_key_file else {
        return Sealer::random().map_err(|e| StartError::MasterKey {
            path: "(generated)".into(),
            source: e.into(),
        });
    };
    let err = |source: KeyFileError| StartError::MasterKey {
        path: path.display().to_string(),
        source,
    };
    match crate::files::readers(path).map_err(|e| err(e.into()))? {
        (Readers::Others, mode) => return Err(err(KeyFileError::Exposed { mode })),
        (Readers::Group, mode) => tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:o}"),
            "the master key file is readable by its group; chmod 600 it unless the group is clavis's own"
        ),
        (Readers::Owner, _) => {}
    }
    let bytes = zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| err(e.into()))?);
    Sealer::from_file_bytes(&bytes).map_err(|e| err(e.into()))
}

/// Without a configured admin token, clavis makes one and writes it to
/// `admin.token` beside the CA key (0600, a fresh file renamed into place,
/// so a link planted at the path is replaced, never written through). The
/// path is logged, never the token.
fn generate_admin_token(config: &Config) -> Result<crate::secret::TokenDigest, StartError> {
    use ring::rand::SecureRandom;
    let path = config
        .ca
        .key
        .parent()
        .map(|d| d.join("admin.token"))
        .unwrap_or_else(|| "admin.token".into());
    let err = |source: std::io::Error| StartError::AdminToken {
        path: path.display().to_string(),
        source,
    };
    let mut bytes = zeroize::Zeroizing::new([0u8; 24]);
    ring::rand::SystemRandom::new()
        .fill(bytes.as_mut())
        .map_err(|_| StartError::Random)?;
    let token = zeroize::Zeroizing::new(crate::encoding::hex(bytes.as_ref()));
    crate::files::write(&path, token.as_bytes(), 0o600, crate::files::Put::Replace).map_err(err)?;
    tracing::info!(path = %path.display(), "generated an admin token (admin.token is not set)");
    Ok(crate::secret::TokenDigest::of(token.as_bytes()))
}
