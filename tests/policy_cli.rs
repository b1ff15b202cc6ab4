//! `clavis policy test` (SPEC §10): the built binary judges a request by a
//! config's policies as the proxy would, and says so in its exit code
//! (0 allow, 1 deny, 3 approve, 2 bad config or input) and its output.

// Helpers here are not `#[test]` functions, so clippy.toml's
// allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Command, Output};

const CONFIG: &str = r#"
approvals: { hold: 30s, ttl: 15m }
policies:
  - name: github-triage
    default: deny
    rules:
      - { name: reads, allow: { methods: [GET, HEAD] } }
      - { name: comments, allow: { methods: [POST], path: "/repos/acme/*/issues/*/comments" } }
      - { name: no-push-to-main, deny: { methods: [POST, PATCH, PUT], path: "/repos/acme/*/git/refs/heads/main" } }
      - { name: deletes, deny: { methods: [DELETE] } }
  - name: stripe-refunds
    default: deny
    rules:
      - { name: reads, allow: { methods: [GET] } }
      - { name: small, allow: { methods: [POST], path: /v1/refunds, body: { amount: { max: 5000 } } } }
      - { name: large, approve: { methods: [POST], path: /v1/refunds } }
  - name: llm-audit
    mode: audit
    default: allow
    rules:
      - { name: other-models, deny: { methods: [POST], path: /v1/chat/completions, body: { model: { not_in: [gpt-4o-mini] } } } }
  - name: no-shell-tools
    default: allow
    rules:
      - { name: shell, deny: { methods: [POST], path: /v1/messages, body: { "tools.*.name": { in: [bash, shell] } } } }
services:
  - { name: github, connector: github, policy: github-triage }
  - { name: stripe, connector: stripe, policy: stripe-refunds }
  - { name: stripe-ro, connector: stripe, readonly: true }
  - { name: openai, connector: openai, policy: llm-audit }
  - { name: anthropic, connector: anthropic }
agents:
  - name: triage
    token: triage-token-0123456789
    services: [github, stripe, stripe-ro, openai, anthropic]
    policies: { anthropic: no-shell-tools }
  - { name: writer, token: writer-token-0123456789, services: [openai, anthropic] }
"#;

