//! Who is calling. One [`Caller`] for every path (the proxy port, the admin
//! REST API, MCP): the agent (or the admin, or an anonymous local process)
//! and the channel it came through. The audit actor is derived from it, and
//! [`Caller::may_use`] is the one scope check.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::secret::TokenDigest;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    All,
    Services(HashSet<String>),
}

#[derive(Debug)]
pub(crate) struct Agent {
    pub(crate) name: String,
    pub(crate) token: TokenDigest,
    pub(crate) scope: Scope,
    /// May read raw secrets through `get_token`.
    pub(crate) reveal: bool,
    /// Its upstream requests in flight, per service.
    pub(crate) in_flight: InFlight,
    /// Connector name → what this agent's tokens from that connector's
    /// token source are narrowed to (`agents[].github_app`).
    pub(crate) token_scopes: HashMap<String, Arc<TokenScope>>,
}

/// What one agent's tokens are narrowed to (SPEC §13.1): the body the
/// token source sends when it mints one, and the key that keeps such a
/// token apart from every other in the cache. Names and permissions only,
/// never a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenScope {
    pub(crate) body: serde_json::Value,
    /// `body` as compact JSON: equal scopes share one token.
    pub(crate) key: String,
}

impl TokenScope {
    /// `body` must be built in a fixed order (sorted keys and lists), so
    /// equal scopes give equal keys.
    pub(crate) fn new(body: serde_json::Value) -> TokenScope {
        let key = body.to_string();
        TokenScope { body, key }
    }
}

impl Agent {
    fn may_use(&self, service_name: &str) -> bool {
        match &self.scope {
            Scope::All => true,
            Scope::Services(names) => names.contains(service_name),
        }
    }
}

/// The channel a call came through; part of the audit actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    Proxy,
    Api,
    Mcp,
}

#[derive(Debug, Clone)]
enum Who {
    /// A local process without proxy credentials (`proxy.require_auth: false`).
    Anonymous,
    Admin,
    Agent(Arc<Agent>),
    /// A failed admin-port authentication from this address (audited only).
    Unauthenticated(IpAddr),
    /// clavis itself (an approval expiring).
    System,
}

/// Whoever is calling, and how.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    who: Who,
    via: Via,
}

impl Caller {
    pub(crate) fn anonymous() -> Caller {
        Caller {
            who: Who::Anonymous,
            via: Via::Proxy,
        }
    }

    pub(crate) fn admin(via: Via) -> Caller {
        Caller {
            who: Who::Admin,
            via,
        }
    }

    pub(crate) fn agent(agent: Arc<Agent>, via: Via) -> Caller {
        Caller {
            who: Who::Agent(agent),
            via,
        }
    }

    /// clavis acting on its own (audited as `clavis`).
    pub(crate) fn system() -> Caller {
        Caller {
            who: Who::System,
            via: Via::Api,
        }
    }

    pub(crate) fn unauthenticated(peer: IpAddr) -> Caller {
        Caller {
            who: Who::Unauthenticated(peer),
            via: Via::Api,
        }
    }

    /// The same caller on another channel (an admin-port caller using MCP).
    pub(crate) fn over(&self, via: Via) -> Caller {
        Caller {
            who: self.who.clone(),
            via,
        }
    }

    pub(crate) fn is_admin(&self) -> bool {
        matches!(self.who, Who::Admin)
    }

    /// The configured agent's name, if the caller is one.
    /// What this caller's tokens from `connector`'s token source are
    /// narrowed to, if anything (an agent's `github_app`).
    pub(crate) fn token_scope(&self, connector: &str) -> Option<&Arc<TokenScope>> {
        match &self.who {
            Who::Agent(a) => a.token_scopes.get(connector),
            _ => None,
        }
    }

    pub(crate) fn agent_name(&self) -> Option<&str> {
        match &self.who {
            Who::Agent(a) => Some(&a.name),
            _ => None,
        }
    }

