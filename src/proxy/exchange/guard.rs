//! The guardrails of the `decide` phase (SPEC §10–§11): the policies that
//! apply to this agent and service judge the request; the budgets reserve
//! the most it can use before it is sent, and the record settles them
//! with what it did use.

use std::sync::Arc;

use http::{header, Method, Uri};

use super::record::{Charge, Record};
use super::Outgoing;
use crate::approvals::Binding;
use crate::budget::{Amounts, Ask, Spec};
use crate::config::guardrails::Unit;
use crate::connector::meter::Meter;
use crate::error::{Guard, ProxyError};
use crate::metrics::{Decision as DecisionLabel, Shared};
use crate::policy::{self, Action, Body, Policy, Verdict, View, ViewError};

/// The request as the agent sent it, for messages: method and path.
fn spelled(out: &Outgoing) -> String {
    request_line(&out.parts.method, &out.parts.uri)
}

/// `METHOD /path`, as refusals name a request.
pub(crate) fn request_line(method: &Method, uri: &Uri) -> String {
    format!("{method} {}", uri.path())
}

/// What every policy that applies makes of one request: the view (path
/// normalized where a rule reads it, the method in capitals) and each
/// policy's verdict. `body` is the body when a rule reads it
/// ([`policy::reads_body`]). Pure: the exchange and `clavis policy test`
/// both judge with it.
pub(crate) fn policy_decision(
    policies: &[Arc<Policy>],
    method: &Method,
    host: &str,
    uri: &Uri,
    content_type: Option<&str>,
    body: Option<&[u8]>,
) -> Result<policy::Decision, ViewError> {
    let body = match body {
        Some(bytes) => Body::parse(content_type, bytes),
        None => Body::Empty,
    };
    let view = View::new(policies, method, host, uri, body)?;
    Ok(policy::decide(policies, &view))
}

/// The refusal an enforced verdict makes, naming the request (spelled by
/// `request`, only for a refusal: most requests pass) and what the deciding
/// policy allows; `None` when it lets the request through, or when a person
/// may approve it (`approvals` configured).
pub(crate) fn refusal(
    policies: &[Arc<Policy>],
    verdict: &Verdict,
    request: impl FnOnce() -> String,
    approvals: bool,
) -> Option<Guard> {
    let allowed = || {
        policies
            .iter()
            .find(|p| p.name == verdict.policy)
            .map_or_else(|| "nothing".into(), |p| p.allowed())
    };
    match verdict.action {
        Action::Allow => None,
        Action::Deny => Some(Guard::Policy {
            request: request(),
            why: verdict.explain(),
            allowed: allowed(),
        }),
        Action::Approve if !approvals => Some(Guard::NoApprovals {
            request: request(),
            why: verdict.explain(),
            allowed: allowed(),
        }),
        Action::Approve => None,
    }
}

/// Judges the request by every policy that applies: the strictest
/// enforced outcome decides; audit-mode outcomes are logged, counted and
/// noted on the audit event, never enforced. `Some` when a person must
/// approve it.
pub(super) fn judge(
    record: &mut Record,
    policies: &[Arc<Policy>],
    out: &Outgoing,
) -> Result<Option<Verdict>, ProxyError> {
    let content_type = out
        .parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let decision = policy_decision(
        policies,
        &out.parts.method,
        &record.target.host,
        &out.parts.uri,
        content_type,
        out.buffered.as_deref(),
    )
    .map_err(Guard::View)?;
    let state = record.state.clone();
    let metrics = &state.metrics;
    let count = |v: &Verdict, decision: &'static str| {
        metrics
            .policy_decisions
            .get_or_create(&DecisionLabel {
                policy: Shared(v.policy.clone()),
                rule: Shared(v.rule.clone()),
                decision,
            })
            .inc();
    };
    for would in &decision.would {
        let word = match would.action {
            Action::Approve => "would_approve",
            _ => "would_deny",
        };
        count(would, word);
        tracing::info!(policy = %would.policy, rule = %would.rule, request = %spelled(out), "{word} (policy in audit mode)");
        record.note(format!(
            "{} (mode: audit, not enforced)",
            would.explain().replacen("refused", "would be refused", 1)
        ));
    }
    let Some(verdict) = decision.outcome else {
        return Ok(None);
    };
    count(&verdict, verdict.action.as_str());
    let approvals = record.state.approvals.is_some();
    if let Some(refused) = refusal(policies, &verdict, || spelled(out), approvals) {
        return Err(refused.into());
    }
    Ok((verdict.action == Action::Approve).then_some(verdict))
}

/// What a person is asked to approve: exactly this request, from this
/// agent, under this rule.
pub(super) struct Asked {
    binding: Binding,
    verdict: Verdict,
    preview: String,
}

