//! `/v1/services`: register, list, read, delete; store credentials (validated,
//! live-checked, sealed); reveal a token to the admin or a `reveal` agent.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State as AxumState};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::json;
use crate::audit::{Action, Detail, Event};
use crate::credentials::Credentials;
use crate::error::{ProxyError, RequestError};
use crate::identity::{Caller, ScopeError};
use crate::state::State;
use crate::store::{Origin, Service, StoreError};

fn view(s: &Service) -> Value {
    let time = |t: std::time::SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    json!({
        "id": s.id,
        "name": s.name,
        "connector_name": s.connector.name,
        "created_at": time(s.created_at),
        "has_credentials": s.has_credentials(),
        "validated_at": s.validated_at.map(time),
        "default": s.default,
        "origin": match s.origin { Origin::Config => "config", Origin::Api => "api" },
        "hosts": s.connector.hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    })
}

/// The service named or numbered in a path, if the caller may see it.
pub(super) fn visible(state: &State, who: &Caller, key: &str) -> Result<Arc<Service>, ScopeError> {
    state
        .store
        .table()
        .find(key)
        .filter(|s| who.may_use(&s.name))
        .cloned()
        .ok_or_else(|| ScopeError::Unknown {
            key: key.to_owned(),
        })
}

/// Every admin request struct refuses a field it does not know (`422`
/// naming it): a typo must not register a service without what it meant.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Create {
    name: String,
    connector_name: String,
    #[serde(default)]
    default: bool,
    #[serde(default)]
    notes: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    fields: Vec<CreateField>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateField {
    name: String,
    value: String,
    #[serde(default)]
    sensitive: bool,
}

pub(super) async fn create(
    AxumState(state): AxumState<State>,
    Extension(who): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ProxyError> {
    who.require_admin()?;
    let req: Create = json::parse(&headers, body, state.config.limits.admin_body)?;
    if !crate::config::valid_name(&req.name) {
        return Err(RequestError::Invalid(format!(
            "name {:?} must be 1-128 letters, digits, '-', '_' or '.'",
            req.name
        ))
        .into());
    }
    let live = state.live();
    let registry = &live.registry;
    let connector = registry.get(&req.connector_name).ok_or_else(|| {
        RequestError::Invalid(format!(
            "unknown connector_name {:?}; known: {}",
            req.connector_name,
            registry.names().join(", ")
        ))
    })?;
    // One default per host: connectors that share hosts share it.
    let table = state.store.table();
    if req.default
        && registry
            .family(&connector.name)
            .iter()
            .flat_map(|c| table.for_connector(&c.name))
            .any(|s| s.default)
    {
        return Err(RequestError::Conflict(format!(
            "connector {:?} already has a default service",
            connector.name
        ))
        .into());
    }
    let mut entry = crate::config::EntrySpec {
        notes: req.notes,
        url: req.url,
        username: req.username,
        fields: Vec::new(),
    };
    for f in req.fields {
        if !crate::config::valid_name(&f.name) {
            return Err(
                RequestError::Invalid(format!("fields: {:?} is not a field name", f.name)).into(),
            );
        }
        entry
            .fields
            .push((f.name, crate::secret::Secret::new(f.value), f.sensitive));
    }
    let service = state
        .store
        .add(&req.name, connector.clone(), req.default, Origin::Api)?;
    let service = state.store.set_entry(&service.id, entry)?;
    let v = view(&service);
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"id": v["id"], "name": v["name"], "connector_name": v["connector_name"], "created_at": v["created_at"]}),
        ),
    ))
}

pub(super) async fn list(
    AxumState(state): AxumState<State>,
    Extension(who): Extension<Caller>,
) -> Json<Value> {
    let table = state.store.table();
    let services: Vec<Value> = table
        .all()
        .iter()
        .filter(|s| who.may_use(&s.name))
        .map(|s| view(s))
        .collect();
    Json(Value::Array(services))
}

