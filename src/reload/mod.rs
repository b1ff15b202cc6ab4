//! Reload (SPEC §13.2): the config file is read again and checked as at
//! start; what may change live (services and their credentials,
//! connectors, agents, policies, budgets) is applied, and the live catalog
//! is swapped whole. A config that fails, or that changes a setting only a
//! restart can apply, changes nothing: the old one keeps serving. Every
//! attempt is audited (`reload`, `ok`) and counted
//! (`clavis_config_reloads_total{result}`). Reloads run one at a time.
//!
//! Open tunnels keep the live catalog they took at `CONNECT`, and an
//! exchange keeps the service (credentials included) it picked; the
//! services themselves live in the store, so a new request, in a new
//! tunnel or an old one, uses the new credentials, and a removed service
//! is refused at once (a revocation does not wait for tunnels to close).

pub(crate) mod watch;

use std::collections::HashSet;

use serde::Serialize;

use crate::audit::{Action, Detail, Event};
use crate::catalog::{Applied, BoundService, Live, LoadError, Settings};
use crate::config::reload::Changes;
use crate::config::ConfigErrors;
use crate::identity::{Agents, Caller};
use crate::state::State;
use crate::store::{Origin, StoreError};

/// What asked for the reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// `SIGHUP`.
    Signal,
    /// `POST /v1/reload`.
    Api,
    /// The watcher or the poll saw a file change: nothing is done when
    /// the files' fingerprint is the one last read.
    Files,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::Api => "POST /v1/reload",
            Trigger::Files => "a file changed",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ReloadError {
    #[error("clavis was started without a config file: there is nothing to reload")]
    NoFile,
    #[error("{path}: {errors}")]
    Invalid { path: String, errors: ConfigErrors },
    #[error("{0} changed: restart clavis to apply it")]
    Restart(String),
    #[error("service {service:?} (created through the API) uses connector {connector:?}, which the new config no longer defines")]
    Orphan { service: String, connector: String },
    #[error("service {name:?}: {source}")]
    Store {
        name: String,
        #[source]
        source: StoreError,
    },
    /// A `${vault:…}` reference of the new config could not be read.
    #[error("{0}")]
    Vault(#[from] crate::vault::VaultError),
}

impl ReloadError {
    /// The message for logs and the audit log: every quoted value is
    /// left out (a YAML error may quote what was written, and that may be
    /// a credential); paths, lines and settings stay.
    pub(crate) fn redacted(&self) -> String {
        let mut out = String::new();
        let mut quoted = false;
        for c in self.to_string().chars() {
            if c == '"' {
                if !quoted {
                    out.push_str("\"…");
                }
                quoted = !quoted;
            } else if !quoted {
                out.push(c);
            }
        }
        out
    }
}

/// What a reload changed, by name.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Summary {
    pub(crate) services: Changes,
    pub(crate) connectors: Changes,
    pub(crate) agents: Changes,
    pub(crate) policies: Changes,
    pub(crate) budgets: Changes,
}

impl Summary {
    /// `services +a ~b -c; agents ~x` (names only), or `no changes`.
    pub(crate) fn describe(&self) -> String {
        let parts: Vec<String> = [
            ("services", &self.services),
            ("connectors", &self.connectors),
            ("agents", &self.agents),
            ("policies", &self.policies),
            ("budgets", &self.budgets),
        ]
        .iter()
        .filter(|(_, c)| !c.is_empty())
        .map(|(what, c)| {
            let names = c
                .added
                .iter()
                .map(|n| format!("+{n}"))
                .chain(c.changed.iter().map(|n| format!("~{n}")))
                .chain(c.removed.iter().map(|n| format!("-{n}")))
                .collect::<Vec<_>>()
                .join(" ");
            format!("{what} {names}")
        })
        .collect();
        if parts.is_empty() {
            "no changes".into()
        } else {
            parts.join("; ")
        }
    }
}

