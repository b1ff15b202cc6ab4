//! [`Record`]: what every exchange ends with, held by one value and written
//! once: the in-flight permit, the audit event (the credential use, or the
//! refusal), the status, the metrics and the one log line. An answered
//! exchange hands its record to the response body ([`Ended`]), so the
//! permit is held and the line written until the last byte went out or the
//! agent left.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::Target;
use crate::audit::{Action, Detail, Event};
use crate::body::BoxError;
use crate::error::{Fault, ProxyError};
use crate::identity::{Caller, InFlightGuard};
use crate::state::State;
use crate::store::Service;

/// How the exchange ended, once it has.
enum Outcome {
    /// The upstream answered; its body may still be streaming.
    Answered { status: u16, head: Duration },
    /// clavis answered itself: refused before the credential was used, or
    /// failed after.
    Failed {
        status: u16,
        error: String,
        refused: bool,
    },
}

pub(crate) struct Record {
    pub(super) state: State,
    pub(super) caller: Arc<Caller>,
    pub(super) target: Arc<Target>,
    method: Method,
    /// The agent's URI (cloning shares its bytes); only its path is logged.
    uri: Uri,
    pub(super) service: Option<Arc<Service>>,
    /// Counted against `limits.max_upstream_requests` until the record ends.
    pub(super) permit: Option<InFlightGuard>,
    /// The credential-use event, once recorded (fail closed).
    event: Option<Arc<Event>>,
    outcome: Option<Outcome>,
    started: Instant,
}

impl Record {
    pub(super) fn new(
        state: &State,
        caller: &Arc<Caller>,
        target: &Arc<Target>,
        method: &Method,
        uri: &Uri,
    ) -> Record {
        Record {
            state: state.clone(),
            caller: caller.clone(),
            target: target.clone(),
            method: method.clone(),
            uri: uri.clone(),
            service: None,
            permit: None,
            event: None,
            outcome: None,
            started: Instant::now(),
        }
    }

    /// The service the exchange was admitted to.
    pub(super) fn service(&self) -> Result<&Arc<Service>, ProxyError> {
        self.service.as_ref().ok_or(ProxyError::Internal(
            "an exchange used its service before admission",
        ))
    }

    fn detail(&self) -> Detail {
        Detail::request(self.method.as_str(), &self.target.host, self.uri.path())
    }

    /// Audits the credential's use (`inject` on the proxy port, `proxy` on
    /// the admin port) before it happens; an unwritable log refuses it.
    pub(super) fn audit_use(&mut self) -> Result<(), ProxyError> {
        let action = match self.caller.actor().parts().0 {
            "proxy:" => Action::Inject,
            _ => Action::Proxy,
        };
        let entry = self.service()?.name.clone();
        let event = self.state.audit.record(Event::new(
            action,
            &entry,
            &self.caller.actor(),
            self.detail(),
        ))?;
        self.event = Some(event);
        Ok(())
    }

    /// The upstream answered with `status`.
    pub(super) fn answered(&mut self, status: u16) {
        if let Some(event) = &self.event {
            event.set_status(status);
        }
        let head = self.started.elapsed();
        let stats = &self.target.stats;
        stats.injected.inc();
        stats.duration.observe(head.as_secs_f64());
        self.outcome = Some(Outcome::Answered { status, head });
    }

    /// clavis answers `e` itself. Before the credential was used this is a
    /// refusal, audited as `denied`; after, the use's event gets the status.
    pub(super) fn failed(&mut self, e: &ProxyError) {
        let status = e.status().as_u16();
        let stats = &self.target.stats;
        match e.fault() {
            Fault::Agent => stats.denied.inc(),
            _ => stats.error.inc(),
        };
        if e.is_audit_failure() {
            self.state.metrics.audit_failures.inc();
        }
        let refused = self.event.is_none();
        match &self.event {
            Some(event) => event.set_status(status),
            None if !e.is_audit_failure() => {
                let mut detail = self.detail();
                detail.note = Some(e.to_string());
                detail.set_status(status);
                let entry = self.service.as_ref().map_or("", |s| s.name.as_str());
                // A refusal that cannot be audited is still a refusal:
                // nothing to fail closed on.
                let _ = self.state.audit.record(Event::new(
                    Action::Denied,
                    entry,
                    &self.caller.actor(),
                    detail,
                ));
            }
            None => {}
        }
        self.outcome = Some(Outcome::Failed {
            status,
            error: e.to_string(),
            refused,
        });
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let agent = self.caller.actor();
        let service = self.service.as_ref().map_or("", |s| s.name.as_str());
        let (host, method, path) = (&self.target.host, &self.method, self.uri.path());
        let duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        match &self.outcome {
            Some(Outcome::Answered { status, head }) => tracing::info!(
                agent = %agent,
                service,
                host = %host,
                method = %method,
                path,
                status,
                latency_ms = head.as_secs_f64() * 1000.0,
                duration_ms,
                "exchange"
            ),
            Some(Outcome::Failed {
                status,
                error,
                refused: true,
            }) => tracing::info!(
                agent = %agent,
                service,
                host = %host,
                method = %method,
                path,
                status,
                error = %error,
                "denied"
            ),
            Some(Outcome::Failed { status, error, .. }) => tracing::info!(
                agent = %agent,
                service,
                host = %host,
                method = %method,
                path,
                status,
                latency_ms = duration_ms,
                error = %error,
                "exchange"
            ),
            None => tracing::info!(
                agent = %agent,
                service,
                host = %host,
                method = %method,
                path,
                latency_ms = duration_ms,
                "exchange cancelled"
            ),
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its exchange's [`Record`] when it ends:
    /// the last frame relayed, an error, or the agent gone (dropped).
    pub(crate) struct Ended<B> {
        #[pin]
        inner: B,
        record: Option<Record>,
    }
}

impl<B> Ended<B> {
    pub(super) fn new(inner: B, record: Record) -> Ended<B> {
        Ended {
            inner,
            record: Some(record),
        }
    }
}

impl<B> HttpBody for Ended<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.record.take();
        }
        polled.map(|frame| frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
