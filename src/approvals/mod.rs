//! Approvals (SPEC §12): a request that meets an `approve` rule is held
//! while a person decides. Each approval is bound to the agent, the
//! service, the method, the URL and a SHA-256 of the body, so exactly that
//! request goes out, exactly once: approved within the hold, it is sent;
//! approved later, the agent sends the identical request again and it goes
//! out then (the approval is used); denied, or left undecided past its
//! `ttl`, it never does. Every change is audited, told to the webhook and
//! kept in the sealed snapshot, so pending approvals survive a restart.

mod notify;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::audit::{Action, AuditLog, Detail, Event};
use crate::config::ApprovalsConfig;
use crate::identity::Caller;
use crate::upstream::Upstream;

pub(crate) use notify::Notifier;

/// Decided approvals kept for the console and the API, besides pending ones.
const KEEP_DECIDED: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    Pending,
    Approved,
    Denied,
    Expired,
    Used,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
            Status::Expired => "expired",
            Status::Used => "used",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Status> {
        Some(match text {
            "pending" => Status::Pending,
            "approved" => Status::Approved,
            "denied" => Status::Denied,
            "expired" => Status::Expired,
            "used" => Status::Used,
            _ => return None,
        })
    }
}

/// What an approval is bound to: the identical request, from the same agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Binding {
    pub(crate) agent: String,
    pub(crate) service: String,
    pub(crate) method: String,
    pub(crate) url: String,
    pub(crate) body_sha256: String,
}

/// An approval as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) id: String,
    pub(crate) status: Status,
    #[serde(flatten)]
    pub(crate) binding: Binding,
    pub(crate) policy: String,
    pub(crate) rule: String,
    pub(crate) body_preview: String,
    /// Unix seconds.
    pub(crate) created_at: u64,
    pub(crate) expires_at: u64,
    pub(crate) decided_at: Option<u64>,
    pub(crate) decided_by: Option<String>,
    pub(crate) reason: Option<String>,
}

impl Record {
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let time = |t: u64| {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t)).to_string()
        };
        let mut v = serde_json::json!({
            "id": self.id,
            "status": self.status,
            "agent": self.binding.agent,
            "service": self.binding.service,
            "method": self.binding.method,
            "url": self.binding.url,
            "policy": self.policy,
            "rule": self.rule,
            "body_sha256": self.binding.body_sha256,
            "body_preview": self.body_preview,
            "created_at": time(self.created_at),
            "expires_at": time(self.expires_at),
            "decided_at": self.decided_at.map(time),
            "decided_by": self.decided_by,
            "reason": self.reason,
        });
        if self.status == Status::Expired {
            v["reason"] = serde_json::json!(self.reason.as_deref().unwrap_or("ttl passed"));
        }
        v
    }
}

/// Why a held request does not go out (now).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApprovalError {
    #[error("{request} waits for a person's approval (approval {id}, {why}). Send the identical request again once it is approved, or wait with GET /api/approvals/{id}?wait=30s on the admin port (MCP: wait_for_approval).")]
    Pending {
        id: String,
        request: String,
        why: String,
    },
    #[error("{request} was denied by {by} (approval {id}): {reason}")]
    Denied {
        id: String,
        request: String,
        by: String,
        reason: String,
    },
    #[error("{request}: approval {id} expired undecided; send the request again to ask anew")]
    Expired { id: String, request: String },
}

impl ApprovalError {
    pub(crate) fn id(&self) -> &str {
        match self {
            ApprovalError::Pending { id, .. }
            | ApprovalError::Denied { id, .. }
            | ApprovalError::Expired { id, .. } => id,
        }
    }
}

/// Why a person's decision was not taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecideError {
    #[error("no approval {0:?}")]
    NotFound(String),
    #[error("approval {id} is already {}, not pending", status.as_str())]
    NotPending { id: String, status: Status },
    #[error("a denial needs a reason")]
    NoReason,
}

