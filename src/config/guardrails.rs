//! The YAML shapes of the guardrails (SPEC §10–§11): policies with their
//! rules and matchers, budgets and rate limits. Checked for shape here;
//! `catalog` compiles them against the connectors and services.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use std::time::Duration;

use super::{HumanDuration, Interp};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PolicyMode {
    /// Refuse what the policy denies.
    #[default]
    Enforce,
    /// Decide, log and audit what would be denied; never block.
    Audit,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DefaultAction {
    Allow,
    /// What a request no rule matches gets unless the policy says otherwise.
    #[default]
    Deny,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) mode: PolicyMode,
    #[serde(default)]
    pub(crate) default: DefaultAction,
    #[serde(default)]
    pub(crate) rules: Vec<RawRule>,
}

/// One rule: a name and exactly one of `allow`, `deny`, `approve`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) allow: Option<RawMatcher>,
    #[serde(default)]
    pub(crate) deny: Option<RawMatcher>,
    #[serde(default)]
    pub(crate) approve: Option<RawMatcher>,
}

/// What a request must show for a rule to apply; every matcher given must hold.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMatcher {
    #[serde(default)]
    pub(crate) methods: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) host: Option<OneOrMany>,
    #[serde(default)]
    pub(crate) path: Option<String>,
    #[serde(default)]
    pub(crate) query: BTreeMap<String, RawValue>,
    #[serde(default)]
    pub(crate) body: BTreeMap<String, RawValue>,
}

/// A host or a list of them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(crate) fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// A scalar as written: its text, and its number if it is one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Scalar {
    pub(crate) text: String,
    pub(crate) number: Option<f64>,
}

/// A value matcher: a literal (equals), or one of `in`, `not_in`, `regex`,
/// `min`/`max`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) enum RawValue {
    Equals(Scalar),
    In(Vec<Scalar>),
    NotIn(Vec<Scalar>),
    Regex(String),
    Range { min: Option<f64>, max: Option<f64> },
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, number or boolean")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar {
            text: v.to_string(),
            number: None,
        })
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar {
            text: v.to_string(),
            number: Some(v as f64),
        })
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar {
            text: v.to_string(),
            number: Some(v as f64),
        })
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar {
            text: v.to_string(),
            number: Some(v),
        })
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar {
            text: v.to_owned(),
            number: None,
        })
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Scalar, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = RawValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a literal, or a map with in, not_in, regex, or min and max")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawValue, E> {
        ScalarVisitor.visit_bool(v).map(RawValue::Equals)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawValue, E> {
        ScalarVisitor.visit_i64(v).map(RawValue::Equals)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawValue, E> {
        ScalarVisitor.visit_u64(v).map(RawValue::Equals)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawValue, E> {
        ScalarVisitor.visit_f64(v).map(RawValue::Equals)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawValue, E> {
        ScalarVisitor.visit_str(v).map(RawValue::Equals)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawValue, A::Error> {
        let (mut min, mut max) = (None, None);
        let mut out = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "in" => out = Some(RawValue::In(map.next_value()?)),
                "not_in" => out = Some(RawValue::NotIn(map.next_value()?)),
                "regex" => out = Some(RawValue::Regex(map.next_value()?)),
                "min" => min = Some(map.next_value::<f64>()?),
                "max" => max = Some(map.next_value::<f64>()?),
                other => {
                    return Err(de::Error::custom(format!(
                        "unknown matcher {other:?} (in, not_in, regex, min, max)"
                    )))
                }
            }
        }
        match (out, min.is_some() || max.is_some()) {
            (Some(_), true) => Err(de::Error::custom(
                "use min/max on their own, not with in, not_in or regex",
            )),
            (Some(v), false) => Ok(v),
            (None, true) => Ok(RawValue::Range { min, max }),
            (None, false) => Err(de::Error::custom(
                "an empty matcher: give in, not_in, regex, or min and max",
            )),
        }
    }
}

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawValue, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

/// A budget or rate limit on an agent × service (`agent` absent: shared by
/// every agent using the service).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBudget {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) agent: Option<String>,
    pub(crate) service: String,
    #[serde(default)]
    pub(crate) window: Option<String>,
    #[serde(default)]
    pub(crate) limit: BTreeMap<String, f64>,
    #[serde(default)]
    pub(crate) rate: Option<RawRate>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRate {
    pub(crate) requests: f64,
    pub(crate) per: HumanDuration,
    #[serde(default)]
    pub(crate) burst: Option<f64>,
}

/// What a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Unit {
    Requests,
    /// LLM input plus output tokens.
    Tokens,
    InputTokens,
    OutputTokens,
    /// The money a request moves, in the API's own unit.
    Spend,
}

