//! The agent's environment (SPEC §14): every proxy and CA variable the
//! common runtimes read, with the agent's proxy credentials, and a
//! `clavis:<service>` placeholder in each visible service's usual
//! variable. [`variables`] is pure; `Inputs::gather` (in `inputs.rs`)
//! reads the config, the token file, the CA files and the running
//! clavis's services.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use zeroize::Zeroizing;

use super::args::EnvArgs;
use super::{shell, CliError};

/// Loopback destinations go direct (most clients proxy even those).
pub(crate) const NO_PROXY: &str = "localhost,127.0.0.1,::1";

/// A service the agent may use, as the environment names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Visible {
    pub(crate) name: String,
    pub(crate) connector: String,
    pub(crate) default: bool,
}

/// What the environment is computed from.
pub(crate) struct Inputs {
    pub(crate) proxy: SocketAddr,
    /// The agent's name and token, for the proxy URL's user info.
    pub(crate) agent: Option<(String, Zeroizing<String>)>,
    pub(crate) ca_cert: PathBuf,
    pub(crate) bundle: PathBuf,
    /// A Java trust store (JKS) holding the bundle, when one could be made.
    pub(crate) java_store: Option<PathBuf>,
    pub(crate) services: Vec<Visible>,
}

/// The variables, in a stable order, and what the user should know.
#[derive(Debug, Default)]
pub(crate) struct AgentEnv {
    pub(crate) vars: Vec<(String, String)>,
    pub(crate) notes: Vec<String>,
}

impl AgentEnv {
    fn set(&mut self, name: &str, value: impl Into<String>) {
        self.vars.push((name.to_owned(), value.into()));
    }
}

/// The agent's environment from `inputs`.
pub(crate) fn variables(inputs: &Inputs) -> AgentEnv {
    let mut env = AgentEnv::default();
    let url = proxy_url(inputs.proxy, inputs.agent.as_ref());
    for name in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
        env.set(name, url.as_str());
    }
    env.set("NO_PROXY", NO_PROXY);
    env.set("no_proxy", NO_PROXY);
    // Variables that replace the trust store get the bundle (public roots
    // plus the CA); those that add to it get the CA alone.
    let bundle = inputs.bundle.display().to_string();
    for name in [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "GIT_SSL_CAINFO",
        "AWS_CA_BUNDLE",
        "CARGO_HTTP_CAINFO",
    ] {
        env.set(name, bundle.as_str());
    }
    let ca = inputs.ca_cert.display().to_string();
    env.set("NODE_EXTRA_CA_CERTS", ca.as_str());
    env.set("DENO_CERT", ca.as_str());
    env.set("NODE_USE_ENV_PROXY", "1");
    java(&mut env, inputs);
    placeholders(&mut env, &inputs.services);
    env
}

/// `http://[agent:token@]host:port`, the user info percent-encoded.
fn proxy_url(addr: SocketAddr, agent: Option<&(String, Zeroizing<String>)>) -> Zeroizing<String> {
    let mut url = Zeroizing::new(String::from("http://"));
    if let Some((name, token)) = agent {
        crate::encoding::percent_encode_into(&mut url, name.as_bytes());
        url.push(':');
        crate::encoding::percent_encode_into(&mut url, token.as_bytes());
        url.push('@');
    }
    url.push_str(&reachable(addr).to_string());
    url
}

