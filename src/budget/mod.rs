//! Budgets and rate limits (SPEC §11), enforced before the call: an
//! exchange reserves the most it can use (refused if that does not fit),
//! then settles with what it did use, or releases the reservation when
//! the upstream did not answer. Fixed windows aligned to UTC count
//! requests, LLM tokens or spend; token buckets limit the request rate.
//! The counts live in this process ([`memory`], kept in the sealed
//! snapshot) or in a Redis shared by a fleet ([`redis`], atomic scripts),
//! where an unreachable Redis refuses rather than spends unchecked.

mod memory;
mod redis;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::guardrails::{RawBudget, Unit, Window};
use crate::config::BudgetStore;

/// One budget or rate limit, bound to a service and maybe an agent.
#[derive(Debug)]
pub(crate) struct Spec {
    pub(crate) name: String,
    /// `None`: shared by every agent using the service.
    pub(crate) agent: Option<String>,
    pub(crate) service: String,
    pub(crate) kind: Kind,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Window {
        window: Window,
        unit: Unit,
        limit: f64,
    },
    Rate {
        requests: f64,
        per: Duration,
        burst: f64,
    },
}

impl Spec {
    /// From a config budget that `config` already checked for shape.
    pub(crate) fn from_raw(raw: &RawBudget) -> Option<Spec> {
        let kind = match (&raw.window, &raw.rate) {
            (Some(window), None) => {
                let (unit, limit) = raw.limit.iter().next()?;
                Kind::Window {
                    window: Window::parse(window)?,
                    unit: Unit::parse(unit)?,
                    limit: *limit,
                }
            }
            (None, Some(rate)) => Kind::Rate {
                requests: rate.requests,
                per: rate.per.0,
                burst: rate.burst.unwrap_or(rate.requests),
            },
            _ => return None,
        };
        Some(Spec {
            name: raw.name.clone(),
            agent: raw.agent.clone(),
            service: raw.service.clone(),
            kind,
        })
    }

    /// Whether requests of `agent` (or an anonymous caller) to `service`
    /// count against it.
    pub(crate) fn applies(&self, service: &str, agent: Option<&str>) -> bool {
        self.service == service && self.agent.as_deref().is_none_or(|a| Some(a) == agent)
    }

    /// `2000000 tokens per 1d`, `10 requests per 1s (burst 20)`.
    pub(crate) fn describe(&self) -> String {
        match self.kind {
            Kind::Window {
                window,
                unit,
                limit,
            } => format!("{limit} {} per {}", unit.as_str(), window.as_str()),
            Kind::Rate {
                requests,
                per,
                burst,
            } => format!(
                "{requests} requests per {} (burst {burst})",
                humantime::format_duration(per)
            ),
        }
    }

    pub(crate) fn unit(&self) -> Option<Unit> {
        match self.kind {
            Kind::Window { unit, .. } => Some(unit),
            Kind::Rate { .. } => None,
        }
    }
}

/// What one request uses (or may use), per unit.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Amounts {
    pub(crate) requests: f64,
    pub(crate) input_tokens: f64,
    pub(crate) output_tokens: f64,
    pub(crate) spend: f64,
}

impl Amounts {
    fn of(&self, unit: Unit) -> f64 {
        match unit {
            Unit::Requests => self.requests,
            Unit::Tokens => self.input_tokens + self.output_tokens,
            Unit::InputTokens => self.input_tokens,
            Unit::OutputTokens => self.output_tokens,
            Unit::Spend => self.spend,
        }
    }
}

/// What a request asks to reserve.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask {
    /// Known up front (its input, its own output cap, its spend, 1 request).
    pub(crate) fixed: Amounts,
    /// The request has no output cap: clavis grants one, at most this, of
    /// what the token budgets leave.
    pub(crate) open_output: Option<f64>,
}

/// A reservation held until the exchange ends.
#[derive(Debug)]
pub(crate) struct Held {
    parts: Vec<Part>,
    /// The output cap granted to a request that had none.
    pub(crate) granted_output: Option<f64>,
}

#[derive(Debug, Clone)]
struct Part {
    spec: Arc<Spec>,
    /// The window the amount was reserved in (unix seconds).
    window_start: i64,
    amount: f64,
}

