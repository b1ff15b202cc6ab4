//! Tokens a connector obtains with its credentials instead of sending them
//! (today the Kalshi `email` + `password` login): where to fetch one, with
//! what request, how to read the answer, and how the token goes on a
//! request. Pure functions: the cache, the single flight and the sending
//! live in `tokens`, the reserved paths are asked by the exchange through
//! [`TokenSource::reserves`].

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};

use crate::body::{self, Body};
use crate::credentials::Credentials;
use crate::secret::Secret;

/// The login endpoint, relative to the connector's host. Agents may not call it.
pub(crate) const KALSHI_LOGIN_PATH: &str = "/trade-api/v2/login";

/// Where a connector's tokens come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenSource {
    /// `POST /trade-api/v2/login {"email","password"}` → `{"token"}` on the
    /// request's own host.
    KalshiLogin,
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
}

impl TokenSource {
    /// The request that fetches a token for a request to `host`, and the
    /// path it goes to (for the audit record).
    pub(crate) fn request(
        &self,
        creds: &Credentials,
        host: &str,
    ) -> Result<(Request<Body>, &'static str), FetchError> {
        let TokenSource::KalshiLogin = self;
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

    /// The token in a successful answer's body.
    pub(crate) fn read(&self, body: &[u8]) -> Result<Secret<String>, FetchError> {
        let parsed: serde_json::Value =
            serde_json::from_slice(body).map_err(|_| FetchError::NotJson)?;
        let token = parsed
            .get("token")
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty() && HeaderValue::from_str(t).is_ok())
            .ok_or(FetchError::NoToken)?;
        Ok(Secret::new(token.to_owned()))
    }

    /// Puts the token on a request: `Authorization: Bearer <token>`,
    /// marked sensitive so HPACK never indexes it.
    pub(crate) fn apply(&self, headers: &mut http::HeaderMap, token: &Secret<String>) -> bool {
        match HeaderValue::from_str(&format!("Bearer {}", token.expose())) {
            Ok(mut value) => {
                value.set_sensitive(true);
                headers.insert(header::AUTHORIZATION, value);
                true
            }
            Err(_) => false,
        }
    }

    /// Paths on the connector's hosts that only clavis may call (the login).
    pub(crate) fn reserves(&self, path: &str) -> bool {
        is_login_path(path)
    }
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
    let login = KALSHI_LOGIN_PATH.split('/').filter(|s| !s.is_empty());
    segments.len() == login.clone().count()
        && segments
            .iter()
            .zip(login)
            .all(|(a, b)| a.eq_ignore_ascii_case(b))
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
