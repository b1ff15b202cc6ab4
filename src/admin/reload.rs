//! `POST /v1/reload` (SPEC §13.2): the admin asks for a reload and reads
//! what it did, or why the config was refused (the old one keeps serving).

use axum::extract::State as AxumState;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde_json::{json, Value};

use crate::error::ProxyError;
use crate::identity::Caller;
use crate::reload::{reload, ReloadError, Trigger};
use crate::state::State;

pub(super) async fn handle(
    AxumState(state): AxumState<State>,
    Extension(who): Extension<Caller>,
) -> Result<(StatusCode, Json<Value>), ProxyError> {
    who.require_admin()?;
    match reload(&state, Trigger::Api, &who).await {
        Ok(changes) => Ok((
            StatusCode::OK,
            Json(json!({"ok": true, "changes": changes})),
        )),
        Err(e) => {
            let status = match e {
                ReloadError::NoFile => StatusCode::CONFLICT,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            // The admin wrote the config: the full message (file, key
            // path, line), as `clavis check` prints it.
            Ok((status, Json(json!({"ok": false, "error": e.to_string()}))))
        }
    }
}
