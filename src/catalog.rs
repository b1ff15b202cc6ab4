//! What clavis serves, built from a config: the connector [`Registry`]
//! (built-in plus user-defined), the config's services bound to their
//! connectors (credentials checked against each connector's fields), the
//! compiled policies and what they apply to, and the budgets.
//! [`Settings`] is a config with its catalog: what `clavis check`
//! validates and what `serve` runs on. Errors carry the config's key paths
//! and lines, like the config's own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::budget;
use crate::config::guardrails::Unit;
use crate::config::vault::{VaultValues, WithVault};
use crate::config::{Config, ConfigError, ConfigErrors, EntrySpec, Env};
use crate::connector::{user, Connector, Registry};
use crate::credentials::Credentials;
use crate::identity::Agents;
use crate::policy::{Policies, Policy};
use crate::secret::Secret;
use crate::vault::{Resolver, VaultError};

/// A config service with its connector.
#[derive(Debug)]
pub(crate) struct BoundService {
    pub(crate) name: String,
    pub(crate) connector: Arc<Connector>,
    pub(crate) credentials: Credentials,
    /// Credentials read from a secret source (`${vault:…}`): kept in
    /// memory only, never in the snapshot, and refreshed.
    pub(crate) sourced: bool,
    pub(crate) default: bool,
    pub(crate) entry: EntrySpec,
}

#[derive(Debug)]
pub(crate) struct Catalog {
    pub(crate) registry: Registry,
    /// The config's services, taken out of the config (their credentials
    /// are sealed into the store at start, then dropped).
    pub(crate) services: Vec<BoundService>,
    pub(crate) policies: Policies,
    /// Taken by the state, which keeps their counts.
    pub(crate) budgets: Vec<budget::Spec>,
}

/// What a reload swaps (SPEC §13.2): the connectors, the agents, the
/// policies and the budgets of one config. A tunnel takes it at `CONNECT`
/// and keeps it; a call on the admin port takes it once; nothing reads
/// part of one and part of another.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) registry: Registry,
    pub(crate) policies: Policies,
    pub(crate) agents: Agents,
    pub(crate) budgets: budget::Specs,
}

impl Live {
    /// Takes the reloadable parts out of a config and its catalog (the
    /// services stay in the catalog, for the store).
    pub(crate) fn take(config: &mut Config, catalog: &mut Catalog) -> Live {
        Live {
            registry: std::mem::replace(&mut catalog.registry, Registry::builtin()),
            policies: std::mem::take(&mut catalog.policies),
            agents: std::mem::take(&mut config.agents),
            budgets: budget::Specs::new(std::mem::take(&mut catalog.budgets)),
        }
    }
}

