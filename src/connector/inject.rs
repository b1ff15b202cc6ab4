//! How a credential is added to a request: one closed set, one `match`.

use http::{request::Parts, HeaderName, HeaderValue, Uri};

use super::git::WithGit;
use super::sign::recipe::Recipe;
use super::sign::{coinbase, kalshi, SignError, SignInput};
use super::token::TokenSource;
use super::Template;
use crate::credentials::Credentials;
use crate::encoding;

#[derive(Debug)]
pub(crate) enum Inject {
    /// Static headers and query parameters rendered from credential fields.
    Headers {
        headers: Vec<(HeaderName, Template)>,
        query: Vec<(String, Template)>,
    },
    /// Coinbase: a fresh CDP JWT per request, or the legacy HMAC scheme,
    /// chosen by the form of `api_secret`.
    Coinbase,
    /// Kalshi: a per-request signature from `api_key_id` + `private_key`, or
    /// a login session from `email` + `password`.
    Kalshi,
    /// A user-defined signing recipe (HMAC or AWS SigV4).
    Recipe(Recipe),
    /// An API's injection on its hosts, and git over HTTPS on a git host:
    /// there only git's paths get a credential (SPEC §13.4).
    Git(Box<WithGit>),
    /// A token the credentials fetch (OAuth 2.0, a GitHub App installation
    /// token), sent as `Authorization: Bearer` (SPEC §13.1).
    Token(TokenSource),
}

/// What the exchange must do before [`Inject::apply`] for these credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Headers only; the body streams.
    Stream,
    /// The signature covers the body: buffer it (capped) first.
    BufferBody,
    /// A token from a [`TokenSource`] (a Kalshi login, an OAuth 2.0 or
    /// GitHub App token). The body is buffered (capped): a refused token is
    /// renewed and the request sent again.
    Token(TokenSource),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum InjectError {
    #[error("credential field {0:?} is missing")]
    MissingField(String),
    #[error("credential field {0:?} cannot be sent in an HTTP header (control characters)")]
    BadHeaderValue(String),
    #[error("request target cannot carry the injected query parameters")]
    BadUri,
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error("a token source's token is added by the token plan, not injected")]
    TokenPlan,
}

impl Inject {
    pub(crate) fn plan(&self, creds: &Credentials) -> Plan {
        match self {
            Inject::Headers { .. } => Plan::Stream,
            Inject::Coinbase => {
                let hmac = creds
                    .get("api_secret")
                    .is_some_and(coinbase::is_legacy_hmac_secret);
                if hmac {
                    Plan::BufferBody
                } else {
                    Plan::Stream
                }
            }
            Inject::Kalshi if creds.get("private_key").is_some() => Plan::Stream,
            Inject::Kalshi => Plan::Token(TokenSource::KalshiLogin),
            Inject::Recipe(r) if r.needs_body() => Plan::BufferBody,
            Inject::Recipe(_) => Plan::Stream,
            Inject::Git(with) => with.plan(creds),
            Inject::Token(source) => Plan::Token(source.clone()),
        }
    }

    /// Whether a request to `host` at `path` gets a credential at all: on
    /// a git host, only git's paths do (SPEC §13.4); the rest is forwarded
    /// with nothing injected.
    pub(crate) fn injects(&self, host: &str, path: &str) -> bool {
        match self {
            Inject::Git(with) => with.for_request(host, path).is_some(),
            _ => true,
        }
    }

    /// Whether `host` also serves what needs no credential, so a caller with
    /// no service for this connector reaches it with nothing injected (a
    /// git host's public repositories).
    pub(crate) fn public_on(&self, host: &str) -> bool {
        matches!(self, Inject::Git(with) if with.host == host)
    }

    /// Whether `path` on the connector's hosts is reserved to clavis (the
    /// login of a token source), whatever the agent's credentials are.
    pub(crate) fn reserves(&self, path: &str) -> bool {
        match self {
            Inject::Kalshi => TokenSource::KalshiLogin.reserves(path),
            Inject::Git(with) => with.api.reserves(path) || with.git.reserves(path),
            Inject::Token(source) => source.reserves(path),
            _ => false,
        }
    }

    /// Headers a signer sets: a connector built around this adds them to its
    /// strip list, so the agent's copies never survive.
    pub(crate) fn extra_strip(&self) -> Vec<HeaderName> {
        match self {
            Inject::Recipe(r) => r.header_names(),
            Inject::Git(with) => {
                let mut names = with.api.extra_strip();
                names.extend(with.git.extra_strip());
                names
            }
            Inject::Token(_) => vec![http::header::AUTHORIZATION],
            _ => Vec::new(),
        }
    }

