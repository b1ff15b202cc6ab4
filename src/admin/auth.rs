//! Who is calling the admin port: the admin token, an agent token, or nobody.
//! The agent shares the pod's localhost, so every check here assumes a
//! hostile caller: `Host`/`Origin` validated (DNS rebinding), tokens only in
//! `Authorization: Bearer`, compared in constant time, failures throttled.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State as AxumState};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::audit::{Action, Detail, Event};
use crate::error::{ProxyError, Refusal};
use crate::host::split_host_port;
use crate::identity::{Caller, Via};
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

/// Middleware for every authenticated route: Host and Origin first, then the
/// throttle, then the bearer token. The principal goes into the request's
/// extensions.
pub(super) async fn authenticate(
    AxumState(state): AxumState<State>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    if !host_allowed(&state, req.headers()) {
        return ProxyError::from(Refusal::AdminHost).into_response();
    }
    if !origin_allowed(&state, req.headers()) {
        return ProxyError::from(Refusal::AdminOrigin).into_response();
    }
    if let Some(retry_after) = state.admin_throttle.blocked(peer.ip()) {
        return ProxyError::Throttled { retry_after }.into_response();
    }
    let caller = bearer(req.headers()).and_then(|token| {
        if state.admin_token.matches(token.as_bytes()) {
            Some(Caller::admin(Via::Api))
        } else {
            state
                .config
                .agents
                .by_token(token.as_bytes())
                .map(|agent| Caller::agent(agent, Via::Api))
        }
    });
    let Some(caller) = caller else {
        state.admin_throttle.fail(peer.ip());
        tracing::info!(peer = %peer.ip(), path = req.uri().path(), "admin authentication failed");
        // Audited up to the throttle (ten a minute per address), so a
        // guessing agent leaves a trace without flooding the log.
        let mut detail = Detail::request(req.method().as_str(), "admin", req.uri().path());
        detail.note = Some("authentication failed".into());
        detail.set_status(401);
        let actor = Caller::unauthenticated(peer.ip());
        let _ = state
            .audit
            .record(Event::new(Action::Denied, "", &actor.actor(), detail));
        return ProxyError::Unauthenticated.into_response();
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}
