//! Secrets read from Vault or OpenBao (SPEC §13.3): the [`Resolver`] reads
//! every `${vault:…}` the config references, each secret once for all its
//! fields, strictly at start (a failure names the reference) and tolerantly
//! at each refresh (a failure keeps the last good value). Values stay in
//! memory, inside `Secret`s; applying them to services is `refresh`'s job.

mod client;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(crate) use client::ReadError;

use crate::config::vault::{VaultPlan, VaultRef, VaultValues};
use crate::config::Env;
use crate::secret::Secret;

/// A reference that could not be read, and why (never its value).
#[derive(Debug, thiserror::Error)]
#[error("{reference}: {cause}")]
pub struct VaultError {
    pub(crate) reference: String,
    #[source]
    pub(crate) cause: ReadError,
}

/// What one refresh found.
#[derive(Debug, Default)]
pub(crate) struct Refreshed {
    /// Secrets whose referenced fields changed (`(mount, path)`).
    pub(crate) changed: BTreeSet<(String, String)>,
    /// Secrets that could not be read: their last good value stays.
    pub(crate) failures: Vec<VaultError>,
}

/// Reads the config's Vault references and keeps the last good values.
/// Held by the state; a config reload calls [`Resolver::read_all`] (or
/// builds a new resolver) and validates the config with the values.
pub struct Resolver {
    client: client::Client,
    plan: VaultPlan,
    /// The config text and environment the values are resolved into.
    source: Secret<String>,
    env: Arc<dyn Env + Send + Sync>,
    last: Mutex<VaultValues>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("vault::Resolver")
            .field("client", &self.client)
            .field("refs", &self.plan.refs.len())
            .finish()
    }
}

impl Resolver {
    pub(crate) fn new(
        plan: VaultPlan,
        source: Secret<String>,
        env: Arc<dyn Env + Send + Sync>,
    ) -> Result<Resolver, VaultError> {
        let client = client::Client::new(plan.config.clone()).map_err(|cause| VaultError {
            reference: "vault.ca_file".into(),
            cause,
        })?;
        Ok(Resolver {
            client,
            plan,
            source,
            env,
            last: Mutex::new(VaultValues::new()),
        })
    }

    pub(crate) fn refresh_every(&self) -> Duration {
        self.plan.config.refresh
    }

    pub(crate) fn source(&self) -> &str {
        self.source.expose()
    }

    pub(crate) fn env(&self) -> &dyn Env {
        &*self.env
    }

    /// Key paths whose references read a secret in `secrets`.
    pub(crate) fn paths_reading(&self, secrets: &BTreeSet<(String, String)>) -> Vec<&str> {
        self.plan
            .refs
            .iter()
            .filter(|(_, r)| secrets.contains(&r.secret()))
            .map(|(path, _)| path.as_str())
            .collect()
    }

    /// The last good values.
    pub(crate) fn values(&self) -> VaultValues {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Each referenced secret → the fields referenced in it.
    fn secrets(&self) -> BTreeMap<(String, String), Vec<&VaultRef>> {
        let mut out: BTreeMap<_, Vec<&VaultRef>> = BTreeMap::new();
        for (_, r) in &self.plan.refs {
            out.entry(r.secret()).or_default().push(r);
        }
        out
    }

    /// Reads one secret and checks every referenced field is there.
    async fn read_one(
        &self,
        secret: &(String, String),
        refs: &[&VaultRef],
    ) -> Result<crate::config::vault::VaultDoc, VaultError> {
        let named = |cause| VaultError {
            reference: refs[0].to_string(),
            cause,
        };
        let doc = self
            .client
            .read(&secret.0, &secret.1)
            .await
            .map_err(named)?;
        if let Some(r) = refs.iter().find(|r| !doc.fields.contains_key(&r.field)) {
            return Err(VaultError {
                reference: r.to_string(),
                cause: ReadError::MissingField(r.field.clone()),
            });
        }
        Ok(doc)
    }

    /// Reads every referenced secret; the first failure is the error (at
    /// start: clavis does not run on a credential it could not read).
    pub(crate) async fn read_all(&self) -> Result<VaultValues, VaultError> {
        let mut values = VaultValues::new();
        for (secret, refs) in self.secrets() {
            let doc = self.read_one(&secret, &refs).await?;
            values.insert(secret, doc);
        }
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = values.clone();
        Ok(values)
    }

    /// Reads every referenced secret again; one that fails keeps its last
    /// good value. Says which changed (in a referenced field).
    pub(crate) async fn refresh(&self) -> Refreshed {
        let mut out = Refreshed::default();
        for (secret, refs) in self.secrets() {
            match self.read_one(&secret, &refs).await {
                Ok(doc) => {
                    let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
                    let same = last.get(&secret).is_some_and(|old| {
                        refs.iter()
                            .all(|r| old.fields.get(&r.field) == doc.fields.get(&r.field))
                    });
                    if !same {
                        tracing::info!(
                            secret = %format!("{}/{}", secret.0, secret.1),
                            version = doc.version,
                            "a secret read from Vault changed"
                        );
                        out.changed.insert(secret.clone());
                    }
                    last.insert(secret, doc);
                }
                Err(e) => out.failures.push(e),
            }
        }
        out
    }
}
