//! clavis: a credential-injecting forward HTTPS proxy for AI agents.
//!
//! The agent holds a placeholder key and sets `HTTPS_PROXY`; clavis holds the
//! real key and adds it on the way out, only to the host its connector claims.
//!
//! ```text
//! agent ──CONNECT host:443──▶ proxy::serve ─▶ proxy::auth (407)
//!                                  │
//!                         proxy::connect ── unclaimed ─▶ tunnel bytes | 403
//!                                  │ claimed (connector::Registry)
//!                         proxy::mitm: SNI == host?  leaf from tls::mint
//!                                  │ each inner request (h1 or h2)
//!                         proxy::exchange:
//!                           authority == CONNECT host? (421)
//!                           → service: placeholder | scope | default (403)
//!                           → strip auth headers
//!                           → store::open → Secret (503)
//!                           → audit::record, fail closed (503)
//!                           → connector::Inject::apply
//!                           → upstream::Upstream::send, verified TLS, pooled (502/504)
//!                           → response streamed back
//! ```
//!
//! Crate map: [`config`] (YAML → typed config), [`app`] (state, serve),
//! [`proxy`] (the proxy port), [`connector`] (hosts, strip, inject),
//! [`tls`] (CA, leaf minting, upstream trust), [`upstream`] (dialer,
//! connection pool), [`store`] (sealed credentials), [`audit`], [`admin`]
//! (admin port), [`secret`] (zeroized, redacted values), [`error`] (every
//! error answer).

pub mod admin;
pub mod agent;
pub mod app;
pub mod audit;
pub mod body;
pub mod config;
pub mod connector;
pub mod error;
pub mod metrics;
pub mod proxy;
pub mod secret;
pub mod store;
pub mod tls;
pub mod totp;
pub mod upstream;
