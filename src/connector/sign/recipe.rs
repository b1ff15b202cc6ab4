//! User-defined signing recipes (SPEC §4.2 `sign:`): HMAC over a templated message, or AWS SigV4.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::{HeaderName, HeaderValue};
use ring::hmac;

use super::sigv4::{self, SigV4Key};
use super::{required, unix_millis, unix_secs, SignError, SignInput, Signed};
use crate::config::RecipeSpec;
use crate::connector::{SpecError, Template};
use crate::credentials::Credentials;

/// Request values every template may use, besides the credential fields.
const REQUEST_VALUES: [&str; 7] = [
    "timestamp",
    "timestamp_ms",
    "method",
    "path",
    "query",
    "body",
    "host",
];

/// A recipe checked and parsed once at load. Holds templates, never values.
#[derive(Debug, Clone)]
pub(crate) struct Recipe {
    kind: Kind,
    headers: Vec<(HeaderName, Template)>,
}

#[derive(Debug, Clone)]
enum Kind {
    Hmac {
        algorithm: hmac::Algorithm,
        secret: Template,
        message: Template,
        base64: bool,
    },
    SigV4 {
        region: String,
        service: String,
    },
}

fn err(key: &str, msg: impl std::fmt::Display) -> SpecError {
    SpecError::at(format!("sign.{key}"), msg)
}

/// Checks `spec` against the connector's credential `fields`; an error
/// names its key, like the rest of the user-connector loader.
pub(crate) fn build(spec: &RecipeSpec, fields: &[&str]) -> Result<Recipe, SpecError> {
    if let Some(clash) = fields
        .iter()
        .find(|f| REQUEST_VALUES.contains(f) || **f == "signature")
    {
        return Err(SpecError::at(
            "fields",
            format!("credential field {clash:?} has the name of a signing placeholder; rename it"),
        ));
    }
    let mut known: Vec<&str> = fields.to_vec();
    known.extend(REQUEST_VALUES);
    let template = |key: &str, text: &str, known: &[&str]| {
        Template::parse(text, known).map_err(|e| err(key, e))
    };
    let kind = match spec.algorithm.as_str() {
        "hmac-sha256" | "hmac-sha512" => {
            let algorithm = if spec.algorithm == "hmac-sha256" {
                hmac::HMAC_SHA256
            } else {
                hmac::HMAC_SHA512
            };
            for (key, set) in [("region", &spec.region), ("service", &spec.service)] {
                if set.is_some() {
                    return Err(err(key, "only used by algorithm aws-sigv4"));
                }
            }
            let secret = spec
                .secret
                .as_deref()
                .ok_or_else(|| err("secret", "required, e.g. \"{api_secret}\""))?;
            let message = spec.message.as_deref().ok_or_else(|| {
                err(
                    "message",
                    "required, e.g. \"{timestamp}{method}{path}{body}\"",
                )
            })?;
            let base64 = match spec.encoding.as_deref() {
                None | Some("hex") => false,
                Some("base64") => true,
                Some(other) => {
                    return Err(err("encoding", format!("{other:?} is not hex or base64")))
                }
            };
            if !spec.headers.values().any(|t| t.contains("{signature}")) {
                return Err(err("headers", "no header uses {signature}"));
            }
            Kind::Hmac {
                algorithm,
                secret: template("secret", secret, &known)?,
                message: template("message", message, &known)?,
                base64,
            }
        }
        "aws-sigv4" => {
            for (key, set) in [
                ("secret", &spec.secret),
                ("message", &spec.message),
                ("encoding", &spec.encoding),
            ] {
                if set.is_some() {
                    return Err(err(key, "not used by aws-sigv4 (the scheme fixes it)"));
                }
            }
            for needed in ["access_key_id", "secret_access_key"] {
                if !fields.contains(&needed) {
                    return Err(SpecError::at(
                        "fields",
                        "aws-sigv4 needs credential fields access_key_id and secret_access_key (and optionally session_token)",
                    ));
                }
            }
            Kind::SigV4 {
                region: scope_part(spec.region.as_deref(), "region", "us-east-1")?,
                service: scope_part(spec.service.as_deref(), "service", "s3")?,
            }
        }
        other => {
            return Err(err(
                "algorithm",
                format!("{other:?} is not hmac-sha256, hmac-sha512 or aws-sigv4"),
            ))
        }
    };
    let mut header_known = known.clone();
    if matches!(kind, Kind::Hmac { .. }) {
        header_known.push("signature");
    }
    let mut headers = Vec::new();
    for (name, text) in &spec.headers {
        let key = format!("headers.{name}");
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| err(&key, format!("{name:?} is not a valid header name")))?;
        headers.push((header, template(&key, text, &header_known)?));
    }
    Ok(Recipe { kind, headers })
}

