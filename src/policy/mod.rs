//! Policy (SPEC §10): what an agent may do with a service it may use.
//! Named policies of first-match rules (`allow`, `deny`, `approve`) over
//! the method, host, normalized path, query and body; on a service, on an
//! agent × service, or both (the strictest outcome wins). Compiled once
//! from the config; evaluated per request on a [`View`] built once.
//!
//! Fail closed: a field given twice or a body that cannot be read as what
//! it claims to be never lets an `allow` rule match, and always lets a
//! `deny` or `approve` rule match.

mod fields;
mod path;

use std::sync::Arc;

use http::Method;

pub(crate) use fields::Body;
use fields::{Pairs, Seen};
use path::Glob;

/// The name a verdict gives when no rule matched.
static DEFAULT: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| "default".into());
pub(crate) use path::{normalize as normalize_path, PathError};

use crate::config::guardrails::{
    DefaultAction, PolicyMode, RawMatcher, RawPolicy, RawValue, Scalar,
};

/// What a rule or a default says; ordered by strictness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Action {
    Allow,
    Approve,
    Deny,
}

impl Action {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Approve => "approve",
            Action::Deny => "deny",
        }
    }
}

#[derive(Debug)]
pub(crate) struct Policy {
    pub(crate) name: Arc<str>,
    pub(crate) enforce: bool,
    default: Action,
    rules: Vec<Rule>,
    /// Some rule reads the body, the query, the path.
    pub(crate) reads_body: bool,
    reads_query: bool,
    reads_path: bool,
}

#[derive(Debug)]
struct Rule {
    name: Arc<str>,
    action: Action,
    methods: Option<Vec<Method>>,
    hosts: Option<Vec<String>>,
    path: Option<Glob>,
    query: Vec<(String, Value)>,
    body: Vec<(String, Value)>,
}

#[derive(Debug)]
enum Value {
    Equals(Scalar),
    In(Vec<Scalar>),
    NotIn(Vec<Scalar>),
    Regex(regex::Regex),
    Range { min: Option<f64>, max: Option<f64> },
}

/// A policy that cannot be compiled: the key within it and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub(crate) struct PolicyError {
    pub(crate) key: String,
    pub(crate) message: String,
}

fn error(key: impl Into<String>, message: impl std::fmt::Display) -> PolicyError {
    PolicyError {
        key: key.into(),
        message: message.to_string(),
    }
}

impl Policy {
    /// Compiles a policy as written; `hosts` are every host the services it
    /// is attached to may be reached on (a rule's `host` must be one).
    pub(crate) fn compile(raw: &RawPolicy) -> Result<Policy, PolicyError> {
        let mut rules = Vec::new();
        for (i, r) in raw.rules.iter().enumerate() {
            let key = format!("rules[{i}]");
            let (action, matcher) = match (&r.allow, &r.deny, &r.approve) {
                (Some(m), None, None) => (Action::Allow, m),
                (None, Some(m), None) => (Action::Deny, m),
                (None, None, Some(m)) => (Action::Approve, m),
                _ => return Err(error(key, "give exactly one of allow, deny or approve")),
            };
            let name = r.name.clone().unwrap_or_else(|| format!("rules[{i}]"));
            rules.push(rule(&key, name.into(), action, matcher)?);
        }
        Ok(Policy {
            name: raw.name.as_str().into(),
            enforce: raw.mode == PolicyMode::Enforce,
            default: match raw.default {
                DefaultAction::Allow => Action::Allow,
                DefaultAction::Deny => Action::Deny,
            },
            reads_body: rules.iter().any(|r| !r.body.is_empty()),
            reads_query: rules.iter().any(|r| !r.query.is_empty()),
            reads_path: rules.iter().any(|r| r.path.is_some()),
            rules,
        })
    }

    /// `readonly: true`: `GET`, `HEAD` and `OPTIONS`, nothing else.
    pub(crate) fn readonly() -> Policy {
        Policy {
            name: "readonly".into(),
            enforce: true,
            default: Action::Deny,
            rules: vec![Rule {
                name: "reads".into(),
                action: Action::Allow,
                methods: Some(vec![Method::GET, Method::HEAD, Method::OPTIONS]),
                hosts: None,
                path: None,
                query: Vec::new(),
                body: Vec::new(),
            }],
            reads_body: false,
            reads_query: false,
            reads_path: false,
        }
    }

    /// The hosts its rules name, for the check against the services'.
    pub(crate) fn rule_hosts(&self) -> impl Iterator<Item = (&str, &str)> {
        self.rules.iter().flat_map(|r| {
            r.hosts
                .iter()
                .flatten()
                .map(move |h| (&*r.name, h.as_str()))
        })
    }