/// Where a config was read from, so that a reload reads it again the same
/// way (the same file, the same environment).
#[derive(Clone)]
pub(crate) struct Source {
    pub(crate) path: PathBuf,
    pub(crate) env: Arc<dyn Env + Send + Sync>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Adds a config service to the store: its credentials sealed there and
/// their plaintext dropped with `s`.
pub(crate) fn add_service(
    store: &crate::store::Store,
    s: BoundService,
) -> Result<(), crate::store::StoreError> {
    store.add(
        &s.name,
        s.connector.clone(),
        s.default,
        crate::store::Origin::Config,
    )?;
    if s.sourced {
        // Read from a secret store: never written to the snapshot.
        store.set_sourced_credentials(&s.name, &s.credentials)?;
    } else if !s.credentials.is_empty() {
        store.set_credentials(&s.name, &s.credentials, false)?;
    }
    store.set_entry(&s.name, s.entry)?;
    Ok(())
}

/// What the running config was built from, for the next reload to
/// compare against: the files' fingerprint, the restart-only settings,
/// and a keyed digest of each config service (connector, default,
/// credentials, entry). The digests are HMACs under a key of this
/// process, so they say nothing about a credential to anyone who sees one.
pub(crate) struct Applied {
    pub(crate) source: Option<Source>,
    pub(crate) fingerprint: Option<[u8; 32]>,
    pub(crate) sources: crate::config::reload::Sources,
    services: HashMap<String, [u8; 32]>,
    key: ring::hmac::Key,
}

impl std::fmt::Debug for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applied")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Applied {
    pub(crate) fn new(
        source: Option<Source>,
        sources: crate::config::reload::Sources,
        services: &[BoundService],
    ) -> Applied {
        use ring::rand::SecureRandom;
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        // A failed fill leaves a zero key: the digests are then unkeyed,
        // still compared only, never shown.
        let _ = ring::rand::SystemRandom::new().fill(bytes.as_mut());
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes.as_ref());
        let mut applied = Applied {
            source,
            fingerprint: None,
            sources,
            services: HashMap::new(),
            key,
        };
        applied.fingerprint = applied.fingerprint_now();
        applied.keep_services(services);
        applied
    }

    /// A keyed digest of the config file and every `${file:}` it read:
    /// what the watcher and the poll compare (`None` without a file).
    pub(crate) fn fingerprint_now(&self) -> Option<[u8; 32]> {
        let source = self.source.as_ref()?;
        Some(self.fingerprint_of(&crate::config::reload::contents(
            &source.path,
            &self.sources.files,
        )))
    }

    pub(crate) fn fingerprint_of(&self, contents: &[u8]) -> [u8; 32] {
        self.mac(&[contents])
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = ring::hmac::Context::with_key(&self.key);
        for p in parts {
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(mac.sign().as_ref());
        out
    }

    fn service_digest(&self, s: &BoundService) -> [u8; 32] {
        let creds = s.credentials.encode();
        let mut entry = zeroize::Zeroizing::new(Vec::new());
        for part in [
            s.entry.notes.as_str(),
            s.entry.url.as_deref().unwrap_or("\0none"),
            s.entry.username.as_deref().unwrap_or("\0none"),
        ] {
            entry.extend_from_slice(&(part.len() as u64).to_be_bytes());
            entry.extend_from_slice(part.as_bytes());
        }
        for (name, value, sensitive) in &s.entry.fields {
            let flag = [u8::from(*sensitive)];
            for part in [name.as_bytes(), value.expose().as_bytes(), &flag[..]] {
                entry.extend_from_slice(&(part.len() as u64).to_be_bytes());
                entry.extend_from_slice(part);
            }
        }
        let default = [u8::from(s.default)];
        self.mac(&[
            s.connector.name.as_bytes(),
            &default[..],
            &creds[..],
            &entry[..],
        ])
    }

    /// Whether the file says something new about this service (`true`
    /// for one it did not have).
    pub(crate) fn service_changed(&self, s: &BoundService) -> bool {
        self.services.get(&s.name) != Some(&self.service_digest(s))
    }

    pub(crate) fn keep_services(&mut self, services: &[BoundService]) {
        self.services = self.digests(services);
    }

    /// The digests [`Applied::keep_services`] keeps, to keep later.
    pub(crate) fn digests(&self, services: &[BoundService]) -> HashMap<String, [u8; 32]> {
        services
            .iter()
            .map(|s| (s.name.clone(), self.service_digest(s)))
            .collect()
    }

    pub(crate) fn set_digests(&mut self, digests: HashMap<String, [u8; 32]>) {
        self.services = digests;
    }
}

/// A validated config and what it describes.
#[derive(Debug)]
pub struct Settings {
    pub config: Config,
    pub(crate) catalog: Catalog,
    /// `None` for a config that came as text: nothing to reload from.
    pub(crate) source: Option<Source>,
    /// Reads the `${vault:…}` references again (refresh, reload).
    pub(crate) vault: Option<Arc<Resolver>>,
}

/// Why `serve` or `check` cannot start from a config: its errors, or a
/// Vault reference that could not be read. Both exit with status 2.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("{0}")]
    Vault(#[from] VaultError),
}

