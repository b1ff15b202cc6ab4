//! OAuth 2.0 token sources of user connectors (SPEC §13.1): the request to
//! the token endpoint for each grant — refresh token (RFC 6749 §6), client
//! credentials (§4.4), a JWT bearer assertion signed with a Google
//! service-account key (RFC 7523) — and what the answer holds: the access
//! token, its lifetime and, where the server rotates it, a new refresh
//! token. Pure functions; sending and caching are `tokens`'.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Uri};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::sign::jwt;
use super::token::{FetchError, Fresh};
use super::{FieldSpec, SpecError};
use crate::body::{self, Body};
use crate::config::{ClientAuth, Grant, OAuth2Spec};
use crate::credentials::Credentials;
use crate::encoding::percent_encode_into;
use crate::secret::Secret;

/// RFC 7523 §2.1.
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Google accepts assertions valid for at most an hour.
const ASSERTION_LIFETIME: u64 = 3600;
/// Longer lifetimes are read as this (a year): a clock cannot add more.
const LONGEST_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// One connector's token endpoint and grant, checked at load.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct OAuth2 {
    /// As configured: the JWT bearer assertion's `aud`.
    url: String,
    uri: Uri,
    /// Normalized: lowercase, no trailing dot, no port.
    host: String,
    path: String,
    grant: Grant,
    scopes: Vec<String>,
    client_auth: ClientAuth,
}

