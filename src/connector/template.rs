//! Credential templates such as `"Bearer {api_key}"`: parsed once at load,
//! rendered into a zeroized buffer per request.

use zeroize::Zeroizing;

use crate::credentials::Credentials;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Field(String),
    /// `base64(username:password)`, for HTTP Basic auth.
    Basic(Box<Template>, Box<Template>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum TemplateError {
    #[error("unclosed \"{{\" in template")]
    Unclosed,
    #[error("empty placeholder \"{{}}\" in template")]
    Empty,
    #[error("unknown placeholder {{{name}}}; known: {known}")]
    Unknown { name: String, known: String },
}

impl Template {
    /// Parses `text`, accepting only placeholders named in `known`.
    /// `{{` and `}}` are literal braces.
    pub(crate) fn parse(text: &str, known: &[&str]) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(TemplateError::Unclosed),
                        }
                    }
                    if name.is_empty() {
                        return Err(TemplateError::Empty);
                    }
                    if !known.contains(&name.as_str()) {
                        return Err(TemplateError::Unknown {
                            name,
                            known: known.join(", "),
                        });
                    }
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Field(name));
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Template { parts })
    }

    /// `prefix` followed by one field: the shape of every built-in header.
    pub(crate) fn prefixed(prefix: &str, field: &str) -> Template {
        let mut parts = Vec::with_capacity(2);
        if !prefix.is_empty() {
            parts.push(Part::Lit(prefix.to_owned()));
        }
        parts.push(Part::Field(field.to_owned()));
        Template { parts }
    }

    /// Text with no placeholder.
    pub(crate) fn literal(text: &str) -> Template {
        Template {
            parts: vec![Part::Lit(text.to_owned())],
        }
    }

    /// `Basic base64(<user>:<pass>)` from two templates.
    pub(crate) fn basic(user: &Template, pass: &Template) -> Template {
        Template {
            parts: vec![
                Part::Lit("Basic ".into()),
                Part::Basic(Box::new(user.clone()), Box::new(pass.clone())),
            ],
        }
    }

    /// The credential fields this template reads.
    pub(crate) fn fields(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        Box::new(
            self.parts
                .iter()
                .flat_map(|p| -> Box<dyn Iterator<Item = &str> + '_> {
                    match p {
                        Part::Field(f) => Box::new(std::iter::once(f.as_str())),
                        Part::Lit(_) => Box::new(std::iter::empty()),
                        Part::Basic(u, w) => Box::new(u.fields().chain(w.fields())),
                    }
                }),
        )
    }

    /// Renders with `lookup` supplying each placeholder; `None` names the
    /// missing field.
    pub(crate) fn render_with<'a>(
        &'a self,
        lookup: impl Fn(&str) -> Option<&'a str> + Copy,
    ) -> Result<Zeroizing<String>, &'a str> {
        let mut out = Zeroizing::new(String::with_capacity(64));
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Field(f) => out.push_str(lookup(f).ok_or(f.as_str())?),
                Part::Basic(user, pass) => {
                    use base64::Engine;
                    let mut pair = user.render_with(lookup)?;
                    pair.push(':');
                    pair.push_str(&pass.render_with(lookup)?);
                    let encoded = Zeroizing::new(
                        base64::engine::general_purpose::STANDARD.encode(pair.as_bytes()),
                    );
                    out.push_str(&encoded);
                }
            }
        }
        Ok(out)
    }

    /// Renders from a service's opened credentials.
    pub(crate) fn render<'a>(
        &'a self,
        creds: &'a Credentials,
    ) -> Result<Zeroizing<String>, &'a str> {
        self.render_with(|f| creds.get(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod parse {
        use super::*;

        #[test]
        fn splits_literals_and_fields() {
            let t = Template::parse("Bearer {api_key}", &["api_key"]).unwrap();
            let out = t
                .render_with(|f| (f == "api_key").then_some("sk-1"))
                .unwrap();
            assert_eq!(out.as_str(), "Bearer sk-1");
        }

        #[test]
        fn unknown_placeholder_is_named() {
            let e = Template::parse("{api_kye}", &["api_key"]).unwrap_err();
            assert_eq!(
                e.to_string(),
                "unknown placeholder {api_kye}; known: api_key"
            );
        }

        #[test]
        fn basic_encodes_user_and_password() {
            let u = Template::parse("{id}", &["id", "secret"]).unwrap();
            let p = Template::parse("{secret}", &["id", "secret"]).unwrap();
            let t = Template::basic(&u, &p);
            let out = t
                .render_with(|f| match f {
                    "id" => Some("Aladdin"),
                    _ => Some("open sesame"),
                })
                .unwrap();
            assert_eq!(out.as_str(), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
            assert_eq!(t.fields().collect::<Vec<_>>(), vec!["id", "secret"]);
        }

        #[test]
        fn braces_escape() {
            let t = Template::parse("{{x}}", &[]).unwrap();
            assert_eq!(t.render_with(|_| None).unwrap().as_str(), "{x}");
        }

        #[test]
        fn unclosed_and_empty_are_errors() {
            assert_eq!(Template::parse("{a", &["a"]), Err(TemplateError::Unclosed));
            assert_eq!(Template::parse("{}", &["a"]), Err(TemplateError::Empty));
        }
    }
}
