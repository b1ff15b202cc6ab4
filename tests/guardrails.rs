//! The guardrails (SPEC §9–§11) through the real proxy path: requests go
//! through a CONNECT tunnel and clavis's MITM as an agent's would, and the
//! fake upstream says what reached it. Policies (normalization attacks,
//! form and JSON bodies, audit mode, readonly, agent × service), config
//! errors at `Settings::from_yaml`, rate limits, request and spend budgets,
//! reservations of requests that got no answer, and budget use kept across a
//! restart of the real binary.

// Helpers here are not `#[test]` functions, so clippy.toml's
// allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use support::*;

const ADMIN: &str = "admin-token-guardrails-0123456789";
const CODEX: (&str, &str) = ("codex", "codex-token");
const NARROW: (&str, &str) = ("narrow", "narrow-token");

/// `standard_yaml()` with an admin token and `extra` (policies, budgets) in
/// front, `service_extra` appended inside the named services' flow maps.
fn config(extra: &str, service_extra: &[(&str, &str)]) -> String {
    let mut yaml = format!(
        "admin: {{ token: \"{ADMIN}\" }}\n{extra}\n{}",
        standard_yaml()
    );
    for (service, more) in service_extra {
        let marker = format!("{{ name: {service}, ");
        let line = yaml
            .lines()
            .find(|l| l.contains(&marker))
            .unwrap_or_else(|| panic!("no service {service}"))
            .to_owned();
        let patched = format!(
            "{}, {more} }}",
            line.trim_end().trim_end_matches('}').trim_end()
        );
        yaml = yaml.replace(&line, &patched);
    }
    yaml
}

async fn start(yaml: &str) -> (TestCa, Upstream, Clavis) {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, ALL_HOSTS).await;
    let clavis = Clavis::builder(yaml).start(Some(&up), Some(&ca)).await;
    (ca, up, clavis)
}

/// A clavis answer as an agent gets it.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    text: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// clavis's own refusal of `kind` with `status` (SPEC §9); its detail.
    fn problem(&self, status: u16, kind: &str) -> String {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{self:?}"
        );
        assert_eq!(self.header("clavis-error"), Some(kind), "{self:?}");
        let doc = self.json();
        assert_eq!(doc["type"], format!("urn:clavis:problem:{kind}"), "{doc}");
        assert_eq!(doc["status"], status, "{doc}");
        assert_eq!(doc["error"]["message"], doc["detail"], "{doc}");
        assert_eq!(doc["message"], doc["detail"], "{doc}");
        let detail = doc["detail"].as_str().unwrap().to_owned();
        for secret in [
            REAL_OPENAI,
            REAL_ANTHROPIC,
            REAL_GITHUB,
            REAL_STRIPE,
            REAL_BRAVE,
        ] {
            assert!(!self.text.contains(secret), "a secret in {self:?}");
        }
        detail
    }
}

async fn answer(r: reqwest::Response) -> Answer {
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    Answer {
        status,
        headers,
        text: r.text().await.unwrap(),
    }
}

/// `METHOD https://host/path` through the proxy as `agent`, with a body of
/// `content_type` when given.
async fn send(
    clavis: &Clavis,
    agent: (&str, &str),
    method: &str,
    url: &str,
    body: Option<(&str, &str)>,
) -> Answer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = clavis
        .client(Some(agent))
        .request(method, url)
        .header("authorization", "Bearer placeholder");
    if let Some((content_type, body)) = body {
        req = req
            .header("content-type", content_type)
            .body(body.to_owned());
    }
    answer(req.send().await.unwrap()).await
}

