//! What starts a reload besides `POST /v1/reload`: `SIGHUP`, a change seen
//! by inotify in the directory of the config file or of a `${file:}` it
//! read (directories, not files: an editor's rename and Kubernetes' swap
//! of the `..data` link replace the file), and a poll every
//! `reload.poll` that hashes the files, for mounts where inotify says
//! nothing. A burst of events is one reload; a poll that finds the same
//! fingerprint does nothing.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::{reload, Trigger};
use crate::identity::Caller;
use crate::state::State;

/// Events closer together than this are one change (an editor writes a
/// file in several calls; a `..data` swap is a create, a rename, a delete).
const SETTLE: Duration = Duration::from_millis(250);

/// Starts the triggers, if clavis runs on a config file; they stop with
/// `stop`. Called before clavis says it is ready, so a `SIGHUP` sent after
/// that is never the default (which ends the process).
pub(crate) fn spawn(state: State, stop: watch::Receiver<bool>) {
    let Ok(applied) = state.applied.try_lock() else {
        return;
    };
    let Some(source) = applied.source.clone() else {
        return;
    };
    drop(applied);
    let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with POST /v1/reload");
            None
        }
    };
    let (kick, kicked) = mpsc::channel(1);
    let watcher = if state.config.reload.watch {
        Watcher::new(kick)
    } else {
        None
    };
    tracing::info!(
        config = %source.path.display(),
        watch = watcher.is_some(),
        poll = ?state.config.reload.poll,
        "reloading on SIGHUP, POST /v1/reload and file changes"
    );
    tokio::spawn(run(state, stop, hangup, watcher, kicked));
}

async fn run(
    state: State,
    mut stop: watch::Receiver<bool>,
    mut hangup: Option<tokio::signal::unix::Signal>,
    mut watcher: Option<Watcher>,
    mut kicked: mpsc::Receiver<()>,
) {
    if let Some(w) = &mut watcher {
        w.follow(&state).await;
    }
    // The first tick of an interval is at once; a period of a day stands in
    // for "never" when polling is off.
    let period = state
        .config
        .reload
        .poll
        .unwrap_or(Duration::from_secs(86_400));
    let mut poll = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let polling = state.config.reload.poll.is_some();
    let system = Caller::system();
    loop {
        let trigger = tokio::select! {
            _ = stop.changed() => return,
            Some(()) = recv_signal(&mut hangup) => Trigger::Signal,
            Some(()) = kicked.recv() => {
                settle(&mut kicked).await;
                Trigger::Files
            }
            _ = poll.tick(), if polling => Trigger::Files,
        };
        // The outcome is logged, audited and counted by `reload`.
        let _ = reload(&state, trigger, &system).await;
        if let Some(w) = &mut watcher {
            w.follow(&state).await;
        }
    }
}

async fn recv_signal(hangup: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match hangup {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Waits until no event came for [`SETTLE`].
async fn settle(kicked: &mut mpsc::Receiver<()>) {
    while let Ok(Some(())) = tokio::time::timeout(SETTLE, kicked.recv()).await {}
}

/// Whether an event can mean that a file's content or name changed.
/// Opening, reading and closing a file unwritten cannot, and must not
/// kick: the check a kick starts reads the files, and inotify reports
/// those reads, which would start the next check, four times a second for
/// as long as clavis runs (each on the proxy's one core).
fn may_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// inotify on the directories that hold the config file and the files it
/// reads; any event that may change one is a kick (the fingerprint decides).
struct Watcher {
    inner: notify::RecommendedWatcher,
    dirs: BTreeSet<PathBuf>,
}

impl Watcher {
    fn new(kick: mpsc::Sender<()>) -> Option<Watcher> {
        let handler = move |event: notify::Result<notify::Event>| {
            // An error (the kernel's queue overflowed) may hide a change.
            if event.as_ref().map_or(true, |e| may_change(&e.kind)) {
                // Full means a kick is already waiting: one is enough.
                let _ = kick.try_send(());
            }
        };
        match notify::recommended_watcher(handler) {
            Ok(inner) => Some(Watcher {
                inner,
                dirs: BTreeSet::new(),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the config files; polling only (reload.poll)");
                None
            }
        }
    }

    /// Watches the directories of the files the live config was read
    /// from (a reload may name new ones).
    async fn follow(&mut self, state: &State) {
        let applied = state.applied.lock().await;
        let Some(source) = &applied.source else {
            return;
        };
        let wanted: BTreeSet<PathBuf> = std::iter::once(&source.path)
            .chain(applied.sources.files.iter())
            .filter_map(|p| dir_of(p))
            .collect();
        drop(applied);
        use notify::Watcher as _;
        for dir in wanted.difference(&self.dirs.clone()) {
            match self.inner.watch(dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.dirs.insert(dir.clone());
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch this directory; its changes are seen by polling only");
                }
            }
        }
    }
}

/// The directory a file is in (`.` for a bare name).
fn dir_of(path: &std::path::Path) -> Option<PathBuf> {
    match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Some(PathBuf::from(".")),
        Some(p) => Some(p.to_owned()),
        None => None,
    }
}
