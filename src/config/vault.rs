//! `${vault:<mount>/<path>#<field>}` (SPEC §13.3): the `vault:` section, the
//! strict reference syntax, and the values read before the config is
//! validated. Reading them is the `vault` module's job; this one only says
//! what is referenced where and hands the values to [`super::Interp`].

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Env, HumanDuration, Interp, RawConfig};
use crate::secret::Secret;

/// `vault:` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVault {
    pub(crate) address: Interp,
    pub(crate) auth: RawVaultAuth,
    #[serde(default)]
    pub(crate) ca_file: Option<PathBuf>,
    #[serde(default = "five_minutes")]
    pub(crate) refresh: HumanDuration,
}

fn five_minutes() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

/// `vault.auth:` — exactly one of `token_file` and `kubernetes`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVaultAuth {
    #[serde(default)]
    pub(crate) token_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) kubernetes: Option<RawKubernetes>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKubernetes {
    pub(crate) role: String,
    #[serde(default = "service_account_token")]
    pub(crate) jwt_file: PathBuf,
    #[serde(default = "kubernetes")]
    pub(crate) mount: String,
}

fn service_account_token() -> PathBuf {
    "/var/run/secrets/kubernetes.io/serviceaccount/token".into()
}

fn kubernetes() -> String {
    "kubernetes".into()
}

/// `vault:`, checked.
#[derive(Debug, Clone)]
pub(crate) struct VaultConfig {
    /// `https://host[:port]` (`http://` on loopback only), no path.
    pub(crate) address: http::Uri,
    pub(crate) auth: VaultAuth,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) refresh: Duration,
}

#[derive(Debug, Clone)]
pub(crate) enum VaultAuth {
    /// A token read from this file at every login (a rotated file is seen).
    TokenFile(PathBuf),
    /// `POST /v1/auth/<mount>/login {role, jwt}` with the service account JWT.
    Kubernetes {
        role: String,
        jwt_file: PathBuf,
        mount: String,
    },
}

/// One `${vault:mount/path#field}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct VaultRef {
    pub(crate) mount: String,
    pub(crate) path: String,
    pub(crate) field: String,
}

impl std::fmt::Display for VaultRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "${{vault:{}/{}#{}}}", self.mount, self.path, self.field)
    }
}

impl VaultRef {
    /// Parses what follows `vault:` strictly: a mount, at least one path
    /// segment, a field; segments of letters, digits, `-`, `_`, `.`.
    pub(crate) fn parse(spec: &str) -> Result<VaultRef, String> {
        let shown = format!("${{vault:{spec}}}");
        let (location, field) = spec
            .split_once('#')
            .ok_or_else(|| format!("{shown}: no #field (write ${{vault:mount/path#field}})"))?;
        let (mount, path) = location.split_once('/').ok_or_else(|| {
            format!("{shown}: no path after the mount (write ${{vault:mount/path#field}})")
        })?;
        let word = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        if !word(mount) {
            return Err(format!(
                "{shown}: the mount {mount:?} is not a name (letters, digits, - _ .)"
            ));
        }
        if let Some(bad) = path.split('/').find(|s| !word(s)) {
            return Err(format!(
                "{shown}: the path segment {bad:?} is not a name (letters, digits, - _ .)"
            ));
        }
        if !word(field) {
            return Err(format!(
                "{shown}: the field {field:?} is not a name (letters, digits, - _ .)"
            ));
        }
        Ok(VaultRef {
            mount: mount.to_owned(),
            path: path.to_owned(),
            field: field.to_owned(),
        })
    }

    /// The secret it is a field of: read once for all its fields.
    pub(crate) fn secret(&self) -> (String, String) {
        (self.mount.clone(), self.path.clone())
    }
}

/// One KV v2 secret as read: its version and fields.
#[derive(Debug, Clone, Default)]
pub(crate) struct VaultDoc {
    pub(crate) version: u64,
    pub(crate) fields: BTreeMap<String, Secret<String>>,
}

/// Every secret read, by `(mount, path)`.
pub(crate) type VaultValues = HashMap<(String, String), VaultDoc>;

/// The process environment (or a test's map) plus the values read from
/// Vault: what the config is validated with when it references Vault.
pub(crate) struct WithVault<'a> {
    pub(crate) env: &'a dyn Env,
    pub(crate) values: &'a VaultValues,
}

impl Env for WithVault<'_> {
    fn var(&self, name: &str) -> Option<String> {
        self.env.var(name)
    }

    fn vault(&self, reference: &VaultRef) -> Option<Secret<String>> {
        self.values
            .get(&reference.secret())
            .and_then(|doc| doc.fields.get(&reference.field))
            .cloned()
    }
}

/// What the config reads from Vault: its `vault:` section and every
/// reference with the key path it is written at.
#[derive(Debug, Clone)]
pub(crate) struct VaultPlan {
    pub(crate) config: VaultConfig,
    pub(crate) refs: Vec<(String, VaultRef)>,
}

/// Every well-formed `${vault:…}` in the config, with its key path
/// (`services[0].credentials.api_key`). Malformed ones are reported where
/// the value is resolved, with the same path.
pub(crate) fn references(raw: &RawConfig) -> Vec<(String, VaultRef)> {
    let mut out = Vec::new();
    if let Ok(tree) = serde_yaml::to_value(raw) {
        walk(&tree, String::new(), &mut out);
    }
    out
}

