//! The binary's own inputs outside the config file.

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
