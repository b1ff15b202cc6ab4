//! A small client of the admin API over hyper's HTTP/1 connection (already
//! clavis's own HTTP stack): one connection per call, JSON in and out, or
//! a streamed body for Server-Sent Events. The address and token come
//! from the config unless given (SPEC §14).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::Value;
use zeroize::Zeroizing;

use super::vars::{reachable, Visible};
use super::{CliError, Loaded};

/// How long one call may take (connect, answer); a stream only its head.
const TIMEOUT: Duration = Duration::from_secs(30);
/// For probes: is clavis there at all?
const QUICK: Duration = Duration::from_secs(2);

pub(crate) struct Client {
    addr: SocketAddr,
    /// `Host` of every request: what the admin port accepts (loopback
    /// names or its listen address).
    authority: String,
    token: Option<Zeroizing<String>>,
    timeout: Duration,
}

impl Client {
    /// The admin API of the clavis `settings` describes (or at `admin`,
    /// `http://host:port` or `host:port`), signed in with
    /// `CLAVIS_ADMIN_TOKEN`, else the config's `admin.token`, else the
    /// `admin.token` file clavis writes beside the CA key.
    pub(crate) fn from_config(loaded: &Loaded, admin: Option<&str>) -> Result<Client, CliError> {
        let settings = &loaded.settings;
        let (addr, authority) = match admin {
            Some(text) => parse_admin(text)?,
            None => {
                let addr = reachable(settings.config.admin.listen);
                (addr, addr.to_string())
            }
        };
        Ok(Client {
            addr,
            authority,
            token: admin_token(loaded),
            timeout: TIMEOUT,
        })
    }

    /// The same client with the probe timeout.
    pub(crate) fn quick(mut self) -> Client {
        self.timeout = QUICK;
        self
    }

    /// `http://host:port`, for messages.
    pub(crate) fn base(&self) -> String {
        format!("http://{}", self.authority)
    }

    /// `GET /readyz` answered `200` (as `clavis health` asks).
    pub(crate) async fn ready(&self) -> bool {
        match self.send(Method::GET, "/readyz", None, None).await {
            Ok(r) => r.status() == StatusCode::OK,
            Err(_) => false,
        }
    }

    /// [`Client::ready`] from synchronous code.
    pub(crate) fn ready_blocking(&self) -> bool {
        super::runtime().is_ok_and(|rt| rt.block_on(self.ready()))
    }

    /// The services `token` (an agent's; the admin's when `None`) may see,
    /// or `None` if clavis does not answer.
    pub(crate) fn services_as(&self, token: Option<&str>) -> Option<Vec<Visible>> {
        // Without a token the call could only fail (and count as a failed
        // sign-in against this address).
        let token = token.or(self.token())?;
        let rt = super::runtime().ok()?;
        let value = rt
            .block_on(async {
                let response = self
                    .send(Method::GET, "/v1/services", None, Some(token))
                    .await?;
                read_json(Method::GET, "/v1/services", response, self.timeout).await
            })
            .ok()?;
        let list = value.as_array()?;
        Some(
            list.iter()
                .filter_map(|s| {
                    Some(Visible {
                        name: s.get("name")?.as_str()?.to_owned(),
                        connector: s.get("connector_name")?.as_str()?.to_owned(),
                        default: s.get("default").and_then(Value::as_bool).unwrap_or(false),
                    })
                })
                .collect(),
        )
    }

    fn token(&self) -> Option<&str> {
        self.token.as_ref().map(|t| t.as_str())
    }

    /// One call with the admin token; the answer's JSON, or an error
    /// naming the call and what the API said.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        let response = self.send(method.clone(), path, body, self.token()).await?;
        read_json(method, path, response, self.timeout).await
    }

    /// A call whose body is read as it arrives (`text/event-stream`).
    /// `Ok(None)`: the route does not exist (`404`).
    pub(crate) async fn open_stream(
        &self,
        path: &str,
    ) -> Result<Option<Response<Incoming>>, CliError> {
        let response = self.send(Method::GET, path, None, self.token()).await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(Some(response)),
            _ => read_json(Method::GET, path, response, self.timeout)
                .await
                .map(|_| None),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> Result<Response<Incoming>, CliError> {
        let unreachable = |why: String| CliError::Unreachable {
            base: self.base(),
            why,
        };
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.authority)
            .header(
                header::USER_AGENT,
                concat!("clavis-cli/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(token) = token {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                CliError::Usage("the admin token is not a valid header value".into())
            })?;
            value.set_sensitive(true);
            request = request.header(header::AUTHORIZATION, value);
        }
        let payload = match body {
            Some(v) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(payload))
            .map_err(|e| CliError::Usage(format!("bad request path {path:?}: {e}")))?;
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let io = hyper_util::rt::TokioIo::new(tcp);
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            sender
                .send_request(request)
                .await
                .map_err(|e| unreachable(e.to_string()))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {} s", self.timeout.as_secs())))?
    }
}

