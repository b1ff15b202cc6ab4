//! A request on a claimed host that its connector leaves alone: a web page
//! of a git host, outside git's paths, or a public repository fetched by a
//! caller with no service for it (SPEC §13.4). It goes out like an
//! unclaimed host's, with nothing injected and no service chosen: the
//! agent's auth headers are still stripped (they can only hold
//! placeholders), and `proxy.unmatched: deny` refuses it.

use http::request::Parts;
use http::Request;

use super::{own_rules, prepare, send, Authorized, Record, Scrub, Sent};
use crate::body::Body;
use crate::config::Unmatched;
use crate::error::{ProxyError, Refusal};
use crate::proxy::headers;
use crate::redact::Patterns;

/// Whether the connector leaves this request alone (asked of the
/// connector: no provider is named here): a path that gets no credential,
/// or, on a host that also serves public content, a caller with no
/// service for the connector who names none (a public repository clones
/// as it did before clavis claimed the host).
pub(super) fn applies(record: &Record, parts: &Parts) -> bool {
    let (target, caller) = (&record.target, &record.caller);
    let connector = &target.connector;
    if !connector.injects(&target.host, parts.uri.path()) {
        return true;
    }
    connector.public_on(&target.host)
        && headers::placeholder(&parts.headers, &connector.strip).is_none()
        && !record
            .state
            .store
            .table()
            .for_connector(&connector.name)
            .iter()
            .any(|s| caller.may_use(&s.name))
}

/// Sends the request on with nothing injected.
pub(super) async fn through(
    record: &mut Record,
    parts: Parts,
    body: Body,
) -> Result<Sent, ProxyError> {
    if record.state.config.proxy.unmatched == Unmatched::Deny {
        return Err(Refusal::NothingInjected {
            host: record.target.host.clone(),
            path: parts.uri.path().to_owned(),
        }
        .into());
    }
    let out = prepare(record, parts, body)?;
    own_rules(record, &out)?;
    let authorized = Authorized {
        request: Request::from_parts(out.parts, out.buffered.map_or(out.body, crate::body::full)),
        websocket: out.websocket,
        // No credential went out, so there is none to mask.
        scrub: Scrub::Known(Patterns::new()),
        retry: None,
    };
    send(record, authorized).await
}
