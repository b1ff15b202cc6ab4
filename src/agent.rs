//! Agents: who is calling (proxy Basic auth, admin bearer), and which
//! services they may use.

use std::collections::HashSet;

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
}

impl Agent {
    pub fn may_use(&self, service_name: &str) -> bool {
        match &self.scope {
            Scope::All => true,
            Scope::Services(names) => names.contains(service_name),
        }
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
