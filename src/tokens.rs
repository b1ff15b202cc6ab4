//! Tokens clavis fetches with a service's credentials (a
//! [`TokenSource`]: today the Kalshi login), so the agent never holds them
//! either. Each is sealed under the master key like the credentials it came
//! from and tied to their version: new credentials, a deleted service or an
//! expired token (idle or absolute age) mean a new fetch. One fetch at a
//! time per service, shared by every waiting request; at most one per
//! [`RELOGIN_BACKOFF`] after a refused fresh token or a failed fetch, so
//! neither a misbehaving upstream nor a wrong password can cause a login
//! storm that locks the account.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::audit::{Action, AuditError, AuditLog, Detail, Event};
use crate::body;
use crate::connector::{FetchError, TokenSource};
use crate::credentials::Credentials;
use crate::identity::Actor;
use crate::secret::Secret;
use crate::store::{Service, Store, StoreError};
use crate::upstream::{Upstream, UpstreamError};

pub(crate) const RELOGIN_BACKOFF: Duration = Duration::from_secs(20);

/// The largest token answer read.
const MAX_ANSWER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("service {service:?}: login failed: {source}")]
    Fetch {
        service: String,
        #[source]
        source: FetchError,
    },
    #[error("service {service:?}: login failed: {why}")]
    Backoff { service: String, why: Backoff },
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why no fetch was tried.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub(crate) enum Backoff {
    #[error("the last login failed moments ago; not trying again so soon")]
    LastFailed,
    #[error("the upstream refused a fresh session token; not logging in again so soon")]
    FreshRefused,
}

/// What fetching a token needs besides the credentials: explicit
/// dependencies, not the whole state.
pub(crate) struct Fetcher<'a> {
    pub(crate) upstream: &'a Upstream,
    pub(crate) audit: &'a AuditLog,
    pub(crate) store: &'a Store,
}

struct Token {
    /// Sealed under the master key like the credentials it came from
    /// (SPEC §7); opened for each use.
    sealed: Arc<[u8]>,
    generation: u64,
    /// The credentials version it was fetched with.
    credentials: u64,
    obtained: Instant,
    last_used: Instant,
}

#[derive(Default)]
struct Slot {
    current: std::sync::Mutex<Option<Token>>,
    /// Held while fetching: the single flight.
    fetch: tokio::sync::Mutex<LastFetch>,
}

/// When the last fetch was attempted, and whether it failed.
#[derive(Default)]
struct LastFetch {
    at: Option<Instant>,
    failed: bool,
}

impl LastFetch {
    fn within_backoff(&self) -> bool {
        self.at.is_some_and(|at| at.elapsed() < RELOGIN_BACKOFF)
    }
}

pub(crate) struct Tokens {
    slots: DashMap<String, Arc<Slot>>,
    idle: Duration,
    max_age: Duration,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("services", &self.slots.len())
            .finish()
    }
}

/// One token, open for one request, with the generation to name it by when
/// the upstream refuses it.
pub(crate) struct Issued {
    pub(crate) token: Secret<String>,
    pub(crate) generation: u64,
}

impl Tokens {
    pub(crate) fn new(idle: Duration, max_age: Duration) -> Tokens {
        Tokens {
            slots: DashMap::new(),
            idle,
            max_age,
        }
    }

    /// Forgets a service's token: its credentials changed or it was
    /// deleted. (A token is also never used with credentials other than
    /// the ones that fetched it.)
    pub(crate) fn forget(&self, service_id: &str) {
        self.slots.remove(service_id);
    }

    fn slot(&self, service: &Service) -> Arc<Slot> {
        if let Some(slot) = self.slots.get(&service.id) {
            return slot.clone();
        }
        self.slots.entry(service.id.clone()).or_default().clone()
    }

    fn valid(
        &self,
        slot: &Slot,
        service: &Service,
        stale: Option<u64>,
    ) -> Option<(Arc<[u8]>, u64)> {
        let mut current = slot.current.lock().unwrap_or_else(|p| p.into_inner());
        let token = current.as_mut()?;
        let fresh = token.last_used.elapsed() < self.idle
            && token.obtained.elapsed() < self.max_age
            && token.credentials == service.credentials_version();
        if !fresh || Some(token.generation) == stale {
            return None;
        }
        token.last_used = Instant::now();
        Some((token.sealed.clone(), token.generation))
    }

    /// A valid token for `service`, fetched when there is none, it expired,
    /// or it is `stale` (the generation the upstream just refused).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn get(
        &self,
        fetcher: &Fetcher<'_>,
        source: TokenSource,
        service: &Service,
        creds: &Credentials,
        host: &str,
        actor: &Actor<'_>,
        stale: Option<u64>,
    ) -> Result<Issued, TokenError> {
        let slot = self.slot(service);
        let open = |(sealed, generation): (Arc<[u8]>, u64)| -> Result<Issued, TokenError> {
            Ok(Issued {
                token: fetcher.store.open_session(service, &sealed)?,
                generation,
            })
        };
        if let Some(t) = self.valid(&slot, service, stale) {
            return open(t);
        }
        let mut last = slot.fetch.lock().await;
        // Someone else may have fetched one while this request waited.
        if let Some(t) = self.valid(&slot, service, stale) {
            return open(t);
        }
        // A refused fresh token, or a failed fetch (wrong password, upstream
        // down): the next attempt waits out the backoff, however many
        // requests come meanwhile, so they cannot lock the account.
        if last.within_backoff() && (stale.is_some() || last.failed) {
            let why = if last.failed {
                Backoff::LastFailed
            } else {
                Backoff::FreshRefused
            };
            return Err(TokenError::Backoff {
                service: service.name.clone(),
                why,
            });
        }
        last.at = Some(Instant::now());
        let outcome = fetch(fetcher, source, service, creds, host, actor).await;
        last.failed = outcome.is_err();
        let token = outcome?;
        let sealed: Arc<[u8]> = fetcher.store.seal_session(service, token.expose())?.into();
        let mut current = slot.current.lock().unwrap_or_else(|p| p.into_inner());
        let generation = current.as_ref().map_or(1, |t| t.generation + 1);
        *current = Some(Token {
            sealed,
            generation,
            credentials: service.credentials_version(),
            obtained: Instant::now(),
            last_used: Instant::now(),
        });
        Ok(Issued { token, generation })
    }
}

/// Sends the source's fetch request (audited first, fail closed) and reads
/// the token from the answer.
async fn fetch(
    fetcher: &Fetcher<'_>,
    source: TokenSource,
    service: &Service,
    creds: &Credentials,
    host: &str,
    actor: &Actor<'_>,
) -> Result<Secret<String>, TokenError> {
    let failed = |source: FetchError| TokenError::Fetch {
        service: service.name.clone(),
        source,
    };
    let (request, path) = source.request(creds, host).map_err(failed)?;
    let event = fetcher.audit.record(Event::new(
        Action::Login,
        &service.name,
        actor,
        Detail::request("POST", host, path),
    ))?;
    let response = fetcher.upstream.send(host, request).await?;
    let status = response.status();
    event.set_status(status.as_u16());
    if !status.is_success() {
        tracing::warn!(service = %service.name, status = status.as_u16(), "login refused");
        return Err(failed(FetchError::Refused {
            host: host.to_owned(),
            status: status.as_u16(),
        }));
    }
    let bytes = body::collect_capped(response.into_body(), MAX_ANSWER)
        .await
        .map_err(|_| failed(FetchError::Unreadable))?;
    let token = source.read(&bytes).map_err(failed)?;
    tracing::info!(service = %service.name, "logged in");
    Ok(token)
}
