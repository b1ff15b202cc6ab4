//! `clavis policy test` (SPEC §10): one request judged offline, by the
//! config's policies, with the exchange's own code (clavis's own rules,
//! the policies that apply to the agent × service, the path normalized as
//! the proxy reads it, the body read only where a rule would read it), so
//! what it prints is what the proxy would do.

use std::process::ExitCode;
use std::sync::Arc;

use http::{Method, Uri};

use super::{CliError, PolicyTestArgs};
use crate::catalog::{BoundService, Settings};
use crate::config::guardrails::{RawMatcher, RawRule, RawValue};
use crate::error::{ProxyError, RequestError};
use crate::identity::{Caller, Via};
use crate::policy::{self, Action, Body, Policy, Verdict, View};
use crate::proxy::exchange::{clavis_rules, guard};

/// Exit codes: what the proxy would do.
const ALLOW: u8 = 0;
const DENY: u8 = 1;
const APPROVE: u8 = 3;

/// The request as given on the command line.
struct Asked {
    method: Method,
    uri: Uri,
    host: String,
    /// The body and its content type, when given.
    body: Option<(Vec<u8>, String)>,
}

/// What the proxy would do, and why.
struct Report {
    decision: &'static str,
    exit: u8,
    /// The deciding verdict, when a policy decided.
    verdict: Option<Verdict>,
    why: String,
    /// The refusal the agent would get.
    refusal: Option<ProxyError>,
    /// What audit-mode policies would have done (not enforced).
    audit: Vec<Verdict>,
    /// Each applicable policy's own verdict, and where it is attached.
    each: Vec<(&'static str, Verdict)>,
}

pub(crate) fn test(args: PolicyTestArgs) -> Result<ExitCode, CliError> {
    let loaded = super::load_config(args.config.as_deref())?;
    let settings = &loaded.settings;
    let service = service(settings, &args.service)?;
    let caller = caller(settings, args.agent.as_deref(), &service.name)?;
    let asked = asked(&args, service)?;
    let report = judge(settings, service, &caller, &asked);
    let text = if args.json {
        json(settings, service, &caller, &asked, &report) + "\n"
    } else {
        human(settings, service, &caller, &asked, &report)
    };
    super::out(&text)?;
    Ok(ExitCode::from(report.exit))
}

fn service<'a>(settings: &'a Settings, name: &str) -> Result<&'a BoundService, CliError> {
    let services = &settings.catalog.services;
    services
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| unknown("service", name, services.iter().map(|s| s.name.as_str())))
}

/// `--service: no service named "x" in the config (its services: a, b)`.
fn unknown<'a>(what: &str, name: &str, names: impl Iterator<Item = &'a str>) -> CliError {
    let names: Vec<&str> = names.collect();
    let listed = if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    };
    CliError::Usage(format!(
        "--{what}: no {what} named {name:?} in the config (its {what}s: {listed})"
    ))
}

/// The agent, which must be allowed to use the service (the exchange's
/// one scope check); no agent: an anonymous local caller, where the
/// config lets one in.
fn caller(settings: &Settings, agent: Option<&str>, service: &str) -> Result<Caller, CliError> {
    let config = &settings.config;
    let Some(name) = agent else {
        if config.proxy.require_auth {
            return Err(CliError::Usage(
                "--agent: proxy.require_auth is on, so every request comes from an agent; name one"
                    .into(),
            ));
        }
        return Ok(Caller::anonymous());
    };
    let found = config
        .agents
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| unknown("agent", name, config.agents.iter().map(|a| a.name.as_str())))?;
    let caller = Caller::agent(found.clone(), Via::Proxy);
    if !caller.may_use(service) {
        return Err(CliError::Usage(format!(
            "agent {name:?} may not use service {service:?} (agents[].services does not list it): the proxy refuses it with 403 before any policy"
        )));
    }
    Ok(caller)
}

