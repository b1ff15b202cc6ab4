//! Approvals on the admin port (SPEC §12): operators list and decide them
//! (`/v1/approvals…`); an agent waits on its own without spending tokens
//! (`GET /api/approvals/{id}?wait=30s`, MCP `wait_for_approval`).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State as AxumState};
use axum::http::HeaderMap;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::Value;

use super::json;
use crate::approvals::{Approvals, DecideError, Status};
use crate::error::{ProxyError, RequestError};
use crate::identity::{Caller, ScopeError};
use crate::state::State;

/// The longest an agent may wait in one call.
const MAX_WAIT: Duration = Duration::from_secs(60);

fn configured(state: &State) -> Result<&Approvals, ProxyError> {
    state.approvals.as_ref().ok_or_else(|| {
        RequestError::Missing("approvals are not configured (SPEC §12 `approvals:`)".into()).into()
    })
}

fn decide_error(e: DecideError) -> ProxyError {
    match e {
        DecideError::NotFound(_) => RequestError::Missing(e.to_string()).into(),
        DecideError::NotPending { .. } => RequestError::Conflict(e.to_string()).into(),
        DecideError::NoReason => RequestError::Invalid(e.to_string()).into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    status: Option<String>,
}

pub(super) async fn list(
    AxumState(state): AxumState<State>,
    Extension(who): Extension<Caller>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ProxyError> {
    who.require_admin()?;
    let Query(q) = query.map_err(|e| RequestError::Malformed(e.body_text()))?;
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            RequestError::Malformed(format!(
                "status {s:?} is not pending, approved, denied, expired or used"
            ))
        })?),
    };
    let records = configured(&state)?.list(status);
    Ok(Json(Value::Array(
        records.iter().map(|r| r.to_json()).collect(),
    )))
}

pub(super) async fn get_one(
    AxumState(state): AxumState<State>,
    Extension(who): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ProxyError> {
    who.require_admin()?;
    let record = configured(&state)?
        .get(&id)
        .ok_or_else(|| decide_error(DecideError::NotFound(id)))?;
    Ok(Json(record.to_json()))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Decision {
    #[serde(default)]
    reason: Option<String>,
}

async fn decide(
    state: &State,
    who: &Caller,
    id: &str,
    approve: bool,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ProxyError> {
    who.require_admin()?;
    let empty = matches!(&body, Ok(b) if b.is_empty());
    let decision: Decision = if empty {
        Decision::default()
    } else {
        json::parse(headers, body, state.config.limits.admin_body)?
    };
    let record = configured(state)?
        .decide(id, approve, who, decision.reason)
        .map_err(decide_error)?;
    Ok(Json(record.to_json()))
}

pub(super) async fn approve(
    AxumState(state): AxumState<State>,
    Extension(who): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ProxyError> {
    decide(&state, &who, &id, true, &headers, body).await
}

pub(super) async fn deny(
    AxumState(state): AxumState<State>,
    Extension(who): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ProxyError> {
    decide(&state, &who, &id, false, &headers, body).await
}

/// Waits (at most `wait`, capped at a minute) for an approval of the
/// caller's own to be decided; answers its record then.
pub(super) async fn wait(
    state: &State,
    who: &Caller,
    id: &str,
    wait: Duration,
) -> Result<Value, ProxyError> {
    let approvals = configured(state)?;
    let own = approvals
        .get(id)
        .filter(|r| who.is_admin() || who.agent_name() == Some(r.binding.agent.as_str()));
    if own.is_none() {
        // Someone else's approval reads as missing, like a service out of scope.
        return Err(ScopeError::Unknown { key: id.to_owned() }.into());
    }
    let record = approvals
        .wait(id, wait.min(MAX_WAIT))
        .await
        .ok_or_else(|| decide_error(DecideError::NotFound(id.to_owned())))?;
    Ok(record.to_json())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WaitQuery {
    wait: Option<String>,
}

pub(super) async fn agent_wait(
    AxumState(state): AxumState<State>,
    Extension(who): Extension<Caller>,
    Path(id): Path<String>,
    query: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ProxyError> {
    let Query(q) = query.map_err(|e| RequestError::Malformed(e.body_text()))?;
    let how_long = match q.wait.as_deref() {
        None => Duration::ZERO,
        Some(text) => humantime::parse_duration(text).map_err(|_| {
            RequestError::Malformed(format!("wait {text:?} is not a duration like 30s"))
        })?,
    };
    Ok(Json(wait(&state, &who, &id, how_long).await?))
}
