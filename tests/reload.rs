//! Reload (SPEC §13.2): a rotated `${file:}` credential, a Kubernetes
//! secret swap and a poll are picked up without a restart; what was in
//! flight finishes on what it started with; a broken config is refused
//! (422, audited, counted) and the old one keeps serving; `SIGHUP` reloads
//! the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;

use serde_json::{json, Value};
use support::*;

const ADMIN: &str = "admin-token-0123456789abcdef";
const CODEX: (&str, &str) = ("codex", "codex-token");
const OLD_KEY: &str = "sk-OLD-rotating-0123456789";
const NEW_KEY: &str = "sk-NEW-rotating-9876543210";

/// A clavis on a config file whose `my-openai` key is read from
/// `secrets/<key_file>`; `extra` goes at the top of the YAML.
struct Kit {
    _ca: TestCa,
    up: Upstream,
    clavis: Clavis,
    secrets: tempfile::TempDir,
}

fn config(key_path: &Path, extra: &str, more_services: &str) -> String {
    format!(
        "admin: {{ token: \"{ADMIN}\" }}\n{extra}\nservices:\n  - {{ name: my-openai, connector: openai, credentials: {{ api_key: \"${{file:{}}}\" }} }}\n  - {{ name: my-stripe, connector: stripe, credentials: {{ api_key: \"{REAL_STRIPE}\" }} }}\n{more_services}agents:\n  - {{ name: codex, token: codex-token, services: [\"*\"] }}\n  - {{ name: narrow, token: narrow-token, services: [my-stripe] }}\n",
        key_path.display()
    )
}

impl Kit {
    async fn start(extra: &str) -> Kit {
        let secrets = tempfile::tempdir().unwrap();
        std::fs::write(secrets.path().join("openai.key"), OLD_KEY).unwrap();
        Kit::start_with(secrets, "openai.key", extra).await
    }

    async fn start_with(secrets: tempfile::TempDir, key: &str, extra: &str) -> Kit {
        let ca = TestCa::new();
        let up = Upstream::start(&ca, ALL_HOSTS).await;
        let yaml = config(&secrets.path().join(key), extra, "");
        let clavis = Clavis::builder(&yaml)
            .config_file()
            .start(Some(&up), Some(&ca))
            .await;
        Kit {
            _ca: ca,
            up,
            clavis,
            secrets,
        }
    }

    fn key_path(&self) -> std::path::PathBuf {
        self.secrets.path().join("openai.key")
    }

    /// Replaces the key file as a secret manager does (new file, rename).
    fn rotate(&self, key: &str) {
        let tmp = self.secrets.path().join(".openai.key.tmp");
        std::fs::write(&tmp, key).unwrap();
        std::fs::rename(&tmp, self.key_path()).unwrap();
    }

    fn api(&self, path: &str) -> String {
        format!("http://{}{path}", self.clavis.admin)
    }

