//! The top of the stack: [`serve`] runs the proxy and admin ports on one
//! [`State`] until shutdown, then drains; [`harden_process`] closes the
//! ways another process could read clavis's memory.

use tokio::net::TcpListener;

use crate::proxy::Ctx;
use crate::state::State;

/// Runs both ports until `shutdown` resolves, then stops accepting, lets
/// in-flight exchanges finish within `limits.drain_timeout`, and ends tunnels.
pub async fn serve(
    state: State,
    proxy: TcpListener,
    admin: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let (control, drain) = crate::server::shutdown();
    let ctx = Ctx {
        state: state.clone(),
        drain,
    };
    state.upstream.start(state.config.limits.idle_timeout.0);
    // Before either port answers: a SIGHUP from then on reloads.
    crate::reload::watch::spawn(state.clone(), control.stopping());
    let proxy_task = tokio::spawn(crate::proxy::serve(ctx.clone(), proxy, control.stopping()));
    let admin_task = tokio::spawn(crate::admin::serve(ctx, admin, control.stopping()));
    spawn_keeper(state.clone(), control.stopping());
    crate::refresh::spawn(state.clone(), control.stopping());
    state.set_ready(true);
    warn_about_setup(&state);
    tracing::info!(proxy = %state.proxy_addr, admin = %state.admin_addr, "clavis is ready");

    shutdown.await;
    state.set_ready(false);
    control.stop();
    let _ = proxy_task.await;
    let _ = admin_task.await;
    let deadline = state.config.limits.drain_timeout.0;
    tracing::info!(?deadline, "draining in-flight requests");
    if !control.drain(deadline).await {
        tracing::warn!("drain deadline passed; closing remaining connections");
    }
    state.persist_budgets();
    state.persist_approvals();
}

/// Every second until shutdown: approvals past their ttl expire, and the
/// budget counts and approvals go to the snapshot when they changed
/// (shutdown writes them once more).
fn spawn_keeper(state: State, mut stop: tokio::sync::watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Some(a) = &state.approvals {
                        a.sweep();
                    }
                    state.persist_budgets();
                    state.persist_approvals();
                }
                _ = stop.changed() => return,
            }
        }
    });
}

/// What is valid but unwise, said once at start.
fn warn_about_setup(state: &State) {
    for warning in &state.config.warnings {
        tracing::warn!("{warning}");
    }
    if !state.config.proxy.require_auth && !state.store.table().all().is_empty() {
        // Threat model §1.4: any local process can then use every service.
        tracing::warn!("proxy.require_auth is false: any process that reaches the proxy port may use every service");
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        // Threat model §1.4: clavis and the agent should be different,
        // unprivileged users, so the agent cannot read clavis's memory or files.
        tracing::warn!("running as root: run clavis as its own unprivileged user (the container image uses 65532)");
    }
}

/// No core dumps and no ptrace-by-same-UID reads of this process's memory
/// (where the OS allows): the master key and plaintext credentials live here.
pub fn harden_process() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) and setrlimit(RLIMIT_CORE, 0) take no
    // pointers we own beyond a stack value and only lower privileges.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &zero);
    }
}