/// One raw HTTP/1.1 request line as written, inside a tunnel to `host`, as
/// `agent`: paths and methods that HTTP client libraries would normalize.
async fn raw(clavis: &Clavis, agent: (&str, &str), host: &str, request_line: &str) -> Answer {
    let creds =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", agent.0, agent.1));
    let (status, tcp) = connect_raw(
        clavis.proxy,
        &format!("{host}:443"),
        &format!("Proxy-Authorization: Basic {creds}\r\n"),
    )
    .await;
    assert_eq!(status, 200, "CONNECT {host}");
    let mut tls = tls_over(tcp, host, &clavis.ca_pem(), &[b"http/1.1"])
        .await
        .unwrap();
    let text = raw_exchange(
        &mut tls,
        &format!(
            "{request_line} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer placeholder\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer {
        status: status_of(&text),
        headers,
        text: body.to_owned(),
    }
}

async fn admin_json(clavis: &Clavis, path: &str) -> Value {
    get_json(
        &admin_client(),
        format!("http://{}{path}", clavis.admin),
        ADMIN,
    )
    .await
}

/// Budget `name` once nothing is reserved: settlement runs when the answer
/// has been relayed, so it is polled, with a deadline.
async fn settled(clavis: &Clavis, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = admin_json(clavis, "/v1/budgets").await;
        let b = all
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name)
            .unwrap_or_else(|| panic!("no budget {name} in {all}"))
            .clone();
        if b["reserved"] == 0.0 {
            return b;
        }
        assert!(
            Instant::now() < deadline,
            "budget {name} still reserved: {b}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const TRIAGE: &str = r#"
policies:
  - name: github-triage
    default: deny
    rules:
      - { name: reads,    allow: { methods: [GET, HEAD] } }
      - { name: comments, allow: { methods: [POST], path: "/repos/acme/*/issues/*/comments" } }
      - { name: deletes,  deny:  { methods: [DELETE] } }
"#;

mod policy {
    use super::*;

    /// SPEC §10: a path that normalizes differently from what it spells is
    /// refused (400) where a policy with path rules applies, before any
    /// rule is read; so is a method not in capitals. Nothing is sent.
    #[tokio::test]
    async fn normalization_attacks_are_400_where_a_path_rule_applies() {
        let yaml = config(TRIAGE, &[("my-github", "policy: github-triage")]);
        let (_ca, up, clavis) = start(&yaml).await;
        for (line, why) in [
            ("POST /repos/acme/web/issues/3/../../../../x", "dot segment"),
            ("POST /repos/acme/web/issues/3/comments/..", "dot segment"),
            (
                "POST /repos/acme/web/issues/3/%2e%2e/comments",
                "dot segment",
            ),
            ("POST /repos/acme/web%2Fissues/3/comments", "encoded '/'"),
            ("POST /repos/acme/web%2fissues/3/comments", "encoded '/'"),
            (
                "POST /repos/acme%5Cweb/issues/3/comments",
                "encoded '/' or '\\'",
            ),
            ("POST /repos//acme/web/issues/3/comments", "empty segment"),
            (
                "POST /repos/acme/web/issues/3/%252e%252e",
                "double encoding",
            ),
            ("delete /repos/acme/web", "capitals"),
            ("Delete /repos/acme/web", "capitals"),
        ] {
            let a = raw(&clavis, CODEX, "api.github.com", line).await;
            let detail = a.problem(400, "bad-request");
            assert!(detail.contains(why), "{line}: {detail}");
        }
        assert!(up.seen().is_empty(), "sent: {:?}", up.seen());

        // What it spells, it is: an escaped ordinary character and a
        // trailing slash meet the rule like their plain form.
        for line in [
            "POST /repos/%61cme/web/issues/3/comments",
            "POST /repos/acme/web/issues/3/comments/",
        ] {
            let a = raw(&clavis, CODEX, "api.github.com", line).await;
            assert_eq!(a.status, 200, "{line}: {a:?}");
        }
        assert_eq!(up.seen().len(), 2);
    }

    /// Where no applicable policy has a path rule, the path cannot fool a
    /// rule and is sent as spelled (SPEC §10 refuses only under path rules).
    #[tokio::test]
    async fn without_a_path_rule_the_path_is_not_judged() {
        let yaml = config("", &[("my-brave", "readonly: true")]);
        let (_ca, up, clavis) = start(&yaml).await;
        let a = raw(&clavis, CODEX, "api.search.brave.com", "GET /res//v1/web").await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(up.last().path, "/res//v1/web");
        // A method not in capitals is still refused under any policy: a
        // method rule would not know it.
        let a = raw(&clavis, CODEX, "api.search.brave.com", "get /res/v1/web").await;
        a.problem(400, "bad-request");
        assert_eq!(up.seen().len(), 1);
    }

    /// The triage policy of SPEC §10: the denied rule named in the detail
    /// with what the policy allows; audited as `denied` with the rule.
    #[tokio::test]
    async fn refusals_name_policy_rule_and_what_is_allowed() {
        let yaml = config(TRIAGE, &[("my-github", "policy: github-triage")]);
        let (_ca, up, clavis) = start(&yaml).await;
        let a = send(
            &clavis,
            CODEX,
            "DELETE",
            "https://api.github.com/repos/acme/web",
            None,
        )
        .await;
        let detail = a.problem(403, "policy-denied");
        assert_eq!(
            detail,
            "DELETE /repos/acme/web was refused by policy \"github-triage\", rule \"deletes\". \
             This policy allows: reads (GET, HEAD); comments (POST /repos/acme/*/issues/*/comments)"
        );
        let a = send(
            &clavis,
            CODEX,
            "PATCH",
            "https://api.github.com/repos/acme/web",
            None,
        )
        .await;
        let detail = a.problem(403, "policy-denied");
        assert!(
            detail.contains("no rule matched; its default is deny"),
            "{detail}"
        );
        assert!(up.seen().is_empty());

        let audit = admin_json(&clavis, "/v1/audit?limit=10").await;
        let denied: Vec<&Value> = audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "denied")
            .collect();
        assert_eq!(denied.len(), 2, "{audit}");
        assert!(denied.iter().any(|e| e["detail"]["note"]
            .as_str()
            .unwrap()
            .contains("rule \"deletes\"")
            && e["detail"]["status"] == 403
            && e["detail"]["method"] == "DELETE"));
        let metrics = admin_client()
            .get(format!("http://{}/metrics", clavis.admin))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("clavis_policy_decisions_total")
                    && l.contains("policy=\"github-triage\"")
                    && l.contains("rule=\"deletes\"")
                    && l.contains("decision=\"deny\"")),
            "{metrics}"
        );
    }

    /// Stripe's form bodies, keys as the API spells them; missing fields,
    /// fields given twice and bodies of another type never pass an allow.
    #[tokio::test]
    async fn form_bodies_decide_as_the_api_reads_them() {
        let policies = r#"
policies:
  - name: stripe-refunds
    default: deny
    rules:
      - { name: reads,  allow:   { methods: [GET] } }
      - { name: small,  allow:   { methods: [POST], path: /v1/refunds, body: { amount: { max: 5000 } } } }
      - { name: large,  approve: { methods: [POST], path: /v1/refunds } }
      - { name: tagged, allow:   { methods: [POST], path: /v1/payment_intents, body: { "metadata[order]": { regex: "[0-9]+" } } } }
"#;
        let yaml = config(policies, &[("my-stripe", "policy: stripe-refunds")]);
        let (_ca, up, clavis) = start(&yaml).await;
        const FORM: &str = "application/x-www-form-urlencoded";
        let refund = |body: &'static str, ct: &'static str| {
            let clavis = &clavis;
            async move {
                send(
                    clavis,
                    CODEX,
                    "POST",
                    "https://api.stripe.com/v1/refunds",
                    Some((ct, body)),
                )
                .await
            }
        };
        assert_eq!(refund("charge=ch_1&amount=4000", FORM).await.status, 200);
        assert_eq!(refund("amount=5000&charge=ch_1", FORM).await.status, 200);
        assert_eq!(up.seen().len(), 2);

        for (body, ct, why) in [
            ("charge=ch_1&amount=5001", FORM, "rule \"large\""),
            // No amount refunds everything: the small rule cannot vouch.
            ("charge=ch_1", FORM, "rule \"large\""),
            // Given twice: the upstream may read either, so `small` cannot
            // vouch for it and `large` decides.
            ("amount=1&amount=900000", FORM, "rule \"large\""),
            ("amount=abc", FORM, "rule \"large\""),
            ("amount=1", "text/plain", "rule \"large\""),
            ("amount=1", "application/octet-stream", "rule \"large\""),
        ] {
            let a = refund(body, ct).await;
            let detail = a.problem(403, "policy-denied");
            assert!(detail.contains(why), "{body} ({ct}): {detail}");
            assert!(detail.contains("approvals are not configured"), "{detail}");
        }
        assert_eq!(up.seen().len(), 2, "a refused refund was sent");

        let intent = |body: &'static str| {
            let clavis = &clavis;
            async move {
                send(
                    clavis,
                    CODEX,
                    "POST",
                    "https://api.stripe.com/v1/payment_intents",
                    Some((FORM, body)),
                )
                .await
            }
        };
        assert_eq!(
            intent("amount=100&metadata%5Border%5D=42").await.status,
            200
        );
        intent("amount=100&metadata%5Border%5D=x42")
            .await
            .problem(403, "policy-denied");
        intent("amount=100&metadata[other]=42")
            .await
            .problem(403, "policy-denied");
        assert_eq!(up.seen().len(), 3);
    }

    /// JSON bodies by dotted path; a body that is not JSON, repeats a key
    /// or lacks the field never passes an allow rule.
    #[tokio::test]
    async fn json_bodies_fail_closed() {
        let policies = r#"
policies:
  - name: cheap-models
    default: deny
    rules:
      - { name: reads, allow: { methods: [GET] } }
      - name: small
        allow:
          methods: [POST]
          path: /v1/chat/completions
          body: { model: { in: [gpt-4o-mini] }, "messages.*.role": { in: [user, system] } }
"#;
        let yaml = config(policies, &[("my-openai", "policy: cheap-models")]);
        let (_ca, up, clavis) = start(&yaml).await;
        const JSON: &str = "application/json";
        let chat = |body: &'static str, ct: &'static str| {
            let clavis = &clavis;
            async move {
                send(
                    clavis,
                    CODEX,
                    "POST",
                    "https://api.openai.com/v1/chat/completions",
                    Some((ct, body)),
                )
                .await
            }
        };
        let ok = r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"x"},{"role":"user","content":"hi"}]}"#;
        assert_eq!(chat(ok, JSON).await.status, 200);
        assert_eq!(
            chat(ok, "application/json; charset=utf-8").await.status,
            200
        );
        for (body, ct) in [
            (
                r#"{"model":"gpt-5","messages":[{"role":"user","content":"hi"}]}"#,
                JSON,
            ),
            (r#"{"messages":[{"role":"user","content":"hi"}]}"#, JSON),
            (r#"{"model":"gpt-4o-mini","messages":[]}"#, JSON),
            (
                r#"{"model":"gpt-4o-mini","messages":[{"role":"assistant","content":"x"}]}"#,
                JSON,
            ),
            (
                r#"{"model":"gpt-4o-mini","model":"gpt-5","messages":[{"role":"user","content":"hi"}]}"#,
                JSON,
            ),
            (r#"{"model":"gpt-4o-mini","messages":[{"role":"user""#, JSON),
            (ok, "text/plain"),
        ] {
            chat(body, ct).await.problem(403, "policy-denied");
        }
        assert_eq!(up.seen().len(), 2, "a refused body was sent");
    }

    /// A rule that reads the body buffers it up to `limits.policy_body`;
    /// a larger body is refused (413) and never sent. A GET, which no body
    /// rule may match, is not buffered.
    #[tokio::test]
    async fn a_body_past_policy_body_is_413() {
        let policies = r#"
limits: { policy_body: 64 }
policies:
  - name: small-refunds
    default: allow
    rules:
      - { name: large, deny: { methods: [POST], body: { amount: { min: 5001 } } } }
"#;
        let yaml = config(policies, &[("my-stripe", "policy: small-refunds")]);
        let (_ca, up, clavis) = start(&yaml).await;
        const FORM: &str = "application/x-www-form-urlencoded";
        let url = "https://api.stripe.com/v1/refunds";
        let fits = "charge=ch_1&amount=10";
        assert_eq!(
            send(&clavis, CODEX, "POST", url, Some((FORM, fits)))
                .await
                .status,
            200
        );
        let big = format!(
            "charge=ch_1&amount=10&metadata%5Bnote%5D={}",
            "x".repeat(64)
        );
        let a = send(&clavis, CODEX, "POST", url, Some((FORM, &big))).await;
        let detail = a.problem(413, "payload-too-large");
        assert!(detail.contains("64-byte limit"), "{detail}");
        assert_eq!(up.seen().len(), 1);
        let a = send(&clavis, CODEX, "GET", url, None).await;
        assert_eq!(a.status, 200);
    }

    /// `mode: audit` decides and reports, never blocks: the request is sent
    /// and its credential-use event says it would have been refused.
    #[tokio::test]
    async fn audit_mode_sends_and_notes_would_be_refused() {
        let policies = r#"
policies:
  - name: watch
    mode: audit
    default: deny
    rules:
      - { name: reads, allow: { methods: [GET] } }
"#;
        let yaml = config(policies, &[("my-github", "policy: watch")]);
        let (_ca, up, clavis) = start(&yaml).await;
        let a = send(
            &clavis,
            CODEX,
            "POST",
            "https://api.github.com/repos/acme/web/forks",
            None,
        )
        .await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(up.last().path, "/repos/acme/web/forks");
        let audit = admin_json(&clavis, "/v1/audit?limit=10").await;
        let event = audit
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["detail"]["path"] == "/repos/acme/web/forks")
            .unwrap_or_else(|| panic!("no event: {audit}"));
        assert_eq!(event["action"], "inject", "{event}");
        let note = event["detail"]["note"].as_str().unwrap();
        assert!(note.contains("would be refused"), "{note}");
        assert!(note.contains("policy \"watch\""), "{note}");
        assert!(note.contains("mode: audit"), "{note}");
        assert!(
            !audit
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["action"] == "denied"
                    && e["detail"]["note"]
                        .as_str()
                        .unwrap_or("")
                        .contains("policy")),
            "{audit}"
        );
    }

    /// `readonly: true`: GET, HEAD and OPTIONS; anything else refused.
    #[tokio::test]
    async fn readonly_allows_reads_only() {
        let yaml = config("", &[("my-github", "readonly: true")]);
        let (_ca, up, clavis) = start(&yaml).await;
        for m in ["GET", "HEAD", "OPTIONS"] {
            let a = send(
                &clavis,
                CODEX,
                m,
                "https://api.github.com/repos/acme/web",
                None,
            )
            .await;
            assert_eq!(a.status, 200, "{m}: {a:?}");
        }
        for m in ["POST", "PUT", "PATCH", "DELETE"] {
            let a = send(
                &clavis,
                CODEX,
                m,
                "https://api.github.com/repos/acme/web",
                None,
            )
            .await;
            let detail = a.problem(403, "policy-denied");
            assert!(detail.contains("policy \"readonly\""), "{detail}");
            assert!(detail.contains("reads (GET, HEAD, OPTIONS)"), "{detail}");
        }
        let methods: Vec<String> = up.seen().into_iter().map(|s| s.method).collect();
        assert_eq!(methods, ["GET", "HEAD", "OPTIONS"]);
    }

    /// An agent × service policy applies on top of the service's; the
    /// stricter outcome wins, and another agent sees only the service's.
    #[tokio::test]
    async fn agent_policy_combines_with_the_services() {
        let policies = r#"
policies:
  - name: gh-open
    default: allow
    rules:
      - { name: deletes, deny: { methods: [DELETE] } }
  - name: gh-read
    default: deny
    rules:
      - { name: reads, allow: { methods: [GET] } }
"#;
        let mut yaml = config(policies, &[("my-github", "policy: gh-open")]);
        yaml = yaml.replace(
            "{ name: codex, token: codex-token, services: [\"*\"] }",
            "{ name: codex, token: codex-token, services: [\"*\"], policies: { my-github: gh-read } }",
        );
        let (_ca, up, clavis) = start(&yaml).await;
        let url = "https://api.github.com/repos/acme/web";
        assert_eq!(send(&clavis, CODEX, "GET", url, None).await.status, 200);
        let detail = send(&clavis, CODEX, "POST", url, None)
            .await
            .problem(403, "policy-denied");
        assert!(detail.contains("policy \"gh-read\""), "{detail}");
        send(&clavis, CODEX, "DELETE", url, None)
            .await
            .problem(403, "policy-denied");

        assert_eq!(send(&clavis, NARROW, "POST", url, None).await.status, 200);
        let detail = send(&clavis, NARROW, "DELETE", url, None)
            .await
            .problem(403, "policy-denied");
        assert!(
            detail.contains("policy \"gh-open\", rule \"deletes\""),
            "{detail}"
        );
        let sent: Vec<(String, String)> =
            up.seen().into_iter().map(|s| (s.method, s.path)).collect();
        assert_eq!(
            sent,
            [
                ("GET".into(), "/repos/acme/web".into()),
                ("POST".into(), "/repos/acme/web".into())
            ]
        );
    }
}

