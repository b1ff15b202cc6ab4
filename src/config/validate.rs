//! Raw config → typed [`Config`]: every error collected with its key path.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use super::*;
use crate::identity::{Agent, Scope};

struct Errors(Vec<ConfigError>, Vec<String>);

impl Errors {
    /// Not an error, but worth saying (`clavis check` prints it, `serve` logs it).
    fn warn(&mut self, path: impl std::fmt::Display, message: &str) {
        self.1.push(format!("{path}: {message}"));
    }

    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError::at(path, message));
    }

    fn take<T>(&mut self, r: Result<T, ConfigError>) -> Option<T> {
        r.map_err(|e| self.0.push(e)).ok()
    }
}

/// The typed config, with defaults standing in for values that failed,
/// and every error found (so a second stage can add its own to one list).
pub(super) fn validate(raw: RawConfig, env: &dyn Env) -> (Config, Vec<ConfigError>) {
    let mut errs = Errors(Vec::new(), Vec::new());

    let proxy_listen = errs
        .take(addr(&raw.proxy.listen, env, "proxy.listen"))
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080)));
    // Off loopback, whoever reaches the port could spend every credential.
    if !proxy_listen.ip().is_loopback() && !raw.proxy.require_auth {
        errs.push(
            "proxy.listen",
            format!("{proxy_listen} is not a loopback address; set proxy.require_auth: true so that only agents with a token can use it"),
        );
    }
    let mut allow_private = Vec::new();
    for (i, cidr) in raw.proxy.allow_private.iter().enumerate() {
        match IpNet::parse(cidr) {
            Some(net) => allow_private.push(net),
            None => errs.push(
                format!("proxy.allow_private[{i}]"),
                format!("{cidr:?} is not a CIDR like 10.0.0.0/8"),
            ),
        }
    }

    let admin_listen = errs
        .take(addr(&raw.admin.listen, env, "admin.listen"))
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 1984)));
    if !admin_listen.ip().is_loopback() && !raw.admin.allow_remote {
        errs.push(
            "admin.listen",
            format!("{admin_listen} is not a loopback address; set admin.allow_remote: true to expose the admin port"),
        );
    }
    let admin_token = match &raw.admin.token {
        Some(t) => errs.take(t.resolve(env, "admin.token")).and_then(|t| {
            if t.expose().len() < 16 {
                errs.push("admin.token", "must be at least 16 characters");
                None
            } else {
                Some(TokenDigest::of(t.expose().as_bytes()))
            }
        }),
        None => None,
    };

    let mut resolve = HashMap::new();
    for (from, to) in &raw.upstream.resolve {
        let path = format!("upstream.resolve.{from:?}");
        let key = crate::host::split_host_port(from)
            .filter(|(_, port)| port.is_some())
            .map(|(h, p)| (h, p.unwrap_or(443)));
        match (key, to.parse::<SocketAddr>()) {
            (Some(key), Ok(addr)) => {
                resolve.insert(key, addr);
            }
            (None, _) => errs.push(
                path,
                "the key must be host:port, e.g. \"api.openai.com:443\"",
            ),
            (_, Err(_)) => errs.push(path, format!("{to:?} is not ip:port")),
        }
    }

    let nameserver = raw.upstream.nameserver.as_deref().and_then(|text| {
        let parsed = text.parse::<SocketAddr>().or_else(|_| {
            text.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        });
        match parsed {
            Ok(addr) => Some(addr),
            Err(_) => {
                errs.push(
                    "upstream.nameserver",
                    format!("{text:?} is not ip or ip:port (a DNS server's address)"),
                );
                None
            }
        }
    });

    if raw.limits.max_header_bytes > super::HEAD_LIMIT {
        errs.push(
            "limits.max_header_bytes",
            format!(
                "{} is above {}: the request-smuggling guard checks heads up to 64 KiB and could not check a larger one",
                raw.limits.max_header_bytes,
                super::HEAD_LIMIT
            ),
        );
    }
    if raw.store.snapshot.is_some() && raw.store.master_key_file.is_none() {
        errs.push(
            "store.snapshot",
            "needs store.master_key_file: without it every start has a new key and could not read the snapshot",
        );
    }
    let services = services(&raw.services, env, &mut errs);
    let names: HashSet<&str> = raw.services.iter().map(|s| s.name.as_str()).collect();
    let agents = agents(&raw.agents, &names, env, &mut errs);
    let agent_policies = agent_policies(&raw.agents, &names, &mut errs);
    let agent_names: HashSet<&str> = raw.agents.iter().map(|a| a.name.as_str()).collect();
    budgets(&raw.budgets, &names, &agent_names, &mut errs);
    let budget_store = budget_store(&raw.budget_store, env, &mut errs);
    let approvals = raw.approvals.as_ref().map(|a| approvals(a, env, &mut errs));
    let reload = errs.take(reload::check(&raw.reload)).unwrap_or_default();

    let config = Config {
        proxy: ProxyConfig {
            listen: proxy_listen,
            unmatched: raw.proxy.unmatched,
            require_auth: raw.proxy.require_auth,
            allow_private,
        },
        admin: AdminConfig {
            listen: admin_listen,
            token: admin_token,
            allowed_origins: raw.admin.allowed_origins,
            allowed_hosts: raw.admin.allowed_hosts,
        },
        audit: raw.audit,
        limits: raw.limits,
        ca: raw.ca,
        store: raw.store,
        upstream: UpstreamConfig {
            extra_ca: raw.upstream.extra_ca,
            resolve,
            nameserver,
            connect_timeout: raw.upstream.connect_timeout.0,
            request_timeout: raw.upstream.request_timeout.0,
        },
        connectors: raw.connectors,
        services,
        agents: Agents::new(agents),
        agent_policies,
        policies: raw.policies,
        budgets: raw.budgets,
        budget_store,
        approvals,
        reload,
        sources: Default::default(),
        warnings: errs.1,
        vault: None,
    };
    (config, errs.0)
}

