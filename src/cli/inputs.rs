//! Where `clavis env` and `clavis run` get what the environment is made
//! of: the config's services (and the running clavis's), the agent's
//! token from its file, the CA files (created on first use) and the Java
//! trust store.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use zeroize::Zeroizing;

use super::args::AgentOpts;
use super::client::Client;
use super::vars::{Inputs, Visible};
use super::{absolute, CliError, Loaded};
use crate::catalog::Settings;
use crate::identity::{Agent, Caller, Via};

impl Inputs {
    /// Reads what the environment needs. `running` is the admin API of a
    /// clavis known to be up (`clavis run`); without one, the config's
    /// admin address is tried briefly, and the config alone is used if
    /// nothing answers.
    pub(crate) fn gather(
        loaded: &Loaded,
        opts: &AgentOpts,
        running: Option<&Client>,
    ) -> Result<Inputs, CliError> {
        let settings = &loaded.settings;
        let config = &settings.config;
        let agent = match (&opts.agent, &opts.token_file) {
            (Some(name), Some(file)) => Some(agent_token(settings, name, file)?),
            _ => None,
        };
        if agent.is_none() && config.proxy.require_auth {
            eprintln!(
                "clavis: note: proxy.require_auth is on: without --agent NAME --token-file F every request gets 407"
            );
        }
        let (ca_cert, bundle) = ca_files(settings)?;
        let java_store = super::jks::ensure(&bundle);
        let scope = agent
            .as_ref()
            .and_then(|(name, _)| config.agents.iter().find(|a| a.name == *name).cloned());
        let mut services = from_config(settings, scope.as_ref());
        let token = agent.as_ref().map(|(_, t)| t.as_str());
        let fetched = match running {
            Some(client) => client.services_as(token),
            None => Client::from_config(loaded, None)
                .ok()
                .and_then(|c| c.quick().services_as(token)),
        };
        if let Some(api) = fetched {
            merge(&mut services, api);
        }
        Ok(Inputs {
            proxy: config.proxy.listen,
            agent,
            ca_cert,
            bundle,
            java_store,
            services,
        })
    }
}

/// The agent's token from its file, checked against the config.
fn agent_token(
    settings: &Settings,
    name: &str,
    file: &Path,
) -> Result<(String, Zeroizing<String>), CliError> {
    let text =
        Zeroizing::new(std::fs::read_to_string(file).map_err(|e| {
            CliError::io(format!("cannot read the token file {}", file.display()), e)
        })?);
    let token = Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_owned());
    if token.is_empty() {
        return Err(CliError::Usage(format!(
            "the token file {} is empty",
            file.display()
        )));
    }
    let agents = &settings.config.agents;
    match agents.iter().find(|a| a.name == name) {
        Some(agent) if agent.token.matches(token.as_bytes()) => {}
        Some(_) => {
            return Err(CliError::Usage(format!(
                "the token in {} is not agent {name:?}'s",
                file.display()
            )))
        }
        None => {
            let known: Vec<&str> = agents.iter().map(|a| a.name.as_str()).collect();
            return Err(CliError::Usage(format!(
                "agent {name:?} is not in the config's agents (known: {})",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            )));
        }
    }
    Ok((name.to_owned(), token))
}

/// The CA certificate and bundle, absolute; created (as `clavis ca init`
/// would) when clavis has not run yet.
fn ca_files(settings: &Settings) -> Result<(PathBuf, PathBuf), CliError> {
    let ca = &settings.config.ca;
    if !ca.cert.exists() || !ca.bundle.exists() {
        crate::tls::Ca::load_or_create(ca)
            .map_err(|e| CliError::Failed(format!("cannot create the CA: {e}")))?;
    }
    Ok((absolute(&ca.cert), absolute(&ca.bundle)))
}

/// The config's services the agent (or anyone, without one) may use.
fn from_config(settings: &Settings, agent: Option<&Arc<Agent>>) -> Vec<Visible> {
    let caller = match agent {
        Some(a) => Caller::agent(a.clone(), Via::Proxy),
        None => Caller::anonymous(),
    };
    settings
        .catalog
        .services
        .iter()
        .filter(|s| caller.may_use(&s.name))
        .map(|s| Visible {
            name: s.name.clone(),
            connector: s.connector.name.clone(),
            default: s.default,
        })
        .collect()
}

/// Adds the running clavis's services (those created through the API).
fn merge(services: &mut Vec<Visible>, api: Vec<Visible>) {
    for s in api {
        match services.iter_mut().find(|v| v.name == s.name) {
            Some(v) => *v = s,
            None => services.push(s),
        }
    }
}