/// Reloads the config; `Ok(None)` when the files did not change (a
/// [`Trigger::Files`] check). `who` is who asked (the admin, or clavis).
pub(crate) async fn reload(
    state: &State,
    trigger: Trigger,
    who: &Caller,
) -> Result<Option<Summary>, ReloadError> {
    let mut applied = state.applied.lock().await;
    if applied.source.is_none() && trigger == Trigger::Files {
        return Ok(None);
    }
    // Taken before the file is read: a change made while it is applied
    // gives another fingerprint, so the next check reloads again.
    let before = applied.fingerprint_now();
    if trigger == Trigger::Files && before == applied.fingerprint {
        return Ok(None);
    }
    let files = applied.sources.files.clone();
    let result = apply(state, &mut applied).await;
    applied.fingerprint = if applied.sources.files == files {
        before
    } else {
        applied.fingerprint_now()
    };
    drop(applied);
    record(state, trigger, who, &result);
    result.map(Some)
}

/// Audits, counts and logs one attempt.
fn record(state: &State, trigger: Trigger, who: &Caller, result: &Result<Summary, ReloadError>) {
    let (ok, note) = match result {
        Ok(summary) => (
            true,
            format!("{}: {}", trigger.as_str(), summary.describe()),
        ),
        Err(e) => (false, format!("{}: {}", trigger.as_str(), e.redacted())),
    };
    let event = Event::new(
        Action::Reload,
        "",
        &who.actor(),
        Detail::outcome(ok, note.clone()),
    );
    if let Err(e) = state.audit.record(event) {
        tracing::warn!(error = %e, "could not audit a config reload");
    }
    let result_label = if ok { "ok" } else { "error" };
    state
        .metrics
        .config_reloads
        .get_or_create(&crate::metrics::ReloadResult {
            result: result_label,
        })
        .inc();
    if ok {
        tracing::info!(changes = %note, "config reloaded");
    } else {
        tracing::warn!(error = %note, "config reload refused; the running config keeps serving");
    }
}

/// Reads, checks and applies the config; on an error before the store is
/// touched nothing changed.
async fn apply(state: &State, applied: &mut Applied) -> Result<Summary, ReloadError> {
    let source = applied.source.clone().ok_or(ReloadError::NoFile)?;
    let invalid = |errors: ConfigErrors| ReloadError::Invalid {
        path: source.path.display().to_string(),
        errors,
    };
    let text = crate::config::read(Some(&source.path)).map_err(invalid)?;
    // The config's `${vault:…}` secrets are read again (SPEC §13.3).
    let Settings {
        mut config,
        mut catalog,
        vault,
        ..
    } = match Settings::resolve(text, source.env.clone()).await {
        Ok(settings) => settings,
        Err(LoadError::Config(errors)) => return Err(invalid(errors)),
        Err(LoadError::Vault(e)) => return Err(e.into()),
    };
    if let Some(key) = applied.sources.restart_needed(&config.sources) {
        return Err(ReloadError::Restart(key));
    }
    check_api_services(state, &catalog.services, &catalog.registry)?;
    let old = state.live();
    let mut summary = Summary {
        connectors: applied.sources.changes(&config.sources, "connectors"),
        policies: applied.sources.changes(&config.sources, "policies"),
        budgets: applied.sources.changes(&config.sources, "budgets"),
        agents: agent_changes(&old.agents, &config.agents),
        services: Changes::default(),
    };
    let digests = applied.digests(&catalog.services);
    let changed: Vec<bool> = catalog
        .services
        .iter()
        .map(|s| applied.service_changed(s))
        .collect();
    let services = std::mem::take(&mut catalog.services);
    summary.services = apply_services(state, services, &changed)?;
    state
        .store
        .rebind(&catalog.registry)
        .map_err(|source| ReloadError::Store {
            name: "(connectors)".into(),
            source,
        })?;
    // A user connector that changed may fetch its tokens another way.
    for name in &summary.connectors.changed {
        for s in state.store.table().for_connector(name) {
            state.tokens.forget(&s.id);
        }
    }
    applied.set_digests(digests);
    applied.sources = std::mem::take(&mut config.sources);
    let live = Live::take(&mut config, &mut catalog);
    state.budgets.reconcile(&old.budgets, &live.budgets);
    state.swap_live(live);
    state.vault.store(vault);
    Ok(summary)
}