    /// Adds the credential to a request whose agent-supplied auth has already
    /// been stripped. `host` is the destination (signatures cover it) and
    /// `body` the buffered body when [`Inject::plan`] asked for it. Header
    /// values are marked sensitive, so HPACK never indexes them.
    pub(crate) fn apply(
        &self,
        parts: &mut Parts,
        host: &str,
        creds: &Credentials,
        body: &[u8],
    ) -> Result<(), InjectError> {
        let signed = match self {
            Inject::Headers { headers, query } => {
                for (name, template) in headers {
                    let value = template
                        .render(creds)
                        .map_err(|f| InjectError::MissingField(f.to_owned()))?;
                    let mut value = HeaderValue::from_str(&value).map_err(|_| {
                        InjectError::BadHeaderValue(template.fields().collect::<Vec<_>>().join(","))
                    })?;
                    value.set_sensitive(true);
                    parts.headers.insert(name.clone(), value);
                }
                if !query.is_empty() {
                    parts.uri = with_query(&parts.uri, query, creds)?;
                }
                return Ok(());
            }
            Inject::Coinbase => coinbase::sign(creds, &sign_input(parts, host, body))?,
            Inject::Kalshi => kalshi::sign(creds, &sign_input(parts, host, body))?,
            Inject::Recipe(recipe) => recipe.sign(creds, &sign_input(parts, host, body))?,
            Inject::Git(with) => {
                return match with.for_request(host, parts.uri.path()) {
                    Some(inject) => inject.apply(parts, host, creds, body),
                    // A page of the git host's web site: nothing is added.
                    None => Ok(()),
                };
            }
            Inject::Token(_) => return Err(InjectError::TokenPlan),
        };
        for (name, mut value) in signed {
            value.set_sensitive(true);
            parts.headers.insert(name, value);
        }
        Ok(())
    }
}

fn sign_input<'a>(parts: &'a Parts, host: &'a str, body: &'a [u8]) -> SignInput<'a> {
    SignInput {
        method: parts.method.as_str(),
        host,
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &parts.headers,
        body,
        now: std::time::SystemTime::now(),
    }
}

/// Rebuilds the URI with every injected key removed from the agent's query
/// and then appended with the real value.
fn with_query(
    uri: &Uri,
    query: &[(String, Template)],
    creds: &Credentials,
) -> Result<Uri, InjectError> {
    let mut target = encoding::Target::new(uri.path());
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        // Compared decoded: `k%65y=` names the same parameter as `key=`.
        let key = encoding::percent_decode(pair.split('=').next().unwrap_or(""));
        if !query.iter().any(|(k, _)| k.as_bytes() == key.as_slice()) {
            target.push_raw(pair);
        }
    }
    for (key, template) in query {
        let value = template
            .render(creds)
            .map_err(|f| InjectError::MissingField(f.to_owned()))?;
        target.push(key, &value);
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(target.finish().parse().map_err(|_| InjectError::BadUri)?);
    Uri::from_parts(parts).map_err(|_| InjectError::BadUri)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str) -> Parts {
        http::Request::builder()
            .uri(uri)
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    mod apply {
        use super::*;

        #[test]
        fn query_replaces_agent_value() {
            let inject = Inject::Headers {
                headers: Vec::new(),
                query: vec![(
                    "key".into(),
                    Template::parse("{api_key}", &["api_key"]).unwrap(),
                )],
            };
            let creds = Credentials::from_pairs([("api_key", "a b&c")]);
            let mut p = parts("https://h.example/x?key=placeholder&q=1");
            inject.apply(&mut p, "h.example", &creds, b"").unwrap();
            assert_eq!(
                p.uri.path_and_query().unwrap().as_str(),
                "/x?q=1&key=a%20b%26c"
            );
        }

        #[test]
        fn query_strip_sees_through_percent_escapes() {
            let inject = Inject::Headers {
                headers: Vec::new(),
                query: vec![(
                    "key".into(),
                    Template::parse("{api_key}", &["api_key"]).unwrap(),
                )],
            };
            let creds = Credentials::from_pairs([("api_key", "real")]);
            let mut p = parts("https://h.example/x?k%65y=agent&%6B%45y=other&q=%zz&key");
            inject.apply(&mut p, "h.example", &creds, b"").unwrap();
            // `kEy` is another parameter (names are case-sensitive); a bad
            // escape is kept as it is.
            assert_eq!(
                p.uri.path_and_query().unwrap().as_str(),
                "/x?%6B%45y=other&q=%zz&key=real"
            );
        }

        #[test]
        fn header_is_sensitive() {
            let inject = Inject::Headers {
                headers: vec![(
                    HeaderName::from_static("x-key"),
                    Template::prefixed("", "api_key"),
                )],
                query: Vec::new(),
            };
            let mut p = parts("https://h.example/");
            inject
                .apply(
                    &mut p,
                    "h.example",
                    &Credentials::from_pairs([("api_key", "v")]),
                    b"",
                )
                .unwrap();
            assert!(p.headers["x-key"].is_sensitive());
        }

        #[test]
        fn missing_field_is_named() {
            let inject = Inject::Headers {
                headers: vec![(
                    HeaderName::from_static("x-key"),
                    Template::prefixed("", "api_key"),
                )],
                query: Vec::new(),
            };
            let mut p = parts("https://h.example/");
            let e = inject
                .apply(
                    &mut p,
                    "h.example",
                    &Credentials::from_pairs([("other", "v")]),
                    b"",
                )
                .unwrap_err();
            assert_eq!(e.to_string(), "credential field \"api_key\" is missing");
        }

        #[test]
        fn control_characters_are_refused() {
            let inject = Inject::Headers {
                headers: vec![(
                    HeaderName::from_static("x-key"),
                    Template::prefixed("", "api_key"),
                )],
                query: Vec::new(),
            };
            let mut p = parts("https://h.example/");
            let creds = Credentials::from_pairs([("api_key", "a\r\nx-evil: 1")]);
            assert!(inject.apply(&mut p, "h.example", &creds, b"").is_err());
        }
    }
}
