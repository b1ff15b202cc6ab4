//! How a credential is added to a request: one closed set, one `match`.

use http::{request::Parts, HeaderName, HeaderValue, Uri};

use super::Template;
use crate::store::Credentials;

#[derive(Debug)]
pub enum Inject {
    /// Static headers and query parameters rendered from credential fields.
    Headers {
        headers: Vec<(HeaderName, Template)>,
        query: Vec<(String, Template)>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("credential field {0:?} is missing")]
    MissingField(String),
    #[error("credential field {0:?} cannot be sent in an HTTP header (control characters)")]
    BadHeaderValue(String),
    #[error("request target cannot carry the injected query parameters")]
    BadUri,
}

impl Inject {
    /// Adds the credential to a request whose agent-supplied auth has already
    /// been stripped. Header values are marked sensitive, so HPACK never
    /// indexes them.
    pub fn apply(&self, parts: &mut Parts, creds: &Credentials) -> Result<(), InjectError> {
        match self {
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
                Ok(())
            }
        }
    }
}

/// Rebuilds the URI with every injected key removed from the agent's query
/// and then appended with the real value.
fn with_query(
    uri: &Uri,
    query: &[(String, Template)],
    creds: &Credentials,
) -> Result<Uri, InjectError> {
    let path = uri.path();
    let mut out = String::with_capacity(path.len() + 64);
    out.push_str(path);
    let mut sep = '?';
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let key = pair.split('=').next().unwrap_or("");
        if query
            .iter()
            .any(|(k, _)| percent_encode(k) == key || k == key)
        {
            continue;
        }
        out.push(sep);
        out.push_str(pair);
        sep = '&';
    }
    for (key, template) in query {
        let value = template
            .render(creds)
            .map_err(|f| InjectError::MissingField(f.to_owned()))?;
        out.push(sep);
        out.push_str(&percent_encode(key));
        out.push('=');
        out.push_str(&percent_encode(&value));
        sep = '&';
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(out.parse().map_err(|_| InjectError::BadUri)?);
    Uri::from_parts(parts).map_err(|_| InjectError::BadUri)
}

/// RFC 3986 percent-encoding of everything but unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
            inject.apply(&mut p, &creds).unwrap();
            assert_eq!(
                p.uri.path_and_query().unwrap().as_str(),
                "/x?q=1&key=a%20b%26c"
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
                .apply(&mut p, &Credentials::from_pairs([("api_key", "v")]))
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
                .apply(&mut p, &Credentials::from_pairs([("other", "v")]))
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
            assert!(inject.apply(&mut p, &creds).is_err());
        }
    }
}
