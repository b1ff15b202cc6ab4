//! Tokens clavis fetches with a service's credentials (a
//! [`TokenSource`]: the Kalshi login, OAuth 2.0 endpoints, GitHub App
//! installation tokens), so the agent never holds them either. Each is
//! sealed under the master key like the credentials it came from and tied
//! to their version: new credentials, a deleted service or an
//! expired token (idle or absolute age) mean a new fetch. One fetch at a
//! time per service, shared by every waiting request; at most one per
//! [`RELOGIN_BACKOFF`] after a refused fresh token or a failed fetch, so
//! neither a misbehaving upstream nor a wrong password can cause a login
//! storm that locks the account.
//!
//! Tokens with a known lifetime (SPEC §13.1) are renewed once 80 % of it
//! has passed; one cached per service and [`TokenScope`] (an agent's own
//! narrowing). A refresh token the endpoint rotates is kept in the store
//! and used from then on (see [`Tokens::issue`]).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;

use crate::audit::{Action, AuditError, AuditLog, Detail, Event};
use crate::body;
use crate::connector::token::{FetchInput, Fresh};
use crate::connector::{FetchError, TokenSource};
use crate::credentials::Credentials;
use crate::identity::{Actor, TokenScope};
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
    /// A token source of SPEC §13.1 (not a login) could not give a token.
    #[error("service {service:?}: the access token could not be renewed: {reason}")]
    Refresh {
        service: String,
        reason: String,
        #[source]
        cause: Box<TokenError>,
    },
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
    /// When a token with a known lifetime is renewed, and when it expires.
    expiry: Option<Expiry>,
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
        let scoped = scoped_key(service_id, "");
        self.slots.retain(|key, _| !key.starts_with(&scoped));
    }

    fn slot(&self, need: &Need<'_>) -> Arc<Slot> {
        let service = need.service;
        let Some(scope) = need.scope.filter(|_| need.source.is_scoped()) else {
            if let Some(slot) = self.slots.get(&service.id) {
                return slot.clone();
            }
            return self.slots.entry(service.id.clone()).or_default().clone();
        };
        // A scoped token is a token of its own: its own slot, fetch and
        // back-off, forgotten with the service.
        let key = scoped_key(&service.id, &scope.key);
        if let Some(slot) = self.slots.get(&key) {
            return slot.clone();
        }
        self.slots.entry(key).or_default().clone()
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
            && token.expiry.as_ref().is_none_or(Expiry::before_renewal)
            && token.credentials == service.credentials_version();
        if !fresh || Some(token.generation) == stale {
            return None;
        }
        token.last_used = Instant::now();
        Some((token.sealed.clone(), token.generation))
    }

    /// A valid token for `service`, fetched when there is none, it expired,
    /// or it is `stale` (the generation the upstream just refused).
    pub(crate) async fn get(
        &self,
        fetcher: &Fetcher<'_>,
        need: &Need<'_>,
        stale: Option<u64>,
    ) -> Result<Issued, TokenError> {
        let service = need.service;
        let slot = self.slot(need);
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
        let outcome = fetch(fetcher, need).await;
        last.failed = outcome.is_err();
        let Fresh {
            token, lifetime, ..
        } = outcome?;
        let sealed: Arc<[u8]> = fetcher.store.seal_session(service, token.expose())?.into();
        let mut current = slot.current.lock().unwrap_or_else(|p| p.into_inner());
        let generation = current.as_ref().map_or(1, |t| t.generation + 1);
        *current = Some(Token {
            sealed,
            expiry: lifetime.map(Expiry::after),
            generation,
            credentials: service.credentials_version(),
            obtained: Instant::now(),
            last_used: Instant::now(),
        });
        Ok(Issued { token, generation })
    }
}

