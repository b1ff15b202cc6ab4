//! One request, from agent to upstream and back, in pingora's phases:
//! check destination (421) → choose service (403) → strip → open secret (503)
//! → audit (fail closed) → inject → send over verified TLS (502/504) →
//! stream back. The proxy port, `/v1/proxy` and MCP all call [`forward`].

use std::sync::Arc;
use std::time::Instant;

use http::{header, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;

use super::{headers, scrub};
use crate::agent::Agent;
use crate::app::State;
use crate::audit::{Action, Actor, Detail, Event};
use crate::body::{self, Body};
use crate::connector::inject::Plan;
use crate::connector::{session, Connector, Inject};
use crate::error::ProxyError;
use crate::store::Service;

/// Where requests go. Fixed by the CONNECT authority on the proxy port (or by
/// the service on the admin port) and never by anything inside a request.
#[derive(Debug)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub connector: Arc<Connector>,
    /// `host[:port]` as every upstream URI carries it.
    authority: http::uri::Authority,
    stats: crate::metrics::ConnectorStats,
}

impl Target {
    /// `host` is already normalized (lowercase, no trailing dot); a name
    /// that is not a valid authority is refused.
    pub fn new(
        state: &State,
        host: String,
        port: u16,
        connector: Arc<Connector>,
    ) -> Result<Target, ProxyError> {
        let text = if port == 443 {
            host.clone()
        } else {
            format!("{host}:{port}")
        };
        let authority = text
            .parse()
            .map_err(|_| ProxyError::BadRequest(format!("{text:?} is not a valid authority")))?;
        let stats = state.metrics.for_connector(&connector.name);
        Ok(Target {
            host,
            port,
            connector,
            authority,
            stats,
        })
    }
}

/// Who is asking.
#[derive(Debug, Clone)]
pub struct Caller {
    pub agent: Option<Arc<Agent>>,
    pub actor: Actor,
}

impl Caller {
    pub fn may_use(&self, service: &str) -> bool {
        self.agent.as_ref().is_none_or(|a| a.may_use(service))
    }

    fn name(&self) -> &str {
        self.agent.as_ref().map_or("anonymous", |a| a.name.as_str())
    }

    /// Counts one more upstream request to `service` for this caller, or
    /// `429` at `limits.max_upstream_requests`.
    fn start_request(
        &self,
        state: &State,
        service: &Service,
    ) -> Result<crate::agent::InFlightGuard, ProxyError> {
        let in_flight = self
            .agent
            .as_ref()
            .map_or(&state.anonymous_in_flight, |a| &a.in_flight);
        let limit = state.config.limits.max_upstream_requests;
        in_flight.try_start(&service.id, limit).ok_or_else(|| {
            ProxyError::TooManyRequests(format!(
                "{} already has {limit} requests in flight to service {:?} (limits.max_upstream_requests)",
                self.name(),
                service.name
            ))
        })
    }
}

/// How the service is picked.
#[derive(Debug, Clone, Copy)]
pub enum Choice<'a> {
    /// From a `clavis:<name>` placeholder, the agent's scope, or `default`.
    FromRequest,
    /// Named by the caller (`/v1/proxy/{name}`, MCP `proxy_request`).
    Named(&'a str),
}

/// A request received inside a MITM'd tunnel: checked against the tunnel's
/// destination, then forwarded.
pub async fn tunneled(
    state: State,
    caller: Arc<Caller>,
    target: Arc<Target>,
    req: Request<Incoming>,
    ambiguous_framing: bool,
) -> Result<Response<Body>, std::convert::Infallible> {
    let checked = if ambiguous_framing {
        Err(ProxyError::BadRequest(
            "ambiguous framing (Transfer-Encoding with Content-Length, or differing Content-Length values) is refused"
                .into(),
        ))
    } else {
        check_inner(&target, &req, state.config.limits.max_uri_bytes)
    };
    let outcome = match checked {
        // Boxed per request: hyper keeps one slot of this future's size per
        // connection for its whole life, and most tunnels are idle.
        Ok(()) => {
            Box::pin(forward(
                &state,
                &caller,
                &target,
                Choice::FromRequest,
                req.map(body::boxed),
            ))
            .await
        }
        Err(e) => {
            deny(&state, &caller, &target, "", req.method(), req.uri(), &e);
            Err(e)
        }
    };
    Ok(outcome.unwrap_or_else(ProxyError::response))
}