impl Unit {
    pub(crate) fn parse(text: &str) -> Option<Unit> {
        Some(match text {
            "requests" => Unit::Requests,
            "tokens" => Unit::Tokens,
            "input_tokens" => Unit::InputTokens,
            "output_tokens" => Unit::OutputTokens,
            "spend" => Unit::Spend,
            _ => return None,
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Unit::Requests => "requests",
            Unit::Tokens => "tokens",
            Unit::InputTokens => "input_tokens",
            Unit::OutputTokens => "output_tokens",
            Unit::Spend => "spend",
        }
    }
}

/// A fixed window aligned to UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Window {
    Minute,
    Hour,
    Day,
    /// Monday 00:00 UTC to the next.
    Week,
    /// The 1st of a month 00:00 UTC to the next 1st.
    Month,
}

impl Window {
    pub(crate) fn parse(text: &str) -> Option<Window> {
        Some(match text {
            "1m" => Window::Minute,
            "1h" => Window::Hour,
            "1d" => Window::Day,
            "7d" => Window::Week,
            "30d" => Window::Month,
            _ => return None,
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Window::Minute => "1m",
            Window::Hour => "1h",
            Window::Day => "1d",
            Window::Week => "7d",
            Window::Month => "30d",
        }
    }
}

/// Whether `text` names a window (for validation).
pub(crate) fn window_seconds(text: &str) -> Option<Window> {
    Window::parse(text)
}

/// `approvals:` (SPEC §12): how long a request waits for a person, how
/// long an approval stays open, and where people are told.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawApprovals {
    pub(crate) hold: HumanDuration,
    pub(crate) ttl: HumanDuration,
    pub(crate) webhook: Option<RawWebhook>,
}

impl Default for RawApprovals {
    fn default() -> Self {
        RawApprovals {
            hold: HumanDuration(Duration::from_secs(30)),
            ttl: HumanDuration(Duration::from_secs(15 * 60)),
            webhook: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum WebhookFormat {
    /// The approval record as JSON, signed with `X-Clavis-Signature`.
    #[default]
    Json,
    /// Slack's incoming-webhook shape.
    Slack,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWebhook {
    pub(crate) url: String,
    #[serde(default)]
    pub(crate) secret: Option<Interp>,
    #[serde(default)]
    pub(crate) format: WebhookFormat,
}

/// Where budget counts live: this process (kept in the sealed snapshot) or
/// a Redis shared by a fleet.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(transparent)]
pub(crate) struct RawBudgetStore(pub(crate) Option<Interp>);

/// A policy from YAML, for other modules' tests (YAML stays in `config`).
#[cfg(test)]
pub(crate) fn policy_from_yaml(text: &str) -> RawPolicy {
    match serde_yaml::from_str(text) {
        Ok(p) => p,
        Err(e) => panic!("test policy: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct One {
        v: RawValue,
    }

    fn value(yaml: &str) -> Result<RawValue, String> {
        serde_yaml::from_str::<One>(yaml)
            .map(|o| o.v)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn value_matchers_read_as_written() {
        assert_eq!(
            value("v: 5000").unwrap(),
            RawValue::Equals(Scalar {
                text: "5000".into(),
                number: Some(5000.0)
            })
        );
        assert!(
            matches!(value("v: usd").unwrap(), RawValue::Equals(s) if s.text == "usd" && s.number.is_none())
        );
        assert!(matches!(value("v: {in: [a, 2]}").unwrap(), RawValue::In(v) if v.len() == 2));
        assert_eq!(
            value("v: {max: 5000}").unwrap(),
            RawValue::Range {
                min: None,
                max: Some(5000.0)
            }
        );
        assert!(value("v: {mx: 1}")
            .unwrap_err()
            .contains("unknown matcher \"mx\""));
        assert!(value("v: {}").unwrap_err().contains("empty matcher"));
        assert!(value("v: {in: [a], max: 3}").is_err());
    }
}
