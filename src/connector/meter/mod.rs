//! What a request to a metered API can cost, read from the request before
//! it is sent, and what it did cost, read from the answer as it streams
//! (SPEC §11). Pure functions of the bytes: the accounting is `budget`'s.
//!
//! - LLM tokens (OpenAI chat completions, Responses and legacy completions,
//!   embeddings; Anthropic Messages): input estimated from the body's size
//!   (a token is at least a byte of the text it encodes, so the byte count
//!   bounds it), output from the request's own cap, or a cap clavis sets;
//!   the real usage comes from the answer's `usage` (JSON) or its final
//!   usage event (SSE).
//! - Spend, in the API's own unit: Stripe `amount` on the POSTs that move
//!   money (cents), Kalshi order notional (count × price, cents; a market
//!   order counts at its `buy_max_cost` or the 100-cent maximum price),
//!   Coinbase `quote_size`, or `base_size` × `limit_price`. A money-moving
//!   request whose amount cannot be read is unmeasurable: refused rather
//!   than let through uncounted.

use http::Method;

use crate::json::Json;

/// The accounting a connector's API allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Meter {
    #[default]
    None,
    OpenAi,
    Anthropic,
    Stripe,
    Kalshi,
    Coinbase,
}

/// The most one request can cost.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Estimate {
    pub(crate) input_tokens: f64,
    /// The request's own output cap (times its choices); `None` for an LLM
    /// call without one.
    pub(crate) output_cap: Option<f64>,
    /// How many outputs the call asks for, each up to the cap (`n`, and
    /// legacy completions' `best_of`): a cap clavis sets is what the
    /// budget leaves divided by this. At least 1 for an LLM call.
    pub(crate) choices: f64,
    pub(crate) spend: f64,
    /// An LLM call: what rewriting the body and reading the usage need.
    pub(crate) llm: Option<LlmCall>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LlmApi {
    OpenAiChat,
    OpenAiResponses,
    OpenAiCompletions,
    OpenAiEmbeddings,
    AnthropicMessages,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LlmCall {
    pub(crate) api: LlmApi,
    pub(crate) stream: bool,
}

/// Why a request's cost cannot be known (and so it is not sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unmeasurable {
    #[error("the request body is not JSON (or repeats a key), so its cost cannot be read")]
    NotJson,
    #[error("the request body is not a form, so its amount cannot be read")]
    NotForm,
    #[error("{0}")]
    Missing(&'static str),
}

impl Meter {
    pub(crate) fn reports_tokens(self) -> bool {
        matches!(self, Meter::OpenAi | Meter::Anthropic)
    }

    pub(crate) fn reports_spend(self) -> bool {
        matches!(self, Meter::Stripe | Meter::Kalshi | Meter::Coinbase)
    }

    /// The LLM endpoint a request goes to, if it is one.
    fn llm(self, method: &Method, path: &str) -> Option<LlmApi> {
        if method != Method::POST {
            return None;
        }
        match (self, path.trim_end_matches('/')) {
            (Meter::OpenAi, "/v1/chat/completions") => Some(LlmApi::OpenAiChat),
            (Meter::OpenAi, "/v1/responses") => Some(LlmApi::OpenAiResponses),
            (Meter::OpenAi, "/v1/completions") => Some(LlmApi::OpenAiCompletions),
            (Meter::OpenAi, "/v1/embeddings") => Some(LlmApi::OpenAiEmbeddings),
            (Meter::Anthropic, "/v1/messages") => Some(LlmApi::AnthropicMessages),
            _ => None,
        }
    }

    /// Whether the request's body must be read to know what it costs.
    pub(crate) fn reads_body(self, method: &Method, path: &str) -> bool {
        self.llm(method, path).is_some() || self.moves_money(method, path)
    }

    fn moves_money(self, method: &Method, path: &str) -> bool {
        if method != Method::POST {
            return false;
        }
        let path = path.trim_end_matches('/');
        match self {
            Meter::Stripe => matches!(
                path,
                "/v1/refunds"
                    | "/v1/payouts"
                    | "/v1/transfers"
                    | "/v1/payment_intents"
                    | "/v1/charges"
            ),
            Meter::Kalshi => matches!(
                path,
                "/trade-api/v2/portfolio/orders" | "/trade-api/v2/portfolio/orders/batched"
            ),
            Meter::Coinbase => path == "/api/v3/brokerage/orders",
            _ => false,
        }
    }

    /// The most the request can cost. `body` is the whole body when
    /// [`Meter::reads_body`] said so (else empty).
    pub(crate) fn estimate(
        self,
        method: &Method,
        path: &str,
        body: &[u8],
    ) -> Result<Estimate, Unmeasurable> {
        if let Some(api) = self.llm(method, path) {
            return llm_estimate(api, body);
        }
        if !self.moves_money(method, path) {
            return Ok(Estimate::default());
        }
        let spend = match self {
            Meter::Stripe => stripe_amount(body)?,
            Meter::Kalshi => kalshi_notional(path, body)?,
            Meter::Coinbase => coinbase_size(body)?,
            _ => 0.0,
        };
        Ok(Estimate {
            spend,
            ..Estimate::default()
        })
    }
}

fn llm_estimate(api: LlmApi, body: &[u8]) -> Result<Estimate, Unmeasurable> {
    let json = Json::parse(body).ok_or(Unmeasurable::NotJson)?;
    let cap_fields: &[&str] = match api {
        LlmApi::OpenAiChat => &["max_completion_tokens", "max_tokens"],
        LlmApi::OpenAiResponses => &["max_output_tokens"],
        LlmApi::OpenAiCompletions | LlmApi::AnthropicMessages => &["max_tokens"],
        LlmApi::OpenAiEmbeddings => &[],
    };
    let output_cap = if api == LlmApi::OpenAiEmbeddings {
        Some(0.0)
    } else {
        // The smallest cap given is the one the API enforces.
        cap_fields
            .iter()
            .filter_map(|f| json.get(f).and_then(Json::number))
            .filter(|n| *n >= 0.0)
            .reduce(f64::min)
    };
    let stream = matches!(json.get("stream"), Some(Json::Bool(true)));
    // A call may ask for several outputs, each up to the cap: `n` (chat and
    // legacy completions), and `best_of` (legacy completions, generated
    // and billed server-side).
    let n = ["n", "best_of"]
        .iter()
        .filter_map(|f| json.get(f).and_then(Json::number))
        .filter(|n| *n >= 1.0)
        .fold(1.0, f64::max)
        .ceil();
    Ok(Estimate {
        input_tokens: body.len() as f64,
        output_cap: output_cap.map(|c| c * n),
        choices: n,
        spend: 0.0,
        llm: Some(LlmCall { api, stream }),
    })
}

fn stripe_amount(body: &[u8]) -> Result<f64, Unmeasurable> {
    let text = std::str::from_utf8(body).map_err(|_| Unmeasurable::NotForm)?;
    let mut amounts = text
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, _)| *k == "amount");
    match (amounts.next(), amounts.next()) {
        (Some((_, v)), None) => v
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite() && *n >= 0.0)
            .ok_or(Unmeasurable::Missing("amount is not a number")),
        (Some(_), Some(_)) => Err(Unmeasurable::Missing("amount is given more than once")),
        (None, _) => Err(Unmeasurable::Missing(
            "no amount: send the amount explicitly (a refund without one refunds everything), so it can be counted",
        )),
    }
}

