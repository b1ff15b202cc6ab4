//! `clavis run -- CMD` (SPEC §14): CMD with the agent's environment,
//! through the clavis its config describes: the running one when its
//! admin port answers `/readyz`, else one started for CMD's lifetime (its
//! log beside the CA key) and stopped after. SIGTERM, SIGINT and SIGHUP
//! go on to CMD; clavis exits with CMD's status (128 + N when a signal N
//! ended it). CMD's environment holds no real key: variables the config
//! reads credentials from, every `CLAVIS_*`, and any real value in a
//! connector's usual variable are removed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};

use super::args::RunArgs;
use super::client::Client;
use super::vars::{variables, Inputs};
use super::{CliError, Loaded};

/// How long a clavis started here may take to answer `/readyz`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) fn run(args: RunArgs) -> Result<ExitCode, CliError> {
    // The user's environment (real keys, perhaps) is in this process: no
    // other process of the user, CMD included, may read its memory.
    not_dumpable();
    let loaded = super::load_config(args.agent.config.as_deref())?;
    let client = Client::from_config(&loaded, None)?.quick();
    let mut server = if client.ready_blocking() {
        None
    } else {
        Some(Server::start(&loaded, &client)?)
    };
    // Read the admin token again: a clavis started here may have just
    // generated it.
    let client = Client::from_config(&loaded, None)?.quick();
    let prepared =
        Inputs::gather(&loaded, &args.agent, Some(&client)).map(|inputs| variables(&inputs));
    let env = match prepared {
        Ok(env) => env,
        Err(e) => {
            if let Some(s) = server.as_mut() {
                s.stop(&loaded);
            }
            return Err(e);
        }
    };
    for note in &env.notes {
        eprintln!("clavis: note: {note}");
    }
    let removed = removed_vars(&loaded, &env.vars);
    let status =
        super::runtime().and_then(|rt| rt.block_on(child(&args.command, &env.vars, &removed)));
    if let Some(s) = server.as_mut() {
        s.stop(&loaded);
    }
    status
}

/// Runs CMD to its end, passing signals on; its exit status as ours.
async fn child(
    command: &[OsString],
    vars: &[(String, String)],
    removed: &[String],
) -> Result<ExitCode, CliError> {
    let (program, rest) = command
        .split_first()
        .ok_or_else(|| CliError::Usage("no command to run".into()))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(rest);
    for name in removed {
        cmd.env_remove(name);
    }
    cmd.envs(vars.iter().map(|(k, v)| (k, v)));
    let name = program.to_string_lossy().into_owned();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("clavis: cannot run {name}: {e}");
            // As shells say it: 127 not found, 126 not executable.
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            return Ok(ExitCode::from(code));
        }
    };
    let pid = child.id().and_then(|p| i32::try_from(p).ok());
    let sig = |kind| signal(kind).map_err(|e| CliError::io("cannot install signal handlers", e));
    let (mut term, mut int, mut hup) = (
        sig(SignalKind::terminate())?,
        sig(SignalKind::interrupt())?,
        sig(SignalKind::hangup())?,
    );
    loop {
        let forward = tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|e| CliError::io(format!("waiting for {name}"), e))?;
                return Ok(exit_code(status));
            }
            _ = term.recv() => libc::SIGTERM,
            _ = hup.recv() => libc::SIGHUP,
            // A Ctrl-C on the terminal reached CMD already (same process
            // group): sending it again would be a second Ctrl-C.
            _ = int.recv() => if in_foreground() { continue } else { libc::SIGINT },
        };
        if let Some(pid) = pid {
            // SAFETY: kill has no memory effects; `pid` is our child, not
            // yet reaped (we reap it only in `wait` above).
            unsafe {
                libc::kill(pid, forward);
            }
        }
    }
}

/// CMD's status as ours: its code, or 128 + the signal that ended it.
fn exit_code(status: ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1)),
        (None, Some(sig)) => ExitCode::from(u8::try_from(128 + sig).unwrap_or(255)),
        _ => ExitCode::FAILURE,
    }
}

/// Whether this process is in its terminal's foreground process group
/// (where the terminal sends Ctrl-C to every member, CMD included).
fn in_foreground() -> bool {
    // SAFETY: both calls only read process state; tcgetpgrp fails (-1) when
    // stdin is no terminal.
    unsafe {
        let fg = libc::tcgetpgrp(libc::STDIN_FILENO);
        fg != -1 && fg == libc::getpgrp()
    }
}

fn not_dumpable() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes no pointer and only lowers
    // what others may do to this process; CMD gets the default back at exec.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
}

/// What CMD must not inherit: every `CLAVIS_*` (the admin token among
/// them), the variables the config reads credentials and tokens from,
/// and real values in the usual key variables that get no placeholder.
fn removed_vars(loaded: &Loaded, vars: &[(String, String)]) -> Vec<String> {
    let set: Vec<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
    let mut removed: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("CLAVIS_"))
        .collect();
    if let Some(path) = &loaded.path {
        if let Ok(text) = std::fs::read_to_string(path) {
            removed.extend(secret_sources(&text));
        }
    }
    for name in crate::connector::variables::all_usual() {
        let real = std::env::var(name).is_ok_and(|v| !v.starts_with("clavis:"));
        if real && !set.contains(name) {
            eprintln!("clavis: note: {name} is not passed to the command: it held a key, and the agent gets placeholders only");
            removed.push((*name).to_owned());
        }
    }
    removed.sort();
    removed.dedup();
    removed
}

