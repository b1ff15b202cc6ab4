//! Table tests: policies as an operator writes them, requests as agents
//! (and attackers) send them.

use super::*;
use crate::config::guardrails::policy_from_yaml;

fn policy(yaml: &str) -> Arc<Policy> {
    Arc::new(Policy::compile(&policy_from_yaml(yaml)).unwrap())
}

/// The outcome for one request: `Ok((action, rule))` or the view's refusal.
fn judge(
    policies: &[Arc<Policy>],
    method: &str,
    target: &str,
    body: Option<(&str, &str)>,
) -> Result<(Action, String), String> {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let uri: http::Uri = target.parse().unwrap();
    let body = match body {
        Some((ct, b)) => Body::parse(Some(ct), b.as_bytes()),
        None => Body::Empty,
    };
    let view =
        View::new(policies, &method, "api.example.com", &uri, body).map_err(|e| e.to_string())?;
    let d = decide(policies, &view);
    let v = d.outcome.unwrap();
    Ok((v.action, v.rule.to_string()))
}

const TRIAGE: &str = r#"
name: github-triage
default: deny
rules:
  - { name: reads,    allow: { methods: [GET, HEAD] } }
  - { name: comments, allow: { methods: [POST], path: "/repos/acme/*/issues/*/comments" } }
  - { name: deletes,  deny:  { methods: [DELETE] } }
"#;

const REFUNDS: &str = r#"
name: stripe-refunds
default: deny
rules:
  - { name: reads, allow: { methods: [GET] } }
  - { name: small, allow: { methods: [POST], path: /v1/refunds, body: { amount: { max: 5000 } } } }
  - { name: large, approve: { methods: [POST], path: /v1/refunds } }
"#;

const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";

#[test]
fn the_spec_examples_decide_as_written() {
    let p = [policy(TRIAGE)];
    let ok = |m, t| judge(&p, m, t, None).unwrap();
    assert_eq!(
        ok("GET", "/repos/acme/web"),
        (Action::Allow, "reads".into())
    );
    assert_eq!(
        ok("POST", "/repos/acme/web/issues/3/comments"),
        (Action::Allow, "comments".into())
    );
    assert_eq!(
        ok("DELETE", "/repos/acme/web"),
        (Action::Deny, "deletes".into())
    );
    assert_eq!(
        ok("POST", "/repos/acme/web/issues"),
        (Action::Deny, "default".into())
    );
    assert_eq!(
        ok("PATCH", "/repos/acme/web"),
        (Action::Deny, "default".into())
    );

    let p = [policy(REFUNDS)];
    let refund = |body: &str| judge(&p, "POST", "/v1/refunds", Some((FORM, body))).unwrap();
    assert_eq!(
        refund("charge=ch_1&amount=4999"),
        (Action::Allow, "small".into())
    );
    assert_eq!(
        refund("charge=ch_1&amount=5000"),
        (Action::Allow, "small".into())
    );
    assert_eq!(
        refund("charge=ch_1&amount=5001"),
        (Action::Approve, "large".into())
    );
    // No amount is a full refund: the small rule cannot vouch for it.
    assert_eq!(refund("charge=ch_1"), (Action::Approve, "large".into()));
}

#[test]
fn path_tricks_are_refused_where_a_policy_applies() {
    let p = [policy(TRIAGE)];
    for target in [
        "/repos/acme/web/issues/3/../../../../x",
        "/repos/acme/web/issues/3/comments/..",
        "/repos/acme/web%2Fissues/3/comments",
        "/repos/acme%5Cweb/issues/3/comments",
        "/repos//acme/web/issues/3/comments",
        "/repos/acme/web/issues/3/%252e%252e",
    ] {
        assert!(judge(&p, "POST", target, None).is_err(), "{target}");
    }
    // A trailing slash is the same resource, not a way around a rule.
    assert_eq!(
        judge(&p, "POST", "/repos/acme/web/issues/3/comments/", None)
            .unwrap()
            .0,
        Action::Allow
    );
    // Escapes of ordinary characters decode to the path they spell.
    assert_eq!(
        judge(&p, "POST", "/repos/%61cme/web/issues/3/comments", None)
            .unwrap()
            .0,
        Action::Allow
    );
}