/// Sends the source's fetch request (audited first, fail closed) and reads
/// the token from the answer; a rotated refresh token is kept.
async fn fetch(fetcher: &Fetcher<'_>, need: &Need<'_>) -> Result<Fresh, TokenError> {
    let service = need.service;
    let failed = |source: FetchError| TokenError::Fetch {
        service: service.name.clone(),
        source,
    };
    let rotated = rotated_refresh_token(fetcher.store, need)?;
    let input = FetchInput {
        creds: need.creds,
        host: need.host,
        scope: need
            .scope
            .filter(|_| need.source.is_scoped())
            .map(Arc::as_ref),
        refresh_token: rotated.as_ref().map(|t| t.expose().as_str()),
        now: SystemTime::now(),
    };
    let fetch = need.source.request(&input).map_err(failed)?;
    let event = fetcher.audit.record(Event::new(
        action(need),
        &service.name,
        need.actor,
        detail(need, &fetch),
    ))?;
    let (host, response) = (
        &fetch.host,
        fetcher.upstream.send(&fetch.host, fetch.request).await?,
    );
    let status = response.status();
    event.set_status(status.as_u16());
    if !status.is_success() {
        tracing::warn!(service = %service.name, status = status.as_u16(), "token request refused");
        // Only a short error code is read from the answer, never echoed.
        let body = body::collect_capped(response.into_body(), MAX_ANSWER)
            .await
            .unwrap_or_default();
        return Err(failed(need.source.refusal(host, status.as_u16(), &body)));
    }
    let bytes = body::collect_capped(response.into_body(), MAX_ANSWER)
        .await
        .map_err(|_| failed(FetchError::Unreadable))?;
    let fresh = need
        .source
        .read(&bytes, SystemTime::now())
        .map_err(failed)?;
    if let Some(new) = &fresh.refresh_token {
        keep_rotated(fetcher.store, need, rotated.as_ref(), new);
    }
    tracing::info!(service = %service.name, "token fetched");
    Ok(fresh)
}

/// What a token is needed for: the source, the service and its opened
/// credentials, the host of the request (a login goes there), who caused
/// it (the audit actor) and the caller's narrowing of the token, if any.
pub(crate) struct Need<'a> {
    pub(crate) source: &'a TokenSource,
    pub(crate) service: &'a Service,
    pub(crate) creds: &'a Credentials,
    pub(crate) host: &'a str,
    pub(crate) actor: &'a Actor<'a>,
    /// Used only by a source whose tokens it changes
    /// ([`TokenSource::is_scoped`]).
    pub(crate) scope: Option<&'a Arc<TokenScope>>,
}

/// A token's known lifetime: renewed once 80 % of it has passed (SPEC
/// §13.1), so no request goes out with one about to expire.
struct Expiry {
    renew_at: Instant,
    expires_at: Instant,
}

impl Expiry {
    fn after(lifetime: Duration) -> Expiry {
        let now = Instant::now();
        Expiry {
            renew_at: now + lifetime.mul_f64(0.8),
            expires_at: now + lifetime,
        }
    }

    fn before_renewal(&self) -> bool {
        Instant::now() < self.renew_at
    }
}

/// The cache key of a scoped token: the service id, a NUL, the scope.
fn scoped_key(service_id: &str, scope: &str) -> String {
    format!("{service_id}\0{scope}")
}

impl TokenError {
    /// The error as SPEC §13.1 answers it for a token source that is not a
    /// login: `token-refresh-failed`, naming the service and why (never a
    /// secret). Audit and store failures stay what they are.
    fn refresh_failed(self, service: &str) -> TokenError {
        let reason = match &self {
            TokenError::Fetch { source, .. } => source.to_string(),
            TokenError::Upstream(e) => e.to_string(),
            TokenError::Backoff { .. } => {
                "the last attempt failed moments ago; not trying again so soon".to_owned()
            }
            _ => return self,
        };
        TokenError::Refresh {
            service: service.to_owned(),
            reason,
            cause: Box::new(self),
        }
    }
}

