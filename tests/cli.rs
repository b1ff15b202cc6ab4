//! The binary's own inputs outside the config file, `clavis health`, and
//! the process hygiene of a running `clavis serve`.

// Helpers here are not `#[test]` functions, so clippy.toml's
// allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn a_bad_worker_count_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["abc", "0", "-1", ""] {
        let out = Command::new(env!("CARGO_BIN_EXE_clavis"))
            .arg("serve")
            .current_dir(dir.path())
            .env("TOKIO_WORKER_THREADS", bad)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {stderr}");
        assert!(
            stderr.contains("TOKIO_WORKER_THREADS must be a positive integer")
                && stderr.contains(&format!("{bad:?}")),
            "{bad:?}: {stderr}"
        );
    }
}

/// `clavis health`: the exec probe of the Kubernetes manifests (`deploy/`).
mod health {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::process::{Command, Output, Stdio};
    use std::time::{Duration, Instant};

    fn health(args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_clavis"))
            .arg("health")
            .args(args)
            .output()
            .unwrap()
    }

    fn stderr(out: &Output) -> String {
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    #[test]
    fn nothing_listening_is_exit_1_naming_the_address() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let out = health(&["--admin", &format!("127.0.0.1:{port}")]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("not ready at 127.0.0.1:{port}")),
            "{}",
            stderr(&out)
        );
    }

    #[test]
    fn a_503_is_exit_1_with_the_status() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let answer = std::thread::spawn(move || {
            let (mut conn, _) = server.accept().unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.ends_with(b"\r\n\r\n") {
                let n = conn.read(&mut chunk).unwrap();
                assert!(n > 0, "the probe closed before its request ended");
                buf.extend_from_slice(&chunk[..n]);
            }
            conn.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
            String::from_utf8_lossy(&buf).into_owned()
        });
        let out = health(&["--admin", &addr.to_string()]);
        let request = answer.join().unwrap();
        assert!(request.starts_with("GET /readyz HTTP/1.1\r\n"), "{request}");
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("503"), "{}", stderr(&out));
    }

    #[test]
    fn a_bad_config_is_exit_2() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("clavis.yaml");
        std::fs::write(&config, "admin: { listen: nowhere }\n").unwrap();
        let out = health(&["--config", config.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains("admin.listen"), "{}", stderr(&out));
    }

    /// The probe reads the same config as `serve`; a wildcard admin address
    /// is asked on loopback.
    #[test]
    fn ready_once_clavis_serves_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let free = || {
            TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (proxy, admin) = (free(), free());
        let d = dir.path().display();
        let config = dir.path().join("clavis.yaml");
        std::fs::write(
            &config,
            format!(
                "proxy: {{ listen: \"127.0.0.1:{proxy}\" }}\n\
                 admin: {{ listen: \"0.0.0.0:{admin}\", allow_remote: true, token: admin-token-health-0123456789 }}\n\
                 ca: {{ cert: \"{d}/ca.pem\", key: \"{d}/ca.key\", bundle: \"{d}/bundle.pem\" }}\n"
            ),
        )
        .unwrap();
        let config = config.to_str().unwrap();
        let mut serve = Command::new(env!("CARGO_BIN_EXE_clavis"))
            .args(["serve", "--config", config])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let result = loop {
            let out = health(&["--config", config]);
            if out.status.success() || Instant::now() > deadline {
                break out;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let by_address = health(&["--admin", &format!("127.0.0.1:{admin}")]);
        serve.kill().unwrap();
        serve.wait().unwrap();
        assert!(result.status.success(), "{}", stderr(&result));
        assert!(by_address.status.success(), "{}", stderr(&by_address));
    }
}

/// Process hygiene (SPEC §3.1, threat model T14), read from outside the
/// running binary: no core dumps, and the master key's page locked in RAM.
///
/// "Some page is locked" (VmLck > 0) would pass with any locked page. The
/// proof that the locked page is the master key's, from /proc/PID/smaps and
/// /proc/PID/mem:
/// - exactly one mapping is locked (VmFlags `lo`), anonymous, and it is also
///   excluded from dumps (`dd`): the two things `secret::Locked` does to the
///   pages it maps for the key;
/// - its size is a `ring::aead::LessSafeKey` (what `Sealer` locks) rounded up
///   to whole pages;
/// - it holds the master key given in `store.master_key_file`: AES-256's key
///   expansion (FIPS-197 §5.2) starts with the key itself, and ring's
///   hardware-AES schedule stores the expanded key as it is. ring's fallback
///   without AES instructions stores a transformed schedule, so on such a CPU
///   only the first two points are checked.
///
/// smaps and mem of a non-dumpable process can only be read with
/// CAP_SYS_PTRACE (root), which is how the test suite runs.
#[cfg(target_os = "linux")]
#[test]
fn a_running_clavis_dumps_no_core_and_locks_its_master_key_page() {
    use std::os::unix::fs::FileExt;
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (proxy, admin) = (free(), free());
    let mut master_key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut master_key).unwrap();
    std::fs::write(dir.path().join("master.key"), master_key).unwrap();
    // clavis refuses a master key others may read.
    std::fs::set_permissions(
        dir.path().join("master.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let config = dir.path().join("clavis.yaml");
    std::fs::write(
        &config,
        format!(
            "proxy: {{ listen: \"127.0.0.1:{proxy}\" }}\n\
             admin: {{ listen: \"127.0.0.1:{admin}\", token: admin-token-hygiene-0123456789 }}\n\
             ca: {{ cert: \"{d}/ca.pem\", key: \"{d}/ca.key\", bundle: \"{d}/bundle.pem\" }}\n\
             store: {{ master_key_file: \"{d}/master.key\" }}\n"
        ),
    )
    .unwrap();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_clavis"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = (0..300).any(|_| {
        let ok = Command::new(env!("CARGO_BIN_EXE_clavis"))
            .args(["health", "--admin", &format!("127.0.0.1:{admin}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        ok
    });
    // Everything is read while clavis runs, and asserted after it is stopped.
    let pid = serve.id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"));
    let locked: Vec<LockedMapping> = smaps.as_deref().map(locked_mappings).unwrap_or_default();
    let contents: Vec<std::io::Result<Vec<u8>>> = std::fs::File::open(format!("/proc/{pid}/mem"))
        .map(|mem| {
            locked
                .iter()
                .map(|m| {
                    let mut buf = vec![0u8; m.len];
                    mem.read_exact_at(&mut buf, m.start).map(|()| buf)
                })
                .collect()
        })
        .unwrap_or_default();
    serve.kill().unwrap();
    serve.wait().unwrap();

    assert!(ready, "clavis never became ready");
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap_or_default();
    assert_eq!(
        core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(),
        ["0", "0"],
        "{core}"
    );
    let smaps = smaps.unwrap_or_else(|e| {
        panic!("cannot read /proc/{pid}/smaps ({e}): a non-dumpable process's needs CAP_SYS_PTRACE")
    });
    let locked_kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap();
    let want_len = std::mem::size_of::<ring::aead::LessSafeKey>().div_ceil(page) * page;

    // mlock is best effort: only a RLIMIT_MEMLOCK below the key's pages
    // without CAP_IPC_LOCK (which lifts that limit) excuses no locked page.
    let may_lock = has_cap_ipc_lock(&status)
        || limits
            .lines()
            .find(|l| l.starts_with("Max locked memory"))
            .and_then(|l| l.split_whitespace().nth(3))
            .is_some_and(|soft| {
                soft == "unlimited" || soft.parse::<usize>().is_ok_and(|b| b >= want_len)
            });
    if !may_lock {
        eprintln!("note: RLIMIT_MEMLOCK forbids locking the master key's pages here; not checked");
        return;
    }
    let [key_page] = locked.as_slice() else {
        panic!("want exactly one locked mapping, the master key's; got {locked:?}\n{smaps}");
    };
    assert_eq!(
        locked_kb * 1024,
        want_len,
        "VmLck is not the key's pages alone: {status}"
    );
    assert!(
        key_page.anonymous,
        "the locked mapping is not anonymous: {key_page:?}"
    );
    assert!(
        key_page.flags.iter().any(|f| f == "dd"),
        "the locked mapping is not excluded from core dumps (MADV_DONTDUMP): {key_page:?}"
    );
    assert_eq!(key_page.len, want_len, "{key_page:?}");
    if cpu_has_aes_instructions() {
        let bytes = match contents.as_slice() {
            [Ok(bytes)] => bytes,
            other => panic!("cannot read the locked page from /proc/{pid}/mem: {other:?}"),
        };
        assert!(
            bytes.windows(master_key.len()).any(|w| w == master_key),
            "the locked page does not hold the master key's schedule: {key_page:?}"
        );
    }
}

/// One mapping of /proc/PID/smaps whose VmFlags include `lo` (locked).
#[cfg(target_os = "linux")]
#[derive(Debug)]
struct LockedMapping {
    start: u64,
    len: usize,
    anonymous: bool,
    flags: Vec<String>,
}

/// The locked mappings listed in an smaps text: each mapping is a header line
/// `start-end perms offset dev inode [path]`, then `Key: value` lines, the
/// last `VmFlags: rd wr ... lo ...`.
#[cfg(target_os = "linux")]
fn locked_mappings(smaps: &str) -> Vec<LockedMapping> {
    let mut out = Vec::new();
    let mut current: Option<(u64, usize, bool)> = None;
    for line in smaps.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            let flags: Vec<String> = flags.split_whitespace().map(str::to_owned).collect();
            if let Some((start, len, anonymous)) = current.take() {
                if flags.iter().any(|f| f == "lo") {
                    out.push(LockedMapping {
                        start,
                        len,
                        anonymous,
                        flags,
                    });
                }
            }
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let range = fields.first().and_then(|r| r.split_once('-'));
        if let Some((a, b)) = range {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                // inode 0 and no path (not even [heap] or [stack]).
                let anonymous = fields.get(4) == Some(&"0") && fields.len() == 5;
                current = Some((a, usize::try_from(b - a).unwrap(), anonymous));
            }
        }
    }
    out
}

/// Whether a /proc/PID/status shows CAP_IPC_LOCK (bit 14) in CapEff.
#[cfg(target_os = "linux")]
fn has_cap_ipc_lock(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 14) != 0)
}