    /// The name messages use: the agent's, `admin` or `anonymous`.
    pub(crate) fn name(&self) -> &str {
        match &self.who {
            Who::Agent(a) => &a.name,
            Who::Admin => "admin",
            Who::Anonymous | Who::Unauthenticated(_) => "anonymous",
            Who::System => "clavis",
        }
    }

    /// The one scope check: may this caller see and use `service`? The
    /// admin and anonymous local callers may use everything (SPEC §3); an
    /// agent only its `services`; a failed authentication nothing.
    pub(crate) fn may_use(&self, service: &str) -> bool {
        match &self.who {
            Who::Admin | Who::Anonymous => true,
            Who::Agent(a) => a.may_use(service),
            Who::Unauthenticated(_) | Who::System => false,
        }
    }

    /// May read raw secrets (`get_token`): the admin, or an agent with `reveal`.
    pub(crate) fn require_reveal(&self) -> Result<(), ScopeError> {
        match &self.who {
            Who::Admin => Ok(()),
            Who::Agent(a) if a.reveal => Ok(()),
            _ => Err(ScopeError::NoReveal {
                agent: self.name().to_owned(),
            }),
        }
    }

    pub(crate) fn require_admin(&self) -> Result<(), ScopeError> {
        match &self.who {
            Who::Admin => Ok(()),
            _ => Err(ScopeError::AdminOnly {
                agent: self.name().to_owned(),
            }),
        }
    }

    /// Its in-flight counter: the agent's own, or `shared` for callers
    /// without one (the admin, anonymous local processes).
    pub(crate) fn in_flight<'a>(&'a self, shared: &'a InFlight) -> &'a InFlight {
        match &self.who {
            Who::Agent(a) => &a.in_flight,
            _ => shared,
        }
    }

    /// Who this is, whatever the channel: what budgets are kept per.
    pub(crate) fn principal(&self) -> String {
        match &self.who {
            Who::Agent(a) => format!("agent:{}", a.name),
            Who::Admin => "admin".into(),
            Who::Anonymous => "anonymous".into(),
            Who::Unauthenticated(ip) => format!("ip:{ip}"),
            Who::System => "clavis".into(),
        }
    }

    /// The audit actor: `proxy:<agent>`, `proxy:anonymous`, `api:<agent>`,
    /// `mcp:<agent>`, `admin`, or `api:unauthenticated@<ip>` (`@` is not
    /// allowed in agent names, so that label cannot pass for one).
    pub(crate) fn actor(&self) -> Actor<'_> {
        let kind = match self.via {
            Via::Proxy => "proxy:",
            Via::Api => "api:",
            Via::Mcp => "mcp:",
        };
        let name = match &self.who {
            Who::Admin => {
                return Actor {
                    kind: "admin",
                    name: Cow::Borrowed(""),
                }
            }
            Who::Agent(a) => Cow::Borrowed(a.name.as_str()),
            Who::Anonymous => Cow::Borrowed("anonymous"),
            Who::Unauthenticated(ip) => Cow::Owned(format!("unauthenticated@{ip}")),
            Who::System => {
                return Actor {
                    kind: "clavis",
                    name: Cow::Borrowed(""),
                }
            }
        };
        Actor { kind, name }
    }
}

/// An audit actor label in two halves (kept apart so an event can store it
/// without formatting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Actor<'a> {
    kind: &'static str,
    name: Cow<'a, str>,
}

impl Actor<'_> {
    pub(crate) fn parts(&self) -> (&'static str, &str) {
        (self.kind, &self.name)
    }

    #[cfg(test)]
    pub(crate) fn into_owned(self) -> Actor<'static> {
        Actor {
            kind: self.kind,
            name: Cow::Owned(self.name.into_owned()),
        }
    }
}

impl std::fmt::Display for Actor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind)?;
        f.write_str(&self.name)
    }
}

