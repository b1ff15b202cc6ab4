//! Config: YAML → serde structs (unknown keys are errors) → `CLAVIS_*`
//! overrides → [`validate`] → a typed [`Config`]. Every YAML call of the
//! crate lives in this module. What needs the connectors (a service's
//! connector, its credential fields) is checked one layer up, in
//! `catalog`, with the same key paths and lines.

pub(crate) mod connectors;
pub(crate) mod env;
pub(crate) mod guardrails;
pub(crate) mod reload;
mod scopes;
mod validate;
pub(crate) mod vault;

pub(crate) use connectors::{ClientAuth, Grant, InjectSpec, OAuth2Spec, RecipeSpec, UserConnector};
pub(crate) use validate::valid_name;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub(crate) use env::Interp;
pub use env::{Env, ProcessEnv};

use crate::credentials::Credentials;
use crate::host::IpNet;
use crate::identity::Agents;
use crate::secret::TokenDigest;

/// One problem in the config, named by its key path (`services[2].connector`)
/// and, where it can be found, its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
    pub line: Option<usize>,
}

impl ConfigError {
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.into(),
            message: message.into(),
            line: None,
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)?;
        } else {
            write!(f, "{}: {}", self.path, self.message)?;
        }
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        Ok(())
    }
}

/// Every problem found in one config, so `clavis check` can list them all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl ConfigErrors {
    /// Fills in the line of every error that has none, from its key path
    /// in the source text.
    pub fn locate(mut self, text: &str) -> ConfigErrors {
        for e in &mut self.0 {
            e.line = e.line.or_else(|| validate::line_of(text, &e.path));
        }
        self
    }
}

/// A duration written the human way: `10s`, `5m`, `300ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!("{text:?} is not a duration like 10s or 5m: {e}"))
            })
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

