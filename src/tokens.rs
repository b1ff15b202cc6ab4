//! Tokens clavis fetches with a service's credentials (a
//! [`TokenSource`]: the Kalshi login, OAuth 2.0 endpoints, GitHub App
//! installation tokens), so the agent never holds them either. Each is
//! sealed under the master key like the credentials it came from and tied
//! to their version: new credentials, a deleted service or an expired token
//! (idle or absolute age) mean a new fetch. One fetch at a time per service
//! and [`TokenScope`] (an agent's own narrowing), shared by every waiting
//! request.
//!
//! Tokens with a known lifetime (SPEC §13.1) are renewed once 80 % of it
//! has passed. A refresh token the endpoint rotates is kept in the store and
//! used from then on (see [`Tokens::issue`]).
//!
//! A token the upstream refuses (`401`) is renewed once, for every request
//! that was refused with it, and each of them is sent again once. What stops
//! a login storm is [`Attempts`]: only a token *fresh from such a re-login*
//! that is refused again before any request with it succeeded, or a failed
//! login, starts a back-off (1 s, doubling up to [`MAX_BACKOFF`]). Within it
//! no login is tried: a request refused with the current token gets the
//! upstream's own `401`, one that has no token at all gets `502`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use tokio::time::Instant;

use crate::audit::{Action, AuditError, AuditLog, Detail, Event};
use crate::body;
use crate::connector::token::{Fetch, FetchInput, Fresh};
use crate::connector::{FetchError, TokenSource};
use crate::credentials::Credentials;
use crate::identity::{Actor, TokenScope};
use crate::secret::Secret;
use crate::store::{Service, Store, StoreError};
use crate::upstream::{Upstream, UpstreamError};

