//! Tokens a connector obtains with its credentials instead of sending them
//! (SPEC §13.1): the Kalshi `email` + `password` login, OAuth 2.0 token
//! endpoints of user connectors, and GitHub App installation tokens. For
//! each: where to fetch one, with what request, how to read the answer,
//! and how the token goes on a request. Pure functions: the cache, the
//! single flight and the sending live in `tokens`, the reserved paths are
//! asked by the exchange through [`TokenSource::reserves`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};

use super::github_app;
use super::oauth2::{self, OAuth2};
use super::sign::SignError;
use crate::body::{self, Body};
use crate::credentials::Credentials;
use crate::identity::TokenScope;
use crate::secret::Secret;

/// The login endpoint, relative to the connector's host. Agents may not call it.
pub(crate) const KALSHI_LOGIN_PATH: &str = "/trade-api/v2/login";

/// Where a connector's tokens come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenSource {
    /// `POST /trade-api/v2/login {"email","password"}` → `{"token"}` on the
    /// request's own host.
    KalshiLogin,
    /// A user connector's OAuth 2.0 token endpoint (`auth.oauth2`).
    OAuth2(Arc<OAuth2>),
    /// `POST /app/installations/{id}/access_tokens` on api.github.com with
    /// an app JWT; narrowed per agent by its `github_app` scope.
    GithubApp,
}

/// Why no token could be had from an answer or from the credentials.
/// Messages never quote a credential or the answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("credentials need {0}")]
    Fields(&'static str),
    #[error("{host} answered {status} to the login")]
    Refused { host: String, status: u16 },
    #[error("unreadable login answer")]
    Unreadable,
    #[error("login answer is not JSON")]
    NotJson,
    #[error("login answer has no usable token")]
    NoToken,
    #[error("credential field {0:?}: {1}")]
    Credential(&'static str, &'static str),
    #[error(transparent)]
    Sign(SignError),
    #[error("the system clock is before 1970")]
    Clock,
    #[error("{host} answered {status}{} to the token request", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Denied {
        host: String,
        status: u16,
        /// The OAuth error code (`invalid_grant`), a word from a fixed list.
        code: Option<String>,
    },
    #[error("the token answer has no usable access token")]
    NoAccessToken,
    #[error("the token answer's token_type is not Bearer")]
    NotBearer,
    #[error("the token answer's expiry is unreadable or past")]
    Expiry,
}

/// What the token request is made from.
pub(crate) struct FetchInput<'a> {
    pub(crate) creds: &'a Credentials,
    /// The host of the request that needs the token.
    pub(crate) host: &'a str,
    /// The caller's narrowing, for a source that mints scoped tokens.
    pub(crate) scope: Option<&'a TokenScope>,
    /// A rotated refresh token to use instead of the configured one.
    pub(crate) refresh_token: Option<&'a str>,
    pub(crate) now: SystemTime,
}

/// A token request, and where it goes (named in the audit record).
pub(crate) struct Fetch {
    pub(crate) host: String,
    pub(crate) path: String,
    pub(crate) request: Request<Body>,
}

/// What a successful answer gave.
pub(crate) struct Fresh {
    pub(crate) token: Secret<String>,
    /// How long the token is good for, when the answer says.
    pub(crate) lifetime: Option<Duration>,
    /// A new refresh token that replaces the one used (rotation).
    pub(crate) refresh_token: Option<Secret<String>>,
}

impl TokenSource {
    /// The request that fetches a token.
    pub(crate) fn request(&self, input: &FetchInput<'_>) -> Result<Fetch, FetchError> {
        match self {
            TokenSource::KalshiLogin => {
                let (request, path) = kalshi_login(input.creds, input.host)?;
                Ok(Fetch {
                    host: input.host.to_owned(),
                    path: path.to_owned(),
                    request,
                })
            }
            TokenSource::OAuth2(o) => {
                let request = o.request(input.creds, input.refresh_token, input.now)?;
                let (host, path) = o.endpoint();
                Ok(Fetch {
                    host: host.to_owned(),
                    path: path.to_owned(),
                    request,
                })
            }
            TokenSource::GithubApp => {
                let (request, path) = github_app::request(input.creds, input.scope, input.now)?;
                Ok(Fetch {
                    host: github_app::API_HOST.to_owned(),
                    path,
                    request,
                })
            }
        }
    }

    /// The token in a successful answer's body; a lifetime runs from `now`.
    pub(crate) fn read(&self, body: &[u8], now: SystemTime) -> Result<Fresh, FetchError> {
        match self {
            TokenSource::KalshiLogin => Ok(Fresh {
                token: read_kalshi(body)?,
                lifetime: None,
                refresh_token: None,
            }),
            TokenSource::OAuth2(o) => o.read(body),
            TokenSource::GithubApp => github_app::read(body, now),
        }
    }

    /// Why the token endpoint refused, from a failed answer's body: the
    /// OAuth error code where there is one.
    pub(crate) fn refusal(&self, host: &str, status: u16, body: &[u8]) -> FetchError {
        match self {
            TokenSource::KalshiLogin => FetchError::Refused {
                host: host.to_owned(),
                status,
            },
            TokenSource::OAuth2(_) | TokenSource::GithubApp => FetchError::Denied {
                host: host.to_owned(),
                status,
                code: oauth2::error_code(body),
            },
        }
    }