impl OAuth2 {
    /// `auth.oauth2` of a user connector; errors name the key below it.
    pub(crate) fn build(spec: &OAuth2Spec) -> Result<OAuth2, SpecError> {
        let key = "auth.oauth2.token_url";
        let bad = |why: &str| SpecError::at(key, format!("{:?} {why}", spec.token_url));
        let uri: Uri = spec.token_url.parse().map_err(|_| bad("is not a URL"))?;
        if uri.scheme() != Some(&http::uri::Scheme::HTTPS) {
            return Err(bad("must be https:// (the credentials go there)"));
        }
        let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("must not carry user information"));
        }
        let (host, _) = crate::host::split_host_port(authority.as_str())
            .ok_or_else(|| bad("does not name a valid host"))?;
        let path = uri.path().to_owned();
        for (i, scope) in spec.scopes.iter().enumerate() {
            // RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
            let valid = !scope.is_empty()
                && scope
                    .bytes()
                    .all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E));
            if !valid {
                return Err(SpecError::at(
                    format!("auth.oauth2.scopes[{i}]"),
                    format!("{scope:?} is not an OAuth scope (no spaces, quotes or backslashes)"),
                ));
            }
        }
        if spec.grant == Grant::JwtBearer && spec.scopes.is_empty() {
            return Err(SpecError::at(
                "auth.oauth2.scopes",
                "jwt_bearer needs the scopes its assertion asks for",
            ));
        }
        Ok(OAuth2 {
            url: spec.token_url.clone(),
            uri,
            host,
            path,
            grant: spec.grant,
            scopes: spec.scopes.clone(),
            client_auth: spec.client_auth,
        })
    }

    /// The credential fields the grant needs.
    pub(crate) fn fields(&self) -> Vec<FieldSpec> {
        let names: &[&str] = match self.grant {
            Grant::RefreshToken => &["client_id", "client_secret", "refresh_token"],
            Grant::ClientCredentials => &["client_id", "client_secret"],
            Grant::JwtBearer => &["service_account_json"],
        };
        names.iter().map(|n| FieldSpec::any(n)).collect()
    }

    /// The token endpoint's host (normalized) and path: what agents may
    /// not call.
    pub(crate) fn endpoint(&self) -> (&str, &str) {
        (&self.host, &self.path)
    }

    /// Whether the answer may carry a new refresh token to use next time.
    pub(crate) fn rotates(&self) -> bool {
        self.grant == Grant::RefreshToken
    }

    /// The token request. `refresh_token` replaces the configured one (a
    /// rotated token the server gave back earlier).
    pub(crate) fn request(
        &self,
        creds: &Credentials,
        refresh_token: Option<&str>,
        now: SystemTime,
    ) -> Result<Request<Body>, FetchError> {
        let mut form = Form::default();
        let mut basic = None;
        match self.grant {
            Grant::RefreshToken => {
                form.push("grant_type", "refresh_token");
                let configured = field(creds, "refresh_token")?;
                form.push("refresh_token", refresh_token.unwrap_or(configured));
                self.scope_param(&mut form);
                basic = self.client(creds, &mut form)?;
            }
            Grant::ClientCredentials => {
                form.push("grant_type", "client_credentials");
                self.scope_param(&mut form);
                basic = self.client(creds, &mut form)?;
            }
            Grant::JwtBearer => {
                form.push("grant_type", JWT_BEARER);
                form.push("assertion", &self.assertion(creds, now)?);
            }
        }
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(body::full(Bytes::copy_from_slice(form.0.as_bytes())))
            .map_err(|_| FetchError::Unreadable)?;
        if let Some(mut value) = basic {
            value.set_sensitive(true);
            request.headers_mut().insert(header::AUTHORIZATION, value);
        }
        Ok(request)
    }

    fn scope_param(&self, form: &mut Form) {
        if !self.scopes.is_empty() {
            form.push("scope", &self.scopes.join(" "));
        }
    }

    /// Client authentication (RFC 6749 §2.3.1): the `Authorization: Basic`
    /// value, or the id and secret added to the form.
    fn client(
        &self,
        creds: &Credentials,
        form: &mut Form,
    ) -> Result<Option<HeaderValue>, FetchError> {
        let id = field(creds, "client_id")?;
        let secret = field(creds, "client_secret")?;
        match self.client_auth {
            ClientAuth::Post => {
                form.push("client_id", id);
                form.push("client_secret", secret);
                Ok(None)
            }
            ClientAuth::Basic => {
                // Each part form-encoded first, as §2.3.1 says.
                let mut pair = Zeroizing::new(String::new());
                percent_encode_into(&mut pair, id.as_bytes());
                pair.push(':');
                percent_encode_into(&mut pair, secret.as_bytes());
                let value = Zeroizing::new(format!("Basic {}", STANDARD.encode(pair.as_bytes())));
                HeaderValue::from_str(&value)
                    .map(Some)
                    .map_err(|_| FetchError::Credential("client_secret", "not a header value"))
            }
        }
    }

    /// RFC 7523 §3 with Google's service-account claims: `iss` the
    /// account's email, `scope`, `aud` the token URL, an hour's validity,
    /// `kid` the key's id.
    fn assertion(
        &self,
        creds: &Credentials,
        now: SystemTime,
    ) -> Result<Zeroizing<String>, FetchError> {
        let account = ServiceAccount::parse(field(creds, "service_account_json")?)?;
        let key = jwt::rsa_key("service_account_json.private_key", &account.private_key)
            .map_err(FetchError::Sign)?;
        let iat = now
            .duration_since(UNIX_EPOCH)
            .map_err(|_| FetchError::Clock)?
            .as_secs();
        let mut claims = Map::new();
        claims.insert("iss".into(), account.client_email.into());
        claims.insert("scope".into(), self.scopes.join(" ").into());
        claims.insert("aud".into(), self.url.clone().into());
        claims.insert("iat".into(), iat.into());
        claims.insert("exp".into(), (iat + ASSERTION_LIFETIME).into());
        jwt::rs256(&key, account.private_key_id.as_deref(), &claims)
            .map(Zeroizing::new)
            .map_err(FetchError::Sign)
    }

    /// The answer of RFC 6749 §5.1: `access_token` (a Bearer token),
    /// `expires_in`, and maybe a new `refresh_token`.
    pub(crate) fn read(&self, body: &[u8]) -> Result<Fresh, FetchError> {
        let parsed: Value = serde_json::from_slice(body).map_err(|_| FetchError::NotJson)?;
        let token = parsed
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty() && HeaderValue::from_str(t).is_ok())
            .ok_or(FetchError::NoAccessToken)?;
        match parsed.get("token_type") {
            None | Some(Value::Null) => {}
            Some(t) if t.as_str().is_some_and(|t| t.eq_ignore_ascii_case("bearer")) => {}
            Some(_) => return Err(FetchError::NotBearer),
        }
        let lifetime = match parsed.get("expires_in") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => seconds(n.as_f64()),
            // Some servers send it as a string.
            Some(Value::String(s)) => seconds(s.trim().parse().ok()),
            Some(_) => return Err(FetchError::Expiry),
        };
        let refresh_token = if self.rotates() {
            parsed
                .get("refresh_token")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty() && !t.chars().any(char::is_control))
                .map(|t| Secret::new(t.to_owned()))
        } else {
            None
        };
        Ok(Fresh {
            token: Secret::new(token.to_owned()),
            lifetime,
            refresh_token,
        })
    }
}

/// A lifetime in seconds; none for zero, negative or unreadable values
/// (the token is then renewed on a `401` or after the session limits).
fn seconds(n: Option<f64>) -> Option<Duration> {
    let n = n.filter(|n| n.is_finite() && *n > 0.0)?;
    Some(Duration::from_secs_f64(
        n.min(LONGEST_LIFETIME.as_secs_f64()),
    ))
}

