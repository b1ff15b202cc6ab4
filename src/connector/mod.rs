//! Connectors: which hosts an upstream API lives on, which auth headers its
//! SDKs send (stripped), and how the real credential is added ([`Inject`]).
//! The [`Registry`] maps a normalized CONNECT host to its connector in O(1).

mod builtin;
pub mod inject;
pub mod session;
pub mod sign;
pub mod template;
pub mod user;

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method};

pub use inject::Inject;
pub use template::Template;

use crate::store::Credentials;

/// A host a connector claims: exact, or `*.` plus a suffix matching exactly one
/// extra label (never the apex), as TLS wildcards do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// The suffix after `*`, starting with a dot: `.svc.example`.
    Wildcard(String),
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<HostPattern, String> {
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
            return Err(format!(
                "{text:?} is not a host name (letters, digits, '-' and '.' only; a wildcard is one leading \"*.\")"
            ));
        }
        if wild {
            if labels.len() < 2 {
                return Err(format!(
                    "{text:?}: a wildcard needs at least two labels after \"*.\" so it cannot cover a whole top-level domain"
                ));
            }
            // The PSL's default rule makes any unknown TLD a suffix of one
            // label; only listed suffixes (ICANN or private) are refused here.
            if psl::suffix(name.as_bytes())
                .is_some_and(|s| s.is_known() && s.as_bytes() == name.as_bytes())
            {
                return Err(format!(
                    "{text:?}: {name:?} is a public suffix (Public Suffix List), so anyone can register a name under it and receive the credential"
                ));
            }
            Ok(HostPattern::Wildcard(format!(".{name}")))
        } else {
            Ok(HostPattern::Exact(name.to_owned()))
        }
    }

    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
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

/// A credential field and the prefixes a valid value starts with (empty: any
/// non-empty value).
#[derive(Debug, Clone)]
pub struct FieldSpec {
    pub name: String,
    pub prefixes: Vec<&'static str>,
}

impl FieldSpec {
    pub fn any(name: &str) -> FieldSpec {
        FieldSpec {
            name: name.to_owned(),
            prefixes: Vec::new(),
        }
    }

    pub fn prefixed(name: &str, prefixes: &[&'static str]) -> FieldSpec {
        FieldSpec {
            name: name.to_owned(),
            prefixes: prefixes.to_vec(),
        }
    }
}

/// A cheap authenticated call that proves a credential works.
#[derive(Debug, Clone)]
pub struct LiveCheck {
    pub method: Method,
    pub path: &'static str,
}

#[derive(Debug)]
pub struct Connector {
    pub name: String,
    pub hosts: Vec<HostPattern>,
    /// The only port on which clavis intercepts and injects.
    pub port: u16,
    /// Auth headers removed from every request, whatever their case or `_`/`-` spelling.
    pub strip: Vec<HeaderName>,
    pub inject: Inject,
    /// Headers set when the agent did not send them (`anthropic-version`).
    pub defaults: Vec<(HeaderName, HeaderValue)>,
    /// Accepted credential shapes: the credentials must fill one set completely.
    pub field_sets: Vec<Vec<FieldSpec>>,
    pub live_check: Option<LiveCheck>,
}

impl Connector {
    /// Checks credentials against the connector's field sets; the error names
    /// the missing or malformed field (never its value).
    pub fn validate(&self, creds: &Credentials) -> Result<(), String> {
        for name in creds.names() {
            if creds.get(name).is_some_and(has_stray_control) {
                return Err(format!(
                    "credential field {name:?} contains a control character (line breaks only inside a PEM key)"
                ));
            }
        }
        let mut first_error = None;
        for set in &self.field_sets {
            match check_set(set, creds) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| "connector accepts no credentials".into()))
    }

    /// The host a request goes to when the caller names only the service
    /// (`/v1/proxy`, MCP): the first exact host.
    pub fn primary_host(&self) -> Option<&str> {
        self.hosts.iter().find_map(|h| match h {
            HostPattern::Exact(h) => Some(h.as_str()),
            HostPattern::Wildcard(_) => None,
        })
    }

