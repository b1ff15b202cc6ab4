//! Request paths as a policy sees them, and the globs rules match them
//! with. A path that would mean something else to the upstream than it
//! spells (dot segments, encoded `/` or `\`, doubled slashes, double
//! encoding) is refused before any rule is read: first-match rules over a
//! path an attacker can respell are only as strong as its normal form.

use std::borrow::Cow;

/// Why a path cannot be matched safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathError {
    #[error("the path {0:?} does not start with '/'")]
    Relative(String),
    #[error("the path holds a dot segment ('.' or '..'), which servers resolve differently")]
    DotSegment,
    #[error("the path holds an encoded '/' or '\\' (%2F, %5C), which servers decode differently")]
    EncodedSeparator,
    #[error("the path holds a backslash, which some servers read as '/'")]
    Backslash,
    #[error("the path holds an empty segment ('//')")]
    EmptySegment,
    #[error("the path holds an encoded '%' (%25): double encoding is refused")]
    DoubleEncoded,
    #[error("the path holds a control character or is not UTF-8 once decoded")]
    NotText,
}

/// The percent-decoded path, without one trailing `/` (`/v1/refunds/` is
/// `/v1/refunds`), or why it cannot be matched.
pub(crate) fn normalize(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::Relative(raw.to_owned()));
    }
    if raw.contains('\\') {
        return Err(PathError::Backslash);
    }
    let decoded: Cow<'_, str> = if raw.contains('%') {
        let lower = raw.to_ascii_lowercase();
        if lower.contains("%2f") || lower.contains("%5c") {
            return Err(PathError::EncodedSeparator);
        }
        if lower.contains("%25") {
            return Err(PathError::DoubleEncoded);
        }
        let bytes = crate::encoding::percent_decode(raw);
        Cow::Owned(String::from_utf8(bytes).map_err(|_| PathError::NotText)?)
    } else {
        Cow::Borrowed(raw)
    };
    if decoded.chars().any(char::is_control) {
        return Err(PathError::NotText);
    }
    let keep = match decoded.len() {
        1 => 1,
        n if decoded.ends_with('/') => n - 1,
        n => n,
    };
    let trimmed = &decoded[..keep];
    for segment in trimmed.split('/').skip(1) {
        match segment {
            "." | ".." => return Err(PathError::DotSegment),
            "" if trimmed != "/" => return Err(PathError::EmptySegment),
            _ => {}
        }
    }
    Ok(match decoded {
        Cow::Borrowed(b) => Cow::Borrowed(&b[..keep]),
        Cow::Owned(mut o) => {
            o.truncate(keep);
            Cow::Owned(o)
        }
    })
}

/// A path glob: `*` is one segment (or, inside a segment, any characters
/// of it), `**` any number of segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Glob {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `**`
    Any,
    /// `*`
    One,
    Literal(String),
    /// A segment with `*` inside: its literal pieces in order.
    Pattern(Vec<String>),
}

impl std::fmt::Display for Glob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.segments.is_empty() {
            return f.write_str("/");
        }
        for s in &self.segments {
            f.write_str("/")?;
            match s {
                Segment::Any => f.write_str("**")?,
                Segment::One => f.write_str("*")?,
                Segment::Literal(l) => f.write_str(l)?,
                Segment::Pattern(p) => f.write_str(&p.join("*"))?,
            }
        }
        Ok(())
    }
}

impl Glob {
    pub(crate) fn parse(text: &str) -> Result<Glob, String> {
        if !text.starts_with('/') {
            return Err(format!("{text:?} must start with '/'"));
        }
        let text = match text.len() {
            1 => text,
            _ => text.strip_suffix('/').unwrap_or(text),
        };
        let mut segments = Vec::new();
        for part in text.split('/').skip(1) {
            segments.push(match part {
                "**" => Segment::Any,
                "*" => Segment::One,
                "" if text == "/" => continue,
                "" | "." | ".." => {
                    return Err(format!(
                        "{text:?} has an empty or dot segment; write the path as the API spells it"
                    ))
                }
                p if p.contains("**") => {
                    return Err(format!("{text:?}: '**' must be a whole segment"))
                }
                p if p.contains('*') => Segment::Pattern(p.split('*').map(str::to_owned).collect()),
                p => Segment::Literal(p.to_owned()),
            });
        }
        Ok(Glob { segments })
    }

    /// Matches a path from [`normalize`], segment by segment as it goes
    /// (a policy reads every rule's glob on every request: no allocation).
    pub(crate) fn matches(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        matches(&self.segments, (!rest.is_empty()).then_some(rest))
    }
}