mod config_errors {
    use super::*;

    /// The errors of `yaml`, each as (key path, message, line).
    fn errors(yaml: &str) -> Vec<(String, String, Option<usize>)> {
        let env: HashMap<String, String> = HashMap::new();
        match clavis::Settings::from_yaml(yaml, &env) {
            Ok(_) => panic!("accepted:\n{yaml}"),
            Err(e) => {
                e.0.into_iter()
                    .map(|e| (e.path, e.message, e.line))
                    .collect()
            }
        }
    }

    /// The 1-based line of the first line of `yaml` containing `marker`.
    fn line_of(yaml: &str, marker: &str) -> usize {
        yaml.lines()
            .position(|l| l.contains(marker))
            .unwrap_or_else(|| panic!("{marker:?} not in the config"))
            + 1
    }

    fn base(policies: &str, service_extra: &str) -> String {
        format!(
            "{policies}\nservices:\n  - {{ name: gh, connector: github, credentials: {{ api_key: \"{REAL_GITHUB}\" }}{service_extra} }}\nagents:\n  - {{ name: codex, token: codex-token-0123456789, services: [gh] }}\n"
        )
    }

    #[test]
    fn an_unknown_value_matcher_names_key_and_line() {
        let yaml = base(
            "policies:\n  - name: p\n    rules:\n      - name: r\n        allow:\n          methods: [POST]\n          body:\n            amount: { maximum: 5000 }\n",
            ", policy: p",
        );
        let errs = errors(&yaml);
        assert_eq!(errs.len(), 1, "{errs:?}");
        let (path, message, line) = &errs[0];
        assert!(path.starts_with("policies[0]"), "{errs:?}");
        assert!(message.contains("unknown matcher \"maximum\""), "{errs:?}");
        assert_eq!(*line, Some(line_of(&yaml, "maximum")), "{errs:?}");
    }

