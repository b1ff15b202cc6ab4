//! `ProxyError`: every error clavis answers itself, by cause. Module errors
//! (store, inject, upstream, token, audit, scope) are wrapped as sources;
//! the status, the `clavis_<kind>` and the fault (agent, upstream, clavis)
//! are derived from the cause here and nowhere else, and this is the only
//! builder of the error JSON. Messages name what is wrong and never contain
//! a secret.

use std::time::Duration;

use http::{header, HeaderValue, Response, StatusCode};

use crate::approvals::ApprovalError;
use crate::audit::AuditError;
use crate::body::{self, Body};
use crate::budget::BudgetError;
use crate::connector::meter::Unmeasurable;
use crate::connector::InjectError;
use crate::identity::ScopeError;
use crate::policy::ViewError;
use crate::store::StoreError;
use crate::tokens::TokenError;
use crate::upstream::{Cause, UpstreamError};

/// Who caused an error: logged with it, as pingora does, so an operator can
/// tell a misbehaving agent from a failing upstream from a clavis bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    Agent,
    Upstream,
    Clavis,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("proxy authentication required: send Proxy-Authorization: Basic base64(agent:token)")]
    ProxyAuth,
    #[error("missing or invalid bearer token")]
    Unauthenticated,
    #[error("too many requests: too many failed authentications; wait a minute")]
    Throttled { retry_after: Duration },
    #[error(transparent)]
    Scope(#[from] ScopeError),
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Guard(#[from] Guard),
    #[error(transparent)]
    Budget(#[from] BudgetError),
    #[error(transparent)]
    Approval(#[from] ApprovalError),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("internal error: service {service:?}: {source}")]
    Inject {
        service: String,
        #[source]
        source: InjectError,
    },
    /// A state clavis should never reach: a bug.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// A rule of clavis's that says no to a well-formed request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("TRACE is not forwarded to a host clavis injects into")]
    Trace,
    #[error("CONNECT inside a tunnel is not allowed")]
    NestedConnect,
    #[error("the login or token endpoint is reserved to clavis, which holds the session or token")]
    Reserved,
    /// A token source's token endpoint (SPEC §13.1): clavis calls it,
    /// agents never do.
    #[error("{host} serves a token endpoint that only clavis calls (it fetches the tokens this agent's requests carry)")]
    TokenEndpoint { host: String },
    #[error("{host} is served over https only: clavis never sends a credential over plain http; use https://{host}/")]
    Plaintext { host: String },
    #[error("{host}:{port} is not claimed by any connector and proxy.unmatched is deny")]
    Unmatched { host: String, port: u16 },
    #[error("{host}{path} would go out with nothing injected (not one of git's paths, or no service of yours for {host}), and proxy.unmatched is deny")]
    NothingInjected { host: String, path: String },
    #[error("{what} {value:?} does not match the tunnel's destination {host}:{port}; nothing was forwarded")]
    Misdirected {
        what: &'static str,
        value: String,
        host: String,
        port: u16,
    },
    #[error("Host header does not name this admin port")]
    AdminHost,
    #[error("Origin not allowed")]
    AdminOrigin,
    #[error("too many requests: too many open tunnels")]
    Tunnels,
    #[error("too many requests: {caller} already has {limit} requests in flight to service {service:?} (limits.max_upstream_requests)")]
    InFlight {
        caller: String,
        limit: usize,
        service: String,
    },
}

/// A guardrail that says no (SPEC §10–§11): a policy, or a cost that
/// cannot be counted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Guard {
    /// Refused by a policy rule (or its default).
    #[error("{request} was {why}. This policy allows: {allowed}")]
    Policy {
        request: String,
        why: String,
        allowed: String,
    },
    /// An `approve` rule matched, but approvals are not configured.
    #[error("{request} {why}, but approvals are not configured here (SPEC §12): it is refused. This policy allows without approval: {allowed}")]
    NoApprovals {
        request: String,
        why: String,
        allowed: String,
    },
    /// A request a policy cannot judge safely.
    #[error("{0}")]
    View(#[from] ViewError),
    #[error("budget {budget:?} cannot count this request: {why}")]
    Unmeasurable { budget: String, why: Unmeasurable },
}

/// What is wrong with the request itself.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    /// Unparsable or ambiguous: target, query.
    #[error("{0}")]
    Malformed(String),
    /// Framing clavis and a server could read differently (smuggling), a
    /// `CONNECT` with a path or a body, a refused upgrade: whatever follows
    /// on the connection cannot be trusted to start a new request, so it
    /// is closed after the answer (SPEC §3.1).
    #[error("{0}")]
    Desync(String),
    /// Well-formed, but a field or value is not acceptable.
    #[error("{0}")]
    Invalid(String),
    #[error("request body is larger than the {limit}-byte limit")]
    TooLarge { limit: usize },
    #[error("{0}")]
    MediaType(String),
    #[error("{0}")]
    Conflict(String),
    /// Something the request names does not exist (a route, a TOTP secret).
    #[error("{0}")]
    Missing(String),
    #[error("method not allowed on this route")]
    WrongMethod,
}

impl ProxyError {
    /// Status, kind and fault, from the cause.
    fn class(&self) -> (StatusCode, &'static str, Fault) {
        use Fault::*;
        match self {
            ProxyError::ProxyAuth => (
                StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                "proxy_auth_required",
                Agent,
            ),
            ProxyError::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthorized", Agent),
            ProxyError::Throttled { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_requests", Agent)
            }
            ProxyError::Scope(e) => match e {
                ScopeError::Unknown { .. } => (StatusCode::NOT_FOUND, "not_found", Agent),
                _ => (StatusCode::FORBIDDEN, "forbidden", Agent),
            },
            ProxyError::Refused(r) => match r {
                Refusal::Trace | Refusal::NestedConnect => {
                    (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", Agent)
                }
                Refusal::Misdirected { .. } => {
                    (StatusCode::MISDIRECTED_REQUEST, "misdirected", Agent)
                }
                Refusal::Tunnels | Refusal::InFlight { .. } => {
                    (StatusCode::TOO_MANY_REQUESTS, "too_many_requests", Agent)
                }
                Refusal::Reserved
                | Refusal::TokenEndpoint { .. }
                | Refusal::Plaintext { .. }
                | Refusal::Unmatched { .. }
                | Refusal::NothingInjected { .. }
                | Refusal::AdminHost
                | Refusal::AdminOrigin => (StatusCode::FORBIDDEN, "forbidden", Agent),
            },
            ProxyError::Guard(g) => match g {
                Guard::Policy { .. } | Guard::NoApprovals { .. } => {
                    (StatusCode::FORBIDDEN, "policy_denied", Agent)
                }
                Guard::View(_) => (StatusCode::BAD_REQUEST, "bad_request", Agent),
                Guard::Unmeasurable { .. } => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "budget_unmeasurable",
                    Agent,
                ),
            },
            ProxyError::Budget(b) => match b {
                BudgetError::Exceeded { .. } => {
                    (StatusCode::TOO_MANY_REQUESTS, "budget_exceeded", Agent)
                }
                BudgetError::Rate { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited", Agent),
                BudgetError::Store(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "budget_store_unavailable",
                    Clavis,
                ),
            },
            ProxyError::Approval(a) => match a {
                ApprovalError::Pending { .. } => (StatusCode::FORBIDDEN, "approval_pending", Agent),
                ApprovalError::Denied { .. } => (StatusCode::FORBIDDEN, "approval_denied", Agent),
                ApprovalError::Expired { .. } => (StatusCode::FORBIDDEN, "approval_expired", Agent),
            },
            ProxyError::Request(r) => match r {
                RequestError::Malformed(_) | RequestError::Desync(_) => {
                    (StatusCode::BAD_REQUEST, "bad_request", Agent)
                }
                RequestError::Invalid(_) => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", Agent)
                }
                RequestError::TooLarge { .. } => {
                    (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", Agent)
                }
                RequestError::MediaType(_) => (
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    Agent,
                ),
                RequestError::Conflict(_) => (StatusCode::CONFLICT, "conflict", Agent),
                RequestError::Missing(_) => (StatusCode::NOT_FOUND, "not_found", Agent),
                RequestError::WrongMethod => {
                    (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", Agent)
                }
            },
            ProxyError::Upstream(e) => upstream_class(e),
            ProxyError::Token(e) => match e {
                TokenError::Fetch { .. } | TokenError::Backoff { .. } => {
                    (StatusCode::BAD_GATEWAY, "login_failed", Upstream)
                }
                TokenError::Refresh { .. } => {
                    (StatusCode::BAD_GATEWAY, "token_refresh_failed", Upstream)
                }
                TokenError::Upstream(e) => upstream_class(e),
                TokenError::Audit(_) => audit_class(),
                TokenError::Store(e) => store_class(e),
            },
            ProxyError::Store(e) => store_class(e),
            ProxyError::Audit(_) => audit_class(),
            ProxyError::Inject { .. } | ProxyError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", Clavis)
            }
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.class().0
    }

    /// The `clavis_<kind>` suffix.
    pub(crate) fn kind(&self) -> &'static str {
        self.class().1
    }

    pub(crate) fn fault(&self) -> Fault {
        self.class().2
    }

    /// Whether the agent's connection must close after this answer: the
    /// bytes after the refused request cannot be trusted to start another.
    pub(crate) fn closes_connection(&self) -> bool {
        matches!(self, ProxyError::Request(RequestError::Desync(_)))
    }

    /// Whether this failure, after the request was handed to the upstream,
    /// proves the upstream never got it: not dialed, or its connection
    /// never opened (refused, unresolvable, TLS failed), or a renewed
    /// token's login failed (the request itself was answered, `401`). Any
    /// other failure (a timeout, a connection that broke) may have come
    /// after the upstream carried the request out.
    pub(crate) fn proves_nothing_sent(&self) -> bool {
        matches!(
            self,
            ProxyError::Upstream(
                UpstreamError::Refused(_)
                    | UpstreamError::Unreachable {
                        cause: Cause::Dial(_),
                        ..
                    }
            ) | ProxyError::Token(_)
        )
    }

    /// Whether the audit log refused a record (counted by a metric).
    pub(crate) fn is_audit_failure(&self) -> bool {
        matches!(
            self,
            ProxyError::Audit(_) | ProxyError::Token(TokenError::Audit(_))
        )
    }

    /// The problem document (RFC 9457): `type`, `title`, `status`,
    /// `detail`; for SDKs that read the OpenAI (and Stripe) shape
    /// `error.message` (the same text) and `error.type` (`clavis_<kind>`);
    /// for SDKs that read GitHub's shape (PyGithub, Octokit) `message`, the
    /// same text again: without it they show no message at all.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let kind = self.kind();
        let status = self.status();
        let detail = self.to_string();
        let mut doc = serde_json::json!({
            "type": format!("urn:clavis:problem:{}", kind.replace('_', "-")),
            "title": title(kind, status),
            "status": status.as_u16(),
            "detail": detail,
            "message": detail,
            "error": {
                "type": format!("clavis_{kind}"),
                "message": detail,
            }
        });
        if let ProxyError::Approval(a) = self {
            doc["approval_id"] = a.id().into();
        }
        doc
    }

    /// The answer clavis makes itself: the problem document, `Clavis-Error:
    /// <kind>` so an agent can tell it from the upstream's own, and the
    /// headers its kind calls for.
    pub(crate) fn response(self) -> Response<Body> {
        let status = self.status();
        let bytes = self.to_json().to_string();
        let mut response = Response::new(body::full(bytes));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Ok(kind) = HeaderValue::from_str(&self.kind().replace('_', "-")) {
            headers.insert(CLAVIS_ERROR, kind);
        }
        if self.closes_connection() {
            // hyper closes an HTTP/1 connection after an answer that says
            // so (and drops the header on h2, which frames every message).
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        match &self {
            ProxyError::ProxyAuth => {
                headers.insert(
                    header::PROXY_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"clavis\""),
                );
            }
            ProxyError::Throttled { retry_after } => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after.as_secs()),
                );
            }
            ProxyError::Approval(a) => {
                if let Ok(id) = HeaderValue::from_str(a.id()) {
                    headers.insert("clavis-approval", id);
                }
            }
            ProxyError::Budget(b) => {
                if let Some(secs) = b.retry_after() {
                    headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
                }
                if let Some((policy, now)) = b.ratelimit_headers() {
                    let value = |v: String| HeaderValue::from_str(&v).ok();
                    if let (Some(p), Some(n)) = (value(policy), value(now)) {
                        headers.insert("ratelimit-policy", p);
                        headers.insert("ratelimit", n);
                    }
                }
            }
            _ => {}
        }
        response
    }
}

