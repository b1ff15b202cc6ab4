//! The agent-facing entries view (SPEC §5 `/api/...`): services as vault
//! entries, search, TOTP codes and password generation. Shared by the REST
//! routes below and the MCP tools, each call audited with its actor.

use axum::extract::{Path, Query, State as AxumState};
use axum::{Extension, Json};
use ring::rand::SecureRandom;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::services::visible;
use crate::audit::{Action, Detail, Event};
use crate::error::{ProxyError, RequestError};
use crate::identity::Caller;
use crate::redact::Anchors;
use crate::state::State;
use crate::store::{Service, StoreError};
use crate::totp::{Totp, TotpError};

/// An entry as agents see it: credentials never, sensitive fields redacted.
fn view(s: &Service) -> Value {
    let mut fields = Map::new();
    for f in &s.entry.fields {
        let v = match &f.value {
            Some(value) if !f.sensitive() => json!({"value": value, "l2": false}),
            _ => json!({"value": "[REDACTED]", "l2": true}),
        };
        fields.insert(f.name.clone(), v);
    }
    json!({
        "id": s.id,
        "name": s.name,
        "connector": s.connector.name,
        "hosts": s.connector.hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
        "notes": s.entry.notes,
        "url": s.entry.url,
        "username": s.entry.username,
        "fields": fields,
        "has_credentials": s.has_credentials(),
    })
}

fn audit(
    state: &State,
    action: Action,
    entry: &str,
    who: &Caller,
    detail: Detail,
) -> Result<(), ProxyError> {
    state
        .audit
        .record(Event::new(action, entry, &who.actor(), detail))?;
    Ok(())
}

pub(super) fn list(state: &State, who: &Caller) -> Result<Vec<Value>, ProxyError> {
    audit(state, Action::Read, "", who, Detail::note("list"))?;
    Ok(state
        .store
        .table()
        .all()
        .iter()
        .filter(|s| who.may_use(&s.name))
        .map(|s| view(s))
        .collect())
}

fn read(state: &State, who: &Caller, key: &str) -> Result<Value, ProxyError> {
    let service = visible(state, who, key)?;
    audit(state, Action::Read, &service.name, who, Detail::default())?;
    Ok(view(&service))
}

/// Case-insensitive match over name, connector, hosts, notes and field
/// names; never over credential or field values.
fn matches(s: &Service, needle: &str) -> bool {
    let hit = |text: &str| text.to_lowercase().contains(needle);
    hit(&s.name)
        || hit(&s.connector.name)
        || s.connector.hosts.iter().any(|h| hit(&h.to_string()))
        || hit(&s.entry.notes)
        || s.entry.fields.iter().any(|f| hit(&f.name))
}

pub(super) fn search(state: &State, who: &Caller, query: &str) -> Result<Vec<Value>, ProxyError> {
    if query.len() > 256 {
        return Err(RequestError::Malformed("q must be at most 256 characters".into()).into());
    }
    // An agent may paste a key into a search; the audit log must not keep it.
    let shown = if may_carry_a_credential(state, query) {
        "[REDACTED]"
    } else {
        query
    };
    audit(
        state,
        Action::Search,
        "",
        who,
        Detail::note(format!("q={shown}")),
    )?;
    let needle = query.to_lowercase();
    Ok(state
        .store
        .table()
        .all()
        .iter()
        .filter(|s| who.may_use(&s.name) && matches(s, &needle))
        .map(|s| view(s))
        .collect())
}

/// Whether `text` holds the start (4 bytes or more) of any stored
/// credential, any service's, visible to the caller or not, in any encoding
/// the scrubber knows; errs on the side of yes.
fn may_carry_a_credential(state: &State, text: &str) -> bool {
    // An error (the secrets could not be opened) errs on the side of yes.
    let holds = |anchors: Result<Option<&Anchors>, &StoreError>| match anchors {
        Ok(Some(anchors)) => anchors.contains_anchor(text.as_bytes()),
        Ok(None) => false,
        Err(_) => true,
    };
    state.store.table().all().iter().any(|s| {
        holds(state.store.anchors(s).as_ref().map(|a| a.as_deref()))
            || holds(
                state
                    .store
                    .sensitive_field_anchors(s)
                    .as_ref()
                    .map(|a| a.as_ref()),
            )
    })
}

