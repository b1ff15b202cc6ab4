//! The command lines of SPEC §14, as clap parses them. No secret is ever an
//! argument: an agent token comes from a file, a credential from stdin or
//! a prompt.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

/// Which agent the environment is for.
#[derive(Debug, Clone, Args)]
pub struct AgentOpts {
    /// Config file (default: ./clavis.yaml if present, else built-in defaults).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The agent (from the config's `agents`) whose proxy credentials to use.
    #[arg(long, requires = "token_file")]
    pub agent: Option<String>,
    /// File holding that agent's token (never passed on the command line).
    #[arg(long, requires = "agent")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// POSIX sh, bash, zsh: `export NAME='value'`.
    #[default]
    Sh,
    /// fish: `set -gx NAME 'value'`.
    Fish,
    /// PowerShell: `$env:NAME = 'value'`.
    Pwsh,
}

/// `clavis env`.
#[derive(Debug, Clone, Args)]
pub struct EnvArgs {
    #[command(flatten)]
    pub agent: AgentOpts,
    /// The shell whose syntax to print.
    #[arg(long, value_enum, default_value_t = Shell::Sh)]
    pub shell: Shell,
}

/// `clavis run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub agent: AgentOpts,
    /// The command and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<OsString>,
}

/// Where the admin API is and how to sign in: from the config unless given.
#[derive(Debug, Clone, Args)]
pub struct AdminOpts {
    /// Config file (default: ./clavis.yaml if present, else built-in defaults).
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    /// The admin API (`http://127.0.0.1:1984` or `127.0.0.1:1984`) instead of
    /// the config's `admin.listen`. The token comes from CLAVIS_ADMIN_TOKEN,
    /// else the config's `admin.token`, else `admin.token` beside the CA key.
    #[arg(long, global = true, value_name = "URL")]
    pub admin: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `clavis services`.
#[derive(Debug, Clone, Args)]
pub struct ServicesArgs {
    #[command(flatten)]
    pub admin: AdminOpts,
    #[command(subcommand)]
    pub command: ServicesCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ServicesCommand {
    /// List the services (never a secret).
    List,
    /// Register a service bound to a connector.
    Add {
        name: String,
        /// The connector (`openai`, `anthropic`, `github`, … or a user-defined one).
        #[arg(long)]
        connector: String,
        /// The service used when an agent has several for this connector.
        #[arg(long)]
        default: bool,
    },
    /// Remove a service and its sealed credentials.
    Rm { name: String },
    /// Store a service's credential, read from stdin (or a prompt on a
    /// terminal); never from the command line. Several fields: stdin holds
    /// a JSON object `{"field": "value", …}`.
    SetCredential {
        name: String,
        /// The credential field (default `api_key`); repeat for several.
        #[arg(long = "field", value_name = "FIELD")]
        fields: Vec<String>,
    },
}

/// `clavis agents`.
#[derive(Debug, Clone, Args)]
pub struct AgentsArgs {
    #[command(flatten)]
    pub admin: AdminOpts,
    #[command(subcommand)]
    pub command: AgentsCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum AgentsCommand {
    /// List the agents, their services and whether they may reveal secrets.
    List,
}

/// `clavis audit`.
#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub admin: AdminOpts,
    /// How many of the newest events to show.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Only events of this actor (`proxy:codex`, `admin`, …).
    #[arg(long)]
    pub actor: Option<String>,
    /// Only events about this service.
    #[arg(long)]
    pub entry: Option<String>,
    /// Keep printing new events as they happen (until interrupted).
    #[arg(long, short)]
    pub follow: bool,
}

/// `clavis approvals`.
#[derive(Debug, Clone, Args)]
pub struct ApprovalsArgs {
    #[command(flatten)]
    pub admin: AdminOpts,
    #[command(subcommand)]
    pub command: ApprovalsCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ApprovalsCommand {
    /// List approvals (default: pending ones).
    List {
        /// pending, approved, denied, expired, used, or all.
        #[arg(long, default_value = "pending")]
        status: String,
    },
    /// Approve a held request: it is sent upstream once.
    Approve {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deny a held request, saying why (the agent reads the reason).
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

/// `clavis budgets`.
#[derive(Debug, Clone, Args)]
pub struct BudgetsArgs {
    #[command(flatten)]
    pub admin: AdminOpts,
    #[command(subcommand)]
    pub command: BudgetsCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum BudgetsCommand {
    /// Every budget with its use in the current window.
    List,
}

/// `clavis policy`.
#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum PolicyCommand {
    /// What the config's policies say of one request, judged as the proxy
    /// would judge it: the decision, the rule, and why. Exit 0 allow, 1
    /// deny, 3 approve, 2 a bad config or input.
    Test(PolicyTestArgs),
}

/// `clavis policy test`.
#[derive(Debug, Clone, Args)]
pub struct PolicyTestArgs {
    /// Config file (default: ./clavis.yaml if present, else built-in defaults).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The agent making the request (omitted: an anonymous local caller,
    /// when `proxy.require_auth` is off).
    #[arg(long)]
    pub agent: Option<String>,
    /// The service the request uses.
    #[arg(long)]
    pub service: String,
    /// The request: 'METHOD URL' (one argument or two), e.g.
    /// 'DELETE https://api.github.com/repos/acme/app'.
    #[arg(required = true, num_args = 1..=2, value_name = "METHOD URL")]
    pub request: Vec<String>,
    /// The request body: JSON or form text, or @FILE to read it from a file.
    #[arg(long, value_name = "TEXT|@FILE")]
    pub body: Option<String>,
    /// The body's Content-Type (default: application/json when the body
    /// starts with `{` or `[`, else application/x-www-form-urlencoded).
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}
