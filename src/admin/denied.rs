//! Refusals on the admin port and MCP, audited as `denied` (SPEC §5):
//! a wrong Host or Origin, an agent on an admin-only route, a raw secret
//! without `reveal`, a service outside the caller's list, a tool the agent
//! may not call. Each caller has a budget of audited refusals a minute, so
//! an agent cannot flood the log; past it one line says so, then nothing
//! until the minute ends.

use crate::audit::{Action, Detail, Event};
use crate::identity::{Caller, Spend};
use crate::state::State;

/// Audits one refusal of `who` (about `entry`, or none) within its budget.
/// A refusal that cannot be audited is still a refusal: nothing to fail
/// closed on.
pub(super) fn audit(state: &State, who: &Caller, entry: &str, mut detail: Detail) {
    match state.refusals.spend(who.principal()) {
        Spend::Within => {}
        Spend::Exhausted { left } => {
            let note = detail.note.take().unwrap_or_default();
            detail.note = Some(format!(
                "{note}; further refusals of this caller are not audited for {} s",
                left.as_secs()
            ));
        }
        Spend::Over { .. } => return,
    }
    let _ = state
        .audit
        .record(Event::new(Action::Denied, entry, &who.actor(), detail));
}

/// An MCP tool call refused: a tool the caller may not call, or an error
/// of its scope from the tool (the admin asking for a service that does
/// not exist is a miss, not a refusal).
pub(super) fn tool(state: &State, who: &Caller, tool: &str, why: &str, missing: bool) {
    if missing && who.require_admin().is_ok() {
        return;
    }
    let mut detail = Detail::request("POST", "admin", "/mcp");
    detail.note = Some(format!("tool {tool}: {why}"));
    audit(state, who, "", detail);
}
