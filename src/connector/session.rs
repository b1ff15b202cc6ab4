//! Login sessions (Kalshi `email` + `password`): clavis logs in, keeps the
//! token sealed under the master key, and sends `Authorization: Bearer
//! <token>`. One login at a time per service, shared by every request; a new
//! login on
//! expiry (idle or absolute) or when the upstream answers 401, at most one
//! per [`RELOGIN_BACKOFF`] after a refused token or a failed login, so
//! neither a misbehaving upstream nor a wrong password can cause a login
//! storm that locks the account.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use http::{header, HeaderValue, Method, Request};

use crate::app::State;
use crate::audit::{Action, Actor, Detail, Event};
use crate::body;
use crate::error::ProxyError;
use crate::secret::Secret;
use crate::store::Service;

/// The login endpoint, relative to the connector's host. Agents may not call it.
pub const KALSHI_LOGIN_PATH: &str = "/trade-api/v2/login";
pub const RELOGIN_BACKOFF: Duration = Duration::from_secs(20);

/// Whether `path` names the login endpoint however it is spelled: escapes
/// decoded (twice, for servers that decode again), dot segments resolved,
/// empty segments and a trailing `/` dropped, any case.
pub fn is_login_path(path: &str) -> bool {
    // Every Kalshi request asks: without an escape or the word itself there
    // is nothing to decode.
    let bytes = path.as_bytes();
    if !bytes.contains(&b'%') && !bytes.windows(5).any(|w| w.eq_ignore_ascii_case(b"login")) {
        return false;
    }
    let mut decoded = path.to_owned();
    for _ in 0..2 {
        decoded = String::from_utf8_lossy(&super::inject::percent_decode(&decoded)).into_owned();
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split(['/', '\\']) {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let login = KALSHI_LOGIN_PATH.split('/').filter(|s| !s.is_empty());
    segments.len() == login.clone().count()
        && segments
            .iter()
            .zip(login)
            .all(|(a, b)| a.eq_ignore_ascii_case(b))
}

struct Token {
    /// Sealed under the master key like the credentials it came from
    /// (SPEC §7); opened for each use.
    sealed: Arc<[u8]>,
    generation: u64,
    obtained: Instant,
    last_used: Instant,
}

#[derive(Default)]
struct Slot {
    current: std::sync::Mutex<Option<Token>>,
    /// Held while logging in: the single flight.
    login: tokio::sync::Mutex<LastLogin>,
}

/// When the last login was attempted, and whether it failed.
#[derive(Default)]
struct LastLogin {
    at: Option<Instant>,
    failed: bool,
}

impl LastLogin {
    fn within_backoff(&self) -> bool {
        self.at.is_some_and(|at| at.elapsed() < RELOGIN_BACKOFF)
    }
}

pub struct Sessions {
    slots: DashMap<String, Arc<Slot>>,
    idle: Duration,
    max_age: Duration,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("services", &self.slots.len())
            .finish()
    }
}

impl Sessions {
    pub fn new(idle: Duration, max_age: Duration) -> Sessions {
        Sessions {
            slots: DashMap::new(),
            idle,
            max_age,
        }
    }

    /// Forgets a service's session (its credentials changed or it was deleted).
    pub fn forget(&self, service_id: &str) {
        self.slots.remove(service_id);
    }

    fn slot(&self, service: &Service) -> Arc<Slot> {
        self.slots.entry(service.id.clone()).or_default().clone()
    }

    fn valid(&self, slot: &Slot, stale: Option<u64>) -> Option<(Arc<[u8]>, u64)> {
        let mut current = slot.current.lock().unwrap_or_else(|p| p.into_inner());
        let token = current.as_mut()?;
        let fresh =
            token.last_used.elapsed() < self.idle && token.obtained.elapsed() < self.max_age;
        if !fresh || Some(token.generation) == stale {
            return None;
        }
        token.last_used = Instant::now();
        Some((token.sealed.clone(), token.generation))
    }

    /// Opens a valid token outside the slot's lock.
    fn opened(
        state: &State,
        service: &Service,
        (sealed, generation): (Arc<[u8]>, u64),
    ) -> Result<(Secret<String>, u64), ProxyError> {
        let token = state
            .store
            .open_session(service, &sealed)
            .map_err(|e| ProxyError::Internal(e.to_string()))?;
        Ok((token, generation))
    }

    /// A valid token, logging in when there is none, it expired, or it is
    /// `stale` (the generation the upstream just refused with 401).
    pub async fn token(
        &self,
        state: &State,
        service: &Service,
        host: &str,
        actor: &Actor,
        stale: Option<u64>,
    ) -> Result<(Secret<String>, u64), ProxyError> {
        let slot = self.slot(service);
        if let Some(t) = self.valid(&slot, stale) {
            return Self::opened(state, service, t);
        }
        let mut last_login = slot.login.lock().await;
        // Someone else may have logged in while this request waited.
        if let Some(t) = self.valid(&slot, stale) {
            return Self::opened(state, service, t);
        }
        // A refused fresh token, or a failed login (wrong password, upstream
        // down): the next attempt waits out the backoff, however many
        // requests come meanwhile, so they cannot lock the account.
        if last_login.within_backoff() && (stale.is_some() || last_login.failed) {
            let reason = if last_login.failed {
                "the last login failed moments ago; not trying again so soon"
            } else {
                "the upstream refused a fresh session token; not logging in again so soon"
            };
            return Err(ProxyError::LoginFailed {
                service: service.name.clone(),
                reason: reason.into(),
            });
        }
        last_login.at = Some(Instant::now());
        let outcome = login(state, service, host, actor).await;
        last_login.failed = outcome.is_err();
        let value = outcome?;
        let sealed: Arc<[u8]> = state
            .store
            .seal_session(service, value.expose())
            .map_err(|e| ProxyError::Internal(e.to_string()))?
            .into();
        let mut current = slot.current.lock().unwrap_or_else(|p| p.into_inner());
        let generation = current.as_ref().map_or(1, |t| t.generation + 1);
        *current = Some(Token {
            sealed,
            generation,
            obtained: Instant::now(),
            last_used: Instant::now(),
        });
        Ok((value, generation))
    }
}

/// `POST /trade-api/v2/login {"email","password"}` → `{"token": ...}`.
async fn login(
    state: &State,
    service: &Service,
    host: &str,
    actor: &Actor,
) -> Result<Secret<String>, ProxyError> {
    let failed = |reason: String| ProxyError::LoginFailed {
        service: service.name.clone(),
        reason,
    };
    let creds = state.credentials(service)?;
    let creds = creds.expose();
    let (Some(email), Some(password)) = (creds.get("email"), creds.get("password")) else {
        return Err(failed("credentials need email and password".into()));
    };
    let body = zeroize::Zeroizing::new(
        serde_json::json!({"email": email, "password": password}).to_string(),
    );
    let event = state.audit.record(Event::new(
        Action::Login,
        &service.name,
        actor,
        Detail::request("POST", host, KALSHI_LOGIN_PATH),
    ))?;
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("https://{host}{KALSHI_LOGIN_PATH}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json")
        .body(body::full(Bytes::copy_from_slice(body.as_bytes())))
        .map_err(|e| ProxyError::Internal(e.to_string()))?;
    let response = state.upstream.send(host, request).await?;
    let status = response.status();
    event.set_status(status.as_u16());
    if !status.is_success() {
        tracing::warn!(service = %service.name, status = status.as_u16(), "login refused");
        return Err(failed(format!(
            "{host} answered {} to the login",
            status.as_u16()
        )));
    }
    let bytes = body::collect_capped(response.into_body(), 64 * 1024)
        .await
        .map_err(|_| failed("unreadable login answer".into()))?;
    let parsed: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| failed("login answer is not JSON".into()))?;
    let token = parsed
        .get("token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty() && HeaderValue::from_str(t).is_ok())
        .ok_or_else(|| failed("login answer has no usable token".into()))?;
    tracing::info!(service = %service.name, "logged in");
    Ok(Secret::new(token.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_path_is_recognised_however_it_is_spelled() {
        for path in [
            "/trade-api/v2/login",
            "/trade-api/v2/login/",
            "//trade-api//v2/login",
            "/trade-api/v2/./login",
            "/trade-api/v1/../v2/login",
            "/trade-api/v2/%6cogin",
            "/trade-api/v2/%256cogin",
            "/trade-api%2Fv2%2Flogin",
            "/Trade-API/V2/LOGIN",
            "/trade-api\\v2\\login",
        ] {
            assert!(is_login_path(path), "{path}");
        }
        for path in [
            "/trade-api/v2/logins",
            "/trade-api/v2/portfolio/balance",
            "/login",
            "/",
        ] {
            assert!(!is_login_path(path), "{path}");
        }
    }
}