/// `rest`: the path's segments not yet matched, `/`-separated (`None`
/// when none are left).
fn matches(glob: &[Segment], rest: Option<&str>) -> bool {
    match glob.split_first() {
        None => rest.is_none(),
        Some((Segment::Any, tail)) => {
            let mut rest = rest;
            loop {
                if matches(tail, rest) {
                    return true;
                }
                match rest {
                    Some(s) => rest = next(s).1,
                    None => return false,
                }
            }
        }
        Some((first, tail)) => match rest {
            Some(s) => {
                let (segment, after) = next(s);
                segment_matches(first, segment) && matches(tail, after)
            }
            None => false,
        },
    }
}

/// The first of `rest`'s segments, and the ones after it.
fn next(rest: &str) -> (&str, Option<&str>) {
    match rest.split_once('/') {
        Some((segment, tail)) => (segment, Some(tail)),
        None => (rest, None),
    }
}

fn segment_matches(glob: &Segment, segment: &str) -> bool {
    match glob {
        Segment::Any => true,
        Segment::One => !segment.is_empty(),
        Segment::Literal(l) => l == segment,
        Segment::Pattern(pieces) => {
            let (Some(first), Some(last)) = (pieces.first(), pieces.last()) else {
                return false;
            };
            if segment.len() < first.len() + last.len()
                || !segment.starts_with(first.as_str())
                || !segment.ends_with(last.as_str())
            {
                return false;
            }
            let mut rest = &segment[first.len()..segment.len() - last.len()];
            for middle in &pieces[1..pieces.len() - 1] {
                match rest.find(middle.as_str()) {
                    Some(at) => rest = &rest[at + middle.len()..],
                    None => return false,
                }
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod normalize {
        use super::*;

        #[test]
        fn decodes_and_drops_one_trailing_slash() {
            assert_eq!(normalize("/v1/refunds/").unwrap(), "/v1/refunds");
            assert_eq!(normalize("/repos/%61cme/x").unwrap(), "/repos/acme/x");
            assert_eq!(normalize("/").unwrap(), "/");
        }

        #[test]
        fn refuses_what_normalizes_differently_from_what_it_spells() {
            for (path, error) in [
                ("/repos/acme/../evil", PathError::DotSegment),
                ("/repos/./acme", PathError::DotSegment),
                ("/repos/%2e%2e/x", PathError::DotSegment),
                ("/repos%2Facme", PathError::EncodedSeparator),
                ("/repos%2facme", PathError::EncodedSeparator),
                ("/repos%5Cacme", PathError::EncodedSeparator),
                ("/repos\\acme", PathError::Backslash),
                ("/repos//acme", PathError::EmptySegment),
                ("//repos", PathError::EmptySegment),
                ("/v1/refunds//", PathError::EmptySegment),
                ("/repos/%252e%252e/x", PathError::DoubleEncoded),
                ("/a%00b", PathError::NotText),
                ("/a%ff", PathError::NotText),
            ] {
                assert_eq!(normalize(path), Err(error), "{path}");
            }
        }
    }

    mod glob {
        use super::*;

        fn m(glob: &str, path: &str) -> bool {
            Glob::parse(glob).unwrap().matches(path)
        }

        #[test]
        fn one_star_is_one_segment_two_are_any() {
            assert!(m(
                "/repos/acme/*/issues/*/comments",
                "/repos/acme/web/issues/7/comments"
            ));
            assert!(!m(
                "/repos/acme/*/issues/*/comments",
                "/repos/acme/web/x/issues/7/comments"
            ));
            assert!(m("/repos/**", "/repos/a/b/c"));
            assert!(m("/repos/**", "/repos"));
            assert!(m("/**/comments", "/a/b/comments"));
            assert!(!m("/repos/*", "/repos"));
            assert!(m("/v1/refunds/", "/v1/refunds"));
            assert!(m("/v1/files/file-*", "/v1/files/file-abc"));
            assert!(!m("/v1/files/file-*", "/v1/files/other"));
            assert!(m("/", "/"));
            assert!(!m("/", "/x"));
        }

        #[test]
        fn literals_are_case_sensitive() {
            assert!(!m("/v1/refunds", "/V1/Refunds"));
        }

        #[test]
        fn bad_globs_are_named() {
            assert!(Glob::parse("v1").is_err());
            assert!(Glob::parse("/a/**b").is_err());
            assert!(Glob::parse("/a//b").is_err());
            assert!(Glob::parse("/a/../b").is_err());
        }
    }
}