/// A caller reaching for something outside its scope. Service lookups
/// outside scope read as missing (`404`), so an agent cannot probe names.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScopeError {
    #[error("agent {agent:?} may not call an admin-only route")]
    AdminOnly { agent: String },
    #[error("agent {agent:?} may not read raw secrets (reveal: false)")]
    NoReveal { agent: String },
    #[error("no service {key:?}")]
    Unknown { key: String },
    #[error("no service {name:?} for connector {connector:?}")]
    NoSuchService { name: String, connector: String },
    #[error("agent {agent:?} may not use service {service:?}")]
    NotAllowed { agent: String, service: String },
    #[error("agent {agent:?} has no service for connector {connector:?}")]
    NoneForConnector { agent: String, connector: String },
    #[error("several services for connector {connector:?} ({names}) and none is default; send a placeholder key \"clavis:<service>\"")]
    Ambiguous { connector: String, names: String },
}

/// Upstream requests in flight per service for one caller, capped by
/// `limits.max_upstream_requests`: however many tunnels and streams an agent
/// opens (or resets), it cannot hold more than that many requests against
/// one account at a time (threat model T17).
#[derive(Debug, Default)]
pub(crate) struct InFlight(dashmap::DashMap<String, Arc<AtomicUsize>>);

/// One request counted in [`InFlight`] until it is dropped (with the
/// response body, for streamed answers).
#[derive(Debug)]
pub(crate) struct InFlightGuard(Arc<AtomicUsize>);

impl InFlight {
    /// Counts one more request to `service_id`, or `None` at `limit`.
    pub(crate) fn try_start(&self, service_id: &str, limit: usize) -> Option<InFlightGuard> {
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
pub(crate) struct Agents {
    list: Vec<Arc<Agent>>,
}

impl Agents {
    pub(crate) fn new(list: Vec<Agent>) -> Agents {
        Agents {
            list: list.into_iter().map(Arc::new).collect(),
        }
    }

    /// Every agent, in config order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<Agent>> {
        self.list.iter()
    }

    /// The agent whose name and token both match (token compared in constant time).
    pub(crate) fn authenticate(&self, name: &str, token: &[u8]) -> Option<Arc<Agent>> {
        let agent = self.list.iter().find(|a| a.name == name)?;
        agent.token.matches(token).then(|| agent.clone())
    }

    /// The agent owning a bearer token (admin port), whatever its name.
    pub(crate) fn by_token(&self, token: &[u8]) -> Option<Arc<Agent>> {
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
}

/// Events per key within a window: authentication failures per peer
/// address ([`Throttle`]), audited refusals per caller. Past `limit` in one
/// window the key is over until the window ends; nothing else is slowed.
#[derive(Debug)]
pub(crate) struct Budget<K> {
    spent: Mutex<HashMap<K, (Instant, u32)>>,
    limit: u32,
    window: Duration,
}

/// What one more event does to its key's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spend {
    /// Within the budget.
    Within,
    /// The first event past it: worth one note that the rest go unrecorded.
    Exhausted { left: Duration },
    /// Past it already, for `left` more.
    Over { left: Duration },
}

/// Refusals audited per caller a minute on the admin port and MCP.
pub(crate) const REFUSALS_AUDITED: u32 = 30;

/// Keys kept at most; past it, expired windows are dropped, and if all are
/// live the map is cleared (a flood of addresses must not grow memory).
const MAX_KEYS: usize = 10_000;

impl<K: std::hash::Hash + Eq> Budget<K> {
    pub(crate) fn new(limit: u32, window: Duration) -> Budget<K> {
        Budget {
            spent: Mutex::new(HashMap::new()),
            limit,
            window,
        }
    }