/// A region or service name: it goes into the credential scope verbatim.
fn scope_part(value: Option<&str>, key: &str, example: &str) -> Result<String, SpecError> {
    let value =
        value.ok_or_else(|| err(key, format!("required for aws-sigv4, e.g. {example:?}")))?;
    if value.is_empty()
        || !value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(err(
            key,
            format!("{value:?} is not an AWS {key} name (lowercase letters, digits, '-')"),
        ));
    }
    Ok(value.to_owned())
}

impl Recipe {
    /// Whether signing reads the request body (the proxy must buffer it).
    pub(crate) fn needs_body(&self) -> bool {
        match &self.kind {
            Kind::SigV4 { .. } => true,
            Kind::Hmac {
                message, secret, ..
            } => message
                .fields()
                .chain(secret.fields())
                .chain(self.headers.iter().flat_map(|(_, t)| t.fields()))
                .any(|f| f == "body"),
        }
    }

    /// Every header this recipe sets: the proxy strips the agent's copies first.
    pub(crate) fn header_names(&self) -> Vec<HeaderName> {
        let mut names: Vec<HeaderName> = self.headers.iter().map(|(n, _)| n.clone()).collect();
        if matches!(self.kind, Kind::SigV4 { .. }) {
            for n in [
                "authorization",
                "x-amz-date",
                "x-amz-content-sha256",
                "x-amz-security-token",
            ] {
                names.push(HeaderName::from_static(n));
            }
        }
        names
    }

