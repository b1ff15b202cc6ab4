//! The environment variables in which each built-in connector's SDKs and
//! CLIs look for their key: `clavis env` puts a `clavis:<service>`
//! placeholder there (SPEC §14). Signing connectors (Kalshi, Coinbase)
//! have none: their SDKs need a well-formed throw-away key, not a
//! placeholder.

/// The usual variables for `connector` (a connector name); none for
/// user-defined connectors.
pub(crate) fn usual(connector: &str) -> &'static [&'static str] {
    match connector {
        "openai" => &["OPENAI_API_KEY"],
        "anthropic" => &["ANTHROPIC_API_KEY"],
        // gh reads GH_TOKEN first, most other tools GITHUB_TOKEN.
        "github" | "github-app" => &["GITHUB_TOKEN", "GH_TOKEN"],
        "stripe" => &["STRIPE_API_KEY"],
        "brave-search" => &["BRAVE_API_KEY", "BRAVE_SEARCH_API_KEY"],
        _ => &[],
    }
}

/// Every variable above, and the others the agents' tools read keys from
/// (Claude Code's `ANTHROPIC_AUTH_TOKEN`, Codex's `CODEX_API_KEY`):
/// `clavis run` passes none of them on holding a real value.
pub(crate) fn all_usual() -> &'static [&'static str] {
    &[
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "GITHUB_TOKEN",
        "GH_TOKEN",
        "STRIPE_API_KEY",
        "BRAVE_API_KEY",
        "BRAVE_SEARCH_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "CODEX_API_KEY",
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_is_known_here() {
        let registry = crate::connector::Registry::builtin();
        for name in registry.names() {
            let signing = matches!(name, "kalshi" | "coinbase");
            assert_eq!(usual(name).is_empty(), signing, "{name}");
        }
        assert!(usual("my-internal-api").is_empty());
    }

    #[test]
    fn all_usual_holds_every_usual_variable() {
        for name in crate::connector::Registry::builtin().names() {
            for var in usual(name) {
                assert!(all_usual().contains(var), "{var}");
            }
        }
    }
}
