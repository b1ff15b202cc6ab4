//! `clavis agents|audit|approvals|budgets`: the admin API from the shell
//! (SPEC §14), each a call or two and a table (or `--json`, the API's own
//! JSON); the helpers every admin command shares (`services` is in
//! [`super::services`]).

use std::process::ExitCode;

use http::Method;
use serde_json::{json, Value};

use super::args::{
    AdminOpts, AgentsArgs, AgentsCommand, ApprovalsArgs, ApprovalsCommand, AuditArgs, BudgetsArgs,
    BudgetsCommand,
};
use super::client::Client;
use super::{follow, out, table, CliError, Loaded};
use crate::encoding::percent_encode;

/// The config and a client of its admin API.
pub(super) fn connect(opts: &AdminOpts) -> Result<(Loaded, Client), CliError> {
    let loaded = super::load_config(opts.config.as_deref())?;
    let client = Client::from_config(&loaded, opts.admin.as_deref())?;
    Ok((loaded, client))
}

/// Runs `f` on a single-threaded runtime.
pub(super) fn block<T>(
    f: impl std::future::Future<Output = Result<T, CliError>>,
) -> Result<T, CliError> {
    super::runtime()?.block_on(f)
}

pub(super) fn pretty(value: &Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::Failed(format!("cannot print JSON: {e}")))?;
    out(&format!("{text}\n"))
}

pub(super) fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

pub(super) fn yes_no(v: &Value, key: &str) -> String {
    match v.get(key).and_then(Value::as_bool) {
        Some(true) => "yes".into(),
        _ => "no".into(),
    }
}

pub(super) fn list(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}

/// A path segment from user input, escaped.
pub(super) fn seg(text: &str) -> String {
    percent_encode(text.as_bytes())
}