    /// Counts one event for `key`.
    pub(crate) fn spend(&self, key: K) -> Spend {
        let mut map = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_KEYS {
            map.retain(|_, (start, _)| start.elapsed() < self.window);
            if map.len() >= MAX_KEYS {
                map.clear();
            }
        }
        let entry = map.entry(key).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= self.window {
            *entry = (Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
        let left = self
            .window
            .saturating_sub(entry.0.elapsed())
            .max(Duration::from_secs(1));
        match entry.1.cmp(&(self.limit + 1)) {
            std::cmp::Ordering::Less => Spend::Within,
            std::cmp::Ordering::Equal => Spend::Exhausted { left },
            std::cmp::Ordering::Greater => Spend::Over { left },
        }
    }
}

/// Failed admin-port authentications per peer address: past ten in a
/// minute, a failing attempt is answered `429` with `Retry-After` (and no
/// longer audited one by one). Only failing attempts: a valid token is
/// always served, because the agent shares the admin's address and a
/// per-address lockout would let it lock the admin out. Guessing is
/// defeated by the tokens' length, not by this.
#[derive(Debug)]
pub(crate) struct Throttle(Budget<IpAddr>);

impl Default for Throttle {
    fn default() -> Throttle {
        Throttle(Budget::new(10, Duration::from_secs(60)))
    }
}

impl Throttle {
    /// Counts a failed authentication from `ip`.
    pub(crate) fn fail(&self, ip: IpAddr) -> Spend {
        self.0.spend(ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(name: &str, scope: Scope, reveal: bool) -> Arc<Agent> {
        Arc::new(Agent {
            name: name.into(),
            token: TokenDigest::of(b"t"),
            scope,
            reveal,
            in_flight: InFlight::default(),
            token_scopes: HashMap::new(),
        })
    }

    #[test]
    fn actors_name_the_channel_and_the_agent() {
        let codex = agent("codex", Scope::All, false);
        let label = |c: Caller| c.actor().to_string();
        assert_eq!(label(Caller::anonymous()), "proxy:anonymous");
        assert_eq!(
            label(Caller::agent(codex.clone(), Via::Proxy)),
            "proxy:codex"
        );
        assert_eq!(label(Caller::agent(codex.clone(), Via::Api)), "api:codex");
        assert_eq!(
            label(Caller::agent(codex, Via::Api).over(Via::Mcp)),
            "mcp:codex"
        );
        assert_eq!(label(Caller::admin(Via::Mcp)), "admin");
        assert_eq!(
            label(Caller::unauthenticated([127, 0, 0, 1].into())),
            "api:unauthenticated@127.0.0.1"
        );
    }

    #[test]
    fn one_scope_check_for_every_caller() {
        let scoped = agent("a", Scope::Services(["x".to_string()].into()), false);
        let caller = Caller::agent(scoped, Via::Proxy);
        assert!(caller.may_use("x") && !caller.may_use("y"));
        assert!(caller.require_admin().is_err() && caller.require_reveal().is_err());
        assert!(Caller::admin(Via::Api).may_use("y"));
        assert!(Caller::anonymous().may_use("y"));
        assert!(!Caller::unauthenticated([127, 0, 0, 1].into()).may_use("y"));
        let revealer = Caller::agent(agent("r", Scope::All, true), Via::Mcp);
        assert!(revealer.require_reveal().is_ok());
    }

    #[test]
    fn a_budget_counts_to_its_limit_notes_the_first_over_then_stays_over() {
        let b = Budget::new(3, Duration::from_secs(60));
        let spent: Vec<Spend> = (0..5).map(|_| b.spend("agent")).collect();
        assert_eq!(&spent[..3], &[Spend::Within; 3]);
        assert!(matches!(spent[3], Spend::Exhausted { left } if left <= Duration::from_secs(60)));
        assert!(matches!(spent[4], Spend::Over { .. }));
        assert_eq!(b.spend("other"), Spend::Within, "each key has its own");
    }

    #[test]
    fn a_budget_window_ends() {
        let b = Budget::new(1, Duration::ZERO);
        for _ in 0..5 {
            assert_eq!(b.spend(1u8), Spend::Within, "a spent window restarts");
        }
    }

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
