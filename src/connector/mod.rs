//! Connectors: which hosts an upstream API lives on, which auth headers its
//! SDKs send (stripped), and how the real credential is added ([`Inject`]).
//! The [`Registry`] maps a normalized CONNECT host to its connector in O(1).

mod builtin;
pub(crate) mod git;
mod github_app;
pub(crate) mod inject;
pub(crate) mod meter;
mod oauth2;
pub(crate) mod sign;
pub(crate) mod template;
pub(crate) mod token;
pub(crate) mod user;
pub(crate) mod variables;

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method};

pub(crate) use inject::{Inject, InjectError, Plan};
pub(crate) use template::Template;
pub(crate) use token::{FetchError, TokenSource};

use crate::credentials::Credentials;
use crate::host::HostPattern;

/// A credential field and the prefixes a valid value starts with (empty: any
/// non-empty value).
#[derive(Debug, Clone)]
pub(crate) struct FieldSpec {
    pub(crate) name: String,
    pub(crate) prefixes: Vec<&'static str>,
}

impl FieldSpec {
    pub(crate) fn any(name: &str) -> FieldSpec {
        FieldSpec {
            name: name.to_owned(),
            prefixes: Vec::new(),
        }
    }

    pub(crate) fn prefixed(name: &str, prefixes: &[&'static str]) -> FieldSpec {
        FieldSpec {
            name: name.to_owned(),
            prefixes: prefixes.to_vec(),
        }
    }
}

/// A cheap authenticated call that proves a credential works.
#[derive(Debug, Clone)]
pub(crate) struct LiveCheck {
    pub(crate) method: Method,
    pub(crate) path: &'static str,
}

#[derive(Debug)]
pub(crate) struct Connector {
    pub(crate) name: String,
    pub(crate) hosts: Vec<HostPattern>,
    /// The only port on which clavis intercepts and injects.
    pub(crate) port: u16,
    /// Auth headers removed from every request, whatever their case or `_`/`-` spelling.
    pub(crate) strip: Vec<HeaderName>,
    pub(crate) inject: Inject,
    /// Headers set when the agent did not send them (`anthropic-version`).
    pub(crate) defaults: Vec<(HeaderName, HeaderValue)>,
    /// Accepted credential shapes: the credentials must fill one set completely.
    pub(crate) field_sets: Vec<Vec<FieldSpec>>,
    pub(crate) live_check: Option<LiveCheck>,
    /// What budgets can count on this connector's API (SPEC §11).
    pub(crate) meter: meter::Meter,
}

impl Connector {
    /// Checks credentials against the connector's field sets; the error names
    /// the missing or malformed field (never its value). With several
    /// schemes, the one the given fields point to is checked (Kalshi's
    /// `email` alone asks for `password`); with none pointed to, every
    /// scheme is named.
    pub(crate) fn validate(&self, creds: &Credentials) -> Result<(), CredentialError> {
        if let Some(name) = creds
            .names()
            .find(|n| creds.get(n).is_some_and(has_stray_control))
        {
            return Err(CredentialError::ControlChar(name.to_owned()));
        }
        let overlap =
            |set: &[FieldSpec]| set.iter().filter(|f| creds.get(&f.name).is_some()).count();
        let mut best: Option<(usize, CredentialError)> = None;
        for set in &self.field_sets {
            match check_set(set, creds) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let n = overlap(set);
                    if best.as_ref().is_none_or(|(m, _)| n > *m) {
                        best = Some((n, e));
                    }
                }
            }
        }
        match best {
            Some((0, _)) if self.field_sets.len() > 1 => {
                let schemes: Vec<String> = self
                    .field_sets
                    .iter()
                    .map(|set| {
                        set.iter()
                            .map(|f| f.name.as_str())
                            .collect::<Vec<_>>()
                            .join(" + ")
                    })
                    .collect();
                Err(CredentialError::NoScheme(schemes.join(", or ")))
            }
            Some((_, e)) => Err(e),
            None => Err(CredentialError::NoneAccepted),
        }
    }

    /// Whether a request to `host` (one of this connector's) at `path`
    /// gets the credential, or goes out with nothing injected (the web
    /// pages of a git host, SPEC §13.4).
    pub(crate) fn injects(&self, host: &str, path: &str) -> bool {
        self.inject.injects(host, path)
    }

    /// Whether a caller with no service for this connector still reaches
    /// `host` with nothing injected (public repositories on a git host).
    pub(crate) fn public_on(&self, host: &str) -> bool {
        self.inject.public_on(host)
    }

    /// Whether `path` is reserved to clavis on this connector's hosts.
    pub(crate) fn reserves(&self, path: &str) -> bool {
        self.inject.reserves(path)
    }

    /// The host a request goes to when the caller names only the service
    /// (`/v1/proxy`, MCP): the first exact host.
    pub(crate) fn primary_host(&self) -> Option<&str> {
        self.hosts.iter().find_map(|h| match h {
            HostPattern::Exact(h) => Some(h.as_str()),
            HostPattern::Wildcard(_) => None,
        })
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

fn check_set(set: &[FieldSpec], creds: &Credentials) -> Result<(), CredentialError> {
    for field in set {
        let value = creds
            .get(&field.name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| CredentialError::Missing(field.name.clone()))?;
        if !field.prefixes.is_empty() && !field.prefixes.iter().any(|p| value.starts_with(p)) {
            return Err(CredentialError::Prefix {
                field: field.name.clone(),
                prefixes: field
                    .prefixes
                    .iter()
                    .map(|p| format!("{p:?}"))
                    .collect::<Vec<_>>()
                    .join(" or "),
            });
        }
    }
    Ok(())
}

/// Credentials that do not fit a connector: names fields, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CredentialError {
    #[error(
        "credential field {0:?} contains a control character (line breaks only inside a PEM key)"
    )]
    ControlChar(String),
    #[error("missing credential field {0:?}")]
    Missing(String),
    #[error("credential field {field:?} must start with {prefixes}")]
    Prefix { field: String, prefixes: String },
    #[error("credentials need {0}")]
    NoScheme(String),
    #[error("connector accepts no credentials")]
    NoneAccepted,
}

