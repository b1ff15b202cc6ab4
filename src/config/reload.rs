//! What a reload needs from the config (SPEC §13.2): `reload:` (how often
//! the files are polled, whether they are watched), the files the config
//! read through `${file:…}` (watched and hashed beside the config file),
//! and a digest of every setting that only a restart can apply, so a reload
//! that changes one is refused with that setting's name.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ConfigError, Interp, RawConfig};

/// `reload:` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawReload {
    /// `5s` (default); `0` or `off` turns polling off.
    pub(crate) poll: String,
    /// Watch the directories with inotify; `false` where events are not
    /// delivered (some network and FUSE mounts): polling alone then.
    pub(crate) watch: bool,
}

impl Default for RawReload {
    fn default() -> Self {
        RawReload {
            poll: "5s".into(),
            watch: true,
        }
    }
}

/// `reload:`, checked.
#[derive(Debug, Clone)]
pub(crate) struct ReloadConfig {
    /// `None`: no polling.
    pub(crate) poll: Option<Duration>,
    pub(crate) watch: bool,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            poll: Some(Duration::from_secs(5)),
            watch: true,
        }
    }
}

/// The shortest poll period: hashing the files more often than this
/// would only burn CPU.
const MIN_POLL: Duration = Duration::from_millis(100);

pub(super) fn check(raw: &RawReload) -> Result<ReloadConfig, ConfigError> {
    let poll = match raw.poll.trim() {
        "0" | "off" | "false" => None,
        text => {
            let d = humantime::parse_duration(text).map_err(|_| {
                ConfigError::at(
                    "reload.poll",
                    format!("{text:?} is not a duration like 5s, or 0/off"),
                )
            })?;
            if d < MIN_POLL {
                return Err(ConfigError::at(
                    "reload.poll",
                    "must be at least 100ms (or 0/off to disable polling)",
                ));
            }
            Some(d)
        }
    };
    Ok(ReloadConfig {
        poll,
        watch: raw.watch,
    })
}

/// Where the config came from besides its own text: the `${file:}` paths
/// it names and the restart-only settings' digests.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sources {
    pub(crate) files: Vec<PathBuf>,
    restart_only: Vec<(String, [u8; 32])>,
    /// `(section, name, digest)` of every connector, policy and budget as
    /// written: what a reload's summary compares.
    items: Vec<(&'static str, String, [u8; 32])>,
}

/// What a reload did to one kind of thing, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Changes {
    pub(crate) added: Vec<String>,
    pub(crate) changed: Vec<String>,
    pub(crate) removed: Vec<String>,
}