struct Config {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn config(yaml: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clavis.yaml");
    std::fs::write(&path, yaml).unwrap();
    Config { _dir: dir, path }
}

fn clavis(cfg: &Config, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clavis"))
        .args(["policy", "test", "--config"])
        .arg(&cfg.path)
        .args(args)
        .output()
        .unwrap()
}

/// `(exit code, stdout, stderr)` of a test as `triage`.
fn test(agent_service_request: &[&str]) -> (i32, String, String) {
    let cfg = config(CONFIG);
    let out = clavis(&cfg, agent_service_request);
    (
        out.status.code().expect("exited"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn triage(service: &str, request: &str, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["--agent", "triage", "--service", service, request];
    args.extend_from_slice(extra);
    test(&args)
}

fn json(service: &str, request: &str, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut extra = extra.to_vec();
    extra.push("--json");
    let (code, out, err) = triage(service, request, &extra);
    let doc = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
    (code, doc)
}

mod decisions {
    use super::*;

    #[test]
    fn an_allowed_read_exits_0_naming_the_rule() {
        let (code, out, err) = triage("github", "GET https://api.github.com/repos/acme/app", &[]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.starts_with("decision: allow\n"), "{out}");
        assert!(out.contains("policy:   \"github-triage\""), "{out}");
        assert!(
            out.contains(
                "rule:     rules[0] \"reads\": { name: reads, allow: { methods: [GET, HEAD] } }"
            ),
            "{out}"
        );
    }

    #[test]
    fn a_delete_exits_1_with_the_rule_and_what_the_agent_reads() {
        let (code, out, _) = triage(
            "github",
            "DELETE https://api.github.com/repos/acme/app",
            &[],
        );
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("rules[3] \"deletes\""), "{out}");
        assert!(
            out.contains("agent sees: 403 urn:clavis:problem:policy-denied DELETE /repos/acme/app was refused by policy \"github-triage\", rule \"deletes\". This policy allows: reads (GET, HEAD); comments (POST /repos/acme/*/issues/*/comments)"),
            "{out}"
        );
    }

    #[test]
    fn the_two_words_may_be_two_arguments() {
        let (code, out, _) = test(&[
            "--agent",
            "triage",
            "--service",
            "github",
            "POST",
            "https://api.github.com/repos/acme/app/issues/7/comments",
        ]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("rules[1] \"comments\""), "{out}");
    }

    #[test]
    fn a_push_to_main_is_denied_by_its_rule() {
        let (code, doc) = json(
            "github",
            "PATCH https://api.github.com/repos/acme/app/git/refs/heads/main",
            &["--body", r#"{"sha":"abc","force":true}"#],
        );
        assert_eq!(code, 1);
        assert_eq!(doc["decision"], "deny");
        assert_eq!(doc["verdict"]["rule"]["name"], "no-push-to-main");
        assert_eq!(doc["verdict"]["rule"]["index"], 2);
        assert_eq!(doc["agent_sees"]["status"], 403);
    }

    #[test]
    fn what_no_rule_matches_gets_the_default() {
        let (code, out, _) = triage(
            "github",
            "PUT https://api.github.com/repos/acme/app/topics",
            &[],
        );
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("rule:     default (deny: no rule matched)"),
            "{out}"
        );
        assert!(
            out.contains("no rule matched; its default is deny"),
            "{out}"
        );
    }

    #[test]
    fn readonly_lets_reads_through_and_refuses_writes() {
        let (code, out, _) = triage("stripe-ro", "GET https://api.stripe.com/v1/charges", &[]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("\"readonly\""), "{out}");
        let (code, out, _) = triage(
            "stripe-ro",
            "POST https://api.stripe.com/v1/refunds",
            &["--body", "amount=100"],
        );
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("policy \"readonly\" (no rule matched; its default is deny)"),
            "{out}"
        );
    }

    #[test]
    fn a_service_without_a_policy_allows() {
        let cfg = config(CONFIG);
        let out = clavis(
            &cfg,
            &[
                "--agent",
                "writer",
                "--service",
                "anthropic",
                "GET https://api.anthropic.com/v1/models",
            ],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}");
        assert!(
            stdout.contains("why:      no policy applies to this agent and service"),
            "{stdout}"
        );
    }
}

mod bodies {
    use super::*;

    #[test]
    fn a_stripe_form_amount_under_the_cap_is_allowed() {
        let (code, out, _) = triage(
            "stripe",
            "POST https://api.stripe.com/v1/refunds",
            &["--body", "charge=ch_1&amount=3000"],
        );
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("rules[1] \"small\""), "{out}");
        assert!(out.contains("body: { amount: { max: 5000 } }"), "{out}");
    }

    #[test]
    fn a_larger_refund_needs_approval_exit_3() {
        let (code, out, _) = triage(
            "stripe",
            "POST https://api.stripe.com/v1/refunds",
            &["--body", "charge=ch_1&amount=9000"],
        );
        assert_eq!(code, 3, "{out}");
        assert!(out.starts_with("decision: approve\n"), "{out}");
        assert!(out.contains("rules[2] \"large\""), "{out}");
    }

    #[test]
    fn an_amount_given_twice_never_passes_the_allow_rule() {
        let (code, out, _) = triage(
            "stripe",
            "POST https://api.stripe.com/v1/refunds",
            &["--body", "amount=1&amount=90000"],
        );
        // `small` cannot tell which amount the API reads, so it never
        // allows; `large` needs no field, so it decides.
        assert_eq!(code, 3, "{out}");
        assert!(out.contains("rules[2] \"large\""), "{out}");
    }

    #[test]
    fn the_body_can_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("refund.txt");
        std::fs::write(&file, "amount=100").unwrap();
        let at = format!("@{}", file.display());
        let (code, out, _) = triage(
            "stripe",
            "POST https://api.stripe.com/v1/refunds",
            &["--body", &at],
        );
        assert_eq!(code, 0, "{out}");
    }

    #[test]
    fn a_json_path_with_a_star_reads_every_element() {
        // `*` reads every element, and every one must match (SPEC §10).
        let body = r#"{"model":"claude","tools":[{"name":"shell"},{"name":"bash"}]}"#;
        let (code, doc) = json(
            "anthropic",
            "POST https://api.anthropic.com/v1/messages",
            &["--body", body],
        );
        assert_eq!(code, 1, "{doc}");
        assert_eq!(doc["verdict"]["rule"]["name"], "shell");
        assert_eq!(doc["verdict"]["attached"], "agent");
        let body = r#"{"model":"claude","tools":[{"name":"search"},{"name":"bash"}]}"#;
        let (code, _) = json(
            "anthropic",
            "POST https://api.anthropic.com/v1/messages",
            &["--body", body],
        );
        assert_eq!(code, 0);
    }

    #[test]
    fn the_content_type_can_be_given() {
        // text/plain is no type a rule can read: a deny rule on the body
        // matches (fail closed), whatever the text says.
        let body = r#"{"tools":[{"name":"search"}]}"#;
        let (code, _) = json(
            "anthropic",
            "POST https://api.anthropic.com/v1/messages",
            &["--body", body, "--content-type", "text/plain"],
        );
        assert_eq!(code, 1, "an unreadable body lets a deny rule match");
    }
}

mod audit_mode {
    use super::*;