fn addr(value: &Interp, env: &dyn Env, path: &str) -> Result<SocketAddr, ConfigError> {
    let text = value.resolve_plain(env, path)?;
    text.parse().map_err(|_| {
        ConfigError::at(
            path,
            format!("{text:?} is not ip:port, e.g. 127.0.0.1:8080"),
        )
    })
}

fn services(raw: &[RawService], env: &dyn Env, errs: &mut Errors) -> Vec<ServiceConfig> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, s) in raw.iter().enumerate() {
        let path = format!("services[{i}]");
        if !valid_name(&s.name) {
            errs.push(
                format!("{path}.name"),
                format!(
                    "{:?} is not a service name (letters, digits, '-', '_', '.')",
                    s.name
                ),
            );
            continue;
        }
        if !seen.insert(s.name.as_str()) {
            errs.push(
                format!("{path}.name"),
                format!("duplicate service name {:?}", s.name),
            );
            continue;
        }
        let mut creds = Credentials::default();
        for (field, value) in &s.credentials {
            let fpath = format!("{path}.credentials.{field}");
            if let Some(v) = errs.take(value.resolve(env, &fpath)) {
                creds.insert(field.clone(), zeroize::Zeroizing::new(v.expose().clone()));
            }
        }
        let mut entry = EntrySpec {
            notes: s.notes.clone(),
            url: s.url.clone(),
            username: s.username.clone(),
            fields: Vec::new(),
        };
        for (j, f) in s.fields.iter().enumerate() {
            let fpath = format!("{path}.fields[{j}]");
            if !valid_name(&f.name) {
                errs.push(
                    format!("{fpath}.name"),
                    format!("{:?} is not a field name", f.name),
                );
            } else if let Some(v) = errs.take(f.value.resolve(env, &format!("{fpath}.value"))) {
                entry.fields.push((f.name.clone(), v, f.sensitive));
            }
        }
        out.push(ServiceConfig {
            key: path,
            name: s.name.clone(),
            connector: s.connector.clone(),
            credentials: creds,
            default: s.default,
            entry,
            policy: s.policy.clone(),
            readonly: s.readonly,
        });
    }
    out
}

