//! The audit log: who used which credential, when. A bounded in-memory ring,
//! optionally mirrored to a JSON-lines file. A credential-using event is
//! recorded *before* the credential is used; if it cannot be written, the use
//! is refused (fail closed, as Vault does).

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::json;

use crate::config::AuditConfig;
use crate::identity::Actor;

/// The audit log could not be written: whatever was about to use a
/// credential must not (fail closed).
#[derive(Debug, thiserror::Error)]
#[error("the audit log cannot be written, so the credential was not used")]
pub(crate) struct AuditError(#[source] std::io::Error);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Inject,
    Proxy,
    Reveal,
    Totp,
    Search,
    Read,
    Store,
    Delete,
    Login,
    /// A token source fetched a token (SPEC §13.1).
    TokenRefresh,
    Denied,
    ApprovalRequested,
    ApprovalGranted,
    ApprovalDenied,
    ApprovalExpired,
    ApprovalUsed,
    /// The config was reloaded, or a reload was refused (SPEC §13.2).
    Reload,
}

impl Action {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Action::Inject => "inject",
            Action::Proxy => "proxy",
            Action::Reveal => "reveal",
            Action::Totp => "totp",
            Action::Search => "search",
            Action::Read => "read",
            Action::Store => "store",
            Action::Delete => "delete",
            Action::Login => "login",
            Action::TokenRefresh => "token_refresh",
            Action::Denied => "denied",
            Action::ApprovalRequested => "approval_requested",
            Action::ApprovalGranted => "approval_granted",
            Action::ApprovalDenied => "approval_denied",
            Action::ApprovalExpired => "approval_expired",
            Action::ApprovalUsed => "approval_used",
            Action::Reload => "reload",
        }
    }
}

/// What happened, without secrets: method, host, path (never the query), and
/// the upstream status once known.
#[derive(Debug, Default)]
pub(crate) struct Detail {
    pub(crate) method: Option<std::borrow::Cow<'static, str>>,
    /// Host and path in one allocation (there is an event per request, and
    /// the ring frees them long after, from cold memory): the text and
    /// where the host ends.
    target: Option<(Box<str>, usize)>,
    pub(crate) note: Option<String>,
    /// Whether what was done succeeded (a reload), where that is the point.
    pub(crate) ok: Option<bool>,
    status: AtomicU16,
}

/// The usual methods without an allocation per event.
fn static_method(method: &str) -> std::borrow::Cow<'static, str> {
    const KNOWN: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];
    match KNOWN.iter().find(|k| **k == method) {
        Some(k) => std::borrow::Cow::Borrowed(k),
        None => std::borrow::Cow::Owned(method.to_owned()),
    }
}

impl Detail {
    pub(crate) fn request(method: &str, host: &str, path: &str) -> Detail {
        Detail {
            method: Some(static_method(method)),
            target: Some((concat(host, path), host.len())),
            ..Detail::default()
        }
    }

    pub(crate) fn host(&self) -> Option<&str> {
        self.target.as_ref().map(|(text, at)| &text[..*at])
    }

    pub(crate) fn path(&self) -> Option<&str> {
        self.target.as_ref().map(|(text, at)| &text[*at..])
    }

    pub(crate) fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
    }

    /// An outcome (`ok`) and what it was.
    pub(crate) fn outcome(ok: bool, text: impl Into<String>) -> Detail {
        Detail {
            ok: Some(ok),
            note: Some(text.into()),
            ..Detail::default()
        }
    }

    pub(crate) fn note(text: impl Into<String>) -> Detail {
        Detail {
            note: Some(text.into()),
            ..Detail::default()
        }
    }
}

/// `a` then `b` in one exact-size allocation.
fn concat(a: &str, b: &str) -> Box<str> {
    let mut text = String::with_capacity(a.len() + b.len());
    text.push_str(a);
    text.push_str(b);
    text.into_boxed_str()
}

#[derive(Debug)]
pub(crate) struct Event {
    /// Its place in this process's audit log (SSE `id:`), set when recorded.
    seq: std::sync::atomic::AtomicU64,
    pub(crate) time: SystemTime,
    pub(crate) action: Action,
    /// The entry's name and the actor's label in one allocation, and where
    /// the name ends (see [`Detail`]).
    names: Box<str>,
    entry_len: usize,
    pub(crate) detail: Detail,
}

