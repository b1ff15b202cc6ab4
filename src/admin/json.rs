//! JSON in and out of the admin API: strict content type, capped bodies,
//! parse errors with their position, shape errors naming the field.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::{ProxyError, RequestError};

pub(super) fn parse<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, ProxyError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            RequestError::TooLarge { limit }
        } else {
            RequestError::Malformed(format!("cannot read request body: {rejection}"))
        }
    })?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime != "application/json" && !mime.ends_with("+json") {
        return Err(RequestError::MediaType(format!(
            "send Content-Type: application/json (got {:?})",
            if content_type.is_empty() {
                "nothing"
            } else {
                content_type
            }
        ))
        .into());
    }
    serde_json::from_slice(&body).map_err(|e| {
        match e.classify() {
            serde_json::error::Category::Data => RequestError::Invalid(e.to_string()),
            _ => RequestError::Malformed(format!("malformed JSON: {e}")),
        }
        .into()
    })
}