/// The `${NAME}` variables the config reads secrets from: credentials,
/// sensitive fields, agent tokens, the admin token.
pub(crate) fn secret_sources(config_text: &str) -> Vec<String> {
    let Ok(yaml) = serde_yaml::from_str::<serde_yaml::Value>(config_text) else {
        return Vec::new();
    };
    let mut texts: Vec<&str> = Vec::new();
    let seq = |v: Option<&serde_yaml::Value>| -> Vec<serde_yaml::Value> {
        v.and_then(|v| v.as_sequence().cloned()).unwrap_or_default()
    };
    let services = seq(yaml.get("services"));
    let agents = seq(yaml.get("agents"));
    for s in &services {
        if let Some(map) = s.get("credentials").and_then(|c| c.as_mapping()) {
            texts.extend(map.values().filter_map(|v| v.as_str()));
        }
        for f in s
            .get("fields")
            .and_then(|f| f.as_sequence())
            .into_iter()
            .flatten()
        {
            texts.extend(f.get("value").and_then(|v| v.as_str()));
        }
    }
    for a in &agents {
        texts.extend(a.get("token").and_then(|v| v.as_str()));
    }
    texts.extend(
        yaml.get("admin")
            .and_then(|a| a.get("token"))
            .and_then(|v| v.as_str()),
    );
    let mut names = Vec::new();
    for text in texts {
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            let escaped = rest[..start].ends_with('$');
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else { break };
            let name = &after[..end];
            if !escaped && !name.contains(':') && !name.is_empty() {
                names.push(name.to_owned());
            }
            rest = &after[end + 1..];
        }
    }
    names
}

/// A clavis started for CMD's lifetime.
struct Server {
    child: std::process::Child,
    log: PathBuf,
}

impl Server {
    /// `clavis serve` on the same config, its log appended to `clavis.log`
    /// beside the CA key; waits until it answers `/readyz`.
    fn start(loaded: &Loaded, client: &Client) -> Result<Server, CliError> {
        let exe = std::env::current_exe()
            .map_err(|e| CliError::io("cannot find the clavis binary to start it", e))?;
        let dir = loaded
            .settings
            .config
            .ca
            .key
            .parent()
            .unwrap_or(Path::new("."));
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| CliError::io(format!("cannot create {}", dir.display()), e))?;
        let log = dir.join("clavis.log");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| CliError::io(format!("cannot open {}", log.display()), e))?;
        let err = file
            .try_clone()
            .map_err(|e| CliError::io(format!("cannot open {}", log.display()), e))?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("serve");
        if let Some(path) = &loaded.path {
            cmd.arg("--config").arg(path);
        }
        cmd.args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err);
        // Its own process group: a Ctrl-C on the terminal is for CMD, not
        // for the clavis CMD talks through.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| CliError::io("cannot start clavis serve", e))?;
        eprintln!(
            "clavis: started clavis for this command (admin {}, log {})",
            client.base(),
            log.display()
        );
        let mut server = Server { child, log };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(CliError::Failed(format!(
                    "clavis serve exited ({status}) before it was ready; the end of {}:\n{}",
                    server.log.display(),
                    tail(&server.log)
                )));
            }
            if client.ready_blocking() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                server.stop(loaded);
                return Err(CliError::Failed(format!(
                    "clavis serve did not answer {}/readyz within {} s; see {}",
                    client.base(),
                    START_TIMEOUT.as_secs(),
                    server.log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM (clavis drains), then SIGKILL past the drain deadline.
    fn stop(&mut self, loaded: &Loaded) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill has no memory effects; the child is ours and not
            // yet reaped.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let grace = loaded.settings.config.limits.drain_timeout.0 + Duration::from_secs(5);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server ends with `clavis run`, even one killed with SIGKILL.
fn die_with_parent(cmd: &mut std::process::Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs between fork and exec and only calls
        // prctl, which is async-signal-safe and takes no pointer.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
    }
}

/// The last lines of a log, for an error message (logs hold no secret).
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_sources_are_credential_and_token_variables() {
        let text = r#"
ca: { cert: "${HOME}/certs/ca.pem" }
admin: { token: "${ADMIN_T}" }
services:
  - { name: a, connector: openai, credentials: { api_key: "${OPENAI_REAL}" } }
  - name: b
    connector: github
    credentials: { api_key: "${file:/run/gh}" }
    fields: [{ name: pin, value: "x${PIN}y$${NOT}", sensitive: true }]
agents:
  - { name: c, token: "${AGENT_T}", services: ["*"] }
"#;
        let mut names = secret_sources(text);
        names.sort();
        assert_eq!(names, ["ADMIN_T", "AGENT_T", "OPENAI_REAL", "PIN"]);
        assert!(secret_sources("not: [valid").is_empty());
    }
}
