//! The sealed snapshot, through the real binary: what the API acknowledged
//! survives a SIGKILL; a snapshot sealed under another master key, or with a
//! flipped byte, is refused (non-zero exit, a clear message, the file left
//! as it was, and the admin port never answers).

// Helpers here are not `#[test]` functions, so clippy.toml's
// allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const ADMIN: &str = "admin-token-persist-0123456789";
const KEY_A: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";
const KEY_B: &str = "a0b1c2d3e4f5061728394a5b6c7d8e9ffedcba98765432100123456789abcdef";
const CONFIG_KEY: &str = "sk-config-defined-0123456789";

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A directory with a config for the real binary: fixed ports, a CA in the
/// directory, `store.master_key_file` + `store.snapshot`.
struct Setup {
    dir: tempfile::TempDir,
    admin: SocketAddr,
    proxy: SocketAddr,
    /// Also define a service in the config file (with credentials).
    config_service: bool,
}

impl Setup {
    fn new(config_service: bool) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        support::write_master_key(&dir.path().join("key-a"), format!("{KEY_A}\n"));
        support::write_master_key(&dir.path().join("key-b"), KEY_B);
        Setup {
            dir,
            admin: SocketAddr::from(([127, 0, 0, 1], support::free_port())),
            proxy: SocketAddr::from(([127, 0, 0, 1], support::free_port())),
            config_service,
        }
    }

    fn snapshot(&self) -> PathBuf {
        self.dir.path().join("store.snap")
    }

    fn config(&self, key_file: &str) -> PathBuf {
        let d = self.dir.path().display();
        let mut yaml = format!(
            "proxy: {{ listen: \"{}\" }}\n\
             admin: {{ listen: \"{}\", token: \"{ADMIN}\" }}\n\
             ca: {{ cert: \"{d}/ca/ca.pem\", key: \"{d}/ca/ca.key\", bundle: \"{d}/ca/bundle.pem\" }}\n\
             store: {{ master_key_file: \"{d}/{key_file}\", snapshot: \"{}\" }}\n",
            self.proxy,
            self.admin,
            self.snapshot().display()
        );
        if self.config_service {
            yaml.push_str(&format!(
                "services:\n  - {{ name: from-config, connector: openai, credentials: {{ api_key: \"{CONFIG_KEY}\" }} }}\n"
            ));
        }
        let path = self.dir.path().join(format!("clavis-{key_file}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        path
    }

    fn spawn(&self, key_file: &str, log: &str) -> Proc {
        let stderr = self.dir.path().join(log);
        let child = Command::new(env!("CARGO_BIN_EXE_clavis"))
            .args(["serve", "--config"])
            .arg(self.config(key_file))
            .args(["--log-format", "text"])
            .env("RUST_LOG", "info")
            // The multi-threaded scheduler, whatever this machine's CPUs
            // (tests/secrets_everywhere.rs runs the single-threaded one).
            .env("TOKIO_WORKER_THREADS", "2")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Proc {
            child,
            stderr,
            admin: self.admin,
        }
    }
}

struct Proc {
    child: Child,
    stderr: PathBuf,
    admin: SocketAddr,
}

impl Proc {
    fn base(&self) -> String {
        format!("http://{}", self.admin)
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Polls `/readyz` until 200; panics (with the log) if the process exits
    /// or 30 s pass.
    async fn ready(&mut self) {
        let c = http();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "clavis exited with {status} before ready:\n{}",
                    self.stderr()
                );
            }
            if let Ok(r) = c.get(format!("{}/readyz", self.base())).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "clavis not ready within 30 s:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for an exit that is expected without a signal; meanwhile
    /// `/readyz` (or anything on the admin port) must never answer.
    async fn refused(&mut self) -> (std::process::ExitStatus, String) {
        let c = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.stderr());
            }
            if let Ok(r) = c.get(format!("{}/readyz", self.base())).send().await {
                let status = r.status();
                self.kill();
                panic!(
                    "the admin port answered {status} while the snapshot should have been refused:\n{}",
                    self.stderr()
                );
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "clavis neither exited nor served within 30 s:\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill(&mut self) {
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the drain.
    fn stop(&mut self) {
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// Registers `name` (openai) and stores `key`; returns (registered, stored).
async fn register_and_store(
    c: &reqwest::Client,
    base: &str,
    name: &str,
    key: &str,
) -> Result<(bool, bool), reqwest::Error> {
    let r = c
        .post(format!("{base}/v1/services"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": name, "connector_name": "openai"}))
        .send()
        .await?;
    if r.status() != 201 {
        return Ok((false, false));
    }
    let id = r.json::<Value>().await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let r = c
        .post(format!("{base}/v1/services/{id}/credentials"))
        .bearer_auth(ADMIN)
        .json(&json!({"token_type": "api_key", "data": {"api_key": key}}))
        .send()
        .await?;
    let stored = r.status() == 200;
    // The body must be read for the answer to count as received.
    let _ = r.bytes().await?;
    Ok((true, stored))
}

async fn token_of(c: &reqwest::Client, base: &str, name: &str) -> Option<String> {
    let r = c
        .get(format!("{base}/v1/services/{name}/token"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    if r.status() != 200 {
        return None;
    }
    r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .map(str::to_owned)
}

async fn service(c: &reqwest::Client, base: &str, name: &str) -> Option<Value> {
    let r = c
        .get(format!("{base}/v1/services/{name}"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    (r.status() == 200).then_some(r.json().await.unwrap())
}

async fn acknowledged_credentials_survive_sigkill(config_service: bool) {
    let setup = Setup::new(config_service);
    let mut p = setup.spawn("key-a", "run1.log");
    p.ready().await;
    let base = p.base();
    let c = http();

    // Four writers store credentials as fast as they can; the process is
    // killed while they run.
    let registered = Arc::new(Mutex::new(Vec::<String>::new()));
    let stored = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (c, base) = (c.clone(), base.clone());
        let (registered, stored) = (registered.clone(), stored.clone());
        writers.push(tokio::spawn(async move {
            let started = Instant::now();
            for i in 0..5_000 {
                if started.elapsed() > Duration::from_secs(60) {
                    break;
                }
                let name = format!("w{w}-svc-{i}");
                let key = format!("sk-persist-w{w}-{i}-{:08x}", i * 2_654_435_761u64 as usize);
                match register_and_store(&c, &base, &name, &key).await {
                    Ok((r, s)) => {
                        if r {
                            registered.lock().unwrap().push(name.clone());
                        }
                        if s {
                            stored.lock().unwrap().push((name, key));
                        }
                    }
                    Err(_) => break, // the process is gone
                }
            }
        }));
    }
    // Kill once enough is stored, in the middle of the writers' loop.
    let deadline = Instant::now() + Duration::from_secs(60);
    while stored.lock().unwrap().len() < 40 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(137)).await;
    p.kill();
    for w in writers {
        w.await.unwrap();
    }
    let stored = stored.lock().unwrap().clone();
    let registered = registered.lock().unwrap().clone();
    assert!(
        stored.len() >= 40,
        "only {} stored before the kill",
        stored.len()
    );

    let mut p = setup.spawn("key-a", "run2.log");
    p.ready().await;
    let base = p.base();
    let mut lost = Vec::new();
    for name in &registered {
        if service(&c, &base, name).await.is_none() {
            lost.push(format!(
                "{name}: registered (201) but missing after restart"
            ));
        }
    }
    for (name, key) in &stored {
        match service(&c, &base, name).await {
            Some(s) if s["has_credentials"] == true => {}
            other => lost.push(format!("{name}: stored (200) but after restart: {other:?}")),
        }
        let got = token_of(&c, &base, name).await;
        if got.as_deref() != Some(key.as_str()) {
            lost.push(format!("{name}: token {got:?}, want {key:?}"));
        }
    }
    if config_service {
        assert_eq!(
            token_of(&c, &base, "from-config").await.as_deref(),
            Some(CONFIG_KEY)
        );
    }
    p.stop();
    assert!(
        lost.is_empty(),
        "{} problems with {} registered and {} stored services across SIGKILL + restart:\n{}\nlog of the restart:\n{}",
        lost.len(),
        registered.len(),
        stored.len(),
        lost.join("\n"),
        p.stderr()
    );
}

/// A snapshot with two stored credentials, written by a cleanly stopped clavis.
async fn seeded(config_service: bool) -> Setup {
    let setup = Setup::new(config_service);
    let mut p = setup.spawn("key-a", "seed.log");
    p.ready().await;
    let c = http();
    for (name, key) in [
        ("seed-one", "sk-seed-one-0123456"),
        ("seed-two", "sk-seed-two-6543210"),
    ] {
        assert_eq!(
            register_and_store(&c, &p.base(), name, key).await.unwrap(),
            (true, true)
        );
    }
    p.stop();
    assert!(setup.snapshot().exists(), "no snapshot written");
    setup
}

async fn another_master_key_is_refused(config_service: bool) {
    let setup = seeded(config_service).await;
    let before = std::fs::read(setup.snapshot()).unwrap();
    let mut p = setup.spawn("key-b", "other-key.log");
    let (status, stderr) = p.refused().await;
    assert!(
        !status.success(),
        "clavis started with another master key: {status}\n{stderr}"
    );
    assert!(
        stderr.contains("another master key"),
        "stderr does not say why: {stderr}"
    );
    assert_eq!(
        std::fs::read(setup.snapshot()).unwrap(),
        before,
        "the snapshot was changed by a refused start"
    );
    // The right key still opens it.
    let mut p = setup.spawn("key-a", "right-key.log");
    p.ready().await;
    assert_eq!(
        token_of(&http(), &p.base(), "seed-two").await.as_deref(),
        Some("sk-seed-two-6543210")
    );
    p.stop();
}

/// The header is 16 bytes of magic, a 4-byte version, an 8-byte key id and
/// an 8-byte generation; the sealed body follows.
const HEADER: usize = 36;

async fn flipped_bytes_are_refused(config_service: bool) {
    let setup = seeded(config_service).await;
    let original = std::fs::read(setup.snapshot()).unwrap();
    let len = original.len();
    assert!(len > HEADER + 28, "snapshot too short: {len} bytes");
    // (offset, what the message must say): the generation is authenticated
    // as associated data; nonce, ciphertext and tag are sealed.
    let body_words: &[&str] = &["tampered", "corrupt"];
    let header_words: &[&str] = &[
        "tampered",
        "corrupt",
        "not a clavis snapshot",
        "unsupported snapshot version",
        "another master key",
    ];
    let cases: Vec<(usize, &[&str])> = vec![
        (HEADER + 3, body_words),         // nonce
        (HEADER + 12 + 5, body_words),    // ciphertext start
        ((HEADER + len) / 2, body_words), // ciphertext middle
        (len - 1, body_words),            // tag
        (30, body_words),                 // generation (associated data)
        (2, header_words),                // magic
        (19, header_words),               // version
    ];
    for (i, (offset, words)) in cases.into_iter().enumerate() {
        let mut bytes = original.clone();
        bytes[offset] ^= 0x20;
        std::fs::write(setup.snapshot(), &bytes).unwrap();
        let mut p = setup.spawn("key-a", &format!("flip-{i}.log"));
        let (status, stderr) = p.refused().await;
        assert!(
            !status.success(),
            "byte {offset} flipped: clavis exited {status}\n{stderr}"
        );
        let lower = stderr.to_lowercase();
        assert!(
            words.iter().any(|w| lower.contains(w)),
            "byte {offset} flipped: stderr says none of {words:?}:\n{stderr}"
        );
        assert_eq!(
            std::fs::read(setup.snapshot()).unwrap(),
            bytes,
            "byte {offset} flipped: the refused snapshot was rewritten"
        );
    }
    // Control: the unflipped file still loads.
    std::fs::write(setup.snapshot(), &original).unwrap();
    let mut p = setup.spawn("key-a", "control.log");
    p.ready().await;
    assert_eq!(
        token_of(&http(), &p.base(), "seed-one").await.as_deref(),
        Some("sk-seed-one-0123456")
    );
    p.stop();
}

/// A truncated snapshot (e.g. copied half-way) is refused too.
async fn truncated_snapshot_is_refused(config_service: bool) {
    let setup = seeded(config_service).await;
    let original = std::fs::read(setup.snapshot()).unwrap();
    for cut in [10, HEADER, original.len() - 1] {
        std::fs::write(setup.snapshot(), &original[..cut]).unwrap();
        let mut p = setup.spawn("key-a", &format!("cut-{cut}.log"));
        let (status, stderr) = p.refused().await;
        assert!(!status.success(), "cut at {cut}: {status}\n{stderr}");
        assert_eq!(
            std::fs::read(setup.snapshot()).unwrap(),
            &original[..cut],
            "cut at {cut}: the refused snapshot was rewritten"
        );
    }
}

mod without_config_services {
    #[tokio::test]
    async fn acknowledged_credentials_survive_sigkill() {
        super::acknowledged_credentials_survive_sigkill(false).await;
    }

    #[tokio::test]
    async fn another_master_key_is_refused() {
        super::another_master_key_is_refused(false).await;
    }

    #[tokio::test]
    async fn flipped_bytes_are_refused() {
        super::flipped_bytes_are_refused(false).await;
    }

    #[tokio::test]
    async fn truncated_snapshot_is_refused() {
        super::truncated_snapshot_is_refused(false).await;
    }
}

/// The same, with a service defined in the config file as well (the usual
/// deployment: some services in YAML, more added through the API).
mod with_a_config_service {
    #[tokio::test]
    async fn acknowledged_credentials_survive_sigkill() {
        super::acknowledged_credentials_survive_sigkill(true).await;
    }

    #[tokio::test]
    async fn another_master_key_is_refused() {
        super::another_master_key_is_refused(true).await;
    }

    #[tokio::test]
    async fn flipped_bytes_are_refused() {
        super::flipped_bytes_are_refused(true).await;
    }

    #[tokio::test]
    async fn truncated_snapshot_is_refused() {
        super::truncated_snapshot_is_refused(true).await;
    }
}