    #[test]
    fn an_unknown_rule_matcher_names_key_and_line() {
        let yaml = base(
            "policies:\n  - name: p\n    rules:\n      - name: r\n        allow:\n          metods: [GET]\n",
            ", policy: p",
        );
        let errs = errors(&yaml);
        assert_eq!(errs.len(), 1, "{errs:?}");
        let (path, message, line) = &errs[0];
        assert!(path.starts_with("policies[0].rules[0]"), "{errs:?}");
        assert!(message.contains("unknown field `metods`"), "{errs:?}");
        assert_eq!(*line, Some(line_of(&yaml, "metods")), "{errs:?}");
    }

    #[test]
    fn a_policy_nobody_defines_names_key_and_line() {
        let yaml = base("", ", policy: nope");
        let errs = errors(&yaml);
        assert_eq!(
            errs,
            [(
                "services[0].policy".into(),
                "no policy named \"nope\" in policies".into(),
                Some(line_of(&yaml, "policy: nope"))
            )]
        );

        let yaml = base("policies: []", "").replace(
            "services: [gh] }",
            "services: [gh], policies: { gh: nope } }",
        );
        let errs = errors(&yaml);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].0, "agents[0].policies.gh", "{errs:?}");
        assert!(errs[0].1.contains("no policy named \"nope\""), "{errs:?}");
        assert_eq!(errs[0].2, Some(line_of(&yaml, "nope")), "{errs:?}");
    }

    #[test]
    fn a_rule_on_a_host_the_service_does_not_claim_names_key_and_line() {
        let yaml = base(
            "policies:\n  - name: p\n    rules:\n      - { name: elsewhere, allow: { methods: [GET], host: api.openai.com } }\n",
            ", policy: p",
        );
        let errs = errors(&yaml);
        assert_eq!(errs.len(), 1, "{errs:?}");
        let (path, message, line) = &errs[0];
        assert_eq!(path, "services[0].policy", "{errs:?}");
        assert!(
            message.contains("rule \"elsewhere\" names host \"api.openai.com\"")
                && message.contains("does not claim"),
            "{errs:?}"
        );
        assert_eq!(*line, Some(line_of(&yaml, "policy: p")), "{errs:?}");

        // The service's own host is fine.
        let ok = yaml.replace("host: api.openai.com", "host: api.github.com");
        clavis::Settings::from_yaml(&ok, &HashMap::<String, String>::new()).unwrap();
    }

    #[test]
    fn a_body_rule_that_could_match_get_names_key_and_line() {
        for methods in ["", "methods: [GET, POST], "] {
            let yaml = base(
                &format!(
                    "policies:\n  - name: p\n    rules:\n      - {{ name: peek, allow: {{ {methods}body: {{ a: 1 }} }} }}\n"
                ),
                ", policy: p",
            );
            let errs = errors(&yaml);
            assert_eq!(errs.len(), 1, "{errs:?}");
            let (path, message, line) = &errs[0];
            assert_eq!(path, "policies[0]", "{errs:?}");
            assert!(
                message.contains("rule \"peek\" reads the body but could match a GET"),
                "{errs:?}"
            );
            assert_eq!(*line, Some(line_of(&yaml, "- name: p")), "{errs:?}");
        }
    }
}

