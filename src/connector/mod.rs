//! Connectors: which hosts an upstream API lives on, which auth headers its
//! SDKs send (stripped), and how the real credential is added ([`Inject`]).
//! The [`Registry`] maps a normalized CONNECT host to its connector in O(1).

mod builtin;
pub mod inject;
pub mod sign;
pub mod template;
pub mod token;
pub mod user;

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method};

pub use inject::{Inject, InjectError, Plan};
pub use template::Template;
pub use token::{FetchError, TokenSource};

use crate::credentials::Credentials;
use crate::host::HostPattern;

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

    /// Whether `path` is reserved to clavis on this connector's hosts.
    pub fn reserves(&self, path: &str) -> bool {
        self.inject.reserves(path)
    }

    /// The host a request goes to when the caller names only the service
    /// (`/v1/proxy`, MCP): the first exact host.
    pub fn primary_host(&self) -> Option<&str> {
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
    /// The built-in connectors alone.
    pub fn builtin() -> Registry {
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
        fn builtin_names_and_hosts_are_distinct() {
            let checked = Registry::new(Vec::new()).expect("no built-in clash");
            assert_eq!(Registry::builtin().names(), checked.names());
        }
    }
}
