//! Agents: who is calling (proxy Basic auth, admin bearer), and which
//! services they may use.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::secret::TokenDigest;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Services(HashSet<String>),
}

#[derive(Debug)]
pub struct Agent {
    pub name: String,
    pub token: TokenDigest,
    pub scope: Scope,
    /// May read raw secrets through `get_token`.
    pub reveal: bool,
    /// Its upstream requests in flight, per service.
    pub in_flight: InFlight,
}

impl Agent {
    pub fn may_use(&self, service_name: &str) -> bool {
        match &self.scope {
            Scope::All => true,
            Scope::Services(names) => names.contains(service_name),
        }
    }
}

/// Upstream requests in flight per service for one caller, capped by
/// `limits.max_upstream_requests`: however many tunnels and streams an agent
/// opens (or resets), it cannot hold more than that many requests against
/// one account at a time (threat model T17).
#[derive(Debug, Default)]
pub struct InFlight(dashmap::DashMap<String, Arc<AtomicUsize>>);

/// One request counted in [`InFlight`] until it is dropped (with the
/// response body, for streamed answers).
#[derive(Debug)]
pub struct InFlightGuard(Arc<AtomicUsize>);

impl InFlight {
    /// Counts one more request to `service_id`, or `None` at `limit`.
    pub fn try_start(&self, service_id: &str, limit: usize) -> Option<InFlightGuard> {
        let counter = match self.0.get(service_id) {
            Some(c) => c.clone(),
            None => self.0.entry(service_id.to_owned()).or_default().clone(),
        };
        let admitted = counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok();
        admitted.then_some(InFlightGuard(counter))
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The agents of the config file, looked up by name.
#[derive(Debug, Default)]
pub struct Agents {
    list: Vec<std::sync::Arc<Agent>>,
}

impl Agents {
    pub fn new(list: Vec<Agent>) -> Agents {
        Agents {
            list: list.into_iter().map(std::sync::Arc::new).collect(),
        }
    }

    /// The agent whose name and token both match (token compared in constant time).
    pub fn authenticate(&self, name: &str, token: &[u8]) -> Option<std::sync::Arc<Agent>> {
        let agent = self.list.iter().find(|a| a.name == name)?;
        agent.token.matches(token).then(|| agent.clone())
    }

    /// The agent owning a bearer token (admin port), whatever its name.
    pub fn by_token(&self, token: &[u8]) -> Option<std::sync::Arc<Agent>> {
        let digest = TokenDigest::of(token);
        // Every agent is compared so timing does not depend on which matched.
        let mut found = None;
        for agent in &self.list {
            if agent.token == digest {
                found = Some(agent.clone());
            }
        }
        found
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_caps_each_service_and_frees_on_drop() {
        let f = InFlight::default();
        let a1 = f.try_start("svc-a", 2).unwrap();
        let _a2 = f.try_start("svc-a", 2).unwrap();
        assert!(
            f.try_start("svc-a", 2).is_none(),
            "third request over the cap"
        );
        let _b = f
            .try_start("svc-b", 2)
            .expect("another service has its own count");
        drop(a1);
        assert!(
            f.try_start("svc-a", 2).is_some(),
            "a finished request frees its slot"
        );
    }
}