impl Event {
    pub(crate) fn new(action: Action, entry: &str, actor: &Actor<'_>, detail: Detail) -> Event {
        let (kind, name) = actor.parts();
        let mut names = String::with_capacity(entry.len() + kind.len() + name.len());
        names.push_str(entry);
        names.push_str(kind);
        names.push_str(name);
        Event {
            seq: std::sync::atomic::AtomicU64::new(0),
            time: SystemTime::now(),
            action,
            names: names.into_boxed_str(),
            entry_len: entry.len(),
            detail,
        }
    }

    /// Its sequence number in this process's log (from 1).
    pub(crate) fn seq(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }

    /// The entry (service) the event is about; empty when none.
    pub(crate) fn entry(&self) -> &str {
        &self.names[..self.entry_len]
    }

    /// `proxy:<agent>`, `api:<agent>`, `mcp:<agent>` or `admin`.
    pub(crate) fn actor(&self) -> &str {
        &self.names[self.entry_len..]
    }

    /// Fills in the status once the upstream answered (the in-memory copy).
    pub(crate) fn set_status(&self, status: u16) {
        self.detail.set_status(status);
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        let mut detail = serde_json::Map::new();
        let d = &self.detail;
        if let Some(method) = &d.method {
            detail.insert("method".into(), json!(method));
        }
        for (k, v) in [
            ("host", d.host()),
            ("path", d.path()),
            ("note", d.note.as_deref()),
        ] {
            if let Some(v) = v {
                detail.insert(k.into(), json!(v));
            }
        }
        if let Some(ok) = d.ok {
            detail.insert("ok".into(), json!(ok));
        }
        let status = d.status.load(Ordering::Relaxed);
        if status != 0 {
            detail.insert("status".into(), json!(status));
        }
        let mut event = json!({
            "time": humantime::format_rfc3339_millis(self.time).to_string(),
            "action": self.action.as_str(),
            "entry": self.entry(),
            "actor": self.actor(),
            "detail": detail,
        });
        // Its place in this process's log once recorded, the SSE `id:`: the
        // same event read from the stream (before the upstream answered)
        // and from GET /v1/audit (with the status) is one event.
        if self.seq() != 0 {
            event["id"] = json!(self.seq());
        }
        event
    }
}

pub(crate) struct AuditLog {
    ring: Mutex<VecDeque<Arc<Event>>>,
    cap: usize,
    file: Option<Mutex<std::fs::File>>,
    /// Every recorded event, for `GET /v1/audit/stream`.
    live: tokio::sync::broadcast::Sender<Arc<Event>>,
    next: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("cap", &self.cap)
            .finish_non_exhaustive()
    }
}

/// The most `GET /v1/audit` returns at once.
pub(crate) const MAX_QUERY: usize = 1000;

impl AuditLog {
    pub(crate) fn open(cfg: &AuditConfig) -> std::io::Result<AuditLog> {
        let file = match &cfg.file {
            // Never through a link planted at the path (0600 when created).
            Some(path) => Some(Mutex::new(crate::files::append(path)?)),
            None => None,
        };
        Ok(AuditLog {
            ring: Mutex::new(VecDeque::with_capacity(cfg.ring.min(1024))),
            cap: cfg.ring.max(1),
            file,
            live: tokio::sync::broadcast::channel(1024).0,
            next: std::sync::atomic::AtomicU64::new(1),
        })
    }

    /// Records an event; with a file configured, the line is written first,
    /// and a failed write is an [`AuditError`].
    pub(crate) fn record(&self, event: Event) -> Result<Arc<Event>, AuditError> {
        if let Some(file) = &self.file {
            let mut line = event.to_json().to_string();
            line.push('\n');
            let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
            f.write_all(line.as_bytes()).map_err(|e| {
                tracing::error!(error = %e, "audit file write failed; refusing credential use");
                AuditError(e)
            })?;
        }
        let event = Arc::new(event);
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        event
            .seq
            .store(self.next.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        if ring.len() >= self.cap {
            ring.pop_front();
        }
        ring.push_back(event.clone());
        drop(ring);
        // Nobody listening is fine: the stream is for whoever is.
        let _ = self.live.send(event.clone());
        Ok(event)
    }

    /// Events as they are recorded, and those already kept after `after`
    /// (a reconnecting stream's `Last-Event-ID`), oldest first.
    pub(crate) fn follow(
        &self,
        after: Option<u64>,
    ) -> (
        Vec<Arc<Event>>,
        tokio::sync::broadcast::Receiver<Arc<Event>>,
    ) {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.live.subscribe();
        let missed = match after {
            Some(after) => ring.iter().filter(|e| e.seq() > after).cloned().collect(),
            None => Vec::new(),
        };
        (missed, rx)
    }

    /// Newest first, filtered by exact actor and entry.
    pub(crate) fn query(
        &self,
        limit: usize,
        actor: Option<&str>,
        entry: Option<&str>,
    ) -> Vec<serde_json::Value> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter()
            .rev()
            .filter(|e| actor.is_none_or(|a| e.actor() == a))
            .filter(|e| entry.is_none_or(|n| e.entry() == n))
            .take(limit.min(MAX_QUERY))
            .map(|e| e.to_json())
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.ring.lock().map(|r| r.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Caller, Via};

    fn agent(name: &str) -> std::sync::Arc<crate::identity::Agent> {
        std::sync::Arc::new(crate::identity::Agent {
            name: name.into(),
            token: crate::secret::TokenDigest::of(b"t"),
            scope: crate::identity::Scope::All,
            reveal: false,
            in_flight: Default::default(),
            token_scopes: Default::default(),
        })
    }

    fn codex(via: Via) -> Actor<'static> {
        Caller::agent(agent("codex"), via).actor().into_owned()
    }

