//! One exchange, from agent to upstream and back, in phases that read top to
//! bottom in [`forward`]:
//!
//! ```text
//! admit      the service (placeholder, scope, default: 403) and a slot in flight (429)
//! prepare    strip hop-by-hop and auth headers, defaults, the upstream URI from the target
//! decide     clavis's rules (TRACE never, a connector's reserved paths never),
//!            the policies (403), the budgets reserved before the call (429)
//! authorize  open the credentials once, buffer the body if the plan needs it,
//!            audit the use (fail closed: 503), inject (or fetch a token)
//! send       over verified TLS, pooled (502/504); a refused token renewed once
//! relay      response headers and body scrubbed of echoes, streamed back
//! ```
//!
//! A [`Record`] carries what every exchange ends with (permit, audit
//! event, status, metrics, log line) and writes it once. The proxy port,
//! `/v1/proxy` and MCP all call [`forward`]; no provider is named here:
//! what differs per API is asked of the connector.

mod check;
pub(crate) mod guard;
mod pass;
mod record;

use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{header, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use super::decode::{self, Decoder};
use super::framing::Flaw;
use super::{headers, scrub};
use crate::body::{self, Body};
use crate::catalog::Live;
use crate::connector::{Connector, Plan, TokenSource};
use crate::credentials::Credentials;
use crate::error::{ProxyError, Refusal, RequestError};
use crate::identity::{Caller, ScopeError};
use crate::redact::{Anchors, Patterns};
use crate::secret::Secret;
use crate::state::State;
use crate::store::{Service, Store, StoreError};
use crate::tokens::{Issued, Need};
use crate::upstream::UpstreamError;
use record::{Ended, Record};

/// Where requests go. Fixed by the CONNECT authority on the proxy port (or by
/// the service on the admin port) and never by anything inside a request.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) connector: Arc<Connector>,
    /// The live config this target was made with (at `CONNECT`, or when
    /// an admin-port call began): every request to it is served by it.
    pub(crate) live: Arc<Live>,
    /// `host[:port]` as every upstream URI carries it.
    authority: http::uri::Authority,
    stats: crate::metrics::ConnectorStats,
}

impl Target {
    /// `host` is already normalized (lowercase, no trailing dot); a name
    /// that is not a valid authority is refused.
    pub(crate) fn new(
        state: &State,
        live: Arc<Live>,
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
            .map_err(|_| RequestError::Malformed(format!("{text:?} is not a valid authority")))?;
        let stats = state.metrics.for_connector(&connector.name);
        Ok(Target {
            host,
            port,
            connector,
            live,
            authority,
            stats,
        })
    }
}

/// How the service is picked.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Choice<'a> {
    /// From a `clavis:<name>` placeholder, the agent's scope, or `default`.
    FromRequest,
    /// Named by the caller (`/v1/proxy/{name}`, MCP `proxy_request`).
    Named(&'a str),
}