/// The destination binding of every inner request (threat model T1).
fn check_inner<B>(target: &Target, req: &Request<B>, max_uri: usize) -> Result<(), ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed(
            "CONNECT inside a tunnel is not allowed".into(),
        ));
    }
    super::check_target_len(req.uri(), max_uri)?;
    let mismatch = |what: &str, value: &str| {
        ProxyError::Misdirected(format!(
            "{what} {value:?} does not match the tunnel's destination {}:{}; nothing was forwarded",
            target.host, target.port
        ))
    };
    if let Some(scheme) = req.uri().scheme_str() {
        if scheme != "https" {
            return Err(mismatch("scheme", scheme));
        }
    }
    if let Some(authority) = req.uri().authority() {
        if !headers::authority_matches(&target.host, target.port, authority.as_str()) {
            return Err(mismatch("authority", authority.as_str()));
        }
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err(ProxyError::BadRequest("more than one Host header".into())),
        (Some(host), None) => {
            let value = host.to_str().unwrap_or("<not text>");
            if !headers::authority_matches(&target.host, target.port, value) {
                return Err(mismatch("Host", value));
            }
        }
        (None, None) if req.version() == Version::HTTP_11 => {
            return Err(ProxyError::BadRequest(
                "HTTP/1.1 request without Host".into(),
            ))
        }
        (None, None) => {}
    }
    let h = req.headers();
    if h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH) {
        return Err(ProxyError::BadRequest(
            "both Transfer-Encoding and Content-Length: ambiguous framing is refused".into(),
        ));
    }
    if h.get_all(header::CONTENT_LENGTH).iter().count() > 1 {
        return Err(ProxyError::BadRequest(
            "more than one Content-Length".into(),
        ));
    }
    if let Some(upgrade) = h
        .get(header::UPGRADE)
        .filter(|_| !is_websocket(req.method(), req.version(), h))
    {
        return Err(ProxyError::BadRequest(format!(
            "protocol upgrade {:?} is not supported through clavis",
            upgrade.to_str().unwrap_or("?")
        )));
    }
    Ok(())
}

