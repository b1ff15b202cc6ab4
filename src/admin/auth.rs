//! Who is calling the admin port: the admin token, an agent token, or nobody.
//! The agent shares the pod's localhost, so every check here assumes a
//! hostile caller: `Host`/`Origin` validated (DNS rebinding), tokens only in
//! `Authorization: Bearer`, compared in constant time, failures throttled
//! (never a valid token), every refusal audited within a budget.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State as AxumState};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::audit::{Action, Detail, Event};
use crate::error::{AdminRefusal, ProxyError, Refusal};
use crate::host::split_host_port;
use crate::identity::{Caller, Spend, Via};
use crate::state::State;

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
/// loopback origin, listed in `admin.allowed_origins`, or the page's own
/// (`http://` + the `Host` already checked): the console, served from this
/// port, sends its own origin on every POST.
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
    if let (Some(own), Some(host)) = (
        origin.strip_prefix("http://"),
        headers.get(header::HOST).and_then(|h| h.to_str().ok()),
    ) {
        if own.eq_ignore_ascii_case(host) {
            return true;
        }
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

/// The caller a bearer token names: the admin or an agent. Both digests
/// are compared every time (in constant time), so the answer's timing does
/// not tell which kind of token came close.
fn caller_of(state: &State, token: &str) -> Option<Caller> {
    let admin = state.admin_token.matches(token.as_bytes());
    let agent = state.live().agents.by_token(token.as_bytes());
    match (admin, agent) {
        (true, _) => Some(Caller::admin(Via::Api)),
        (false, Some(agent)) => Some(Caller::agent(agent, Via::Api)),
        (false, None) => None,
    }
}

/// Middleware for every authenticated route: Host and Origin first, then the
/// bearer token, checked before anything else so a valid token is always
/// served; only failing attempts count against the throttle. The principal
/// goes into the request's extensions, and a refusal the route answers is
/// audited on the way out.
pub(super) async fn authenticate(
    AxumState(state): AxumState<State>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let request_detail = |note: String, status: u16| {
        let mut detail = Detail::request(req.method().as_str(), "admin", req.uri().path());
        detail.note = Some(note);
        detail.set_status(status);
        detail
    };
    let refusal = if !host_allowed(&state, req.headers()) {
        Some(Refusal::AdminHost)
    } else if !origin_allowed(&state, req.headers()) {
        Some(Refusal::AdminOrigin)
    } else {
        None
    };
    if let Some(refusal) = refusal {
        let e = ProxyError::from(refusal);
        let detail = request_detail(e.to_string(), e.status().as_u16());
        super::denied::audit(&state, &Caller::unauthenticated(peer.ip()), "", detail);
        return e.into_response();
    }
    let Some(caller) = bearer(req.headers()).and_then(|token| caller_of(&state, token)) else {
        return failed(&state, peer, request_detail);
    };
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    req.extensions_mut().insert(caller.clone());
    let response = next.run(req).await;
    if let Some(refused) = response.extensions().get::<AdminRefusal>() {
        // The admin asking for something that does not exist is a miss,
        // not a refusal.
        let miss = caller.require_admin().is_ok() && response.status() == 404;
        if !miss {
            let mut detail = Detail::request(method.as_str(), "admin", &path);
            detail.note = Some(refused.0.clone());
            detail.set_status(response.status().as_u16());
            super::denied::audit(&state, &caller, "", detail);
        }
    }
    response
}

/// A failed authentication: `401`, audited, up to the throttle; past it
/// `429` with `Retry-After`, one audit line saying so, then silence until
/// the window ends, so a guessing agent leaves a trace without flooding
/// the log.
fn failed(state: &State, peer: SocketAddr, detail: impl Fn(String, u16) -> Detail) -> Response {
    let actor = Caller::unauthenticated(peer.ip());
    let audit = |d: Detail| {
        let _ = state
            .audit
            .record(Event::new(Action::Denied, "", &actor.actor(), d));
    };
    match state.admin_throttle.fail(peer.ip()) {
        Spend::Within => {
            tracing::info!(peer = %peer.ip(), "admin authentication failed");
            audit(detail("authentication failed".into(), 401));
            ProxyError::Unauthenticated.into_response()
        }
        Spend::Exhausted { left } => {
            tracing::warn!(peer = %peer.ip(), "admin authentication failures throttled");
            audit(detail(
                format!(
                    "authentication failed too often; further failures from this address are answered 429 and not audited for {} s",
                    left.as_secs()
                ),
                429,
            ));
            ProxyError::Throttled { retry_after: left }.into_response()
        }
        Spend::Over { left } => ProxyError::Throttled { retry_after: left }.into_response(),
    }
}
