//! `GET /v1/agents` (admin only): who may use the proxy and with what, for
//! `clavis agents list` and the console. Names and scopes only; token
//! digests never leave.

use axum::extract::State as AxumState;
use axum::{Extension, Json};
use serde_json::{json, Value};

use crate::error::ProxyError;
use crate::identity::{Caller, Scope};
use crate::state::State;

pub(super) async fn list(
    AxumState(state): AxumState<State>,
    Extension(who): Extension<Caller>,
) -> Result<Json<Value>, ProxyError> {
    who.require_admin()?;
    let live = state.live();
    let agents: Vec<Value> = live
        .agents
        .iter()
        .map(|a| {
            let services: Vec<String> = match &a.scope {
                Scope::All => vec!["*".to_owned()],
                Scope::Services(names) => {
                    let mut names: Vec<String> = names.iter().cloned().collect();
                    names.sort();
                    names
                }
            };
            json!({"name": a.name, "services": services, "reveal": a.reveal})
        })
        .collect();
    Ok(Json(Value::Array(agents)))
}