/// An HTTP/1.1 `GET` asking to upgrade to `websocket`: the only upgrade
/// that passes (credential injected on the upgrade request).
fn is_websocket(method: &Method, version: Version, headers: &http::HeaderMap) -> bool {
    method == Method::GET
        && version == Version::HTTP_11
        && headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// The service this request may use, counted in flight; or the refusal,
/// with the service once one was chosen.
type Admission =
    Result<(Arc<Service>, crate::agent::InFlightGuard), (Option<Arc<Service>>, ProxyError)>;

fn admit(
    state: &State,
    caller: &Caller,
    target: &Target,
    choice: Choice<'_>,
    parts: &http::request::Parts,
) -> Admission {
    if parts.method == Method::TRACE {
        // The upstream would echo the request, credential included.
        let e = ProxyError::MethodNotAllowed(
            "TRACE is not forwarded to a host clavis injects into".into(),
        );
        return Err((None, e));
    }
    let service =
        choose_service(state, caller, target, choice, &parts.headers).map_err(|e| (None, e))?;
    if matches!(target.connector.inject, Inject::Kalshi) && session::is_login_path(parts.uri.path())
    {
        let e = ProxyError::Forbidden(
            "the login endpoint is reserved to clavis, which holds the session".into(),
        );
        return Err((Some(service), e));
    }
    match caller.start_request(state, &service) {
        Ok(in_flight) => Ok((service, in_flight)),
        Err(e) => Err((Some(service), e)),
    }
}

/// Logs and audits a refused request; `entry` is the service when one was
/// chosen already ("" before that).
fn deny(
    state: &State,
    caller: &Caller,
    target: &Target,
    entry: &str,
    method: &Method,
    uri: &Uri,
    e: &ProxyError,
) {
    tracing::info!(
        agent = caller.name(),
        host = %target.host,
        method = %method,
        path = uri.path(),
        status = e.status().as_u16(),
        error = %e,
        "denied"
    );
    let mut detail = Detail::request(method.as_str(), &target.host, uri.path());
    detail.note = Some(e.to_string());
    detail.set_status(e.status().as_u16());
    // A denial that cannot be audited is still a denial: nothing to fail closed on.
    let _ = state
        .audit
        .record(Event::new(Action::Denied, entry, &caller.actor, detail));
}

/// Forwards one request with the credential injected. The request's own
/// authority is ignored: the URI is rebuilt from `target`.
pub async fn forward(
    state: &State,
    caller: &Arc<Caller>,
    target: &Arc<Target>,
    choice: Choice<'_>,
    req: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    let mut log = ExchangeLog::new(caller, target, req.method(), req.uri());
    let result = forward_logged(state, caller, target, choice, req, &mut log).await;
    let stats = &target.stats;
    match &result {
        Ok(response) => {
            log.status = Some(response.status().as_u16());
            stats.injected.inc();
            stats.duration.observe(log.started.elapsed().as_secs_f64());
        }
        Err(e) => {
            log.status = Some(e.status().as_u16());
            log.error = Some(e.to_string());
            match e.fault() {
                crate::error::Fault::Agent => stats.denied.inc(),
                _ => stats.error.inc(),
            };
            if matches!(e, ProxyError::AuditUnavailable) {
                state.metrics.audit_failures.inc();
            }
        }
    }
    result
}

async fn forward_logged(
    state: &State,
    caller: &Arc<Caller>,
    target: &Arc<Target>,
    choice: Choice<'_>,
    req: Request<Body>,
    log: &mut ExchangeLog<'_>,
) -> Result<Response<Body>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    let (service, in_flight) = match admit(state, caller, target, choice, &parts) {
        Ok(admitted) => admitted,
        Err((service, e)) => {
            let entry = service.as_ref().map_or("", |s| s.name.as_str());
            deny(state, caller, target, entry, &parts.method, &parts.uri, &e);
            log.service = service;
            return Err(e);
        }
    };
    log.service = Some(service.clone());
    let inject = &target.connector.inject;

    let websocket = is_websocket(&parts.method, parts.version, &parts.headers);
    let client_upgrade = if websocket {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::strip_auth(&mut parts.headers, &target.connector.strip);
    if websocket {
        parts.headers.insert(
            header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
        parts
            .headers
            .insert(header::UPGRADE, http::HeaderValue::from_static("websocket"));
    }
    parts.headers.remove(header::HOST);
    for (name, value) in &target.connector.defaults {
        if !parts.headers.contains_key(name) {
            parts.headers.insert(name.clone(), value.clone());
        }
    }
    parts.uri = upstream_uri(target, &parts.uri)?;
    parts.version = Version::HTTP_11;

    let creds = match state.credentials(&service) {
        Ok(creds) => creds,
        Err(e) => {
            // Never forwarded with the placeholder instead (threat model T3).
            deny(
                state,
                caller,
                target,
                &service.name,
                &parts.method,
                &parts.uri,
                &e,
            );
            return Err(e);
        }
    };
    let plan = inject.plan(creds.expose());
    // A signature over the body, or a replay after a refused session token,
    // needs the whole body: buffered up to the limit, everything else streams.
    let mut streaming = Some(body);
    let buffered = match (plan, streaming.take()) {
        (Plan::Stream, body) => {
            streaming = body;
            None
        }
        (Plan::BufferBody | Plan::Session, body) => {
            let limit = state.config.limits.max_body_buffer;
            let body = body.unwrap_or_else(body::empty);
            Some(
                Box::pin(body::collect_capped(body, limit))
                    .await
                    .map_err(|e| match e {
                        body::Capped::TooLarge => ProxyError::PayloadTooLarge { limit },
                        body::Capped::Failed => {
                            ProxyError::BadRequest("the request body could not be read".into())
                        }
                    })?,
            )
        }
    };
    let action = match caller.actor {
        Actor::Proxy(_) => Action::Inject,
        _ => Action::Proxy,
    };
    let event = state.audit.record(Event::new(
        action,
        &service.name,
        &caller.actor,
        Detail::request(parts.method.as_str(), &target.host, parts.uri.path()),
    ))?;
    let mut echo = Echo {
        state: state.clone(),
        service: service.clone(),
        caller: caller.clone(),
        target: target.clone(),
        known: None,
        _in_flight: in_flight,
    };
    let response = match (plan, buffered) {
        (Plan::Session, Some(bytes)) => {
            let mut patterns = scrub::Patterns::from_credentials(creds.expose());
            drop(creds);
            let response = Box::pin(session_exchange(
                state,
                caller,
                target,
                &service,
                parts,
                bytes,
                &mut patterns,
            ))
            .await;
            echo.known = Some(patterns);
            response
        }
        (_, buffered) => {
            let bytes = buffered.as_deref().unwrap_or(&[]);
            inject
                .apply(&mut parts, &target.host, creds.expose(), bytes)
                .map_err(|e| ProxyError::Internal(format!("service {:?}: {e}", service.name)))?;
            drop(creds);
            let body = match buffered {
                Some(bytes) => body::full(bytes),
                None => streaming.unwrap_or_else(body::empty),
            };
            let request = Request::from_parts(parts, body);
            if let Some(client_upgrade) = client_upgrade {
                let response = Box::pin(state.upstream.send_upgrade(&target.host, request)).await;
                let status = response
                    .as_ref()
                    .map_or_else(|e| e.status().as_u16(), |r| r.status().as_u16());
                event.set_status(status);
                let idle = state.config.limits.tunnel_idle_timeout.0;
                return bridge_websocket(response?, client_upgrade, idle);
            }
            state.upstream.send(&target.host, request).await
        }
    };
    let status = match &response {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.status().as_u16(),
    };
    event.set_status(status);
    let (mut parts, body) = response?.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    let anchors = match &echo.known {
        Some(patterns) => Arc::new(scrub::Anchors::of(patterns)),
        None => state
            .store
            .anchors(&service)
            .map_err(|e| ProxyError::Internal(e.to_string()))?
            .unwrap_or_default(),
    };
    let body = scrub::scrub_response(
        &mut parts.headers,
        body::boxed(body),
        anchors,
        Box::new(echo),
    )
    .map_err(|e| ProxyError::Internal(format!("service {:?}: {e}", service.name)))?;
    Ok(Response::from_parts(parts, body))
}

/// The scrubber's view of one exchange: the secrets that went out (opened
/// again only if an anchor shows up in the response) and where an echo is
/// reported.
struct Echo {
    state: State,
    service: Arc<Service>,
    caller: Arc<Caller>,
    target: Arc<Target>,
    /// Forms known up front (a session exchange adds its token).
    known: Option<scrub::Patterns>,
    /// Counted against `limits.max_upstream_requests` until the response
    /// body is done or dropped.
    _in_flight: crate::agent::InFlightGuard,
}

impl scrub::Source for Echo {
    fn patterns(&mut self) -> Result<scrub::Patterns, body::BoxError> {
        if let Some(known) = self.known.take() {
            return Ok(known);
        }
        let creds = self.state.credentials(&self.service)?;
        Ok(scrub::Patterns::from_credentials(creds.expose()))
    }

    fn masked(&self, hits: usize) {
        let (entry, host) = (&self.service.name, &self.target.host);
        tracing::warn!(service = %entry, host = %host, hits, "upstream echoed the credential; masked");
        let detail = Detail::note(format!(
            "upstream {host} echoed the credential; {hits} occurrence(s) masked"
        ));
        let _ = self.state.audit.record(Event::new(
            Action::Denied,
            entry,
            &self.caller.actor,
            detail,
        ));
    }
}

/// Answers the client with the upstream's `101` and joins the two upgraded
/// streams in a task; any other answer goes back as it is.
fn bridge_websocket(
    mut response: Response<Incoming>,
    client: hyper::upgrade::OnUpgrade,
    idle: std::time::Duration,
) -> Result<Response<Body>, ProxyError> {
    if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        return Ok(Response::from_parts(parts, body::boxed(body)));
    }
    let upstream = hyper::upgrade::on(&mut response);
    tokio::spawn(async move {
        match tokio::try_join!(client, upstream) {
            Ok((client, upstream)) => {
                let mut client = hyper_util::rt::TokioIo::new(client);
                let mut upstream = hyper_util::rt::TokioIo::new(upstream);
                if let Err(e) = super::relay::relay(&mut client, &mut upstream, idle).await {
                    tracing::debug!(error = %e, "websocket closed with error");
                }
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    let (parts, _) = response.into_parts();
    Ok(Response::from_parts(parts, body::empty()))
}

/// A session-authenticated exchange: bearer token from the shared login; on a
/// 401 the session is renewed (single flight) and the request replayed once.
async fn session_exchange(
    state: &State,
    caller: &Caller,
    target: &Target,
    service: &Service,
    parts: http::request::Parts,
    bytes: bytes::Bytes,
    patterns: &mut scrub::Patterns,
) -> Result<Response<Incoming>, ProxyError> {
    let sessions = &state.sessions;
    let (token, generation) = sessions
        .token(state, service, &target.host, &caller.actor, None)
        .await?;
    patterns.add(token.expose().as_bytes());
    let first = with_bearer(&parts, &token)?;
    let response = state
        .upstream
        .send(
            &target.host,
            Request::from_parts(first, body::full(bytes.clone())),
        )
        .await?;
    if response.status() != http::StatusCode::UNAUTHORIZED {
        return Ok(response);
    }
    tracing::info!(service = %service.name, "session token refused; logging in again");
    let (token, _) = sessions
        .token(
            state,
            service,
            &target.host,
            &caller.actor,
            Some(generation),
        )
        .await?;
    patterns.add(token.expose().as_bytes());
    let again = with_bearer(&parts, &token)?;
    state
        .upstream
        .send(&target.host, Request::from_parts(again, body::full(bytes)))
        .await
}

/// A copy of the request head with `Authorization: Bearer <token>` (sensitive).
fn with_bearer(
    parts: &http::request::Parts,
    token: &crate::secret::Secret<String>,
) -> Result<http::request::Parts, ProxyError> {
    let (mut copy, ()) = Request::builder()
        .method(parts.method.clone())
        .uri(parts.uri.clone())
        .version(parts.version)
        .body(())
        .map_err(|e| ProxyError::Internal(e.to_string()))?
        .into_parts();
    copy.headers = parts.headers.clone();
    let mut value = http::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .map_err(|_| ProxyError::Internal("session token is not a header value".into()))?;
    value.set_sensitive(true);
    copy.headers.insert(header::AUTHORIZATION, value);
    Ok(copy)
}

/// SPEC §3 step 2: placeholder, else the agent's only service for this
/// connector, else the connector's `default`; always within the agent's scope.
fn choose_service(
    state: &State,
    caller: &Caller,
    target: &Target,
    choice: Choice<'_>,
    headers_in: &http::HeaderMap,
) -> Result<Arc<Service>, ProxyError> {
    let table = state.store.table();
    let connector = &target.connector.name;
    let named = match choice {
        Choice::Named(n) => Some(n.to_owned()),
        Choice::FromRequest => headers::placeholder(headers_in, &target.connector.strip),
    };
    if let Some(name) = named {
        let service = table
            .find(&name)
            .filter(|s| s.connector.name == *connector)
            .ok_or_else(|| {
                ProxyError::Forbidden(format!("no service {name:?} for connector {connector:?}"))
            })?;
        if !caller.may_use(&service.name) {
            return Err(ProxyError::Forbidden(format!(
                "agent {:?} may not use service {:?}",
                caller.name(),
                service.name
            )));
        }
        return Ok(service.clone());
    }
    let usable = || {
        table
            .for_connector(connector)
            .iter()
            .filter(|s| caller.may_use(&s.name))
    };
    let mut first_two = usable();
    match (first_two.next(), first_two.next()) {
        (Some(only), None) => Ok(only.clone()),
        (None, _) => Err(ProxyError::Forbidden(format!(
            "agent {:?} has no service for connector {connector:?}",
            caller.name()
        ))),
        (Some(_), Some(_)) => usable().find(|s| s.default).cloned().ok_or_else(|| {
            let names: Vec<&str> = usable().map(|s| s.name.as_str()).collect();
            ProxyError::Forbidden(format!(
                "several services for connector {connector:?} ({}) and none is default; send a placeholder key \"clavis:<service>\"",
                names.join(", ")
            ))
        }),
    }
}

/// `https://{target}{path?query}`: the destination comes from the target only.
fn upstream_uri(target: &Target, uri: &Uri) -> Result<Uri, ProxyError> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTPS);
    parts.authority = Some(target.authority.clone());
    parts.path_and_query = Some(
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts)
        .map_err(|_| ProxyError::BadRequest("request target is not a valid URI path".into()))
}

/// The one info line per exchange, written when the exchange ends however it
/// ends (answered, failed, or cancelled by the agent going away).
struct ExchangeLog<'a> {
    caller: &'a Caller,
    target: &'a Target,
    method: Method,
    /// The agent's URI (cloning shares its bytes); only its path is logged.
    uri: Uri,
    service: Option<Arc<Service>>,
    status: Option<u16>,
    error: Option<String>,
    started: Instant,
}

impl<'a> ExchangeLog<'a> {
    fn new(caller: &'a Caller, target: &'a Target, method: &Method, uri: &Uri) -> ExchangeLog<'a> {
        ExchangeLog {
            caller,
            target,
            method: method.clone(),
            uri: uri.clone(),
            service: None,
            status: None,
            error: None,
            started: Instant::now(),
        }
    }
}

impl Drop for ExchangeLog<'_> {
    fn drop(&mut self) {
        let Some(service) = &self.service else {
            return; // denied before a service was chosen: logged by `deny`
        };
        let latency_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        match self.status {
            Some(status) => tracing::info!(
                agent = %self.caller.actor,
                service = %service.name,
                host = %self.target.host,
                method = %self.method,
                path = self.uri.path(),
                status,
                latency_ms,
                error = self.error.as_deref(),
                "exchange"
            ),
            None => tracing::info!(
                agent = %self.caller.actor,
                service = %service.name,
                host = %self.target.host,
                method = %self.method,
                path = self.uri.path(),
                latency_ms,
                "exchange cancelled"
            ),
        }
    }
}