/// A service created through the API is kept, so its connector must still
/// exist (unless a config service of the same name replaces it).
fn check_api_services(
    state: &State,
    config: &[BoundService],
    registry: &crate::connector::Registry,
) -> Result<(), ReloadError> {
    let named: HashSet<&str> = config.iter().map(|s| s.name.as_str()).collect();
    for s in state.store.table().all() {
        if s.origin == Origin::Api
            && !named.contains(s.name.as_str())
            && registry.get(&s.connector.name).is_none()
        {
            return Err(ReloadError::Orphan {
                service: s.name.clone(),
                connector: s.connector.name.clone(),
            });
        }
    }
    Ok(())
}

/// Adds, replaces and removes config services in the store; services
/// created through the API are left alone, except one the config now
/// names (the config wins, as at start). A changed credential is sealed
/// anew (a new version: new scrubber anchors) and the service's cached
/// tokens and sessions are forgotten.
fn apply_services(
    state: &State,
    services: Vec<BoundService>,
    changed: &[bool],
) -> Result<Changes, ReloadError> {
    let mut out = Changes::default();
    let table = state.store.table();
    let names: HashSet<String> = services.iter().map(|s| s.name.clone()).collect();
    for (s, changed) in services.into_iter().zip(changed.iter().copied()) {
        let name = s.name.clone();
        let err = |source: StoreError| ReloadError::Store {
            name: name.clone(),
            source,
        };
        let existing = table.all().iter().find(|e| e.name == s.name);
        match existing {
            None => {
                crate::catalog::add_service(&state.store, s).map_err(err)?;
                out.added.push(name.clone());
            }
            Some(e) if e.origin == Origin::Config && !changed => {}
            Some(e)
                if e.origin == Origin::Config
                    && e.connector.name == s.connector.name
                    && e.default == s.default =>
            {
                // Credentials the file no longer gives are kept (they may
                // have been stored through the API, as at start).
                if s.sourced {
                    state
                        .store
                        .set_sourced_credentials(&e.id, &s.credentials)
                        .map_err(err)?;
                } else if !s.credentials.is_empty() {
                    state
                        .store
                        .set_credentials(&e.id, &s.credentials, false)
                        .map_err(err)?;
                }
                state.store.set_entry(&e.id, s.entry).map_err(err)?;
                state.tokens.forget(&e.id);
                out.changed.push(name.clone());
            }
            Some(e) => {
                if e.origin == Origin::Api {
                    tracing::warn!(service = %e.name, "the config file now defines this service too; the config wins");
                }
                state.store.remove(&e.id).map_err(err)?;
                state.tokens.forget(&e.id);
                crate::catalog::add_service(&state.store, s).map_err(err)?;
                out.changed.push(name.clone());
            }
        }
    }
    for e in table.all() {
        if e.origin == Origin::Config && !names.contains(&e.name) {
            state
                .store
                .remove(&e.id)
                .map_err(|source| ReloadError::Store {
                    name: e.name.clone(),
                    source,
                })?;
            state.tokens.forget(&e.id);
            out.removed.push(e.name.clone());
        }
    }
    Ok(out)
}

/// Agents by name: a changed token, scope, `reveal` or token scopes.
fn agent_changes(old: &Agents, new: &Agents) -> Changes {
    let mut out = Changes::default();
    for a in new.iter() {
        match old.iter().find(|o| o.name == a.name) {
            None => out.added.push(a.name.clone()),
            Some(o)
                if o.token != a.token
                    || o.scope != a.scope
                    || o.reveal != a.reveal
                    || o.token_scopes != a.token_scopes =>
            {
                out.changed.push(a.name.clone())
            }
            Some(_) => {}
        }
    }
    for o in old.iter() {
        if !new.iter().any(|a| a.name == o.name) {
            out.removed.push(o.name.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_drops_quoted_values_only() {
        let e = ReloadError::Invalid {
            path: "/etc/clavis.yaml".into(),
            errors: crate::config::ConfigError {
                path: "services[0].default".into(),
                message: "invalid type: string \"sk-secret\", expected a boolean".into(),
                line: Some(3),
            }
            .into(),
        };
        let text = e.redacted();
        assert!(!text.contains("sk-secret"), "{text}");
        assert!(text.contains("services[0].default"), "{text}");
        assert!(text.contains("(line 3)"), "{text}");
    }

    #[test]
    fn a_restart_setting_is_named() {
        let e = ReloadError::Restart("proxy.listen".into());
        assert_eq!(
            e.to_string(),
            "proxy.listen changed: restart clavis to apply it"
        );
    }
}