mod budgets {
    use super::*;

    /// `rate: {requests, per, burst}`: the burst passes, the next is 429
    /// `rate-limited` with `Retry-After` and the RateLimit headers; the
    /// limit is the agent's, not another's.
    #[tokio::test]
    async fn a_rate_limit_lets_the_burst_through_then_429() {
        let budgets = "budgets:\n  - { name: gh-rate, agent: codex, service: my-github, rate: { requests: 1, per: 1m, burst: 3 } }\n";
        let (_ca, up, clavis) = start(&config(budgets, &[])).await;
        let url = "https://api.github.com/user";
        for i in 0..3 {
            assert_eq!(
                send(&clavis, CODEX, "GET", url, None).await.status,
                200,
                "#{i}"
            );
        }
        let a = send(&clavis, CODEX, "GET", url, None).await;
        let detail = a.problem(429, "rate-limited");
        assert!(detail.contains("gh-rate"), "{detail}");
        let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
        assert_eq!(a.header("ratelimit-policy"), Some("\"gh-rate\";q=1;w=60"));
        assert_eq!(
            a.header("ratelimit"),
            Some(format!("\"gh-rate\";r=0;t={retry}").as_str())
        );
        assert_eq!(up.seen().len(), 3);
        // Another agent has no such limit.
        assert_eq!(send(&clavis, NARROW, "GET", url, None).await.status, 200);
        assert_eq!(up.seen().len(), 4);
    }

