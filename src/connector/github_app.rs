//! The `github-app` token source (SPEC §13.1): an app JWT (RS256, `iat`
//! a minute back for clock drift, `exp` nine minutes ahead — GitHub takes
//! at most ten, `iss` the app id as a string) buys an installation token at
//! `POST /app/installations/{id}/access_tokens`, narrowed to the agent's
//! repositories and permissions when it has a `github_app` scope. Pure
//! functions; sending and caching are `tokens`'.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};
use serde_json::{Map, Value};

use super::sign::jwt;
use super::token::{matches_path, FetchError, Fresh};
use crate::body::{self, Body};
use crate::credentials::Credentials;
use crate::identity::TokenScope;
use crate::secret::Secret;

/// Where installation tokens are minted.
pub(crate) const API_HOST: &str = "api.github.com";
/// The token endpoint, any installation: agents may not call it.
const TOKEN_PATH: &str = "/app/installations/*/access_tokens";
/// GitHub's REST API version the request is written for.
const API_VERSION: &str = "2022-11-28";

/// The access-token request for `creds` (`app_id`, `private_key`,
/// `installation_id`), narrowed to `scope` when given; and its path.
pub(crate) fn request(
    creds: &Credentials,
    scope: Option<&TokenScope>,
    now: SystemTime,
) -> Result<(Request<Body>, String), FetchError> {
    let field = |name: &'static str| {
        creds
            .get(name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or(FetchError::Credential(name, "missing"))
    };
    let app_id = field("app_id")?;
    let installation = field("installation_id")?;
    if !installation.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FetchError::Credential(
            "installation_id",
            "must be a number",
        ));
    }
    let key = jwt::rsa_key("private_key", field("private_key")?).map_err(FetchError::Sign)?;
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| FetchError::Clock)?
        .as_secs();
    let mut claims = Map::new();
    claims.insert("iat".into(), now.saturating_sub(60).into());
    claims.insert("exp".into(), (now + 9 * 60).into());
    // A string, as RFC 7519 has `iss` (StringOrURI): the app id or the
    // client id (`Iv1.…`), both of which GitHub takes.
    claims.insert("iss".into(), app_id.into());
    let app_jwt =
        zeroize::Zeroizing::new(jwt::rs256(&key, None, &claims).map_err(FetchError::Sign)?);
    let mut bearer = HeaderValue::from_str(&format!("Bearer {}", app_jwt.as_str()))
        .map_err(|_| FetchError::Credential("app_id", "not a header value"))?;
    bearer.set_sensitive(true);
    let path = format!("/app/installations/{installation}/access_tokens");
    let body = scope.map(|s| s.key.clone()).unwrap_or_default();
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(format!("https://{API_HOST}{path}"))
        .header(header::AUTHORIZATION, bearer)
        .header(header::ACCEPT, "application/vnd.github+json")
        .header("x-github-api-version", API_VERSION)
        // GitHub refuses requests without a User-Agent.
        .header(header::USER_AGENT, "clavis");
    if !body.is_empty() {
        builder = builder.header(header::CONTENT_TYPE, "application/json");
    }
    let request = builder
        .body(body::full(Bytes::from(body)))
        .map_err(|_| FetchError::Unreadable)?;
    Ok((request, path))
}

/// `{"token", "expires_at"}` from a `201`; the lifetime runs from `now`.
pub(crate) fn read(body: &[u8], now: SystemTime) -> Result<Fresh, FetchError> {
    let parsed: Value = serde_json::from_slice(body).map_err(|_| FetchError::NotJson)?;
    let token = parsed
        .get("token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && HeaderValue::from_str(t).is_ok())
        .ok_or(FetchError::NoAccessToken)?;
    let lifetime = match parsed.get("expires_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(at)) => {
            let at = humantime::parse_rfc3339_weak(at.trim_end_matches('Z'))
                .map_err(|_| FetchError::Expiry)?;
            Some(at.duration_since(now).map_err(|_| FetchError::Expiry)?)
        }
        Some(_) => return Err(FetchError::Expiry),
    };
    Ok(Fresh {
        token: Secret::new(token.to_owned()),
        lifetime: lifetime.filter(|l| *l > Duration::ZERO),
        refresh_token: None,
    })
}

/// Whether `path` is the access-token endpoint of any installation.
pub(crate) fn is_token_path(path: &str) -> bool {
    matches_path(path, TOKEN_PATH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_token_and_lifetime() {
        let now = UNIX_EPOCH + Duration::from_secs(1_468_275_250);
        // 2016-07-11T22:14:10Z is 1468275250 + 3600.
        let f = read(
            br#"{"token":"ghs_x","expires_at":"2016-07-11T23:14:10Z","permissions":{}}"#,
            now,
        )
        .unwrap();
        assert_eq!(f.token.expose(), "ghs_x");
        assert_eq!(f.lifetime, Some(Duration::from_secs(3600)));
        assert!(matches!(
            read(br#"{"token":"ghs_x","expires_at":"soon"}"#, now),
            Err(FetchError::Expiry)
        ));
        assert!(matches!(
            read(
                br#"{"token":"ghs_x","expires_at":"2016-07-11T21:00:00Z"}"#,
                now
            ),
            Err(FetchError::Expiry)
        ));
        assert!(matches!(
            read(br#"{"message":"Bad credentials"}"#, now),
            Err(FetchError::NoAccessToken)
        ));
    }

    #[test]
    fn the_token_path_is_recognised_however_it_is_spelled() {
        for path in [
            "/app/installations/42/access_tokens",
            "/app/installations/42/access_tokens/",
            "//app/installations/7/./access_tokens",
            "/app/installations/1/%61ccess_tokens",
            "/APP/Installations/1/ACCESS_TOKENS",
        ] {
            assert!(is_token_path(path), "{path}");
        }
        for path in [
            "/app/installations/42",
            "/app/installations/access_tokens",
            "/repos/a/b",
        ] {
            assert!(!is_token_path(path), "{path}");
        }
    }

    #[test]
    fn the_request_needs_a_numeric_installation() {
        let creds = Credentials::from_pairs([
            ("app_id", "1"),
            ("private_key", "x"),
            ("installation_id", "12/../../user"),
        ]);
        let e = request(&creds, None, SystemTime::now()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "credential field \"installation_id\": must be a number"
        );
    }
}