#[test]
fn without_a_path_rule_the_path_is_not_judged() {
    // readonly and a body-only policy read no path: nothing to fool, so a
    // path that would be refused under a path rule goes as spelled.
    let body_only = policy(
        "name: b\ndefault: allow\nrules: [{ name: big, deny: { methods: [POST], body: { amount: { min: 10 } } } }]\n",
    );
    for p in [Arc::new(Policy::readonly()), body_only] {
        let p = [p];
        for target in ["/a//b", "/a/../b", "/a%2Fb", "/a/%252e"] {
            assert_eq!(
                judge(&p, "GET", target, None).unwrap().0,
                Action::Allow,
                "{target}"
            );
        }
        assert!(judge(&p, "get", "/a", None).is_err(), "lowercase method");
    }
}

#[test]
fn methods_in_lowercase_are_refused_not_misread() {
    let p = [policy(TRIAGE)];
    let e = judge(&p, "delete", "/repos/acme/web", None).unwrap_err();
    assert!(e.contains("capitals"), "{e}");
    let e = judge(&p, "Delete", "/repos/acme/web", None).unwrap_err();
    assert!(e.contains("capitals"), "{e}");
}

#[test]
fn json_bodies_dotted_paths_and_stars() {
    let p = [policy(
        r#"
name: orders
default: deny
rules:
  - name: cheap
    allow: { methods: [POST], path: /orders, body: { "items.*.price": { max: 100 }, currency: { in: [usd, eur] } } }
"#,
    )];
    let order = |b: &str| judge(&p, "POST", "/orders", Some((JSON, b))).unwrap().0;
    assert_eq!(
        order(r#"{"items":[{"price":10},{"price":100}],"currency":"usd"}"#),
        Action::Allow
    );
    assert_eq!(
        order(r#"{"items":[{"price":10},{"price":101}],"currency":"usd"}"#),
        Action::Deny
    );
    assert_eq!(
        order(r#"{"items":[],"currency":"usd"}"#),
        Action::Deny,
        "none found is no match"
    );
    assert_eq!(
        order(r#"{"items":[{"price":1}],"currency":"gbp"}"#),
        Action::Deny
    );
    assert_eq!(
        order(r#"{"items":[{"price":"1"}],"currency":"usd"}"#),
        Action::Allow,
        "numeric strings compare as numbers"
    );
    assert_eq!(
        order(r#"{"items":[{"price":"x"}],"currency":"usd"}"#),
        Action::Deny,
        "a non-number never passes max"
    );
}

#[test]
fn fail_closed_on_what_cannot_be_read() {
    let p = [policy(
        r#"
name: guard
default: allow
rules:
  - { name: big, deny: { methods: [POST], body: { amount: { min: 10000 } } } }
"#,
    )];
    let post = |ct: &str, b: &str| judge(&p, "POST", "/v1/x", Some((ct, b))).unwrap();
    assert_eq!(post(FORM, "amount=5").0, Action::Allow);
    assert_eq!(post(FORM, "amount=10000").0, Action::Deny);
    // Given twice: the upstream may take either, so the deny rule applies.
    assert_eq!(post(FORM, "amount=5&amount=999999").0, Action::Deny);
    assert_eq!(
        post(JSON, r#"{"amount":5,"amount":999999}"#).0,
        Action::Deny
    );
    // A body that does not read as what it says, or another type.
    assert_eq!(post(JSON, "{not json").0, Action::Deny);
    assert_eq!(post("text/plain", "amount=999999").0, Action::Deny);
    // A missing field is no match either way.
    assert_eq!(post(FORM, "other=1").0, Action::Allow);

    let allow_only = [policy(REFUNDS)];
    let dup = judge(
        &allow_only,
        "POST",
        "/v1/refunds",
        Some((FORM, "amount=1&amount=900000")),
    )
    .unwrap();
    assert_eq!(
        dup.0,
        Action::Approve,
        "an allow rule never passes an ambiguous field"
    );
}

#[test]
fn query_matchers_and_regex_match_whole_values() {
    let p = [policy(
        r#"
name: search
default: deny
rules:
  - { name: small-pages, allow: { methods: [GET], query: { per_page: { max: 50 }, q: { regex: "[a-z ]+" } } } }
"#,
    )];
    let get = |t| judge(&p, "GET", t, None).unwrap().0;
    assert_eq!(get("/search?q=rust+proxy&per_page=20"), Action::Allow);
    assert_eq!(get("/search?q=rust&per_page=100"), Action::Deny);
    assert_eq!(
        get("/search?q=rust1&per_page=20"),
        Action::Deny,
        "regex is anchored"
    );
    assert_eq!(get("/search?q=a&per_page=1&per_page=100"), Action::Deny);
    assert_eq!(
        get("/search?q=a"),
        Action::Deny,
        "a missing parameter is no match"
    );
}

#[test]
fn the_strictest_enforced_policy_wins_and_audit_mode_only_reports() {
    let service = policy("name: s\ndefault: allow\nrules: []\n");
    let agent =
        policy("name: a\ndefault: deny\nrules: [{ name: reads, allow: { methods: [GET] } }]\n");
    let watching = policy("name: w\nmode: audit\ndefault: deny\nrules: []\n");
    let all = [service, agent, watching];
    let method = Method::POST;
    let uri: http::Uri = "/x".parse().unwrap();
    let view = View::new(&all, &method, "api.example.com", &uri, Body::Empty).unwrap();
    let d = decide(&all, &view);
    let outcome = d.outcome.unwrap();
    assert_eq!((outcome.action, &*outcome.policy), (Action::Deny, "a"));
    assert_eq!(d.would.len(), 1);
    assert_eq!(&*d.would[0].policy, "w");

    let get = Method::GET;
    let view = View::new(&all, &get, "api.example.com", &uri, Body::Empty).unwrap();
    assert_eq!(decide(&all, &view).outcome.unwrap().action, Action::Allow);
}

#[test]
fn readonly_allows_reads_only() {
    let p = [Arc::new(Policy::readonly())];
    for m in ["GET", "HEAD", "OPTIONS"] {
        assert_eq!(judge(&p, m, "/v1/x", None).unwrap().0, Action::Allow, "{m}");
    }
    for m in ["POST", "PUT", "PATCH", "DELETE"] {
        assert_eq!(judge(&p, m, "/v1/x", None).unwrap().0, Action::Deny, "{m}");
    }
}

#[test]
fn compile_errors_name_the_rule() {
    let bad = |yaml: &str| {
        Policy::compile(&policy_from_yaml(yaml))
            .unwrap_err()
            .to_string()
    };
    assert!(bad("name: x\nrules: [{ allow: {}, deny: {} }]\n")
        .starts_with("rules[0]: give exactly one"));
    assert!(bad("name: x\nrules: [{ allow: { path: v1 } }]\n").starts_with("rules[0].path"));
    assert!(
        bad("name: x\nrules: [{ allow: { body: { a: { regex: \"(\" } } } }]\n")
            .starts_with("rules[0].body.a")
    );
    assert!(
        bad("name: x\nrules: [{ allow: { methods: [\"G ET\"] } }]\n")
            .starts_with("rules[0].methods[0]")
    );
}

#[test]
fn explanations_name_policy_and_rule() {
    let p = [policy(TRIAGE)];
    let method = Method::DELETE;
    let uri: http::Uri = "/repos/acme/web".parse().unwrap();
    let view = View::new(&p, &method, "api.github.com", &uri, Body::Empty).unwrap();
    let text = decide(&p, &view).outcome.unwrap().explain();
    assert_eq!(
        text,
        "refused by policy \"github-triage\", rule \"deletes\""
    );
}
