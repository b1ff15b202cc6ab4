//! Pure functions over headers: hop-by-hop removal, auth stripping and
//! placeholders.

use http::{header, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop headers (RFC 9110 §7.6.1), `Upgrade` and `HTTP2-Settings`
/// (upgrades are handled explicitly, not passed along) and the proxy-only
/// ones, which never cross clavis in either direction.
pub(crate) fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "http2-settings"
    ) || name.starts_with("proxy-")
}

/// Removes hop-by-hop headers, those named in `Connection`, every `Proxy-*`
/// header, and `Upgrade`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // `keep-alive` / `close` name no other header; other tokens do (rare:
    // only then is anything allocated).
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    // One look at each name; most messages have nothing (a request) or
    // just `Connection` (a response) to remove. Header names are bounded
    // by `limits.max_headers`.
    while let Some(name) = headers
        .keys()
        .find(|k| is_hop_by_hop(k.as_str()) || named.contains(k))
        .cloned()
    {
        headers.remove(&name);
    }
}

/// Removes every header in `names`, whatever its case (HeaderName is already
/// lowercase) or its `_`/`-` spelling (`x_api_key` reaches some servers as
/// `x-api-key`).
pub(crate) fn strip_auth(headers: &mut HeaderMap, names: &[HeaderName]) {
    for name in names {
        headers.remove(name);
    }
    let variants: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().contains('_'))
        .filter(|k| {
            let dashed = k.as_str().replace('_', "-");
            names.iter().any(|n| n.as_str() == dashed)
        })
        .cloned()
        .collect();
    for name in variants {
        headers.remove(name);
    }
}

/// Whether `name` is one of `names` (an auth header a connector strips),
/// spelled with `_` for `-` or not: what [`strip_auth`] would remove.
pub(crate) fn is_auth_header(name: &HeaderName, names: &[HeaderName]) -> bool {
    let dashed = name.as_str().replace('_', "-");
    names.iter().any(|n| n.as_str() == dashed)
}

/// The service named by a `clavis:<service>` placeholder in one of the
/// connector's auth headers, bare or after a scheme (`Bearer `, `token `),
/// or inside a `Basic` credential (git's: the password, or the user name
/// with an empty password).
pub(crate) fn placeholder(headers: &HeaderMap, names: &[HeaderName]) -> Option<String> {
    names
        .iter()
        .flat_map(|n| headers.get_all(n))
        .find_map(placeholder_in)
}

fn placeholder_in(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?.trim();
    let token = match text.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("basic") => {
            return basic_placeholder(rest.trim())
        }
        Some((_scheme, rest)) => rest.trim(),
        None => text,
    };
    named(token)
}

fn named(token: &str) -> Option<String> {
    let name = token.strip_prefix("clavis:")?;
    (!name.is_empty()).then(|| name.to_owned())
}

/// `base64(user:password)` whose password is a placeholder
/// (`x-access-token:clavis:github`), or whose user name is one with an
/// empty password (`clavis:github:`, git's `https://<token>@host`).
fn basic_placeholder(encoded: &str) -> Option<String> {
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let decoded = zeroize::Zeroizing::new(decoded);
    let text = std::str::from_utf8(&decoded).ok()?;
    let (_user, password) = text.split_once(':')?;
    named(password).or_else(|| text.strip_suffix(':').and_then(named))
}

#[cfg(test)]
mod tests {
    use super::*;

    mod strip {
        use super::*;

        #[test]
        fn knows_an_auth_header_in_any_case_and_spelling() {
            let names = [HeaderName::from_static("x-api-key"), header::AUTHORIZATION];
            for n in ["x-api-key", "X-Api-Key", "x_api_key", "AUTHORIZATION"] {
                let name = HeaderName::from_bytes(n.as_bytes()).unwrap();
                assert!(is_auth_header(&name, &names), "{n}");
            }
            assert!(!is_auth_header(&header::ACCEPT, &names));
        }