    pub fn all_fields(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .field_sets
            .iter()
            .flatten()
            .map(|f| f.name.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// A control character that cannot be part of a credential: anything but
/// tab, and line breaks outside a PEM block (which a header could never carry).
fn has_stray_control(value: &str) -> bool {
    let pem = value.contains("-----BEGIN ");
    value
        .chars()
        .any(|c| c.is_control() && c != '\t' && !(pem && matches!(c, '\r' | '\n')))
}

fn check_set(set: &[FieldSpec], creds: &Credentials) -> Result<(), String> {
    for field in set {
        let value = creds
            .get(&field.name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("missing credential field {:?}", field.name))?;
        if !field.prefixes.is_empty() && !field.prefixes.iter().any(|p| value.starts_with(p)) {
            return Err(format!(
                "credential field {:?} must start with {}",
                field.name,
                field
                    .prefixes
                    .iter()
                    .map(|p| format!("{p:?}"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ));
        }
    }
    Ok(())
}

/// A name or host claimed twice; `user_index` is the position among the
/// user-defined connectors given to [`Registry::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimError {
    pub user_index: Option<usize>,
    pub key: String,
    pub message: String,
}

/// Every connector, built-in and user-defined, indexed by host.
#[derive(Debug, Default)]
pub struct Registry {
    by_name: HashMap<String, Arc<Connector>>,
    exact: HashMap<String, Arc<Connector>>,
    /// Keyed by the suffix without its leading dot: `svc.example`.
    wildcard: HashMap<String, Arc<Connector>>,
}

impl Registry {
    /// The built-in connectors plus `user`; a host claimed twice or a reused
    /// name is an error naming both.
    pub fn new(user: Vec<Connector>) -> Result<Registry, ClaimError> {
        let mut registry = Registry::default();
        for connector in builtin::all() {
            registry
                .add(connector)
                .map_err(|(key, message)| ClaimError {
                    user_index: None,
                    key,
                    message,
                })?;
        }
        for (i, connector) in user.into_iter().enumerate() {
            registry
                .add(connector)
                .map_err(|(key, message)| ClaimError {
                    user_index: Some(i),
                    key,
                    message,
                })?;
        }
        Ok(registry)
    }

    /// Errors are `(key within the connector, message)`.
    fn add(&mut self, connector: Connector) -> Result<(), (String, String)> {
        let connector = Arc::new(connector);
        if self.by_name.contains_key(&connector.name) {
            return Err((
                "name".into(),
                format!(
                    "connector name {:?} is already taken (built-in names cannot be redefined)",
                    connector.name
                ),
            ));
        }
        for (j, host) in connector.hosts.iter().enumerate() {
            let (map, key) = match host {
                HostPattern::Exact(h) => (&mut self.exact, h.clone()),
                HostPattern::Wildcard(s) => (&mut self.wildcard, s[1..].to_owned()),
            };
            if let Some(other) = map.get(&key) {
                return Err((
                    format!("hosts[{j}]"),
                    format!(
                        "host {host} is claimed by both {:?} and {:?}",
                        other.name, connector.name
                    ),
                ));
            }
            map.insert(key, connector.clone());
        }
        self.by_name.insert(connector.name.clone(), connector);
        Ok(())
    }

    /// The connector claiming a normalized (lowercase, no trailing dot) host.
    pub fn lookup(&self, host: &str) -> Option<&Arc<Connector>> {
        if let Some(c) = self.exact.get(host) {
            return Some(c);
        }
        let (_, parent) = host.split_once('.')?;
        self.wildcard.get(parent)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Connector>> {
        self.by_name.get(name)
    }

    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        fn wildcard_matches_one_label_never_apex() {
            let p = HostPattern::parse("*.svc.example").unwrap();
            assert!(p.matches("a.svc.example"));
            assert!(!p.matches("svc.example"));
            assert!(!p.matches("a.b.svc.example"));
            assert!(!p.matches("asvc.example"));
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
                let e = HostPattern::parse(bad).err().unwrap_or_default();
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

    mod registry {
        use super::*;

        #[test]
        fn finds_builtins_by_host() {
            let r = Registry::new(Vec::new()).unwrap();
            assert_eq!(r.lookup("api.openai.com").unwrap().name, "openai");
            assert_eq!(r.lookup("uploads.github.com").unwrap().name, "github");
            assert!(r.lookup("api.openai.com.evil.net").is_none());
            assert!(r.lookup("example.com").is_none());
        }
    }
}
