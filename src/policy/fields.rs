//! The fields a rule can look at: query parameters and body fields (JSON
//! by dotted path, form-encoded keys as the API spells them), each read
//! the one way the upstream will read it. A field given twice is
//! ambiguous (an upstream may take either), so it never lets a request
//! through.

use crate::json::Json;

/// What a request shows for one field.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Seen<'a> {
    Missing,
    /// Given more than once, or the body could not be read as what it says.
    Ambiguous,
    /// Every value found (a `*` in a JSON path can find several).
    Values(Vec<Text<'a>>),
}

/// One value as text, and as a number when it reads as one.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Text<'a> {
    pub(crate) text: std::borrow::Cow<'a, str>,
    pub(crate) number: Option<f64>,
}

impl<'a> Text<'a> {
    fn of(text: std::borrow::Cow<'a, str>) -> Text<'a> {
        let number = text.trim().parse::<f64>().ok().filter(|n| n.is_finite());
        Text { text, number }
    }
}

/// `name=value` pairs of a query or form body, decoded (`+` is a space).
#[derive(Debug, Default)]
pub(crate) struct Pairs(Vec<(String, String)>);

impl Pairs {
    pub(crate) fn parse(text: &str) -> Pairs {
        let decode = |s: &str| {
            let spaced = s.replace('+', " ");
            String::from_utf8_lossy(&crate::encoding::percent_decode(&spaced)).into_owned()
        };
        Pairs(
            text.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (decode(k), decode(v)),
                    None => (decode(p), String::new()),
                })
                .collect(),
        )
    }

    pub(crate) fn get(&self, name: &str) -> Seen<'_> {
        let mut found = self.0.iter().filter(|(k, _)| k == name);
        match (found.next(), found.next()) {
            (None, _) => Seen::Missing,
            (Some(_), Some(_)) => Seen::Ambiguous,
            (Some((_, v)), None) => Seen::Values(vec![Text::of(v.as_str().into())]),
        }
    }
}

/// A request body as rules read it.
#[derive(Debug)]
pub(crate) enum Body {
    Empty,
    Json(Json),
    Form(Pairs),
    /// A body whose content type says JSON or form but that does not parse
    /// as one (or has a duplicate JSON key), or any other content type.
    Unreadable,
}

impl Body {
    pub(crate) fn parse(content_type: Option<&str>, bytes: &[u8]) -> Body {
        if bytes.is_empty() {
            return Body::Empty;
        }
        let mime = content_type
            .and_then(|c| c.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase())
            .unwrap_or_default();
        if mime == "application/json" || mime.ends_with("+json") {
            match serde_json::from_slice::<Json>(bytes) {
                Ok(json) => Body::Json(json),
                Err(_) => Body::Unreadable,
            }
        } else if mime == "application/x-www-form-urlencoded" {
            match std::str::from_utf8(bytes) {
                Ok(text) => Body::Form(Pairs::parse(text)),
                Err(_) => Body::Unreadable,
            }
        } else {
            Body::Unreadable
        }
    }

    /// The field at `path`: dotted for JSON (`items.*.price`, where `*` is
    /// every element of an array or every value of an object), the key as
    /// spelled for forms (`metadata[order]`).
    pub(crate) fn get(&self, path: &str) -> Seen<'_> {
        match self {
            Body::Empty => Seen::Missing,
            Body::Unreadable => Seen::Ambiguous,
            Body::Form(pairs) => pairs.get(path),
            Body::Json(json) => {
                let mut found = Vec::new();
                collect(json, &path.split('.').collect::<Vec<_>>(), &mut found);
                if found.is_empty() {
                    Seen::Missing
                } else {
                    Seen::Values(found)
                }
            }
        }
    }
}

fn collect<'a>(json: &'a Json, path: &[&str], out: &mut Vec<Text<'a>>) {
    let Some((first, rest)) = path.split_first() else {
        if let Some(text) = text_of(json) {
            out.push(text);
        }
        return;
    };
    match (json, *first) {
        (Json::Array(items), "*") => items.iter().for_each(|i| collect(i, rest, out)),
        (Json::Object(map), "*") => map.values().for_each(|v| collect(v, rest, out)),
        (Json::Object(map), key) => {
            if let Some(v) = map.get(key) {
                collect(v, rest, out);
            }
        }
        (Json::Array(items), index) => {
            if let Some(v) = index.parse::<usize>().ok().and_then(|i| items.get(i)) {
                collect(v, rest, out);
            }
        }
        _ => {}
    }
}

/// A scalar's text (and number); none for arrays and objects.
fn text_of(json: &Json) -> Option<Text<'_>> {
    Some(match json {
        Json::Bool(b) => Text {
            text: if *b { "true" } else { "false" }.into(),
            number: None,
        },
        Json::Number(n, text) => Text {
            text: text.as_str().into(),
            number: Some(*n),
        },
        Json::String(s) => Text::of(s.as_str().into()),
        Json::Null => Text {
            text: "null".into(),
            number: None,
        },
        Json::Array(_) | Json::Object(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(seen: Seen<'_>) -> Vec<String> {
        match seen {
            Seen::Values(v) => v.into_iter().map(|t| t.text.into_owned()).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn json_paths_with_stars_and_indices() {
        let body = Body::parse(
            Some("application/json; charset=utf-8"),
            br#"{"amount": 5000, "items": [{"price": 1}, {"price": 2.5}], "meta": {"a": {"b": "x"}}}"#,
        );
        assert_eq!(values(body.get("amount")), ["5000"]);
        assert_eq!(values(body.get("items.*.price")), ["1", "2.5"]);
        assert_eq!(values(body.get("items.1.price")), ["2.5"]);
        assert_eq!(values(body.get("meta.a.b")), ["x"]);
        assert_eq!(body.get("missing"), Seen::Missing);
        assert_eq!(body.get("items.*.missing"), Seen::Missing);
    }

    #[test]
    fn a_duplicate_json_key_anywhere_makes_the_body_unreadable() {
        let body = Body::parse(
            Some("application/json"),
            br#"{"x": {"amount": 1, "amount": 900000}}"#,
        );
        assert_eq!(body.get("other"), Seen::Ambiguous);
    }

    #[test]
    fn form_keys_as_the_api_spells_them() {
        let body = Body::parse(
            Some("application/x-www-form-urlencoded"),
            b"amount=5000&metadata%5Border%5D=42&note=a+b&dup=1&dup=2",
        );
        assert_eq!(values(body.get("amount")), ["5000"]);
        assert_eq!(values(body.get("metadata[order]")), ["42"]);
        assert_eq!(values(body.get("note")), ["a b"]);
        assert_eq!(body.get("dup"), Seen::Ambiguous);
    }

    #[test]
    fn other_or_broken_bodies_are_ambiguous_and_empty_ones_missing() {
        assert_eq!(
            Body::parse(Some("text/plain"), b"amount=1").get("amount"),
            Seen::Ambiguous
        );
        assert_eq!(
            Body::parse(Some("application/json"), b"{").get("amount"),
            Seen::Ambiguous
        );
        assert_eq!(
            Body::parse(Some("application/json"), b"").get("amount"),
            Seen::Missing
        );
    }
}