/// `METHOD URL` (one argument or two), the URL on a host the service's
/// connector claims, and the body (`@file` read).
fn asked(args: &PolicyTestArgs, service: &BoundService) -> Result<Asked, CliError> {
    let line = args.request.join(" ");
    let mut words = line.split_whitespace();
    let (Some(method), Some(url), None) = (words.next(), words.next(), words.next()) else {
        return Err(CliError::Usage(format!(
            "the request must be 'METHOD URL', e.g. 'GET https://api.github.com/user', not {line:?}"
        )));
    };
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| CliError::Usage(format!("{method:?} is not an HTTP method")))?;
    let uri: Uri = url
        .parse()
        .map_err(|e| CliError::Usage(format!("{url:?} is not a URL: {e}")))?;
    let host = match (uri.scheme_str(), uri.host()) {
        (Some("https" | "http"), Some(host)) => host.trim_end_matches('.').to_ascii_lowercase(),
        _ => {
            return Err(CliError::Usage(format!(
                "{url:?} is not an absolute URL (https://host/path)"
            )))
        }
    };
    let connector = &service.connector;
    if !connector.hosts.iter().any(|h| h.matches(&host)) {
        let claimed: Vec<String> = connector.hosts.iter().map(|h| h.to_string()).collect();
        return Err(CliError::Usage(format!(
            "host {host:?} is not one service {:?} can be reached on: its connector {:?} claims {}",
            service.name,
            connector.name,
            claimed.join(", ")
        )));
    }
    let body = match &args.body {
        None => None,
        Some(text) => {
            let bytes = match text.strip_prefix('@') {
                Some(path) => std::fs::read(path)
                    .map_err(|e| CliError::Usage(format!("--body: cannot read {path}: {e}")))?,
                None => text.as_bytes().to_vec(),
            };
            let content_type = args.content_type.clone().unwrap_or_else(|| {
                let json = bytes
                    .iter()
                    .find(|b| !b.is_ascii_whitespace())
                    .is_some_and(|b| matches!(b, b'{' | b'['));
                if json {
                    "application/json".into()
                } else {
                    "application/x-www-form-urlencoded".into()
                }
            });
            Some((bytes, content_type))
        }
    };
    Ok(Asked {
        method,
        uri,
        host,
        body,
    })
}

/// What the proxy's `decide` phase would do with the request (budgets
/// aside: they depend on what was used).
fn judge(settings: &Settings, service: &BoundService, caller: &Caller, asked: &Asked) -> Report {
    let refused = |why: String, refusal: ProxyError| Report {
        decision: "deny",
        exit: DENY,
        verdict: None,
        why,
        refusal: Some(refusal),
        audit: Vec::new(),
        each: Vec::new(),
    };
    let catalog = &settings.catalog;
    let path = asked.uri.path();
    if let Err(e) = clavis_rules(
        &catalog.registry,
        &service.connector,
        &asked.method,
        &asked.host,
        path,
    ) {
        return refused(format!("clavis's own rule: {e}"), e.into());
    }
    let agent = caller.agent_name();
    let policies = catalog.policies.for_exchange(&service.name, agent);
    if policies.is_empty() {
        return Report {
            decision: "allow",
            exit: ALLOW,
            verdict: None,
            why: "no policy applies to this agent and service".into(),
            refusal: None,
            audit: Vec::new(),
            each: Vec::new(),
        };
    }
    let limit = settings.config.limits.policy_body;
    let body = asked
        .body
        .as_ref()
        .filter(|_| policy::reads_body(&policies, &asked.method));
    if let Some((bytes, _)) = body.filter(|(b, _)| b.len() > limit) {
        let e = RequestError::TooLarge { limit };
        return refused(
            format!(
                "a rule reads the body, which is {} bytes: {e} (limits.policy_body)",
                bytes.len()
            ),
            e.into(),
        );
    }
    let content_type = body.map(|(_, ct)| ct.as_str());
    let bytes = body.map(|(b, _)| b.as_slice());
    let decision = match guard::policy_decision(
        &policies,
        &asked.method,
        &asked.host,
        &asked.uri,
        content_type,
        bytes,
    ) {
        Ok(d) => d,
        Err(e) => {
            let why = format!("refused before any rule is read: {e}");
            return refused(why, crate::error::Guard::View(e).into());
        }
    };
    let each = each(catalog, service, &policies, asked, content_type, bytes);
    let request = guard::request_line(&asked.method, &asked.uri);
    let approvals = settings.config.approvals.is_some();
    let Some(verdict) = decision.outcome else {
        return Report {
            decision: "allow",
            exit: ALLOW,
            verdict: None,
            why: "only policies in audit mode apply; they never block".into(),
            refusal: None,
            audit: decision.would,
            each,
        };
    };
    let refusal = guard::refusal(&policies, &verdict, || request, approvals);
    let (decision_word, exit) = match (verdict.action, &refusal) {
        (Action::Allow, _) => ("allow", ALLOW),
        (Action::Approve, None) => ("approve", APPROVE),
        _ => ("deny", DENY),
    };
    let mut why = verdict.explain();
    if verdict.action == Action::Approve && refusal.is_some() {
        why.push_str(", but approvals are not configured (approvals:), so clavis refuses it");
    }
    Report {
        decision: decision_word,
        exit,
        why,
        verdict: Some(verdict),
        refusal: refusal.map(ProxyError::from),
        audit: decision.would,
        each,
    }
}

