//! Telling people about approvals: a webhook POST per change, JSON signed
//! with HMAC-SHA256 (`X-Clavis-Signature: sha256=<hex>` over the body) or
//! Slack's incoming-webhook shape. Sent off the request's path through the
//! same upstream client (verified TLS, private addresses refused unless the
//! operator allowed them); a failure is logged, counted and retried with
//! backoff, never in the way of the approval itself.

use std::sync::Arc;
use std::time::Duration;

use http::{header, Method, Request};
use ring::hmac;

use super::Record;
use crate::audit::Action;
use crate::config::guardrails::WebhookFormat;
use crate::config::WebhookConfig;
use crate::upstream::Upstream;

/// Attempts per message: at once, then after 1, 2, 4 and 8 s.
const ATTEMPTS: u32 = 5;

pub(crate) struct Notifier {
    url: http::Uri,
    host: String,
    key: Option<hmac::Key>,
    format: WebhookFormat,
    upstream: Arc<Upstream>,
    failures: prometheus_client::metrics::counter::Counter,
}

impl Notifier {
    pub(crate) fn new(
        config: &WebhookConfig,
        upstream: Arc<Upstream>,
        failures: prometheus_client::metrics::counter::Counter,
    ) -> Notifier {
        Notifier {
            url: config.url.clone(),
            host: config.host.clone(),
            key: config
                .secret
                .as_ref()
                .map(|s| hmac::Key::new(hmac::HMAC_SHA256, s.expose().as_bytes())),
            format: config.format,
            upstream,
            failures,
        }
    }

    /// The body telling `event` (the audit action's name) of `record`, in
    /// the configured format.
    fn body(&self, event: Action, record: &Record) -> Vec<u8> {
        let v = match self.format {
            WebhookFormat::Json => serde_json::json!({
                "event": event.as_str(),
                "approval": record.to_json(),
            }),
            WebhookFormat::Slack => serde_json::json!({
                "text": format!(
                    "clavis approval {} is {}: {} wants {} {} on {} (policy {:?}, rule {:?}). Decide in the console, or: clavis approvals approve|deny {}",
                    record.id,
                    record.status.as_str(),
                    record.binding.agent,
                    record.binding.method,
                    record.binding.url,
                    record.binding.service,
                    record.policy,
                    record.rule,
                    record.id
                ),
            }),
        };
        v.to_string().into_bytes()
    }

    /// `sha256=<hex>` of `body` under the secret.
    pub(crate) fn signature(&self, body: &[u8]) -> Option<String> {
        self.key.as_ref().map(|k| {
            format!(
                "sha256={}",
                crate::encoding::hex(hmac::sign(k, body).as_ref())
            )
        })
    }

    /// Sends the news of `record` in the background.
    pub(crate) fn send(&self, event: Action, record: &Record) {
        let body = self.body(event, record);
        let signature = self.signature(&body);
        let (url, host, upstream, failures) = (
            self.url.clone(),
            self.host.clone(),
            self.upstream.clone(),
            self.failures.clone(),
        );
        let id = record.id.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let mut wait = Duration::from_secs(1);
            for attempt in 1..=ATTEMPTS {
                let mut request = Request::builder()
                    .method(Method::POST)
                    .uri(url.clone())
                    .header(header::CONTENT_TYPE, "application/json")
                    .header(header::USER_AGENT, concat!("clavis/", env!("CARGO_PKG_VERSION")));
                if let Some(sig) = &signature {
                    request = request.header("x-clavis-signature", sig);
                }
                let Ok(request) = request.body(crate::body::full(body.clone())) else {
                    return;
                };
                match upstream.send(&host, request).await {
                    Ok(r) if r.status().is_success() => return,
                    Ok(r) => {
                        failures.inc();
                        tracing::warn!(approval = %id, attempt, status = r.status().as_u16(), "approval webhook refused");
                    }
                    Err(e) => {
                        failures.inc();
                        tracing::warn!(approval = %id, attempt, error = %e, "approval webhook failed");
                    }
                }
                if attempt < ATTEMPTS {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        });
    }
}