/// Count × price for one Kalshi order (cents).
fn kalshi_order(order: &Json) -> Result<f64, Unmeasurable> {
    let count = order
        .get("count")
        .and_then(Json::number)
        .filter(|n| *n > 0.0)
        .ok_or(Unmeasurable::Missing("an order has no count"))?;
    if let Some(max) = order.get("buy_max_cost").and_then(Json::number) {
        return Ok(max);
    }
    let price = ["yes_price", "no_price"]
        .iter()
        .filter_map(|f| order.get(f).and_then(Json::number))
        .reduce(f64::max)
        // A market order without a price pays at most 100 cents a contract.
        .unwrap_or(100.0);
    Ok(count * price)
}

fn kalshi_notional(path: &str, body: &[u8]) -> Result<f64, Unmeasurable> {
    let json = Json::parse(body).ok_or(Unmeasurable::NotJson)?;
    if path.trim_end_matches('/').ends_with("/batched") {
        let Some(Json::Array(orders)) = json.get("orders") else {
            return Err(Unmeasurable::Missing("a batched order has no orders list"));
        };
        return orders.iter().map(kalshi_order).sum();
    }
    kalshi_order(&json)
}

fn coinbase_size(body: &[u8]) -> Result<f64, Unmeasurable> {
    let json = Json::parse(body).ok_or(Unmeasurable::NotJson)?;
    let Some(Json::Object(config)) = json.get("order_configuration") else {
        return Err(Unmeasurable::Missing(
            "the order has no order_configuration",
        ));
    };
    let mut sizes = Vec::new();
    for settings in config.values() {
        let quote = settings.get("quote_size").and_then(Json::number);
        let base = settings.get("base_size").and_then(Json::number);
        let limit = settings.get("limit_price").and_then(Json::number);
        sizes.push(match (quote, base, limit) {
            (Some(q), _, _) => q,
            (None, Some(b), Some(p)) => b * p,
            _ => {
                return Err(Unmeasurable::Missing(
                    "a market order by base_size has no price to count it by: give quote_size",
                ))
            }
        });
    }
    sizes
        .into_iter()
        .reduce(f64::max)
        .ok_or(Unmeasurable::Missing(
            "the order has no order_configuration",
        ))
}

