//! The onboarding and admin commands behind the binary (SPEC §14): `clavis
//! env` and `clavis run` point an agent at the clavis its config describes;
//! `clavis services|agents|audit|approvals|budgets` drive the admin API from
//! the shell; `clavis policy test` judges a request offline with the
//! proxy's own policy code. `main.rs` parses and dispatches; everything else is here.
//!
//! ```text
//! env      config → vars (proxy, CA, placeholders) → shell::render
//! run      config → attach (GET /readyz) or start `clavis serve` → vars →
//!          spawn CMD, forward signals, exit with its status, stop the server
//! admin    config → client (address, token) → REST call → table | JSON
//! policy   config → agent × service → the exchange's own judging → exit code
//! ```

mod admin;
mod args;
mod client;
mod follow;
mod input;
mod inputs;
mod jks;
mod policy;
mod run;
mod services;
mod shell;
mod table;
mod vars;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub use args::{
    AdminOpts, AgentsArgs, ApprovalsArgs, AuditArgs, BudgetsArgs, EnvArgs, PolicyArgs,
    PolicyCommand, PolicyTestArgs, RunArgs, ServicesArgs,
};

use crate::catalog::Settings;
use crate::config::{ConfigErrors, ProcessEnv};

/// What went wrong in a command, named so the user can fix it; never a
/// secret.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    #[error("invalid config ({source_name}):\n{errors}")]
    Config { source_name: String, errors: String },
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach the admin API at {base}: {why} (is clavis running? `clavis serve`, or `clavis run -- CMD`)")]
    Unreachable { base: String, why: String },
    #[error("{method} {path}: {status} {message}")]
    Api {
        method: String,
        path: String,
        status: u16,
        message: String,
    },
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> CliError {
        CliError::Io {
            what: what.into(),
            source,
        }
    }

    fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Config { .. } | CliError::Usage(_) => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    }
}

/// Prints the error as `clavis: …` and turns it into the exit status.
fn finish(result: Result<ExitCode, CliError>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("clavis: {e}");
            e.exit_code()
        }
    }
}

/// `clavis env`: the agent's environment, as shell code.
pub fn env(args: EnvArgs) -> ExitCode {
    finish(vars::print(args))
}

/// `clavis run -- CMD`: CMD with that environment; exits with its status.
pub fn run(args: RunArgs) -> ExitCode {
    finish(run::run(args))
}

/// `clavis services …`.
pub fn services(args: ServicesArgs) -> ExitCode {
    finish(services::services(args))
}

/// `clavis agents …`.
pub fn agents(args: AgentsArgs) -> ExitCode {
    finish(admin::agents(args))
}

/// `clavis audit …`.
pub fn audit(args: AuditArgs) -> ExitCode {
    finish(admin::audit(args))
}

/// `clavis approvals …`.
pub fn approvals(args: ApprovalsArgs) -> ExitCode {
    finish(admin::approvals(args))
}

/// `clavis budgets …`.
pub fn budgets(args: BudgetsArgs) -> ExitCode {
    finish(admin::budgets(args))
}

/// `clavis policy test …`: exit 0 allow, 1 deny, 3 approve, 2 bad input.
pub fn policy(args: PolicyArgs) -> ExitCode {
    match args.command {
        PolicyCommand::Test(test) => finish(policy::test(test)),
    }
}

/// The config file a command reads: `--config`, else `./clavis.yaml` if it
/// exists, else none (built-in defaults), as `serve` decides.
pub(crate) fn config_path(explicit: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(p) => Some(p.to_owned()),
        None => {
            let default = PathBuf::from("clavis.yaml");
            default.exists().then_some(default)
        }
    }
}

/// A validated config and the file it came from (`None`: built-in defaults).
pub(crate) struct Loaded {
    pub(crate) settings: Settings,
    pub(crate) path: Option<PathBuf>,
}

/// The config a command uses ([`config_path`]), validated.
pub(crate) fn load_config(explicit: Option<&Path>) -> Result<Loaded, CliError> {
    let path = config_path(explicit);
    let settings = load(path.as_deref())?;
    Ok(Loaded { settings, path })
}

/// The validated config, or every error with its key and line.
fn load(path: Option<&Path>) -> Result<Settings, CliError> {
    Settings::load(path, &ProcessEnv).map_err(|ConfigErrors(errors)| CliError::Config {
        source_name: path.map_or("built-in defaults".into(), |p| p.display().to_string()),
        errors: errors
            .iter()
            .map(|e| format!("  {e}"))
            .collect::<Vec<_>>()
            .join("\n"),
    })
}

/// `path` made absolute against the working directory: the agent may run
/// somewhere else.
pub(crate) fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_owned();
    }
    match std::env::current_dir() {
        Ok(dir) => dir.join(path),
        Err(_) => path.to_owned(),
    }
}

/// A single-threaded runtime for the client side of a command.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::io("cannot start the async runtime", e))
}

/// Writes to stdout, locked; a closed pipe (`| head`) ends quietly.
pub(crate) fn out(text: &str) -> Result<(), CliError> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CliError::io("cannot write to stdout", e))
        }
        _ => Ok(()),
    }
}
