//! The onboarding commands from the outside (SPEC §14): `clavis env` output
//! that shells read back byte for byte, the agent-token checks, `clavis
//! run`'s exit statuses and environment. The real CLIs through clavis are in
//! `tests/e2e_agents/run.sh`.

// Helpers here are not `#[test]` functions, so clippy.toml's
// allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::{Command, Output};

/// A token with every character a shell could trip on.
const HARD_TOKEN: &str = "tok'en \"$HOME\" `x` \\ ; #!*?";

fn clavis(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clavis"))
        .args(args)
        .current_dir(dir)
        .env_remove("CLAVIS_ADMIN_TOKEN")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A config on free ports (nothing listens there) with two services and
/// an agent whose token is [`HARD_TOKEN`], written to `token`.
fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (proxy, admin) = (support::free_port(), support::free_port());
    let yaml = format!(
        r#"
proxy: {{ listen: "127.0.0.1:{proxy}" }}
admin: {{ listen: "127.0.0.1:{admin}", token: "onboard-admin-token-0123456789" }}
services:
  - {{ name: work-openai, connector: openai, credentials: {{ api_key: "sk-REAL-onboard-0123456789" }} }}
  - {{ name: gh, connector: github, credentials: {{ api_key: "ghp_REALonboard0123456789" }} }}
agents:
  - {{ name: codex, token: '{}', services: [work-openai] }}
"#,
        HARD_TOKEN.replace('\'', "''")
    );
    std::fs::write(dir.path().join("clavis.yaml"), yaml).unwrap();
    std::fs::write(dir.path().join("token"), format!("{HARD_TOKEN}\n")).unwrap();
    dir
}

