//! [`Record`]: what every exchange ends with, held by one value and written
//! once: the in-flight permit, the budget reservation (settled with what
//! the answer says was used), the audit event (the credential use, or the
//! refusal), the status, the metrics and the one log line. An answered
//! exchange hands its record to the response body ([`Ended`]), so the
//! permit is held, the usage read and the line written until the last
//! byte went out or the agent left.

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
use crate::budget::{Amounts, Held};
use crate::connector::meter::UsageReader;
use crate::connector::Connector;
use crate::error::{Fault, ProxyError};
use crate::identity::{Caller, InFlightGuard};
use crate::state::State;
use crate::store::Service;

/// A budget reservation, and what settles it.
pub(crate) struct Charge {
    held: Held,
    /// What was reserved, per unit: what the exchange counts when the
    /// answer does not say.
    reserved: Amounts,
    llm: bool,
    usage: Option<UsageReader>,
}

impl Charge {
    pub(super) fn new(held: Held, reserved: Amounts, llm: bool) -> Charge {
        Charge {
            held,
            reserved,
            llm,
            usage: None,
        }
    }

    /// What an answer with `status` used: a refused call nothing but the
    /// request itself; an accepted one its reported usage, else all it
    /// reserved.
    fn used(&mut self, status: u16) -> Amounts {
        if !(200..300).contains(&status) {
            return Amounts {
                requests: 1.0,
                ..Amounts::default()
            };
        }
        let mut used = self.reserved;
        if let Some(usage) = self.usage.take().and_then(UsageReader::finish) {
            used.input_tokens = usage.input_tokens;
            used.output_tokens = usage.output_tokens;
        }
        used
    }
}

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
        /// The request went out and no answer came: the upstream may have
        /// carried it out.
        unanswered: bool,
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
    /// Said on that event (an audit-mode policy's verdict).
    note: Option<String>,
    charge: Option<Charge>,
    /// The request went to the upstream (a reservation is then kept when
    /// no answer comes: the call may have happened).
    sent: bool,
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
            note: None,
            charge: None,
            sent: false,
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

    /// The connector the request is handled by: the chosen service's (a
    /// family member may differ from the host's lead), else the host's,
    /// for a request that goes out with no service.
    pub(super) fn connector(&self) -> &Arc<Connector> {
        self.service
            .as_ref()
            .map_or(&self.target.connector, |s| &s.connector)
    }

    fn detail(&self) -> Detail {
        Detail::request(self.method.as_str(), &self.target.host, self.uri.path())
    }

    /// A note for the credential-use event.
    pub(super) fn note(&mut self, text: String) {
        self.note = Some(match self.note.take() {
            Some(before) => format!("{before}; {text}"),
            None => text,
        });
    }

    pub(super) fn charge(&mut self, charge: Charge) {
        self.charge = Some(charge);
    }

    pub(super) fn sent(&mut self) {
        self.sent = true;
    }

    /// Audits the credential's use (`inject` on the proxy port, `proxy` on
    /// the admin port) before it happens; an unwritable log refuses it.
    pub(super) fn audit_use(&mut self) -> Result<(), ProxyError> {
        let action = match self.caller.actor().parts().0 {
            "proxy:" => Action::Inject,
            _ => Action::Proxy,
        };
        let mut detail = self.detail();
        detail.note = self.note.take();
        let service = self.service()?;
        let event = Event::new(action, &service.name, &self.caller.actor(), detail);
        self.event = Some(self.state.audit.record(event)?);
        Ok(())
    }

    /// The upstream answered with `status`; an LLM call's usage is read
    /// from the answer as it passes.
    pub(super) fn answered(&mut self, status: u16, headers: &http::HeaderMap) {
        if let Some(charge) = self.charge.as_mut().filter(|c| c.llm) {
            let content_type = headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            charge.usage = Some(UsageReader::new(content_type));
        }
        if let Some(event) = &self.event {
            event.set_status(status);
        }
        let head = self.started.elapsed();
        let stats = &self.target.stats;
        match self.event {
            Some(_) => stats.injected.inc(),
            None => stats.passed.inc(),
        };
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
            unanswered: self.sent && !e.proves_nothing_sent(),
        });
    }
}

impl Record {
    /// Bytes of the answer's body, for the usage reader.
    fn observe(&mut self, data: &[u8]) {
        if let Some(reader) = self.charge.as_mut().and_then(|c| c.usage.as_mut()) {
            reader.feed(data);
        }
    }

    /// Ends the reservation: settled with what the answer says was used;
    /// released when nothing was sent (refused, or the upstream could not
    /// be reached); kept whole when the request went out and no answer
    /// came (timed out, connection broken, the agent gone): it may have
    /// been carried out, and a budget never lets through what it cannot
    /// rule out.
    fn settle(&mut self) {
        let Some(mut charge) = self.charge.take() else {
            return;
        };
        let used = match &self.outcome {
            Some(Outcome::Answered { status, .. }) => Some(charge.used(*status)),
            Some(Outcome::Failed {
                unanswered: true, ..
            }) => Some(charge.reserved),
            Some(Outcome::Failed { .. }) => None,
            None if self.sent => Some(charge.reserved),
            None => None,
        };
        let Some((held, used)) = self.state.budgets.settle_here(charge.held, used) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let state = self.state.clone();
        runtime.spawn(async move { state.budgets.settle(held, used).await });
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        self.settle();
        // The line is built only if it will be written (benches and quiet
        // deployments run at warn).
        if !tracing::enabled!(tracing::Level::INFO) {
            return;
        }
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
                ..
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
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(record)) = (frame.data_ref(), this.record.as_mut()) {
                    record.observe(data);
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                this.record.take();
            }
            Poll::Pending => {}
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