/// Why a request does not fit.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("budget {budget:?} ({limit} {unit} per {window}) has {left} left (used {used}, reserved by requests in flight {reserved}); this request needs up to {needed}. It resets in {resets_in}s.")]
    Exceeded {
        budget: String,
        unit: &'static str,
        window: &'static str,
        limit: f64,
        used: f64,
        reserved: f64,
        left: f64,
        needed: f64,
        resets_in: u64,
    },
    #[error("rate limit {budget:?} ({requests} requests per {per:?}, bursts of {burst}) reached; retry in {retry_after_ms} ms")]
    Rate {
        budget: String,
        requests: f64,
        per: Duration,
        burst: f64,
        retry_after_ms: u64,
    },
    #[error("budget store unreachable ({0}); refusing rather than spending unchecked")]
    Store(String),
}

impl BudgetError {
    /// Seconds until the request could fit, for `Retry-After`.
    pub(crate) fn retry_after(&self) -> Option<u64> {
        match self {
            BudgetError::Exceeded { resets_in, .. } => Some(*resets_in),
            BudgetError::Rate { retry_after_ms, .. } => Some(retry_after_ms.div_ceil(1000).max(1)),
            BudgetError::Store(_) => None,
        }
    }

    /// `RateLimit-Policy` and `RateLimit` (IETF httpapi draft) values.
    pub(crate) fn ratelimit_headers(&self) -> Option<(String, String)> {
        match self {
            BudgetError::Exceeded {
                budget,
                window,
                limit,
                left,
                resets_in,
                ..
            } => {
                let w = Window::parse(window).map_or(0, window_seconds);
                Some((
                    format!("\"{budget}\";q={};w={w}", limit.floor()),
                    format!("\"{budget}\";r={};t={resets_in}", left.max(0.0).floor()),
                ))
            }
            BudgetError::Rate {
                budget,
                requests,
                per,
                retry_after_ms,
                ..
            } => Some((
                format!(
                    "\"{budget}\";q={};w={}",
                    requests.floor(),
                    per.as_secs().max(1)
                ),
                format!(
                    "\"{budget}\";r=0;t={}",
                    retry_after_ms.div_ceil(1000).max(1)
                ),
            )),
            BudgetError::Store(_) => None,
        }
    }
}

impl Status {
    /// `{"name","agent","service","window","unit","limit","used",
    /// "reserved","resets_at"}` (and `rate` for a rate limit, whose limit
    /// is its burst).
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let spec = &self.spec;
        let resets_at = humantime::format_rfc3339_seconds(
            UNIX_EPOCH + Duration::from_secs(self.resets_at.max(0) as u64),
        )
        .to_string();
        let mut v = serde_json::json!({
            "name": spec.name,
            "agent": spec.agent,
            "service": spec.service,
            "used": self.used,
            "reserved": self.reserved,
            "resets_at": resets_at,
        });
        match spec.kind {
            Kind::Window {
                window,
                unit,
                limit,
            } => {
                v["window"] = window.as_str().into();
                v["unit"] = unit.as_str().into();
                v["limit"] = limit.into();
            }
            Kind::Rate {
                requests,
                per,
                burst,
            } => {
                v["window"] = serde_json::Value::Null;
                v["unit"] = "requests".into();
                v["limit"] = burst.into();
                v["rate"] = serde_json::json!({
                    "requests": requests,
                    "per": humantime::format_duration(per).to_string(),
                    "burst": burst,
                });
            }
        }
        v
    }
}

/// A budget's state, as `GET /v1/budgets` shows it.
#[derive(Debug, Clone)]
pub(crate) struct Status {
    pub(crate) spec: Arc<Spec>,
    pub(crate) used: f64,
    pub(crate) reserved: f64,
    /// Unix seconds; for a rate limit, when the bucket is full again.
    pub(crate) resets_at: i64,
}

/// The budgets of one config: swapped whole by a reload, read once per
/// exchange with the rest of the live catalog.
#[derive(Debug, Default)]
pub(crate) struct Specs(Vec<Arc<Spec>>);

impl Specs {
    pub(crate) fn new(specs: Vec<Spec>) -> Specs {
        Specs(specs.into_iter().map(Arc::new).collect())
    }

