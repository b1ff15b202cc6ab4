//! Files clavis writes never go through a link someone planted (threat
//! model B5/T12, the admin token A5 and the audit log A6): a symlink at the
//! generated `admin.token` path, at the audit file or at the snapshot is
//! replaced or refused, its target never receives a byte; what clavis
//! writes is `0600`. A master key file anyone can read is refused, one
//! its group can read is warned about.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use serde_json::json;
use support::*;

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `State::new` on `yaml` plus a CA in `dir/ca`: what `serve` does at start.
fn start(dir: &Path, yaml: &str) -> Result<clavis::State, clavis::StartError> {
    let d = dir.display();
    let yaml = format!(
        "{yaml}\nca: {{ cert: \"{d}/ca/ca.pem\", key: \"{d}/ca/ca.key\", bundle: \"{d}/ca/bundle.pem\" }}\n"
    );
    let settings = clavis::Settings::from_yaml(&yaml, &HashMap::new()).unwrap();
    let addr = "127.0.0.1:9".parse().unwrap();
    clavis::State::new(settings, addr, addr)
}

#[test]
fn a_link_planted_at_admin_token_never_receives_the_generated_token() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("ca")).unwrap();
    // A world-readable file somewhere the agent can read, linked from
    // where clavis writes the token it generates.
    let target = dir.path().join("shared-with-agent");
    std::fs::write(&target, "").unwrap();
    chmod(&target, 0o644);
    let path = dir.path().join("ca/admin.token");
    symlink(&target, &path).unwrap();
    start(dir.path(), "").unwrap();
    assert_eq!(
        std::fs::read(&target).unwrap(),
        b"",
        "the token went through the link"
    );
    assert_eq!(mode_of(&target), 0o644);
    assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
    assert_eq!(mode_of(&path), 0o600);
    assert_eq!(std::fs::read_to_string(&path).unwrap().len(), 48);
}

#[test]
fn the_audit_file_is_never_opened_through_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("elsewhere.jsonl");
    let link = dir.path().join("audit.jsonl");
    symlink(&target, &link).unwrap();
    let yaml = format!(
        "admin: {{ token: admin-token-0123456789 }}\naudit: {{ file: \"{}\" }}\n",
        link.display()
    );
    let Err(e) = start(dir.path(), &yaml) else {
        panic!("started with the audit file behind a link");
    };
    assert!(e.to_string().starts_with("audit file"), "{e}");
    assert!(!target.exists(), "created through the link");
    // A plain path is created owner-only.
    let path = dir.path().join("audit2.jsonl");
    let yaml = format!(
        "admin: {{ token: admin-token-0123456789 }}\naudit: {{ file: \"{}\" }}\n",
        path.display()
    );
    start(dir.path(), &yaml).unwrap();
    assert_eq!(mode_of(&path), 0o600);
}

#[test]
fn a_master_key_file_readable_by_others_is_refused_and_by_its_group_warned() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    std::fs::write(&key, "7".repeat(64)).unwrap();
    let yaml = format!(
        "admin: {{ token: admin-token-0123456789 }}\nstore: {{ master_key_file: \"{}\" }}\n",
        key.display()
    );
    chmod(&key, 0o644);
    let Err(e) = start(dir.path(), &yaml) else {
        panic!("started with a world-readable master key");
    };
    let e = e.to_string();
    assert!(e.contains("readable by others") && e.contains("644"), "{e}");
    assert!(!e.contains(&"7".repeat(16)), "the key is never quoted: {e}");
    chmod(&key, 0o640);
    start(dir.path(), &yaml).expect("group-readable: a warning, not a refusal");
    chmod(&key, 0o400);
    start(dir.path(), &yaml).unwrap();
    // A Kubernetes Secret is a link into `..data`: followed for reading.
    let link = dir.path().join("master-link.key");
    symlink(&key, &link).unwrap();
    start(
        dir.path(),
        &yaml.replace(&key.display().to_string(), &link.display().to_string()),
    )
    .unwrap();
}

/// The snapshot is a fresh temp file renamed into place: a dangling link at
/// its path is replaced (its target never created), and a link planted at
/// the name the temp file used to have is never opened.
#[tokio::test]
async fn the_snapshot_is_never_written_through_a_link() {
    const ADMIN: &str = "admin-token-files-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    std::fs::write(&key, "7".repeat(64)).unwrap();
    chmod(&key, 0o600);
    let snap = dir.path().join("store.snap");
    let target = dir.path().join("snap-target");
    symlink(&target, &snap).unwrap();
    let old_tmp_target = dir.path().join("tmp-target");
    symlink(&old_tmp_target, dir.path().join("store.snap.tmp")).unwrap();
    let yaml = format!(
        "admin: {{ token: \"{ADMIN}\" }}\nstore: {{ master_key_file: \"{}\", snapshot: \"{}\" }}\n",
        key.display(),
        snap.display()
    );
    let clavis = Clavis::builder(&yaml).start(None, None).await;
    let r = admin_client()
        .post(format!("http://{}/v1/services", clavis.admin))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "new-one", "connector_name": "openai"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(
        !target.exists(),
        "the snapshot went through the link at its path"
    );
    assert!(
        !old_tmp_target.exists(),
        "the snapshot went through a planted temp link"
    );
    assert!(std::fs::symlink_metadata(&snap).unwrap().is_file());
    assert_eq!(mode_of(&snap), 0o600);
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp") && n != "store.snap.tmp")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