impl Settings {
    /// Reads and checks a config file, and keeps where it came from so
    /// that `SIGHUP`, `POST /v1/reload` and the file watcher can read it
    /// again (SPEC §13.2).
    pub fn from_file(
        path: &Path,
        env: Arc<dyn Env + Send + Sync>,
    ) -> Result<Settings, ConfigErrors> {
        let text = crate::config::read(Some(path))?;
        let mut settings = Settings::from_yaml(&text, env.as_ref())?;
        settings.source = Some(Source {
            path: path.to_owned(),
            env,
        });
        Ok(settings)
    }

    /// Reads and checks a config file (`None`: built-in defaults plus
    /// `CLAVIS_*`), reporting every error with its key path and line.
    pub fn load(path: Option<&Path>, env: &dyn Env) -> Result<Settings, ConfigErrors> {
        Settings::from_yaml(&crate::config::read(path)?, env)
    }

    /// Reads a config file and every secret it references in Vault (each
    /// once), then checks it: what `serve` and `check` start from. The
    /// resolver it keeps re-reads the secrets (refresh, reload).
    pub async fn load_resolved(
        path: Option<&Path>,
        env: Arc<dyn Env + Send + Sync>,
    ) -> Result<Settings, LoadError> {
        let text = crate::config::read(path)?;
        let mut settings = Settings::resolve(text, env.clone()).await?;
        // From a file, the settings keep where they came from: SIGHUP,
        // POST /v1/reload and the watcher read it again (SPEC §13.2).
        settings.source = path.map(|path| Source {
            path: path.to_owned(),
            env,
        });
        Ok(settings)
    }

    /// [`Settings::load_resolved`] from the config's text.
    pub async fn resolve(
        text: String,
        env: Arc<dyn Env + Send + Sync>,
    ) -> Result<Settings, LoadError> {
        let Some(plan) = Config::vault_plan(&text, &*env)? else {
            return Ok(Settings::from_yaml(&text, &*env)?);
        };
        let resolver = Resolver::new(plan, Secret::new(text), env)?;
        let values = resolver.read_all().await?;
        let mut settings = Settings::with_vault(&resolver, &values)?;
        settings.vault = Some(Arc::new(resolver));
        Ok(settings)
    }

    /// The resolver's config validated with `values` read from Vault.
    pub(crate) fn with_vault(
        resolver: &Resolver,
        values: &VaultValues,
    ) -> Result<Settings, ConfigErrors> {
        let env = WithVault {
            env: resolver.env(),
            values,
        };
        Settings::from_yaml(resolver.source(), &env)
    }

    pub fn from_yaml(text: &str, env: &dyn Env) -> Result<Settings, ConfigErrors> {
        let (mut config, mut errors) = Config::with_errors(text, env)?;
        let catalog = Catalog::build(&mut config, &mut errors);
        if errors.is_empty() {
            Ok(Settings {
                config,
                catalog,
                source: None,
                vault: None,
            })
        } else {
            Err(ConfigErrors(errors).locate(text))
        }
    }
}

impl Catalog {
    /// Builds the registry and binds the config's services to it, adding
    /// every problem to `errors`.
    fn build(config: &mut Config, errors: &mut Vec<ConfigError>) -> Catalog {
        let registry = registry(config, errors);
        let policies = policies(config, &registry, errors);
        let budgets = budgets(config, &registry, errors);
        let mut services = Vec::new();
        let mut defaults: HashMap<String, String> = HashMap::new();
        for s in std::mem::take(&mut config.services) {
            let Some(connector) = registry.get(&s.connector) else {
                errors.push(ConfigError::at(
                    format!("{}.connector", s.key),
                    format!(
                        "unknown connector {:?}; known: {}",
                        s.connector,
                        registry.names().join(", ")
                    ),
                ));
                continue;
            };
            if s.default {
                // One default per host: connectors that share hosts share it.
                let family = registry
                    .family(&connector.name)
                    .first()
                    .map_or(connector.name.clone(), |lead| lead.name.clone());
                if let Some(other) = defaults.insert(family, s.name.clone()) {
                    errors.push(ConfigError::at(
                        format!("{}.default", s.key),
                        format!(
                            "{other:?} is already the default for connector {:?}",
                            connector.name
                        ),
                    ));
                }
            }
            if !s.credentials.is_empty() {
                if let Err(msg) = connector.validate(&s.credentials) {
                    errors.push(ConfigError::at(
                        format!("{}.credentials", s.key),
                        msg.to_string(),
                    ));
                }
            }
            let sourced = config.vault.as_ref().is_some_and(|v| {
                let prefix = format!("{}.credentials.", s.key);
                v.refs.iter().any(|(path, _)| path.starts_with(&prefix))
            });
            services.push(BoundService {
                name: s.name,
                connector: connector.clone(),
                credentials: s.credentials,
                sourced,
                default: s.default,
                entry: s.entry,
            });
        }
        Catalog {
            registry,
            services,
            policies,
            budgets,
        }
    }
}

