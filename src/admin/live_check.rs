//! The cheap authenticated call some connectors define (GitHub `GET /user`,
//! Stripe `GET /v1/balance`), made through the shared upstream client so
//! `upstream.resolve` and `extra_ca` apply. A 401/403 rejects the credential;
//! an unreachable upstream stores it unvalidated.

use http::{header, HeaderValue, Request};

use crate::body;
use crate::credentials::Credentials;
use crate::error::{ProxyError, RequestError};
use crate::state::State;
use crate::store::Service;

pub(super) async fn run(
    state: &State,
    service: &Service,
    creds: &Credentials,
) -> Result<bool, ProxyError> {
    let connector = &service.connector;
    let (Some(check), Some(host)) = (&connector.live_check, connector.primary_host()) else {
        return Ok(false);
    };
    let uri = format!("https://{host}{}", check.path);
    let (mut parts, ()) = Request::builder()
        .method(check.method.clone())
        .uri(&uri)
        .body(())
        .map_err(|_| ProxyError::Internal("a live check's URI is not valid"))?
        .into_parts();
    // GitHub refuses requests without a User-Agent.
    parts.headers.insert(
        header::USER_AGENT,
        HeaderValue::from_static(concat!("clavis/", env!("CARGO_PKG_VERSION"))),
    );
    connector
        .inject
        .apply(&mut parts, host, creds, b"")
        .map_err(|e| RequestError::Invalid(e.to_string()))?;
    match state
        .upstream
        .send(host, Request::from_parts(parts, body::empty()))
        .await
    {
        Ok(r) if r.status().is_success() => Ok(true),
        Ok(r) if r.status() == 401 || r.status() == 403 => Err(RequestError::Invalid(format!(
            "{host} rejected the credential: {} {} answered {}",
            check.method,
            check.path,
            r.status().as_u16()
        ))
        .into()),
        Ok(r) => {
            tracing::warn!(service = %service.name, status = r.status().as_u16(), "live check inconclusive; stored unvalidated");
            Ok(false)
        }
        Err(e) => {
            tracing::warn!(service = %service.name, error = %e, "live check failed; stored unvalidated");
            Ok(false)
        }
    }
}
