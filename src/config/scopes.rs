//! `agents[].github_app`: the repositories and permissions of an agent's
//! own GitHub App installation token (SPEC §13.1), checked once and turned
//! into the body of GitHub's `access_tokens` request.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use super::RawGithubApp;
use crate::identity::TokenScope;

/// The built-in connector whose tokens `github_app` narrows.
pub(crate) const GITHUB_APP_CONNECTOR: &str = "github-app";

/// The levels GitHub grants a permission at.
const LEVELS: [&str; 3] = ["read", "write", "admin"];

/// The scope, or `(key, message)` for the first thing wrong with it.
/// Lists are sorted and deduplicated, so equal scopes share one token.
pub(super) fn github_app(raw: &RawGithubApp) -> Result<TokenScope, (String, String)> {
    if raw.repositories.is_empty() && raw.permissions.is_empty() {
        return Err((
            String::new(),
            "set repositories and/or permissions (without either, leave github_app out: the agent gets the installation's own token)".into(),
        ));
    }
    let mut repositories = BTreeSet::new();
    for (i, name) in raw.repositories.iter().enumerate() {
        if name.contains('/') {
            return Err((
                format!("repositories[{i}]"),
                format!(
                    "{name:?}: name the repository without its owner (the installation's account)"
                ),
            ));
        }
        let valid = !name.is_empty()
            && name.len() <= 100
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            return Err((
                format!("repositories[{i}]"),
                format!("{name:?} is not a repository name"),
            ));
        }
        repositories.insert(name.clone());
    }
    let mut permissions = Map::new();
    for (name, level) in &raw.permissions {
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid_name {
            return Err((
                format!("permissions.{name}"),
                "not a GitHub App permission name (lowercase letters, digits, '_')".into(),
            ));
        }
        if !LEVELS.contains(&level.as_str()) {
            return Err((
                format!("permissions.{name}"),
                format!("{level:?}: use read, write or admin"),
            ));
        }
        permissions.insert(name.clone(), Value::String(level.clone()));
    }
    let mut body = Map::new();
    if !permissions.is_empty() {
        body.insert("permissions".into(), Value::Object(permissions));
    }
    if !repositories.is_empty() {
        body.insert("repositories".into(), json!(repositories));
    }
    Ok(TokenScope::new(Value::Object(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(repos: &[&str], perms: &[(&str, &str)]) -> RawGithubApp {
        RawGithubApp {
            repositories: repos.iter().map(|r| r.to_string()).collect(),
            permissions: perms
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn equal_scopes_have_equal_keys_whatever_the_order() {
        let a = github_app(&raw(
            &["b", "a", "a"],
            &[("issues", "write"), ("contents", "read")],
        ))
        .unwrap();
        let b = github_app(&raw(
            &["a", "b"],
            &[("contents", "read"), ("issues", "write")],
        ))
        .unwrap();
        assert_eq!(a.key, b.key);
        assert_eq!(
            a.body,
            json!({"permissions": {"contents": "read", "issues": "write"}, "repositories": ["a", "b"]})
        );
    }

    #[test]
    fn mistakes_are_named() {
        assert_eq!(github_app(&raw(&[], &[])).unwrap_err().0, "");
        assert_eq!(
            github_app(&raw(&["acme/x"], &[])).unwrap_err().0,
            "repositories[0]"
        );
        let e = github_app(&raw(&["x"], &[("contents", "all")])).unwrap_err();
        assert_eq!(e.0, "permissions.contents");
        assert!(e.1.contains("read, write or admin"), "{}", e.1);
        assert!(github_app(&raw(&[], &[("Contents", "read")])).is_err());
    }
}