fn agents(
    raw: &[RawAgent],
    services: &HashSet<&str>,
    env: &dyn Env,
    errs: &mut Errors,
) -> Vec<Agent> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, a) in raw.iter().enumerate() {
        let path = format!("agents[{i}]");
        if !valid_name(&a.name) || a.name.contains(':') {
            errs.push(
                format!("{path}.name"),
                format!(
                    "{:?} is not an agent name (letters, digits, '-', '_', '.')",
                    a.name
                ),
            );
            continue;
        }
        if !seen.insert(a.name.as_str()) {
            errs.push(
                format!("{path}.name"),
                format!("duplicate agent name {:?}", a.name),
            );
            continue;
        }
        let token = match (&a.token, &a.token_sha256) {
            (Some(t), None) => errs
                .take(t.resolve(env, &format!("{path}.token")))
                .and_then(|t| {
                    if t.expose().is_empty() {
                        errs.push(format!("{path}.token"), "must not be empty");
                        None
                    } else {
                        if t.expose().len() < 16 {
                            errs.warn(
                                format_args!("{path}.token"),
                                "shorter than 16 characters: a process that can reach the proxy port could guess it (use `openssl rand -hex 32`)",
                            );
                        }
                        Some(TokenDigest::of(t.expose().as_bytes()))
                    }
                }),
            (None, Some(hex)) => {
                let d = TokenDigest::from_hex(hex);
                if d.is_none() {
                    errs.push(
                        format!("{path}.token_sha256"),
                        "must be 64 hex characters (SHA-256 of the token)",
                    );
                }
                d
            }
            _ => {
                errs.push(
                    format!("{path}.token"),
                    "set exactly one of token or token_sha256",
                );
                None
            }
        };
        let scope = if a.services.iter().any(|s| s == "*") {
            Scope::All
        } else {
            for (j, s) in a.services.iter().enumerate() {
                if !services.contains(s.as_str()) {
                    errs.push(
                        format!("{path}.services[{j}]"),
                        format!("no service named {s:?} in services"),
                    );
                }
            }
            Scope::Services(a.services.iter().cloned().collect())
        };
        let mut token_scopes = HashMap::new();
        if let Some(raw) = &a.github_app {
            match super::scopes::github_app(raw) {
                Ok(s) => {
                    token_scopes.insert(
                        super::scopes::GITHUB_APP_CONNECTOR.to_owned(),
                        std::sync::Arc::new(s),
                    );
                }
                Err((key, message)) => {
                    let key = if key.is_empty() {
                        format!("{path}.github_app")
                    } else {
                        format!("{path}.github_app.{key}")
                    };
                    errs.push(key, message);
                }
            }
        }
        if let Some(token) = token {
            out.push(Agent {
                name: a.name.clone(),
                token,
                scope,
                reveal: a.reveal,
                in_flight: Default::default(),
                token_scopes,
            });
        }
    }
    out
}

/// `agents[i].policies`: each names a service the agent may use.
fn agent_policies(
    raw: &[RawAgent],
    services: &HashSet<&str>,
    errs: &mut Errors,
) -> Vec<AgentPolicy> {
    let mut out = Vec::new();
    for (i, a) in raw.iter().enumerate() {
        for (service, policy) in &a.policies {
            let key = format!("agents[{i}].policies.{service}");
            if !services.contains(service.as_str()) {
                errs.push(&key, format!("no service named {service:?} in services"));
                continue;
            }
            out.push(AgentPolicy {
                key,
                agent: a.name.clone(),
                service: service.clone(),
                policy: policy.clone(),
            });
        }
    }
    out
}