/// Compiles every policy and attaches it to the services and agents that
/// name it. A rule's host must be one its service's connector claims, and
/// a body rule cannot apply to a `GET` (a websocket's messages are never
/// seen).
fn policies(config: &Config, registry: &Registry, errors: &mut Vec<ConfigError>) -> Policies {
    let mut out = Policies::default();
    let mut by_name: HashMap<String, (usize, Arc<Policy>)> = HashMap::new();
    for (i, raw) in config.policies.iter().enumerate() {
        let key = format!("policies[{i}]");
        if !crate::config::valid_name(&raw.name) {
            errors.push(ConfigError::at(
                format!("{key}.name"),
                format!("{:?} is not a policy name", raw.name),
            ));
            continue;
        }
        let policy = match Policy::compile(raw) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                errors.push(ConfigError::at(format!("{key}.{}", e.key), e.message));
                continue;
            }
        };
        if let Some(rule) = policy.body_rules_on_get() {
            errors.push(ConfigError::at(
                key.clone(),
                format!("rule {rule:?} reads the body but could match a GET, and a websocket upgrade's messages are never seen: give it methods without GET"),
            ));
        }
        if by_name
            .insert(raw.name.clone(), (i, policy.clone()))
            .is_some()
        {
            errors.push(ConfigError::at(
                format!("{key}.name"),
                format!("duplicate policy name {:?}", raw.name),
            ));
            continue;
        }
        out.all.push(policy);
    }
    let connector_of = |service: &str| {
        config
            .services
            .iter()
            .find(|s| s.name == service)
            .and_then(|s| registry.get(&s.connector))
    };
    let attach = |key: &str, name: &str, service: &str, errors: &mut Vec<ConfigError>| {
        let Some((_, policy)) = by_name.get(name) else {
            errors.push(ConfigError::at(
                key,
                format!("no policy named {name:?} in policies"),
            ));
            return None;
        };
        if let Some(connector) = connector_of(service) {
            for (rule, host) in policy.rule_hosts() {
                if !connector.hosts.iter().any(|h| h.matches(host)) {
                    errors.push(ConfigError::at(
                        key,
                        format!("policy {name:?} rule {rule:?} names host {host:?}, which service {service:?} (connector {:?}) does not claim", connector.name),
                    ));
                }
            }
        }
        Some(policy.clone())
    };
    for s in &config.services {
        if let Some(name) = &s.policy {
            if let Some(p) = attach(&format!("{}.policy", s.key), name, &s.name, errors) {
                out.attach_to_service(&s.name, p);
            }
        }
        if s.readonly {
            out.attach_to_service(&s.name, Arc::new(Policy::readonly()));
        }
    }
    for a in &config.agent_policies {
        if let Some(p) = attach(&a.key, &a.policy, &a.service, errors) {
            out.attach_to_agent(&a.agent, &a.service, p);
        }
    }
    out
}