/// Binds a request an `approve` rule matched to the agent, service,
/// method, URL and the SHA-256 of the body as the agent sent it (before a
/// budget may rewrite it), so only that request, once, goes out on the
/// approval.
pub(super) async fn asked(
    record: &Record,
    verdict: Verdict,
    out: &mut Outgoing,
) -> Result<Asked, ProxyError> {
    let state = record.state.clone();
    let body = out.buffer(state.config.limits.policy_body).await?.clone();
    let service = record.service()?.clone();
    let anchors = state.store.anchors(&service).ok().flatten();
    let binding = Binding {
        agent: record.caller.name().to_owned(),
        service: service.name.clone(),
        method: out.parts.method.to_string(),
        url: out.parts.uri.to_string(),
        body_sha256: crate::encoding::hex(
            ring::digest::digest(&ring::digest::SHA256, &body).as_ref(),
        ),
    };
    let preview = crate::approvals::preview(&body, anchors.as_deref());
    Ok(Asked {
        binding,
        verdict,
        preview,
    })
}

/// Holds the request until a person decides (or the hold ends); `Ok` when
/// an approval was used for it.
pub(super) async fn approval(record: &Record, asked: Asked) -> Result<(), ProxyError> {
    let Some(approvals) = &record.state.approvals else {
        return Err(ProxyError::Internal("approval asked without approvals"));
    };
    let Asked {
        binding,
        verdict,
        preview,
    } = asked;
    approvals
        .gate(
            binding,
            &verdict.policy,
            &verdict.rule,
            preview,
            &record.caller,
        )
        .await?;
    Ok(())
}

/// The path a meter reads. Where a budget counts tokens or spend, it is the
/// path as a server that decodes it routes it (`/v1/chat/%63ompletions` is
/// the chat endpoint), and a path that does not normalize (`//`, `..`, an
/// encoded `/`, double encoding) or a method not in capitals is refused: a
/// respelled request must be metered as the endpoint it reaches, never as
/// another or as none. A count of requests reads no path: it goes as spelled.
pub(super) fn metered_path(out: &Outgoing, budgets: &[Arc<Spec>]) -> Result<String, ProxyError> {
    let spelled = out.parts.uri.path();
    let costs = budgets
        .iter()
        .any(|b| !matches!(b.unit(), None | Some(Unit::Requests)));
    if !costs {
        return Ok(spelled.to_owned());
    }
    let method = out.parts.method.as_str();
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(Guard::View(ViewError::Method(method.to_owned())).into());
    }
    let path = policy::normalize_path(spelled).map_err(|e| Guard::View(ViewError::Path(e)))?;
    Ok(path.into_owned())
}

/// Reserves the most the request can use in every budget that applies,
/// refusing it if that does not fit; `path` is the one [`metered_path`] read. An LLM call without an output cap
/// gets the one the budgets leave room for; an OpenAI stream is asked for
/// its final usage event; either way the answer is asked for uncompressed
/// so its usage can be read as it passes.
pub(super) async fn charge(
    record: &mut Record,
    budgets: &[Arc<Spec>],
    out: &mut Outgoing,
    meter: Meter,
    path: &str,
) -> Result<(), ProxyError> {
    let body = out.buffered.as_deref().unwrap_or(&[]);
    let estimate = meter
        .estimate(&out.parts.method, path, body)
        .map_err(|why| Guard::Unmeasurable {
            budget: budgets.first().map_or_else(String::new, |b| b.name.clone()),
            why,
        })?;
    let caps_output = budgets
        .iter()
        .any(|b| matches!(b.unit(), Some(Unit::Tokens | Unit::OutputTokens)));
    // A cap clavis sets applies to each of the call's outputs: what is
    // reserved for the outputs is the cap times their number.
    let choices = estimate.choices.max(1.0);
    let limit = record.state.config.limits.budget_output_cap as f64 * choices;
    let open_output =
        (estimate.llm.is_some() && estimate.output_cap.is_none() && caps_output).then_some(limit);
    let fixed = Amounts {
        requests: 1.0,
        input_tokens: estimate.input_tokens,
        output_tokens: estimate.output_cap.unwrap_or(0.0),
        spend: estimate.spend,
    };
    let held = record
        .state
        .budgets
        .reserve(budgets, Ask { fixed, open_output })
        .await?;
    // The cap each output gets; what a call without a usage report counts
    // is what its outputs can really use, cap × outputs.
    let cap = held.granted_output.map(|g| (g / choices).floor() as u64);
    if let Some(call) = estimate.llm {
        out.parts.headers.insert(
            header::ACCEPT_ENCODING,
            http::HeaderValue::from_static("identity"),
        );
        let current = out.buffered.as_deref().unwrap_or(&[]);
        if let Some(rewritten) = call.rewrite(current, cap) {
            out.set_body(rewritten.into());
        }
    }
    let mut fixed = fixed;
    if let Some(cap) = cap {
        fixed.output_tokens = cap as f64 * choices;
    }
    record.charge(Charge::new(held, fixed, estimate.llm.is_some()));
    Ok(())
}
