//! The shared state (a cheap `Clone` handle) and [`serve`], which runs the
//! proxy and admin ports until shutdown, then drains.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::audit::AuditLog;
use crate::config::Config;
use crate::proxy::Ctx;
use crate::store::{Origin, Sealer, Store};
use crate::tls::{verify, Ca, LeafCache};
use crate::upstream::{Dialer, Upstream};

pub struct Shared {
    pub config: Config,
    pub ca: Arc<Ca>,
    pub certs: LeafCache,
    pub store: Store,
    pub audit: AuditLog,
    pub upstream: Upstream,
    pub tunnels: Arc<Semaphore>,
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The admin bearer token's digest (configured, or generated at start).
    pub admin_token: crate::secret::TokenDigest,
    pub admin_throttle: crate::admin::auth::Throttle,
    pub metrics: crate::metrics::Metrics,
    pub sessions: crate::connector::session::Sessions,
    /// In-flight upstream requests of callers without an agent (the admin,
    /// or anyone on loopback when `proxy.require_auth` is off).
    pub anonymous_in_flight: crate::agent::InFlight,
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
    Ca(#[from] crate::tls::TlsError),
    #[error("master key {path}: {message}")]
    MasterKey { path: String, message: String },
    #[error("audit file: {0}")]
    Audit(std::io::Error),
    #[error("admin token: {0}")]
    AdminToken(String),
    #[error("store: {0}")]
    Snapshot(String),
    #[error("service {name:?}: {message}")]
    Service { name: String, message: String },
}

impl State {
    /// Builds everything that does not need a socket: CA, store, agents,
    /// audit, upstream client. `proxy_addr`/`admin_addr` are the bound ports
    /// (never dialed as upstreams).
    pub fn new(
        config: Config,
        proxy_addr: SocketAddr,
        admin_addr: SocketAddr,
    ) -> Result<State, StartError> {
        let ca = Arc::new(Ca::load_or_create(&config.ca)?);
        let metrics = crate::metrics::Metrics::new();
        let certs = LeafCache::new(
            ca.clone(),
            config.limits.leaf_cache,
            metrics.certs_issued.clone(),
        )?;
        let sealer = match &config.store.master_key_file {
            Some(path) => {
                let err = |message: String| StartError::MasterKey {
                    path: path.display().to_string(),
                    message,
                };
                let bytes =
                    zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| err(e.to_string()))?);
                Sealer::from_file_bytes(&bytes).map_err(|e| err(e.to_string()))?
            }
            None => Sealer::random().map_err(|e| StartError::MasterKey {
                path: "(generated)".into(),
                message: e.to_string(),
            })?,
        };
        if !sealer.key_locked() {
            tracing::warn!(
                "could not lock the master key's memory page (RLIMIT_MEMLOCK); \
                 it is kept out of core dumps but may be swapped"
            );
        }
        let mut config = config;
        let store = Store::new(sealer);
        // Config credentials are sealed here and their plaintext dropped.
        for s in std::mem::take(&mut config.services) {
            let err = |e: crate::store::StoreError| StartError::Service {
                name: s.name.clone(),
                message: e.to_string(),
            };
            store
                .add(&s.name, s.connector.clone(), s.default, Origin::Config)
                .map_err(err)?;
            if !s.credentials.is_empty() {
                store
                    .set_credentials(&s.name, &s.credentials, false)
                    .map_err(err)?;
            }
            let name = s.name.clone();
            store.set_entry(&name, s.entry).map_err(err)?;
        }
        // Loaded after the config services, so the config wins on a clash
        // and nothing is written before the snapshot was read.
        if let Some(path) = config.store.snapshot.clone() {
            let restored = store
                .restore(crate::store::Snapshot::new(path), &config.registry)
                .map_err(|e| StartError::Snapshot(e.to_string()))?;
            tracing::info!(services = restored, "restored services from the snapshot");
        }
        let tls = verify::client_config(&config.upstream.extra_ca)?;
        let dialer = Dialer {
            resolve: config.upstream.resolve.clone(),
            allow_private: config.proxy.allow_private.clone(),
            own: vec![proxy_addr, admin_addr],
            connect_timeout: config.upstream.connect_timeout,
        };
        let upstream = Upstream::new(
            dialer,
            tls,
            config.upstream.request_timeout,
            config.limits.idle_timeout.0,
            metrics.upstream_dials.clone(),
        );
        let audit = AuditLog::open(&config.audit).map_err(StartError::Audit)?;
        let tunnels = Arc::new(Semaphore::new(config.limits.max_tunnels));
        let admin_token = match config.admin.token {
            Some(digest) => digest,
            None => generate_admin_token(&config)?,
        };
        let sessions = crate::connector::session::Sessions::new(
            config.limits.session_idle.0,
            config.limits.session_max_age.0,
        );
        Ok(State(Arc::new(Shared {
            config,
            ca,
            certs,
            store,
            audit,
            upstream,
            tunnels,
            proxy_addr,
            admin_addr,
            admin_token,
            admin_throttle: Default::default(),
            sessions,
            metrics,
            anonymous_in_flight: Default::default(),
            ready: AtomicBool::new(false),
        })))
    }

    /// A service's credentials for one use; none stored is `503
    /// clavis_credentials_missing`.
    pub fn credentials(
        &self,
        service: &crate::store::Service,
    ) -> Result<crate::secret::Secret<crate::store::Credentials>, crate::error::ProxyError> {
        self.store
            .open(service)
            .map_err(|e| crate::error::ProxyError::Internal(e.to_string()))?
            .ok_or_else(|| crate::error::ProxyError::CredentialsMissing {
                service: service.name.clone(),
            })
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// Without a configured admin token, clavis makes one and writes it to
/// `admin.token` beside the CA key (0600). The path is logged, never the token.
fn generate_admin_token(config: &Config) -> Result<crate::secret::TokenDigest, StartError> {
    use ring::rand::SecureRandom;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = config
        .ca
        .key
        .parent()
        .map(|d| d.join("admin.token"))
        .unwrap_or_else(|| "admin.token".into());
    let err = |e: std::io::Error| StartError::AdminToken(format!("{}: {e}", path.display()));
    let mut bytes = zeroize::Zeroizing::new([0u8; 24]);
    ring::rand::SystemRandom::new()
        .fill(bytes.as_mut())
        .map_err(|_| StartError::AdminToken("system random generator failed".into()))?;
    let token =
        zeroize::Zeroizing::new(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(err)?;
    f.write_all(token.as_bytes()).map_err(err)?;
    tracing::info!(path = %path.display(), "generated an admin token (admin.token is not set)");
    Ok(crate::secret::TokenDigest::of(token.as_bytes()))
}

/// Graceful shutdown for hyper connections: every watched connection holds a
/// sender, so the drain ends when the last one finishes.
#[derive(Clone)]
pub struct Drain {
    stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
}

impl Drain {
    /// Runs `conn` to completion; once shutdown starts it is asked to finish
    /// its in-flight requests and close (h1: no keep-alive, h2: GOAWAY).
    ///
    /// `conn` is boxed here, once: as an `async fn` argument it would be
    /// stored in the future twice (argument and pinned local), and the
    /// caller's future a third time, which for an idle tunnel is most of
    /// what it costs.
    pub fn watch<C: std::future::Future>(
        &self,
        conn: C,
        shutdown: impl FnOnce(std::pin::Pin<&mut C>),
    ) -> impl std::future::Future<Output = C::Output> {
        let mut conn = Box::pin(conn);
        let alive = self.alive.clone();
        let mut stop = self.stop.clone();
        async move {
            let _alive = alive;
            tokio::select! {
                result = conn.as_mut() => return result,
                _ = stop.wait_for(|s| *s) => {}
            }
            shutdown(conn.as_mut());
            conn.await
        }
    }
}

/// Accepts on `listener` until `stop` fires, each connection in its own
/// task. Beyond `limit` open connections a new one is closed at once, so a
/// flood of idle sockets cannot take every file descriptor.
pub async fn accept_loop<F, Fut>(
    port: &'static str,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    limit: usize,
    serve: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(limit));
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(port, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(port, %peer, "connection limit reached; closing");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let conn = serve(tcp, peer);
        tokio::spawn(async move {
            let _permit = permit;
            conn.await;
        });
    }
}

/// Runs both ports until `shutdown` resolves, then stops accepting, lets
/// in-flight exchanges finish within `limits.drain_timeout`, and ends tunnels.
pub async fn serve(
    state: State,
    proxy: TcpListener,
    admin: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (hard_tx, hard_rx) = watch::channel(false);
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let ctx = Ctx {
        state: state.clone(),
        drain: Drain {
            stop: stop_rx.clone(),
            alive: alive_tx,
        },
        hard_stop: hard_rx,
    };
    state.upstream.start(state.config.limits.idle_timeout.0);
    let proxy_task = tokio::spawn(crate::proxy::serve(ctx.clone(), proxy, stop_rx.clone()));
    let admin_task = tokio::spawn(crate::admin::serve(ctx, admin, stop_rx));
    state.ready.store(true, Ordering::Relaxed);
    for warning in &state.config.warnings {
        tracing::warn!("{warning}");
    }
    if !state.config.proxy.require_auth && !state.store.table().all().is_empty() {
        // Threat model §1.4: any local process can then use every service.
        tracing::warn!("proxy.require_auth is false: any process that reaches the proxy port may use every service");
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        // Threat model §1.4: clavis and the agent should be different,
        // unprivileged users, so the agent cannot read clavis's memory or files.
        tracing::warn!("running as root: run clavis as its own unprivileged user (the container image uses 65532)");
    }
    tracing::info!(proxy = %state.proxy_addr, admin = %state.admin_addr, "clavis is ready");

    shutdown.await;
    state.ready.store(false, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let _ = proxy_task.await;
    let _ = admin_task.await;
    let deadline = state.config.limits.drain_timeout.0;
    tracing::info!(?deadline, "draining in-flight requests");
    if tokio::time::timeout(deadline, alive_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!("drain deadline passed; closing remaining connections");
    }
    let _ = hard_tx.send(true);
}

/// No core dumps and no ptrace-by-same-UID reads of this process's memory
/// (where the OS allows): the master key and plaintext credentials live here.
pub fn harden_process() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) and setrlimit(RLIMIT_CORE, 0) take no
    // pointers we own beyond a stack value and only lower privileges.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &zero);
    }
}