impl Changes {
    /// From `(name, digest)` lists before and after.
    pub(crate) fn between<'a>(
        old: impl Iterator<Item = (&'a str, [u8; 32])> + Clone,
        new: impl Iterator<Item = (&'a str, [u8; 32])> + Clone,
    ) -> Changes {
        let mut out = Changes::default();
        for (name, digest) in new.clone() {
            match old.clone().find(|(n, _)| *n == name) {
                None => out.added.push(name.to_owned()),
                Some((_, d)) if d != digest => out.changed.push(name.to_owned()),
                Some(_) => {}
            }
        }
        for (name, _) in old {
            if !new.clone().any(|(n, _)| n == name) {
                out.removed.push(name.to_owned());
            }
        }
        out
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// The sections (and keys, one level down) a running clavis cannot
/// change: sockets, the CA, the store and its key, the audit file, the
/// upstream client, the budget store, approvals, and `reload:` itself.
const RESTART_ONLY: &[&str] = &[
    "proxy",
    "admin",
    "audit",
    "limits",
    "ca",
    "store",
    "upstream",
    "budget_store",
    "approvals",
    "reload",
];

impl Sources {
    pub(super) fn of(raw: &RawConfig) -> Sources {
        let mut files = Vec::new();
        if let Ok(tree) = serde_yaml::to_value(raw) {
            collect_files(&tree, &mut files);
        }
        files.sort();
        files.dedup();
        let mut restart_only = Vec::new();
        if let Ok(serde_yaml::Value::Mapping(map)) = serde_yaml::to_value(raw) {
            for section in RESTART_ONLY {
                let value = map.get(*section).cloned().unwrap_or_default();
                match value {
                    serde_yaml::Value::Mapping(keys) => {
                        for (k, v) in keys {
                            let key = k.as_str().unwrap_or("?");
                            restart_only.push((format!("{section}.{key}"), digest(&v)));
                        }
                    }
                    other => restart_only.push(((*section).to_owned(), digest(&other))),
                }
            }
        }
        let mut items = Vec::new();
        let named = |section: &'static str, list: Vec<serde_yaml::Value>, items: &mut Vec<_>| {
            for v in list {
                let name = v
                    .get("name")
                    .and_then(|n| n.as_str())
                    .unwrap_or("")
                    .to_owned();
                items.push((section, name, digest(&v)));
            }
        };
        let values = |list: Result<serde_yaml::Value, _>| match list {
            Ok(serde_yaml::Value::Sequence(items)) => items,
            _ => Vec::new(),
        };
        named(
            "connectors",
            values(serde_yaml::to_value(&raw.connectors)),
            &mut items,
        );
        named(
            "policies",
            values(serde_yaml::to_value(&raw.policies)),
            &mut items,
        );
        named(
            "budgets",
            values(serde_yaml::to_value(&raw.budgets)),
            &mut items,
        );
        Sources {
            files,
            restart_only,
            items,
        }
    }

    /// The connectors, policies or budgets (`section`) added, changed and
    /// removed from `self` to `new`.
    pub(crate) fn changes(&self, new: &Sources, section: &str) -> Changes {
        Changes::between(self.items_of(section), new.items_of(section))
    }

    fn items_of<'s>(
        &'s self,
        section: &'s str,
    ) -> impl Iterator<Item = (&'s str, [u8; 32])> + Clone + 's {
        self.items
            .iter()
            .filter(move |(sec, _, _)| *sec == section)
            .map(|(_, name, d)| (name.as_str(), *d))
    }

    /// The first restart-only setting that differs between two configs
    /// (by key path: its value may be a secret and is never shown).
    pub(crate) fn restart_needed(&self, new: &Sources) -> Option<String> {
        let find = |list: &[(String, [u8; 32])], key: &str| {
            list.iter().find(|(k, _)| k == key).map(|(_, d)| *d)
        };
        self.restart_only
            .iter()
            .chain(&new.restart_only)
            .map(|(key, _)| key)
            .find(|key| find(&self.restart_only, key) != find(&new.restart_only, key))
            .cloned()
    }
}

/// The bytes a reload's fingerprint is taken over: the config file and
/// each `${file:}` path (through links, as a read sees them: a
/// Kubernetes `..data` swap changes them), each with its name; an
/// unreadable file counts as its error.
pub(crate) fn contents(config: &std::path::Path, files: &[PathBuf]) -> zeroize::Zeroizing<Vec<u8>> {
    let mut out = zeroize::Zeroizing::new(Vec::new());
    for path in std::iter::once(config).chain(files.iter().map(PathBuf::as_path)) {
        let bytes = zeroize::Zeroizing::new(
            std::fs::read(path)
                .unwrap_or_else(|e| format!("\0unreadable: {:?}", e.kind()).into_bytes()),
        );
        let name = path.as_os_str().as_encoded_bytes();
        for part in [name, bytes.as_slice()] {
            out.extend_from_slice(&(part.len() as u64).to_be_bytes());
            out.extend_from_slice(part);
        }
    }
    out
}

/// A value's digest (SHA-256 of its YAML): compared, never shown.
fn digest(value: &serde_yaml::Value) -> [u8; 32] {
    let text = serde_yaml::to_string(value).unwrap_or_default();
    Sha256::digest(text.as_bytes()).into()
}

fn collect_files(value: &serde_yaml::Value, out: &mut Vec<PathBuf>) {
    match value {
        serde_yaml::Value::String(s) => out.extend(Interp(s.clone()).files()),
        serde_yaml::Value::Sequence(items) => items.iter().for_each(|v| collect_files(v, out)),
        serde_yaml::Value::Mapping(map) => map.values().for_each(|v| collect_files(v, out)),
        serde_yaml::Value::Tagged(t) => collect_files(&t.value, out),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(yaml: &str) -> Sources {
        let raw: RawConfig = serde_yaml::from_str(yaml).unwrap();
        Sources::of(&raw)
    }

    #[test]
    fn file_references_are_found_anywhere() {
        let s = sources("services:\n  - { name: a, connector: openai, credentials: { api_key: \"${file:/run/k}\" } }\nadmin: { token: \"x${file:/run/admin}y\" }\n");
        assert_eq!(
            s.files,
            vec![PathBuf::from("/run/admin"), PathBuf::from("/run/k")]
        );
    }

    #[test]
    fn an_escaped_reference_is_no_file() {
        let s = sources("services:\n  - { name: a, connector: openai, credentials: { api_key: \"$${file:/x}\" } }\n");
        assert!(s.files.is_empty());
    }

    #[test]
    fn a_changed_listen_address_is_named() {
        let a = sources("proxy: { listen: \"127.0.0.1:1\" }\n");
        let b = sources("proxy: { listen: \"127.0.0.1:2\" }\n");
        assert_eq!(a.restart_needed(&b).as_deref(), Some("proxy.listen"));
        assert_eq!(a.restart_needed(&a), None);
    }

    #[test]
    fn services_agents_and_policies_need_no_restart() {
        let a = sources("services:\n  - { name: a, connector: openai }\n");
        let b = sources("agents:\n  - { name: x, token: t }\n");
        assert_eq!(a.restart_needed(&b), None);
    }

    #[test]
    fn a_limit_set_for_the_first_time_is_named() {
        let a = sources("");
        let b = sources("limits: { max_tunnels: 5 }\n");
        assert_eq!(a.restart_needed(&b).as_deref(), Some("limits.max_tunnels"));
    }

    #[test]
    fn poll_off_and_bounds() {
        let raw = |p: &str| RawReload {
            poll: p.into(),
            watch: true,
        };
        assert_eq!(check(&raw("off")).unwrap().poll, None);
        assert_eq!(check(&raw("0")).unwrap().poll, None);
        assert_eq!(
            check(&raw("2s")).unwrap().poll,
            Some(Duration::from_secs(2))
        );
        assert!(check(&raw("10ms")).is_err());
        assert!(check(&raw("soon")).is_err());
    }
}
