//! Who is calling the admin port: the admin token, an agent token, or nobody.
//! The agent shares the pod's localhost, so every check here assumes a
//! hostile caller: `Host`/`Origin` validated (DNS rebinding), tokens only in
//! `Authorization: Bearer`, compared in constant time, failures throttled.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State as AxumState};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::agent::Agent;
use crate::app::State;
use crate::audit::{Action, Actor, Detail, Event};
use crate::error::ProxyError;
use crate::proxy::headers::split_host_port;

/// The authenticated caller of an admin route.
#[derive(Debug, Clone)]
pub enum Principal {
    Admin,
    Agent(Arc<Agent>),
}

impl Principal {
    pub fn actor(&self) -> Actor {
        match self {
            Principal::Admin => Actor::Admin,
            Principal::Agent(a) => Actor::Api(a.name.clone()),
        }
    }

    /// May this caller see (and use) the service? Outside scope reads as 404.
    pub fn sees(&self, service: &str) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Agent(a) => a.may_use(service),
        }
    }

    pub fn require_admin(&self) -> Result<(), ProxyError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Agent(a) => Err(ProxyError::Forbidden(format!(
                "agent {:?} may not call an admin-only route",
                a.name
            ))),
        }
    }

    pub fn agent(&self) -> Option<&Arc<Agent>> {
        match self {
            Principal::Admin => None,
            Principal::Agent(a) => Some(a),
        }
    }
}

/// Failed authentications per peer: past `LIMIT` in `WINDOW`, every request
/// from that peer gets 429 until the window ends.
#[derive(Debug, Default)]
pub struct Throttle {
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

const LIMIT: u32 = 10;
const WINDOW: Duration = Duration::from_secs(60);

impl Throttle {
    fn blocked(&self, ip: IpAddr) -> bool {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ip)
            .is_some_and(|(start, n)| *n >= LIMIT && start.elapsed() < WINDOW)
    }

    fn fail(&self, ip: IpAddr) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, (start, _)| start.elapsed() < WINDOW);
        }
        let entry = map.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }
}

/// Accepts a `Host` that names this admin port: loopback names, the listen
/// address, or `admin.allowed_hosts`.
fn host_allowed(state: &State, headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let Some((name, _port)) = split_host_port(host) else {
        return false;
    };
    let listen = state.admin_addr.ip();
    matches!(name.as_str(), "localhost" | "127.0.0.1" | "[::1]")
        || name == listen.to_string()
        || name == format!("[{listen}]")
        || state
            .config
            .admin
            .allowed_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(&name))
}

/// An absent `Origin` is fine (non-browser clients); a present one must be a
/// loopback origin or listed in `admin.allowed_origins`.
fn origin_allowed(state: &State, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if state
        .config
        .admin
        .allowed_origins
        .iter()
        .any(|o| o == origin)
    {
        return true;
    }
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    split_host_port(rest)
        .is_some_and(|(h, _)| matches!(h.as_str(), "localhost" | "127.0.0.1" | "[::1]"))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Middleware for every authenticated route: Host and Origin first, then the
/// throttle, then the bearer token. The principal goes into the request's
/// extensions.
pub async fn authenticate(
    AxumState(state): AxumState<State>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    if !host_allowed(&state, req.headers()) {
        return ProxyError::Forbidden("Host header does not name this admin port".into())
            .into_response();
    }
    if !origin_allowed(&state, req.headers()) {
        return ProxyError::Forbidden("Origin not allowed".into()).into_response();
    }
    if state.admin_throttle.blocked(peer.ip()) {
        return ProxyError::TooManyRequests(
            "too many failed authentications; wait a minute".into(),
        )
        .into_response();
    }
    let principal = bearer(req.headers()).and_then(|token| {
        if state.admin_token.matches(token.as_bytes()) {
            Some(Principal::Admin)
        } else {
            state
                .config
                .agents
                .by_token(token.as_bytes())
                .map(Principal::Agent)
        }
    });
    let Some(principal) = principal else {
        state.admin_throttle.fail(peer.ip());
        tracing::info!(peer = %peer.ip(), path = req.uri().path(), "admin authentication failed");
        // Audited up to the throttle (ten a minute per address), so a
        // guessing agent leaves a trace without flooding the log. `@` is
        // not allowed in agent names: the label cannot pass for one.
        let mut detail = Detail::request(req.method().as_str(), "admin", req.uri().path());
        detail.note = Some("authentication failed".into());
        detail.set_status(401);
        let actor = Actor::Api(format!("unauthenticated@{}", peer.ip()));
        let _ = state
            .audit
            .record(Event::new(Action::Denied, "", &actor, detail));
        return ProxyError::Unauthorized.into_response();
    };
    req.extensions_mut().insert(principal);
    next.run(req).await
}