pub(super) async fn get_one(
    AxumState(state): AxumState<State>,
    Extension(who): Extension<Caller>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ProxyError> {
    Ok(Json(view(&*visible(&state, &who, &key)?)))
}

pub(super) async fn delete(
    AxumState(state): AxumState<State>,
    Extension(who): Extension<Caller>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ProxyError> {
    who.require_admin()?;
    let service = visible(&state, &who, &key)?;
    state.audit.record(Event::new(
        Action::Delete,
        &service.name,
        &who.actor(),
        Detail::default(),
    ))?;
    state.store.remove(&service.id)?;
    state.tokens.forget(&service.id);
    if service.origin == Origin::Config {
        tracing::warn!(service = %service.name, "deleted a service defined in the config file; it returns at the next start");
    }
    Ok(Json(
        json!({"status": "deleted", "id": service.id, "name": service.name}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StoreCredentials {
    token_type: String,
    data: BTreeMap<String, Value>,
}

pub(super) async fn store_credentials(
    AxumState(state): AxumState<State>,
    Extension(who): Extension<Caller>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ProxyError> {
    who.require_admin()?;
    let service = visible(&state, &who, &key)?;
    let req: StoreCredentials = json::parse(&headers, body, state.config.limits.admin_body)?;
    if req.token_type.is_empty() {
        return Err(RequestError::Invalid("token_type must not be empty".into()).into());
    }
    let mut creds = Credentials::default();
    for (field, value) in req.data {
        let Value::String(text) = value else {
            return Err(RequestError::Invalid(format!("data.{field} must be a string")).into());
        };
        creds.insert(field, zeroize::Zeroizing::new(text));
    }
    // A TOTP-only entry carries no connector credential to validate.
    let totp_only =
        creds.get("totp_secret").is_some() && creds.names().all(|n| n.starts_with("totp_"));
    if !totp_only {
        service
            .connector
            .validate(&creds)
            .map_err(|e| RequestError::Invalid(e.to_string()))?;
    }
    // Audited before the live check, which is the credential's first use.
    state.audit.record(Event::new(
        Action::Store,
        &service.name,
        &who.actor(),
        Detail::note(format!(
            "fields: {}",
            creds.names().collect::<Vec<_>>().join(",")
        )),
    ))?;
    let validated = !totp_only && super::live_check::run(&state, &service, &creds).await?;
    state
        .store
        .set_credentials(&service.id, &creds, validated)?;
    // A token fetched with the old credentials is not used again.
    state.tokens.forget(&service.id);
    Ok(Json(json!({"status": "stored", "validated": validated})))
}

/// The raw secret for the admin or an agent with `reveal` (REST `token`,
/// MCP `get_token`); audited as `reveal` before it is read.
pub(super) fn reveal(state: &State, who: &Caller, key: &str) -> Result<Value, ProxyError> {
    let service = visible(state, who, key)?;
    who.require_reveal()?;
    let creds = state.store.open_required(&service)?;
    state.audit.record(Event::new(
        Action::Reveal,
        &service.name,
        &who.actor(),
        Detail::default(),
    ))?;
    let creds = creds.expose();
    let (field, value) = ["api_key", "access_token", "token"]
        .iter()
        .find_map(|f| creds.get(f).map(|v| (*f, v)))
        .or_else(|| {
            creds
                .names()
                .next()
                .and_then(|f| creds.get(f).map(|v| (f, v)))
        })
        .ok_or_else(|| StoreError::NoCredentials(service.name.clone()))?;
    Ok(json!({
        "access_token": value,
        "token_type": if field == "api_key" { "api_key" } else { field },
        "expires_at": Value::Null,
    }))
}

pub(super) async fn token(
    AxumState(state): AxumState<State>,
    Extension(who): Extension<Caller>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ProxyError> {
    Ok(Json(reveal(&state, &who, &key)?))
}
