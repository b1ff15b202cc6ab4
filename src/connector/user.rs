//! User-defined connectors (SPEC §4.2): the YAML shape, and its conversion to
//! a [`Connector`] with every name, host and template checked once at load.

use http::HeaderName;

use std::sync::Arc;

use super::oauth2::OAuth2;
use super::sign::recipe;
use super::{Connector, FieldSpec, Inject, SpecError, Template, TokenSource};
use crate::config::{InjectSpec, UserConnector};
use crate::host::HostPattern;

/// Converts one `connectors[i]` entry; an error names its key within it.
pub(crate) fn build(spec: &UserConnector) -> Result<Connector, SpecError> {
    if spec.name.is_empty()
        || !spec
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(SpecError::at(
            "name",
            format!(
                "{:?} is not a connector name (letters, digits, '-', '_')",
                spec.name
            ),
        ));
    }
    if spec.hosts.is_empty() {
        return Err(SpecError::at("hosts", "at least one host is required"));
    }
    let hosts = spec
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| HostPattern::parse(h).map_err(|m| SpecError::at(format!("hosts[{i}]"), m)))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(auth) = &spec.auth {
        return with_token_source(spec, hosts, OAuth2::build(&auth.oauth2)?);
    }
    if spec.fields.is_empty() {
        return Err(SpecError::at(
            "fields",
            "list the credential fields the templates use",
        ));
    }
    let known: Vec<&str> = spec.fields.iter().map(String::as_str).collect();
    let strip = spec
        .strip
        .iter()
        .enumerate()
        .map(|(i, h)| header_name(h).map_err(|m| SpecError::at(format!("strip[{i}]"), m)))
        .collect::<Result<Vec<_>, _>>()?;
    let inject = match (&spec.inject, &spec.sign) {
        (Some(inject), None) => build_inject(inject, &known)?,
        (None, Some(sign)) => Inject::Recipe(recipe::build(sign, &known)?),
        (Some(_), Some(_)) => {
            return Err(SpecError::at(
                "inject",
                "set either inject or sign, not both",
            ))
        }
        (None, None) => return Err(SpecError::at("inject", "set inject (headers and/or query)")),
    };
    let mut strip = strip;
    // Whatever clavis injects is stripped first, so an agent value never survives.
    let injected: Vec<HeaderName> = match &inject {
        Inject::Headers { headers, .. } => headers.iter().map(|(n, _)| n.clone()).collect(),
        other => other.extra_strip(),
    };
    for name in injected {
        if !strip.contains(&name) {
            strip.push(name);
        }
    }
    Ok(Connector {
        name: spec.name.clone(),
        hosts,
        port: spec.port.unwrap_or(443),
        strip,
        inject,
        defaults: Vec::new(),
        field_sets: vec![spec.fields.iter().map(|f| FieldSpec::any(f)).collect()],
        live_check: None,
        meter: super::meter::Meter::None,
    })
}

/// A connector whose token comes from an OAuth 2.0 endpoint (SPEC §13.1):
/// the grant fixes the credential fields, the token goes in
/// `Authorization: Bearer`, so `inject`, `sign` and `fields` stay out.
fn with_token_source(
    spec: &UserConnector,
    hosts: Vec<HostPattern>,
    oauth2: OAuth2,
) -> Result<Connector, SpecError> {
    let set = |key: &str| {
        SpecError::at(
            key,
            "auth.oauth2 injects the token as Authorization: Bearer and its grant names the credential fields: leave inject, sign and fields out",
        )
    };
    if spec.inject.is_some() {
        return Err(set("inject"));
    }
    if spec.sign.is_some() {
        return Err(set("sign"));
    }
    if !spec.fields.is_empty() {
        return Err(set("fields"));
    }
    let mut strip = spec
        .strip
        .iter()
        .enumerate()
        .map(|(i, h)| header_name(h).map_err(|m| SpecError::at(format!("strip[{i}]"), m)))
        .collect::<Result<Vec<_>, _>>()?;
    if !strip.contains(&http::header::AUTHORIZATION) {
        strip.push(http::header::AUTHORIZATION);
    }
    let fields = oauth2.fields();
    Ok(Connector {
        name: spec.name.clone(),
        hosts,
        port: spec.port.unwrap_or(443),
        strip,
        inject: Inject::Token(TokenSource::OAuth2(Arc::new(oauth2))),
        defaults: Vec::new(),
        field_sets: vec![fields],
        live_check: None,
        meter: super::meter::Meter::None,
    })
}