    /// `POST /v1/reload` as `token`: status and answer.
    async fn reload(&self, token: &str) -> (u16, Value) {
        let r = admin_client()
            .post(self.api("/v1/reload"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// One GET to OpenAI on a new connection: status and the key the
    /// upstream saw.
    async fn openai_key(&self, agent: (&str, &str)) -> (u16, Option<String>) {
        let before = self.up.seen().len();
        let r = self
            .clavis
            .client(Some(agent))
            .get("https://api.openai.com/v1/models")
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let seen = self.up.seen();
        let key = (seen.len() > before)
            .then(|| {
                seen.last()
                    .and_then(|s| s.header("authorization").map(str::to_owned))
            })
            .flatten();
        (status, key)
    }

    async fn metric(&self, line: &str) -> Option<f64> {
        let text = admin_client()
            .get(self.api("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    async fn reload_events(&self) -> Vec<Value> {
        let audit = get_json(&admin_client(), self.api("/v1/audit?limit=100"), ADMIN).await;
        audit
            .as_array()
            .or_else(|| audit["events"].as_array())
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["action"] == "reload")
            .collect()
    }
}

fn bearer(key: &str) -> Option<String> {
    Some(format!("Bearer {key}"))
}

async fn wait_for_key(kit: &Kit, key: &str, what: &str) {
    until(what, 15, || async {
        (kit.openai_key(CODEX).await.1 == bearer(key)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_rotated_file_credential_is_picked_up_by_the_watcher() {
    // Polling off: only inotify can see the change.
    let kit = Kit::start("reload: { poll: off }\n").await;
    assert_eq!(kit.openai_key(CODEX).await, (200, bearer(OLD_KEY)));
    kit.rotate(NEW_KEY);
    wait_for_key(&kit, NEW_KEY, "the watcher to load the rotated key").await;
    let events = kit.reload_events().await;
    assert!(
        events.iter().any(|e| e["detail"]["ok"] == true
            && e["detail"]["note"].as_str().unwrap().contains("~my-openai")),
        "{events:?}"
    );
    let text = serde_json::to_string(&events).unwrap();
    assert!(!text.contains(NEW_KEY) && !text.contains(OLD_KEY), "{text}");
}

#[tokio::test]
async fn a_kubernetes_secret_swap_is_picked_up() {
    use std::os::unix::fs::symlink;
    // The layout of a Secret volume: key -> ..data/key, ..data -> ..<timestamp>.
    let secrets = tempfile::tempdir().unwrap();
    let d = secrets.path();
    std::fs::create_dir(d.join("..2026_12_03_a")).unwrap();
    std::fs::write(d.join("..2026_12_03_a/openai.key"), OLD_KEY).unwrap();
    symlink("..2026_12_03_a", d.join("..data")).unwrap();
    symlink("..data/openai.key", d.join("openai.key")).unwrap();
    let kit = Kit::start_with(secrets, "openai.key", "reload: { poll: off }\n").await;
    assert_eq!(kit.openai_key(CODEX).await, (200, bearer(OLD_KEY)));

    // The kubelet's update: a new directory, a new link, renamed over ..data.
    let d = kit.secrets.path();
    std::fs::create_dir(d.join("..2026_12_03_b")).unwrap();
    std::fs::write(d.join("..2026_12_03_b/openai.key"), NEW_KEY).unwrap();
    symlink("..2026_12_03_b", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    std::fs::remove_dir_all(d.join("..2026_12_03_a")).unwrap();
    wait_for_key(&kit, NEW_KEY, "the ..data swap to be seen").await;
}

#[tokio::test]
async fn polling_alone_sees_a_rotation() {
    // No inotify at all (`watch: false`): the poll hashes the files.
    let kit = Kit::start("reload: { watch: false, poll: 200ms }\n").await;
    assert_eq!(kit.openai_key(CODEX).await, (200, bearer(OLD_KEY)));
    kit.rotate(NEW_KEY);
    wait_for_key(&kit, NEW_KEY, "the poll to load the rotated key").await;
    // Unchanged files are not reloaded again at every poll.
    let n = kit.reload_events().await.len();
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(kit.reload_events().await.len(), n);
}

/// Reads an SSE answer's first event, then the rest; how many events.
async fn first_event(r: &mut reqwest::Response) -> usize {
    let chunk = r.chunk().await.unwrap().unwrap();
    String::from_utf8_lossy(&chunk).matches("data:").count()
}

async fn rest_of(mut r: reqwest::Response) -> usize {
    let mut n = 0;
    while let Some(chunk) = r.chunk().await.unwrap() {
        n += String::from_utf8_lossy(&chunk).matches("data:").count();
    }
    n
}

#[tokio::test]
async fn an_open_stream_finishes_on_the_old_credential() {
    let kit = Kit::start("reload: { poll: off, watch: false }\n").await;
    let old = kit.clavis.client(Some(CODEX));
    let mut stream = old
        .get("https://api.openai.com/sse?n=10&gap_ms=100")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut events = first_event(&mut stream).await;

    kit.rotate(NEW_KEY);
    let (status, answer) = kit.reload(ADMIN).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["ok"], true);
    assert_eq!(
        answer["changes"]["services"]["changed"],
        json!(["my-openai"])
    );

    events += rest_of(stream).await;
    assert_eq!(events, 10, "the stream ran to its end");
    let sse = kit
        .up
        .seen()
        .into_iter()
        .find(|s| s.path.starts_with("/sse"))
        .unwrap();
    assert_eq!(
        sse.header("authorization"),
        Some(format!("Bearer {OLD_KEY}").as_str())
    );
    // A new request on a new connection carries the new key.
    assert_eq!(kit.openai_key(CODEX).await, (200, bearer(NEW_KEY)));
}

#[tokio::test]
async fn a_removed_service_finishes_its_stream_then_is_refused() {
    let kit = Kit::start("reload: { poll: off, watch: false }\n").await;
    let mut stream = kit
        .clavis
        .client(Some(CODEX))
        .get("https://api.openai.com/sse?n=8&gap_ms=100")
        .send()
        .await
        .unwrap();
    let mut events = first_event(&mut stream).await;
    // The file without my-openai.
    let yaml = config(&kit.key_path(), "reload: { poll: off, watch: false }\n", "")
        .replace(
            &format!(
                "  - {{ name: my-openai, connector: openai, credentials: {{ api_key: \"${{file:{}}}\" }} }}\n",
                kit.key_path().display()
            ),
            "",
        );
    kit.clavis.write_config(&yaml);
    let (status, answer) = kit.reload(ADMIN).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["changes"]["services"]["removed"],
        json!(["my-openai"])
    );
    events += rest_of(stream).await;
    assert_eq!(events, 8, "the request in flight finished");
    assert_eq!(kit.openai_key(CODEX).await.0, 403);
}

#[tokio::test]
async fn a_policy_added_by_reload_applies_to_new_tunnels_not_open_ones() {
    let extra = "reload: { poll: off, watch: false }\n";
    let kit = Kit::start(extra).await;
    // One h2 connection: the tunnel stays open between requests.
    let old = kit.clavis.client(Some(CODEX));
    let post = |c: &reqwest::Client| {
        c.post("https://api.openai.com/v1/chat/completions")
            .header("content-type", "application/json")
            .body(r#"{"model":"m","messages":[]}"#)
            .send()
    };
    assert_eq!(post(&old).await.unwrap().status(), 200);

    let readonly = config(&kit.key_path(), extra, "").replace(
        "connector: openai, credentials",
        "connector: openai, readonly: true, credentials",
    );
    kit.clavis.write_config(&readonly);
    let (status, answer) = kit.reload(ADMIN).await;
    assert_eq!(status, 200, "{answer}");

    // The open tunnel keeps the catalog it took at CONNECT.
    assert_eq!(post(&old).await.unwrap().status(), 200);
    // A new tunnel gets the new policy.
    let new = kit.clavis.client(Some(CODEX));
    assert_eq!(post(&new).await.unwrap().status(), 403);
    assert_eq!(
        new.get("https://api.openai.com/v1/models")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn a_broken_config_is_refused_and_the_old_one_keeps_serving() {
    let kit = Kit::start("reload: { poll: off, watch: false }\n").await;
    kit.clavis
        .write_config("admin: { token: \"admin-token-0123456789abcdef\" }\nreload: { poll: off, watch: false }\nservices:\n  - name: my-openai\n    connector: opnai\n");
    let (status, answer) = kit.reload(ADMIN).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["ok"], false);
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("clavis.yaml"), "{error}");
    assert!(error.contains("services[0].connector"), "{error}");
    assert!(error.contains("(line 5)"), "{error}");

    assert_eq!(kit.openai_key(CODEX).await, (200, bearer(OLD_KEY)));
    let events = kit.reload_events().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["detail"]["ok"], false);
    assert_eq!(events[0]["actor"], "admin");
    assert_eq!(
        kit.metric("clavis_config_reloads_total{result=\"error\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        kit.metric("clavis_config_reloads_total{result=\"ok\"}")
            .await,
        Some(0.0)
    );
}

#[tokio::test]
async fn a_setting_that_needs_a_restart_is_refused_by_name() {
    let extra = "reload: { poll: off, watch: false }\n";
    let kit = Kit::start(extra).await;
    let yaml = config(
        &kit.key_path(),
        &format!("{extra}proxy: {{ listen: \"127.0.0.1:1\" }}\n"),
        "",
    );
    kit.clavis.write_config(&yaml);
    let (status, answer) = kit.reload(ADMIN).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(
        answer["error"],
        "proxy.listen changed: restart clavis to apply it"
    );
    assert_eq!(kit.openai_key(CODEX).await, (200, bearer(OLD_KEY)));
}

#[tokio::test]
async fn an_agent_may_not_reload() {
    let kit = Kit::start("reload: { poll: off, watch: false }\n").await;
    let (status, _) = kit.reload("narrow-token").await;
    assert_eq!(status, 403);
    let audit = get_json(&admin_client(), kit.api("/v1/audit?limit=20"), ADMIN).await;
    let text = audit.to_string();
    assert!(
        text.contains("\"denied\"") && text.contains("/v1/reload"),
        "{text}"
    );
    assert!(kit.reload_events().await.is_empty());
}

#[tokio::test]
async fn services_from_the_api_survive_and_removed_config_services_go() {
    let extra = "reload: { poll: off, watch: false }\n";
    let kit = Kit::start(extra).await;
    let c = admin_client();
    let r = c
        .post(kit.api("/v1/services"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "my-rest", "connector_name": "anthropic"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let yaml = config(&kit.key_path(), extra, "").replace(
        &format!("  - {{ name: my-stripe, connector: stripe, credentials: {{ api_key: \"{REAL_STRIPE}\" }} }}\n"),
        "  - { name: my-brave, connector: brave-search, credentials: { api_key: \"BSA-new-0123456789\" } }\n",
    );
    let yaml = yaml.replace("services: [my-stripe]", "services: [my-brave]");
    kit.clavis.write_config(&yaml);
    let (status, answer) = kit.reload(ADMIN).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["changes"]["services"]["added"], json!(["my-brave"]));
    assert_eq!(
        answer["changes"]["services"]["removed"],
        json!(["my-stripe"])
    );
    assert_eq!(answer["changes"]["agents"]["changed"], json!(["narrow"]));

    let list = get_json(&c, kit.api("/v1/services"), ADMIN)
        .await
        .to_string();
    assert!(list.contains("my-rest"), "{list}");
    assert!(list.contains("my-brave"), "{list}");
    assert!(!list.contains("my-stripe"), "{list}");
    let r = kit
        .clavis
        .client(Some(CODEX))
        .get("https://api.search.brave.com/res/v1/web/search?q=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        kit.up.last().header("x-subscription-token"),
        Some("BSA-new-0123456789")
    );
}

#[tokio::test]
async fn an_agents_new_token_replaces_the_old_one() {
    let extra = "reload: { poll: off, watch: false }\n";
    let kit = Kit::start(extra).await;
    let yaml = config(&kit.key_path(), extra, "").replace(
        "{ name: codex, token: codex-token,",
        "{ name: codex, token: codex-token-rotated,",
    );
    kit.clavis.write_config(&yaml);
    let (status, answer) = kit.reload(ADMIN).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["changes"]["agents"]["changed"], json!(["codex"]));
    let old = kit
        .clavis
        .client(Some(CODEX))
        .get("https://api.openai.com/v1/models")
        .send()
        .await;
    // 407 to the CONNECT: reqwest reports a failed tunnel as an error.
    assert!(old.is_err() || old.unwrap().status() == 407);
    assert_eq!(
        kit.openai_key(("codex", "codex-token-rotated")).await,
        (200, bearer(OLD_KEY))
    );
}

#[tokio::test]
async fn budget_counts_survive_a_reload() {
    let budget =
        "budgets:\n  - { name: day, service: my-openai, window: 1d, limit: { requests: 2 } }\n";
    let extra = format!("reload: {{ poll: off, watch: false }}\n{budget}");
    let kit = Kit::start(&extra).await;
    assert_eq!(kit.openai_key(CODEX).await.0, 200);
    let used = || async {
        let b = get_json(&admin_client(), kit.api("/v1/budgets"), ADMIN).await;
        b.as_array()?.iter().find(|b| b["name"] == "day")?["used"].as_f64()
    };
    until("the first request to be counted", 10, || async {
        (used().await == Some(1.0)).then_some(())
    })
    .await;
    // Another change in the same reload: the budget itself is unchanged.
    let yaml = config(&kit.key_path(), &extra, "").replace(
        "agents:\n",
        "agents:\n  - { name: extra, token: extra-token-123456, services: [my-stripe] }\n",
    );
    kit.clavis.write_config(&yaml);
    let (status, answer) = kit.reload(ADMIN).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(used().await, Some(1.0), "the count survived");
    assert_eq!(kit.openai_key(CODEX).await.0, 200);
    until("the second request to be counted", 10, || async {
        (used().await == Some(2.0)).then_some(())
    })
    .await;
    assert_eq!(kit.openai_key(CODEX).await.0, 429);
}

#[tokio::test]
async fn sighup_reloads_the_running_binary() {
    let bin = Binary::start("reload: { poll: off, watch: false }\n").await;
    assert!(!bin.agents().await.unwrap().contains("hupped"));
    bin.add_agent("hupped");
    // SAFETY: kill(2) with our child's pid and a valid signal number.
    assert_eq!(unsafe { libc::kill(bin.pid() as i32, libc::SIGHUP) }, 0);
    until("SIGHUP to reload the config", 15, || async {
        bin.agents().await.filter(|t| t.contains("hupped"))
    })
    .await;
    let mut serve = bin.serve;
    assert!(serve.try_wait().unwrap().is_none(), "SIGHUP ended clavis");
    serve.kill().await.unwrap();
}

/// The clavis binary serving a config file of its own (in `_dir`), for
/// what only a separate process shows: signals, its threads.
struct Binary {
    serve: tokio::process::Child,
    config: std::path::PathBuf,
    agents_url: String,
    _dir: tempfile::TempDir,
}

impl Binary {
    /// Ports, admin token and CA, then `extra`; ready once the admin port answers.
    async fn start(extra: &str) -> Binary {
        let dir = tempfile::tempdir().unwrap();
        let (proxy, admin) = (free_port(), free_port());
        let d = dir.path().display();
        let config = dir.path().join("clavis.yaml");
        std::fs::write(
            &config,
            format!(
                "proxy: {{ listen: \"127.0.0.1:{proxy}\" }}\n\
                 admin: {{ listen: \"127.0.0.1:{admin}\", token: {ADMIN} }}\n\
                 ca: {{ cert: \"{d}/ca.pem\", key: \"{d}/ca.key\", bundle: \"{d}/bundle.pem\" }}\n\
                 {extra}"
            ),
        )
        .unwrap();
        let serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_clavis"))
            .args(["serve", "--config", config.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let bin = Binary {
            serve,
            config,
            agents_url: format!("http://127.0.0.1:{admin}/v1/agents"),
            _dir: dir,
        };
        until("clavis to start", 30, || async {
            bin.agents().await.filter(|t| t.starts_with('['))
        })
        .await;
        bin
    }

    fn pid(&self) -> u32 {
        self.serve.id().unwrap()
    }

    /// `GET /v1/agents`, as text.
    async fn agents(&self) -> Option<String> {
        let r = admin_client()
            .get(&self.agents_url)
            .bearer_auth(ADMIN)
            .send()
            .await
            .ok()?;
        r.text().await.ok()
    }

    /// Appends an agent to the config file (read by the next reload).
    fn add_agent(&self, name: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(
            &self.config,
            format!("{text}agents:\n  - {{ name: {name}, token: {name}-token-0123456789 }}\n"),
        )
        .unwrap();
    }
}

/// The voluntary context switches of `pid`'s inotify thread (notify names
/// it "notify-rs inotify loop"; the kernel keeps 15 bytes of it).
fn watcher_wakeups(pid: u32) -> Option<u64> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with("notify-rs") {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).ok()?;
        return status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok());
    }
    None
}

/// Reading the config is no change: inotify reports opens, and the check a
/// kick starts reads the files, so a watcher that kicked on opens checked
/// again and again, four times a second, on the proxy's core, forever.
#[tokio::test]
async fn reading_the_config_starts_no_reload_check() {
    let bin = Binary::start("reload: { poll: off, watch: true }\n").await;
    let pid = bin.pid();
    // Let start-up's own file writes settle (one check at most).
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    // Someone reads the config (an operator's `cat`, a backup job).
    std::fs::read_to_string(&bin.config).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let before =
        watcher_wakeups(pid).expect("clavis runs an inotify thread when reload.watch is on");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let after = watcher_wakeups(pid).unwrap();
    assert_eq!(
        after,
        before,
        "the watcher woke {} times in 1.5 s with nothing changing",
        after - before
    );
    // A real change is still seen.
    bin.add_agent("watched");
    until("the watcher to reload the changed config", 15, || async {
        bin.agents().await.filter(|t| t.contains("watched"))
    })
    .await;
    let mut serve = bin.serve;
    serve.kill().await.unwrap();
}
