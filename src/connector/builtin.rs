//! The built-in connectors of SPEC §4.1, with the auth headers each API's
//! official SDKs send (see docs/SPEC.md and the connector reference).

use http::{HeaderName, HeaderValue, Method};

use super::git::{self, WithGit};
use super::meter::Meter;
use super::{Connector, FieldSpec, Inject, LiveCheck, Template, TokenSource};

/// Where GitHub serves git over HTTPS.
const GIT_HOST: &str = git::GITHUB_HOST;
use crate::host::HostPattern;

/// Connectors that claim another's hosts, as `(member, lead)`: on those
/// hosts the service picks which of them applies.
pub(crate) const FAMILIES: &[(&str, &str)] = &[("github-app", "github")];

pub(crate) fn all() -> Vec<Connector> {
    vec![
        openai(),
        anthropic(),
        github(),
        stripe(),
        brave_search(),
        kalshi(),
        coinbase(),
        github_app(),
    ]
}

fn hosts(names: &[&str]) -> Vec<HostPattern> {
    names
        .iter()
        .map(|h| HostPattern::Exact((*h).to_owned()))
        .collect()
}

fn names(list: &[&'static str]) -> Vec<HeaderName> {
    list.iter().map(|n| HeaderName::from_static(n)).collect()
}

/// One header: a literal prefix followed by the `api_key` field.
fn header_inject(name: &'static str, prefix: &str) -> Inject {
    Inject::Headers {
        headers: vec![(
            HeaderName::from_static(name),
            Template::prefixed(prefix, "api_key"),
        )],
        query: Vec::new(),
    }
}

fn bearer(name: &str, hosts_list: &[&str], prefixes: &[&'static str]) -> Connector {
    Connector {
        name: name.to_owned(),
        hosts: hosts(hosts_list),
        port: 443,
        strip: names(&["authorization"]),
        inject: header_inject("authorization", "Bearer "),
        defaults: Vec::new(),
        field_sets: vec![vec![FieldSpec::prefixed("api_key", prefixes)]],
        live_check: None,
        meter: Meter::None,
    }
}

fn openai() -> Connector {
    let mut c = bearer(
        "openai",
        &["api.openai.com", "us.api.openai.com", "eu.api.openai.com"],
        &["sk-"],
    );
    // Azure-style `api-key` is stripped too, so no agent value rides along.
    c.strip = names(&["authorization", "api-key"]);
    c.meter = Meter::OpenAi;
    c
}

fn anthropic() -> Connector {
    Connector {
        name: "anthropic".into(),
        hosts: hosts(&["api.anthropic.com"]),
        port: 443,
        // SDKs send the key as x-api-key, or (newer releases, auth tokens) as
        // Authorization: Bearer, or both at once.
        strip: names(&["x-api-key", "authorization"]),
        inject: header_inject("x-api-key", ""),
        defaults: vec![(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static("2023-06-01"),
        )],
        field_sets: vec![vec![FieldSpec::prefixed("api_key", &["sk-ant-"])]],
        live_check: None,
        meter: Meter::Anthropic,
    }
}

/// The REST API with the token as `Bearer`, and git over HTTPS on
/// github.com with it as git's Basic credential (SPEC §13.4). github.com
/// comes last: the first host is where `/v1/proxy` and the live check go.
fn github() -> Connector {
    let mut c = bearer(
        "github",
        &["api.github.com", "uploads.github.com", GIT_HOST],
        &["ghp_", "github_pat_", "gho_", "ghu_", "ghs_"],
    );
    c.inject = Inject::Git(Box::new(WithGit {
        api: header_inject("authorization", "Bearer "),
        host: GIT_HOST.to_owned(),
        git: git::basic_token_inject("api_key"),
    }));
    c.live_check = Some(LiveCheck {
        method: Method::GET,
        path: "/user",
    });
    c
}

/// GitHub as an app installation (SPEC §13.1): the hosts of `github`, an
/// installation token minted with the app's key instead of a stored token.
fn github_app() -> Connector {
    let github = github();
    Connector {
        name: "github-app".into(),
        hosts: github.hosts,
        port: github.port,
        strip: github.strip,
        inject: Inject::Token(TokenSource::GithubApp),
        defaults: Vec::new(),
        field_sets: vec![vec![
            FieldSpec::any("app_id"),
            FieldSpec::any("private_key"),
            FieldSpec::any("installation_id"),
        ]],
        live_check: None,
        meter: Meter::None,
    }
}

fn stripe() -> Connector {
    let mut c = bearer(
        "stripe",
        &[
            "api.stripe.com",
            "files.stripe.com",
            "connect.stripe.com",
            "meter-events.stripe.com",
        ],
        &["sk_live_", "sk_test_", "rk_live_", "rk_test_"],
    );
    c.live_check = Some(LiveCheck {
        method: Method::GET,
        path: "/v1/balance",
    });
    c.meter = Meter::Stripe;
    c
}

fn brave_search() -> Connector {
    Connector {
        name: "brave-search".into(),
        hosts: hosts(&["api.search.brave.com"]),
        port: 443,
        strip: names(&["x-subscription-token", "authorization"]),
        inject: header_inject("x-subscription-token", ""),
        defaults: Vec::new(),
        field_sets: vec![vec![FieldSpec::any("api_key")]],
        live_check: None,
        meter: Meter::None,
    }
}

fn kalshi() -> Connector {
    Connector {
        name: "kalshi".into(),
        hosts: hosts(&[
            "external-api.kalshi.com",
            "api.elections.kalshi.com",
            "external-api.demo.kalshi.co",
            "demo-api.kalshi.co",
        ]),
        port: 443,
        // The SDK signs with its throw-away key; every part of that is dropped.
        strip: names(&[
            "kalshi-access-key",
            "kalshi-access-timestamp",
            "kalshi-access-signature",
            "authorization",
        ]),
        inject: Inject::Kalshi,
        defaults: Vec::new(),
        field_sets: vec![
            vec![FieldSpec::any("api_key_id"), FieldSpec::any("private_key")],
            vec![FieldSpec::any("email"), FieldSpec::any("password")],
        ],
        live_check: None,
        meter: Meter::Kalshi,
    }
}

fn coinbase() -> Connector {
    Connector {
        name: "coinbase".into(),
        hosts: hosts(&["api.coinbase.com"]),
        port: 443,
        strip: names(&[
            "authorization",
            "cb-access-key",
            "cb-access-sign",
            "cb-access-timestamp",
            "cb-access-passphrase",
        ]),
        inject: Inject::Coinbase,
        defaults: Vec::new(),
        field_sets: vec![vec![
            FieldSpec::any("api_key"),
            FieldSpec::any("api_secret"),
        ]],
        live_check: None,
        meter: Meter::Coinbase,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::Credentials;

    fn creds(key: &str) -> Credentials {
        Credentials::from_pairs([("api_key", key)])
    }

    mod validate {
        use super::*;

        #[test]
        fn control_characters_are_refused_outside_pem_keys() {
            for bad in [
                "sk-abc\r\nX-Injected: 1",
                "sk-abc\n",
                "sk-a\0bc",
                "sk-a\u{7f}",
            ] {
                let e = openai().validate(&creds(bad)).unwrap_err().to_string();
                assert!(
                    e.contains("\"api_key\"") && e.contains("control character"),
                    "{e}"
                );
                assert!(!e.contains("sk-a"), "the value is never quoted: {e}");
            }
            let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
            let kalshi = Credentials::from_pairs([("api_key_id", "k-1"), ("private_key", pem)]);
            assert!(super::super::kalshi().validate(&kalshi).is_ok());
        }

        #[test]
        fn prefixes_per_connector() {
            assert!(openai().validate(&creds("sk-proj-abc")).is_ok());
            assert!(openai().validate(&creds("pk-abc")).is_err());
            assert!(anthropic().validate(&creds("sk-ant-api03-x")).is_ok());
            assert!(anthropic().validate(&creds("sk-x")).is_err());
            assert!(github().validate(&creds("github_pat_x")).is_ok());
            assert!(github().validate(&creds("ghr_x")).is_err());
            assert!(stripe().validate(&creds("rk_test_x")).is_ok());
            assert!(stripe().validate(&creds("pk_test_x")).is_err());
            assert!(brave_search().validate(&creds("anything")).is_ok());
            assert!(brave_search().validate(&creds("")).is_err());
        }

        #[test]
        fn error_names_the_field_not_the_value() {
            let e = openai()
                .validate(&creds("pk-secret-value"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("api_key") && !e.contains("secret"), "{e}");
            let e = openai()
                .validate(&Credentials::from_pairs([("other", "x")]))
                .unwrap_err()
                .to_string();
            assert_eq!(e, "missing credential field \"api_key\"");
        }

        #[test]
        fn two_schemes_the_given_fields_choose_which_to_name() {
            let kalshi = super::super::kalshi();
            let only_email = Credentials::from_pairs([("email", "me@example.com")]);
            assert_eq!(
                kalshi.validate(&only_email).unwrap_err().to_string(),
                "missing credential field \"password\""
            );
            let only_key = Credentials::from_pairs([("api_key_id", "k-1")]);
            assert_eq!(
                kalshi.validate(&only_key).unwrap_err().to_string(),
                "missing credential field \"private_key\""
            );
            let neither = Credentials::from_pairs([("token", "x")]);
            assert_eq!(
                kalshi.validate(&neither).unwrap_err().to_string(),
                "credentials need api_key_id + private_key, or email + password"
            );
        }
    }

    mod inject {
        use super::*;

        #[test]
        fn templates_render() {
            let c = creds("sk-1");
            for (connector, header, value) in [
                (openai(), "authorization", "Bearer sk-1"),
                (anthropic(), "x-api-key", "sk-1"),
                (brave_search(), "x-subscription-token", "sk-1"),
            ] {
                let Inject::Headers { headers, .. } = &connector.inject else {
                    panic!("{} is a header connector", connector.name)
                };
                assert_eq!(headers[0].0, header);
                assert_eq!(headers[0].1.render(&c).unwrap().as_str(), value);
            }
        }

        fn injected(connector: &Connector, uri: &str) -> Option<String> {
            let (mut parts, ()) = http::Request::builder()
                .uri(uri)
                .body(())
                .unwrap()
                .into_parts();
            let host = parts.uri.host().unwrap().to_owned();
            assert!(connector.injects(&host, parts.uri.path()) || uri.contains("/settings"));
            connector
                .inject
                .apply(&mut parts, &host, &creds("ghp_tok"), b"")
                .unwrap();
            parts
                .headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned())
        }

        #[test]
        fn github_api_bearer_git_basic_web_nothing() {
            let gh = github();
            assert_eq!(
                injected(&gh, "https://api.github.com/user").as_deref(),
                Some("Bearer ghp_tok")
            );
            assert_eq!(
                injected(
                    &gh,
                    "https://uploads.github.com/repos/a/b/releases/1/assets"
                )
                .as_deref(),
                Some("Bearer ghp_tok")
            );
            // base64("x-access-token:ghp_tok")
            let basic = Some("Basic eC1hY2Nlc3MtdG9rZW46Z2hwX3Rvaw==");
            for path in [
                "/a/b.git/info/refs?service=git-upload-pack",
                "/a/b.git/git-upload-pack",
                "/a/b.git/git-receive-pack",
                "/a/b.git/info/lfs/objects/batch",
            ] {
                assert_eq!(
                    injected(&gh, &format!("https://github.com{path}")).as_deref(),
                    basic,
                    "{path}"
                );
            }
            assert!(!gh.injects("github.com", "/a/b/settings"));
            assert_eq!(injected(&gh, "https://github.com/a/b/settings"), None);
            assert!(gh.injects("api.github.com", "/a/b/settings"));
        }
    }
}
