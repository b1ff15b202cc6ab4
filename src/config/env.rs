//! Where config values come from besides the file: `${NAME}` / `${file:/path}`
//! / `${vault:mount/path#field}` interpolation in string values, and
//! `CLAVIS_<SECTION>_<KEY>` overrides.
//! Lookups go through [`Env`] so tests pass a map instead of mutating the
//! process environment.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::vault::VaultRef;
use super::ConfigError;
use crate::secret::Secret;

/// A source of environment variables.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;

    /// The value of a `${vault:…}` reference, read before the config is
    /// validated (`config::vault::WithVault`); `None`: not read.
    #[allow(private_interfaces)]
    fn vault(&self, _reference: &VaultRef) -> Option<Secret<String>> {
        None
    }
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// A string from the config file that may contain `${NAME}` or `${file:/path}`.
/// It stays raw until [`Interp::resolve`], so errors can name its key.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub(crate) struct Interp(pub String);

impl std::fmt::Debug for Interp {
    // Raw values may be literal secrets (credentials written inline).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Interp([REDACTED])")
    }
}

impl Interp {
    /// Expands every `${…}`; `$${` is a literal `${`. An unset variable or an
    /// unreadable file is an error naming it (never its value).
    pub(crate) fn resolve(&self, env: &dyn Env, path: &str) -> Result<Secret<String>, ConfigError> {
        let raw = &self.0;
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw.as_str();
        while let Some(start) = rest.find("${") {
            if rest[..start].ends_with('$') {
                out.push_str(&rest[..start - 1]);
                out.push_str("${");
                rest = &rest[start + 2..];
                continue;
            }
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| ConfigError::at(path, "unclosed \"${\" in value"))?;
            let name = &after[..end];
            let value = lookup(env, name, path)?;
            out.push_str(value.expose());
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(Secret::new(out))
    }

    /// The paths of the `${file:…}` references it holds (escaped `$${`
    /// skipped, as [`Interp::resolve`] does): what a reload watches.
    pub(crate) fn files(&self) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        let mut rest = self.0.as_str();
        while let Some(start) = rest.find("${") {
            let escaped = rest[..start].ends_with('$');
            let after = &rest[start + 2..];
            if escaped {
                rest = after;
                continue;
            }
            let Some(end) = after.find('}') else {
                break;
            };
            if let Some(file) = after[..end].strip_prefix("file:") {
                out.push(file.into());
            }
            rest = &after[end + 1..];
        }
        out
    }

    /// Resolves a value that is not secret (addresses, paths, names).
    pub(crate) fn resolve_plain(&self, env: &dyn Env, path: &str) -> Result<String, ConfigError> {
        Ok(self.resolve(env, path)?.expose().clone())
    }
}

fn lookup(env: &dyn Env, name: &str, path: &str) -> Result<Secret<String>, ConfigError> {
    if let Some(file) = name.strip_prefix("file:") {
        let text = Secret::new(std::fs::read_to_string(file).map_err(|e| {
            ConfigError::at(path, format!("cannot read ${{file:{file}}}: {}", e.kind()))
        })?);
        return Ok(Secret::new(
            text.expose().trim_end_matches(['\n', '\r']).to_owned(),
        ));
    }
    if let Some(spec) = name.strip_prefix("vault:") {
        let reference = VaultRef::parse(spec).map_err(|m| ConfigError::at(path, m))?;
        return env
            .vault(&reference)
            .ok_or_else(|| ConfigError::at(path, format!("{reference} was not read from Vault")));
    }
    let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        return Err(ConfigError::at(
            path,
            format!("\"${{{name}}}\" is not a variable name (letters, digits, _) or file:/path"),
        ));
    }
    env.var(name)
        .map(Secret::new)
        .ok_or_else(|| ConfigError::at(path, format!("environment variable {name} is not set")))
}