fn secs(n: u64) -> HumanDuration {
    HumanDuration(Duration::from_secs(n))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Unmatched {
    #[default]
    Tunnel,
    Deny,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawProxy {
    pub(crate) listen: Interp,
    pub(crate) unmatched: Unmatched,
    pub(crate) require_auth: bool,
    pub(crate) allow_private: Vec<String>,
}

impl Default for RawProxy {
    fn default() -> Self {
        RawProxy {
            listen: Interp("127.0.0.1:8080".into()),
            unmatched: Unmatched::Tunnel,
            require_auth: false,
            allow_private: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAdmin {
    pub(crate) listen: Interp,
    pub(crate) token: Option<Interp>,
    pub(crate) allow_remote: bool,
    /// Extra `Origin` values accepted besides loopback ones (MCP web clients).
    pub(crate) allowed_origins: Vec<String>,
    /// Extra `Host` names accepted besides loopback (pod and Service names).
    pub(crate) allowed_hosts: Vec<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: Interp("127.0.0.1:1984".into()),
            token: None,
            allow_remote: false,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AuditConfig {
    /// Events kept in memory.
    pub(crate) ring: usize,
    /// JSON lines appended here; a failed write refuses the credential use.
    pub(crate) file: Option<PathBuf>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            ring: 10_000,
            file: None,
        }
    }
}

/// The largest request head clavis reads (`limits.max_header_bytes` may not
/// exceed it): its request-smuggling guard (`proxy::framing`) follows heads
/// up to this size, and could not check a larger one that hyper accepted.
pub(crate) const HEAD_LIMIT: usize = 64 * 1024;

/// Resource bounds (threat model §4). Every one has a safe default.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Limits {
    pub(crate) max_connections: usize,
    /// Open connections on the admin port.
    pub(crate) admin_connections: usize,
    pub(crate) max_tunnels: usize,
    pub(crate) header_read_timeout: HumanDuration,
    pub(crate) tls_handshake_timeout: HumanDuration,
    pub(crate) idle_timeout: HumanDuration,
    /// A raw tunnel or websocket with no byte either way for this long closes.
    pub(crate) tunnel_idle_timeout: HumanDuration,
    pub(crate) max_header_bytes: usize,
    pub(crate) max_headers: usize,
    pub(crate) max_uri_bytes: usize,
    pub(crate) h2_max_streams: u32,
    /// Upstream requests one agent may have in flight to one service.
    pub(crate) max_upstream_requests: usize,
    pub(crate) max_body_buffer: usize,
    pub(crate) leaf_cache: usize,
    pub(crate) admin_body: usize,
    pub(crate) drain_timeout: HumanDuration,
    /// The most of a request body a policy's body rules or a budget read.
    pub(crate) policy_body: usize,
    /// The output cap clavis sets on an LLM request that has none while a
    /// token budget applies: at most this, else what the budget leaves.
    pub(crate) budget_output_cap: u64,
    /// Login sessions (Kalshi email + password): idle and absolute lifetimes.
    pub(crate) session_idle: HumanDuration,
    pub(crate) session_max_age: HumanDuration,
}

impl Limits {
    /// The request-head bounds every HTTP/1 server of both ports uses.
    pub(crate) fn heads(&self) -> crate::server::HeadLimits {
        crate::server::HeadLimits {
            read_timeout: self.header_read_timeout.0,
            max_bytes: self.max_header_bytes,
            max_count: self.max_headers,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            admin_connections: 256,
            max_tunnels: 2048,
            header_read_timeout: secs(30),
            tls_handshake_timeout: secs(10),
            idle_timeout: secs(90),
            tunnel_idle_timeout: secs(15 * 60),
            max_header_bytes: HEAD_LIMIT,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
            h2_max_streams: 100,
            max_upstream_requests: 256,
            max_body_buffer: 10 * 1024 * 1024,
            leaf_cache: 1024,
            admin_body: 1024 * 1024,
            drain_timeout: secs(10),
            policy_body: 1024 * 1024,
            budget_output_cap: 16_384,
            session_idle: secs(30 * 60),
            session_max_age: secs(24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
}

impl Default for CaConfig {
    fn default() -> Self {
        CaConfig {
            cert: "certs/clavis-ca.pem".into(),
            key: "certs/clavis-ca.key".into(),
            bundle: "certs/clavis-ca-bundle.pem".into(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct StoreConfig {
    pub(crate) master_key_file: Option<PathBuf>,
    pub(crate) snapshot: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawUpstream {
    pub(crate) extra_ca: Vec<PathBuf>,
    pub(crate) resolve: BTreeMap<String, String>,
    /// A DNS server asked instead of the system resolver (`ip` or `ip:port`).
    pub(crate) nameserver: Option<String>,
    pub(crate) connect_timeout: HumanDuration,
    pub(crate) request_timeout: HumanDuration,
}

impl Default for RawUpstream {
    fn default() -> Self {
        RawUpstream {
            extra_ca: Vec::new(),
            resolve: BTreeMap::new(),
            nameserver: None,
            connect_timeout: secs(10),
            request_timeout: secs(300),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    pub(crate) name: String,
    pub(crate) connector: String,
    #[serde(default)]
    pub(crate) credentials: BTreeMap<String, Interp>,
    #[serde(default)]
    pub(crate) default: bool,
    #[serde(default)]
    pub(crate) notes: String,
    #[serde(default)]
    pub(crate) url: Option<String>,
    #[serde(default)]
    pub(crate) username: Option<String>,
    /// Custom entry fields; `sensitive: true` ones are sealed and never shown.
    #[serde(default)]
    pub(crate) fields: Vec<RawField>,
    /// The policy every request to this service must pass (SPEC §10).
    #[serde(default)]
    pub(crate) policy: Option<String>,
    /// Shorthand policy: `GET`, `HEAD` and `OPTIONS` only.
    #[serde(default)]
    pub(crate) readonly: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawField {
    pub(crate) name: String,
    pub(crate) value: Interp,
    #[serde(default)]
    pub(crate) sensitive: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAgent {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) token: Option<Interp>,
    #[serde(default)]
    pub(crate) token_sha256: Option<String>,
    #[serde(default)]
    pub(crate) services: Vec<String>,
    #[serde(default)]
    pub(crate) reveal: bool,
    /// Service → policy this agent's requests to it must pass as well.
    #[serde(default)]
    pub(crate) policies: BTreeMap<String, String>,
    /// The scope of this agent's own GitHub App installation tokens
    /// (SPEC §13.1).
    #[serde(default)]
    pub(crate) github_app: Option<RawGithubApp>,
}

/// `agents[].github_app:` — repositories and permissions of the
/// installation token minted for this agent alone.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGithubApp {
    #[serde(default)]
    pub(crate) repositories: Vec<String>,
    #[serde(default)]
    pub(crate) permissions: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawConfig {
    pub(crate) proxy: RawProxy,
    pub(crate) admin: RawAdmin,
    pub(crate) audit: AuditConfig,
    pub(crate) limits: Limits,
    pub ca: CaConfig,
    pub(crate) store: StoreConfig,
    pub(crate) upstream: RawUpstream,
    pub(crate) services: Vec<RawService>,
    pub(crate) connectors: Vec<UserConnector>,
    pub(crate) agents: Vec<RawAgent>,
    pub(crate) policies: Vec<guardrails::RawPolicy>,
    pub(crate) budgets: Vec<guardrails::RawBudget>,
    pub(crate) budget_store: guardrails::RawBudgetStore,
    pub(crate) approvals: Option<guardrails::RawApprovals>,
    pub(crate) reload: reload::RawReload,
    /// Where `${vault:…}` references are read (SPEC §13.3).
    pub(crate) vault: Option<vault::RawVault>,
}

#[derive(Debug)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub(crate) unmatched: Unmatched,
    pub(crate) require_auth: bool,
    pub(crate) allow_private: Vec<IpNet>,
}

#[derive(Debug)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub(crate) token: Option<TokenDigest>,
    pub(crate) allowed_origins: Vec<String>,
    pub(crate) allowed_hosts: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct UpstreamConfig {
    pub(crate) extra_ca: Vec<PathBuf>,
    /// `(host, port)` → socket address, like curl `--resolve`.
    pub(crate) resolve: HashMap<(String, u16), SocketAddr>,
    /// The DNS server names are resolved with, instead of the system's.
    /// Its answers are checked like any others (private addresses refused).
    pub(crate) nameserver: Option<SocketAddr>,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
}

/// A service from the config file, with its credentials resolved. Its
/// connector is checked by `catalog`.
#[derive(Debug)]
pub(crate) struct ServiceConfig {
    /// Where it is in the file (`services[2]`), for errors found later.
    pub(crate) key: String,
    pub(crate) name: String,
    pub(crate) connector: String,
    pub(crate) credentials: Credentials,
    pub(crate) default: bool,
    pub(crate) entry: EntrySpec,
    pub(crate) policy: Option<String>,
    pub(crate) readonly: bool,
}

/// `agents[i].policies.<service>: <policy>`, checked by `catalog`.
#[derive(Debug)]
pub(crate) struct AgentPolicy {
    /// `agents[2].policies.stripe`, for errors.
    pub(crate) key: String,
    pub(crate) agent: String,
    pub(crate) service: String,
    pub(crate) policy: String,
}

/// `approvals:`, checked.
#[derive(Debug)]
pub(crate) struct ApprovalsConfig {
    pub(crate) hold: Duration,
    pub(crate) ttl: Duration,
    pub(crate) webhook: Option<WebhookConfig>,
}

#[derive(Debug)]
pub(crate) struct WebhookConfig {
    /// `https://host[:port]/path`.
    pub(crate) url: http::Uri,
    pub(crate) host: String,
    pub(crate) secret: Option<crate::secret::Secret<String>>,
    pub(crate) format: guardrails::WebhookFormat,
}

/// Where budget counts are kept.
#[derive(Debug, Default)]
pub(crate) enum BudgetStore {
    /// This process; the sealed snapshot keeps them across restarts.
    #[default]
    Memory,
    /// `redis://…`: shared by every clavis pointing at it.
    Redis(crate::secret::Secret<String>),
}

/// Entry metadata as given by the config file or the API, before sealing.
#[derive(Debug, Default)]
pub(crate) struct EntrySpec {
    pub(crate) notes: String,
    pub(crate) url: Option<String>,
    pub(crate) username: Option<String>,
    /// `(name, value, sensitive)`.
    pub(crate) fields: Vec<(String, crate::secret::Secret<String>, bool)>,
}

/// The validated config: every string already turned into its type.
#[derive(Debug)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub(crate) audit: AuditConfig,
    pub(crate) limits: Limits,
    pub ca: CaConfig,
    pub(crate) store: StoreConfig,
    pub(crate) upstream: UpstreamConfig,
    /// User-defined connectors as written; `catalog` builds them.
    pub(crate) connectors: Vec<UserConnector>,
    pub(crate) services: Vec<ServiceConfig>,
    pub(crate) agents: Agents,
    pub(crate) agent_policies: Vec<AgentPolicy>,
    /// Policies as written; `catalog` compiles them.
    pub(crate) policies: Vec<guardrails::RawPolicy>,
    /// Budgets as written, checked for shape; `catalog` binds them.
    pub(crate) budgets: Vec<guardrails::RawBudget>,
    pub(crate) budget_store: BudgetStore,
    /// `None`: approve rules are refused (no one to ask).
    pub(crate) approvals: Option<ApprovalsConfig>,
    /// `reload:` (SPEC §13.2).
    pub(crate) reload: reload::ReloadConfig,
    /// The `${file:}` paths read and the restart-only settings' digests.
    pub(crate) sources: reload::Sources,
    /// `key.path: message` for what is valid but unwise (a short agent token).
    pub warnings: Vec<String>,
    /// `vault:` and the references read through it; `None`: no Vault.
    pub(crate) vault: Option<vault::VaultPlan>,
}

impl Config {
    /// Parses and validates YAML text. `source` names it in messages.
    pub fn from_yaml(text: &str, env: &dyn Env) -> Result<Config, ConfigErrors> {
        let (config, errors) = Config::with_errors(text, env)?;
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors).locate(text))
        }
    }

    /// The config as far as it is valid, and every error found (without
    /// lines): for a caller that checks more and reports all at once. Only
    /// text that is not YAML at all is an error here.
    pub fn with_errors(
        text: &str,
        env: &dyn Env,
    ) -> Result<(Config, Vec<ConfigError>), ConfigErrors> {
        let raw = parse(text)?;
        let raw = apply_overrides(raw, env)?;
        let sources = reload::Sources::of(&raw);
        let plan = vault::plan(&raw, env);
        let (mut config, mut errors) = validate::validate(raw, env);
        config.sources = sources;
        match plan {
            Ok(plan) => config.vault = plan,
            Err(found) => {
                // "needs a vault: section" says more than "was not read".
                errors.retain(|e| !found.iter().any(|f| f.path == e.path));
                errors.extend(found);
            }
        }
        Ok((config, errors))
    }

    /// What the config reads from Vault, checked, before anything else is
    /// resolved (the values must be read first). `None`: no Vault.
    pub(crate) fn vault_plan(
        text: &str,
        env: &dyn Env,
    ) -> Result<Option<vault::VaultPlan>, ConfigErrors> {
        let raw = apply_overrides(parse(text)?, env)?;
        vault::plan(&raw, env).map_err(|e| ConfigErrors(e).locate(text))
    }
}

/// A config file's text; `None` means built-in defaults (plus `CLAVIS_*`).
pub(crate) fn read(path: Option<&Path>) -> Result<String, ConfigErrors> {
    match path {
        Some(p) => std::fs::read_to_string(p).map_err(|e| {
            ConfigError::at("", format!("cannot read config file {}: {e}", p.display())).into()
        }),
        None => Ok(String::new()),
    }
}

fn parse(text: &str) -> Result<RawConfig, ConfigError> {
    if text.trim().is_empty() {
        return Ok(RawConfig::default());
    }
    serde_yaml::from_str(text).map_err(|e| {
        let line = e.location().map(|l| l.line());
        // serde_yaml's message already starts with the key path when it knows it.
        let mut message = e.to_string();
        if let Some(pos) = message.rfind(" at line ") {
            message.truncate(pos);
        }
        let (path, message) = match message.split_once(": ") {
            Some((p, m)) if !p.contains(' ') => (p.to_owned(), m.to_owned()),
            _ => (String::new(), message),
        };
        ConfigError {
            path,
            message,
            line,
        }
    })
}

fn apply_overrides(mut raw: RawConfig, env: &dyn Env) -> Result<RawConfig, ConfigError> {
    use env::override_section as o;
    raw.proxy = o("proxy", raw.proxy, env)?;
    raw.admin = o("admin", raw.admin, env)?;
    raw.audit = o("audit", raw.audit, env)?;
    raw.limits = o("limits", raw.limits, env)?;
    raw.ca = o("ca", raw.ca, env)?;
    raw.store = o("store", raw.store, env)?;
    raw.upstream = o("upstream", raw.upstream, env)?;
    raw.reload = o("reload", raw.reload, env)?;
    Ok(raw)
}
