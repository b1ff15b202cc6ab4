//! Budget counts in Redis (or Valkey), shared by every clavis pointing at
//! it: one Lua script checks every budget of a request and reserves in
//! all of them atomically on the server, so a budget holds exactly across
//! a fleet. Windows are hashes `clavis:budget:<name>:<start>` (`used`,
//! `reserved`) that expire a day after the window ends; rate limits are
//! token buckets `clavis:rate:<name>` refilled by the server's clock.
//! When Redis cannot be reached the request is refused: never spend
//! unchecked.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::{BudgetError, Kind, Part, Planned, Spec, Status};

/// How long one call to Redis may take before the request is refused.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

const RESERVE: &str = r"
local n = tonumber(ARGV[1])
local grant = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, n do
  local b = 2 + (i - 1) * 5
  local kind, a, c, fixed, open = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]), ARGV[b + 5] == '1'
  if kind == 'w' then
    local used = tonumber(redis.call('HGET', KEYS[i], 'used') or '0')
    local reserved = tonumber(redis.call('HGET', KEYS[i], 'reserved') or '0')
    local room = a - used - reserved - fixed
    if room < 0 or (open and room < 1) then
      return {0, i, tostring(used), tostring(reserved)}
    end
    if open and grant >= 0 and room < grant then grant = math.floor(room) end
  else
    local tokens = tonumber(redis.call('HGET', KEYS[i], 'tokens') or tostring(c))
    local at = tonumber(redis.call('HGET', KEYS[i], 'at') or tostring(now))
    tokens = math.min(c, tokens + (now - at) * a)
    if tokens < 1 then
      return {-1, i, tostring(math.ceil((1 - tokens) / a)), '0'}
    end
  end
end
for i = 1, n do
  local b = 2 + (i - 1) * 5
  local kind, a, c, fixed, open = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]), ARGV[b + 5] == '1'
  if kind == 'w' then
    local take = fixed
    if open and grant >= 0 then take = take + grant end
    redis.call('HINCRBYFLOAT', KEYS[i], 'reserved', take)
    redis.call('PEXPIREAT', KEYS[i], c)
  else
    local tokens = tonumber(redis.call('HGET', KEYS[i], 'tokens') or tostring(c))
    local at = tonumber(redis.call('HGET', KEYS[i], 'at') or tostring(now))
    tokens = math.min(c, tokens + (now - at) * a)
    redis.call('HSET', KEYS[i], 'tokens', tostring(tokens - 1), 'at', tostring(now))
    redis.call('PEXPIRE', KEYS[i], math.ceil(c / a) + 1000)
  end
end
return {1, 0, tostring(grant), '0'}
";

const SETTLE: &str = r"
local n = tonumber(ARGV[1])
for i = 1, n do
  local b = 1 + (i - 1) * 3
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('HINCRBYFLOAT', KEYS[i], 'reserved', -tonumber(ARGV[b + 1]))
    redis.call('HINCRBYFLOAT', KEYS[i], 'used', tonumber(ARGV[b + 2]))
    redis.call('PEXPIREAT', KEYS[i], tonumber(ARGV[b + 3]))
  end
end
return 1
";

pub(super) struct Counts {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    reserve: redis::Script,
    settle: redis::Script,
}

fn window_key(name: &str, start: i64) -> String {
    format!("clavis:budget:{name}:{start}")
}

fn rate_key(name: &str) -> String {
    format!("clavis:rate:{name}")
}

/// A Redis failure, described without the URL (which may hold a password).
fn describe(e: &redis::RedisError) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connection_refusal() {
        "connection refused".into()
    } else if e.is_io_error() || e.is_connection_dropped() {
        "connection failed".into()
    } else {
        format!("{:?}", e.kind())
    }
}

fn store_error(e: &redis::RedisError) -> BudgetError {
    BudgetError::Store(describe(e))
}

/// The millisecond a window's key may go: a day after the window ends.
fn expiry_ms(window_end: i64) -> i64 {
    (window_end + 86_400) * 1000
}

impl Counts {
    pub(super) fn new(url: &str) -> Result<Counts, BudgetError> {
        let client = redis::Client::open(url).map_err(|e| {
            BudgetError::Store(format!("budget_store is not a Redis URL: {}", describe(&e)))
        })?;
        Ok(Counts {
            client,
            conn: tokio::sync::Mutex::new(None),
            reserve: redis::Script::new(RESERVE),
            settle: redis::Script::new(SETTLE),
        })
    }