    /// A `requests` budget refuses the request past its limit before it is
    /// sent: 429 `budget-exceeded`, `Retry-After` until the window's end,
    /// the RateLimit headers, and `GET /v1/budgets` counting what passed.
    #[tokio::test]
    async fn a_requests_budget_refuses_past_its_limit() {
        let budgets = "budgets:\n  - { name: gh-day, service: my-github, window: 1d, limit: { requests: 2 } }\n";
        let (_ca, up, clavis) = start(&config(budgets, &[])).await;
        let url = "https://api.github.com/user";
        assert_eq!(send(&clavis, CODEX, "GET", url, None).await.status, 200);
        assert_eq!(send(&clavis, NARROW, "GET", url, None).await.status, 200);
        let a = send(&clavis, CODEX, "GET", url, None).await;
        let detail = a.problem(429, "budget-exceeded");
        assert!(detail.contains("gh-day"), "{detail}");
        let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
        let to_midnight = 86_400 - unix_now() % 86_400;
        assert!(
            retry.abs_diff(to_midnight) <= 5,
            "Retry-After {retry}, midnight UTC in {to_midnight}"
        );
        assert_eq!(a.header("ratelimit-policy"), Some("\"gh-day\";q=2;w=86400"));
        assert!(
            a.header("ratelimit")
                .unwrap()
                .starts_with("\"gh-day\";r=0;t="),
            "{a:?}"
        );
        assert_eq!(up.seen().len(), 2);
        // Shared by every agent (no `agent:`): codex and narrow both count.
        let b = settled(&clavis, "gh-day").await;
        assert_eq!(b["used"], 2.0, "{b}");
        assert_eq!(b["limit"], 2.0, "{b}");
        assert_eq!(b["window"], "1d", "{b}");
        assert_eq!(b["agent"], Value::Null, "{b}");
    }

    /// A `spend` budget counts Stripe's `amount`; a money-moving request
    /// whose amount cannot be read is refused (422) rather than counted as
    /// nothing; one that does not fit is refused before it is sent.
    #[tokio::test]
    async fn spend_is_counted_and_unmeasurable_spend_refused() {
        let budgets = "budgets:\n  - { name: refunds, agent: codex, service: my-stripe, window: 30d, limit: { spend: 1000 } }\n";
        let (_ca, up, clavis) = start(&config(budgets, &[])).await;
        const FORM: &str = "application/x-www-form-urlencoded";
        let url = "https://api.stripe.com/v1/refunds";
        for body in ["charge=ch_1", "charge=ch_1&amount=1&amount=2", "amount=ten"] {
            let a = send(&clavis, CODEX, "POST", url, Some((FORM, body))).await;
            let detail = a.problem(422, "budget-unmeasurable");
            assert!(detail.contains("refunds"), "{detail}");
        }
        assert!(up.seen().is_empty());
        let a = send(
            &clavis,
            CODEX,
            "POST",
            url,
            Some((FORM, "charge=ch_1&amount=600")),
        )
        .await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(settled(&clavis, "refunds").await["used"], 600.0);
        let a = send(
            &clavis,
            CODEX,
            "POST",
            url,
            Some((FORM, "charge=ch_1&amount=401")),
        )
        .await;
        let detail = a.problem(429, "budget-exceeded");
        assert!(detail.contains("needs up to 401"), "{detail}");
        let a = send(
            &clavis,
            CODEX,
            "POST",
            url,
            Some((FORM, "charge=ch_1&amount=400")),
        )
        .await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(up.seen().len(), 2);
        assert_eq!(settled(&clavis, "refunds").await["used"], 1000.0);
        // Reads move no money and are not counted.
        let a = send(
            &clavis,
            CODEX,
            "GET",
            "https://api.stripe.com/v1/refunds",
            None,
        )
        .await;
        assert_eq!(a.status, 200);
    }