/// The header on every answer clavis makes itself (SPEC §9).
pub(crate) const CLAVIS_ERROR: header::HeaderName = header::HeaderName::from_static("clavis-error");

/// A short, stable title per kind: the guardrails' own, else the status's
/// reason phrase.
fn title(kind: &str, status: StatusCode) -> &'static str {
    match kind {
        "policy_denied" => "Refused by policy",
        "budget_exceeded" => "Budget exceeded",
        "rate_limited" => "Rate limited",
        "budget_store_unavailable" => "Budget store unavailable",
        "budget_unmeasurable" => "Cost cannot be counted",
        "approval_pending" => "Waiting for approval",
        "approval_denied" => "Approval denied",
        "approval_expired" => "Approval expired",
        "token_refresh_failed" => "Token refresh failed",
        _ => status.canonical_reason().unwrap_or("Error"),
    }
}

fn upstream_class(e: &UpstreamError) -> (StatusCode, &'static str, Fault) {
    match e {
        UpstreamError::Refused(_) => (StatusCode::FORBIDDEN, "forbidden", Fault::Agent),
        UpstreamError::Unreachable { .. } => (
            StatusCode::BAD_GATEWAY,
            "upstream_unreachable",
            Fault::Upstream,
        ),
        UpstreamError::Timeout { .. } => (
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            Fault::Upstream,
        ),
        UpstreamError::Encoding { .. } => (
            StatusCode::BAD_GATEWAY,
            "upstream_encoding",
            Fault::Upstream,
        ),
        UpstreamError::Target { .. } => {
            (StatusCode::INTERNAL_SERVER_ERROR, "internal", Fault::Clavis)
        }
    }
}