    /// A login session (audited as `login`, answered `login_failed`), or a
    /// token source of SPEC §13.1 (`token_refresh`, `token-refresh-failed`).
    pub(crate) fn is_login(&self) -> bool {
        matches!(self, TokenSource::KalshiLogin)
    }

    /// Whether a caller's [`TokenScope`] changes the token it gets.
    pub(crate) fn is_scoped(&self) -> bool {
        matches!(self, TokenSource::GithubApp)
    }

    /// Whether the answer may rotate the refresh token.
    pub(crate) fn rotates(&self) -> bool {
        matches!(self, TokenSource::OAuth2(o) if o.rotates())
    }

    /// The token endpoint's host and path where it may lie on another
    /// host than the connector's own (an OAuth token URL): agents may
    /// neither tunnel to that host nor call that path.
    pub(crate) fn endpoint(&self) -> Option<(&str, &str)> {
        match self {
            TokenSource::OAuth2(o) => Some(o.endpoint()),
            TokenSource::KalshiLogin | TokenSource::GithubApp => None,
        }
    }

    /// Puts the token on a request to `host`: `Authorization: Bearer
    /// <token>`, except a GitHub App token on GitHub's git host, which git
    /// over HTTPS takes only as Basic `x-access-token:<token>` (SPEC
    /// §13.4). Marked sensitive so HPACK never indexes it.
    pub(crate) fn apply(
        &self,
        headers: &mut http::HeaderMap,
        token: &Secret<String>,
        host: &str,
    ) -> bool {
        let value = zeroize::Zeroizing::new(match self {
            TokenSource::GithubApp if host == super::git::GITHUB_HOST => {
                use base64::Engine;
                let pair = zeroize::Zeroizing::new(format!(
                    "{}:{}",
                    super::git::TOKEN_USER,
                    token.expose()
                ));
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
                )
            }
            _ => format!("Bearer {}", token.expose()),
        });
        match HeaderValue::from_str(&value) {
            Ok(mut value) => {
                value.set_sensitive(true);
                headers.insert(header::AUTHORIZATION, value);
                true
            }
            Err(_) => false,
        }
    }

    /// Paths on the connector's hosts that only clavis may call (the
    /// login, GitHub's access-token endpoint).
    pub(crate) fn reserves(&self, path: &str) -> bool {
        match self {
            TokenSource::KalshiLogin => is_login_path(path),
            TokenSource::GithubApp => github_app::is_token_path(path),
            TokenSource::OAuth2(o) => matches_path(path, o.endpoint().1),
        }
    }
}

/// `POST /trade-api/v2/login {"email","password"}` on `host`.
fn kalshi_login(
    creds: &Credentials,
    host: &str,
) -> Result<(Request<Body>, &'static str), FetchError> {
    let (Some(email), Some(password)) = (creds.get("email"), creds.get("password")) else {
        return Err(FetchError::Fields("email and password"));
    };
    let body = zeroize::Zeroizing::new(
        serde_json::json!({"email": email, "password": password}).to_string(),
    );
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("https://{host}{KALSHI_LOGIN_PATH}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json")
        .body(body::full(Bytes::copy_from_slice(body.as_bytes())))
        .map_err(|_| FetchError::Fields("a host that makes a valid login URL"))?;
    Ok((request, KALSHI_LOGIN_PATH))
}

/// The session token of a Kalshi login answer.
fn read_kalshi(body: &[u8]) -> Result<Secret<String>, FetchError> {
    let parsed: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| FetchError::NotJson)?;
    let token = parsed
        .get("token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty() && HeaderValue::from_str(t).is_ok())
        .ok_or(FetchError::NoToken)?;
    Ok(Secret::new(token.to_owned()))
}

/// Whether `path` names the login endpoint however it is spelled: escapes
/// decoded (twice, for servers that decode again), dot segments resolved,
/// empty segments and a trailing `/` dropped, any case.
pub(crate) fn is_login_path(path: &str) -> bool {
    // Every Kalshi request asks: without an escape or the word itself there
    // is nothing to decode.
    let bytes = path.as_bytes();
    if !bytes.contains(&b'%') && !bytes.windows(5).any(|w| w.eq_ignore_ascii_case(b"login")) {
        return false;
    }
    matches_path(path, KALSHI_LOGIN_PATH)
}

/// Whether `path` names `pattern` however it is spelled (as
/// [`is_login_path`] reads it); a `*` segment of the pattern matches any
/// one segment.
pub(crate) fn matches_path(path: &str, pattern: &str) -> bool {
    let mut decoded = path.to_owned();
    for _ in 0..2 {
        decoded = String::from_utf8_lossy(&crate::encoding::percent_decode(&decoded)).into_owned();
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
    let wanted = pattern.split('/').filter(|s| !s.is_empty());
    segments.len() == wanted.clone().count()
        && segments
            .iter()
            .zip(wanted)
            .all(|(a, b)| b == "*" || a.eq_ignore_ascii_case(b))
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
