//! The checks every request inside an intercepted tunnel passes before it
//! is an exchange: the destination binding (threat model T1: scheme,
//! authority and `Host` must name the CONNECT target), framing the parser
//! would otherwise normalize, and the only upgrade that passes (websocket).

use http::{header, Method, Request, Version};

use super::Target;
use crate::error::{ProxyError, Refusal, RequestError};
use crate::host;

fn malformed(text: impl Into<String>) -> ProxyError {
    RequestError::Malformed(text.into()).into()
}

/// Refused, and the connection closed after the answer.
fn desync(text: impl Into<String>) -> ProxyError {
    RequestError::Desync(text.into()).into()
}

/// The destination binding of every inner request (threat model T1).
pub(super) fn check_inner<B>(
    target: &Target,
    req: &Request<B>,
    max_uri: usize,
) -> Result<(), ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(Refusal::NestedConnect.into());
    }
    crate::proxy::check_target_len(req.uri(), max_uri)?;
    let mismatch = |what: &'static str, value: &str| -> ProxyError {
        Refusal::Misdirected {
            what,
            value: value.to_owned(),
            host: target.host.clone(),
            port: target.port,
        }
        .into()
    };
    if let Some(scheme) = req.uri().scheme_str() {
        if scheme != "https" {
            return Err(mismatch("scheme", scheme));
        }
    }
    if let Some(authority) = req.uri().authority() {
        if !host::authority_matches(&target.host, target.port, authority.as_str()) {
            return Err(mismatch("authority", authority.as_str()));
        }
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err(malformed("more than one Host header")),
        (Some(host), None) => {
            let value = host.to_str().unwrap_or("<not text>");
            if !host::authority_matches(&target.host, target.port, value) {
                return Err(mismatch("Host", value));
            }
        }
        (None, None) if req.version() == Version::HTTP_11 => {
            return Err(malformed("HTTP/1.1 request without Host"))
        }
        (None, None) => {}
    }
    let h = req.headers();
    if h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH) {
        return Err(desync(
            "both Transfer-Encoding and Content-Length: ambiguous framing is refused",
        ));
    }
    if h.get_all(header::CONTENT_LENGTH).iter().count() > 1 {
        return Err(desync("more than one Content-Length"));
    }
    if h.get_all(header::TRANSFER_ENCODING).iter().count() > 1 {
        return Err(desync("more than one Transfer-Encoding"));
    }
    if let Some(upgrade) = h
        .get(header::UPGRADE)
        .filter(|_| !is_websocket(req.method(), req.version(), h))
    {
        return Err(desync(format!(
            "protocol upgrade {:?} is not supported through clavis",
            upgrade.to_str().unwrap_or("?")
        )));
    }
    Ok(())
}

/// An HTTP/1.1 `GET` asking to upgrade to `websocket`: the only upgrade
/// that passes (credential injected on the upgrade request).
pub(super) fn is_websocket(method: &Method, version: Version, headers: &http::HeaderMap) -> bool {
    method == Method::GET
        && version == Version::HTTP_11
        && headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}