/// The answer's JSON when it is a success; else the API's error message.
async fn read_json(
    method: Method,
    path: &str,
    response: Response<Incoming>,
    timeout: Duration,
) -> Result<Value, CliError> {
    let status = response.status();
    let bytes = tokio::time::timeout(timeout, response.into_body().collect())
        .await
        .map_err(|_| {
            CliError::Failed(format!(
                "{method} {path}: the answer did not finish in time"
            ))
        })?
        .map_err(|e| CliError::Failed(format!("{method} {path}: the answer broke off: {e}")))?
        .to_bytes();
    let value: Option<Value> = serde_json::from_slice(&bytes).ok();
    if status.is_success() {
        return value
            .ok_or_else(|| CliError::Failed(format!("{method} {path}: the answer is not JSON")));
    }
    let message = value
        .as_ref()
        .and_then(error_message)
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(300).collect());
    let message = match status {
        StatusCode::UNAUTHORIZED => format!(
            "{message} (the admin token comes from CLAVIS_ADMIN_TOKEN, the config's admin.token, or admin.token beside the CA key)"
        ),
        _ => message,
    };
    Err(CliError::Api {
        method: method.to_string(),
        path: path.to_owned(),
        status: status.as_u16(),
        message,
    })
}

/// clavis's error shapes: `{"error":{"message"}}` and problem+json's `detail`.
fn error_message(v: &Value) -> Option<String> {
    v.pointer("/detail")
        .or_else(|| v.pointer("/error/message"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// `http://host:port`, `host:port` (a name resolves; loopback is the point).
fn parse_admin(text: &str) -> Result<(SocketAddr, String), CliError> {
    let bad = || {
        CliError::Usage(format!(
            "--admin {text:?}: want http://HOST:PORT or HOST:PORT"
        ))
    };
    let rest = text.strip_prefix("http://").unwrap_or(text);
    if rest.contains("://") {
        return Err(bad());
    }
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(bad());
    }
    let addr = authority
        .to_socket_addrs()
        .map_err(|_| bad())?
        .next()
        .ok_or_else(bad)?;
    Ok((addr, authority.to_owned()))
}

/// `CLAVIS_ADMIN_TOKEN`, else the config's `admin.token` (interpolated),
/// else the generated `admin.token` beside the CA key.
fn admin_token(loaded: &Loaded) -> Option<Zeroizing<String>> {
    if let Some(t) = std::env::var("CLAVIS_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
    {
        return Some(Zeroizing::new(t));
    }
    if let Some(t) = configured_token(loaded.path.as_deref()) {
        return Some(t);
    }
    let dir = loaded
        .settings
        .config
        .ca
        .key
        .parent()
        .unwrap_or(Path::new("."));
    let text = Zeroizing::new(std::fs::read_to_string(dir.join("admin.token")).ok()?);
    let token = text.trim();
    (!token.is_empty()).then(|| Zeroizing::new(token.to_owned()))
}

/// The plain `admin.token` of the config file (the validated config keeps
/// only its digest).
fn configured_token(path: Option<&Path>) -> Option<Zeroizing<String>> {
    let path = path?;
    let text = Zeroizing::new(std::fs::read_to_string(path).ok()?);
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).ok()?;
    let raw = yaml.get("admin")?.get("token")?.as_str()?;
    let interp = crate::config::Interp(raw.to_owned());
    let value = interp
        .resolve(&crate::config::ProcessEnv, "admin.token")
        .ok()?;
    Some(Zeroizing::new(value.expose().clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_addresses() {
        let (addr, auth) = parse_admin("http://127.0.0.1:1984/").unwrap();
        assert_eq!(addr, "127.0.0.1:1984".parse().unwrap());
        assert_eq!(auth, "127.0.0.1:1984");
        assert!(parse_admin("127.0.0.1:9").is_ok());
        assert!(parse_admin("https://127.0.0.1:1984").is_err());
        assert!(parse_admin("http://127.0.0.1:1984/v1").is_err());
        assert!(parse_admin("nonsense").is_err());
    }

    #[test]
    fn error_shapes() {
        let v: Value = serde_json::json!({"error": {"type": "clavis_x", "message": "m"}});
        assert_eq!(error_message(&v).as_deref(), Some("m"));
        let v: Value = serde_json::json!({"title": "t", "detail": "d", "error": {"message": "m"}});
        assert_eq!(error_message(&v).as_deref(), Some("d"));
    }
}