    /// The budgets a request of `agent` to `service` counts against.
    pub(crate) fn applicable(&self, service: &str, agent: Option<&str>) -> Vec<Arc<Spec>> {
        if self.0.is_empty() {
            return Vec::new();
        }
        self.0
            .iter()
            .filter(|s| s.service == service && s.agent.as_deref().is_none_or(|a| Some(a) == agent))
            .cloned()
            .collect()
    }

    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|s| s.name.as_str())
    }

    /// Whether `name` counts the same way in both (same window and unit,
    /// or both a rate limit): its count then carries over a reload.
    pub(crate) fn counts_alike(&self, other: &Specs, name: &str) -> bool {
        let find = |specs: &Specs| specs.0.iter().find(|s| s.name == name).map(|s| s.kind);
        match (find(self), find(other)) {
            (
                Some(Kind::Window {
                    window: a, unit: u, ..
                }),
                Some(Kind::Window {
                    window: b, unit: v, ..
                }),
            ) => a == b && u == v,
            (Some(Kind::Rate { .. }), Some(Kind::Rate { .. })) => true,
            _ => false,
        }
    }
}

/// Where the budgets' counts live; the budgets themselves ([`Specs`]) are
/// part of the live catalog, so a reload swaps them without the counts.
pub(crate) struct Budgets {
    backend: Backend,
}

enum Backend {
    Memory(memory::Counts),
    Redis(redis::Counts),
}

impl std::fmt::Debug for Budgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budgets").finish_non_exhaustive()
    }
}

impl Budgets {
    pub(crate) fn new(store: &BudgetStore) -> Result<Budgets, BudgetError> {
        let backend = match store {
            BudgetStore::Memory => Backend::Memory(memory::Counts::default()),
            BudgetStore::Redis(url) => Backend::Redis(redis::Counts::new(url.expose())?),
        };
        Ok(Budgets { backend })
    }

    /// After a reload from `old` to `new`: the counts of a budget that is
    /// gone, or now counts another unit or window, start over; the others
    /// are kept. (Redis counts are keyed by name and window start, shared
    /// by the fleet, and left alone.)
    pub(crate) fn reconcile(&self, old: &Specs, new: &Specs) {
        if let Backend::Memory(m) = &self.backend {
            let stale: Vec<&str> = old.names().filter(|n| !old.counts_alike(new, n)).collect();
            m.forget(&stale);
        }
    }

    /// Reserves `ask` against every budget in `specs`, all or none.
    pub(crate) async fn reserve(&self, specs: &[Arc<Spec>], ask: Ask) -> Result<Held, BudgetError> {
        let now = unix_now();
        let plan: Vec<Planned> = specs
            .iter()
            .map(|spec| Planned::new(spec.clone(), &ask, now))
            .collect();
        let granted = match &self.backend {
            Backend::Memory(m) => m.reserve(&plan, ask.open_output, now)?,
            Backend::Redis(r) => r.reserve(&plan, ask.open_output).await?,
        };
        let parts = plan
            .into_iter()
            .filter(|p| matches!(p.spec.kind, Kind::Window { .. }))
            .map(|p| {
                let extra = if p.open { granted.unwrap_or(0.0) } else { 0.0 };
                Part {
                    amount: p.fixed + extra,
                    window_start: p.window_start,
                    spec: p.spec,
                }
            })
            .collect();
        Ok(Held {
            parts,
            granted_output: granted.filter(|_| ask.open_output.is_some()),
        })
    }

    /// Ends a reservation: `used` is what the request used (`None`:
    /// nothing, the upstream never answered). Counts kept in this process
    /// are settled at once; `Some` hands the reservation back when settling
    /// takes a call to Redis, for [`Budgets::settle`] off the caller's path.
    pub(crate) fn settle_here(
        &self,
        held: Held,
        used: Option<Amounts>,
    ) -> Option<(Held, Option<Amounts>)> {
        match &self.backend {
            Backend::Memory(m) => {
                let settled = settled(held, used);
                if !settled.is_empty() {
                    m.settle(&settled);
                }
                None
            }
            Backend::Redis(_) => Some((held, used)),
        }
    }