fn walk(value: &serde_yaml::Value, path: String, out: &mut Vec<(String, VaultRef)>) {
    use serde_yaml::Value;
    match value {
        Value::String(s) => {
            for spec in vault_specs(s) {
                if let Ok(r) = VaultRef::parse(spec) {
                    out.push((path.clone(), r));
                }
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, format!("{path}[{i}]"), out);
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map {
                let key = k.as_str().map_or_else(|| format!("{k:?}"), str::to_owned);
                let next = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                walk(v, next, out);
            }
        }
        _ => {}
    }
}

/// The text after `vault:` of every `${vault:…}` in `s` (`$${` escapes).
fn vault_specs(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        let escaped = rest[..start].ends_with('$');
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        if !escaped {
            if let Some(spec) = after[..end].strip_prefix("vault:") {
                out.push(spec);
            }
        }
        rest = &after[end + 1..];
    }
    out
}

/// Checks `vault:` (given when references exist, else an error naming the
/// first one). `None` when the config uses no Vault at all.
pub(crate) fn plan(raw: &RawConfig, env: &dyn Env) -> Result<Option<VaultPlan>, Vec<ConfigError>> {
    let refs = references(raw);
    let Some(section) = &raw.vault else {
        return match refs.first() {
            None => Ok(None),
            Some((path, r)) => Err(vec![ConfigError::at(
                path.clone(),
                format!("{r} needs a vault: section (address, auth) to read it from"),
            )]),
        };
    };
    let mut errors = Vec::new();
    let address = match section.address.resolve_plain(env, "vault.address") {
        Ok(a) => address(&a).map_err(|m| ConfigError::at("vault.address", m)),
        Err(e) => Err(e),
    }
    .map_err(|e| errors.push(e))
    .ok();
    let auth = match (&section.auth.token_file, &section.auth.kubernetes) {
        (Some(file), None) => Some(VaultAuth::TokenFile(file.clone())),
        (None, Some(k)) => {
            if k.role.is_empty() {
                errors.push(ConfigError::at(
                    "vault.auth.kubernetes.role",
                    "must not be empty",
                ));
            }
            if !super::valid_name(&k.mount) {
                errors.push(ConfigError::at(
                    "vault.auth.kubernetes.mount",
                    format!("{:?} is not a mount name", k.mount),
                ));
            }
            Some(VaultAuth::Kubernetes {
                role: k.role.clone(),
                jwt_file: k.jwt_file.clone(),
                mount: k.mount.clone(),
            })
        }
        _ => {
            errors.push(ConfigError::at(
                "vault.auth",
                "give exactly one of token_file and kubernetes",
            ));
            None
        }
    };
    if let Some(ca) = &section.ca_file {
        if !ca.is_file() {
            errors.push(ConfigError::at(
                "vault.ca_file",
                format!("{} is not a readable file", ca.display()),
            ));
        }
    }
    let refresh = section.refresh.0;
    if refresh < Duration::from_secs(1) {
        errors.push(ConfigError::at("vault.refresh", "must be at least 1s"));
    }
    match (address, auth) {
        (Some(address), Some(auth)) if errors.is_empty() => Ok(Some(VaultPlan {
            config: VaultConfig {
                address,
                auth,
                ca_file: section.ca_file.clone(),
                refresh,
            },
            refs,
        })),
        _ => Err(errors),
    }
}

/// `https://host[:port]`; plain `http://` only to a loopback address (a
/// local agent or a dev server), since the token and secrets cross it.
fn address(text: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = text
        .trim_end_matches('/')
        .parse()
        .map_err(|_| format!("{text:?} is not a URL like https://vault.internal:8200"))?;
    let host = uri.host().unwrap_or_default();
    if host.is_empty() || uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!(
            "{text:?} must be https://host[:port], with no path"
        ));
    }
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if loopback => Ok(uri),
        Some("http") => Err(format!(
            "{text:?}: use https (http only to a loopback address)"
        )),
        _ => Err(format!("{text:?} must start with https://")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod parse {
        use super::*;

        #[test]
        fn reads_mount_path_and_field() {
            let r = VaultRef::parse("secret/team/openai#api_key").unwrap();
            assert_eq!(
                (r.mount.as_str(), r.path.as_str()),
                ("secret", "team/openai")
            );
            assert_eq!(r.field, "api_key");
            assert_eq!(r.to_string(), "${vault:secret/team/openai#api_key}");
        }

        #[test]
        fn refuses_what_is_missing_or_odd() {
            for bad in [
                "secret/openai",
                "secret#api_key",
                "/openai#k",
                "secret//openai#k",
                "secret/openai#",
                "secret/../x#k",
                "secret/a b#k",
                "secret/a#k#l",
            ] {
                assert!(VaultRef::parse(bad).is_err(), "{bad}");
            }
        }
    }

    mod specs {
        use super::*;

        #[test]
        fn finds_references_and_skips_escapes() {
            assert_eq!(
                vault_specs("Bearer ${vault:a/b#c} $${vault:x/y#z} ${HOME}"),
                vec!["a/b#c"]
            );
        }
    }

    mod addresses {
        use super::*;

        #[test]
        fn https_anywhere_http_on_loopback_only() {
            assert!(address("https://vault.internal:8200").is_ok());
            assert!(address("http://127.0.0.1:8200/").is_ok());
            assert!(address("http://vault.internal:8200").is_err());
            assert!(address("https://vault.internal:8200/v1").is_err());
        }
    }
}
