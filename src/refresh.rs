//! Keeps secrets read from a secret source current (SPEC §13.3): every
//! `vault.refresh` the [`Resolver`] reads them again; a changed value
//! reaches the services that use it (sealed in memory, cached tokens
//! forgotten), a failed read keeps the last good value, is logged by
//! reference and counted in `clavis_secret_source_errors_total`.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::catalog::Settings;
use crate::metrics::SourceLabel;
use crate::state::State;
use crate::vault::Resolver;

/// Refreshes until `stop` (shutdown), if the config reads from Vault.
pub(crate) fn spawn(state: State, mut stop: tokio::sync::watch::Receiver<bool>) {
    tokio::spawn(async move {
        loop {
            // The resolver of the config now served: a reload may have
            // added, changed or removed `vault:`.
            let resolver = state.vault.load_full();
            let every = resolver
                .as_ref()
                .map_or(NO_VAULT_CHECK, |r| jittered(r.refresh_every()));
            tokio::select! {
                _ = tokio::time::sleep(every) => {
                    if let Some(resolver) = state.vault.load_full() {
                        refresh(&state, &resolver).await;
                    }
                }
                _ = stop.changed() => return,
            }
        }
    });
}

/// How often a clavis without `vault:` looks whether a reload added it.
const NO_VAULT_CHECK: Duration = Duration::from_secs(5);

/// Between 90 % and 100 % of `every`: a fleet of sidecars started together
/// spreads its reads instead of calling the Vault in the same second.
fn jittered(every: Duration) -> Duration {
    use ring::rand::SecureRandom;
    let mut byte = [0u8; 1];
    let _ = ring::rand::SystemRandom::new().fill(&mut byte);
    every - every / 10 * u32::from(byte[0]) / 255
}

/// Reads every referenced secret again and applies what changed: the
/// function a config reload calls too, after building a new resolver.
pub(crate) async fn refresh(state: &State, resolver: &Resolver) {
    let found = resolver.refresh().await;
    for e in &found.failures {
        tracing::warn!(
            reference = %e.reference,
            error = %e.cause,
            "cannot read a Vault secret; keeping its last good value"
        );
        count_error(state);
    }
    if !found.changed.is_empty() {
        // One change at a time: a reload running now reads Vault itself.
        let _applied = state.applied.lock().await;
        let current = state.vault.load();
        if current
            .as_ref()
            .is_some_and(|c| std::ptr::eq(&**c, resolver))
        {
            apply(state, resolver, &found.changed);
        }
    }
}

fn count_error(state: &State) {
    state
        .metrics
        .secret_source_errors
        .get_or_create(&SourceLabel { source: "vault" })
        .inc();
}

/// The config validated again with the new values; each service whose
/// credentials read a changed secret gets them (unless they were replaced
/// through the API since), and its cached tokens are dropped.
fn apply(state: &State, resolver: &Resolver, changed: &BTreeSet<(String, String)>) {
    let paths = resolver.paths_reading(changed);
    let settings = match Settings::with_vault(resolver, &resolver.values()) {
        Ok(s) => s,
        Err(errors) => {
            for e in errors.0 {
                tracing::warn!(path = %e.path, error = %e.message, "a new Vault value makes the config invalid; services keep their credentials");
            }
            count_error(state);
            return;
        }
    };
    for (i, service) in settings.catalog.services.iter().enumerate() {
        let prefix = format!("services[{i}].credentials.");
        if !service.sourced || !paths.iter().any(|p| p.starts_with(&prefix)) {
            continue;
        }
        let table = state.store.table();
        if !table.find(&service.name).is_some_and(|s| s.sourced()) {
            continue;
        }
        match state
            .store
            .set_sourced_credentials(&service.name, &service.credentials)
        {
            Ok(stored) => {
                state.tokens.forget(&stored.id);
                tracing::info!(service = %service.name, "credentials changed in Vault; using the new ones");
            }
            Err(e) => {
                tracing::warn!(service = %service.name, error = %e, "cannot keep the credentials read from Vault");
                count_error(state);
            }
        }
    }
    for path in paths.iter().filter(|p| !p.starts_with("services[")) {
        tracing::warn!(
            path = %path,
            "changed in Vault; this value is read at start only: restart clavis to use it"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_tenth_below() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(100));
            assert!(d <= Duration::from_secs(100) && d >= Duration::from_secs(90));
        }
    }
}
