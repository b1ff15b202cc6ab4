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

use super::auth::Principal;
use super::json;
use crate::app::State;
use crate::audit::{Action, Actor, Detail, Event};
use crate::error::ProxyError;
use crate::store::{Credentials, Origin, Service, StoreError};

pub fn view(s: &Service) -> Value {
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
pub fn visible(state: &State, who: &Principal, key: &str) -> Result<Arc<Service>, ProxyError> {
    state
        .store
        .table()
        .find(key)
        .filter(|s| who.sees(&s.name))
        .cloned()
        .ok_or_else(|| ProxyError::NotFound(format!("no service {key:?}")))
}

fn store_error(e: StoreError) -> ProxyError {
    match e {
        StoreError::Duplicate(_) => ProxyError::Conflict(e.to_string()),
        StoreError::NotFound(_) => ProxyError::NotFound(e.to_string()),
        other => ProxyError::Internal(other.to_string()),
    }
}

#[derive(Deserialize)]
pub struct Create {
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
pub struct CreateField {
    name: String,
    value: String,
    #[serde(default)]
    sensitive: bool,
}

pub async fn create(
    AxumState(state): AxumState<State>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ProxyError> {
    who.require_admin()?;
    let req: Create = json::parse(&headers, body, state.config.limits.admin_body)?;
    if !crate::config::valid_name(&req.name) {
        return Err(ProxyError::Unprocessable(format!(
            "name {:?} must be 1-128 letters, digits, '-', '_' or '.'",
            req.name
        )));
    }
    let registry = &state.config.registry;
    let connector = registry.get(&req.connector_name).ok_or_else(|| {
        ProxyError::Unprocessable(format!(
            "unknown connector_name {:?}; known: {}",
            req.connector_name,
            registry.names().join(", ")
        ))
    })?;
    if req.default
        && state
            .store
            .table()
            .for_connector(&connector.name)
            .iter()
            .any(|s| s.default)
    {
        return Err(ProxyError::Conflict(format!(
            "connector {:?} already has a default service",
            connector.name
        )));
    }
    let mut entry = crate::store::NewEntry {
        notes: req.notes,
        url: req.url,
        username: req.username,
        fields: Vec::new(),
    };
    for f in req.fields {
        if !crate::config::valid_name(&f.name) {
            return Err(ProxyError::Unprocessable(format!(
                "fields: {:?} is not a field name",
                f.name
            )));
        }
        entry
            .fields
            .push((f.name, crate::secret::Secret::new(f.value), f.sensitive));
    }
    let service = state
        .store
        .add(&req.name, connector.clone(), req.default, Origin::Api)
        .map_err(store_error)?;
    let service = state
        .store
        .set_entry(&service.id, entry)
        .map_err(store_error)?;
    let v = view(&service);
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"id": v["id"], "name": v["name"], "connector_name": v["connector_name"], "created_at": v["created_at"]}),
        ),
    ))
}

pub async fn list(
    AxumState(state): AxumState<State>,
    Extension(who): Extension<Principal>,
) -> Json<Value> {
    let table = state.store.table();
    let services: Vec<Value> = table
        .all()
        .iter()
        .filter(|s| who.sees(&s.name))
        .map(|s| view(s))
        .collect();
    Json(Value::Array(services))
}

pub async fn get_one(
    AxumState(state): AxumState<State>,
    Extension(who): Extension<Principal>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ProxyError> {
    Ok(Json(view(&*visible(&state, &who, &key)?)))
}

pub async fn delete(
    AxumState(state): AxumState<State>,
    Extension(who): Extension<Principal>,
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
    state.store.remove(&service.id).map_err(store_error)?;
    if service.origin == Origin::Config {
        tracing::warn!(service = %service.name, "deleted a service defined in the config file; it returns at the next start");
    }
    Ok(Json(
        json!({"status": "deleted", "id": service.id, "name": service.name}),
    ))
}

#[derive(Deserialize)]
pub struct StoreCredentials {
    token_type: String,
    data: BTreeMap<String, Value>,
}

pub async fn store_credentials(
    AxumState(state): AxumState<State>,
    Extension(who): Extension<Principal>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ProxyError> {
    who.require_admin()?;
    let service = visible(&state, &who, &key)?;
    let req: StoreCredentials = json::parse(&headers, body, state.config.limits.admin_body)?;
    if req.token_type.is_empty() {
        return Err(ProxyError::Unprocessable(
            "token_type must not be empty".into(),
        ));
    }
    let mut creds = Credentials::default();
    for (field, value) in req.data {
        let Value::String(text) = value else {
            return Err(ProxyError::Unprocessable(format!(
                "data.{field} must be a string"
            )));
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
            .map_err(ProxyError::Unprocessable)?;
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
        .set_credentials(&service.id, &creds, validated)
        .map_err(store_error)?;
    Ok(Json(json!({"status": "stored", "validated": validated})))
}

/// The raw secret for the admin or an agent with `reveal` (REST `token`,
/// MCP `get_token`); audited as `reveal` before it is read.
pub fn reveal(
    state: &State,
    who: &Principal,
    actor: &Actor,
    key: &str,
) -> Result<Value, ProxyError> {
    let service = visible(state, who, key)?;
    if let Some(agent) = who.agent() {
        if !agent.reveal {
            return Err(ProxyError::Forbidden(format!(
                "agent {:?} may not read raw secrets (reveal: false)",
                agent.name
            )));
        }
    }
    let creds = state.credentials(&service)?;
    state.audit.record(Event::new(
        Action::Reveal,
        &service.name,
        actor,
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
        .ok_or_else(|| ProxyError::CredentialsMissing {
            service: service.name.clone(),
        })?;
    Ok(json!({
        "access_token": value,
        "token_type": if field == "api_key" { "api_key" } else { field },
        "expires_at": Value::Null,
    }))
}

pub async fn token(
    AxumState(state): AxumState<State>,
    Extension(who): Extension<Principal>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ProxyError> {
    Ok(Json(reveal(&state, &who, &who.actor(), &key)?))
}