/// Where a client reaches a listen address: an unspecified one on loopback.
pub(crate) fn reachable(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

/// Java reads no proxy or CA variable: `JAVA_TOOL_OPTIONS` carries the
/// proxy and a trust store. Never the agent's token: the JVM prints that
/// variable at every start (Java sends proxy credentials only to an
/// `Authenticator` after a 407, and never Basic on CONNECT by default).
fn java(env: &mut AgentEnv, inputs: &Inputs) {
    let Some(store) = &inputs.java_store else {
        return;
    };
    let store = store.display().to_string();
    if store.contains(char::is_whitespace) {
        env.notes.push(format!(
            "JAVA_TOOL_OPTIONS not set: the trust store path {store:?} has a space, which the JVM would split"
        ));
        return;
    }
    let proxy = reachable(inputs.proxy);
    let host = match proxy.ip() {
        IpAddr::V6(ip) => format!("[{ip}]"),
        IpAddr::V4(ip) => ip.to_string(),
    };
    let port = proxy.port();
    env.set(
        "JAVA_TOOL_OPTIONS",
        format!(
            "-Dhttps.proxyHost={host} -Dhttps.proxyPort={port} -Dhttp.proxyHost={host} -Dhttp.proxyPort={port} \
             -Dhttp.nonProxyHosts=localhost|127.0.0.1|[::1] -Djavax.net.ssl.trustStore={store} \
             -Djavax.net.ssl.trustStoreType=JKS -Djavax.net.ssl.trustStorePassword={}",
            super::jks::PASSWORD
        ),
    );
    if inputs.agent.is_some() {
        env.notes.push(
            "Java clients get the proxy without the agent's credentials (the JVM prints JAVA_TOOL_OPTIONS); \
             with proxy.require_auth they need an Authenticator"
                .into(),
        );
    }
}

/// A placeholder in each connector's usual variables: the service marked
/// `default`, else the only one, else the first by name (and a note).
fn placeholders(env: &mut AgentEnv, services: &[Visible]) {
    let mut by_connector: BTreeMap<&str, Vec<&Visible>> = BTreeMap::new();
    for s in services {
        by_connector
            .entry(s.connector.as_str())
            .or_default()
            .push(s);
    }
    for (connector, mut candidates) in by_connector {
        let names = crate::connector::variables::usual(connector);
        if names.is_empty() {
            continue;
        }
        candidates.sort_by(|a, b| a.name.cmp(&b.name));
        let chosen = match candidates.iter().find(|s| s.default) {
            Some(s) => s,
            None => {
                let first = candidates[0];
                if candidates.len() > 1 {
                    env.notes.push(format!(
                        "{} names {:?}, the first of {} {connector} services and none is default; \
                         set clavis:<service> to use another",
                        names.join(" and "),
                        first.name,
                        candidates.len()
                    ));
                }
                first
            }
        };
        for name in names {
            env.set(name, format!("clavis:{}", chosen.name));
        }
    }
}

/// `clavis env`: prints the variables as shell code, notes on stderr.
pub(crate) fn print(args: EnvArgs) -> Result<ExitCode, CliError> {
    let loaded = super::load_config(args.agent.config.as_deref())?;
    let inputs = Inputs::gather(&loaded, &args.agent, None)?;
    let env = variables(&inputs);
    for note in &env.notes {
        eprintln!("clavis: note: {note}");
    }
    let text = Zeroizing::new(shell::render(args.shell, &env.vars));
    super::out(&text)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(agent: Option<(&str, &str)>, services: &[(&str, &str, bool)]) -> Inputs {
        Inputs {
            proxy: "0.0.0.0:8080".parse().unwrap(),
            agent: agent.map(|(n, t)| (n.to_owned(), Zeroizing::new(t.to_owned()))),
            ca_cert: "/c/ca.pem".into(),
            bundle: "/c/bundle.pem".into(),
            java_store: Some("/c/bundle.jks".into()),
            services: services
                .iter()
                .map(|(n, c, d)| Visible {
                    name: (*n).into(),
                    connector: (*c).into(),
                    default: *d,
                })
                .collect(),
        }
    }

    fn get<'a>(env: &'a AgentEnv, name: &str) -> Option<&'a str> {
        env.vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    mod variables {
        use super::*;

        #[test]
        fn proxy_in_both_cases_with_encoded_credentials() {
            let env = variables(&inputs(Some(("codex", "t@k:n/1")), &[]));
            for name in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
                assert_eq!(
                    get(&env, name),
                    Some("http://codex:t%40k%3An%2F1@127.0.0.1:8080"),
                    "{name}"
                );
            }
            let env = variables(&inputs(None, &[]));
            assert_eq!(get(&env, "HTTPS_PROXY"), Some("http://127.0.0.1:8080"));
            assert_eq!(get(&env, "no_proxy"), Some(NO_PROXY));
        }

        #[test]
        fn replacing_variables_get_the_bundle_appending_ones_the_ca() {
            let env = variables(&inputs(None, &[]));
            for name in [
                "SSL_CERT_FILE",
                "REQUESTS_CA_BUNDLE",
                "CURL_CA_BUNDLE",
                "GIT_SSL_CAINFO",
                "AWS_CA_BUNDLE",
            ] {
                assert_eq!(get(&env, name), Some("/c/bundle.pem"), "{name}");
            }
            assert_eq!(get(&env, "NODE_EXTRA_CA_CERTS"), Some("/c/ca.pem"));
            assert_eq!(get(&env, "NODE_USE_ENV_PROXY"), Some("1"));
            let java = get(&env, "JAVA_TOOL_OPTIONS").unwrap();
            assert!(java.contains("-Dhttps.proxyHost=127.0.0.1 -Dhttps.proxyPort=8080"));
            assert!(java.contains("-Djavax.net.ssl.trustStore=/c/bundle.jks"));
        }

        #[test]
        fn java_never_carries_the_token() {
            let env = variables(&inputs(Some(("codex", "secret-token")), &[]));
            assert!(!get(&env, "JAVA_TOOL_OPTIONS").unwrap().contains("secret"));
            assert!(!env.notes.is_empty());
        }

        #[test]
        fn placeholders_per_connector_default_first() {
            let env = variables(&inputs(
                None,
                &[
                    ("work-openai", "openai", false),
                    ("home-openai", "openai", true),
                    ("gh", "github", false),
                    ("mine", "internal-api", false),
                    ("kal", "kalshi", false),
                ],
            ));
            assert_eq!(get(&env, "OPENAI_API_KEY"), Some("clavis:home-openai"));
            assert_eq!(get(&env, "GITHUB_TOKEN"), Some("clavis:gh"));
            assert_eq!(get(&env, "GH_TOKEN"), Some("clavis:gh"));
            assert_eq!(get(&env, "ANTHROPIC_API_KEY"), None);
            assert!(env.notes.is_empty(), "{:?}", env.notes);
        }

        #[test]
        fn several_without_default_take_the_first_and_say_so() {
            let env = variables(&inputs(
                None,
                &[("b-openai", "openai", false), ("a-openai", "openai", false)],
            ));
            assert_eq!(get(&env, "OPENAI_API_KEY"), Some("clavis:a-openai"));
            assert_eq!(env.notes.len(), 1);
        }
    }
}
