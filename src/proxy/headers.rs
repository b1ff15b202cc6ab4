//! Pure functions over authorities and headers: normalization, the
//! destination check, hop-by-hop removal, auth stripping and placeholders.

use http::{header, HeaderMap, HeaderName, HeaderValue};

/// Splits and normalizes `host[:port]`: lowercase, one trailing dot removed,
/// IPv6 kept in brackets. Refuses userinfo, percent-escapes, whitespace and
/// anything but letters, digits, `-` and `.` in names.
pub fn split_host_port(text: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        v6.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (format!("[{}]", v6.to_ascii_lowercase()), port)
    } else {
        let (host, port) = match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        let ok = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && !host.starts_with('.')
            && !host.contains("..");
        if !ok {
            return None;
        }
        (host.to_ascii_lowercase(), port)
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok().filter(|p| *p != 0)?)
        }
        Some(_) => return None,
    };
    Some((host, port))
}

/// Does an inner `Host` / `:authority` / absolute-URI authority name the
/// tunnel's destination? The port may be omitted when it is the scheme default.
pub fn authority_matches(host: &str, port: u16, value: &str) -> bool {
    // Fast path for the common exact form; `host` is already normalized.
    if port == 443 && value.len() == host.len() && value.eq_ignore_ascii_case(host) {
        return true;
    }
    match split_host_port(value) {
        Some((h, p)) => h == host && p.unwrap_or(443) == port,
        None => false,
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), `Upgrade` and `HTTP2-Settings`
/// (upgrades are handled explicitly, not passed along) and the proxy-only
/// ones, which never cross clavis in either direction.
pub fn is_hop_by_hop(name: &str) -> bool {
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
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
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
pub fn strip_auth(headers: &mut HeaderMap, names: &[HeaderName]) {
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

/// The service named by a `clavis:<service>` placeholder in one of the
/// connector's auth headers, bare or after a scheme (`Bearer `, `token `).
pub fn placeholder(headers: &HeaderMap, names: &[HeaderName]) -> Option<String> {
    names
        .iter()
        .flat_map(|n| headers.get_all(n))
        .find_map(placeholder_in)
}

fn placeholder_in(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?.trim();
    let token = match text.split_once(' ') {
        Some((_scheme, rest)) => rest.trim(),
        None => text,
    };
    let name = token.strip_prefix("clavis:")?;
    (!name.is_empty()).then(|| name.to_owned())
}

/// The path without its query, for logs and audit (query values may be secret).
pub fn path_only(uri: &http::Uri) -> &str {
    uri.path()
}

#[cfg(test)]
mod tests {
    use super::*;

    mod split_host_port {
        use super::*;

        #[test]
        fn normalizes() {
            assert_eq!(
                split_host_port("API.OpenAI.com.:443"),
                Some(("api.openai.com".into(), Some(443)))
            );
            assert_eq!(
                split_host_port("api.openai.com"),
                Some(("api.openai.com".into(), None))
            );
            assert_eq!(
                split_host_port("[::1]:8080"),
                Some(("[::1]".into(), Some(8080)))
            );
        }

        #[test]
        fn refuses_tricks() {
            for bad in [
                "api.openai.com@evil.test:443",
                "api.openai.com%00.evil:443",
                "evil.test#api.openai.com",
                "a b:443",
                ":443",
                "host:",
                "host:99999",
                "host:0",
                "host:+1",
                "[::1",
                "[zz]:1",
                "..:1",
                "a..b",
            ] {
                assert_eq!(split_host_port(bad), None, "{bad}");
            }
        }
    }

    mod authority_matches {
        use super::*;

        #[test]
        fn default_port_is_optional() {
            assert!(authority_matches("api.openai.com", 443, "api.openai.com"));
            assert!(authority_matches(
                "api.openai.com",
                443,
                "API.OPENAI.COM:443"
            ));
            assert!(!authority_matches(
                "api.openai.com",
                443,
                "api.openai.com:8443"
            ));
            assert!(!authority_matches("api.openai.com", 443, "evil.test"));
            assert!(!authority_matches(
                "api.openai.com",
                443,
                "api.openai.com.evil.test"
            ));
        }
    }

    mod strip {
        use super::*;

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
    }
}