    /// Rules that read a body but could match a `GET` (a websocket
    /// upgrade's messages are never seen).
    pub(crate) fn body_rules_on_get(&self) -> Option<&str> {
        self.rules
            .iter()
            .find(|r| {
                !r.body.is_empty() && r.methods.as_ref().is_none_or(|m| m.contains(&Method::GET))
            })
            .map(|r| &*r.name)
    }

    /// The policy as the admin API shows it.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "mode": if self.enforce { "enforce" } else { "audit" },
            "default": self.default.as_str(),
            "rules": self.rules.iter().map(|r| serde_json::json!({
                "name": r.name,
                "action": r.action.as_str(),
                "matches": r.describe(),
            })).collect::<Vec<_>>(),
        })
    }

    /// What the policy lets through, rule by rule, for an agent told no:
    /// `reads (GET, HEAD); comments (POST /repos/acme/*/issues/*/comments)`.
    pub(crate) fn allowed(&self) -> String {
        let mut out: Vec<String> = self
            .rules
            .iter()
            .filter(|r| r.action == Action::Allow)
            .map(Rule::describe)
            .collect();
        if self.default == Action::Allow {
            out.push("anything no rule names".into());
        }
        if out.is_empty() {
            "nothing".into()
        } else {
            out.join("; ")
        }
    }

    /// The first rule that decides `view`, or the default.
    pub(crate) fn evaluate(&self, view: &View<'_>) -> Verdict {
        for (index, rule) in self.rules.iter().enumerate() {
            let hit = rule.hit(view);
            let decides = match rule.action {
                Action::Allow => hit == Hit::Yes,
                Action::Deny | Action::Approve => hit != Hit::No,
            };
            if decides {
                return Verdict {
                    action: rule.action,
                    policy: self.name.clone(),
                    rule: rule.name.clone(),
                    index: Some(index),
                    enforce: self.enforce,
                    unclear: hit == Hit::Unclear,
                };
            }
        }
        Verdict {
            action: self.default,
            policy: self.name.clone(),
            rule: DEFAULT.clone(),
            index: None,
            enforce: self.enforce,
            unclear: false,
        }
    }
}

fn rule(key: &str, name: Arc<str>, action: Action, m: &RawMatcher) -> Result<Rule, PolicyError> {
    let methods = match &m.methods {
        None => None,
        Some(list) => {
            let mut methods = Vec::new();
            for (j, text) in list.iter().enumerate() {
                let upper = text.to_ascii_uppercase();
                let method = Method::from_bytes(upper.as_bytes()).map_err(|_| {
                    error(
                        format!("{key}.methods[{j}]"),
                        format!("{text:?} is not an HTTP method"),
                    )
                })?;
                methods.push(method);
            }
            Some(methods)
        }
    };
    let path = match &m.path {
        None => None,
        Some(p) => Some(Glob::parse(p).map_err(|e| error(format!("{key}.path"), e))?),
    };
    let values = |what: &str, list: &std::collections::BTreeMap<String, RawValue>| {
        list.iter()
            .map(|(field, raw)| {
                value(raw)
                    .map(|v| (field.clone(), v))
                    .map_err(|e| error(format!("{key}.{what}.{field}"), e))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Rule {
        name,
        action,
        methods,
        hosts: m.host.as_ref().map(|h| {
            h.to_vec()
                .into_iter()
                .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
                .collect()
        }),
        path,
        query: values("query", &m.query)?,
        body: values("body", &m.body)?,
    })
}

fn value(raw: &RawValue) -> Result<Value, String> {
    Ok(match raw {
        RawValue::Equals(s) => Value::Equals(s.clone()),
        RawValue::In(v) => Value::In(v.clone()),
        RawValue::NotIn(v) => Value::NotIn(v.clone()),
        RawValue::Regex(r) => Value::Regex(
            regex::Regex::new(&format!("^(?:{r})$"))
                .map_err(|e| format!("regex {r:?} does not compile: {e}"))?,
        ),
        RawValue::Range { min, max } => Value::Range {
            min: *min,
            max: *max,
        },
    })
}

/// Whether a matcher holds: yes, no, or cannot tell (a field given twice,
/// a body that does not read as what it says).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hit {
    Yes,
    No,
    Unclear,
}

impl Hit {
    fn and(self, other: Hit) -> Hit {
        match (self, other) {
            (Hit::No, _) | (_, Hit::No) => Hit::No,
            (Hit::Unclear, _) | (_, Hit::Unclear) => Hit::Unclear,
            _ => Hit::Yes,
        }
    }
}

impl Rule {
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(m) = &self.methods {
            parts.push(m.iter().map(Method::as_str).collect::<Vec<_>>().join(", "));
        }
        if let Some(p) = &self.path {
            parts.push(p.to_string());
        }
        if let Some(h) = &self.hosts {
            parts.push(format!("on {}", h.join(", ")));
        }
        let fields: Vec<&str> = self
            .query
            .iter()
            .chain(&self.body)
            .map(|(f, _)| f.as_str())
            .collect();
        if !fields.is_empty() {
            parts.push(format!("with conditions on {}", fields.join(", ")));
        }
        if parts.is_empty() {
            parts.push("any request".into());
        }
        format!("{} ({})", self.name, parts.join(" "))
    }

    fn hit(&self, view: &View<'_>) -> Hit {
        let mut hit = Hit::Yes;
        if let Some(methods) = &self.methods {
            if !methods.contains(view.method) {
                return Hit::No;
            }
        }
        if let Some(hosts) = &self.hosts {
            if !hosts.iter().any(|h| h == view.host) {
                return Hit::No;
            }
        }
        if let Some(glob) = &self.path {
            if !glob.matches(&view.path) {
                return Hit::No;
            }
        }
        for (name, value) in &self.query {
            hit = hit.and(value.hit(&view.query.get(name)));
            if hit == Hit::No {
                return hit;
            }
        }
        for (field, value) in &self.body {
            hit = hit.and(value.hit(&view.body.get(field)));
            if hit == Hit::No {
                return hit;
            }
        }
        hit
    }
}

