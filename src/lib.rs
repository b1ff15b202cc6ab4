//! clavis: a credential-injecting forward HTTPS proxy for AI agents.
//!
//! The agent holds a placeholder key and sets `HTTPS_PROXY`; clavis holds the
//! real key and adds it on the way out, only to the host its connector claims.
//!
//! ```text
//! agent ──CONNECT host:443──▶ proxy::serve ─▶ proxy::auth (407) → identity::Caller
//!                                  │
//!                         proxy::connect ── unclaimed ─▶ tunnel bytes | 403
//!                                  │ claimed (connector::Registry)
//!                         proxy::mitm: SNI == host?  leaf from tls::mint
//!                                  │ each inner request (h1 or h2), checked (421)
//!                         proxy::exchange::forward:
//!                           admit      service: placeholder | scope | default (403), in flight (429)
//!                           prepare    strip hop-by-hop + auth headers, URI from the target
//!                           decide     TRACE, reserved paths
//!                           authorize  store::open once → plan → audit (fail closed, 503) → inject
//!                           send       upstream::Upstream, verified TLS, pooled (502/504)
//!                           relay      proxy::scrub masks echoes; record ends with the body
//! ```
//!
//! Modules form a one-way stack (a test, `tests/layers.rs`, keeps it so):
//!
//! ```text
//! app, cli, fuzzing                     serve both ports, shutdown, hardening; the commands; fuzz entry points
//! proxy, admin                          the two ports (admin calls proxy::exchange)
//! state, error, reload                  the shared handle (live catalog swapped by reload); ProxyError by cause
//! catalog, tokens                       config + connectors → services, the live catalog; fetched tokens
//! connector, store, tls, upstream, audit
//! config                                YAML → typed Config
//! secret, body, encoding, files, host, json, credentials, redact, identity, server, metrics, totp
//! ```
//!
//! Only what the binary and the integration tests need is public: the rest
//! is `pub(crate)`, so rustc reports what nothing calls.

mod admin;
mod app;
mod approvals;
mod audit;
mod body;
mod budget;
mod catalog;
/// The onboarding and admin commands (`env`, `run`, `services`, …) the
/// binary dispatches to.
pub mod cli;
mod config;
mod connector;
mod credentials;
mod encoding;
mod error;
mod files;
/// Entry points for the fuzz targets and property tests; not API.
#[doc(hidden)]
pub mod fuzzing;
mod host;
mod identity;
mod json;
mod metrics;
mod policy;
mod proxy;
mod redact;
mod refresh;
mod reload;
mod secret;
mod server;
mod state;
mod store;
mod tls;
mod tokens;
mod totp;
mod upstream;
mod vault;

pub use app::{harden_process, serve};
pub use catalog::{LoadError, Settings};
pub use config::{Config, ConfigError, ConfigErrors, Env, ProcessEnv};
pub use state::{StartError, State};
pub use tls::Ca;