impl Tokens {
    /// A token for `need`, as the exchange asks for it: [`Tokens::get`],
    /// where a source that is not a login answers its failures as
    /// `token-refresh-failed`, and a renewal ahead of expiry that fails
    /// leaves the current token in use until it really expires.
    pub(crate) async fn issue(
        &self,
        fetcher: &Fetcher<'_>,
        need: &Need<'_>,
        stale: Option<u64>,
    ) -> Result<Issued, TokenError> {
        match self.get(fetcher, need, stale).await {
            Ok(issued) => Ok(issued),
            Err(e) if need.source.is_login() => Err(e),
            Err(e) => {
                let tried = matches!(
                    e,
                    TokenError::Fetch { .. } | TokenError::Backoff { .. } | TokenError::Upstream(_)
                );
                if tried && stale.is_none() {
                    if let Some(issued) = self.unexpired(fetcher, need)? {
                        tracing::warn!(service = %need.service.name, "token renewal failed; the current token is used until it expires");
                        return Ok(issued);
                    }
                }
                Err(e.refresh_failed(&need.service.name))
            }
        }
    }

    /// The current token if its renewal is due but it has not expired.
    fn unexpired(
        &self,
        fetcher: &Fetcher<'_>,
        need: &Need<'_>,
    ) -> Result<Option<Issued>, TokenError> {
        let slot = self.slot(need);
        let current = slot.current.lock().unwrap_or_else(|p| p.into_inner());
        let Some(token) = current.as_ref().filter(|t| {
            t.credentials == need.service.credentials_version()
                && t.expiry
                    .as_ref()
                    .is_some_and(|e| Instant::now() < e.expires_at)
        }) else {
            return Ok(None);
        };
        Ok(Some(Issued {
            token: fetcher.store.open_session(need.service, &token.sealed)?,
            generation: token.generation,
        }))
    }
}

/// `login` for a login session, `token_refresh` for the token sources of
/// SPEC §13.1.
fn action(need: &Need<'_>) -> Action {
    if need.source.is_login() {
        Action::Login
    } else {
        Action::TokenRefresh
    }
}

/// Where the token request went, and the scope it asked for.
fn detail(need: &Need<'_>, fetch: &crate::connector::token::Fetch) -> Detail {
    let mut detail = Detail::request("POST", &fetch.host, &fetch.path);
    if let Some(scope) = need.scope.filter(|_| need.source.is_scoped()) {
        detail.note = Some(format!("scope {}", scope.key));
    }
    detail
}

/// The configured refresh token, if the source rotates refresh tokens.
fn configured_refresh_token<'a>(need: &Need<'a>) -> Option<&'a str> {
    need.source
        .rotates()
        .then(|| need.creds.get("refresh_token"))
        .flatten()
}

/// The refresh token the endpoint rotated to, while the configured one is
/// still the one it replaced.
fn rotated_refresh_token(
    store: &Store,
    need: &Need<'_>,
) -> Result<Option<Secret<String>>, TokenError> {
    match configured_refresh_token(need) {
        Some(configured) => Ok(store.rotated_refresh_token(need.service, configured)?),
        None => Ok(None),
    }
}

/// Keeps a new refresh token from the answer (sealed, and in the
/// snapshot). Not keeping it is logged, not fatal: the token in hand works,
/// and the one used may still work next time.
fn keep_rotated(
    store: &Store,
    need: &Need<'_>,
    used: Option<&Secret<String>>,
    new: &Secret<String>,
) {
    let Some(configured) = configured_refresh_token(need) else {
        return;
    };
    let used = used.map_or(configured, |t| t.expose().as_str());
    if crate::secret::ct_eq(used.as_bytes(), new.expose().as_bytes()) {
        return;
    }
    match store.keep_rotated_refresh_token(need.service, configured, new.expose()) {
        Ok(()) => {
            tracing::info!(service = %need.service.name, "the token endpoint rotated the refresh token; kept")
        }
        Err(e) => {
            tracing::warn!(service = %need.service.name, error = %e, "could not keep the rotated refresh token")
        }
    }
}