/// The error code of a refused token request (RFC 6749 §5.2 `error`):
/// a short ASCII word from a fixed list, never anything the server echoed.
pub(crate) fn error_code(body: &[u8]) -> Option<String> {
    let parsed: Value = serde_json::from_slice(body).ok()?;
    let code = parsed.get("error")?.as_str()?;
    let word = !code.is_empty()
        && code.len() <= 40
        && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    word.then(|| code.to_owned())
}

/// A credential field that must be present and non-empty.
fn field<'c>(creds: &'c Credentials, name: &'static str) -> Result<&'c str, FetchError> {
    creds
        .get(name)
        .filter(|v| !v.is_empty())
        .ok_or(FetchError::Credential(name, "missing"))
}

/// An `application/x-www-form-urlencoded` body, wiped when dropped.
#[derive(Default)]
struct Form(Zeroizing<String>);

impl Form {
    fn push(&mut self, key: &str, value: &str) {
        if !self.0.is_empty() {
            self.0.push('&');
        }
        percent_encode_into(&mut self.0, key.as_bytes());
        self.0.push('=');
        percent_encode_into(&mut self.0, value.as_bytes());
    }
}

/// The fields of Google's service-account key file that the assertion
/// needs. No `Debug`: the private key is in it.
struct ServiceAccount {
    client_email: String,
    private_key: Zeroizing<String>,
    private_key_id: Option<String>,
}