    /// A budget meters what a path means to the upstream, not how it is
    /// spelled: `/v1/chat/%63ompletions` is the chat endpoint to a server
    /// that decodes escapes, so it is counted as one; a path that does not
    /// normalize, or a method not in capitals, is refused (400) where a
    /// budget counts tokens or spend. Otherwise a respelled path would
    /// carry an uncapped call past a token budget.
    #[tokio::test]
    async fn respelled_paths_do_not_escape_a_cost_budget() {
        let budgets = "budgets:\n  - { name: llm, agent: codex, service: my-openai, window: 30d, limit: { tokens: 1000 } }\n  - { name: money, agent: codex, service: my-stripe, window: 30d, limit: { spend: 1000 } }\n  - { name: gh-count, service: my-github, window: 30d, limit: { requests: 10 } }\n";
        let (_ca, up, clavis) = start(&config(budgets, &[])).await;
        let big = r#"{"model":"m","max_tokens":5000,"messages":[{"role":"user","content":"hi"}]}"#;
        for path in [
            "/v1/chat/completions",
            "/v1/chat/%63ompletions",
            "/v1/chat/completions/",
            "/v1/%63hat/completions",
        ] {
            let url = format!("https://api.openai.com{path}");
            let a = send(
                &clavis,
                CODEX,
                "POST",
                &url,
                Some(("application/json", big)),
            )
            .await;
            let detail = a.problem(429, "budget-exceeded");
            assert!(detail.contains("\"llm\""), "{path}: {detail}");
        }
        for line in [
            "POST /v1//chat/completions",
            "POST /v1/chat/./completions",
            "POST /v1/x/../chat/completions",
            "POST /v1/chat%2Fcompletions",
            "POST /v1/chat/%2563ompletions",
            "post /v1/chat/completions",
        ] {
            let a = raw(&clavis, CODEX, "api.openai.com", line).await;
            a.problem(400, "bad-request");
        }
        let a = send(
            &clavis,
            CODEX,
            "POST",
            "https://api.stripe.com/v1/%72efunds",
            Some((
                "application/x-www-form-urlencoded",
                "charge=ch_1&amount=5000",
            )),
        )
        .await;
        a.problem(429, "budget-exceeded");
        assert!(up.seen().is_empty(), "sent: {:?}", up.seen());
        // A budget that counts requests only does not judge the path.
        let a = raw(&clavis, CODEX, "api.github.com", "GET /repos//acme").await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(up.last().path, "/repos//acme");
    }

    /// A call asking for several outputs (`n`) without a cap gets one cap
    /// per output that keeps them all within the budget: what the budget
    /// leaves, divided by `n`. With a cap of its own, it needs `n` × the cap.
    #[tokio::test]
    async fn a_cap_clavis_sets_covers_every_output_of_the_call() {
        let budgets = "budgets:\n  - { name: llm, agent: codex, service: my-openai, window: 30d, limit: { tokens: 1000 } }\n";
        let (_ca, up, clavis) = start(&config(budgets, &[])).await;
        let url = "https://api.openai.com/v1/chat/completions";
        let body = r#"{"model":"m","n":4,"messages":[{"role":"user","content":"hi"}]}"#;
        let a = send(
            &clavis,
            CODEX,
            "POST",
            url,
            Some(("application/json", body)),
        )
        .await;
        assert_eq!(a.status, 200, "{a:?}");
        let sent: Value = serde_json::from_str(a.json()["body"].as_str().unwrap()).unwrap();
        let cap = (1000 - body.len()) / 4;
        assert_eq!(sent["max_completion_tokens"], cap, "{sent}");
        // The echo reports no usage: all that was reserved counts, and it
        // fits the budget.
        let used = settled(&clavis, "llm").await["used"].as_f64().unwrap();
        assert_eq!(used, (body.len() + 4 * cap) as f64);
        assert!(used <= 1000.0);

        let (_ca, up2, clavis) = start(&config(budgets, &[])).await;
        let body = r#"{"model":"m","n":4,"max_tokens":250,"messages":[]}"#;
        let a = send(
            &clavis,
            CODEX,
            "POST",
            url,
            Some(("application/json", body)),
        )
        .await;
        let detail = a.problem(429, "budget-exceeded");
        assert!(
            detail.contains(&format!("needs up to {}", body.len() + 1000)),
            "{detail}"
        );
        assert!(up2.seen().is_empty());
        assert_eq!(up.seen().len(), 1);
    }