/// Budgets bound to their services: a unit the service's API cannot
/// report is an error (it would count nothing and refuse nothing).
fn budgets(
    config: &Config,
    registry: &Registry,
    errors: &mut Vec<ConfigError>,
) -> Vec<budget::Spec> {
    let mut out = Vec::new();
    for (i, raw) in config.budgets.iter().enumerate() {
        let Some(spec) = budget::Spec::from_raw(raw) else {
            continue; // its shape was reported by config
        };
        let connector = config
            .services
            .iter()
            .find(|s| s.name == spec.service)
            .and_then(|s| registry.get(&s.connector));
        if let (Some(unit), Some(connector)) = (spec.unit(), connector) {
            let meter = connector.meter;
            let ok = match unit {
                Unit::Requests => true,
                Unit::Tokens | Unit::InputTokens | Unit::OutputTokens => meter.reports_tokens(),
                Unit::Spend => meter.reports_spend(),
            };
            if !ok {
                errors.push(ConfigError::at(
                    format!("budgets[{i}].limit.{}", unit.as_str()),
                    format!(
                        "service {:?} (connector {:?}) reports no {}: tokens are counted for openai and anthropic, spend for stripe, kalshi and coinbase",
                        spec.service,
                        connector.name,
                        unit.as_str()
                    ),
                ));
                continue;
            }
        }
        out.push(spec);
    }
    out
}

/// The built-in connectors plus the config's; on an error the built-in
/// ones alone, so the services can still be checked against them.
fn registry(config: &Config, errors: &mut Vec<ConfigError>) -> Registry {
    let mut built = Vec::new();
    let mut positions = Vec::new();
    for (i, spec) in config.connectors.iter().enumerate() {
        match user::build(spec) {
            Ok(c) => {
                built.push(c);
                positions.push(i);
            }
            Err(e) => errors.push(ConfigError::at(
                format!("connectors[{i}].{}", e.key),
                e.message,
            )),
        }
    }
    match Registry::new(built) {
        Ok(r) => r,
        Err(e) => {
            let path = match e.user_index.and_then(|i| positions.get(i)) {
                Some(i) => format!("connectors[{i}].{}", e.key),
                None => "connectors".into(),
            };
            errors.push(ConfigError::at(path, e.message));
            Registry::builtin()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HashMap<String, String> {
        [("OPENAI_API_KEY".to_string(), "sk-real".to_string())].into()
    }

    fn check(yaml: &str) -> Result<Settings, ConfigErrors> {
        Settings::from_yaml(yaml, &env())
    }

    #[test]
    fn two_line_openai_config() {
        let s = check("services:\n  - { name: openai, connector: openai, credentials: { api_key: \"${OPENAI_API_KEY}\" } }\n").unwrap();
        assert_eq!(
            s.catalog.services[0].credentials.get("api_key"),
            Some("sk-real")
        );
    }

    #[test]
    fn every_error_is_reported_with_path_and_line() {
        let yaml = "\
services:
  - name: a
    connector: openai
  - name: b
    connector: opnai
agents:
  - name: x
    token: t
    services: [nope]
";
        let e = check(yaml).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("services[1].connector: unknown connector \"opnai\""),
            "{msg}"
        );
        assert!(msg.contains("(line 5)"), "{msg}");
        assert!(
            msg.contains("agents[0].services[0]: no service named \"nope\""),
            "{msg}"
        );
    }

    #[test]
    fn bad_prefix_names_field_not_value() {
        let e = check("services:\n  - { name: a, connector: openai, credentials: { api_key: pk-secretvalue } }\n").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("api_key") && !msg.contains("secretvalue"),
            "{msg}"
        );
    }

    #[test]
    fn host_claimed_twice_is_an_error() {
        let yaml = "connectors:\n  - name: mine\n    hosts: [api.openai.com]\n    inject: { headers: { X-Key: \"{k}\" } }\n    fields: [k]\n";
        let e = check(yaml).unwrap_err();
        assert!(e.to_string().contains("api.openai.com"), "{e}");
    }

    #[test]
    fn a_second_default_is_named() {
        let yaml = "services:\n  - { name: a, connector: openai, default: true }\n  - { name: b, connector: openai, default: true }\n";
        let e = check(yaml).unwrap_err();
        assert!(
            e.to_string()
                .contains("services[1].default: \"a\" is already the default"),
            "{e}"
        );
    }
}
