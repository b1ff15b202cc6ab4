//! `ProxyError`: every error clavis answers itself, mapped to a status and to
//! `{"error":{"type":"clavis_<kind>","message":"…"}}`. Messages name what is
//! wrong and never contain a secret.

use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{self, Body};

/// Who caused an error: logged with it, as pingora does, so an operator can
/// tell a misbehaving agent from a failing upstream from a clavis bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Agent,
    Upstream,
    Clavis,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("proxy authentication required: send Proxy-Authorization: Basic base64(agent:token)")]
    ProxyAuthRequired,
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than the {limit}-byte limit")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Misdirected(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("too many requests: {0}")]
    TooManyRequests(String),
    #[error("service {service:?} has no credentials stored")]
    CredentialsMissing { service: String },
    #[error("the audit log cannot be written, so the credential was not used")]
    AuditUnavailable,
    #[error("upstream {host} unreachable: {reason}")]
    UpstreamUnreachable { host: String, reason: String },
    #[error("service {service:?}: login failed: {reason}")]
    LoginFailed { service: String, reason: String },
    #[error("upstream {host} did not answer within {after:?}")]
    UpstreamTimeout {
        host: String,
        after: std::time::Duration,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        use ProxyError::*;
        match self {
            ProxyAuthRequired => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            Unauthorized => StatusCode::UNAUTHORIZED,
            Forbidden(_) => StatusCode::FORBIDDEN,
            NotFound(_) => StatusCode::NOT_FOUND,
            MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Conflict(_) => StatusCode::CONFLICT,
            PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Misdirected(_) => StatusCode::MISDIRECTED_REQUEST,
            BadRequest(_) => StatusCode::BAD_REQUEST,
            TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            CredentialsMissing { .. } | AuditUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamUnreachable { .. } | LoginFailed { .. } => StatusCode::BAD_GATEWAY,
            UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `clavis_<kind>` suffix.
    pub fn kind(&self) -> &'static str {
        use ProxyError::*;
        match self {
            ProxyAuthRequired => "proxy_auth_required",
            Unauthorized => "unauthorized",
            Forbidden(_) => "forbidden",
            NotFound(_) => "not_found",
            MethodNotAllowed(_) => "method_not_allowed",
            Conflict(_) => "conflict",
            PayloadTooLarge { .. } => "payload_too_large",
            UnsupportedMediaType(_) => "unsupported_media_type",
            Unprocessable(_) => "unprocessable",
            Misdirected(_) => "misdirected",
            BadRequest(_) => "bad_request",
            TooManyRequests(_) => "too_many_requests",
            CredentialsMissing { .. } => "credentials_missing",
            AuditUnavailable => "audit_unavailable",
            UpstreamUnreachable { .. } => "upstream_unreachable",
            UpstreamTimeout { .. } => "upstream_timeout",
            LoginFailed { .. } => "login_failed",
            Internal(_) => "internal",
        }
    }

    pub fn fault(&self) -> Fault {
        use ProxyError::*;
        match self {
            UpstreamUnreachable { .. } | UpstreamTimeout { .. } | LoginFailed { .. } => {
                Fault::Upstream
            }
            CredentialsMissing { .. } | AuditUnavailable | Internal(_) => Fault::Clavis,
            _ => Fault::Agent,
        }
    }

    /// The JSON body, `{"error":{"type":"clavis_<kind>","message":"…"}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "type": format!("clavis_{}", self.kind()),
                "message": self.to_string(),
            }
        })
    }

    pub fn response(self) -> Response<Body> {
        let status = self.status();
        let bytes = self.to_json().to_string();
        let mut response = Response::new(body::full(bytes));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
            headers.insert(
                header::PROXY_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"clavis\""),
            );
        }
        response
    }
}

impl axum::response::IntoResponse for ProxyError {
    fn into_response(self) -> axum::response::Response {
        self.response().map(axum::body::Body::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod response {
        use super::*;

        #[test]
        fn proxy_auth_carries_the_basic_challenge() {
            let r = ProxyError::ProxyAuthRequired.response();
            assert_eq!(r.status(), 407);
            assert_eq!(
                r.headers()[header::PROXY_AUTHENTICATE],
                "Basic realm=\"clavis\""
            );
        }

        #[test]
        fn json_names_the_kind() {
            let e = ProxyError::Misdirected("Host evil.test does not match".into());
            let v = e.to_json();
            assert_eq!(v["error"]["type"], "clavis_misdirected");
            assert_eq!(e.status(), 421);
        }
    }
}