impl LlmCall {
    /// The body with the output capped at `cap` (when it set no cap) and,
    /// for OpenAI chat and completions streams, the final usage chunk asked
    /// for. `None`:
    /// nothing to change.
    pub(crate) fn rewrite(&self, body: &[u8], cap: Option<u64>) -> Option<Vec<u8>> {
        let mut json: serde_json::Value = serde_json::from_slice(body).ok()?;
        let object = json.as_object_mut()?;
        let mut changed = false;
        if let Some(cap) = cap {
            let field = match self.api {
                LlmApi::OpenAiChat => "max_completion_tokens",
                LlmApi::OpenAiResponses => "max_output_tokens",
                LlmApi::OpenAiCompletions | LlmApi::AnthropicMessages => "max_tokens",
                LlmApi::OpenAiEmbeddings => return None,
            };
            object.insert(field.into(), cap.into());
            changed = true;
        }
        // Chat and legacy completions streams report usage only when asked
        // (Responses streams always do, in `response.completed`).
        if self.stream && matches!(self.api, LlmApi::OpenAiChat | LlmApi::OpenAiCompletions) {
            let options = object
                .entry("stream_options")
                .or_insert_with(|| serde_json::json!({}));
            if let Some(options) = options.as_object_mut() {
                if options.get("include_usage") != Some(&serde_json::Value::Bool(true)) {
                    options.insert("include_usage".into(), true.into());
                    changed = true;
                }
            }
        }
        changed.then(|| serde_json::to_vec(&json).ok()).flatten()
    }
}

/// Tokens an answer reports.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Usage {
    pub(crate) input_tokens: f64,
    pub(crate) output_tokens: f64,
}

/// The most of an answer kept to find its usage: a JSON answer is read
/// whole up to this, an SSE line up to this.
const MAX_READ: usize = 4 * 1024 * 1024;

/// Reads the usage from an answer as its bytes pass, without holding up
/// or buffering the stream itself.
#[derive(Debug)]
pub(crate) struct UsageReader {
    sse: bool,
    /// The JSON answer so far, or the SSE line being read.
    buf: Vec<u8>,
    overflow: bool,
    usage: Option<Usage>,
}

impl UsageReader {
    pub(crate) fn new(content_type: Option<&str>) -> UsageReader {
        let sse = content_type.is_some_and(|c| c.trim_start().starts_with("text/event-stream"));
        UsageReader {
            sse,
            buf: Vec::new(),
            overflow: false,
            usage: None,
        }
    }

    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        if !self.sse {
            if self.buf.len() + bytes.len() > MAX_READ {
                self.overflow = true;
                self.buf = Vec::new();
            } else if !self.overflow {
                self.buf.extend_from_slice(bytes);
            }
            return;
        }
        let mut rest = bytes;
        while let Some(at) = memchr::memchr(b'\n', rest) {
            if !self.overflow {
                self.buf.extend_from_slice(&rest[..at]);
                self.line();
            }
            self.buf.clear();
            self.overflow = false;
            rest = &rest[at + 1..];
        }
        if self.buf.len() + rest.len() > MAX_READ {
            self.overflow = true;
            self.buf.clear();
        } else if !self.overflow {
            self.buf.extend_from_slice(rest);
        }
    }

    /// One SSE line: a `data:` line that mentions usage is read.
    fn line(&mut self) {
        let line = self.buf.strip_suffix(b"\r").unwrap_or(&self.buf);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        if memchr::memmem::find(data, b"\"usage\"").is_none() {
            return;
        }
        if let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) {
            self.merge(&json);
        }
    }

    /// Takes the usage an event or answer carries: input is the largest
    /// seen, output the latest (Anthropic's `message_delta` counts up).
    fn merge(&mut self, json: &serde_json::Value) {
        let usage = ["usage", "/response/usage", "/message/usage"]
            .iter()
            .find_map(|p| {
                if p.starts_with('/') {
                    json.pointer(p)
                } else {
                    json.get(p)
                }
            })
            .filter(|u| u.is_object());
        let Some(usage) = usage else {
            return;
        };
        let num = |k: &str| usage.get(k).and_then(serde_json::Value::as_f64);
        let input = ["prompt_tokens", "input_tokens"]
            .iter()
            .find_map(|k| num(k))
            .map(|i| {
                // Anthropic counts cache reads and writes apart from input.
                i + num("cache_creation_input_tokens").unwrap_or(0.0)
                    + num("cache_read_input_tokens").unwrap_or(0.0)
            });
        let output = ["completion_tokens", "output_tokens"]
            .iter()
            .find_map(|k| num(k));
        let mut now = self.usage.unwrap_or_default();
        if let Some(i) = input {
            now.input_tokens = now.input_tokens.max(i);
        }
        if let Some(o) = output {
            now.output_tokens = o;
        }
        self.usage = Some(now);
    }

    /// The usage the answer reported, if it did.
    pub(crate) fn finish(mut self) -> Option<Usage> {
        if self.sse {
            if !self.buf.is_empty() && !self.overflow {
                self.line();
            }
        } else if !self.overflow {
            if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&self.buf) {
                self.merge(&json);
            }
        }
        self.usage
    }
}

#[cfg(test)]
mod tests;