impl Value {
    /// Every value found must match; none found is no match.
    fn hit(&self, seen: &Seen<'_>) -> Hit {
        let values = match seen {
            Seen::Missing => return Hit::No,
            Seen::Ambiguous => return Hit::Unclear,
            Seen::Values(v) => v,
        };
        let mut hit = Hit::Yes;
        for v in values {
            hit = hit.and(self.one(v));
        }
        hit
    }

    fn one(&self, v: &fields::Text<'_>) -> Hit {
        let eq = |s: &Scalar| match (s.number, v.number) {
            (Some(a), Some(b)) => a == b,
            _ => s.text == v.text,
        };
        let yes = |b: bool| if b { Hit::Yes } else { Hit::No };
        match self {
            Value::Equals(s) => yes(eq(s)),
            Value::In(list) => yes(list.iter().any(eq)),
            Value::NotIn(list) => yes(!list.iter().any(eq)),
            Value::Regex(r) => yes(r.is_match(&v.text)),
            Value::Range { min, max } => match v.number {
                // Not a number where a number is compared: the upstream's
                // reading of it is unknown.
                None => Hit::Unclear,
                Some(n) => yes(min.is_none_or(|m| n >= m) && max.is_none_or(|m| n <= m)),
            },
        }
    }
}

/// A policy's outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) action: Action,
    pub(crate) policy: Arc<str>,
    /// The rule's name, or `default`.
    pub(crate) rule: Arc<str>,
    /// Where the rule is in the policy (`rules[i]`); `None` for the default.
    pub(crate) index: Option<usize>,
    pub(crate) enforce: bool,
    /// Decided by a deny or approve rule on a field it could not read.
    pub(crate) unclear: bool,
}

impl Verdict {
    /// Why, in one sentence an agent can act on.
    pub(crate) fn explain(&self) -> String {
        let by = if &*self.rule == "default" {
            format!(
                "policy {:?} (no rule matched; its default is {})",
                self.policy,
                self.action.as_str()
            )
        } else {
            format!("policy {:?}, rule {:?}", self.policy, self.rule)
        };
        let unclear = if self.unclear {
            " (a field it checks was given twice or the body could not be read, so clavis assumed the worst)"
        } else {
            ""
        };
        match self.action {
            Action::Allow => format!("allowed by {by}"),
            Action::Deny => format!("refused by {by}{unclear}"),
            Action::Approve => format!("needs a person's approval under {by}{unclear}"),
        }
    }
}

/// The request as rules see it, built once per request.
pub(crate) struct View<'a> {
    pub(crate) method: &'a Method,
    pub(crate) host: &'a str,
    pub(crate) path: std::borrow::Cow<'a, str>,
    query: Pairs,
    body: Body,
}

/// Why a request cannot be judged.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ViewError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(
        "the method {0:?} is not spelled in capitals; clavis refuses it where a policy or a budget on tokens or spend applies"
    )]
    Method(String),
}