/// Each applicable policy's own verdict, by the same evaluation the
/// decision combined.
fn each(
    catalog: &crate::catalog::Catalog,
    service: &BoundService,
    policies: &[Arc<Policy>],
    asked: &Asked,
    content_type: Option<&str>,
    bytes: Option<&[u8]>,
) -> Vec<(&'static str, Verdict)> {
    let own = catalog.policies.for_exchange(&service.name, None);
    let body = || bytes.map_or(Body::Empty, |b| Body::parse(content_type, b));
    policies
        .iter()
        .filter_map(|p| {
            let view = View::new(
                std::slice::from_ref(p),
                &asked.method,
                &asked.host,
                &asked.uri,
                body(),
            )
            .ok()?;
            let attached = if own.iter().any(|o| Arc::ptr_eq(o, p)) {
                "service"
            } else {
                "agent"
            };
            Some((attached, p.evaluate(&view)))
        })
        .collect()
}

/// The rule as the config writes it (YAML flow style); `readonly` is the
/// built-in policy of `readonly: true`.
fn written(settings: &Settings, verdict: &Verdict) -> Option<String> {
    let index = verdict.index?;
    if &*verdict.policy == "readonly"
        && !settings
            .config
            .policies
            .iter()
            .any(|p| p.name == "readonly")
    {
        return Some(
            "{ name: reads, allow: { methods: [GET, HEAD, OPTIONS] } }  (readonly: true)".into(),
        );
    }
    let raw = settings
        .config
        .policies
        .iter()
        .find(|p| *p.name == *verdict.policy)?
        .rules
        .get(index)?;
    Some(rule_yaml(raw))
}

fn rule_yaml(rule: &RawRule) -> String {
    let mut parts = Vec::new();
    if let Some(name) = &rule.name {
        parts.push(format!("name: {}", scalar(name)));
    }
    for (word, m) in [
        ("allow", &rule.allow),
        ("deny", &rule.deny),
        ("approve", &rule.approve),
    ] {
        if let Some(m) = m {
            parts.push(format!("{word}: {}", matcher(m)));
        }
    }
    format!("{{ {} }}", parts.join(", "))
}

fn matcher(m: &RawMatcher) -> String {
    let list = |items: Vec<String>| format!("[{}]", items.join(", "));
    let map = |fields: &std::collections::BTreeMap<String, RawValue>| {
        let inner: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{}: {}", scalar(k), value(v)))
            .collect();
        format!("{{ {} }}", inner.join(", "))
    };
    let mut parts = Vec::new();
    if let Some(methods) = &m.methods {
        parts.push(format!("methods: {}", list(methods.clone())));
    }
    if let Some(host) = &m.host {
        let hosts: Vec<String> = host.to_vec().iter().map(|h| scalar(h)).collect();
        parts.push(format!("host: {}", list(hosts)));
    }
    if let Some(path) = &m.path {
        parts.push(format!("path: {}", scalar(path)));
    }
    if !m.query.is_empty() {
        parts.push(format!("query: {}", map(&m.query)));
    }
    if !m.body.is_empty() {
        parts.push(format!("body: {}", map(&m.body)));
    }
    format!("{{ {} }}", parts.join(", "))
}

fn value(v: &RawValue) -> String {
    let list = |items: &[crate::config::guardrails::Scalar]| {
        items
            .iter()
            .map(|s| scalar(&s.text))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match v {
        RawValue::Equals(s) => scalar(&s.text),
        RawValue::In(items) => format!("{{ in: [{}] }}", list(items)),
        RawValue::NotIn(items) => format!("{{ not_in: [{}] }}", list(items)),
        RawValue::Regex(r) => format!("{{ regex: {} }}", quoted(r)),
        RawValue::Range { min, max } => {
            let mut parts = Vec::new();
            if let Some(n) = min {
                parts.push(format!("min: {n}"));
            }
            if let Some(n) = max {
                parts.push(format!("max: {n}"));
            }
            format!("{{ {} }}", parts.join(", "))
        }
    }
}

/// Plain when YAML reads it back as the same string, else double-quoted.
fn scalar(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b'-'))
        && !text.starts_with('-');
    if plain {
        text.to_owned()
    } else {
        quoted(text)
    }
}