/// A user-defined connector that cannot be built: the key within its spec
/// (`hosts[1]`, `sign.secret`) and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub(crate) struct SpecError {
    pub(crate) key: String,
    pub(crate) message: String,
}

impl SpecError {
    pub(crate) fn at(key: impl Into<String>, message: impl std::fmt::Display) -> SpecError {
        SpecError {
            key: key.into(),
            message: message.to_string(),
        }
    }
}

/// A name or host claimed twice; `user_index` is the position among the
/// user-defined connectors given to [`Registry::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClaimError {
    pub(crate) user_index: Option<usize>,
    pub(crate) key: String,
    pub(crate) message: String,
}

/// Every connector, built-in and user-defined, indexed by host.
///
/// Connectors of one *family* (`github` and `github-app`) claim the same
/// hosts: a host picks the family (its lead connector answers the
/// CONNECT), and the service a request uses picks the connector within it.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    by_name: HashMap<String, Arc<Connector>>,
    exact: HashMap<String, Arc<Connector>>,
    /// Keyed by the suffix without its leading dot: `svc.example`.
    wildcard: HashMap<String, Arc<Connector>>,
    /// The lead of each family → its members, the lead first.
    families: HashMap<String, Vec<Arc<Connector>>>,
    /// Token endpoints of token sources (an OAuth token URL): host →
    /// paths. Reserved to clavis (SPEC §13.1).
    token_endpoints: HashMap<String, Vec<String>>,
}

impl Registry {
    /// The built-in connectors alone.
    pub(crate) fn builtin() -> Registry {
        let mut registry = Registry::default();
        for connector in builtin::all() {
            // Built-in names and hosts are distinct by construction (a test
            // proves it), so nothing is refused here.
            let _ = registry.add(connector);
        }
        registry
    }

    /// The built-in connectors plus `user`; a host claimed twice or a reused
    /// name is an error naming both.
    pub(crate) fn new(user: Vec<Connector>) -> Result<Registry, ClaimError> {
        let mut registry = Registry::default();
        for connector in builtin::all() {
            registry.add(connector).map_err(|e| ClaimError {
                user_index: None,
                key: e.key,
                message: e.message,
            })?;
        }
        for (i, connector) in user.into_iter().enumerate() {
            registry.add(connector).map_err(|e| ClaimError {
                user_index: Some(i),
                key: e.key,
                message: e.message,
            })?;
        }
        Ok(registry)
    }