    fn bot() -> Actor<'static> {
        Caller::agent(agent("bot"), Via::Api).actor().into_owned()
    }

    fn log(ring: usize, file: Option<std::path::PathBuf>) -> AuditLog {
        AuditLog::open(&AuditConfig { ring, file }).unwrap()
    }

    mod record {
        use super::*;

        #[test]
        fn ring_is_bounded_and_newest_first() {
            let a = log(2, None);
            for i in 0..3 {
                a.record(Event::new(
                    Action::Inject,
                    &format!("s{i}"),
                    &Caller::admin(Via::Api).actor(),
                    Detail::default(),
                ))
                .unwrap();
            }
            let q = a.query(10, None, None);
            assert_eq!(q.len(), 2);
            assert_eq!(q[0]["entry"], "s2");
        }

        #[test]
        fn writes_json_lines_with_escaped_fields() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("audit.jsonl");
            let a = log(10, Some(path.clone()));
            let detail = Detail::request("GET", "api.openai.com", "/v1/x\n{\"forged\":1}");
            a.record(Event::new(
                Action::Inject,
                "svc",
                &codex(Via::Proxy),
                detail,
            ))
            .unwrap();
            let text = std::fs::read_to_string(path).unwrap();
            assert_eq!(text.lines().count(), 1);
            let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
            assert_eq!(v["actor"], "proxy:codex");
            assert_eq!(v["action"], "inject");
        }

        #[test]
        fn unwritable_file_fails_closed() {
            let a = AuditLog {
                ring: Mutex::new(VecDeque::new()),
                cap: 10,
                file: Some(Mutex::new(std::fs::File::open("/dev/null").unwrap())), // read-only handle
                live: tokio::sync::broadcast::channel(4).0,
                next: std::sync::atomic::AtomicU64::new(1),
            };
            let r = a.record(Event::new(
                Action::Inject,
                "s",
                &Caller::admin(Via::Api).actor(),
                Detail::default(),
            ));
            assert!(r.is_err());
            assert_eq!(a.len(), 0);
        }
    }

    mod event {
        use super::*;

        #[test]
        fn names_and_target_come_back_apart() {
            let e = Event::new(
                Action::Proxy,
                "my-openai",
                &codex(Via::Mcp),
                Detail::request("PATCH", "api.openai.com", "/v1/files/x"),
            );
            e.set_status(204);
            assert_eq!((e.entry(), e.actor()), ("my-openai", "mcp:codex"));
            let j = e.to_json();
            assert_eq!(j["detail"]["host"], "api.openai.com");
            assert_eq!(j["detail"]["path"], "/v1/files/x");
            assert_eq!(j["detail"]["method"], "PATCH");
            assert_eq!(j["detail"]["status"], 204);

            let e = Event::new(
                Action::Denied,
                "",
                &Caller::admin(Via::Api).actor(),
                Detail::note("no"),
            );
            assert_eq!((e.entry(), e.actor()), ("", "admin"));
            let j = e.to_json();
            assert_eq!(j["detail"], json!({"note": "no"}));
        }
    }

    mod query {
        use super::*;

        #[test]
        fn filters_by_actor_and_entry() {
            let a = log(10, None);
            a.record(Event::new(
                Action::Inject,
                "x",
                &Caller::admin(Via::Api).actor(),
                Detail::default(),
            ))
            .unwrap();
            a.record(Event::new(Action::Inject, "y", &bot(), Detail::default()))
                .unwrap();
            assert_eq!(a.query(10, Some("api:bot"), None).len(), 1);
            assert_eq!(a.query(10, None, Some("x")).len(), 1);
            assert_eq!(a.query(10, Some("admin"), Some("y")).len(), 0);
        }
    }
}