fn env_out(dir: &Path, shell: &str) -> String {
    let out = clavis(
        dir,
        &[
            "env",
            "--agent",
            "codex",
            "--token-file",
            "token",
            "--shell",
            shell,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// `HTTPS_PROXY` and `OPENAI_API_KEY` as the shell sees them after
/// reading `clavis env`'s output.
fn read_back(shell: &str, program: &str) -> Option<String> {
    let out = Command::new(shell).args(["-c", program]).output().ok()?;
    assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
    Some(text(&out.stdout))
}

fn expected_proxy(dir: &Path) -> String {
    let yaml = std::fs::read_to_string(dir.join("clavis.yaml")).unwrap();
    let port = yaml.split("127.0.0.1:").nth(1).unwrap();
    let port: String = port.chars().take_while(char::is_ascii_digit).collect();
    // user info percent-encoded: only unreserved characters stay
    let mut enc = String::new();
    for b in HARD_TOKEN.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            enc.push(char::from(b));
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    format!("http://codex:{enc}@127.0.0.1:{port}")
}

mod env {
    use super::*;

    #[test]
    fn sh_reads_the_values_back_exactly() {
        let dir = setup();
        let script = env_out(dir.path(), "sh");
        std::fs::write(dir.path().join("env.sh"), &script).unwrap();
        let shown = read_back(
            "sh",
            &format!(
                ". {}/env.sh; printf '%s\\n%s\\n%s' \"$HTTPS_PROXY\" \"$OPENAI_API_KEY\" \"${{GH_TOKEN-unset}}\"",
                dir.path().display()
            ),
        )
        .unwrap();
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines[0], expected_proxy(dir.path()));
        assert_eq!(lines[1], "clavis:work-openai");
        // Out of the agent's scope: no placeholder for it.
        assert_eq!(lines[2], "unset");
        assert!(!script.contains("sk-REAL") && !script.contains("ghp_REAL"));
    }

    #[test]
    fn fish_reads_the_values_back_exactly() {
        let dir = setup();
        let script = env_out(dir.path(), "fish");
        std::fs::write(dir.path().join("env.fish"), &script).unwrap();
        let program = format!(
            "source {}/env.fish; printf '%s\\n%s' $HTTPS_PROXY $OPENAI_API_KEY",
            dir.path().display()
        );
        let Some(shown) = read_back("fish", &program) else {
            eprintln!("fish is not installed: skipped");
            return;
        };
        assert_eq!(
            shown,
            format!("{}\nclavis:work-openai", expected_proxy(dir.path()))
        );
    }

    #[test]
    fn pwsh_lines_double_single_quotes() {
        let dir = setup();
        let script = env_out(dir.path(), "pwsh");
        assert!(script.contains("$env:OPENAI_API_KEY = 'clavis:work-openai'\n"));
        assert!(script.lines().all(|l| l.starts_with("$env:")));
    }

    #[test]
    fn without_an_agent_every_service_gets_its_variables() {
        let dir = setup();
        let out = clavis(dir.path(), &["env"]);
        let script = text(&out.stdout);
        assert!(script.contains("export GH_TOKEN='clavis:gh'\n"), "{script}");
        assert!(script.contains("export GITHUB_TOKEN='clavis:gh'\n"));
        assert!(script.contains("export HTTPS_PROXY='http://127.0.0.1:"));
        assert!(dir.path().join("certs/clavis-ca-bundle.jks").exists());
    }

    #[test]
    fn a_wrong_token_file_is_refused_naming_it_not_the_token() {
        let dir = setup();
        std::fs::write(dir.path().join("bad"), "not-the-token-0123456789\n").unwrap();
        let out = clavis(
            dir.path(),
            &["env", "--agent", "codex", "--token-file", "bad"],
        );
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("bad") && err.contains("\"codex\""), "{err}");
        assert!(!err.contains("not-the-token") && out.stdout.is_empty());
        let out = clavis(
            dir.path(),
            &["env", "--agent", "nobody", "--token-file", "token"],
        );
        assert_eq!(out.status.code(), Some(2));
        assert!(text(&out.stderr).contains("known: codex"));
        // A token is never an argument.
        let out = clavis(dir.path(), &["env", "--agent", "codex"]);
        assert_eq!(out.status.code(), Some(2));
    }
}

mod run {
    use super::*;

    #[test]
    fn passes_the_exit_status_and_hides_the_config_s_secrets() {
        let dir = setup();
        let yaml = std::fs::read_to_string(dir.path().join("clavis.yaml"))
            .unwrap()
            .replace("\"sk-REAL-onboard-0123456789\"", "\"${ONBOARD_REAL_KEY}\"");
        std::fs::write(dir.path().join("clavis.yaml"), yaml).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_clavis"))
            .args(["run", "--", "sh", "-c"])
            .arg("env > seen.env; exit 3")
            .current_dir(dir.path())
            .env("ONBOARD_REAL_KEY", "sk-REAL-from-env-0123456789")
            .env("CLAVIS_ADMIN_TOKEN", "onboard-admin-token-0123456789")
            .env("ANTHROPIC_API_KEY", "sk-ant-REAL-in-the-shell-0123")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
        let seen = std::fs::read_to_string(dir.path().join("seen.env")).unwrap();
        assert!(
            seen.contains("OPENAI_API_KEY=clavis:work-openai\n"),
            "{seen}"
        );
        for secret in [
            "sk-REAL",
            "onboard-admin-token",
            "ONBOARD_REAL_KEY",
            "CLAVIS_",
        ] {
            assert!(!seen.contains(secret), "{secret} reached the command");
        }
        assert!(text(&out.stderr).contains("ANTHROPIC_API_KEY is not passed"));
        // The clavis it started is stopped: its admin port is free again.
        let admin = std::fs::read_to_string(dir.path().join("clavis.yaml")).unwrap();
        let port: u16 = admin
            .split("127.0.0.1:")
            .nth(2)
            .unwrap()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }

    /// What a Ctrl-C on a terminal does: SIGINT to the whole foreground
    /// process group. The command gets it; the clavis that `clavis run`
    /// started keeps serving until the command ends.
    #[test]
    fn a_ctrl_c_to_the_group_leaves_the_started_clavis_serving() {
        use std::os::unix::process::CommandExt;
        let dir = setup();
        let yaml = std::fs::read_to_string(dir.path().join("clavis.yaml")).unwrap();
        let admin: String = yaml
            .split("127.0.0.1:")
            .nth(2)
            .unwrap()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let script = format!(
            "trap 'curl -s -o /dev/null -w %{{http_code}} http://127.0.0.1:{admin}/readyz >after-int; exit 0' INT; \
             : >started; while :; do sleep 0.1; done"
        );
        let mut child = Command::new(env!("CARGO_BIN_EXE_clavis"))
            .args(["run", "--", "sh", "-c", &script])
            .current_dir(dir.path())
            .process_group(0)
            .spawn()
            .unwrap();
        let started = dir.path().join("started");
        for _ in 0..300 {
            if started.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(started.exists(), "the command never started");
        let group = -i32::try_from(child.id()).unwrap();
        // SAFETY: signals a process group this test created.
        unsafe {
            libc::kill(group, libc::SIGINT);
        }
        assert!(child.wait().unwrap().success());
        let after = std::fs::read_to_string(dir.path().join("after-int")).unwrap();
        assert_eq!(after, "200", "clavis stopped with the Ctrl-C");
    }

    #[test]
    fn a_missing_command_is_127() {
        let dir = setup();
        let out = clavis(dir.path(), &["run", "--", "/nonexistent/cmd"]);
        assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains("cannot run /nonexistent/cmd"));
    }
}