fn build_inject(spec: &InjectSpec, known: &[&str]) -> Result<Inject, SpecError> {
    if spec.headers.is_empty() && spec.query.is_empty() && spec.basic.is_none() {
        return Err(SpecError::at(
            "inject",
            "inject needs headers, query or basic",
        ));
    }
    let mut headers = Vec::new();
    for (name, text) in &spec.headers {
        let key = format!("inject.headers.{name}");
        let header = header_name(name).map_err(|m| SpecError::at(&key, m))?;
        let template = Template::parse(text, known).map_err(|e| SpecError::at(&key, e))?;
        headers.push((header, template));
    }
    let mut query = Vec::new();
    for (name, text) in &spec.query {
        let key = format!("inject.query.{name}");
        let template = Template::parse(text, known).map_err(|e| SpecError::at(&key, e))?;
        query.push((name.clone(), template));
    }
    if let Some(b) = &spec.basic {
        {
            let user = Template::parse(&b.username, known)
                .map_err(|e| SpecError::at("inject.basic.username", e))?;
            let pass = Template::parse(&b.password, known)
                .map_err(|e| SpecError::at("inject.basic.password", e))?;
            if headers
                .iter()
                .any(|(n, _)| n == http::header::AUTHORIZATION)
            {
                return Err(SpecError::at(
                    "inject.basic",
                    "basic sets Authorization; do not set it in inject.headers too",
                ));
            }
            headers.push((http::header::AUTHORIZATION, Template::basic(&user, &pass)));
        }
    }
    Ok(Inject::Headers { headers, query })
}

fn header_name(text: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(text.as_bytes())
        .map_err(|_| format!("{text:?} is not a valid HTTP header name"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::connectors::BasicSpec;

    fn spec() -> UserConnector {
        UserConnector {
            name: "internal-api".into(),
            hosts: vec!["api.internal.example".into(), "*.svc.example".into()],
            strip: vec!["Authorization".into()],
            inject: Some(InjectSpec {
                headers: [("X-Api-Key".to_string(), "{api_key}".to_string())].into(),
                query: Default::default(),
                basic: None,
            }),
            fields: vec!["api_key".into()],
            ..Default::default()
        }
    }

    mod build {
        use super::*;

        #[test]
        fn accepts_the_spec_example() {
            let c = build(&spec()).unwrap();
            assert_eq!(c.hosts.len(), 2);
            assert!(c.strip.contains(&HeaderName::from_static("x-api-key")));
        }

        #[test]
        fn basic_auth_is_injected_and_stripped() {
            let mut s = spec();
            s.fields = vec!["client_id".into(), "client_secret".into()];
            s.inject = Some(InjectSpec {
                basic: Some(BasicSpec {
                    username: "{client_id}".into(),
                    password: "{client_secret}".into(),
                }),
                ..Default::default()
            });
            let c = build(&s).unwrap();
            assert!(c.strip.contains(&http::header::AUTHORIZATION));
            let mut parts = http::Request::builder()
                .uri("https://api.internal.example/")
                .body(())
                .unwrap()
                .into_parts()
                .0;
            let creds = crate::credentials::Credentials::from_pairs([
                ("client_id", "Aladdin"),
                ("client_secret", "open sesame"),
            ]);
            c.inject
                .apply(&mut parts, "api.internal.example", &creds, b"")
                .unwrap();
            assert_eq!(
                parts.headers["authorization"],
                "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
            );
        }

        #[test]
        fn oauth2_fixes_fields_and_injects_a_bearer_token() {
            use crate::config::connectors::AuthSpec;
            use crate::config::{Grant, OAuth2Spec};
            let mut s = spec();
            s.inject = None;
            s.fields = Vec::new();
            s.strip = vec!["X-Goog-Api-Key".into()];
            s.auth = Some(AuthSpec {
                oauth2: OAuth2Spec {
                    token_url: "https://oauth2.example/token".into(),
                    grant: Grant::RefreshToken,
                    scopes: vec!["s".into()],
                    ..Default::default()
                },
            });
            let c = build(&s).unwrap();
            assert!(c.strip.contains(&http::header::AUTHORIZATION));
            assert!(c.strip.contains(&HeaderName::from_static("x-goog-api-key")));
            let fields: Vec<&str> = c.field_sets[0].iter().map(|f| f.name.as_str()).collect();
            assert_eq!(fields, ["client_id", "client_secret", "refresh_token"]);
            assert!(c.reserves("/token"));
            assert!(!c.reserves("/v1/things"));
            s.fields = vec!["api_key".into()];
            assert_eq!(build(&s).unwrap_err().key, "fields");
            s.fields = Vec::new();
            s.auth.as_mut().unwrap().oauth2.token_url = "http://oauth2.example/token".into();
            assert_eq!(build(&s).unwrap_err().key, "auth.oauth2.token_url");
        }

        #[test]
        fn errors_name_the_key() {
            let mut s = spec();
            s.inject
                .as_mut()
                .unwrap()
                .headers
                .insert("X-Other".into(), "{secret}".into());
            let e = build(&s).unwrap_err();
            assert_eq!(e.key, "inject.headers.X-Other");
            assert!(e.message.contains("{secret}"), "{e}");

            let mut s = spec();
            s.hosts.push("*.com".into());
            assert_eq!(build(&s).unwrap_err().key, "hosts[2]");

            let mut s = spec();
            s.strip.push("Bad Header".into());
            assert_eq!(build(&s).unwrap_err().key, "strip[1]");
        }
    }
}