impl<'a> View<'a> {
    /// Refuses what a policy could be fooled by: under a path rule, a path
    /// that normalizes to something else (SPEC §10: where no rule reads the
    /// path, it cannot fool one, and goes as spelled); under any policy, a
    /// method not in capitals (`delete` is not `DELETE` to a rule, but may
    /// be to a server).
    pub(crate) fn new(
        policies: &[Arc<Policy>],
        method: &'a Method,
        host: &'a str,
        uri: &'a http::Uri,
        body: Body,
    ) -> Result<View<'a>, ViewError> {
        if method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(ViewError::Method(method.as_str().to_owned()));
        }
        let query = if policies.iter().any(|p| p.reads_query) {
            Pairs::parse(uri.query().unwrap_or(""))
        } else {
            Pairs::default()
        };
        let path = if policies.iter().any(|p| p.reads_path) {
            path::normalize(uri.path())?
        } else {
            std::borrow::Cow::Borrowed(uri.path())
        };
        Ok(View {
            method,
            host,
            path,
            query,
            body,
        })
    }
}

/// Every policy of the config, and what each applies to.
#[derive(Debug, Default)]
pub(crate) struct Policies {
    pub(crate) all: Vec<Arc<Policy>>,
    /// A service's own (and `readonly`).
    by_service: std::collections::HashMap<String, Vec<Arc<Policy>>>,
    /// `agents[].policies`: service → agent → policy.
    by_agent: std::collections::HashMap<String, std::collections::HashMap<String, Arc<Policy>>>,
}

impl Policies {
    pub(crate) fn attach_to_service(&mut self, service: &str, policy: Arc<Policy>) {
        self.by_service
            .entry(service.to_owned())
            .or_default()
            .push(policy);
    }

    pub(crate) fn attach_to_agent(&mut self, agent: &str, service: &str, policy: Arc<Policy>) {
        self.by_agent
            .entry(service.to_owned())
            .or_default()
            .insert(agent.to_owned(), policy);
    }

    /// The policies a request of `agent` to `service` must pass (empty,
    /// without allocating, when none apply).
    pub(crate) fn for_exchange(&self, service: &str, agent: Option<&str>) -> Vec<Arc<Policy>> {
        if self.by_service.is_empty() && self.by_agent.is_empty() {
            return Vec::new();
        }
        let own = self.by_service.get(service);
        let agent = agent.and_then(|a| self.by_agent.get(service)?.get(a));
        if own.is_none() && agent.is_none() {
            return Vec::new();
        }
        own.into_iter().flatten().chain(agent).cloned().collect()
    }

    /// Which services and agents a policy is attached to, for the admin view.
    pub(crate) fn attachments(&self, policy: &str) -> (Vec<String>, Vec<(String, String)>) {
        let mut services: Vec<String> = self
            .by_service
            .iter()
            .filter(|(_, ps)| ps.iter().any(|p| &*p.name == policy))
            .map(|(s, _)| s.clone())
            .collect();
        services.sort();
        let mut agents: Vec<(String, String)> = self
            .by_agent
            .iter()
            .flat_map(|(service, agents)| {
                agents
                    .iter()
                    .filter(|(_, p)| &*p.name == policy)
                    .map(move |(agent, _)| (agent.clone(), service.clone()))
            })
            .collect();
        agents.sort();
        (services, agents)
    }
}

/// Every applicable policy's verdict, enforced ones combined (the
/// strictest wins); audit-mode ones only reported.
pub(crate) struct Decision {
    /// The enforced outcome: `None` when no enforced policy applies.
    pub(crate) outcome: Option<Verdict>,
    /// What audit-mode policies would have done, when not allow.
    pub(crate) would: Vec<Verdict>,
}

/// Whether a request with this method has its body read by a rule: only
/// where a rule reads bodies, never for `GET` (no rule may read a `GET`'s
/// body: a websocket upgrade's messages are never seen).
pub(crate) fn reads_body(policies: &[Arc<Policy>], method: &Method) -> bool {
    *method != Method::GET && policies.iter().any(|p| p.reads_body)
}

pub(crate) fn decide(policies: &[Arc<Policy>], view: &View<'_>) -> Decision {
    let mut outcome: Option<Verdict> = None;
    let mut would = Vec::new();
    for policy in policies {
        let verdict = policy.evaluate(view);
        if !verdict.enforce {
            if verdict.action != Action::Allow {
                would.push(verdict);
            }
            continue;
        }
        if outcome.as_ref().is_none_or(|o| verdict.action > o.action) {
            outcome = Some(verdict);
        }
    }
    Decision { outcome, would }
}

#[cfg(test)]
mod tests;