struct Entry {
    record: Record,
    /// The status as it changes, for whoever waits on it.
    changed: watch::Sender<Status>,
}

/// Every approval, and what deciding one needs.
pub(crate) struct Approvals {
    config: ApprovalsConfig,
    entries: Mutex<VecDeque<Entry>>,
    notifier: Option<Notifier>,
    audit: Arc<AuditLog>,
    /// The snapshot is behind the state of the entries.
    dirty: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Approvals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approvals").finish_non_exhaustive()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn new_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 9];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    format!("apr_{}", crate::encoding::hex(&bytes))
}

/// The refusal of a request whose approval was denied.
fn denied(record: &Record, request: String) -> ApprovalError {
    ApprovalError::Denied {
        id: record.id.clone(),
        request,
        by: record.decided_by.clone().unwrap_or_default(),
        reason: record.reason.clone().unwrap_or_default(),
    }
}

impl Approvals {
    pub(crate) fn new(
        config: ApprovalsConfig,
        upstream: Arc<Upstream>,
        audit: Arc<AuditLog>,
        failures: prometheus_client::metrics::counter::Counter,
    ) -> Approvals {
        let notifier = config
            .webhook
            .as_ref()
            .map(|w| Notifier::new(w, upstream, failures));
        Approvals {
            config,
            entries: Mutex::new(VecDeque::new()),
            notifier,
            audit,
            dirty: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn audit(&self, action: Action, record: &Record, actor: &Caller, note: Option<String>) {
        // Host and path as every audit event has them: never the query.
        let uri = record.binding.url.parse::<http::Uri>().ok();
        let mut detail = Detail::request(
            &record.binding.method,
            uri.as_ref().and_then(|u| u.host()).unwrap_or_default(),
            uri.as_ref().map_or("", |u| u.path()),
        );
        detail.note = Some(match note {
            Some(n) => format!("approval {}: {n}", record.id),
            None => format!("approval {}", record.id),
        });
        let _ = self.audit.record(Event::new(
            action,
            &record.binding.service,
            &actor.actor(),
            detail,
        ));
    }

    /// The gate of a request an `approve` rule matched. `Ok` means an
    /// approval was used for it (it goes out now, once). Whether an
    /// approval is there and its use are one step under the lock, so of
    /// two identical requests only one can take it.
    pub(crate) async fn gate(
        &self,
        binding: Binding,
        policy: &str,
        rule: &str,
        preview: String,
        caller: &Caller,
    ) -> Result<(), ApprovalError> {
        // Messages name the path, never the query (its values may be
        // anything): they reach the audit log and the log line.
        let path = binding
            .url
            .parse::<http::Uri>()
            .map_or_else(|_| String::new(), |u| u.path().to_owned());
        let request = format!("{} {path}", binding.method);
        let (id, mut changed) = {
            let mut entries = self.lock();
            let now = now();
            self.expire(&mut entries, now);
            let latest = entries
                .iter_mut()
                .rev()
                .find(|e| e.record.binding == binding && e.record.status != Status::Used);
            match latest {
                Some(entry) if entry.record.status == Status::Approved => {
                    self.take(entry, caller);
                    return Ok(());
                }
                Some(entry)
                    if entry.record.status == Status::Denied && entry.record.expires_at > now =>
                {
                    return Err(denied(&entry.record, request));
                }
                Some(entry) if entry.record.status == Status::Pending => {
                    (entry.record.id.clone(), entry.changed.subscribe())
                }
                _ => self.create(
                    &mut entries,
                    binding.clone(),
                    policy,
                    rule,
                    &preview,
                    caller,
                    now,
                ),
            }
        };
        // Held: wait for a decision, at most `hold`.
        let _ = tokio::time::timeout(
            self.config.hold,
            changed.wait_for(|s| *s != Status::Pending),
        )
        .await;
        let mut entries = self.lock();
        let now = now();
        self.expire(&mut entries, now);
        let Some(entry) = entries.iter_mut().find(|e| e.record.id == id) else {
            return Err(ApprovalError::Expired { id, request });
        };
        match entry.record.status {
            Status::Approved => {
                self.take(entry, caller);
                Ok(())
            }
            Status::Denied => Err(denied(&entry.record, request)),
            Status::Expired => Err(ApprovalError::Expired { id, request }),
            Status::Pending => Err(ApprovalError::Pending {
                why: format!("not decided within {}s", self.config.hold.as_secs()),
                id,
                request,
            }),
            // An identical request held on the same approval took it: this
            // one is a request of its own, and needs an approval of its own.
            Status::Used => {
                let (new, _) =
                    self.create(&mut entries, binding, policy, rule, &preview, caller, now);
                Err(ApprovalError::Pending {
                    why: format!("approval {id} was used by an identical request"),
                    id: new,
                    request,
                })
            }
        }
    }

    /// A new pending approval: audited, told to the webhook.
    #[allow(clippy::too_many_arguments)]
    fn create(
        &self,
        entries: &mut VecDeque<Entry>,
        binding: Binding,
        policy: &str,
        rule: &str,
        preview: &str,
        caller: &Caller,
        now: u64,
    ) -> (String, watch::Receiver<Status>) {
        let record = Record {
            id: new_id(),
            status: Status::Pending,
            binding,
            policy: policy.to_owned(),
            rule: rule.to_owned(),
            body_preview: preview.to_owned(),
            created_at: now,
            expires_at: now + self.config.ttl.as_secs(),
            decided_at: None,
            decided_by: None,
            reason: None,
        };
        self.audit(
            Action::ApprovalRequested,
            &record,
            caller,
            Some(format!("policy {policy:?} rule {rule:?}")),
        );
        if let Some(n) = &self.notifier {
            n.send(Action::ApprovalRequested, &record);
        }
        let (changed, rx) = watch::channel(Status::Pending);
        let id = record.id.clone();
        entries.push_back(Entry { record, changed });
        self.trim(entries);
        self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
        (id, rx)
    }

    /// Approved → used, once: the one request that wins sends. Called
    /// with the entries locked.
    fn take(&self, entry: &mut Entry, caller: &Caller) {
        entry.record.status = Status::Used;
        entry.changed.send_replace(Status::Used);
        self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
        self.audit(Action::ApprovalUsed, &entry.record, caller, None);
    }

    /// A person's decision on a pending approval.
    pub(crate) fn decide(
        &self,
        id: &str,
        approve: bool,
        by: &Caller,
        reason: Option<String>,
    ) -> Result<Record, DecideError> {
        let reason = reason.filter(|r| !r.trim().is_empty());
        if !approve && reason.is_none() {
            return Err(DecideError::NoReason);
        }
        let mut entries = self.lock();
        self.expire(&mut entries, now());
        let entry = entries
            .iter_mut()
            .find(|e| e.record.id == id)
            .ok_or_else(|| DecideError::NotFound(id.to_owned()))?;
        if entry.record.status != Status::Pending {
            return Err(DecideError::NotPending {
                id: id.to_owned(),
                status: entry.record.status,
            });
        }
        let status = if approve {
            Status::Approved
        } else {
            Status::Denied
        };
        let now = now();
        entry.record.status = status;
        entry.record.decided_at = Some(now);
        if approve {
            // The agent has a whole ttl from the decision to send the
            // request again; unused by then, the approval expires.
            entry.record.expires_at = now + self.config.ttl.as_secs();
        }
        entry.record.decided_by = Some(by.actor().to_string());
        entry.record.reason = reason;
        entry.changed.send_replace(status);
        let record = entry.record.clone();
        drop(entries);
        self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
        let action = if approve {
            Action::ApprovalGranted
        } else {
            Action::ApprovalDenied
        };
        self.audit(action, &record, by, record.reason.clone());
        if let Some(n) = &self.notifier {
            n.send(action, &record);
        }
        Ok(record)
    }

    /// Approvals past their `expires_at` while pending (undecided), or
    /// approved but not used, become expired (audited).
    fn expire(&self, entries: &mut VecDeque<Entry>, now: u64) {
        for entry in entries.iter_mut() {
            let note = match entry.record.status {
                Status::Pending => "not decided within the ttl",
                Status::Approved => "approved, but not used within the ttl",
                _ => continue,
            };
            if entry.record.expires_at <= now {
                entry.record.status = Status::Expired;
                entry.changed.send_replace(Status::Expired);
                self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
                self.audit(
                    Action::ApprovalExpired,
                    &entry.record,
                    &Caller::system(),
                    Some(note.to_owned()),
                );
                if let Some(n) = &self.notifier {
                    n.send(Action::ApprovalExpired, &entry.record);
                }
            }
        }
    }

    /// Runs the expiry now (the sweeper calls it every second).
    pub(crate) fn sweep(&self) {
        let mut entries = self.lock();
        self.expire(&mut entries, now());
    }

    /// Keeps every pending and approved one, and the newest decided ones.
    fn trim(&self, entries: &mut VecDeque<Entry>) {
        let decided = entries
            .iter()
            .filter(|e| !matches!(e.record.status, Status::Pending | Status::Approved))
            .count();
        let mut drop = decided.saturating_sub(KEEP_DECIDED);
        entries.retain(|e| {
            let old = !matches!(e.record.status, Status::Pending | Status::Approved);
            if old && drop > 0 {
                drop -= 1;
                return false;
            }
            true
        });
    }

    pub(crate) fn get(&self, id: &str) -> Option<Record> {
        self.lock()
            .iter()
            .find(|e| e.record.id == id)
            .map(|e| e.record.clone())
    }

    /// Newest first, optionally one status.
    pub(crate) fn list(&self, status: Option<Status>) -> Vec<Record> {
        let mut entries = self.lock();
        self.expire(&mut entries, now());
        entries
            .iter()
            .rev()
            .filter(|e| status.is_none_or(|s| e.record.status == s))
            .map(|e| e.record.clone())
            .collect()
    }

    /// Waits until `id` is decided or `timeout` passes; its record then.
    pub(crate) async fn wait(&self, id: &str, timeout: Duration) -> Option<Record> {
        let mut changed = {
            let entries = self.lock();
            entries
                .iter()
                .find(|e| e.record.id == id)?
                .changed
                .subscribe()
        };
        let _ = tokio::time::timeout(timeout, changed.wait_for(|s| *s != Status::Pending)).await;
        self.get(id)
    }

    /// The records to keep across a restart, if they changed.
    pub(crate) fn to_snapshot(&self) -> Option<serde_json::Value> {
        if !self.dirty.swap(false, std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let entries = self.lock();
        let records: Vec<&Record> = entries.iter().map(|e| &e.record).collect();
        serde_json::to_value(records).ok()
    }

    pub(crate) fn restore(&self, saved: &serde_json::Value) {
        let Ok(records) = serde_json::from_value::<Vec<Record>>(saved.clone()) else {
            tracing::warn!("the snapshot's approvals are unreadable; starting without them");
            return;
        };
        let mut entries = self.lock();
        for record in records {
            let (changed, _) = watch::channel(record.status);
            entries.push_back(Entry { record, changed });
        }
        self.expire(&mut entries, now());
    }
}

/// The preview of a held body the approver sees: at most 4 KiB of it, as
/// text, never a stored credential.
pub(crate) fn preview(body: &[u8], anchors: Option<&crate::redact::Anchors>) -> String {
    const MAX: usize = 4096;
    if anchors.is_some_and(|a| a.contains_anchor(body)) {
        return "[REDACTED: the body holds a stored credential]".into();
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]).into_owned();
    if body.len() > MAX {
        format!("{text}… ({} bytes in all)", body.len())
    } else {
        text
    }
}

#[cfg(test)]
mod tests;
