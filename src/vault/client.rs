//! A small Vault/OpenBao HTTP client on clavis's own stack (hyper 1 over
//! tokio-rustls, trust = the compiled-in public roots plus `vault.ca_file`,
//! like upstreams): token-file or Kubernetes login, and KV v2 reads. One
//! short HTTP/1.1 connection per call: a few calls per `refresh`, so a pool
//! would only hold idle sockets to the Vault.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use zeroize::Zeroizing;

use crate::config::vault::{VaultAuth, VaultConfig, VaultDoc};
use crate::secret::Secret;

/// The largest answer read from the Vault (a KV secret or a login).
const MAX_ANSWER: usize = 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call to the Vault failed. Messages name the address, the file or
/// the Vault's own error text, never a token or a secret value.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("cannot reach the Vault at {address}: {cause}")]
    Unreachable { address: String, cause: String },
    #[error("cannot read {path}: {cause}")]
    File {
        path: String,
        cause: std::io::ErrorKind,
    },
    #[error("login to auth/{mount} refused ({status}){message}")]
    Login {
        mount: String,
        status: u16,
        message: String,
    },
    #[error("permission denied (403){0}")]
    Denied(String),
    #[error("no such secret (404)")]
    NotFound,
    #[error("the Vault answered {status}{message}")]
    Status { status: u16, message: String },
    #[error("unexpected answer: {0}")]
    Answer(&'static str),
    #[error("no field {0:?} in the secret")]
    MissingField(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// A token and when to log in again (`None`: never expires by itself).
struct Login {
    token: Secret<String>,
    renew_at: Option<Instant>,
}

pub(crate) struct Client {
    config: VaultConfig,
    tls: Option<tokio_rustls::TlsConnector>,
    login: Mutex<Option<Login>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("vault::Client")
            .field("address", &self.config.address.to_string())
            .finish()
    }
}

impl Client {
    pub(crate) fn new(config: VaultConfig) -> Result<Client, ReadError> {
        let tls = match config.address.scheme_str() {
            Some("https") => {
                let extra: Vec<_> = config.ca_file.iter().cloned().collect();
                let mut tls = crate::tls::verify::client_config(&extra)
                    .map_err(|e| ReadError::Tls(e.to_string()))?;
                std::sync::Arc::make_mut(&mut tls).alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(tokio_rustls::TlsConnector::from(tls))
            }
            _ => None,
        };
        Ok(Client {
            config,
            tls,
            login: Mutex::new(None),
        })
    }

    pub(crate) fn address(&self) -> String {
        self.config
            .address
            .to_string()
            .trim_end_matches('/')
            .to_owned()
    }

    /// `GET /v1/<mount>/data/<path>`: the KV v2 secret's fields and
    /// version. A 403 with a Kubernetes login logs in again once (the
    /// token may have been revoked or expired early).
    pub(crate) async fn read(&self, mount: &str, path: &str) -> Result<VaultDoc, ReadError> {
        let uri = format!("/v1/{mount}/data/{path}");
        let mut retried = false;
        loop {
            let token = self.token().await?;
            let (status, body) = self.call(Method::GET, &uri, Some(&token), None).await?;
            match status {
                StatusCode::OK => return parse_kv(&body),
                StatusCode::FORBIDDEN => {
                    self.forget_token();
                    let kubernetes = matches!(self.config.auth, VaultAuth::Kubernetes { .. });
                    if kubernetes && !retried {
                        retried = true;
                        continue;
                    }
                    return Err(ReadError::Denied(vault_errors(&body)));
                }
                StatusCode::NOT_FOUND => return Err(ReadError::NotFound),
                s => {
                    return Err(ReadError::Status {
                        status: s.as_u16(),
                        message: vault_errors(&body),
                    })
                }
            }
        }
    }

    fn forget_token(&self) {
        *self.login.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The token to send: the file's content (read at every call, so a
    /// rotated file is seen), or a Kubernetes login's, renewed when its
    /// lease is 80 % through.
    async fn token(&self) -> Result<Secret<String>, ReadError> {
        let (role, jwt_file, mount) = match &self.config.auth {
            VaultAuth::TokenFile(path) => return read_trimmed(path),
            VaultAuth::Kubernetes {
                role,
                jwt_file,
                mount,
            } => (role, jwt_file, mount),
        };
        {
            let login = self.login.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(l) = login.as_ref() {
                if l.renew_at.is_none_or(|at| Instant::now() < at) {
                    return Ok(l.token.clone());
                }
            }
        }
        let jwt = read_trimmed(jwt_file)?;
        let body = Zeroizing::new(
            serde_json::to_vec(&serde_json::json!({ "role": role, "jwt": jwt.expose() }))
                .map_err(|_| ReadError::Answer("cannot encode the login"))?,
        );
        let uri = format!("/v1/auth/{mount}/login");
        let (status, answer) = self
            .call(Method::POST, &uri, None, Some(body.to_vec()))
            .await?;
        if status != StatusCode::OK {
            return Err(ReadError::Login {
                mount: mount.clone(),
                status: status.as_u16(),
                message: vault_errors(&answer),
            });
        }
        let login = parse_login(&answer)?;
        let token = login.token.clone();
        *self.login.lock().unwrap_or_else(|p| p.into_inner()) = Some(login);
        Ok(token)
    }

    /// One request on a fresh connection; the answer's body, bounded.
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&Secret<String>>,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Zeroizing<Vec<u8>>), ReadError> {
        tokio::time::timeout(TIMEOUT, self.exchange(method, path, token, body))
            .await
            .unwrap_or_else(|_| Err(self.unreachable("timed out")))
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        token: Option<&Secret<String>>,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Zeroizing<Vec<u8>>), ReadError> {
        let address = &self.config.address;
        let host = address.host().unwrap_or_default();
        let port = address
            .port_u16()
            .unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = tokio::net::TcpStream::connect((bare, port))
            .await
            .map_err(|e| self.unreachable(e))?;
        let mut request = Request::builder().method(method).uri(path).header(
            http::header::HOST,
            address.authority().map_or(host, |a| a.as_str()),
        );
        if let Some(token) = token {
            request = request.header("X-Vault-Token", token.expose().as_str());
        }
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(bytes::Bytes::from(body.unwrap_or_default())))
            .map_err(|_| ReadError::Answer("cannot build the request"))?;
        match &self.tls {
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(bare.to_owned())
                    .map_err(|e| ReadError::Tls(e.to_string()))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| ReadError::Tls(e.to_string()))?;
                self.send(stream, request).await
            }
            None => self.send(tcp, request).await,
        }
    }

    async fn send<S>(
        &self,
        stream: S,
        request: Request<Full<bytes::Bytes>>,
    ) -> Result<(StatusCode, Zeroizing<Vec<u8>>), ReadError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.unreachable(e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let answer = sender
            .send_request(request)
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = answer.status();
        let body = Limited::new(answer.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|_| ReadError::Answer("body unreadable or over 1 MiB"))?
            .to_bytes();
        Ok((status, Zeroizing::new(body.to_vec())))
    }

    fn unreachable(&self, cause: impl std::fmt::Display) -> ReadError {
        ReadError::Unreachable {
            address: self.address(),
            cause: cause.to_string(),
        }
    }
}