/// Applies `CLAVIS_<SECTION>_<KEY>` overrides to one section: every key the
/// section has (present in the file or not) may be set from the environment.
/// The value is read as a YAML scalar, so `true`, `10s` and `127.0.0.1:8080`
/// all work.
pub(crate) fn override_section<T>(section: &str, value: T, env: &dyn Env) -> Result<T, ConfigError>
where
    T: Serialize + for<'de> Deserialize<'de>,
{
    let mut tree = serde_yaml::to_value(&value)
        .map_err(|e| ConfigError::at(section, format!("internal: {e}")))?;
    let serde_yaml::Value::Mapping(map) = &mut tree else {
        return Ok(value);
    };
    let mut changed = false;
    let keys: Vec<String> = map
        .keys()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    for key in keys {
        let var = format!("CLAVIS_{}_{}", section, key).to_ascii_uppercase();
        if let Some(text) = env.var(&var) {
            let parsed: serde_yaml::Value =
                serde_yaml::from_str(&text).unwrap_or(serde_yaml::Value::String(text.clone()));
            map.insert(serde_yaml::Value::String(key), parsed);
            changed = true;
        }
    }
    if !changed {
        return Ok(value);
    }
    serde_yaml::from_value(tree).map_err(|e| {
        ConfigError::at(
            section,
            format!(
                "from CLAVIS_{}_* environment: {e}",
                section.to_ascii_uppercase()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    mod resolve {
        use super::*;

        #[test]
        fn expands_variables_and_keeps_text() {
            let e = env(&[("KEY", "sk-123")]);
            let v = Interp("Bearer ${KEY}!".into()).resolve(&e, "x").unwrap();
            assert_eq!(v.expose(), "Bearer sk-123!");
        }

        #[test]
        fn unset_variable_is_named() {
            let err = Interp("${NOPE}".into())
                .resolve(&env(&[]), "services[0].credentials.api_key")
                .unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("NOPE") && msg.contains("services[0].credentials.api_key"),
                "{msg}"
            );
        }

        #[test]
        fn reads_files_trimming_newline() {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("k");
            std::fs::write(&p, "secret-value\n").unwrap();
            let raw = format!("${{file:{}}}", p.display());
            assert_eq!(
                Interp(raw).resolve(&env(&[]), "x").unwrap().expose(),
                "secret-value"
            );
        }

        #[test]
        fn escaped_dollar_is_literal() {
            assert_eq!(
                Interp("a$${B}".into())
                    .resolve(&env(&[]), "x")
                    .unwrap()
                    .expose(),
                "a${B}"
            );
        }

        #[test]
        fn vault_references_take_the_values_read() {
            use crate::config::vault::{VaultDoc, VaultValues, WithVault};
            let mut values = VaultValues::new();
            let mut doc = VaultDoc::default();
            doc.fields.insert("api_key".into(), Secret::from("sk-v"));
            values.insert(("secret".into(), "openai".into()), doc);
            let e = env(&[]);
            let with = WithVault {
                env: &e,
                values: &values,
            };
            let raw = Interp("Bearer ${vault:secret/openai#api_key}".into());
            assert_eq!(raw.resolve(&with, "x").unwrap().expose(), "Bearer sk-v");
            let missing = Interp("${vault:secret/openai#other}".into())
                .resolve(&with, "services[0].credentials.api_key")
                .unwrap_err()
                .to_string();
            assert!(
                missing.contains("services[0].credentials.api_key")
                    && missing.contains("${vault:secret/openai#other}"),
                "{missing}"
            );
        }

        #[test]
        fn a_bad_vault_reference_names_its_path_and_fault() {
            let err = Interp("${vault:secret/openai}".into())
                .resolve(&env(&[]), "agents[1].token")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("agents[1].token") && err.contains("#field"),
                "{err}"
            );
        }

        #[test]
        fn unclosed_is_an_error() {
            assert!(Interp("${A".into())
                .resolve(&env(&[("A", "1")]), "x")
                .is_err());
        }
    }
}