    /// Ends a reservation, waiting for Redis where the counts live there.
    pub(crate) async fn settle(&self, held: Held, used: Option<Amounts>) {
        let settled = settled(held, used);
        if settled.is_empty() {
            return;
        }
        let result = match &self.backend {
            Backend::Memory(m) => {
                m.settle(&settled);
                Ok(())
            }
            Backend::Redis(r) => r.settle(&settled).await,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not settle a budget reservation; it lapses with its window");
        }
    }

    /// Every budget's state now.
    pub(crate) async fn statuses(&self, specs: &Specs) -> Result<Vec<Status>, BudgetError> {
        let now = unix_now();
        match &self.backend {
            Backend::Memory(m) => Ok(m.statuses(&specs.0, now)),
            Backend::Redis(r) => r.statuses(&specs.0, now).await,
        }
    }

    /// The counts to keep across a restart (memory backend only), and
    /// whether they changed since the last call.
    pub(crate) fn to_snapshot(&self) -> Option<serde_json::Value> {
        match &self.backend {
            Backend::Memory(m) => m.take_dirty(),
            Backend::Redis(_) => None,
        }
    }

    /// Restores counts kept by [`Budgets::to_snapshot`]; windows that ended
    /// meanwhile start over.
    pub(crate) fn restore(&self, saved: &serde_json::Value, specs: &Specs) {
        if let Backend::Memory(m) = &self.backend {
            m.restore(saved, &specs.0, unix_now());
        }
    }
}

/// Each part of a reservation with what the request used in its unit.
fn settled(held: Held, used: Option<Amounts>) -> Vec<(Part, f64)> {
    held.parts
        .into_iter()
        .map(|p| {
            let u = match (used, p.spec.unit()) {
                (Some(a), Some(unit)) => a.of(unit),
                _ => 0.0,
            };
            (p, u)
        })
        .collect()
}

/// One budget's share of a reservation, worked out before it is made.
#[derive(Debug)]
struct Planned {
    spec: Arc<Spec>,
    window_start: i64,
    window_end: i64,
    /// Reserved whatever the grant: the request's known amount in the unit.
    fixed: f64,
    /// Also takes the granted output cap (a token budget, no cap given).
    open: bool,
}

impl Planned {
    fn new(spec: Arc<Spec>, ask: &Ask, now: i64) -> Planned {
        let (window_start, window_end, fixed, open) = match spec.kind {
            Kind::Window { window, unit, .. } => {
                let (start, end) = bounds(window, now);
                let open =
                    ask.open_output.is_some() && matches!(unit, Unit::Tokens | Unit::OutputTokens);
                (start, end, ask.fixed.of(unit), open)
            }
            Kind::Rate { .. } => (0, 0, 1.0, false),
        };
        Planned {
            spec,
            window_start,
            window_end,
            fixed,
            open,
        }
    }
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn window_seconds(window: Window) -> u64 {
    match window {
        Window::Minute => 60,
        Window::Hour => 3600,
        Window::Day => 86_400,
        Window::Week => 7 * 86_400,
        Window::Month => 30 * 86_400,
    }
}

/// The window containing `now` (unix seconds): `[start, end)`.
pub(crate) fn bounds(window: Window, now: i64) -> (i64, i64) {
    let floor = |size: i64| {
        (
            now.div_euclid(size) * size,
            now.div_euclid(size) * size + size,
        )
    };
    match window {
        Window::Minute => floor(60),
        Window::Hour => floor(3600),
        Window::Day => floor(86_400),
        Window::Week => {
            // 1970-01-01 was a Thursday: Monday 00:00 is 3 days before.
            let shifted = now + 3 * 86_400;
            let start = shifted.div_euclid(7 * 86_400) * 7 * 86_400 - 3 * 86_400;
            (start, start + 7 * 86_400)
        }
        Window::Month => {
            let Ok(t) = time::OffsetDateTime::from_unix_timestamp(now) else {
                return floor(30 * 86_400);
            };
            let first = |year: i32, month: time::Month| {
                time::Date::from_calendar_date(year, month, 1)
                    .map(|d| d.midnight().assume_utc().unix_timestamp())
            };
            let start = first(t.year(), t.month()).unwrap_or(now);
            let (ny, nm) = match t.month() {
                time::Month::December => (t.year() + 1, time::Month::January),
                m => (t.year(), m.next()),
            };
            (start, first(ny, nm).unwrap_or(start + 30 * 86_400))
        }
    }
}

#[cfg(test)]
mod tests;