fn store_class(e: &StoreError) -> (StatusCode, &'static str, Fault) {
    match e {
        StoreError::Duplicate(_) => (StatusCode::CONFLICT, "conflict", Fault::Agent),
        StoreError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", Fault::Agent),
        StoreError::NoCredentials(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "credentials_missing",
            Fault::Clavis,
        ),
        StoreError::Seal(_) | StoreError::Corrupt(_) | StoreError::Snapshot(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "internal", Fault::Clavis)
        }
    }
}

fn audit_class() -> (StatusCode, &'static str, Fault) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "audit_unavailable",
        Fault::Clavis,
    )
}

/// Rides on an admin-port answer that refused its caller something its
/// scope does not cover (an admin-only route, a raw secret without
/// `reveal`, a service outside its list): the admin middleware audits it
/// as `denied` (SPEC §5). The exchange's own refusals are audited by the
/// exchange and carry none.
#[derive(Debug, Clone)]
pub(crate) struct AdminRefusal(pub(crate) String);

impl ProxyError {
    /// A refusal of the caller's scope on the admin port or MCP.
    pub(crate) fn is_admin_refusal(&self) -> bool {
        matches!(
            self,
            ProxyError::Scope(
                ScopeError::AdminOnly { .. }
                    | ScopeError::NoReveal { .. }
                    | ScopeError::Unknown { .. }
            )
        )
    }
}