pub(super) fn totp(state: &State, who: &Caller, key: &str) -> Result<Value, ProxyError> {
    let service = visible(state, who, key)?;
    let no_secret =
        || RequestError::Missing(format!("service {:?} has no TOTP secret", service.name));
    let creds = state.store.open(&service)?.ok_or_else(no_secret)?;
    let totp = Totp::from_credentials(creds.expose()).map_err(|e| match e {
        TotpError::NoSecret => no_secret(),
        other => RequestError::Invalid(format!("service {:?}: {other}", service.name)),
    })?;
    drop(creds);
    audit(state, Action::Totp, &service.name, who, Detail::default())?;
    let (code, expires_in) = totp.now();
    Ok(json!({"code": code, "period": totp.period, "expires_in": expires_in}))
}

const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const DIGITS: &[u8] = b"0123456789";
const SYMBOLS: &[u8] = b"!@#$%^&*()-_=+[]{};:,.?/~";

/// A random password from the OS CSPRNG, every character class present.
pub(super) fn generate(length: usize, symbols: bool) -> Result<Value, ProxyError> {
    if !(8..=128).contains(&length) {
        return Err(
            RequestError::Malformed(format!("length must be 8 to 128, got {length}")).into(),
        );
    }
    let mut classes = vec![LOWER, UPPER, DIGITS];
    if symbols {
        classes.push(SYMBOLS);
    }
    let alphabet: Vec<u8> = classes.concat();
    let rng = ring::rand::SystemRandom::new();
    loop {
        let mut out = String::with_capacity(length);
        while out.len() < length {
            let mut b = [0u8; 1];
            rng.fill(&mut b)
                .map_err(|_| ProxyError::Internal("the system random generator failed"))?;
            // Rejection sampling: no modulo bias.
            let limit = 256 - 256 % alphabet.len();
            if (b[0] as usize) < limit {
                out.push(alphabet[b[0] as usize % alphabet.len()] as char);
            }
        }
        if classes.iter().all(|c| out.bytes().any(|b| c.contains(&b))) {
            return Ok(json!({"password": out, "length": length}));
        }
    }
}

pub(super) async fn list_route(
    AxumState(state): AxumState<State>,
    Extension(who): Extension<Caller>,
) -> Result<Json<Value>, ProxyError> {
    Ok(Json(Value::Array(list(&state, &who)?)))
}

pub(super) async fn read_route(
    AxumState(state): AxumState<State>,
    Extension(who): Extension<Caller>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ProxyError> {
    Ok(Json(read(&state, &who, &key)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SearchQuery {
    q: String,
}

pub(super) async fn search_route(
    AxumState(state): AxumState<State>,
    Extension(who): Extension<Caller>,
    query: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ProxyError> {
    // Names what is wrong: `q` missing, or a parameter the route does not know.
    let Query(q) = query.map_err(|e| RequestError::Malformed(e.body_text()))?;
    Ok(Json(Value::Array(search(&state, &who, &q.q)?)))
}

pub(super) async fn totp_route(
    AxumState(state): AxumState<State>,
    Extension(who): Extension<Caller>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ProxyError> {
    Ok(Json(totp(&state, &who, &key)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GenerateQuery {
    length: Option<String>,
    symbols: Option<String>,
}

pub(super) async fn generate_route(
    query: Result<Query<GenerateQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ProxyError> {
    let malformed = |text: String| -> ProxyError { RequestError::Malformed(text).into() };
    let Query(q) = query.map_err(|e| malformed(e.body_text()))?;
    let length = match q.length.as_deref() {
        None => 32,
        Some(l) => l
            .parse()
            .map_err(|_| malformed(format!("length must be a number 8 to 128, got {l:?}")))?,
    };
    let symbols = match q.symbols.as_deref() {
        None | Some("true") | Some("1") => true,
        Some("false") | Some("0") => false,
        Some(other) => {
            return Err(malformed(format!(
                "symbols must be true or false, got {other:?}"
            )))
        }
    };
    Ok(Json(generate(length, symbols)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    mod generate {
        use super::*;

        #[test]
        fn every_class_and_length() {
            for len in [8, 32, 128] {
                let v = generate(len, true).unwrap();
                let p = v["password"].as_str().unwrap();
                assert_eq!(p.len(), len);
                for class in [LOWER, UPPER, DIGITS, SYMBOLS] {
                    assert!(p.bytes().any(|b| class.contains(&b)), "{p}");
                }
            }
            let p = generate(16, false).unwrap()["password"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(p.bytes().all(|b| b.is_ascii_alphanumeric()));
        }

        #[test]
        fn bounds() {
            assert!(generate(7, true).is_err());
            assert!(generate(129, true).is_err());
        }
    }
}
