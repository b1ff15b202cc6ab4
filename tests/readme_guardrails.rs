//! The README's Guardrails examples are true: each `<!-- policy-example -->`
//! is followed by a `yaml` block (the config) and `console` blocks whose
//! `$ clavis policy test …` lines are run against it with the built binary;
//! the output must be exactly what the README shows, and the exit code the
//! one its `decision:` line stands for.

// Helpers here are not `#[test]` functions, so clippy.toml's
// allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

const MARKER: &str = "<!-- policy-example -->";

/// Values for the `${VAR}`s of the examples: shaped like the real thing
/// (connectors check a key's prefix), secret nowhere.
const ENV: &[(&str, &str)] = &[
    ("GITHUB_TOKEN", "ghp_exampleexampleexampleexampleexample"),
    ("STRIPE_API_KEY", "rk_test_exampleexampleexample"),
    ("OPENAI_API_KEY", "sk-exampleexampleexampleexample"),
    ("TRIAGE_AGENT_TOKEN", "triage-example-token-0123456789"),
    ("SUPPORT_AGENT_TOKEN", "support-example-token-0123456789"),
    ("RESEARCH_AGENT_TOKEN", "research-example-token-0123456789"),
];

struct Example {
    yaml: String,
    /// `(command line after "$ ", expected stdout)`.
    runs: Vec<(String, String)>,
}

/// The fenced blocks of `text` in order: `(info string, body)`.
fn fenced(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.trim_start().strip_prefix("```") else {
            continue;
        };
        let mut body = String::new();
        for inner in lines.by_ref() {
            if inner.trim_start().starts_with("```") {
                break;
            }
            body.push_str(inner);
            body.push('\n');
        }
        out.push((info.trim().to_owned(), body));
    }
    out
}

fn examples() -> Vec<Example> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut out = Vec::new();
    for chunk in readme.split(MARKER).skip(1) {
        // An example ends at the next heading.
        let chunk = chunk.split("\n#").next().unwrap();
        let blocks = fenced(chunk);
        let (info, yaml) = blocks.first().expect("a yaml block after the marker");
        assert_eq!(info, "yaml", "the block after {MARKER} must be the config");
        let mut runs = Vec::new();
        for (info, body) in blocks.iter().skip(1).filter(|(i, _)| i == "console") {
            let _ = info;
            let mut current: Option<(String, String)> = None;
            for line in body.lines() {
                if let Some(cmd) = line.strip_prefix("$ ") {
                    runs.extend(current.take());
                    current = Some((cmd.to_owned(), String::new()));
                } else if let Some((_, expected)) = current.as_mut() {
                    expected.push_str(line);
                    expected.push('\n');
                }
            }
            runs.extend(current);
        }
        assert!(!runs.is_empty(), "an example without a command:\n{yaml}");
        out.push(Example {
            yaml: yaml.clone(),
            runs,
        });
    }
    out
}

/// Splits a command line as sh would for what the README uses: words,
/// 'single-quoted' and "double-quoted" strings (no escapes, no variables).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, ' ') => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    assert!(quote.is_none(), "unclosed quote in {line:?}");
    if in_word {
        out.push(word);
    }
    out
}

#[test]
fn the_readme_has_three_guardrails_examples() {
    assert_eq!(examples().len(), 3);
}

#[test]
fn every_example_command_prints_what_the_readme_shows() {
    for example in examples() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("clavis.yaml"), &example.yaml).unwrap();
        for (line, expected) in &example.runs {
            let args = words(line);
            assert_eq!(args[..3], ["clavis", "policy", "test"], "{line}");
            let out = Command::new(env!("CARGO_BIN_EXE_clavis"))
                .args(&args[1..])
                .current_dir(dir.path())
                .envs(ENV.iter().copied())
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(stdout, *expected, "$ {line}\nstderr: {stderr}");
            let want = match expected.lines().next() {
                Some("decision: allow") => 0,
                Some("decision: deny") => 1,
                Some("decision: approve") => 3,
                other => panic!("$ {line}: no decision line: {other:?}"),
            };
            assert_eq!(out.status.code(), Some(want), "$ {line}\n{stdout}{stderr}");
        }
    }
}
