//! `clavis services list|add|rm|set-credential` (SPEC §14). A credential
//! is read from stdin or a hidden prompt, never from the command line.

use std::process::ExitCode;

use http::Method;
use serde_json::{json, Map, Value};

use super::admin::{block, connect, list, pretty, seg, text, yes_no};
use super::args::{ServicesArgs, ServicesCommand};
use super::{input, out, table, CliError, Loaded};

pub(crate) fn services(args: ServicesArgs) -> Result<ExitCode, CliError> {
    let (loaded, client) = connect(&args.admin)?;
    let json_out = args.admin.json;
    block(async move {
        match args.command {
            ServicesCommand::List => {
                let v = client.call(Method::GET, "/v1/services", None).await?;
                if json_out {
                    return pretty(&v).map(|()| ExitCode::SUCCESS);
                }
                let rows: Vec<Vec<String>> = list(&v)
                    .iter()
                    .map(|s| {
                        vec![
                            text(s, "name"),
                            text(s, "connector_name"),
                            yes_no(s, "has_credentials"),
                            text(s, "validated_at"),
                            yes_no(s, "default"),
                            text(s, "origin"),
                        ]
                    })
                    .collect();
                out(&table::render(
                    &[
                        "NAME",
                        "CONNECTOR",
                        "CREDENTIALS",
                        "VALIDATED",
                        "DEFAULT",
                        "ORIGIN",
                    ],
                    &rows,
                    "no services",
                ))?;
            }
            ServicesCommand::Add {
                name,
                connector,
                default,
            } => {
                let body = json!({"name": name, "connector_name": connector, "default": default});
                let v = client
                    .call(Method::POST, "/v1/services", Some(&body))
                    .await?;
                if json_out {
                    return pretty(&v).map(|()| ExitCode::SUCCESS);
                }
                out(&format!(
                    "added service {} ({}); store its key with: clavis services set-credential {}\n",
                    table::printable(&text(&v, "name")),
                    table::printable(&text(&v, "connector_name")),
                    table::printable(&text(&v, "name")),
                ))?;
            }
            ServicesCommand::Rm { name } => {
                let path = format!("/v1/services/{}", seg(&name));
                let v = client.call(Method::DELETE, &path, None).await?;
                if json_out {
                    return pretty(&v).map(|()| ExitCode::SUCCESS);
                }
                out(&format!(
                    "removed service {}\n",
                    table::printable(&text(&v, "name"))
                ))?;
            }
            ServicesCommand::SetCredential { name, fields } => {
                let path = format!("/v1/services/{}", seg(&name));
                let service = client.call(Method::GET, &path, None).await?;
                let fields = if fields.is_empty() {
                    connector_fields(&loaded, &text(&service, "connector_name"))
                } else {
                    fields
                };
                let data = read_fields(&name, &fields)?;
                let body = json!({"token_type": "api_key", "data": Value::Object(data)});
                let v = client
                    .call(Method::POST, &format!("{path}/credentials"), Some(&body))
                    .await?;
                drop(body);
                if json_out {
                    return pretty(&v).map(|()| ExitCode::SUCCESS);
                }
                let checked = if v.get("validated").and_then(Value::as_bool) == Some(true) {
                    " and checked with the upstream"
                } else {
                    ""
                };
                out(&format!(
                    "stored the credential of {}{checked}\n",
                    table::printable(&name)
                ))?;
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The fields a connector's credential has (its first accepted set), as
/// the config knows the connector; `api_key` when it does not.
fn connector_fields(loaded: &Loaded, connector: &str) -> Vec<String> {
    loaded
        .settings
        .catalog
        .registry
        .get(connector)
        .and_then(|c| c.field_sets.first())
        .map(|set| set.iter().map(|f| f.name.clone()).collect::<Vec<_>>())
        .filter(|names| !names.is_empty())
        .unwrap_or_else(|| vec!["api_key".to_owned()])
}

/// The credential's fields: one value from stdin or a prompt; several as a
/// JSON object on stdin, or one prompt each on a terminal.
fn read_fields(service: &str, fields: &[String]) -> Result<Map<String, Value>, CliError> {
    use std::io::IsTerminal;
    let mut data = Map::new();
    if let [field] = fields {
        let value = input::secret(&format!("{field} for {service}"))?;
        if value.is_empty() {
            return Err(CliError::Usage(format!("empty {field}: nothing stored")));
        }
        data.insert(field.clone(), Value::String(value.to_string()));
        return Ok(data);
    }
    if std::io::stdin().is_terminal() {
        for field in fields {
            let value = input::secret(&format!("{field} for {service}"))?;
            data.insert(field.clone(), Value::String(value.to_string()));
        }
        return Ok(data);
    }
    let text = input::secret("credential")?;
    let parsed: Value = serde_json::from_str(&text).map_err(|_| {
        CliError::Usage(format!(
            "several fields ({}): stdin must be a JSON object {{\"field\": \"value\", …}}",
            fields.join(", ")
        ))
    })?;
    match parsed {
        Value::Object(map) => Ok(map),
        _ => Err(CliError::Usage(
            "stdin must be a JSON object {\"field\": \"value\", …}".into(),
        )),
    }
}