fn read_trimmed(path: &std::path::Path) -> Result<Secret<String>, ReadError> {
    let text = Secret::new(std::fs::read_to_string(path).map_err(|e| ReadError::File {
        path: path.display().to_string(),
        cause: e.kind(),
    })?);
    Ok(Secret::new(text.expose().trim().to_owned()))
}

/// `{"errors": ["…"]}` as `: …` (the Vault's messages name paths and
/// reasons, never values).
fn vault_errors(body: &[u8]) -> String {
    let errors: Vec<String> = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("errors").cloned())
        .and_then(|e| serde_json::from_value(e).ok())
        .unwrap_or_default();
    let errors: Vec<&str> = errors
        .iter()
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
        .collect();
    if errors.is_empty() {
        String::new()
    } else {
        format!(": {}", errors.join("; "))
    }
}

/// `data.data` (field → value; non-strings kept as their JSON text) and
/// `data.metadata.version`.
fn parse_kv(body: &[u8]) -> Result<VaultDoc, ReadError> {
    use serde_json::Value;
    let mut answer: Value =
        serde_json::from_slice(body).map_err(|_| ReadError::Answer("not JSON"))?;
    let version = answer
        .pointer("/data/metadata/version")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let Some(Value::Object(data)) = answer.pointer_mut("/data/data").map(Value::take) else {
        // A deleted version answers 404 with data null; a KV v1 mount has no data.data.
        return Err(ReadError::Answer("no data.data (is the mount KV v2?)"));
    };
    let mut doc = VaultDoc {
        version,
        ..VaultDoc::default()
    };
    for (field, value) in data {
        let value = match value {
            Value::String(s) => s,
            other => other.to_string(),
        };
        doc.fields.insert(field, Secret::new(value));
    }
    Ok(doc)
}

/// `auth.client_token` and `auth.lease_duration` (seconds; 0 = none).
fn parse_login(body: &[u8]) -> Result<Login, ReadError> {
    use serde_json::Value;
    let mut answer: Value =
        serde_json::from_slice(body).map_err(|_| ReadError::Answer("login: not JSON"))?;
    let lease = answer
        .pointer("/auth/lease_duration")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let Some(Value::String(token)) = answer.pointer_mut("/auth/client_token").map(Value::take)
    else {
        return Err(ReadError::Answer("login: no auth.client_token"));
    };
    let renew_at = (lease > 0).then(|| Instant::now() + Duration::from_secs(lease * 4 / 5));
    Ok(Login {
        token: Secret::new(token),
        renew_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    mod parse {
        use super::*;

        #[test]
        fn kv_v2_fields_and_version() {
            let body = br#"{"data":{"data":{"api_key":"sk-1","n":3},"metadata":{"version":7}}}"#;
            let doc = parse_kv(body).unwrap();
            assert_eq!(doc.version, 7);
            assert_eq!(doc.fields["api_key"].expose(), "sk-1");
            assert_eq!(doc.fields["n"].expose(), "3");
        }

        #[test]
        fn a_kv_v1_answer_is_refused() {
            assert!(parse_kv(br#"{"data":{"api_key":"sk-1"}}"#).is_err());
        }

        #[test]
        fn login_lease_renews_at_80_percent() {
            let l = parse_login(br#"{"auth":{"client_token":"t","lease_duration":100}}"#).unwrap();
            assert_eq!(l.token.expose(), "t");
            let left = l.renew_at.unwrap() - Instant::now();
            assert!(left <= Duration::from_secs(80) && left > Duration::from_secs(78));
        }

        #[test]
        fn vault_error_texts_are_joined() {
            assert_eq!(
                vault_errors(br#"{"errors":["permission denied"]}"#),
                ": permission denied"
            );
            assert_eq!(vault_errors(b"{}"), "");
        }
    }
}