    /// A request that went out and got no answer (the upstream timed out)
    /// may have been carried out: its reservation is kept as used. One
    /// that never left (the upstream refused the connection) is released.
    #[tokio::test]
    async fn a_sent_request_without_an_answer_keeps_its_reservation() {
        let budgets = "budgets:\n  - { name: gh-day, service: my-github, window: 30d, limit: { requests: 5 } }\n";
        let ca = TestCa::new();
        let up = Upstream::start(&ca, ALL_HOSTS).await;
        let clavis = Clavis::builder(&config(budgets, &[]))
            .request_timeout("1s")
            .start(Some(&up), Some(&ca))
            .await;
        let a = send(&clavis, CODEX, "GET", "https://api.github.com/slow", None).await;
        a.problem(504, "upstream-timeout");
        assert_eq!(up.last().path, "/slow");
        let b = settled(&clavis, "gh-day").await;
        assert_eq!(b["used"], 1.0, "a timed-out request was released: {b}");

        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let refused = Clavis::builder(&config(budgets, &[]))
            .resolve("api.github.com:443", &closed.to_string())
            .start(Some(&up), Some(&ca))
            .await;
        let a = send(&refused, CODEX, "GET", "https://api.github.com/user", None).await;
        a.problem(502, "upstream-unreachable");
        let b = settled(&refused, "gh-day").await;
        assert_eq!(b["used"], 0.0, "a request never sent was counted: {b}");
    }
}

/// Budget use survives a restart of the real binary (memory budget store,
/// kept in the sealed snapshot): `GET /v1/budgets` shows the same `used`,
/// and a request that no longer fits is refused.
mod restart {
    use super::*;
    use std::process::{Child, Command, Stdio};

    const MASTER_KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";

    struct Proc {
        child: Child,
        log: std::path::PathBuf,
    }

    impl Proc {
        fn spawn(config: &std::path::Path, log: std::path::PathBuf) -> Proc {
            let child = Command::new(env!("CARGO_BIN_EXE_clavis"))
                .args(["serve", "--config"])
                .arg(config)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            Proc { child, log }
        }

        fn log(&self) -> String {
            std::fs::read_to_string(&self.log).unwrap_or_default()
        }

        async fn ready(&mut self, admin: std::net::SocketAddr) {
            let c = admin_client();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!("clavis exited with {status}:\n{}", self.log());
                }
                if let Ok(r) = c.get(format!("http://{admin}/readyz")).send().await {
                    if r.status() == 200 {
                        return;
                    }
                }
                assert!(Instant::now() < deadline, "not ready:\n{}", self.log());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        /// SIGTERM, and the drain to its end.
        async fn stop(&mut self) {
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    assert!(status.success(), "exit {status}:\n{}", self.log());
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "no exit after SIGTERM:\n{}",
                    self.log()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    impl Drop for Proc {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    async fn used(c: &reqwest::Client, admin: std::net::SocketAddr) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let all = get_json(c, format!("http://{admin}/v1/budgets"), ADMIN).await;
            let b = all
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["name"] == "keep")
                .unwrap()
                .clone();
            if b["reserved"] == 0.0 {
                return b["used"].as_f64().unwrap();
            }
            assert!(Instant::now() < deadline, "{b}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn budget_use_survives_a_restart() {
        let ca = TestCa::new();
        let up = Upstream::start(&ca, ALL_HOSTS).await;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        write_master_key(&dir.path().join("master.key"), MASTER_KEY);
        let admin = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        let proxy = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        let yaml = format!(
            "proxy: {{ listen: \"{proxy}\" }}\n\
             admin: {{ listen: \"{admin}\", token: \"{ADMIN}\" }}\n\
             ca: {{ cert: \"{d}/ca/ca.pem\", key: \"{d}/ca/ca.key\", bundle: \"{d}/ca/bundle.pem\" }}\n\
             store: {{ master_key_file: \"{d}/master.key\", snapshot: \"{d}/store.snap\" }}\n\
             upstream:\n  extra_ca: [\"{}\"]\n  resolve:\n    \"api.github.com:443\": \"{}\"\n\
             budgets:\n  - {{ name: keep, agent: codex, service: my-github, window: 30d, limit: {{ requests: 3 }} }}\n{}",
            ca.pem_path().display(),
            up.addr,
            standard_yaml()
        );
        let config = dir.path().join("clavis.yaml");
        std::fs::write(&config, yaml).unwrap();

        let client = || {
            let pem = std::fs::read(dir.path().join("ca/ca.pem")).unwrap();
            reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
                .proxy(reqwest::Proxy::all(format!("http://codex:codex-token@{proxy}")).unwrap())
                .build()
                .unwrap()
        };
        let get = |c: reqwest::Client| async move {
            c.get("https://api.github.com/user")
                .header("authorization", "token placeholder")
                .send()
                .await
                .unwrap()
        };
        let admin_c = admin_client();

        let mut first = Proc::spawn(&config, dir.path().join("first.log"));
        first.ready(admin).await;
        let c = client();
        for _ in 0..2 {
            assert_eq!(get(c.clone()).await.status(), 200);
        }
        assert_eq!(used(&admin_c, admin).await, 2.0);
        first.stop().await;

        let mut second = Proc::spawn(&config, dir.path().join("second.log"));
        second.ready(admin).await;
        assert_eq!(
            used(&admin_c, admin).await,
            2.0,
            "the restart lost the budget's use:\n{}",
            second.log()
        );
        let c = client();
        assert_eq!(get(c.clone()).await.status(), 200);
        let r = answer(get(c.clone()).await).await;
        r.problem(429, "budget-exceeded");
        assert_eq!(up.seen().len(), 3);
        assert_eq!(used(&admin_c, admin).await, 3.0);
        second.stop().await;
    }
}