/// Budgets: names unique, the agent and service defined, and either a
/// window with one limit or a rate.
fn budgets(
    raw: &[guardrails::RawBudget],
    services: &HashSet<&str>,
    agents: &HashSet<&str>,
    errs: &mut Errors,
) {
    let mut seen = HashSet::new();
    for (i, b) in raw.iter().enumerate() {
        let path = format!("budgets[{i}]");
        if !valid_name(&b.name) {
            errs.push(
                format!("{path}.name"),
                format!("{:?} is not a budget name", b.name),
            );
        } else if !seen.insert(b.name.as_str()) {
            errs.push(
                format!("{path}.name"),
                format!("duplicate budget name {:?}", b.name),
            );
        }
        if !services.contains(b.service.as_str()) {
            errs.push(
                format!("{path}.service"),
                format!("no service named {:?} in services", b.service),
            );
        }
        if let Some(agent) = &b.agent {
            if !agents.contains(agent.as_str()) {
                errs.push(
                    format!("{path}.agent"),
                    format!("no agent named {agent:?} in agents"),
                );
            }
        }
        match (&b.window, b.limit.is_empty(), &b.rate) {
            (Some(window), false, None) => {
                if crate::config::guardrails::window_seconds(window).is_none() {
                    errs.push(
                        format!("{path}.window"),
                        format!("{window:?} is not a window: 1m, 1h, 1d, 7d or 30d"),
                    );
                }
                if b.limit.len() > 1 {
                    errs.push(
                        format!("{path}.limit"),
                        "one unit per budget: requests, tokens, input_tokens, output_tokens or spend (define another budget for another unit)",
                    );
                }
                for (unit, amount) in &b.limit {
                    if guardrails::Unit::parse(unit).is_none() {
                        errs.push(
                            format!("{path}.limit.{unit}"),
                            "not a unit: requests, tokens, input_tokens, output_tokens or spend",
                        );
                    }
                    if !(amount.is_finite() && *amount >= 0.0) {
                        errs.push(format!("{path}.limit.{unit}"), "must be a number ≥ 0");
                    }
                }
            }
            (None, true, Some(rate)) => {
                let burst = rate.burst.unwrap_or(rate.requests);
                let positive = rate.requests.is_finite()
                    && rate.requests > 0.0
                    && burst.is_finite()
                    && burst >= 1.0;
                if !positive || rate.per.0.is_zero() {
                    errs.push(
                        format!("{path}.rate"),
                        "requests and burst must be positive numbers (burst ≥ 1) and per a duration above 0",
                    );
                }
            }
            _ => errs.push(
                path,
                "give either window and limit (a budget) or rate (a rate limit)",
            ),
        }
    }
}

fn approvals(raw: &guardrails::RawApprovals, env: &dyn Env, errs: &mut Errors) -> ApprovalsConfig {
    if raw.hold.0.is_zero() || raw.ttl.0 < raw.hold.0 {
        errs.push(
            "approvals",
            "hold must be above 0 and ttl at least as long as hold",
        );
    }
    let webhook = raw.webhook.as_ref().and_then(|w| {
        let url = match w.url.parse::<http::Uri>() {
            Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() => u,
            _ => {
                errs.push(
                    "approvals.webhook.url",
                    format!("{:?} is not an https:// URL", w.url),
                );
                return None;
            }
        };
        let host = url.host().unwrap_or_default().to_ascii_lowercase();
        let secret = match &w.secret {
            Some(s) => errs.take(s.resolve(env, "approvals.webhook.secret")),
            None => None,
        };
        if secret.is_none() && w.format == guardrails::WebhookFormat::Json {
            errs.push(
                "approvals.webhook.secret",
                "a json webhook needs a secret: its receiver checks X-Clavis-Signature with it",
            );
        }
        Some(WebhookConfig {
            url,
            host,
            secret,
            format: w.format,
        })
    });
    ApprovalsConfig {
        hold: raw.hold.0,
        ttl: raw.ttl.0,
        webhook,
    }
}