    #[test]
    fn an_audit_mode_deny_is_reported_and_exits_0() {
        let (code, out, _) = triage(
            "openai",
            "POST https://api.openai.com/v1/chat/completions",
            &["--body", r#"{"model":"gpt-4o","messages":[]}"#],
        );
        assert_eq!(code, 0, "{out}");
        assert!(out.starts_with("decision: allow\n"), "{out}");
        assert!(
            out.contains("audit:    would deny (audit mode): allowed; policy \"llm-audit\", rules[0] \"other-models\""),
            "{out}"
        );
        let (code, out, _) = triage(
            "openai",
            "POST https://api.openai.com/v1/chat/completions",
            &["--body", r#"{"model":"gpt-4o-mini","messages":[]}"#],
        );
        assert_eq!(code, 0);
        assert!(!out.contains("would deny"), "{out}");
    }
}

mod normalization {
    use super::*;

    #[test]
    fn respelled_paths_are_denied_as_the_proxy_refuses_them() {
        for url in [
            "https://api.github.com/repos/acme/app/issues/1/comments/../../../git/refs/heads/main",
            "https://api.github.com/repos/acme%2Fapp/issues/1/comments",
            "https://api.github.com/repos/acme/app%5Cx/issues/1/comments",
            "https://api.github.com//repos/acme/app/issues/1/comments",
            "https://api.github.com/repos/acme/app/issues/%252e%252e/comments",
        ] {
            let (code, doc) = json("github", &format!("POST {url}"), &[]);
            assert_eq!(code, 1, "{url}: {doc}");
            assert_eq!(doc["agent_sees"]["status"], 400, "{url}: {doc}");
            assert!(
                doc["why"]
                    .as_str()
                    .unwrap()
                    .starts_with("refused before any rule is read"),
                "{url}: {doc}"
            );
        }
    }

    #[test]
    fn a_lowercase_method_is_refused() {
        let (code, doc) = json(
            "github",
            "delete https://api.github.com/repos/acme/app",
            &[],
        );
        assert_eq!(code, 1, "{doc}");
        assert_eq!(doc["agent_sees"]["status"], 400);
    }

    #[test]
    fn trace_is_refused_by_clavis_itself() {
        let (code, out, _) = triage("github", "TRACE https://api.github.com/", &[]);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("clavis's own rule"), "{out}");
    }
}

mod bad_inputs {
    use super::*;

    fn exit_2_naming(args: &[&str], words: &[&str]) {
        let (code, out, err) = test(args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(!err.contains("panicked"), "{err}");
        for w in words {
            assert!(err.contains(w), "{args:?}: {err:?} does not name {w:?}");
        }
    }

    #[test]
    fn an_unknown_agent() {
        exit_2_naming(
            &[
                "--agent",
                "nobody",
                "--service",
                "github",
                "GET https://api.github.com/",
            ],
            &["--agent", "\"nobody\"", "triage, writer"],
        );
    }

    #[test]
    fn an_unknown_service() {
        exit_2_naming(
            &[
                "--agent",
                "triage",
                "--service",
                "gitlab",
                "GET https://api.github.com/",
            ],
            &["--service", "\"gitlab\""],
        );
    }

    #[test]
    fn an_agent_not_allowed_the_service() {
        exit_2_naming(
            &[
                "--agent",
                "writer",
                "--service",
                "github",
                "GET https://api.github.com/",
            ],
            &["\"writer\" may not use service \"github\""],
        );
    }

    #[test]
    fn a_host_the_service_does_not_claim() {
        exit_2_naming(
            &[
                "--agent",
                "triage",
                "--service",
                "github",
                "GET https://evil.example/repos",
            ],
            &["\"evil.example\"", "\"github\"", "api.github.com"],
        );
    }

    #[test]
    fn a_request_that_is_not_method_and_url() {
        exit_2_naming(
            &[
                "--agent",
                "triage",
                "--service",
                "github",
                "https://api.github.com/",
            ],
            &["'METHOD URL'"],
        );
        exit_2_naming(
            &[
                "--agent",
                "triage",
                "--service",
                "github",
                "GET /repos/acme",
            ],
            &["not an absolute URL"],
        );
        exit_2_naming(
            &[
                "--agent",
                "triage",
                "--service",
                "github",
                "G(T https://api.github.com/",
            ],
            &["not an HTTP method"],
        );
    }

    #[test]
    fn an_unreadable_body_file() {
        exit_2_naming(
            &[
                "--agent",
                "triage",
                "--service",
                "stripe",
                "POST https://api.stripe.com/v1/refunds",
                "--body",
                "@/nonexistent/refund.txt",
            ],
            &["--body", "/nonexistent/refund.txt"],
        );
    }

    #[test]
    fn a_config_error_is_listed_with_its_key() {
        let cfg =
            config("policies:\n  - name: p\n    rules:\n      - { allow: { methds: [GET] } }\n");
        let out = clavis(&cfg, &["--service", "x", "GET https://api.github.com/"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("methds"), "{err}");
    }

    #[test]
    fn a_missing_config_file() {
        let out = Command::new(env!("CARGO_BIN_EXE_clavis"))
            .args(["policy", "test", "--config", "/nonexistent/clavis.yaml"])
            .args(["--service", "x", "GET https://api.github.com/"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("/nonexistent/clavis.yaml"), "{err}");
    }
}