impl ServiceAccount {
    /// Parsing errors are never quoted: serde's would show the value.
    fn parse(text: &str) -> Result<ServiceAccount, FetchError> {
        let not_a_key = || {
            FetchError::Credential(
                "service_account_json",
                "not a service-account key file (JSON with client_email and private_key)",
            )
        };
        let value: Value = serde_json::from_str(text).map_err(|_| not_a_key())?;
        let text_of = |name: &str| {
            value
                .get(name)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
        };
        let (Some(email), Some(key)) = (text_of("client_email"), text_of("private_key")) else {
            return Err(not_a_key());
        };
        Ok(ServiceAccount {
            client_email: email.to_owned(),
            private_key: Zeroizing::new(key.to_owned()),
            private_key_id: text_of("private_key_id").map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn spec(url: &str, grant: Grant, scopes: &[&str]) -> OAuth2Spec {
        OAuth2Spec {
            token_url: url.into(),
            grant,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            client_auth: ClientAuth::Basic,
        }
    }

    async fn form_of(request: Request<Body>) -> Vec<(String, String)> {
        let bytes = request.into_body().collect().await.unwrap().to_bytes();
        std::str::from_utf8(&bytes)
            .unwrap()
            .split('&')
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap();
                let decode =
                    |s: &str| String::from_utf8(crate::encoding::percent_decode(s)).unwrap();
                (decode(k), decode(v))
            })
            .collect()
    }

    mod build {
        use super::*;

        #[test]
        fn token_url_must_be_https_with_a_host() {
            for url in [
                "http://auth.example/token",
                "not a url",
                "https://u:p@auth.example/t",
                "/token",
            ] {
                let e = OAuth2::build(&spec(url, Grant::ClientCredentials, &[])).unwrap_err();
                assert_eq!(e.key, "auth.oauth2.token_url", "{url}");
            }
            let ok = OAuth2::build(&spec(
                "https://Auth.Example.:8443/o/token?v=2",
                Grant::ClientCredentials,
                &[],
            ))
            .unwrap();
            assert_eq!(ok.endpoint(), ("auth.example", "/o/token"));
        }

        #[test]
        fn scopes_are_scope_tokens_and_jwt_bearer_needs_them() {
            let e = OAuth2::build(&spec("https://a.example/t", Grant::RefreshToken, &["a b"]))
                .unwrap_err();
            assert_eq!(e.key, "auth.oauth2.scopes[0]");
            let e = OAuth2::build(&spec("https://a.example/t", Grant::JwtBearer, &[])).unwrap_err();
            assert_eq!(e.key, "auth.oauth2.scopes");
        }
    }

    mod request {
        use super::*;

        #[tokio::test]
        async fn refresh_grant_with_basic_client_auth() {
            let o = OAuth2::build(&spec(
                "https://auth.example/token",
                Grant::RefreshToken,
                &["r.read", "r.write"],
            ))
            .unwrap();
            let creds = Credentials::from_pairs([
                ("client_id", "id:1"),
                ("client_secret", "s&cret"),
                ("refresh_token", "rt-configured"),
            ]);
            let r = o.request(&creds, None, SystemTime::now()).unwrap();
            assert_eq!(r.uri(), "https://auth.example/token");
            // base64("id%3A1:s%26cret")
            assert_eq!(r.headers()["authorization"], "Basic aWQlM0ExOnMlMjZjcmV0");
            assert!(r.headers()["authorization"].is_sensitive());
            assert_eq!(
                form_of(r).await,
                vec![
                    ("grant_type".into(), "refresh_token".into()),
                    ("refresh_token".into(), "rt-configured".into()),
                    ("scope".into(), "r.read r.write".into()),
                ]
            );
            let r = o
                .request(&creds, Some("rt-rotated"), SystemTime::now())
                .unwrap();
            assert_eq!(form_of(r).await[1].1, "rt-rotated");
        }

        #[tokio::test]
        async fn client_credentials_with_post_client_auth() {
            let mut s = spec("https://auth.example/token", Grant::ClientCredentials, &[]);
            s.client_auth = ClientAuth::Post;
            let o = OAuth2::build(&s).unwrap();
            let creds = Credentials::from_pairs([("client_id", "id"), ("client_secret", "sec")]);
            let r = o.request(&creds, None, SystemTime::now()).unwrap();
            assert!(r.headers().get("authorization").is_none());
            assert_eq!(
                form_of(r).await,
                vec![
                    ("grant_type".into(), "client_credentials".into()),
                    ("client_id".into(), "id".into()),
                    ("client_secret".into(), "sec".into()),
                ]
            );
            let e = o
                .request(
                    &Credentials::from_pairs([("client_id", "id")]),
                    None,
                    SystemTime::now(),
                )
                .unwrap_err();
            assert_eq!(e.to_string(), "credential field \"client_secret\": missing");
        }

        #[test]
        fn a_bad_service_account_file_is_named_not_quoted() {
            let o = OAuth2::build(&spec(
                "https://auth.example/token",
                Grant::JwtBearer,
                &["s"],
            ))
            .unwrap();
            for text in [
                "{\"client_email\": \"SECRETSTUFF\"}",
                "SECRETSTUFF",
                "{\"private_key\":\"SECRETSTUFF\",\"client_email\":\"a@b\"}",
            ] {
                let creds = Credentials::from_pairs([("service_account_json", text)]);
                let e = o
                    .request(&creds, None, SystemTime::now())
                    .unwrap_err()
                    .to_string();
                assert!(
                    e.contains("service_account_json") && !e.contains("SECRET"),
                    "{e}"
                );
            }
        }
    }

    mod read {
        use super::*;

        fn o(grant: Grant) -> OAuth2 {
            OAuth2::build(&spec("https://auth.example/token", grant, &["s"])).unwrap()
        }

        #[test]
        fn token_lifetime_and_rotated_refresh_token() {
            let f = o(Grant::RefreshToken)
                .read(br#"{"access_token":"at-1","token_type":"Bearer","expires_in":3599,"refresh_token":"rt-2"}"#)
                .unwrap();
            assert_eq!(f.token.expose(), "at-1");
            assert_eq!(f.lifetime, Some(Duration::from_secs(3599)));
            assert_eq!(f.refresh_token.unwrap().expose(), "rt-2");
            let f = o(Grant::ClientCredentials)
                .read(br#"{"access_token":"at-1","token_type":"bearer","expires_in":"60","refresh_token":"x"}"#)
                .unwrap();
            assert_eq!(f.lifetime, Some(Duration::from_secs(60)));
            assert!(f.refresh_token.is_none(), "only the refresh grant rotates");
            let f = o(Grant::RefreshToken)
                .read(br#"{"access_token":"at-1"}"#)
                .unwrap();
            assert!(f.lifetime.is_none());
        }

        #[test]
        fn unusable_answers_are_refused() {
            let o = o(Grant::RefreshToken);
            assert!(matches!(o.read(b"<html>"), Err(FetchError::NotJson)));
            assert!(matches!(
                o.read(br#"{"token":"x"}"#),
                Err(FetchError::NoAccessToken)
            ));
            assert!(matches!(
                o.read(br#"{"access_token":"a\nb"}"#),
                Err(FetchError::NoAccessToken)
            ));
            assert!(matches!(
                o.read(br#"{"access_token":"a","token_type":"mac"}"#),
                Err(FetchError::NotBearer)
            ));
            assert!(matches!(
                o.read(br#"{"access_token":"a","expires_in":[1]}"#),
                Err(FetchError::Expiry)
            ));
        }

        #[test]
        fn error_codes_are_words_only() {
            assert_eq!(
                error_code(br#"{"error":"invalid_grant","error_description":"Bad"}"#).as_deref(),
                Some("invalid_grant")
            );
            assert_eq!(error_code(br#"{"error":"token rt-1 is revoked"}"#), None);
            assert_eq!(error_code(b"nope"), None);
        }
    }
}
