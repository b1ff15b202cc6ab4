//! The `clavis` binary: parses the command line, sets up logging, and hands
//! over to the library. Exit codes: 0 ok, 1 runtime failure, 2 bad config.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use clavis::{LoadError, ProcessEnv, Settings};

#[derive(Parser)]
#[command(
    name = "clavis",
    version,
    about = "Credential-injecting HTTPS proxy for AI agents"
)]
struct Cli {
    /// Log format; default: text on a terminal, json otherwise.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy and the admin port until SIGINT/SIGTERM.
    Serve {
        /// Config file (default: ./clavis.yaml if present, else built-in defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Manage the clavis CA.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and report every error with its key and line.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Exit 0 if the clavis serving this config answers `/readyz` with 200:
    /// a probe for images without curl (Kubernetes `exec` probes).
    Health {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Ask this admin address instead of the config's `admin.listen`.
        #[arg(long)]
        admin: Option<SocketAddr>,
    },
    /// Print the environment that points an agent at clavis: proxy and CA
    /// variables, and a placeholder in each service's usual variable.
    Env(clavis::cli::EnvArgs),
    /// Run a command with that environment, through the running clavis of
    /// the config or one started for the command's lifetime.
    Run(clavis::cli::RunArgs),
    /// Services of the running clavis: list, add, rm, set-credential.
    Services(clavis::cli::ServicesArgs),
    /// Agents of the running clavis.
    Agents(clavis::cli::AgentsArgs),
    /// The audit log of the running clavis; --follow for new events.
    Audit(clavis::cli::AuditArgs),
    /// Requests held for approval: list, approve, deny.
    Approvals(clavis::cli::ApprovalsArgs),
    /// Budgets and their use.
    Budgets(clavis::cli::BudgetsArgs),
    /// Policies: `test` judges one request offline, as the proxy would.
    Policy(clavis::cli::PolicyArgs),
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create the CA if it does not exist yet.
    Init,
    /// Print the CA certificate (PEM) and its SHA-256 fingerprint.
    Show,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            let message = report(&e);
            tracing::error!("{message}");
            eprintln!("clavis: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each once: most of clavis's errors already
/// name their cause in their own message, which `{:#}` would repeat.
fn report(e: &anyhow::Error) -> String {
    let mut message = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !message.contains(&cause) {
            message = format!("{message}: {cause}");
        }
    }
    message
}

fn config_path(explicit: Option<PathBuf>) -> Option<PathBuf> {
    explicit.or_else(|| {
        let default = PathBuf::from("clavis.yaml");
        default.exists().then_some(default)
    })
}

fn load(path: Option<PathBuf>) -> Result<Settings, ExitCode> {
    let path = config_path(path);
    Settings::load(path.as_deref(), &ProcessEnv).map_err(|errors| invalid(path, &errors))
}

fn invalid(path: Option<PathBuf>, errors: &clavis::ConfigErrors) -> ExitCode {
    let name = path.map_or("built-in defaults".into(), |p| p.display().to_string());
    eprintln!("clavis: invalid config ({name}):");
    for e in &errors.0 {
        eprintln!("  {e}");
    }
    ExitCode::from(2)
}

/// As [`load`], reading the secrets the config references in Vault first
/// (`serve`, `check`): one that cannot be read is a config error, exit 2.
fn load_resolved(
    path: Option<PathBuf>,
    runtime: &tokio::runtime::Runtime,
) -> Result<Settings, ExitCode> {
    let path = config_path(path);
    let env = std::sync::Arc::new(ProcessEnv);
    match runtime.block_on(Settings::load_resolved(path.as_deref(), env)) {
        Ok(settings) => Ok(settings),
        Err(LoadError::Config(errors)) => Err(invalid(path, &errors)),
        Err(LoadError::Vault(e)) => {
            tracing::error!(error = %e, "cannot read a secret from Vault");
            eprintln!("clavis: cannot read a secret from Vault: {e}");
            Err(ExitCode::from(2))
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Env(args) => Ok(clavis::cli::env(args)),
        Command::Run(args) => Ok(clavis::cli::run(args)),
        Command::Services(args) => Ok(clavis::cli::services(args)),
        Command::Agents(args) => Ok(clavis::cli::agents(args)),
        Command::Audit(args) => Ok(clavis::cli::audit(args)),
        Command::Approvals(args) => Ok(clavis::cli::approvals(args)),
        Command::Budgets(args) => Ok(clavis::cli::budgets(args)),
        Command::Policy(args) => Ok(clavis::cli::policy(args)),
        Command::Check { config } => {
            let runtime = runtime(1).context("cannot start the async runtime")?;
            let settings = match load_resolved(config, &runtime) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            for warning in &settings.config.warnings {
                eprintln!("warning: {warning}");
            }
            eprintln!("config ok");
            Ok(ExitCode::SUCCESS)
        }
        Command::Ca { command, config } => {
            let settings = match load(config) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let ca_config = &settings.config.ca;
            let ca = clavis::Ca::load_or_create(ca_config)?;
            match command {
                CaCommand::Init => eprintln!("CA ready at {}", ca_config.cert.display()),
                CaCommand::Show => {
                    use std::io::Write;
                    let mut out = std::io::stdout().lock();
                    write!(out, "{}", ca.cert_pem)?;
                    writeln!(out, "SHA-256 fingerprint: {}", ca.fingerprint())?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Health { config, admin } => {
            let addr = match admin {
                Some(addr) => addr,
                None => match load(config) {
                    Ok(s) => s.config.admin.listen,
                    Err(code) => return Ok(code),
                },
            };
            match probe_ready(addr) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(why) => {
                    eprintln!("clavis: not ready at {addr}: {why:#}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Serve { config } => {
            let workers = match workers() {
                Ok(n) => n,
                Err(e) => {
                    eprintln!("clavis: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            let runtime = runtime(workers).context("cannot start the async runtime")?;
            let settings = match load_resolved(config, &runtime) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            runtime.block_on(serve(settings))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `GET /readyz` on the admin port, answered `200` within two seconds. An
/// unspecified listen address (`0.0.0.0`, `[::]`) is asked on loopback.
fn probe_ready(mut addr: SocketAddr) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let timeout = std::time::Duration::from_secs(2);
    let mut conn = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    conn.write_all(request.as_bytes())?;
    let mut head = [0u8; 12];
    conn.read_exact(&mut head)?;
    match &head {
        b"HTTP/1.1 200" => Ok(()),
        _ => anyhow::bail!("/readyz answered {:?}", String::from_utf8_lossy(&head[9..])),
    }
}

/// One worker per CPU clavis may use (its affinity mask and cgroup quota),
/// or `TOKIO_WORKER_THREADS`.
fn workers() -> anyhow::Result<usize> {
    match std::env::var("TOKIO_WORKER_THREADS") {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => anyhow::bail!("TOKIO_WORKER_THREADS must be a positive integer, not {v:?}"),
        },
        Err(_) => Ok(std::thread::available_parallelism().map_or(1, usize::from)),
    }
}

/// On a single CPU, the usual sidecar budget, the single-threaded scheduler
/// does the same work with less bookkeeping (about 5 % less CPU per proxied
/// request, measured with `bench/`).
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    clavis::harden_process();
    let (proxy_listen, admin_listen) = (settings.config.proxy.listen, settings.config.admin.listen);
    let proxy = tokio::net::TcpListener::bind(proxy_listen)
        .await
        .with_context(|| format!("cannot listen on proxy.listen {proxy_listen}"))?;
    let admin = tokio::net::TcpListener::bind(admin_listen)
        .await
        .with_context(|| format!("cannot listen on admin.listen {admin_listen}"))?;
    let state = clavis::State::new(settings, proxy.local_addr()?, admin.local_addr()?)?;
    clavis::serve(state, proxy, admin, shutdown_signal()).await;
    Ok(())
}

/// The first SIGINT/SIGTERM starts the drain; a second one exits at once.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutdown requested; a second signal exits at once");
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        std::process::exit(130);
    });
}

fn init_logging(format: Option<LogFormat>) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Text) => false,
        None => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        builder.init();
    }
}