    fn add(&mut self, connector: Connector) -> Result<(), SpecError> {
        let connector = Arc::new(connector);
        let lead = family_lead(&connector.name);
        if self.by_name.contains_key(&connector.name) {
            return Err(SpecError::at(
                "name",
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
                if family_lead(&other.name) == lead && other.port == connector.port {
                    // Shared within a family: the lead keeps the host.
                    if connector.name == lead {
                        map.insert(key, connector.clone());
                    }
                    continue;
                }
                return Err(SpecError::at(
                    format!("hosts[{j}]"),
                    format!(
                        "host {host} is claimed by both {:?} and {:?}",
                        other.name, connector.name
                    ),
                ));
            }
            map.insert(key, connector.clone());
        }
        if let Inject::Token(source) = &connector.inject {
            if let Some((host, path)) = source.endpoint() {
                self.token_endpoints
                    .entry(host.to_owned())
                    .or_default()
                    .push(path.to_owned());
            }
        }
        let members = self.families.entry(lead.to_owned()).or_default();
        if connector.name == lead {
            members.insert(0, connector.clone());
        } else {
            members.push(connector.clone());
        }
        self.by_name.insert(connector.name.clone(), connector);
        Ok(())
    }

    /// The connectors that share `name`'s hosts, `name`'s included (just
    /// it, for a connector outside a family).
    pub(crate) fn family(&self, name: &str) -> &[Arc<Connector>] {
        self.families
            .get(family_lead(name))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Whether two connectors claim their hosts together (or are one).
    pub(crate) fn same_family(&self, a: &str, b: &str) -> bool {
        family_lead(a) == family_lead(b)
    }

    /// Whether `host` serves a token source's token endpoint: agents may
    /// not tunnel to it.
    pub(crate) fn serves_tokens(&self, host: &str) -> bool {
        self.token_endpoints.contains_key(host)
    }

    /// Whether `path` on `host` is a token source's token endpoint.
    pub(crate) fn is_token_endpoint(&self, host: &str, path: &str) -> bool {
        self.token_endpoints
            .get(host)
            .is_some_and(|paths| paths.iter().any(|p| token::matches_path(path, p)))
    }

    /// The connector claiming a normalized (lowercase, no trailing dot)
    /// host: an exact claim first, then the most specific wildcard. A
    /// wildcard covers one or more labels in front of its suffix
    /// (`*.svc.example` claims `a.svc.example` and `a.b.svc.example`,
    /// never `svc.example`), so the walk goes from the nearest parent up.
    pub(crate) fn lookup(&self, host: &str) -> Option<&Arc<Connector>> {
        if let Some(c) = self.exact.get(host) {
            return Some(c);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        let mut rest = host;
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(c) = self.wildcard.get(parent) {
                return Some(c);
            }
            rest = parent;
        }
        None
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Arc<Connector>> {
        self.by_name.get(name)
    }

    pub(crate) fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// The connector whose hosts `name` shares (itself, outside a family).
fn family_lead(name: &str) -> &str {
    builtin::FAMILIES
        .iter()
        .find(|(member, _)| *member == name)
        .map_or(name, |(_, lead)| lead)
}

#[cfg(test)]
mod tests {
    use super::*;

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

        #[test]
        fn a_wildcard_claims_one_or_more_labels_the_most_specific_first() {
            let user = |name: &str, hosts: &[&str]| {
                let mut c = builtin::all().remove(0);
                c.name = name.into();
                c.hosts = hosts
                    .iter()
                    .map(|h| HostPattern::parse(h).unwrap())
                    .collect();
                c
            };
            let r = Registry::new(vec![
                user("outer", &["*.svc.example"]),
                user("inner", &["*.b.svc.example", "x.svc.example"]),
            ])
            .unwrap();
            let name = |h: &str| r.lookup(h).map(|c| c.name.clone());
            assert_eq!(name("a.svc.example").as_deref(), Some("outer"));
            assert_eq!(name("a.c.svc.example").as_deref(), Some("outer"));
            assert_eq!(
                name("x.svc.example").as_deref(),
                Some("inner"),
                "exact first"
            );
            assert_eq!(name("a.b.svc.example").as_deref(), Some("inner"));
            assert_eq!(name("a.z.b.svc.example").as_deref(), Some("inner"));
            assert_eq!(name("b.svc.example").as_deref(), Some("outer"));
            assert_eq!(name("svc.example"), None, "never the apex");
            assert_eq!(name("asvc.example"), None);
            assert_eq!(name("a.svc.example.evil.net"), None);
        }

        #[test]
        fn a_family_shares_hosts_and_its_lead_answers_for_them() {
            let r = Registry::new(Vec::new()).unwrap();
            assert_eq!(r.lookup("api.github.com").unwrap().name, "github");
            let names: Vec<&str> = r
                .family("github-app")
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            assert_eq!(names, ["github", "github-app"]);
            assert_eq!(r.family("github").len(), 2);
            assert!(r.same_family("github", "github-app"));
            assert!(!r.same_family("github", "openai"));
            assert_eq!(r.family("openai").len(), 1);
            // A family strips the same headers, so a placeholder found by
            // the lead's list is one the member strips too.
            let family = r.family("github");
            assert_eq!(family[0].strip, family[1].strip);
        }

        #[test]
        fn builtin_names_and_hosts_are_distinct() {
            let checked = Registry::new(Vec::new()).expect("no built-in clash");
            assert_eq!(Registry::builtin().names(), checked.names());
        }
    }
}