fn quoted(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

/// `policy "p" (service, enforce)`.
fn policy_label(attached: &str, verdict: &Verdict) -> String {
    let mode = if verdict.enforce { "enforce" } else { "audit" };
    format!("{:?} ({attached}'s, mode {mode})", verdict.policy)
}

fn rule_label(settings: &Settings, verdict: &Verdict) -> String {
    match verdict.index {
        None => format!("default ({}: no rule matched)", verdict.action.as_str()),
        Some(i) => {
            let written = written(settings, verdict).unwrap_or_default();
            format!("rules[{i}] {:?}: {written}", verdict.rule)
        }
    }
}

fn who(caller: &Caller) -> String {
    match caller.agent_name() {
        Some(a) => format!("agent {a:?}"),
        None => "an anonymous caller".into(),
    }
}

fn budgets(settings: &Settings, service: &BoundService, caller: &Caller) -> Vec<(String, String)> {
    settings
        .catalog
        .budgets
        .iter()
        .filter(|b| b.applies(&service.name, caller.agent_name()))
        .map(|b| (b.name.clone(), b.describe()))
        .collect()
}

fn human(
    settings: &Settings,
    service: &BoundService,
    caller: &Caller,
    asked: &Asked,
    report: &Report,
) -> String {
    let mut out = vec![
        format!("decision: {}", report.decision),
        format!(
            "request:  {} {} ({} → service {:?})",
            asked.method,
            asked.uri,
            who(caller),
            service.name
        ),
    ];
    let attached_of = |v: &Verdict| {
        report
            .each
            .iter()
            .find(|(_, e)| e.policy == v.policy)
            .map_or("service", |(a, _)| *a)
    };
    if let Some(v) = &report.verdict {
        out.push(format!("policy:   {}", policy_label(attached_of(v), v)));
        out.push(format!("rule:     {}", rule_label(settings, v)));
    }
    out.push(format!("why:      {}", report.why));
    for would in &report.audit {
        let word = match would.action {
            Action::Approve => "would need approval",
            _ => "would deny",
        };
        out.push(format!(
            "audit:    {word} (audit mode): allowed; policy {:?}, {}",
            would.policy,
            rule_label(settings, would)
        ));
    }
    if report.each.len() > 1 {
        for (attached, v) in &report.each {
            out.push(format!(
                "judged:   {} says {} by {}",
                policy_label(attached, v),
                v.action.as_str(),
                rule_label(settings, v)
            ));
        }
    }
    if let Some(e) = &report.refusal {
        let doc = e.to_json();
        out.push(format!(
            "agent sees: {} {} {}",
            e.status().as_u16(),
            doc["type"].as_str().unwrap_or_default(),
            doc["detail"].as_str().unwrap_or_default()
        ));
    } else if report.decision == "approve" {
        out.push(
            "agent sees: the request held until a person approves or denies it (clavis approvals)"
                .into(),
        );
    }
    let budgets = budgets(settings, service, caller);
    if !budgets.is_empty() {
        let list: Vec<String> = budgets.iter().map(|(n, d)| format!("{n} ({d})")).collect();
        out.push(format!(
            "budgets:  {} — counted when the request is sent, not judged here",
            list.join("; ")
        ));
    }
    out.join("\n") + "\n"
}

fn verdict_json(settings: &Settings, attached: &str, v: &Verdict) -> serde_json::Value {
    serde_json::json!({
        "policy": v.policy,
        "attached": attached,
        "mode": if v.enforce { "enforce" } else { "audit" },
        "action": v.action.as_str(),
        "rule": {
            "index": v.index,
            "name": v.rule,
            "written": written(settings, v),
        },
        "why": v.explain(),
    })
}

fn json(
    settings: &Settings,
    service: &BoundService,
    caller: &Caller,
    asked: &Asked,
    report: &Report,
) -> String {
    let attached_of = |v: &Verdict| {
        report
            .each
            .iter()
            .find(|(_, e)| e.policy == v.policy)
            .map_or("service", |(a, _)| *a)
    };
    let agent_sees = report.refusal.as_ref().map(|e| {
        let doc = e.to_json();
        serde_json::json!({
            "status": e.status().as_u16(),
            "type": doc["type"],
            "detail": doc["detail"],
        })
    });
    let doc = serde_json::json!({
        "decision": report.decision,
        "exit": report.exit,
        "request": {
            "method": asked.method.as_str(),
            "url": asked.uri.to_string(),
            "agent": caller.agent_name(),
            "service": service.name,
        },
        "verdict": report.verdict.as_ref().map(|v| verdict_json(settings, attached_of(v), v)),
        "why": report.why,
        "agent_sees": agent_sees,
        "audit": report.audit.iter().map(|v| verdict_json(settings, attached_of(v), v)).collect::<Vec<_>>(),
        "policies": report.each.iter().map(|(a, v)| verdict_json(settings, a, v)).collect::<Vec<_>>(),
        "budgets": budgets(settings, service, caller).into_iter().map(|(name, limit)| serde_json::json!({"name": name, "limit": limit})).collect::<Vec<_>>(),
    });
    doc.to_string()
}