        #[test]
        fn removes_proxy_authorization_and_connection_listed() {
            let mut h = HeaderMap::new();
            h.insert("proxy-authorization", "Basic x".parse().unwrap());
            h.insert("proxy-foo", "1".parse().unwrap());
            h.insert("connection", "close, x-private".parse().unwrap());
            h.insert("x-private", "1".parse().unwrap());
            h.insert("x-keep", "1".parse().unwrap());
            strip_hop_by_hop(&mut h);
            assert_eq!(h.len(), 1);
            assert!(h.contains_key("x-keep"));
        }

        #[test]
        fn removes_every_hop_by_hop_name_and_every_connection_line() {
            let mut h = HeaderMap::new();
            for name in [
                "keep-alive",
                "proxy-connection",
                "proxy-authenticate",
                "te",
                "trailer",
                "transfer-encoding",
                "upgrade",
                "http2-settings",
                "x-one",
                "x-two",
            ] {
                h.insert(name, "1".parse().unwrap());
            }
            h.append("connection", "Keep-Alive, X-One".parse().unwrap());
            h.append("connection", "x-two".parse().unwrap());
            h.insert("content-type", "text/plain".parse().unwrap());
            strip_hop_by_hop(&mut h);
            assert_eq!(
                h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
                ["content-type"]
            );

            let mut h = HeaderMap::new();
            h.insert("connection", "keep-alive".parse().unwrap());
            h.insert("x-kept", "1".parse().unwrap());
            strip_hop_by_hop(&mut h);
            assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
        }

        #[test]
        fn auth_in_every_spelling() {
            let mut h = HeaderMap::new();
            h.append("x-api-key", "a".parse().unwrap());
            h.append("x-api-key", "b".parse().unwrap());
            h.insert("x_api_key", "c".parse().unwrap());
            h.insert("x-other", "d".parse().unwrap());
            strip_auth(&mut h, &[HeaderName::from_static("x-api-key")]);
            assert_eq!(h.len(), 1);
        }
    }

    mod placeholder {
        use super::*;

        #[test]
        fn finds_bare_and_schemed() {
            let names = [
                HeaderName::from_static("authorization"),
                HeaderName::from_static("x-api-key"),
            ];
            let mut h = HeaderMap::new();
            h.insert(
                "authorization",
                "Bearer clavis:work-openai".parse().unwrap(),
            );
            assert_eq!(placeholder(&h, &names).as_deref(), Some("work-openai"));
            let mut h = HeaderMap::new();
            h.insert("x-api-key", "clavis:a".parse().unwrap());
            assert_eq!(placeholder(&h, &names).as_deref(), Some("a"));
            let mut h = HeaderMap::new();
            h.insert("authorization", "token placeholder".parse().unwrap());
            assert_eq!(placeholder(&h, &names), None);
        }

        #[test]
        fn finds_git_basic_credentials() {
            use base64::Engine;
            let names = [HeaderName::from_static("authorization")];
            let basic = |userpass: &str| {
                let mut h = HeaderMap::new();
                let b64 = base64::engine::general_purpose::STANDARD.encode(userpass);
                h.insert("authorization", format!("Basic {b64}").parse().unwrap());
                placeholder(&h, &names)
            };
            assert_eq!(basic("x-access-token:clavis:gh").as_deref(), Some("gh"));
            assert_eq!(basic("anyone:clavis:work-gh").as_deref(), Some("work-gh"));
            assert_eq!(basic("clavis:gh:").as_deref(), Some("gh"));
            assert_eq!(basic("x-access-token:ghp_real"), None);
            assert_eq!(basic("clavis:"), None);
            assert_eq!(basic("x:clavis:"), None);
            let mut h = HeaderMap::new();
            h.insert("authorization", "Basic !!notbase64".parse().unwrap());
            assert_eq!(placeholder(&h, &names), None);
        }
    }
}
