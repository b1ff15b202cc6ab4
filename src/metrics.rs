//! Prometheus metrics: counters and histograms updated on the request path,
//! gauges read at scrape time. Labels come from a closed vocabulary
//! (connector names, outcomes, error kinds), never from request data.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Outcome {
    pub(crate) connector: String,
    pub(crate) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ConnectorLabel {
    pub(crate) connector: String,
}

/// A label value shared with the config it names (a policy, a rule):
/// counting a request clones a pointer, not the text.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct Shared(pub(crate) Arc<str>);

impl EncodeLabelValue for Shared {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Decision {
    pub(crate) policy: Shared,
    pub(crate) rule: Shared,
    pub(crate) decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct BudgetLabel {
    pub(crate) budget: String,
}

/// A secret source (`vault`), closed vocabulary: never a path or a field.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SourceLabel {
    pub(crate) source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReloadResult {
    pub(crate) result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Version {
    pub(crate) version: &'static str,
}

/// Handles on one connector's request series (cheap to clone: shared atomics).
#[derive(Clone, Debug)]
pub(crate) struct ConnectorStats {
    pub(crate) injected: Counter,
    /// Answered with nothing injected (a claimed host's public path).
    pub(crate) passed: Counter,
    pub(crate) denied: Counter,
    pub(crate) error: Counter,
    pub(crate) duration: Histogram,
}

pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) requests: Family<Outcome, Counter>,
    pub(crate) duration: Family<ConnectorLabel, Histogram>,
    pub(crate) tunnels_active: Gauge,
    pub(crate) cert_cache_entries: Gauge,
    pub(crate) certs_issued: Counter,
    pub(crate) audit_failures: Counter,
    /// Policy outcomes by policy, rule (or `default`) and decision.
    pub(crate) policy_decisions: Family<Decision, Counter>,
    /// Approval webhook deliveries that failed (each retry counts).
    pub(crate) webhook_failures: Counter,
    /// What each budget has used in its current window (set at scrape).
    pub(crate) budget_used: Family<BudgetLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// New upstream connections opened.
    pub(crate) upstream_dials: Counter,
    /// Config reloads by result (`ok`, `error`).
    pub(crate) config_reloads: Family<ReloadResult, Counter>,
    /// Secret source reads that failed after start (the last good value stayed).
    pub(crate) secret_source_errors: Family<SourceLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("clavis");
        let requests = Family::<Outcome, Counter>::default();
        registry.register(
            "requests",
            "Requests through the injection path by connector and outcome (injected, passed, denied, error)",
            requests.clone(),
        );
        let duration = Family::<ConnectorLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ])
        });
        registry.register_with_unit(
            "request_duration",
            "Time from request to upstream response head",
            prometheus_client::registry::Unit::Seconds,
            duration.clone(),
        );
        let tunnels_active = Gauge::default();
        registry.register(
            "tunnels_active",
            "Open CONNECT tunnels",
            tunnels_active.clone(),
        );
        let cert_cache_entries = Gauge::default();
        registry.register(
            "cert_cache_entries",
            "Leaf certificates cached",
            cert_cache_entries.clone(),
        );
        let certs_issued = Counter::default();
        registry.register(
            "certs_issued",
            "Leaf certificates minted",
            certs_issued.clone(),
        );
        let audit_failures = Counter::default();
        registry.register(
            "audit_failures",
            "Audit writes that failed (the credential was not used)",
            audit_failures.clone(),
        );
        let upstream_dials = Counter::default();
        registry.register(
            "upstream_dials",
            "New upstream connections opened (a pooled connection reused is not counted)",
            upstream_dials.clone(),
        );
        let policy_decisions = Family::<Decision, Counter>::default();
        registry.register(
            "policy_decisions",
            "Policy decisions by policy, rule and decision (allow, deny, approve, would_deny, would_approve)",
            policy_decisions.clone(),
        );
        let webhook_failures = Counter::default();
        registry.register(
            "approval_webhook_failures",
            "Approval webhook deliveries that failed (each attempt counts)",
            webhook_failures.clone(),
        );
        let budget_used =
            Family::<BudgetLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "budget_used",
            "What each budget has used in its current window (requests, tokens or spend)",
            budget_used.clone(),
        );
        let config_reloads = Family::<ReloadResult, Counter>::default();
        for result in ["ok", "error"] {
            // Both series exist from the start, so a scrape sees 0, not nothing.
            let _ = config_reloads.get_or_create(&ReloadResult { result });
        }
        registry.register(
            "config_reloads",
            "Config reloads by result (ok; error: refused, the old config keeps serving)",
            config_reloads.clone(),
        );
        let secret_source_errors = Family::<SourceLabel, Counter>::default();
        registry.register(
            "secret_source_errors",
            "Secret source reads that failed after start, by source (the last good value is kept)",
            secret_source_errors.clone(),
        );
        let build = Family::<Version, Gauge>::default();
        build
            .get_or_create(&Version {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "clavis version", build);
        Metrics {
            registry,
            requests,
            duration,
            tunnels_active,
            cert_cache_entries,
            certs_issued,
            audit_failures,
            policy_decisions,
            webhook_failures,
            budget_used,
            upstream_dials,
            config_reloads,
            secret_source_errors,
        }
    }

    /// One connector's series, resolved once (per tunnel) so the request
    /// path only touches atomics.
    pub(crate) fn for_connector(&self, connector: &str) -> ConnectorStats {
        let outcome = |outcome| {
            self.requests
                .get_or_create(&Outcome {
                    connector: connector.to_owned(),
                    outcome,
                })
                .clone()
        };
        ConnectorStats {
            injected: outcome("injected"),
            passed: outcome("passed"),
            denied: outcome("denied"),
            error: outcome("error"),
            duration: self
                .duration
                .get_or_create(&ConnectorLabel {
                    connector: connector.to_owned(),
                })
                .clone(),
        }
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod render {
        use super::*;

        #[test]
        fn exposes_counters_with_prefix() {
            let m = Metrics::new();
            m.for_connector("openai").injected.inc();
            let text = m.render();
            assert!(
                text.contains(r#"clavis_requests_total{connector="openai",outcome="injected"} 1"#),
                "{text}"
            );
            assert!(text.contains("clavis_build_info"));
        }

        #[test]
        fn counts_upstream_dials() {
            let m = Metrics::new();
            assert!(m.render().contains("clavis_upstream_dials_total 0"));
            m.upstream_dials.inc();
            assert!(m.render().contains("clavis_upstream_dials_total 1"));
        }
    }
}
