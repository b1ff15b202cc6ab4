//! git over HTTPS (SPEC §13.4): a git host (`github.com`) is also a web
//! site, so only git's smart-HTTP and LFS paths carry the credential, in
//! the Basic form git hosts take (`x-access-token:<token>`); every other
//! path on it goes out with nothing injected. [`WithGit`] pairs any API
//! injection with any git injection, and the path test stands alone, so a
//! connector whose token is fetched (a GitHub App's installation token)
//! reuses both with its own way of adding the token.

use super::{Inject, Template};
use crate::credentials::Credentials;

/// The user name GitHub takes beside a token in git's Basic credential.
pub(crate) const TOKEN_USER: &str = "x-access-token";

/// Where GitHub serves git over HTTPS.
pub(crate) const GITHUB_HOST: &str = "github.com";

/// An API's credential on its own hosts, and git over HTTPS on `host`.
#[derive(Debug)]
pub(crate) struct WithGit {
    /// How the API's hosts are authorized.
    pub(crate) api: Inject,
    /// The git host (`github.com`): its git paths get `git`, the rest nothing.
    pub(crate) host: String,
    pub(crate) git: Inject,
}

impl WithGit {
    /// The injection for a request to `host` at `path`: the API's, git's, or
    /// none (a page of the git host's web site).
    pub(crate) fn for_request(&self, host: &str, path: &str) -> Option<&Inject> {
        if host != self.host {
            return Some(&self.api);
        }
        is_smart_http(path).then_some(&self.git)
    }

    /// Both sides' plans must agree (the exchange plans before it knows
    /// the path's side): the API's is the one asked.
    pub(crate) fn plan(&self, creds: &Credentials) -> super::Plan {
        self.api.plan(creds)
    }
}

/// `Authorization: Basic base64("x-access-token:" + {field})`: git's
/// credential for a token held as the credential field `field`.
pub(crate) fn basic_token_inject(field: &str) -> Inject {
    Inject::Headers {
        headers: vec![(
            http::header::AUTHORIZATION,
            Template::basic(
                &Template::literal(TOKEN_USER),
                &Template::prefixed("", field),
            ),
        )],
        query: Vec::new(),
    }
}

/// Whether `path` is one of git's smart-HTTP endpoints
/// (`…/info/refs`, `…/git-upload-pack`, `…/git-receive-pack`) or the Git
/// LFS API (`…/info/lfs/…`) below a repository. A path that spells its
/// way anywhere else (`.` or `..` segments, escaped `/` or `\`, a
/// backslash) is not, so the credential never rides on a path the upstream
/// would read differently.
pub(crate) fn is_smart_http(path: &str) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') || path.contains('\\') || has_escaped_separator(path) {
        return false;
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    if segments.iter().any(|s| *s == "." || *s == "..") {
        return false;
    }
    // owner/repo come first: at least two non-empty segments before git's.
    let repo_end = match segments
        .iter()
        .position(|s| matches!(*s, "info" | "git-upload-pack" | "git-receive-pack"))
    {
        Some(i) if i >= 2 && segments[..i].iter().all(|s| !s.is_empty()) => i,
        _ => return false,
    };
    match &segments[repo_end..] {
        ["info", "refs"] | ["git-upload-pack"] | ["git-receive-pack"] => true,
        ["info", "lfs", rest @ ..] => !rest.is_empty() && rest.iter().all(|s| !s.is_empty()),
        _ => false,
    }
}

fn has_escaped_separator(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.contains("%2f") || lower.contains("%5c") || lower.contains("%2e")
}

#[cfg(test)]
mod tests {
    use super::*;

    mod smart_http {
        use super::*;

        #[test]
        fn git_and_lfs_endpoints_below_a_repository() {
            for path in [
                "/acme/widgets.git/info/refs",
                "/acme/widgets/info/refs",
                "/acme/widgets.git/info/refs?service=git-upload-pack",
                "/acme/widgets.git/git-upload-pack",
                "/acme/widgets.git/git-receive-pack",
                "/acme/widgets.git/info/lfs/objects/batch",
                "/acme/widgets.git/info/lfs/locks",
                "/acme/widgets.git/info/lfs/locks/verify",
            ] {
                assert!(is_smart_http(path), "{path}");
            }
        }

        #[test]
        fn web_pages_and_tricks_are_not() {
            for path in [
                "/",
                "/login",
                "/acme/widgets",
                "/acme/widgets/blob/main/info/refs.md",
                "/acme/widgets/settings",
                "/info/refs",
                "/acme/info/refs",
                "//widgets/info/refs",
                "/acme/widgets.git/info/refs/extra",
                "/acme/widgets.git/info/lfs",
                "/acme/widgets.git/info/lfs/",
                "/acme/widgets/../../settings/x/info/refs",
                "/acme/./widgets/info/refs",
                "/acme/widgets%2f..%2f..%2fsettings/info/refs",
                "/acme/widgets/%2e%2e/info/refs",
                "/acme\\widgets/info/refs",
                "acme/widgets/info/refs",
            ] {
                assert!(!is_smart_http(path), "{path}");
            }
        }
    }

    mod inject {
        use super::*;

        #[test]
        fn basic_carries_x_access_token_and_the_field() {
            let Inject::Headers { headers, .. } = basic_token_inject("api_key") else {
                panic!("a header inject")
            };
            let creds = Credentials::from_pairs([("api_key", "ghp_abc")]);
            let value = headers[0].1.render(&creds).unwrap();
            // base64("x-access-token:ghp_abc")
            assert_eq!(value.as_str(), "Basic eC1hY2Nlc3MtdG9rZW46Z2hwX2FiYw==");
        }

        #[test]
        fn the_git_host_gets_git_only_on_git_paths() {
            let with = WithGit {
                api: Inject::Kalshi,
                host: "github.com".into(),
                git: Inject::Coinbase,
            };
            assert!(matches!(
                with.for_request("api.github.com", "/user"),
                Some(Inject::Kalshi)
            ));
            assert!(matches!(
                with.for_request("github.com", "/a/b.git/info/refs"),
                Some(Inject::Coinbase)
            ));
            assert!(with.for_request("github.com", "/a/b/settings").is_none());
        }
    }
}