/// A request received inside a MITM'd tunnel: checked against the tunnel's
/// destination, then forwarded. A request whose head had a framing `flaw`
/// is refused; an upgrade that does not end in `101` (refused by clavis or
/// by the upstream) closes the agent's connection after the answer, so
/// bytes it sent optimistically are never read as a new request (RFC 9931).
pub(crate) async fn tunneled(
    state: State,
    caller: Arc<Caller>,
    target: Arc<Target>,
    req: Request<Incoming>,
    flaw: Option<Flaw>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let checked = match flaw {
        Some(flaw) => Err(RequestError::Desync(format!(
            "ambiguous framing ({}) is refused",
            flaw.describe()
        ))
        .into()),
        None => check::check_inner(&target, &req, state.config.limits.max_uri_bytes),
    };
    let upgrade = req.version() < Version::HTTP_2 && req.headers().contains_key(header::UPGRADE);
    let outcome = match checked {
        // Boxed per request: hyper keeps one slot of this future's size per
        // connection for its whole life, and most tunnels are idle.
        Ok(()) => {
            let req = req.map(body::boxed);
            Box::pin(forward(&state, &caller, &target, Choice::FromRequest, req)).await
        }
        Err(e) => {
            Record::new(&state, &caller, &target, req.method(), req.uri()).failed(&e);
            Err(e)
        }
    };
    let mut response = outcome.unwrap_or_else(ProxyError::response);
    if upgrade && response.status() != StatusCode::SWITCHING_PROTOCOLS {
        response
            .headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    Ok(response)
}

/// Forwards one request with the credential injected. The request's own
/// authority is ignored: the URI is rebuilt from `target`.
pub(crate) async fn forward(
    state: &State,
    caller: &Arc<Caller>,
    target: &Arc<Target>,
    choice: Choice<'_>,
    req: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    let mut record = Record::new(state, caller, target, req.method(), req.uri());
    match exchange(&mut record, choice, req).await {
        Ok(sent) => relay(record, sent),
        Err(e) => {
            record.failed(&e);
            Err(e)
        }
    }
}

async fn exchange(
    record: &mut Record,
    choice: Choice<'_>,
    req: Request<Body>,
) -> Result<Sent, ProxyError> {
    let (parts, body) = req.into_parts();
    if pass::applies(record, &parts) {
        return pass::through(record, parts, body).await;
    }
    admit(record, choice, &parts)?;
    let mut outgoing = prepare(record, parts, body)?;
    decide(record, &mut outgoing).await?;
    let authorized = authorize(record, outgoing).await?;
    send(record, authorized).await
}

/// The service this request may use, and its slot among the caller's
/// requests in flight to it.
fn admit(record: &mut Record, choice: Choice<'_>, parts: &Parts) -> Result<(), ProxyError> {
    let service = choose_service(record, choice, &parts.headers)?;
    record.service = Some(service.clone());
    let state = &record.state;
    let limit = state.config.limits.max_upstream_requests;
    let in_flight = record.caller.in_flight(&state.anonymous_in_flight);
    let permit = in_flight
        .try_start(&service.id, limit)
        .ok_or_else(|| Refusal::InFlight {
            caller: record.caller.name().to_owned(),
            limit,
            service: service.name.clone(),
        })?;
    record.permit = Some(permit);
    Ok(())
}

/// SPEC §3 step 2: placeholder, else the agent's only service for this
/// connector, else the connector's `default`; always within the caller's
/// scope. Connectors that share the host (a family: `github` and
/// `github-app`) offer their services together: the host picks the
/// family, the service picks the connector.
fn choose_service(
    record: &Record,
    choice: Choice<'_>,
    headers_in: &http::HeaderMap,
) -> Result<Arc<Service>, ScopeError> {
    let (caller, target) = (&record.caller, &record.target);
    let table = record.state.store.table();
    let registry = &record.target.live.registry;
    let connector = &target.connector.name;
    let named = match choice {
        Choice::Named(n) => Some(n.to_owned()),
        Choice::FromRequest => headers::placeholder(headers_in, &target.connector.strip),
    };
    if let Some(name) = named {
        let service = table
            .find(&name)
            .filter(|s| registry.same_family(&s.connector.name, connector))
            .ok_or_else(|| ScopeError::NoSuchService {
                name: name.clone(),
                connector: connector.clone(),
            })?;
        if !caller.may_use(&service.name) {
            return Err(ScopeError::NotAllowed {
                agent: caller.name().to_owned(),
                service: service.name.clone(),
            });
        }
        return Ok(service.clone());
    }
    let usable = || {
        registry
            .family(connector)
            .iter()
            .flat_map(|c| table.for_connector(&c.name))
            .filter(|s| caller.may_use(&s.name))
    };
    let mut first_two = usable();
    match (first_two.next(), first_two.next()) {
        (Some(only), None) => Ok(only.clone()),
        (None, _) => Err(ScopeError::NoneForConnector {
            agent: caller.name().to_owned(),
            connector: connector.clone(),
        }),
        (Some(_), Some(_)) => usable().find(|s| s.default).cloned().ok_or_else(|| {
            let names: Vec<&str> = usable().map(|s| s.name.as_str()).collect();
            ScopeError::Ambiguous {
                connector: connector.clone(),
                names: names.join(", "),
            }
        }),
    }
}

/// The request on its way out, before the credential.
struct Outgoing {
    parts: Parts,
    body: Body,
    /// The whole body, once a phase needed it (then `body` is empty).
    buffered: Option<Bytes>,
    /// The agent's side of a websocket upgrade.
    websocket: Option<OnUpgrade>,
}

impl Outgoing {
    /// The whole body, read (up to `limit`) the first time it is asked for.
    async fn buffer(&mut self, limit: usize) -> Result<&Bytes, ProxyError> {
        if self.buffered.is_none() {
            let body = std::mem::replace(&mut self.body, body::empty());
            self.buffered = Some(buffer(body, limit).await?);
        }
        self.buffered
            .as_ref()
            .ok_or(ProxyError::Internal("a buffered body went missing"))
    }

    /// Replaces the buffered body (a budget's rewrite), framing included.
    fn set_body(&mut self, bytes: Bytes) {
        self.parts
            .headers
            .insert(header::CONTENT_LENGTH, http::HeaderValue::from(bytes.len()));
        self.buffered = Some(bytes);
    }
}

/// Strips what the agent may not send on (hop-by-hop headers, every auth
/// header the connector knows, `Host`), adds the connector's defaults and
/// points the URI at the target.
fn prepare(record: &Record, mut parts: Parts, body: Body) -> Result<Outgoing, ProxyError> {
    let connector = record.connector();
    let websocket = check::is_websocket(&parts.method, parts.version, &parts.headers)
        .then(|| parts.extensions.remove::<OnUpgrade>())
        .flatten();
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::strip_auth(&mut parts.headers, &connector.strip);
    if websocket.is_some() {
        let h = &mut parts.headers;
        h.insert(
            header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
        h.insert(header::UPGRADE, http::HeaderValue::from_static("websocket"));
    }
    parts.headers.remove(header::HOST);
    for (name, value) in &connector.defaults {
        if !parts.headers.contains_key(name) {
            parts.headers.insert(name.clone(), value.clone());
        }
    }
    parts.uri = upstream_uri(&record.target, &parts.uri)?;
    parts.version = Version::HTTP_11;
    Ok(Outgoing {
        parts,
        body,
        buffered: None,
        websocket,
    })
}

/// What clavis's own rules say (`TRACE`, which the upstream would echo
/// with the credential, never; a connector's reserved paths, such as a
/// token source's login, never), then the policies that apply, then the
/// budgets (the most this request can use is reserved before it is sent),
/// then, if a rule says so, a person's approval.
async fn decide(record: &mut Record, out: &mut Outgoing) -> Result<(), ProxyError> {
    own_rules(record, out)?;
    let (policies, budgets) = {
        let (live, service) = (&record.target.live, &record.service()?.name);
        let agent = record.caller.agent_name();
        (
            live.policies.for_exchange(service, agent),
            live.budgets.applicable(service, agent),
        )
    };
    // The common case, with nothing configured: no clone, no allocation.
    if policies.is_empty() && budgets.is_empty() {
        return Ok(());
    }
    let meter = record.target.connector.meter;
    let path = guard::metered_path(out, &budgets)?;
    let method = &out.parts.method;
    let metered = !budgets.is_empty() && meter.reads_body(method, &path);
    let judged = crate::policy::reads_body(&policies, method);
    if metered || judged {
        let limit = record.state.config.limits.policy_body;
        out.buffer(limit).await?;
    }
    let mut asked = None;
    if !policies.is_empty() {
        if let Some(verdict) = guard::judge(record, &policies, out)? {
            asked = Some(guard::asked(record, verdict, out).await?);
        }
    }
    if !budgets.is_empty() {
        guard::charge(record, &budgets, out, meter, &path).await?;
    }
    // A person is asked last: never about a request a budget refuses, and
    // an approval is never spent on one.
    if let Some(asked) = asked {
        guard::approval(record, asked).await?;
    }
    Ok(())
}

/// `TRACE` never (the upstream would echo the credential); a connector's
/// reserved paths (a token source's login) never.
fn own_rules(record: &Record, out: &Outgoing) -> Result<(), ProxyError> {
    let (target, path) = (&record.target, out.parts.uri.path());
    let registry = &target.live.registry;
    Ok(clavis_rules(
        registry,
        record.connector(),
        &out.parts.method,
        &target.host,
        path,
    )?)
}

/// clavis's own rules, before any policy: `TRACE`, a token source's
/// endpoint, a connector's reserved paths. `clavis policy test` asks them
/// too.
pub(crate) fn clavis_rules(
    registry: &crate::connector::Registry,
    connector: &Connector,
    method: &Method,
    host: &str,
    path: &str,
) -> Result<(), Refusal> {
    if *method == Method::TRACE {
        return Err(Refusal::Trace);
    }
    if registry.is_token_endpoint(host, path) {
        return Err(Refusal::TokenEndpoint {
            host: host.to_owned(),
        });
    }
    if connector.reserves(path) {
        return Err(Refusal::Reserved);
    }
    Ok(())
}

/// The request with its credential, and what sending and relaying need.
struct Authorized {
    request: Request<Body>,
    websocket: Option<OnUpgrade>,
    scrub: Scrub,
    /// A token request: what renewing the token and sending again needs.
    retry: Option<Retry>,
}

/// What a refused token's renewal needs: the request without it, and the
/// token it carried (told when the upstream accepts it).
struct Retry {
    source: TokenSource,
    issued: Issued,
    parts: Parts,
    body: Bytes,
}

/// Where the scrubber's patterns come from.
enum Scrub {
    /// The service's cached anchors; the credentials are opened again only
    /// if an anchor shows up in the response (SPEC §3.1).
    Cached(Arc<Anchors>),
    /// Every form known up front: credentials plus the tokens sent.
    Known(Patterns),
}

/// Opens the credentials (once), buffers the body if the plan needs it,
/// audits the use before it happens, then injects the credential or the
/// token it fetches.
async fn authorize(record: &mut Record, out: Outgoing) -> Result<Authorized, ProxyError> {
    let state = record.state.clone();
    let service = record.service()?.clone();
    let creds = state.store.open_required(&service)?;
    let plan = service.connector.inject.plan(creds.expose());
    let mut out = out;
    if plan != Plan::Stream {
        out.buffer(state.config.limits.max_body_buffer).await?;
    }
    let Outgoing {
        mut parts,
        body,
        buffered,
        websocket,
    } = out;
    record.audit_use()?;
    if let Plan::Token(source) = plan {
        let body = buffered.unwrap_or_default();
        return with_fetched_token(record, source, creds, parts, body, websocket).await;
    }
    let signed_body = buffered.as_deref().unwrap_or(&[]);
    service
        .connector
        .inject
        .apply(&mut parts, &record.target.host, creds.expose(), signed_body)
        .map_err(|source| ProxyError::Inject {
            service: service.name.clone(),
            source,
        })?;
    let anchors = Store::anchors_of(&service, creds.expose());
    drop(creds);
    Ok(Authorized {
        request: Request::from_parts(parts, buffered.map_or(body, body::full)),
        websocket,
        scrub: Scrub::Cached(anchors),
        retry: None,
    })
}

/// The token plan: the source's token (fetched with the credentials if
/// none is cached) goes on a copy of the request; the rest is kept to send
/// again if the upstream refuses it.
async fn with_fetched_token(
    record: &Record,
    source: TokenSource,
    creds: Secret<Credentials>,
    parts: Parts,
    body: Bytes,
    websocket: Option<OnUpgrade>,
) -> Result<Authorized, ProxyError> {
    let (state, service) = (&record.state, record.service()?);
    let host = &record.target.host;
    let mut patterns = Patterns::from_credentials(creds.expose());
    let actor = record.caller.actor();
    let need = Need {
        source: &source,
        service,
        creds: creds.expose(),
        host,
        actor: &actor,
        scope: record.caller.token_scope(&service.connector.name),
    };
    let issued = state.tokens.issue(&state.fetcher(), &need).await?;
    drop(creds);
    patterns.add(issued.token.expose().as_bytes());
    Ok(Authorized {
        request: with_token(&parts, &source, &issued.token, host, body.clone())?,
        websocket,
        scrub: Scrub::Known(patterns),
        retry: Some(Retry {
            source,
            issued,
            parts,
            body,
        }),
    })
}

/// The whole request body, up to `limit` bytes (a signature covers it, or
/// a refused token means sending it again).
async fn buffer(body: Body, limit: usize) -> Result<Bytes, ProxyError> {
    Box::pin(body::collect_capped(body, limit))
        .await
        .map_err(|e| match e {
            body::Capped::TooLarge => RequestError::TooLarge { limit }.into(),
            body::Capped::Failed => {
                RequestError::Malformed("the request body could not be read".into()).into()
            }
        })
}

/// A copy of the request head with the token on it.
fn with_token(
    parts: &Parts,
    source: &TokenSource,
    token: &Secret<String>,
    host: &str,
    body: Bytes,
) -> Result<Request<Body>, ProxyError> {
    let mut request = Request::new(body::full(body));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    // A token that is no header value is refused when it is read.
    if !source.apply(request.headers_mut(), token, host) {
        return Err(ProxyError::Internal("a token is not a header value"));
    }
    Ok(request)
}

/// The upstream's answer, and what the relay needs.
struct Sent {
    response: Response<Incoming>,
    websocket: Option<OnUpgrade>,
    scrub: Scrub,
}

/// Sends the request upstream. A websocket goes on a fresh HTTP/1.1
/// connection; a token the upstream refuses (`401`) is renewed, shared
/// with every request waiting for it, and the request sent once more.
/// When no renewal is due (a back-off, or the login failed) the agent gets
/// the upstream's own `401`, scrubbed like any answer.
async fn send(record: &mut Record, auth: Authorized) -> Result<Sent, ProxyError> {
    let Authorized {
        request,
        websocket,
        mut scrub,
        retry,
    } = auth;
    record.sent();
    let (upstream, host) = (&record.state.upstream, &record.target.host);
    if websocket.is_some() {
        let response = Box::pin(upstream.send_upgrade(host, request)).await?;
        return Ok(Sent {
            response,
            websocket,
            scrub,
        });
    }
    let mut response = upstream.send(host, request).await?;
    if let Some(retry) = retry {
        if response.status() != StatusCode::UNAUTHORIZED {
            retry.issued.accepted();
        } else if let Some(again) = Box::pin(renew(record, retry, &mut scrub)).await? {
            response = again;
        }
    }
    Ok(Sent {
        response,
        websocket: None,
        scrub,
    })
}

/// A second login is a second use of the credentials: they are opened
/// again for it (only if no other request renewed the token meanwhile).
/// `None`: no renewed token; the refused answer stands.
async fn renew(
    record: &Record,
    retry: Retry,
    scrub: &mut Scrub,
) -> Result<Option<Response<Incoming>>, ProxyError> {
    let (state, host) = (&record.state, &record.target.host);
    let service = record.service()?;
    let creds = state.store.open_required(service)?;
    let actor = record.caller.actor();
    let need = Need {
        source: &retry.source,
        service,
        creds: creds.expose(),
        host,
        actor: &actor,
        scope: record.caller.token_scope(&service.connector.name),
    };
    let renewed = state
        .tokens
        .reissue(&state.fetcher(), &need, retry.issued.generation)
        .await;
    drop(creds);
    let issued = match renewed {
        Ok(Some(issued)) => issued,
        Ok(None) => return Ok(None),
        Err(e) if e.yields_to_the_upstream() => {
            tracing::warn!(service = %service.name, error = %e, "token refused and not renewed; relaying the upstream's 401");
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(service = %service.name, "session token refused; sending again with a renewed one");
    if let Scrub::Known(patterns) = scrub {
        patterns.add(issued.token.expose().as_bytes());
    }
    let again = with_token(&retry.parts, &retry.source, &issued.token, host, retry.body)?;
    let response = state.upstream.send(host, again).await?;
    if response.status() != StatusCode::UNAUTHORIZED {
        issued.accepted();
    }
    Ok(Some(response))
}

/// Streams the answer back: a websocket's `101` bridged, any other answer
/// with hop-by-hop headers removed and echoes of the credential masked in
/// its headers, body and trailers. The record ends with the body.
fn relay(mut record: Record, sent: Sent) -> Result<Response<Body>, ProxyError> {
    let Sent {
        response,
        websocket,
        scrub,
    } = sent;
    let (mut parts, body) = response.into_parts();
    let status = parts.status;
    if let (Some(client), StatusCode::SWITCHING_PROTOCOLS) = (websocket, status) {
        if let Some(upstream) = parts.extensions.remove::<OnUpgrade>() {
            let idle = record.state.config.limits.tunnel_idle_timeout.0;
            super::relay::websocket(client, upstream, idle);
        }
        record.answered(status.as_u16(), &parts.headers);
        let body = Ended::new(body::empty(), record);
        return Ok(Response::from_parts(
            parts,
            http_body_util::BodyExt::boxed(body),
        ));
    }
    headers::strip_hop_by_hop(&mut parts.headers);
    let mut scrubber = scrubber(&record, scrub)?;
    let mut decoder = None;
    if let Some(s) = &mut scrubber {
        let checked = s
            .mask_headers(&mut parts.headers)
            .map_err(ProxyError::from)
            .and_then(|()| compressed(&record, &mut parts.headers, &body));
        match checked {
            Ok(d) => decoder = d,
            Err(e) => {
                record.failed(&e);
                return Err(e);
            }
        }
    }
    record.answered(status.as_u16(), &parts.headers);
    let body = Ended::new(body, record);
    let body = match scrubber {
        Some(s) => s.wrap(body, decoder),
        None => body::boxed(body),
    };
    Ok(Response::from_parts(parts, body))
}

/// The decoder for a compressed answer the scrubber must see into (its
/// headers rewritten for the decoded body the agent will get); an encoding
/// clavis cannot decode cannot be checked, so the answer is refused.
fn compressed(
    record: &Record,
    headers: &mut http::HeaderMap,
    body: &Incoming,
) -> Result<Option<Decoder>, ProxyError> {
    use http_body::Body as _;
    if body.is_end_stream() {
        return Ok(None);
    }
    let coding = decode::prepare(headers).map_err(|unsupported| UpstreamError::Encoding {
        host: record.target.host.clone(),
        coding: unsupported.0,
    })?;
    coding
        .map(Decoder::new)
        .transpose()
        .map_err(|_| ProxyError::Internal("a response decoder could not start"))
}

/// The scrubber for this answer, or none when no secret is long enough to
/// be masked.
fn scrubber(record: &Record, scrub: Scrub) -> Result<Option<scrub::Scrubber>, ProxyError> {
    let (anchors, known) = match scrub {
        Scrub::Cached(anchors) => (anchors, None),
        Scrub::Known(patterns) => (Arc::new(Anchors::of(&patterns)), Some(patterns)),
    };
    if anchors.is_empty() {
        return Ok(None);
    }
    let echo = Echo {
        state: record.state.clone(),
        service: record.service()?.clone(),
        caller: record.caller.clone(),
        target: record.target.clone(),
        known,
    };
    Ok(Some(scrub::Scrubber::new(anchors, Box::new(echo))))
}

/// The scrubber's view of one exchange: where the full patterns come from
/// when an anchor shows up, and where a masked echo is reported.
struct Echo {
    state: State,
    service: Arc<Service>,
    caller: Arc<Caller>,
    target: Arc<Target>,
    /// Forms known up front (a token exchange's).
    known: Option<Patterns>,
}

impl scrub::Source for Echo {
    fn patterns(&mut self) -> Result<Patterns, StoreError> {
        if let Some(known) = self.known.take() {
            return Ok(known);
        }
        let creds = self.state.store.open_required(&self.service)?;
        Ok(Patterns::from_credentials(creds.expose()))
    }

    fn masked(&self, hits: usize) {
        use crate::audit::{Action, Detail, Event};
        let (entry, host) = (&self.service.name, &self.target.host);
        tracing::warn!(service = %entry, host = %host, hits, "upstream echoed the credential; masked");
        let detail = Detail::note(format!(
            "upstream {host} echoed the credential; {hits} occurrence(s) masked"
        ));
        let _ = self.state.audit.record(Event::new(
            Action::Denied,
            entry,
            &self.caller.actor(),
            detail,
        ));
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
    Uri::from_parts(parts).map_err(|_| {
        RequestError::Malformed("request target is not a valid URI path".into()).into()
    })
}