pub(crate) fn agents(args: AgentsArgs) -> Result<ExitCode, CliError> {
    let (_, client) = connect(&args.admin)?;
    let AgentsCommand::List = args.command;
    let v = block(client.call(Method::GET, "/v1/agents", None))?;
    if args.admin.json {
        pretty(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = list(&v)
        .iter()
        .map(|a| {
            let services: Vec<String> = a
                .get("services")
                .map(list)
                .unwrap_or_default()
                .iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect();
            vec![text(a, "name"), services.join(","), yes_no(a, "reveal")]
        })
        .collect();
    out(&table::render(
        &["NAME", "SERVICES", "REVEAL"],
        &rows,
        "no agents",
    ))?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn audit(args: AuditArgs) -> Result<ExitCode, CliError> {
    let (_, client) = connect(&args.admin)?;
    if args.limit == 0 {
        return Err(CliError::Usage("--limit must be at least 1".into()));
    }
    let mut query = format!("/v1/audit?limit={}", args.limit);
    for (key, value) in [("actor", &args.actor), ("entry", &args.entry)] {
        if let Some(v) = value {
            query.push_str(&format!("&{key}={}", seg(v)));
        }
    }
    let json_out = args.admin.json;
    block(async move {
        let v = client.call(Method::GET, &query, None).await?;
        let mut events: Vec<Value> = list(&v).to_vec();
        // The API answers newest first; a log reads oldest first.
        events.reverse();
        if args.follow {
            let filter = follow::Filter {
                actor: args.actor,
                entry: args.entry,
            };
            return follow::follow(&client, events, filter, json_out).await;
        }
        if json_out {
            pretty(&Value::Array(events))?;
        } else {
            let rows: Vec<Vec<String>> = events.iter().map(audit_row).collect();
            out(&table::render(AUDIT_HEADER, &rows, "no audit events"))?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub(crate) const AUDIT_HEADER: &[&str] = &[
    "TIME", "ACTION", "ACTOR", "ENTRY", "REQUEST", "STATUS", "NOTE",
];

/// One audit event as a table row.
pub(crate) fn audit_row(e: &Value) -> Vec<String> {
    let d = e.get("detail").cloned().unwrap_or(Value::Null);
    let request = match (d.get("method"), d.get("host")) {
        (Some(m), Some(h)) => format!(
            "{} {}{}",
            m.as_str().unwrap_or("?"),
            h.as_str().unwrap_or("?"),
            d.get("path").and_then(Value::as_str).unwrap_or("")
        ),
        _ => "-".into(),
    };
    let entry = match text(e, "entry") {
        s if s.is_empty() => "-".into(),
        s => s,
    };
    vec![
        text(e, "time"),
        text(e, "action"),
        text(e, "actor"),
        entry,
        request,
        text(&d, "status"),
        text(&d, "note"),
    ]
}

pub(crate) fn approvals(args: ApprovalsArgs) -> Result<ExitCode, CliError> {
    let (_, client) = connect(&args.admin)?;
    let json_out = args.admin.json;
    block(async move {
        match args.command {
            ApprovalsCommand::List { status } => {
                let path = if status == "all" {
                    "/v1/approvals".to_owned()
                } else {
                    format!("/v1/approvals?status={}", seg(&status))
                };
                let v = client.call(Method::GET, &path, None).await?;
                if json_out {
                    return pretty(&v).map(|()| ExitCode::SUCCESS);
                }
                let rows: Vec<Vec<String>> = list(&v)
                    .iter()
                    .map(|a| {
                        vec![
                            text(a, "id"),
                            text(a, "status"),
                            text(a, "agent"),
                            text(a, "service"),
                            format!("{} {}", text(a, "method"), text(a, "url")),
                            text(a, "rule"),
                            text(a, "created_at"),
                            text(a, "expires_at"),
                        ]
                    })
                    .collect();
                out(&table::render(
                    &[
                        "ID", "STATUS", "AGENT", "SERVICE", "REQUEST", "RULE", "CREATED", "EXPIRES",
                    ],
                    &rows,
                    &format!("no approvals ({status})"),
                ))?;
            }
            ApprovalsCommand::Approve { id, reason } => {
                let body = match reason {
                    Some(r) => json!({"reason": r}),
                    None => json!({}),
                };
                decide(&client, &id, "approve", &body, json_out).await?;
            }
            ApprovalsCommand::Deny { id, reason } => {
                decide(&client, &id, "deny", &json!({"reason": reason}), json_out).await?;
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn decide(
    client: &Client,
    id: &str,
    verb: &str,
    body: &Value,
    json_out: bool,
) -> Result<(), CliError> {
    let path = format!("/v1/approvals/{}/{verb}", seg(id));
    let v = client.call(Method::POST, &path, Some(body)).await?;
    if json_out {
        return pretty(&v);
    }
    out(&format!(
        "approval {}: {}\n",
        table::printable(id),
        table::printable(&text(&v, "status"))
    ))
}

pub(crate) fn budgets(args: BudgetsArgs) -> Result<ExitCode, CliError> {
    let (_, client) = connect(&args.admin)?;
    let BudgetsCommand::List = args.command;
    let v = block(client.call(Method::GET, "/v1/budgets", None))?;
    if args.admin.json {
        pretty(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = list(&v)
        .iter()
        .map(|b| {
            let limit = b.get("limit").map_or("-".into(), units);
            vec![
                text(b, "name"),
                text(b, "agent"),
                text(b, "service"),
                text(b, "window"),
                limit,
                text(b, "used"),
                text(b, "reserved"),
                text(b, "resets_at"),
            ]
        })
        .collect();
    out(&table::render(
        &[
            "NAME", "AGENT", "SERVICE", "WINDOW", "LIMIT", "USED", "RESERVED", "RESETS",
        ],
        &rows,
        "no budgets",
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// `{"tokens": 2000000}` as `tokens 2000000`; anything else as JSON.
fn units(v: &Value) -> String {
    match v {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_rows_read_the_detail() {
        let e = json!({"time": "t", "action": "inject", "entry": "gh", "actor": "proxy:a",
                       "detail": {"method": "GET", "host": "api.github.com", "path": "/user", "status": 200}});
        assert_eq!(
            audit_row(&e),
            [
                "t",
                "inject",
                "proxy:a",
                "gh",
                "GET api.github.com/user",
                "200",
                "-"
            ]
        );
        let e = json!({"time": "t", "action": "denied", "entry": "", "actor": "admin", "detail": {"note": "n"}});
        assert_eq!(audit_row(&e), ["t", "denied", "admin", "-", "-", "-", "n"]);
    }

    #[test]
    fn budget_limits() {
        assert_eq!(units(&json!({"tokens": 5})), "tokens 5");
        assert_eq!(units(&json!(null)), "-");
    }
}
