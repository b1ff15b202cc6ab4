//! Host names and addresses as clavis reads them: `host[:port]` parsing and
//! normalization (CONNECT targets, `Host`, SNI), the host patterns
//! connectors claim (exact, or wildcards over one or more labels, never a
//! public suffix),
//! and CIDR blocks (`proxy.allow_private`).

use std::net::{IpAddr, Ipv4Addr};

/// Splits and normalizes `host[:port]`: lowercase, one trailing dot removed,
/// IPv6 kept in brackets. Refuses userinfo, percent-escapes, whitespace and
/// anything but letters, digits, `-` and `.` in names.
pub(crate) fn split_host_port(text: &str) -> Option<(String, Option<u16>)> {
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
            // A second trailing dot (`api.openai.com..`) is an empty label:
            // kept, the name would normalize to `api.openai.com.`, which no
            // connector's pattern matches and which normalizes again to
            // another name.
            && !host.ends_with('.')
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
pub(crate) fn authority_matches(host: &str, port: u16, value: &str) -> bool {
    // Fast path for the common exact form; `host` is already normalized.
    if port == 443 && value.len() == host.len() && value.eq_ignore_ascii_case(host) {
        return true;
    }
    match split_host_port(value) {
        Some((h, p)) => h == host && p.unwrap_or(443) == port,
        None => false,
    }
}

/// A host a connector claims: exact, or `*.` plus a suffix matching one or
/// more extra labels (never the apex; threat model T2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostPattern {
    Exact(String),
    /// The suffix after `*`, starting with a dot: `.svc.example`.
    Wildcard(String),
}

/// Why a connector's host is not one it may claim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HostError {
    #[error("{0:?} is not a host name (letters, digits, '-' and '.' only; a wildcard is one leading \"*.\")")]
    NotAName(String),
    #[error("{0:?}: a wildcard needs at least two labels after \"*.\" so it cannot cover a whole top-level domain")]
    WildcardTooWide(String),
    #[error("{text:?}: {suffix:?} is a public suffix (Public Suffix List), so anyone can register a name under it and receive the credential")]
    PublicSuffix { text: String, suffix: String },
}

impl HostPattern {
    pub(crate) fn parse(text: &str) -> Result<HostPattern, HostError> {
        let lower = text.trim_end_matches('.').to_ascii_lowercase();
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let labels: Vec<&str> = name.split('.').collect();
        let label_ok = |l: &&str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if name.is_empty() || !labels.iter().all(label_ok) {
            return Err(HostError::NotAName(text.to_owned()));
        }
        if wild {
            if labels.len() < 2 {
                return Err(HostError::WildcardTooWide(text.to_owned()));
            }
            // The PSL's default rule makes any unknown TLD a suffix of one
            // label; only listed suffixes (ICANN or private) are refused here.
            if psl::suffix(name.as_bytes())
                .is_some_and(|s| s.is_known() && s.as_bytes() == name.as_bytes())
            {
                return Err(HostError::PublicSuffix {
                    text: text.to_owned(),
                    suffix: name.to_owned(),
                });
            }
            Ok(HostPattern::Wildcard(format!(".{name}")))
        } else {
            Ok(HostPattern::Exact(name.to_owned()))
        }
    }

    pub(crate) fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|labels| !labels.is_empty() && !labels.ends_with('.')),
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*{s}"),
        }
    }
}

/// A CIDR block, `10.0.0.0/8` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub(crate) fn parse(text: &str) -> Option<IpNet> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let a = text.parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(IpNet { addr, prefix })
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        fn bits_match(a: &[u8], b: &[u8], prefix: u8) -> bool {
            let full = (prefix / 8) as usize;
            let rest = prefix % 8;
            if a[..full] != b[..full] {
                return false;
            }
            rest == 0 || (a[full] ^ b[full]) >> (8 - rest) == 0
        }
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(ip)) => bits_match(&n.octets(), &ip.octets(), self.prefix),
            (IpAddr::V6(n), IpAddr::V6(ip)) => bits_match(&n.octets(), &ip.octets(), self.prefix),
            _ => false,
        }
    }
}

/// IPv4-mapped and NAT64 IPv6 addresses as the IPv4 address they carry.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            let o = v6.octets();
            // NAT64 (64:ff9b::/96): the IPv4 address in the last 32 bits.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            // 6to4 (2002::/16): the IPv4 address right after the prefix.
            if s[0] == 0x2002 {
                return IpAddr::V4(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
            }
            IpAddr::V6(v6)
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod split_host_port {
        use super::*;

        /// Found by the `host` fuzz target: `10.00.0..` normalized to
        /// `10.00.0.`, which normalized again to `10.00.0`.
        #[test]
        fn refuses_a_second_trailing_dot() {
            assert_eq!(split_host_port("10.00.0.."), None);
            assert_eq!(split_host_port("api.openai.com..:443"), None);
            assert_eq!(
                split_host_port("api.openai.com.:443"),
                Some(("api.openai.com".into(), Some(443)))
            );
        }

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

    mod host_pattern {
        use super::*;

        #[test]
        fn exact_is_case_and_dot_normalized() {
            let p = HostPattern::parse("API.Example.com.").unwrap();
            assert!(p.matches("api.example.com"));
            assert!(!p.matches("api.example.com.evil.net"));
            assert!(!p.matches("evilapi.example.com"));
        }

        #[test]
        fn wildcard_matches_one_or_more_labels_never_apex() {
            let p = HostPattern::parse("*.svc.example").unwrap();
            assert!(p.matches("a.svc.example"));
            assert!(p.matches("a.b.svc.example"));
            assert!(!p.matches("svc.example"));
            assert!(!p.matches("asvc.example"));
            assert!(!p.matches(".svc.example"));
        }

        #[test]
        fn wildcards_over_public_suffixes_are_refused() {
            for bad in [
                "*.github.io",
                "*.ngrok.io",
                "*.workers.dev",
                "*.s3.amazonaws.com",
                "*.co.uk",
                "*.herokuapp.com",
            ] {
                let e = HostPattern::parse(bad).unwrap_err().to_string();
                assert!(e.contains("public suffix"), "{bad}: {e:?}");
            }
            // A registrable name's subdomains are its owner's.
            for ok in [
                "*.mine.github.io",
                "*.api.example.co.uk",
                "*.svc.cluster.local",
            ] {
                assert!(HostPattern::parse(ok).is_ok(), "{ok}");
            }
            // An exact public-suffix host is one fixed name, not a wildcard.
            assert!(HostPattern::parse("github.io").is_ok());
        }

        #[test]
        fn rejects_suffix_tricks_and_bad_names() {
            for bad in [
                "*.com",
                "a b",
                "api.example.com@evil",
                "",
                "*.",
                "x..y",
                "ex%41mple.com",
            ] {
                assert!(HostPattern::parse(bad).is_err(), "{bad}");
            }
        }
    }

    mod ip_net {
        use super::*;

        #[test]
        fn contains_by_prefix() {
            let n = IpNet::parse("10.0.0.0/8").unwrap();
            assert!(n.contains("10.200.0.1".parse().unwrap()));
            assert!(!n.contains("11.0.0.1".parse().unwrap()));
            assert!(IpNet::parse("127.0.0.1")
                .unwrap()
                .contains("::ffff:127.0.0.1".parse().unwrap()));
            assert!(IpNet::parse("10.0.0.0/33").is_none());
            assert!(IpNet::parse("nope").is_none());
        }
    }
}
