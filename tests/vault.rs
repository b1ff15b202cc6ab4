//! `${vault:mount/path#field}` (SPEC §13.3) against a real OpenBao dev
//! server the tests start themselves (`support::bao`): the clavis binary
//! reads secrets at start (exit 2 naming the reference when it cannot),
//! injects them, refreshes them, keeps the last good value while the
//! server is down, and never writes or logs them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::bao::{Bao, TokenReview};
use support::{free_port, until, TestCa, Upstream};

const ADMIN: &str = "admin-token-vault-tests-0123456789";
const FIRST: &str = "sk-VAULT-first-0123456789abcdef";
const SECOND: &str = "sk-VAULT-second-0123456789abcdef";
const THIRD: &str = "sk-VAULT-third-0123456789abcdef";

/// A clavis binary serving a config in its own directory.
struct Clavis {
    child: Child,
    dir: tempfile::TempDir,
    proxy: u16,
    admin: u16,
}

/// `vault.auth` of a test config.
enum Auth<'a> {
    TokenFile(&'a str),
    Kubernetes(&'a TokenReview),
}

/// A config with one OpenAI service whose key is `reference`, every file
/// clavis writes (audit, snapshot) in `dir`, and Vault at `bao`.
fn config(
    dir: &Path,
    bao: &str,
    auth: Auth<'_>,
    up: &Upstream,
    ca: &TestCa,
    reference: &str,
) -> (PathBuf, u16, u16) {
    let d = dir.display();
    let (proxy, admin) = (free_port(), free_port());
    support::write_master_key(&dir.join("master.key"), [7u8; 32]);
    let auth = match auth {
        Auth::TokenFile(token) => {
            std::fs::write(dir.join("vault-token"), format!("{token}\n")).unwrap();
            format!("{{ token_file: \"{d}/vault-token\" }}")
        }
        Auth::Kubernetes(review) => {
            std::fs::write(dir.join("sa-token"), &review.jwt).unwrap();
            format!("{{ kubernetes: {{ role: clavis, jwt_file: \"{d}/sa-token\" }} }}")
        }
    };
    let yaml = format!(
        "proxy: {{ listen: \"127.0.0.1:{proxy}\" }}\n\
         admin: {{ listen: \"127.0.0.1:{admin}\", token: {ADMIN} }}\n\
         ca: {{ cert: \"{d}/ca.pem\", key: \"{d}/ca.key\", bundle: \"{d}/bundle.pem\" }}\n\
         store: {{ master_key_file: \"{d}/master.key\", snapshot: \"{d}/snapshot\" }}\n\
         audit: {{ file: \"{d}/audit.jsonl\" }}\n\
         upstream:\n  extra_ca: [\"{ca}\"]\n  resolve: {{ \"api.openai.com:443\": \"{up}\" }}\n\
         vault:\n  address: {bao}\n  auth: {auth}\n  ca_file: \"{ca}\"\n  refresh: 1s\n\
         services:\n  - {{ name: openai, connector: openai, credentials: {{ api_key: \"{reference}\" }} }}\n",
        ca = ca.pem_path().display(),
        up = up.addr,
    );
    let path = dir.join("clavis.yaml");
    std::fs::write(&path, yaml).unwrap();
    (path, proxy, admin)
}

fn spawn(config: &Path) -> Child {
    let dir = config.parent().unwrap();
    Command::new(env!("CARGO_BIN_EXE_clavis"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .unwrap()
}

impl Clavis {
    /// clavis on a fresh config of its own ([`config`]), once ready.
    async fn start(
        bao: &Bao,
        auth: Auth<'_>,
        up: &Upstream,
        ca: &TestCa,
        reference: &str,
    ) -> Clavis {
        let dir = tempfile::tempdir().unwrap();
        let (path, proxy, admin) = config(dir.path(), &bao.address(), auth, up, ca, reference);
        let mut c = Clavis {
            child: spawn(&path),
            dir,
            proxy,
            admin,
        };
        let http = support::admin_client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = c.child.try_wait() {
                panic!("clavis exited with {status}:\n{}", c.output());
            }
            let ready = http
                .get(format!("http://127.0.0.1:{admin}/readyz"))
                .send()
                .await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return c;
            }
            assert!(Instant::now() < deadline, "not ready:\n{}", c.output());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything clavis wrote: stdout, stderr, the audit file, the snapshot.
    fn output(&self) -> String {
        ["stdout", "stderr", "audit.jsonl", "snapshot"]
            .iter()
            .map(|f| {
                String::from_utf8_lossy(&std::fs::read(self.dir.path().join(f)).unwrap_or_default())
                    .into_owned()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// An agent's HTTPS client through the proxy, trusting clavis's CA.
    fn client(&self) -> reqwest::Client {
        let pem = std::fs::read(self.dir.path().join("ca.pem")).unwrap();
        reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .proxy(reqwest::Proxy::all(format!("http://127.0.0.1:{}", self.proxy)).unwrap())
            .build()
            .unwrap()
    }

    /// The key the upstream saw on a fresh request.
    async fn injected(&self, up: &Upstream) -> String {
        let r = self
            .client()
            .get("https://api.openai.com/v1/models")
            .bearer_auth("placeholder")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", self.output());
        let seen = up.last();
        seen.header("authorization").unwrap_or_default().to_owned()
    }

    async fn errors_counted(&self) -> u64 {
        let text = support::admin_client()
            .get(format!("http://127.0.0.1:{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with("clavis_secret_source_errors_total{source=\"vault\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Clavis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `clavis serve` that must fail: its exit code and stderr.
fn serve_fails(config: &Path) -> (Option<i32>, String) {
    let mut child = spawn(config);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("clavis did not exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(config.parent().unwrap().join("stderr")).unwrap();
    (status.code(), stderr)
}

async fn setup() -> (TestCa, Upstream, Bao) {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, &["api.openai.com"]).await;
    let bao = Bao::start(&ca, 0).await;
    bao.put("openai", json!({ "api_key": FIRST, "org": "org-1" }))
        .await;
    bao.policy("clavis", &["openai"]).await;
    (ca, up, bao)
}

#[tokio::test]
async fn a_token_file_reads_the_key_which_is_injected_and_never_written() {
    let (ca, up, bao) = setup().await;
    let token = bao.token(&["clavis"]).await;
    let clavis = Clavis::start(
        &bao,
        Auth::TokenFile(&token),
        &up,
        &ca,
        "${vault:secret/openai#api_key}",
    )
    .await;

    assert_eq!(clavis.injected(&up).await, format!("Bearer {FIRST}"));

    // A service added through the API lands in the snapshot; the Vault one's key does not.
    let output = clavis.output();
    assert!(
        output.contains("openai"),
        "the snapshot and the audit name the service"
    );
    assert!(
        !output.contains(FIRST),
        "the Vault value was written or logged:\n{output}"
    );
    assert!(
        !output.contains(&token),
        "the Vault token was written or logged"
    );
}

#[tokio::test]
async fn a_changed_secret_reaches_new_requests_within_the_refresh() {
    let (ca, up, bao) = setup().await;
    let token = bao.token(&["clavis"]).await;
    let clavis = Clavis::start(
        &bao,
        Auth::TokenFile(&token),
        &up,
        &ca,
        "${vault:secret/openai#api_key}",
    )
    .await;
    assert_eq!(clavis.injected(&up).await, format!("Bearer {FIRST}"));

    bao.put("openai", json!({ "api_key": SECOND, "org": "org-1" }))
        .await;
    until("the new key to be injected", 15, || async {
        (clavis.injected(&up).await == format!("Bearer {SECOND}")).then_some(())
    })
    .await;
    assert!(!clavis.output().contains(SECOND));
}

#[tokio::test]
async fn a_stopped_server_keeps_the_last_good_value_counts_errors_and_a_restart_is_picked_up() {
    let (ca, up, mut bao) = setup().await;
    // The root token: a restarted dev server has the same one.
    let clavis = Clavis::start(
        &bao,
        Auth::TokenFile(support::bao::ROOT_TOKEN),
        &up,
        &ca,
        "${vault:secret/openai#api_key}",
    )
    .await;
    assert_eq!(clavis.injected(&up).await, format!("Bearer {FIRST}"));

    let port = bao.tls_port;
    bao.stop();
    until("a refresh error to be counted", 15, || async {
        (clavis.errors_counted().await >= 2).then_some(())
    })
    .await;
    assert_eq!(
        clavis.injected(&up).await,
        format!("Bearer {FIRST}"),
        "the last good value stays"
    );
    let stderr = std::fs::read_to_string(clavis.dir.path().join("stderr")).unwrap();
    assert!(
        stderr.contains("${vault:secret/openai#api_key}"),
        "the log names the reference:\n{stderr}"
    );

    let bao = Bao::start(&ca, port).await;
    bao.put("openai", json!({ "api_key": THIRD })).await;
    until("the restarted server's value", 15, || async {
        (clavis.injected(&up).await == format!("Bearer {THIRD}")).then_some(())
    })
    .await;
    assert!(!clavis.output().contains(THIRD));
}

#[tokio::test]
async fn an_unreachable_vault_at_start_exits_2_naming_the_reference() {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, &["api.openai.com"]).await;
    let dir = tempfile::tempdir().unwrap();
    let nobody = format!("https://127.0.0.1:{}", free_port());
    let (path, ..) = config(
        dir.path(),
        &nobody,
        Auth::TokenFile("t"),
        &up,
        &ca,
        "${vault:secret/openai#api_key}",
    );
    let (code, stderr) = serve_fails(&path);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("${vault:secret/openai#api_key}") && stderr.contains("cannot reach"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_missing_field_or_a_denied_path_exits_2_naming_the_reference() {
    let (ca, up, bao) = setup().await;
    let token = bao.token(&["clavis"]).await;
    let dir = tempfile::tempdir().unwrap();
    let (path, ..) = config(
        dir.path(),
        &bao.address(),
        Auth::TokenFile(&token),
        &up,
        &ca,
        "${vault:secret/openai#nope}",
    );
    let (code, stderr) = serve_fails(&path);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("${vault:secret/openai#nope}") && stderr.contains("no field"),
        "{stderr}"
    );

    bao.put("other", json!({ "api_key": SECOND })).await;
    let (path, ..) = config(
        dir.path(),
        &bao.address(),
        Auth::TokenFile(&token),
        &up,
        &ca,
        "${vault:secret/other#api_key}",
    );
    let (code, stderr) = serve_fails(&path);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("${vault:secret/other#api_key}") && stderr.contains("permission denied"),
        "{stderr}"
    );
    assert!(!stderr.contains(SECOND) && !stderr.contains(FIRST));
}

#[tokio::test]
async fn a_malformed_reference_is_a_config_error_naming_its_path() {
    let ca = TestCa::new();
    let up = Upstream::start(&ca, &["api.openai.com"]).await;
    let dir = tempfile::tempdir().unwrap();
    let (path, ..) = config(
        dir.path(),
        "https://127.0.0.1:1",
        Auth::TokenFile("t"),
        &up,
        &ca,
        "${vault:secret/openai}",
    );
    let (code, stderr) = serve_fails(&path);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("services[0].credentials.api_key") && stderr.contains("#field"),
        "{stderr}"
    );

    // A reference with no vault: section to read it from.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("secret/openai}", "secret/openai#api_key}");
    let text: String = text.split("vault:\n").next().unwrap().to_owned()
        + &text[text.find("services:").unwrap()..];
    std::fs::write(&path, text).unwrap();
    let (code, stderr) = serve_fails(&path);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("services[0].credentials.api_key")
            && stderr.contains("needs a vault: section"),
        "{stderr}"
    );
}

#[tokio::test]
async fn kubernetes_auth_logs_in_with_the_service_account_jwt() {
    let (ca, up, bao) = setup().await;
    let review = TokenReview::start("agents", "clavis").await;
    bao.kubernetes_auth(&review, "clavis", &["clavis"]).await;
    let clavis = Clavis::start(
        &bao,
        Auth::Kubernetes(&review),
        &up,
        &ca,
        "${vault:secret/openai#api_key}",
    )
    .await;
    assert_eq!(clavis.injected(&up).await, format!("Bearer {FIRST}"));
    assert!(
        review.reviews.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "OpenBao asked the cluster"
    );

    bao.put("openai", json!({ "api_key": SECOND })).await;
    until("the new key through the Kubernetes login", 15, || async {
        (clavis.injected(&up).await == format!("Bearer {SECOND}")).then_some(())
    })
    .await;
    assert!(!clavis.output().contains(&review.jwt), "the JWT was logged");
}

#[tokio::test]
async fn a_refused_service_account_exits_2_naming_the_login() {
    let (ca, up, bao) = setup().await;
    let review = TokenReview::start("agents", "someone-else").await;
    bao.kubernetes_auth(&review, "clavis", &["clavis"]).await;
    let dir = tempfile::tempdir().unwrap();
    let (path, ..) = config(
        dir.path(),
        &bao.address(),
        Auth::Kubernetes(&review),
        &up,
        &ca,
        "${vault:secret/openai#api_key}",
    );
    std::fs::write(dir.path().join("sa-token"), "not.a.valid-jwt").unwrap();
    let (code, stderr) = serve_fails(&path);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("${vault:secret/openai#api_key}")
            && stderr.contains("login to auth/kubernetes refused"),
        "{stderr}"
    );
}
