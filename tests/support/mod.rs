//! Test kit: a test CA minted at run time, fake TLS upstreams on loopback that
//! record exactly what they received, clavis started on port 0, and clients
//! that go through its proxy port the way agents do.
#![allow(dead_code, unused_imports)]
// Kit helpers are not `#[test]` functions, so clippy.toml's allow-*-in-tests
// does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod bao;
pub mod dns;
pub mod fakes;
pub mod logs;
pub mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::oneshot;

#[allow(unused_imports)]
pub use upstream::{Seen, Upstream};

/// A CA for fake upstreams, created fresh for each test (no committed keys).
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
    pub dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "clavis test upstream CA");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("upstream-ca.pem"), cert.pem()).unwrap();
        TestCa {
            issuer: Issuer::new(params, key),
            pem: cert.pem(),
            dir,
        }
    }

    pub fn pem_path(&self) -> PathBuf {
        self.dir.path().join("upstream-ca.pem")
    }

    /// A leaf for `hosts` signed by this CA, as PEM files in `dir`
    /// (`cert.pem`, `key.pem`): for servers that read files (OpenBao).
    pub fn cert_files(&self, hosts: &[&str], dir: &std::path::Path) -> (PathBuf, PathBuf) {
        let names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    /// A TLS server config for `hosts`, offering h2 and http/1.1.
    pub fn server_config(&self, hosts: &[&str]) -> Arc<rustls::ServerConfig> {
        let names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// A client for the admin port (plain HTTP, no proxy).
pub fn admin_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// `GET url` with a bearer token; the JSON answer.
pub async fn get_json(
    c: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    token: &str,
) -> serde_json::Value {
    c.get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `GET url` with a bearer token; the status code.
pub async fn get_status(
    c: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    token: &str,
) -> reqwest::StatusCode {
    c.get(url).bearer_auth(token).send().await.unwrap().status()
}

/// A running clavis on port 0.
pub struct Clavis {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub state: clavis::State,
    /// What the builder appended to the test's YAML (CA paths, the
    /// `upstream:` block): kept so a rewritten config keeps it.
    suffix: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Builds a clavis config: the YAML given, plus CA paths in a temp dir.
pub struct ClavisBuilder {
    yaml: String,
    env: HashMap<String, String>,
    request_timeout: String,
    resolve: Vec<(String, String)>,
    nameserver: Option<SocketAddr>,
    file: bool,
}

impl Clavis {
    /// The config file of a clavis started with [`ClavisBuilder::config_file`].
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("clavis.yaml")
    }

    /// Replaces the config file with `yaml` plus the builder's own blocks,
    /// as an editor saving it does (a new file renamed into place).
    pub fn write_config(&self, yaml: &str) {
        let tmp = self.dir.path().join(".clavis.yaml.tmp");
        std::fs::write(&tmp, format!("{yaml}{}", self.suffix)).unwrap();
        std::fs::rename(&tmp, self.config_path()).unwrap();
    }

    pub fn builder(yaml: &str) -> ClavisBuilder {
        ClavisBuilder {
            yaml: yaml.to_owned(),
            env: HashMap::new(),
            request_timeout: "5s".to_owned(),
            resolve: Vec::new(),
            nameserver: None,
            file: false,
        }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca/clavis-ca.pem")
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.ca_path()).unwrap()
    }

    pub fn proxy_url(&self, agent: Option<(&str, &str)>) -> String {
        match agent {
            Some((name, token)) => format!("http://{name}:{token}@{}", self.proxy),
            None => format!("http://{}", self.proxy),
        }
    }

    /// An HTTPS client going through the proxy, trusting the clavis CA only.
    pub fn client(&self, agent: Option<(&str, &str)>) -> reqwest::Client {
        self.client_builder(agent).build().unwrap()
    }

    pub fn client_builder(&self, agent: Option<(&str, &str)>) -> reqwest::ClientBuilder {
        self.client_builder_alpn(agent, &[b"h2", b"http/1.1"])
    }

    /// As [`Clavis::client_builder`], offering only `alpn` inside the tunnel
    /// (reqwest's `http1_only` alone still negotiates h2 over a preconfigured
    /// TLS config that offers it).
    pub fn client_builder_alpn(
        &self,
        agent: Option<(&str, &str)>,
        alpn: &[&[u8]],
    ) -> reqwest::ClientBuilder {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(self.ca_pem().as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .proxy(reqwest::Proxy::all(self.proxy_url(agent)).unwrap())
            .redirect(reqwest::redirect::Policy::none())
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Clavis {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

impl ClavisBuilder {
    /// Writes the config to `clavis.yaml` in the test's directory and
    /// starts from that file, so it can be reloaded (SPEC §13.2).
    pub fn config_file(mut self) -> Self {
        self.file = true;
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }

    /// `upstream.request_timeout` of the generated `upstream:` block (default 5s).
    pub fn request_timeout(mut self, t: &str) -> Self {
        self.request_timeout = t.to_owned();
        self
    }

    /// An extra `upstream.resolve` entry in the generated block; it replaces
    /// the kit's own entry for the same `host:port`.
    pub fn resolve(mut self, host_port: &str, addr: &str) -> Self {
        self.resolve.push((host_port.to_owned(), addr.to_owned()));
        self
    }

    /// `upstream.nameserver` of the generated `upstream:` block (a
    /// [`dns::Dns`] of the test): names without a `resolve` entry are
    /// looked up there.
    pub fn nameserver(mut self, addr: SocketAddr) -> Self {
        self.nameserver = Some(addr);
        self
    }

    /// Starts clavis with `upstream.resolve` pointing each `host:443` at
    /// `upstream` and trusting `ca` (pass `None` to leave it untrusted).
    pub async fn start(self, upstream: Option<&Upstream>, ca: Option<&TestCa>) -> Clavis {
        let dir = tempfile::tempdir().unwrap();
        let mut yaml = self.yaml.clone();
        // A top-level `ca:` block only (`extra_ca:` under `upstream:` is not one).
        if !yaml.lines().any(|l| l.starts_with("ca:")) {
            yaml.push_str(&format!(
                "\nca:\n  cert: {d}/ca/clavis-ca.pem\n  key: {d}/ca/clavis-ca.key\n  bundle: {d}/ca/clavis-ca-bundle.pem\n",
                d = dir.path().display()
            ));
        }
        if !yaml.lines().any(|l| l.starts_with("upstream:")) {
            yaml.push_str("\nupstream:\n");
            if let Some(ca) = ca {
                yaml.push_str(&format!("  extra_ca: [\"{}\"]\n", ca.pem_path().display()));
            }
            if let Some(ns) = self.nameserver {
                yaml.push_str(&format!("  nameserver: \"{ns}\"\n"));
            }
            yaml.push_str(&format!(
                "  connect_timeout: 2s\n  request_timeout: {}\n  resolve:\n",
                self.request_timeout
            ));
            let mut entries: Vec<(String, String)> = Vec::new();
            if let Some(up) = upstream {
                for host in &up.hosts {
                    entries.push((format!("{host}:443"), up.addr.to_string()));
                }
                if let Some(plain) = up.plain_addr {
                    entries.push(("plain.test.example:80".into(), plain.to_string()));
                }
            }
            entries.push(("unreachable.test.example:443".into(), "127.0.0.1:1".into()));
            entries.retain(|(k, _)| !self.resolve.iter().any(|(r, _)| r == k));
            entries.extend(self.resolve.iter().cloned());
            for (k, v) in entries {
                yaml.push_str(&format!("    \"{k}\": \"{v}\"\n"));
            }
        }
        let suffix = yaml[self.yaml.len()..].to_owned();
        let config = if self.file {
            let path = dir.path().join("clavis.yaml");
            std::fs::write(&path, &yaml).unwrap();
            clavis::Settings::from_file(&path, Arc::new(self.env.clone()))
        } else {
            clavis::Settings::from_yaml(&yaml, &self.env)
        }
        .unwrap_or_else(|e| panic!("test config invalid: {e}\n{yaml}"));
        let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (proxy_addr, admin_addr) = (proxy.local_addr().unwrap(), admin.local_addr().unwrap());
        let state = clavis::State::new(config, proxy_addr, admin_addr).unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(clavis::serve(state.clone(), proxy, admin, async {
            let _ = rx.await;
        }));
        Clavis {
            proxy: proxy_addr,
            admin: admin_addr,
            dir,
            state,
            suffix,
            stop: Some(tx),
            task: Some(task),
        }
    }
}

/// Opens a raw CONNECT tunnel and returns the socket after the proxy's answer
/// (status code and the socket).
pub async fn connect_raw(
    proxy: SocketAddr,
    target: &str,
    extra_headers: &str,
) -> (u16, tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra_headers}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, s)
}

/// Sends `request` (a raw proxy request, e.g. a CONNECT) on a new connection
/// to the proxy and returns the response head as text (up to the blank line)
/// and the socket, positioned at the first byte after the head.
pub async fn send_head(proxy: SocketAddr, request: &str) -> (String, tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    (String::from_utf8_lossy(&head).into_owned(), s)
}

/// The status code of a raw HTTP response (0 if there is none).
pub fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The value of header `name` (case-insensitive) in a raw HTTP response head.
pub fn header_of<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The body of a raw HTTP response, parsed as JSON (panics if it is not).
pub fn json_of(response: &str) -> serde_json::Value {
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {response}"))
}

/// TLS over a tunnel with a chosen SNI, trusting `ca_pem`; ALPN as given.
pub async fn tls_over(
    stream: tokio::net::TcpStream,
    sni: &str,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    connector.connect(name, stream).await
}

/// Sends one raw HTTP/1.1 request over an established stream and returns the
/// whole response as text (the server must close or send Content-Length).
pub async fn raw_exchange<S>(stream: &mut S, request: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf))
            .await
        {
            Ok(Ok(n)) => n,
            _ => break,
        };
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            });
            if len.is_some_and(|len| body.len() >= len) {
                break;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The usual config: one service per built-in header connector, with the
/// real keys below, and two agents.
pub const REAL_OPENAI: &str = "sk-REAL-openai-0123456789abcdef";
pub const REAL_ANTHROPIC: &str = "sk-ant-REAL-anthropic-0123456789";
pub const REAL_GITHUB: &str = "ghp_REALgithub0123456789abcdef";
pub const REAL_STRIPE: &str = "sk_test_REALstripe0123456789";
pub const REAL_BRAVE: &str = "BSA-REAL-brave-0123456789";

pub fn standard_yaml() -> String {
    format!(
        r#"
services:
  - {{ name: my-openai, connector: openai, credentials: {{ api_key: "{REAL_OPENAI}" }} }}
  - {{ name: my-anthropic, connector: anthropic, credentials: {{ api_key: "{REAL_ANTHROPIC}" }} }}
  - {{ name: my-github, connector: github, credentials: {{ api_key: "{REAL_GITHUB}" }} }}
  - {{ name: my-stripe, connector: stripe, credentials: {{ api_key: "{REAL_STRIPE}" }} }}
  - {{ name: my-brave, connector: brave-search, credentials: {{ api_key: "{REAL_BRAVE}" }} }}
agents:
  - {{ name: codex, token: codex-token, services: ["*"] }}
  - {{ name: narrow, token: narrow-token, services: [my-github] }}
"#
    )
}

pub const ALL_HOSTS: &[&str] = &[
    "api.openai.com",
    "api.anthropic.com",
    "api.github.com",
    "uploads.github.com",
    "api.stripe.com",
    "api.search.brave.com",
    "echo.test.example",
];

/// Writes a master key file the way an operator must: readable by its
/// owner only (clavis refuses one others may read).
pub fn write_master_key(path: &std::path::Path, key: impl AsRef<[u8]>) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, key).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A free loopback TCP port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 20 ms until it gives a value; fails the test after
/// `secs` (waits with a deadline, never a sleep as synchronisation).
pub async fn until<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < end,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// RFC 4648 base32 without padding (how TOTP seeds are written).
pub fn base32(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buf, mut bits) = (0u64, 0);
    for b in bytes {
        buf = (buf << 8) | u64::from(*b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(A[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(A[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// HMAC-SHA256 of `message` under `secret`, lower-case hex.
pub fn hmac_hex(secret: &str, message: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(message.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