/// The admin port answers in the SPEC §3 shape, `{"error":{"type",
/// "message"}}` as `application/json` (SPEC §5), with the same status and
/// headers; the problem document is the proxy port's (SPEC §9).
impl axum::response::IntoResponse for ProxyError {
    fn into_response(self) -> axum::response::Response {
        let refusal = self
            .is_admin_refusal()
            .then(|| AdminRefusal(self.to_string()));
        let body = serde_json::json!({
            "error": {"type": format!("clavis_{}", self.kind()), "message": self.to_string()}
        })
        .to_string();
        let mut response = self.response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let mut response = response.map(|_| axum::body::Body::from(body));
        if let Some(refusal) = refusal {
            response.extensions_mut().insert(refusal);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod response {
        use super::*;

        #[test]
        fn proxy_auth_carries_the_basic_challenge() {
            let r = ProxyError::ProxyAuth.response();
            assert_eq!(r.status(), 407);
            assert_eq!(
                r.headers()[header::PROXY_AUTHENTICATE],
                "Basic realm=\"clavis\""
            );
        }

        #[test]
        fn answers_are_problem_documents_with_the_openai_shape_alongside() {
            let e = ProxyError::from(StoreError::NoCredentials("s".into()));
            let v = e.to_json();
            assert_eq!(v["type"], "urn:clavis:problem:credentials-missing");
            assert_eq!(v["title"], "Service Unavailable");
            assert_eq!(v["status"], 503);
            assert_eq!(v["detail"], "service \"s\" has no credentials stored");
            assert_eq!(v["error"]["message"], v["detail"]);
            assert_eq!(v["message"], v["detail"]);
            assert_eq!(v["error"]["type"], "clavis_credentials_missing");
            let r = e.response();
            assert_eq!(
                r.headers()[header::CONTENT_TYPE],
                "application/problem+json"
            );
            assert_eq!(r.headers()[CLAVIS_ERROR], "credentials-missing");
        }

        #[test]
        fn json_names_the_kind() {
            let e = ProxyError::from(Refusal::Misdirected {
                what: "Host",
                value: "evil.test".into(),
                host: "api.openai.com".into(),
                port: 443,
            });
            let v = e.to_json();
            assert_eq!(v["error"]["type"], "clavis_misdirected");
            assert_eq!(e.status(), 421);
        }

        #[test]
        fn causes_decide_status_kind_and_fault() {
            let missing = ProxyError::from(StoreError::NoCredentials("s".into()));
            assert_eq!(missing.status(), 503);
            assert_eq!(missing.kind(), "credentials_missing");
            assert_eq!(
                missing.to_string(),
                "service \"s\" has no credentials stored"
            );
            let gone = ProxyError::from(StoreError::NotFound("s".into()));
            assert_eq!((gone.status().as_u16(), gone.fault()), (404, Fault::Agent));
            let timeout = ProxyError::from(UpstreamError::Timeout {
                host: "h".into(),
                after: Duration::from_secs(1),
            });
            assert_eq!(
                (timeout.status().as_u16(), timeout.kind(), timeout.fault()),
                (504, "upstream_timeout", Fault::Upstream)
            );
        }

        #[test]
        fn a_throttled_answer_says_when_to_come_back() {
            let r = ProxyError::Throttled {
                retry_after: Duration::from_secs(42),
            }
            .response();
            assert_eq!(r.status(), 429);
            assert_eq!(r.headers()[header::RETRY_AFTER], "42");
        }
    }
}
