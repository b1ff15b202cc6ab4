//! `Proxy-Authorization: Basic base64(agent:token)` → the calling agent,
//! anonymous (when `require_auth` is off), or 407 with a Basic challenge.

use base64::Engine;
use http::{header, HeaderMap};

use crate::error::ProxyError;
use crate::identity::{Caller, Via};
use crate::state::State;

pub(super) fn identify(state: &State, headers: &HeaderMap) -> Result<Caller, ProxyError> {
    let Some(value) = headers.get(header::PROXY_AUTHORIZATION) else {
        if state.config.proxy.require_auth {
            return Err(ProxyError::ProxyAuth);
        }
        return Ok(Caller::anonymous());
    };
    let (name, token) = basic(value.as_bytes()).ok_or(ProxyError::ProxyAuth)?;
    let agent = state
        .live()
        .agents
        .authenticate(&name, token.as_bytes())
        .ok_or_else(|| {
            tracing::info!(agent = %name, "proxy authentication failed");
            ProxyError::ProxyAuth
        })?;
    Ok(Caller::agent(agent, Via::Proxy))
}

/// Decodes `Basic <base64(user:password)>` (scheme case-insensitive; the
/// password may itself contain `:`).
fn basic(value: &[u8]) -> Option<(String, zeroize::Zeroizing<String>)> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, b64) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = zeroize::Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()?,
    );
    let text = std::str::from_utf8(&decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_owned(), zeroize::Zeroizing::new(pass.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    mod basic {
        use super::*;

        #[test]
        fn decodes_user_and_password_with_colons() {
            let v = format!(
                "basic {}",
                base64::engine::general_purpose::STANDARD.encode("codex:a:b")
            );
            let (u, p) = basic(v.as_bytes()).unwrap();
            assert_eq!((u.as_str(), p.as_str()), ("codex", "a:b"));
        }

        #[test]
        fn refuses_other_schemes_and_garbage() {
            assert!(basic(b"Bearer abc").is_none());
            assert!(basic(b"Basic !!!").is_none());
            assert!(basic(b"Basic").is_none());
        }
    }
}