fn budget_store(raw: &guardrails::RawBudgetStore, env: &dyn Env, errs: &mut Errors) -> BudgetStore {
    let Some(value) = &raw.0 else {
        return BudgetStore::Memory;
    };
    let Some(url) = errs.take(value.resolve(env, "budget_store")) else {
        return BudgetStore::Memory;
    };
    let text = url.expose();
    if text == "memory" {
        BudgetStore::Memory
    } else if text.starts_with("redis://") || text.starts_with("rediss://") {
        BudgetStore::Redis(url)
    } else {
        errs.push(
            "budget_store",
            "must be memory, or a redis:// or rediss:// URL",
        );
        BudgetStore::Memory
    }
}

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Best-effort line of a key path in the source: walks the path's keys down
/// the YAML text by indentation (list indices pick the n-th `-` item).
pub(super) fn line_of(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut from = 0;
    let mut found = None;
    for segment in path.split('.') {
        let (key, index) = match segment.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let key = key.trim_matches('"');
        let pos = (from..lines.len()).find(|&i| {
            let l = lines[i].trim_start().trim_start_matches("- ");
            l.starts_with(&format!("{key}:"))
                || l.contains(&format!("{{ {key}:"))
                || l.contains(&format!(", {key}:"))
        })?;
        found = Some(pos);
        from = pos;
        if let Some(n) = index {
            // Block lists (`- item`): the n-th item; a flow list (`[a, b]`)
            // or a list that cannot be followed stays on the key's line.
            if lines[pos].contains('[') {
                return Some(pos + 1);
            }
            let Some(first) = lines[pos + 1..]
                .iter()
                .find(|l| l.trim_start().starts_with('-'))
            else {
                return Some(pos + 1);
            };
            let indent = first.len() - first.trim_start().len();
            let item = (pos + 1..lines.len())
                .filter(|&i| {
                    let l = lines[i];
                    l.len() - l.trim_start().len() == indent && l.trim_start().starts_with('-')
                })
                .nth(n);
            let Some(item) = item else {
                return Some(pos + 1);
            };
            found = Some(item);
            from = item;
        }
    }
    found.map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HashMap<String, String> {
        [("OPENAI_API_KEY".to_string(), "sk-real".to_string())].into()
    }

    fn check(yaml: &str) -> Result<Config, ConfigErrors> {
        Config::from_yaml(yaml, &env())
    }

    mod validate {
        use super::*;

        #[test]
        fn empty_file_gives_defaults() {
            let c = check("").unwrap();
            assert_eq!(c.proxy.listen.to_string(), "127.0.0.1:8080");
            assert_eq!(c.admin.listen.to_string(), "127.0.0.1:1984");
            assert!(c.services.is_empty());
        }

        #[test]
        fn unknown_key_is_named_with_line() {
            let e = check("proxy:\n  lisen: 1.2.3.4:1\n").unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains("proxy") && msg.contains("lisen") && msg.contains("line 2"),
                "{msg}"
            );
        }

        #[test]
        fn heads_larger_than_the_smuggling_guard_reads_are_refused() {
            let e = check("limits: { max_header_bytes: 65537 }\n").unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains("limits.max_header_bytes") && msg.contains("smuggling guard"),
                "{msg}"
            );
            let c = check("limits: { max_header_bytes: 65536 }\n").unwrap();
            assert_eq!(c.limits.max_header_bytes, 65536);
        }

        #[test]
        fn unset_env_is_named() {
            let e = check("services:\n  - { name: a, connector: openai, credentials: { api_key: \"${MISSING}\" } }\n").unwrap_err();
            assert!(e
                .to_string()
                .contains("environment variable MISSING is not set"));
        }

        #[test]
        fn env_overrides_sections() {
            let env: HashMap<String, String> = [
                (
                    "CLAVIS_PROXY_LISTEN".to_string(),
                    "127.0.0.1:9999".to_string(),
                ),
                ("CLAVIS_PROXY_REQUIRE_AUTH".to_string(), "true".to_string()),
                (
                    "CLAVIS_UPSTREAM_CONNECT_TIMEOUT".to_string(),
                    "3s".to_string(),
                ),
            ]
            .into();
            let c = Config::from_yaml("", &env).unwrap();
            assert_eq!(c.proxy.listen.port(), 9999);
            assert!(c.proxy.require_auth);
            assert_eq!(
                c.upstream.connect_timeout,
                std::time::Duration::from_secs(3)
            );
        }

        #[test]
        fn a_short_agent_token_is_a_warning_not_an_error() {
            let yaml = "agents:\n  - { name: a, token: short, services: [\"*\"] }\n  - { name: b, token: 0123456789abcdef0123, services: [\"*\"] }\n";
            let c = check(yaml).unwrap();
            assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
            assert!(c.warnings[0].starts_with("agents[0].token: shorter than 16"));
            assert!(
                !c.warnings[0].contains("short,"),
                "the token is never quoted"
            );
        }

        #[test]
        fn remote_proxy_needs_auth() {
            let e = check("proxy:\n  listen: 0.0.0.0:8080\n").unwrap_err();
            assert!(
                e.to_string().contains("proxy.listen") && e.to_string().contains("require_auth"),
                "{e}"
            );
            let c = check("proxy:\n  listen: 0.0.0.0:8080\n  require_auth: true\n").unwrap();
            assert!(c.proxy.require_auth);
            assert!(check("proxy:\n  listen: \"[::1]:8080\"\n").is_ok());
        }

        #[test]
        fn remote_admin_needs_opt_in() {
            let e = check("admin:\n  listen: 0.0.0.0:1984\n").unwrap_err();
            assert!(e.to_string().contains("allow_remote"));
        }

        #[test]
        fn resolve_keys_need_a_port() {
            let e =
                check("upstream:\n  resolve: { api.openai.com: \"127.0.0.1:1\" }\n").unwrap_err();
            assert!(e.to_string().contains("host:port"), "{e}");
        }
    }
}