/// Whether this CPU has the AES instructions ring's hardware key schedule
/// uses (x86 `aes` flag, arm64 `aes` feature), read from /proc/cpuinfo.
#[cfg(target_os = "linux")]
fn cpu_has_aes_instructions() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("flags") || l.starts_with("Features"))
        .any(|l| l.split_whitespace().any(|f| f == "aes"))
}

/// A CA key readable by others is named in a warning (it would let them
/// impersonate every claimed host); a private one is not.
#[test]
fn a_shared_ca_key_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let config = dir.path().join("clavis.yaml");
    std::fs::write(
        &config,
        format!(
            "ca: {{ cert: \"{d}/ca.pem\", key: \"{d}/ca.key\", bundle: \"{d}/bundle.pem\" }}\n"
        ),
    )
    .unwrap();
    let show = || {
        let out = Command::new(env!("CARGO_BIN_EXE_clavis"))
            .args([
                "ca",
                "show",
                "--config",
                config.to_str().unwrap(),
                "--log-format",
                "text",
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(!show().contains("readable by group or others"));
    let key = dir.path().join("ca.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let stderr = show();
    assert!(
        stderr.contains("readable by group or others") && stderr.contains("ca.key"),
        "{stderr}"
    );
}

/// `clavis check` passes a short agent token but says so, naming the key
/// and never the token.
#[test]
fn check_warns_about_a_short_agent_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("clavis.yaml");
    std::fs::write(
        &config,
        "agents:\n  - { name: codex, token: tiny-secret, services: [\"*\"] }\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_clavis"))
        .args(["check", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: agents[0].token: shorter than 16 characters"),
        "{stderr}"
    );
    assert!(!stderr.contains("tiny-secret"), "{stderr}");
}
