//! Budget counts in this process: one lock around all of them, so a
//! reservation across several budgets is all or none. The window counts
//! go into the sealed snapshot (written when they changed, at most every
//! few seconds, and at shutdown), so a restart keeps what was used.

use std::collections::HashMap;
use std::sync::Mutex;
use tokio::time::Instant;

use super::{BudgetError, Kind, Part, Planned, Spec, Status};

#[derive(Debug, Default)]
pub(super) struct Counts {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    windows: HashMap<String, WindowCount>,
    buckets: HashMap<String, Bucket>,
    dirty: bool,
}

#[derive(Debug, Clone, Copy)]
struct WindowCount {
    start: i64,
    used: f64,
    reserved: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Inner {
    /// The count of the window starting at `start` (a new window starts
    /// from nothing).
    fn window(&mut self, name: &str, start: i64) -> &mut WindowCount {
        let count = self.windows.entry(name.to_owned()).or_insert(WindowCount {
            start,
            used: 0.0,
            reserved: 0.0,
        });
        if count.start != start {
            *count = WindowCount {
                start,
                used: 0.0,
                reserved: 0.0,
            };
        }
        count
    }

    /// The bucket refilled to now.
    fn bucket(&mut self, name: &str, rate_per_s: f64, burst: f64) -> &mut Bucket {
        let now = Instant::now();
        let bucket = self.buckets.entry(name.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * rate_per_s;
        bucket.tokens = (bucket.tokens + refill).min(burst);
        bucket.at = now;
        bucket
    }
}

impl Counts {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks every budget, then reserves in all of them; the granted
    /// output cap when the request had none.
    pub(super) fn reserve(
        &self,
        plan: &[Planned],
        open_output: Option<f64>,
        now: i64,
    ) -> Result<Option<f64>, BudgetError> {
        let mut inner = self.lock();
        let mut grant = open_output;
        for p in plan {
            match p.spec.kind {
                Kind::Window {
                    window,
                    unit,
                    limit,
                } => {
                    let count = *inner.window(&p.spec.name, p.window_start);
                    let left = limit - count.used - count.reserved;
                    let room = left - p.fixed;
                    if room < 0.0 || (p.open && room < 1.0) {
                        return Err(BudgetError::Exceeded {
                            budget: p.spec.name.clone(),
                            unit: unit.as_str(),
                            window: window.as_str(),
                            limit,
                            used: count.used,
                            reserved: count.reserved,
                            left: left.max(0.0),
                            needed: p.fixed + if p.open { 1.0 } else { 0.0 },
                            resets_in: (p.window_end - now).max(1) as u64,
                        });
                    }
                    if p.open {
                        grant = grant.map(|g| g.min(room.floor()));
                    }
                }
                Kind::Rate {
                    requests,
                    per,
                    burst,
                } => {
                    let rate = requests / per.as_secs_f64();
                    let bucket = inner.bucket(&p.spec.name, rate, burst);
                    if bucket.tokens < 1.0 {
                        return Err(BudgetError::Rate {
                            budget: p.spec.name.clone(),
                            requests,
                            per,
                            burst,
                            retry_after_ms: ((1.0 - bucket.tokens) / rate * 1000.0).ceil() as u64,
                        });
                    }
                }
            }
        }
        for p in plan {
            match p.spec.kind {
                Kind::Window { .. } => {
                    let extra = if p.open { grant.unwrap_or(0.0) } else { 0.0 };
                    inner.window(&p.spec.name, p.window_start).reserved += p.fixed + extra;
                    inner.dirty = true;
                }
                Kind::Rate {
                    requests,
                    per,
                    burst,
                } => {
                    let rate = requests / per.as_secs_f64();
                    inner.bucket(&p.spec.name, rate, burst).tokens -= 1.0;
                }
            }
        }
        Ok(grant)
    }

    pub(super) fn settle(&self, settled: &[(Part, f64)]) {
        let mut inner = self.lock();
        for (part, used) in settled {
            if let Some(count) = inner.windows.get_mut(&part.spec.name) {
                // A window that ended meanwhile is gone with what it held.
                if count.start == part.window_start {
                    count.reserved = (count.reserved - part.amount).max(0.0);
                    count.used += used;
                }
            }
        }
        inner.dirty = true;
    }

    /// Drops the counts of these budgets (gone, or counting another way).
    pub(super) fn forget(&self, names: &[&str]) {
        if names.is_empty() {
            return;
        }
        let mut inner = self.lock();
        for name in names {
            inner.windows.remove(*name);
            inner.buckets.remove(*name);
        }
        inner.dirty = true;
    }

    pub(super) fn statuses(&self, specs: &[std::sync::Arc<Spec>], now: i64) -> Vec<Status> {
        let mut inner = self.lock();
        specs
            .iter()
            .map(|spec| match spec.kind {
                Kind::Window { window, .. } => {
                    let (start, end) = super::bounds(window, now);
                    let count = *inner.window(&spec.name, start);
                    Status {
                        spec: spec.clone(),
                        used: count.used,
                        reserved: count.reserved,
                        resets_at: end,
                    }
                }
                Kind::Rate {
                    requests,
                    per,
                    burst,
                } => {
                    let rate = requests / per.as_secs_f64();
                    let bucket = *inner.bucket(&spec.name, rate, burst);
                    Status {
                        spec: spec.clone(),
                        used: (burst - bucket.tokens).max(0.0),
                        reserved: 0.0,
                        resets_at: now + ((burst - bucket.tokens) / rate).ceil() as i64,
                    }
                }
            })
            .collect()
    }

    /// The window counts, if they changed since the last call.
    pub(super) fn take_dirty(&self) -> Option<serde_json::Value> {
        let mut inner = self.lock();
        if !inner.dirty {
            return None;
        }
        inner.dirty = false;
        let map: serde_json::Map<String, serde_json::Value> = inner
            .windows
            .iter()
            .map(|(name, c)| {
                (
                    name.clone(),
                    serde_json::json!({"window_start": c.start, "used": c.used}),
                )
            })
            .collect();
        Some(serde_json::Value::Object(map))
    }

    pub(super) fn restore(
        &self,
        saved: &serde_json::Value,
        specs: &[std::sync::Arc<Spec>],
        now: i64,
    ) {
        let mut inner = self.lock();
        for spec in specs {
            let Kind::Window { window, .. } = spec.kind else {
                continue;
            };
            let Some(entry) = saved.get(&spec.name) else {
                continue;
            };
            let start = entry
                .get("window_start")
                .and_then(serde_json::Value::as_i64);
            let used = entry.get("used").and_then(serde_json::Value::as_f64);
            let (current, _) = super::bounds(window, now);
            if let (Some(start), Some(used)) = (start, used) {
                if start == current {
                    inner.window(&spec.name, start).used = used;
                }
            }
        }
    }
}