    pub(crate) fn sign(&self, creds: &Credentials, input: &SignInput) -> Result<Signed, SignError> {
        let timestamp = unix_secs(input.now)?.to_string();
        let timestamp_ms = unix_millis(input.now)?.to_string();
        let body = std::str::from_utf8(input.body).ok();
        // One lookup for every template; `signature` only exists after the MAC.
        let value = |name: &str| match name {
            "timestamp" => Some(timestamp.as_str()),
            "timestamp_ms" => Some(timestamp_ms.as_str()),
            "method" => Some(input.method),
            "path" => Some(input.path),
            "query" => Some(input.query),
            "host" => Some(input.host),
            "body" => body,
            field => creds.get(field),
        };
        let missing = |name: &str| match name {
            "body" => SignError::BodyNotUtf8,
            other => SignError::MissingField(other.to_owned()),
        };
        let (mut out, signature) = match &self.kind {
            Kind::Hmac {
                algorithm,
                secret,
                message,
                base64,
            } => {
                let secret = secret.render_with(value).map_err(missing)?;
                let message = message.render_with(value).map_err(missing)?;
                let key = hmac::Key::new(*algorithm, secret.as_bytes());
                let tag = hmac::sign(&key, message.as_bytes());
                let signature = if *base64 {
                    STANDARD.encode(tag.as_ref())
                } else {
                    super::hex(tag.as_ref())
                };
                (Vec::new(), Some(signature))
            }
            Kind::SigV4 { region, service } => {
                let key = SigV4Key {
                    access_key_id: required(creds, "access_key_id")?,
                    secret_access_key: required(creds, "secret_access_key")?,
                    session_token: creds.get("session_token").filter(|t| !t.is_empty()),
                    region,
                    service,
                };
                (sigv4::sign(&key, input)?, None)
            }
        };
        for (name, template) in &self.headers {
            let rendered = template
                .render_with(|f| match f {
                    "signature" => signature.as_deref(),
                    other => value(other),
                })
                .map_err(missing)?;
            let mut v = HeaderValue::from_str(&rendered)
                .map_err(|_| SignError::BadHeaderValue(name.to_string()))?;
            v.set_sensitive(true);
            out.push((name.clone(), v));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    const FIELDS: &[&str] = &["api_key", "api_secret"];

    /// The SPEC §4.2 example recipe.
    const SPEC_YAML: &str = r#"
algorithm: hmac-sha256
secret: "{api_secret}"
message: "{timestamp}{method}{path}{body}"
encoding: hex
headers: { X-Key: "{api_key}", X-Sign: "{signature}", X-Ts: "{timestamp}" }
"#;

    fn spec(yaml: &str) -> RecipeSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn build_err(yaml: &str, fields: &[&str]) -> (String, String) {
        let e = build(&spec(yaml), fields).unwrap_err();
        (e.key, e.message)
    }

    fn creds() -> Credentials {
        Credentials::from_pairs([
            ("api_key", "KEY"),
            ("api_secret", "M4009eFnOoPwhNoMwJlsAHgIgleGVFPl"),
        ])
    }

    fn run(
        recipe: &Recipe,
        creds: &Credentials,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<Signed, SignError> {
        let headers = http::HeaderMap::new();
        let input = SignInput {
            method,
            host: "api.signed.example",
            path,
            query: "a=1",
            headers: &headers,
            body,
            now: UNIX_EPOCH + Duration::from_millis(1_667_500_462_123),
        };
        recipe.sign(creds, &input)
    }

    fn get<'a>(s: &'a Signed, name: &str) -> &'a str {
        s.iter()
            .find(|(k, _)| k == name)
            .unwrap()
            .1
            .to_str()
            .unwrap()
    }

    mod build {
        use super::*;

        #[test]
        fn spec_example_builds() {
            let r = build(&spec(SPEC_YAML), FIELDS).unwrap();
            assert!(r.needs_body());
            assert_eq!(r.header_names().len(), 3);
        }

        #[test]
        fn errors_name_the_key() {
            let cases = [
                ("algorithm: hmac-md5\n", "sign.algorithm"),
                ("algorithm: hmac-sha256\nsecret: '{api_secret}'\nmessage: '{nonce}'\nheaders: {X-S: '{signature}'}\n", "sign.message"),
                ("algorithm: hmac-sha256\nsecret: '{api_secret}'\nmessage: '{signature}'\nheaders: {X-S: '{signature}'}\n", "sign.message"),
                ("algorithm: hmac-sha256\nmessage: '{path}'\nheaders: {X-S: '{signature}'}\n", "sign.secret"),
                ("algorithm: hmac-sha256\nsecret: '{api_secret}'\nmessage: '{path}'\nencoding: base32\nheaders: {X-S: '{signature}'}\n", "sign.encoding"),
                ("algorithm: hmac-sha256\nsecret: '{api_secret}'\nmessage: '{path}'\nheaders: {X-S: '{api_key}'}\n", "sign.headers"),
                ("algorithm: hmac-sha256\nsecret: '{api_secret}'\nmessage: '{path}'\nheaders: {'X S': '{signature}'}\n", "sign.headers.X S"),
                ("algorithm: hmac-sha256\nsecret: '{api_secret}'\nmessage: '{path}'\nregion: us-east-1\nheaders: {X-S: '{signature}'}\n", "sign.region"),
            ];
            for (yaml, key) in cases {
                assert_eq!(build_err(yaml, FIELDS).0, key, "{yaml}");
            }
            let e = build_err("algorithm: hmac-sha256\nsecret: '{api_secret}'\nmessage: '{nonce}'\nheaders: {X-S: '{signature}'}\n", FIELDS);
            assert!(e.1.contains("unknown placeholder {nonce}"), "{}", e.1);
        }

        #[test]
        fn unknown_yaml_keys_and_field_clashes_are_refused() {
            assert!(
                serde_yaml::from_str::<RecipeSpec>("algorithm: hmac-sha256\nsalt: x\n").is_err()
            );
            assert_eq!(
                build_err(SPEC_YAML, &["api_key", "api_secret", "timestamp"]).0,
                "fields"
            );
        }

        #[test]
        fn sigv4_needs_scope_and_aws_fields_only() {
            let aws = &["access_key_id", "secret_access_key", "session_token"];
            let ok = "algorithm: aws-sigv4\nregion: eu-west-1\nservice: execute-api\n";
            let r = build(&spec(ok), aws).unwrap();
            assert!(r.needs_body());
            assert!(r
                .header_names()
                .contains(&HeaderName::from_static("x-amz-security-token")));
            assert_eq!(
                build_err("algorithm: aws-sigv4\nservice: s3\n", aws).0,
                "sign.region"
            );
            assert_eq!(
                build_err("algorithm: aws-sigv4\nregion: 'EU 1'\nservice: s3\n", aws).0,
                "sign.region"
            );
            assert_eq!(
                build_err(&format!("{ok}message: '{{path}}'\n"), aws).0,
                "sign.message"
            );
            assert_eq!(build_err(ok, FIELDS).0, "fields");
            let sig_header = format!("{ok}headers: {{X-S: '{{signature}}'}}\n");
            assert_eq!(build_err(&sig_header, aws).0, "sign.headers.X-S");
        }
    }

    mod needs_body {
        use super::*;

        #[test]
        fn only_when_a_template_reads_body() {
            let yaml = "algorithm: hmac-sha256\nsecret: '{api_secret}'\nmessage: '{timestamp}{path}'\nheaders: {X-S: '{signature}'}\n";
            assert!(!build(&spec(yaml), FIELDS).unwrap().needs_body());
        }
    }

    mod sign {
        use super::*;

        #[test]
        fn spec_example_reproduces_the_coinbase_legacy_vectors() {
            let r = build(&spec(SPEC_YAML), FIELDS).unwrap();
            let s = run(&r, &creds(), "GET", "/api/v3/brokerage/accounts", b"").unwrap();
            assert_eq!(get(&s, "x-key"), "KEY");
            assert_eq!(get(&s, "x-ts"), "1667500462");
            assert_eq!(
                get(&s, "x-sign"),
                "240bfe4ba26bcbe0d5e54efa1a3a5e21e565aabee8b9407ef5565f1d81cf5178"
            );
            assert!(s.iter().all(|(_, v)| v.is_sensitive()));
            let body = br#"{"product_id":"BTC-USD"}"#;
            let s = run(&r, &creds(), "POST", "/api/v3/brokerage/orders", body).unwrap();
            assert_eq!(
                get(&s, "x-sign"),
                "cdc8b1b079fe55ed0c55de1cc430ef977a36808b19f7d3bd39b22c8185c35d63"
            );
        }

        #[test]
        fn sha512_base64_matches_the_hmac_crate() {
            use ::hmac::{Hmac, Mac};
            let yaml = "algorithm: hmac-sha512\nsecret: 'k-{api_secret}'\nmessage: '{timestamp_ms}|{method}|{host}|{path}?{query}'\nencoding: base64\nheaders: {Authorization: 'HMAC {api_key}:{signature}'}\n";
            let r = build(&spec(yaml), FIELDS).unwrap();
            let s = run(&r, &creds(), "GET", "/v1/x", b"").unwrap();
            let mut mac =
                Hmac::<sha2::Sha512>::new_from_slice(b"k-M4009eFnOoPwhNoMwJlsAHgIgleGVFPl")
                    .unwrap();
            mac.update(b"1667500462123|GET|api.signed.example|/v1/x?a=1");
            let expected = format!("HMAC KEY:{}", STANDARD.encode(mac.finalize().into_bytes()));
            assert_eq!(get(&s, "authorization"), expected);
        }

        #[test]
        fn non_utf8_body_fails_only_when_signed() {
            let r = build(&spec(SPEC_YAML), FIELDS).unwrap();
            let e = run(&r, &creds(), "POST", "/p", &[0xff, 0xfe]).unwrap_err();
            assert!(matches!(e, SignError::BodyNotUtf8));
            let yaml = "algorithm: hmac-sha256\nsecret: '{api_secret}'\nmessage: '{path}'\nheaders: {X-S: '{signature}'}\n";
            let r = build(&spec(yaml), FIELDS).unwrap();
            assert!(run(&r, &creds(), "POST", "/p", &[0xff]).is_ok());
        }

        #[test]
        fn missing_credential_is_named_without_values() {
            let r = build(&spec(SPEC_YAML), FIELDS).unwrap();
            let only_key = Credentials::from_pairs([("api_key", "KEY")]);
            let e = run(&r, &only_key, "GET", "/", b"").unwrap_err();
            assert!(matches!(e, SignError::MissingField(ref f) if f == "api_secret"));
            assert!(!format!("{r:?}").contains("M4009"));
        }

        #[test]
        fn sigv4_recipe_matches_the_signer_and_adds_headers() {
            let aws = &["access_key_id", "secret_access_key"];
            let yaml = "algorithm: aws-sigv4\nregion: us-east-1\nservice: iam\nheaders: {X-Caller: 'clavis {timestamp}'}\n";
            let r = build(&spec(yaml), aws).unwrap();
            let c = Credentials::from_pairs([
                ("access_key_id", "AKIDEXAMPLE"),
                (
                    "secret_access_key",
                    "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                ),
            ]);
            let s = run(&r, &c, "GET", "/", b"").unwrap();
            let key = SigV4Key {
                access_key_id: "AKIDEXAMPLE",
                secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                session_token: None,
                region: "us-east-1",
                service: "iam",
            };
            let headers = http::HeaderMap::new();
            let input = SignInput {
                method: "GET",
                host: "api.signed.example",
                path: "/",
                query: "a=1",
                headers: &headers,
                body: b"",
                now: UNIX_EPOCH + Duration::from_millis(1_667_500_462_123),
            };
            let direct = sigv4::sign(&key, &input).unwrap();
            assert_eq!(get(&s, "authorization"), get(&direct, "authorization"));
            assert_eq!(get(&s, "x-caller"), "clavis 1667500462");
            assert!(run(
                &r,
                &Credentials::from_pairs([("access_key_id", "A")]),
                "GET",
                "/",
                b""
            )
            .is_err());
        }
    }
}