/// The first back-off after a refused fresh token or a failed login; each
/// further one in a row doubles it, up to [`MAX_BACKOFF`].
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(60);

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
    #[error("service {service:?}: login failed moments ago; not trying again for {wait_secs} s")]
    Backoff { service: String, wait_secs: u64 },
    /// A token source of SPEC §13.1 (not a login) could not give a token.
    #[error("service {service:?}: the access token could not be renewed: {reason}")]
    Refresh {
        service: String,
        reason: String,
        #[source]
        cause: Box<TokenError>,
    },
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl TokenError {
    /// Whether a request the upstream already answered `401` should get that
    /// answer rather than this error: the re-login did not happen or did
    /// not work, and the agent is better served by the upstream's own
    /// refusal than by clavis's. An audit or store failure stays an error.
    pub(crate) fn yields_to_the_upstream(&self) -> bool {
        match self {
            TokenError::Fetch { .. } | TokenError::Backoff { .. } | TokenError::Upstream(_) => true,
            TokenError::Refresh { cause, .. } => cause.yields_to_the_upstream(),
            TokenError::Audit(_) | TokenError::Store(_) => false,
        }
    }

    /// The error as SPEC §13.1 answers it for a token source that is not a
    /// login: `token-refresh-failed`, naming the service and why (never a
    /// secret). Audit and store failures stay what they are.
    fn refresh_failed(self, service: &str) -> TokenError {
        let reason = match &self {
            TokenError::Fetch { source, .. } => source.to_string(),
            TokenError::Upstream(e) => e.to_string(),
            TokenError::Backoff { wait_secs, .. } => {
                format!("the last attempt failed moments ago; not trying again for {wait_secs} s")
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
    /// When a token with a known lifetime is renewed, and when it expires.
    expiry: Option<Expiry>,
    /// Fetched because the upstream refused the token before it.
    renewal: bool,
    /// Set once the upstream answered a request carrying it with anything
    /// but `401`.
    accepted: Arc<AtomicBool>,
}

#[derive(Default)]
struct Slot {
    current: std::sync::Mutex<Option<Token>>,
    /// Held while fetching: the single flight.
    fetch: tokio::sync::Mutex<Attempts>,
}

/// The back-off between logins: how many went wrong in a row (a failed
/// login, or a renewed token refused before it was ever accepted) and
/// until when no login is tried.
#[derive(Debug, Default)]
pub(crate) struct Attempts {
    streak: u32,
    until: Option<Instant>,
    /// The last fetch failed (no token came of it).
    failed: bool,
    /// The generation whose refusal started the current back-off, so many
    /// requests refused with one token count once.
    refused: Option<u64>,
}

impl Attempts {
    /// How long is left of the back-off at `now`, if any.
    pub(crate) fn left(&self, now: Instant) -> Option<Duration> {
        self.until
            .and_then(|until| until.checked_duration_since(now))
            .filter(|left| !left.is_zero())
    }

    /// Something went wrong again: the next back-off, twice the last one.
    pub(crate) fn went_wrong(&mut self, now: Instant) -> Duration {
        let delay = FIRST_BACKOFF
            .saturating_mul(1u32 << self.streak.min(16))
            .min(MAX_BACKOFF);
        self.streak = self.streak.saturating_add(1);
        self.until = Some(now + delay);
        delay
    }

    /// A token worked: the next trouble starts from the first back-off.
    fn reset(&mut self) {
        self.streak = 0;
        self.until = None;
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
    accepted: Arc<AtomicBool>,
}

impl Issued {
    /// The upstream answered a request carrying this token with anything
    /// but `401`: it works, so a later refusal is news (a revocation), not
    /// a sign of a misbehaving upstream.
    pub(crate) fn accepted(&self) {
        self.accepted.store(true, Ordering::Relaxed);
    }
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

impl Need<'_> {
    /// The scope the token is fetched for, when the source narrows tokens.
    fn scope(&self) -> Option<&TokenScope> {
        self.scope
            .filter(|_| self.source.is_scoped())
            .map(Arc::as_ref)
    }
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
}

/// The cache key of a scoped token: the service id, a NUL, the scope.
fn scoped_key(service_id: &str, scope: &str) -> String {
    format!("{service_id}\0{scope}")
}

impl Tokens {
    pub(crate) fn new(idle: Duration, max_age: Duration) -> Tokens {
        Tokens {
            slots: DashMap::new(),
            idle,
            max_age,
        }
    }

    /// Forgets a service's token and its back-off: its credentials changed
    /// or it was deleted. (A token is also never used with credentials
    /// other than the ones that fetched it.)
    pub(crate) fn forget(&self, service_id: &str) {
        self.slots.remove(service_id);
        let scoped = scoped_key(service_id, "");
        self.slots.retain(|key, _| !key.starts_with(&scoped));
    }

    /// The slot of a need: one per service, and one per scope of a scoped
    /// source (a token of its own, with its own fetch and back-off).
    fn slot(&self, need: &Need<'_>) -> Arc<Slot> {
        let key = match need.scope() {
            Some(scope) => scoped_key(&need.service.id, &scope.key),
            None => need.service.id.clone(),
        };
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
    ) -> Option<(Arc<[u8]>, u64, Arc<AtomicBool>)> {
        let mut current = slot.current.lock().unwrap_or_else(|p| p.into_inner());
        let token = current.as_mut()?;
        let now = Instant::now();
        let fresh = now.duration_since(token.last_used) < self.idle
            && now.duration_since(token.obtained) < self.max_age
            && token.credentials == service.credentials_version()
            && token.expiry.as_ref().is_none_or(|e| now < e.renew_at);
        if !fresh || Some(token.generation) == stale {
            return None;
        }
        token.last_used = now;
        Some((
            token.sealed.clone(),
            token.generation,
            token.accepted.clone(),
        ))
    }

    fn open(
        fetcher: &Fetcher<'_>,
        service: &Service,
        (sealed, generation, accepted): (Arc<[u8]>, u64, Arc<AtomicBool>),
    ) -> Result<Issued, TokenError> {
        Ok(Issued {
            token: fetcher.store.open_session(service, &sealed)?,
            generation,
            accepted,
        })
    }

    /// A valid token for the service, fetched when there is none or it
    /// expired; within a back-off, an error instead of a login.
    pub(crate) async fn get(
        &self,
        fetcher: &Fetcher<'_>,
        need: &Need<'_>,
    ) -> Result<Issued, TokenError> {
        let slot = self.slot(need);
        if let Some(t) = self.valid(&slot, need.service, None) {
            return Self::open(fetcher, need.service, t);
        }
        let mut attempts = slot.fetch.lock().await;
        // Someone else may have fetched one while this request waited.
        if let Some(t) = self.valid(&slot, need.service, None) {
            return Self::open(fetcher, need.service, t);
        }
        if let Some(left) = attempts.left(Instant::now()) {
            return Err(TokenError::Backoff {
                service: need.service.name.clone(),
                wait_secs: left.as_secs().max(1),
            });
        }
        self.fetch_into(&slot, &mut attempts, fetcher, need, false)
            .await
    }

    /// The upstream refused the token of generation `stale` (`401`): a
    /// renewed one (fetched once, however many requests were refused with
    /// it), or `None` when no login is due (the refused token was itself
    /// fresh from a re-login, or a back-off runs): the request then gets
    /// the upstream's own answer.
    pub(crate) async fn renew(
        &self,
        fetcher: &Fetcher<'_>,
        need: &Need<'_>,
        stale: u64,
    ) -> Result<Option<Issued>, TokenError> {
        let slot = self.slot(need);
        if let Some(t) = self.valid(&slot, need.service, Some(stale)) {
            return Self::open(fetcher, need.service, t).map(Some);
        }
        let mut attempts = slot.fetch.lock().await;
        if let Some(t) = self.valid(&slot, need.service, Some(stale)) {
            return Self::open(fetcher, need.service, t).map(Some);
        }
        let now = Instant::now();
        let (worked, fresh_renewal) = {
            let current = slot.current.lock().unwrap_or_else(|p| p.into_inner());
            match current.as_ref().filter(|t| t.generation == stale) {
                Some(t) => {
                    let worked = t.accepted.load(Ordering::Relaxed);
                    (worked, t.renewal && !worked)
                }
                None => (false, false),
            }
        };
        // Each refused token is judged once, however many requests it
        // was refused for.
        if attempts.refused != Some(stale) {
            attempts.refused = Some(stale);
            if worked {
                // Revoked after it worked: news, not a storm.
                attempts.reset();
            } else if fresh_renewal {
                let delay = attempts.went_wrong(now);
                tracing::warn!(
                    service = %need.service.name,
                    backoff_ms = delay.as_millis() as u64,
                    "the upstream refused a token fresh from a re-login; backing off"
                );
                return Ok(None);
            }
        }
        if attempts.left(now).is_some() {
            return Ok(None);
        }
        self.fetch_into(&slot, &mut attempts, fetcher, need, true)
            .await
            .map(Some)
    }

    /// Fetches a token (the caller holds the single flight) and makes it the
    /// current one; a failed login starts or lengthens the back-off.
    async fn fetch_into(
        &self,
        slot: &Slot,
        attempts: &mut Attempts,
        fetcher: &Fetcher<'_>,
        need: &Need<'_>,
        renewal: bool,
    ) -> Result<Issued, TokenError> {
        let Fresh {
            token, lifetime, ..
        } = match fetch(fetcher, need).await {
            Ok(fresh) => fresh,
            Err(e) => {
                attempts.failed = true;
                // Nothing was sent when the audit or the store failed: no
                // reason to wait before the next try.
                if !matches!(e, TokenError::Audit(_) | TokenError::Store(_)) {
                    attempts.went_wrong(Instant::now());
                }
                return Err(e);
            }
        };
        attempts.failed = false;
        let service = need.service;
        let sealed: Arc<[u8]> = fetcher.store.seal_session(service, token.expose())?.into();
        let accepted = Arc::new(AtomicBool::new(false));
        let mut current = slot.current.lock().unwrap_or_else(|p| p.into_inner());
        let generation = current.as_ref().map_or(1, |t| t.generation + 1);
        let now = Instant::now();
        *current = Some(Token {
            sealed,
            generation,
            credentials: service.credentials_version(),
            obtained: now,
            last_used: now,
            expiry: lifetime.map(Expiry::after),
            renewal,
            accepted: accepted.clone(),
        });
        Ok(Issued {
            token,
            generation,
            accepted,
        })
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
    ) -> Result<Issued, TokenError> {
        match self.get(fetcher, need).await {
            Ok(issued) => Ok(issued),
            Err(e) if need.source.is_login() => Err(e),
            Err(e) => {
                if e.yields_to_the_upstream() {
                    if let Some(issued) = self.unexpired(fetcher, need)? {
                        tracing::warn!(service = %need.service.name, "token renewal failed; the current token is used until it expires");
                        return Ok(issued);
                    }
                }
                Err(e.refresh_failed(&need.service.name))
            }
        }
    }

    /// [`Tokens::renew`], with a source's failures named as
    /// `token-refresh-failed` like [`Tokens::issue`]'s.
    pub(crate) async fn reissue(
        &self,
        fetcher: &Fetcher<'_>,
        need: &Need<'_>,
        stale: u64,
    ) -> Result<Option<Issued>, TokenError> {
        match self.renew(fetcher, need, stale).await {
            Err(e) if !need.source.is_login() => Err(e.refresh_failed(&need.service.name)),
            other => other,
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
            accepted: token.accepted.clone(),
        }))
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
        scope: need.scope(),
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
fn detail(need: &Need<'_>, fetch: &Fetch) -> Detail {
    let mut detail = Detail::request("POST", &fetch.host, &fetch.path);
    if let Some(scope) = need.scope() {
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

#[cfg(test)]
mod tests {
    use super::*;

    mod attempts {
        use super::*;

        #[test]
        fn back_off_doubles_from_one_second_to_the_cap() {
            let start = Instant::now();
            let mut a = Attempts::default();
            assert_eq!(a.left(start), None, "no back-off before trouble");
            let delays: Vec<u64> = (0..9).map(|_| a.went_wrong(start).as_secs()).collect();
            assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
            assert_eq!(a.left(start), Some(MAX_BACKOFF));
            assert_eq!(a.left(start + MAX_BACKOFF), None, "it ends");
        }

        #[test]
        fn a_token_that_worked_starts_the_next_trouble_from_the_first_back_off() {
            let now = Instant::now();
            let mut a = Attempts::default();
            a.went_wrong(now);
            a.went_wrong(now);
            a.reset();
            assert_eq!(a.left(now), None);
            assert_eq!(a.went_wrong(now), FIRST_BACKOFF);
        }

        #[test]
        fn a_long_streak_does_not_overflow() {
            let now = Instant::now();
            let mut a = Attempts {
                streak: u32::MAX,
                ..Attempts::default()
            };
            assert_eq!(a.went_wrong(now), MAX_BACKOFF);
        }
    }
}
