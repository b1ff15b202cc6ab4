//! The guardrails as operators and agents see them: `GET /v1/budgets`
//! (an agent: its own and the shared ones of services it may use, also at
//! `/api/budgets` and MCP `get_budgets`) and `GET /v1/policies` (admin).

use axum::extract::State as AxumState;
use axum::{Extension, Json};
use serde_json::{json, Value};

use crate::error::ProxyError;
use crate::identity::Caller;
use crate::state::State;

/// Every budget the caller may see, with its use in the current window.
pub(super) async fn budgets(state: &State, who: &Caller) -> Result<Vec<Value>, ProxyError> {
    let statuses = state.budgets.statuses(&state.live().budgets).await?;
    Ok(statuses
        .iter()
        .filter(|s| {
            let spec = &s.spec;
            who.is_admin()
                || (who.may_use(&spec.service)
                    && spec
                        .agent
                        .as_deref()
                        .is_none_or(|a| Some(a) == who.agent_name()))
        })
        .map(|s| s.to_json())
        .collect())
}

pub(super) async fn budgets_route(
    AxumState(state): AxumState<State>,
    Extension(who): Extension<Caller>,
) -> Result<Json<Value>, ProxyError> {
    Ok(Json(Value::Array(budgets(&state, &who).await?)))
}

pub(super) async fn policies_route(
    AxumState(state): AxumState<State>,
    Extension(who): Extension<Caller>,
) -> Result<Json<Value>, ProxyError> {
    who.require_admin()?;
    let live = state.live();
    let policies = &live.policies;
    let list = policies
        .all
        .iter()
        .map(|p| {
            let (services, agents) = policies.attachments(&p.name);
            let mut v = p.to_json();
            v["services"] = json!(services);
            v["agents"] = json!(agents
                .iter()
                .map(|(agent, service)| json!({"agent": agent, "service": service}))
                .collect::<Vec<_>>());
            v
        })
        .collect();
    Ok(Json(Value::Array(list)))
}

/// Sets `clavis_budget_used{budget}` for a scrape.
pub(super) async fn update_gauges(state: &State) {
    if let Ok(statuses) = state.budgets.statuses(&state.live().budgets).await {
        for s in statuses {
            state
                .metrics
                .budget_used
                .get_or_create(&crate::metrics::BudgetLabel {
                    budget: s.spec.name.clone(),
                })
                .set(s.used);
        }
    }
}