    /// The shared connection, made on first use (and again after a failure).
    async fn conn(&self) -> Result<ConnectionManager, BudgetError> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let made = tokio::time::timeout(CALL_TIMEOUT, ConnectionManager::new(self.client.clone()))
            .await
            .map_err(|_| BudgetError::Store("timed out connecting".into()))?
            .map_err(|e| store_error(&e))?;
        *slot = Some(made.clone());
        Ok(made)
    }

    async fn forget_conn(&self) {
        *self.conn.lock().await = None;
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, BudgetError> {
        let mut conn = self.conn().await?;
        let result = tokio::time::timeout(CALL_TIMEOUT, invocation.invoke_async(&mut conn)).await;
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.forget_conn().await;
                Err(store_error(&e))
            }
            Err(_) => {
                self.forget_conn().await;
                Err(BudgetError::Store("timed out".into()))
            }
        }
    }

    pub(super) async fn reserve(
        &self,
        plan: &[Planned],
        open_output: Option<f64>,
    ) -> Result<Option<f64>, BudgetError> {
        let mut inv = self.reserve.prepare_invoke();
        inv.arg(plan.len()).arg(open_output.unwrap_or(-1.0));
        for p in plan {
            match p.spec.kind {
                Kind::Window { limit, .. } => {
                    inv.key(window_key(&p.spec.name, p.window_start))
                        .arg("w")
                        .arg(limit)
                        .arg(expiry_ms(p.window_end))
                        .arg(p.fixed)
                        .arg(if p.open { "1" } else { "0" });
                }
                Kind::Rate {
                    requests,
                    per,
                    burst,
                    ..
                } => {
                    let per_ms = requests / (per.as_secs_f64() * 1000.0);
                    inv.key(rate_key(&p.spec.name))
                        .arg("r")
                        .arg(per_ms)
                        .arg(burst)
                        .arg(1.0)
                        .arg("0");
                }
            }
        }
        let (status, index, a, b): (i64, usize, String, String) = self.invoke(inv).await?;
        let number = |s: &str| s.parse::<f64>().unwrap_or(0.0);
        let failed = || plan.get(index.saturating_sub(1));
        match status {
            1 => Ok(open_output.map(|_| number(&a))),
            0 => {
                let Some(p) = failed() else {
                    return Err(BudgetError::Store("unexpected reply".into()));
                };
                let Kind::Window {
                    window,
                    unit,
                    limit,
                } = p.spec.kind
                else {
                    return Err(BudgetError::Store("unexpected reply".into()));
                };
                let (used, reserved) = (number(&a), number(&b));
                Err(BudgetError::Exceeded {
                    budget: p.spec.name.clone(),
                    unit: unit.as_str(),
                    window: window.as_str(),
                    limit,
                    used,
                    reserved,
                    left: (limit - used - reserved).max(0.0),
                    needed: p.fixed + if p.open { 1.0 } else { 0.0 },
                    resets_in: (p.window_end - super::unix_now()).max(1) as u64,
                })
            }
            _ => {
                let Some(p) = failed() else {
                    return Err(BudgetError::Store("unexpected reply".into()));
                };
                let Kind::Rate {
                    requests,
                    per,
                    burst,
                    ..
                } = p.spec.kind
                else {
                    return Err(BudgetError::Store("unexpected reply".into()));
                };
                Err(BudgetError::Rate {
                    budget: p.spec.name.clone(),
                    requests,
                    per,
                    burst,
                    retry_after_ms: number(&a) as u64,
                })
            }
        }
    }

    pub(super) async fn settle(&self, settled: &[(Part, f64)]) -> Result<(), BudgetError> {
        let mut inv = self.settle.prepare_invoke();
        inv.arg(settled.len());
        for (part, used) in settled {
            let end = match part.spec.kind {
                Kind::Window { window, .. } => super::bounds(window, part.window_start).1,
                Kind::Rate { .. } => part.window_start,
            };
            inv.key(window_key(&part.spec.name, part.window_start))
                .arg(part.amount)
                .arg(*used)
                .arg(expiry_ms(end));
        }
        let _: i64 = self.invoke(inv).await?;
        Ok(())
    }

    pub(super) async fn statuses(
        &self,
        specs: &[Arc<Spec>],
        now: i64,
    ) -> Result<Vec<Status>, BudgetError> {
        let mut conn = self.conn().await?;
        let mut out = Vec::with_capacity(specs.len());
        for spec in specs {
            let status = match spec.kind {
                Kind::Window { window, .. } => {
                    let (start, end) = super::bounds(window, now);
                    let (used, reserved): (Option<f64>, Option<f64>) = tokio::time::timeout(
                        CALL_TIMEOUT,
                        redis::cmd("HMGET")
                            .arg(window_key(&spec.name, start))
                            .arg("used")
                            .arg("reserved")
                            .query_async(&mut conn),
                    )
                    .await
                    .map_err(|_| BudgetError::Store("timed out".into()))?
                    .map_err(|e| store_error(&e))?;
                    Status {
                        spec: spec.clone(),
                        used: used.unwrap_or(0.0),
                        reserved: reserved.unwrap_or(0.0),
                        resets_at: end,
                    }
                }
                Kind::Rate {
                    requests,
                    per,
                    burst,
                    ..
                } => {
                    let (tokens, at): (Option<f64>, Option<f64>) = tokio::time::timeout(
                        CALL_TIMEOUT,
                        redis::cmd("HMGET")
                            .arg(rate_key(&spec.name))
                            .arg("tokens")
                            .arg("at")
                            .query_async(&mut conn),
                    )
                    .await
                    .map_err(|_| BudgetError::Store("timed out".into()))?
                    .map_err(|e| store_error(&e))?;
                    let rate = requests / per.as_secs_f64();
                    let elapsed = at.map_or(0.0, |at| (now as f64 * 1000.0 - at).max(0.0) / 1000.0);
                    let tokens = tokens.map_or(burst, |t| (t + elapsed * rate).min(burst));
                    Status {
                        spec: spec.clone(),
                        used: (burst - tokens).max(0.0),
                        reserved: 0.0,
                        resets_at: now + ((burst - tokens) / rate).ceil() as i64,
                    }
                }
            };
            out.push(status);
        }
        Ok(out)
    }
}
