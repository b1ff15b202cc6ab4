//! The sealed snapshot: every service and its sealed credentials, written
//! atomically (temp file, fsync, rename, fsync of the directory) after each
//! change and loaded at start. The whole file is sealed once more under the
//! master key with its header as associated data, so a flipped byte, a
//! truncation or another key is detected, and clavis refuses to start rather
//! than run half-loaded or overwrite what it could not read.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::{Origin, Sealer};

const MAGIC: &[u8; 16] = b"CLAVIS-SNAPSHOT\0";
/// 1: a JSON array of services; 2: `{"services": [...], "sections": {...}}`.
const VERSION: u32 = 2;
const HEADER: usize = 16 + 4 + 8 + 8;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("snapshot {path}: cannot write: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// One service as persisted. `sealed` is the per-service ciphertext, already
/// bound to `id` and `connector` by its own associated data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) connector: String,
    pub(crate) default: bool,
    pub(crate) origin: String,
    pub(crate) created_at: u64,
    pub(crate) validated_at: Option<u64>,
    pub(crate) sealed: Option<String>,
    #[serde(default)]
    pub(crate) entry: RecordEntry,
}

/// Entry metadata as persisted; sensitive values stay sealed (base64).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct RecordEntry {
    #[serde(default)]
    pub(crate) notes: String,
    #[serde(default)]
    pub(crate) url: Option<String>,
    #[serde(default)]
    pub(crate) username: Option<String>,
    #[serde(default)]
    pub(crate) fields: Vec<RecordField>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RecordField {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) value: Option<String>,
    #[serde(default)]
    pub(crate) sealed: Option<String>,
}

/// What a snapshot holds: the services, and named sections other parts
/// keep across restarts (budget counts, pending approvals, rotated tokens).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Contents {
    pub(crate) services: Vec<Record>,
    #[serde(default)]
    pub(crate) sections: std::collections::BTreeMap<String, serde_json::Value>,
}

impl Record {
    pub(crate) fn origin(&self) -> Origin {
        if self.origin == "config" {
            Origin::Config
        } else {
            Origin::Api
        }
    }

    pub(crate) fn sealed_bytes(&self) -> Option<Vec<u8>> {
        self.sealed
            .as_ref()
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
    }
}

pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(crate) fn from_unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[derive(Debug)]
pub(crate) struct Snapshot {
    path: PathBuf,
    generation: std::sync::atomic::AtomicU64,
}

impl Snapshot {
    pub(crate) fn new(path: PathBuf) -> Snapshot {
        Snapshot {
            path,
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn invalid(&self, message: impl Into<String>) -> SnapshotError {
        SnapshotError::Invalid {
            path: self.path.display().to_string(),
            message: message.into(),
        }
    }

    /// Reads the contents; a missing file is an empty store.
    pub(crate) fn load(&self, sealer: &Sealer) -> Result<Contents, SnapshotError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Contents::default()),
            Err(e) => return Err(self.invalid(format!("cannot read: {e}"))),
        };
        self.decode(&bytes, sealer)
    }

    /// A snapshot file's bytes, checked and opened: whatever they are
    /// (truncated, tampered with, another version), an error, never a panic.
    pub(crate) fn decode(&self, bytes: &[u8], sealer: &Sealer) -> Result<Contents, SnapshotError> {
        if bytes.len() < HEADER || &bytes[..16] != MAGIC {
            return Err(self.invalid("not a clavis snapshot (bad magic or truncated)"));
        }
        let version = u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
        if version != VERSION && version != 1 {
            return Err(self.invalid(format!("unsupported snapshot version {version}")));
        }
        if bytes[20..28] != sealer.key_id() {
            return Err(self.invalid(
                "sealed under another master key; start with the store.master_key_file that wrote it",
            ));
        }
        let mut generation = [0u8; 8];
        generation.copy_from_slice(&bytes[28..36]);
        let plain = sealer
            .open(&bytes[..HEADER], &bytes[HEADER..])
            .map_err(|_| {
                self.invalid("failed authentication: the file is corrupt or was tampered with")
            })?;
        let contents = if version == 1 {
            Contents {
                services: serde_json::from_slice(&plain)
                    .map_err(|e| self.invalid(format!("unreadable records: {e}")))?,
                sections: Default::default(),
            }
        } else {
            serde_json::from_slice(&plain)
                .map_err(|e| self.invalid(format!("unreadable contents: {e}")))?
        };
        self.generation.store(
            u64::from_be_bytes(generation),
            std::sync::atomic::Ordering::SeqCst,
        );
        Ok(contents)
    }

    /// Writes the contents atomically; on error the old file is untouched.
    pub(crate) fn write(&self, sealer: &Sealer, contents: &Contents) -> Result<(), SnapshotError> {
        let werr = |source| SnapshotError::Write {
            path: self.path.display().to_string(),
            source,
        };
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let json = zeroize::Zeroizing::new(
            serde_json::to_vec(contents).map_err(|e| werr(std::io::Error::other(e)))?,
        );
        let file = sealed_file(sealer, VERSION, generation, &json)
            .map_err(|e| werr(std::io::Error::other(e.to_string())))?;
        // A fresh temp file (never through a planted link), fsync, rename,
        // fsync of the directory.
        let result = crate::files::write(&self.path, &file, 0o600, crate::files::Put::Replace);
        result.map_err(werr)
    }
}

/// A snapshot file holding `json` as format `version`: header, then the
/// sealed JSON with the header as associated data.
pub(crate) fn sealed_file(
    sealer: &Sealer,
    version: u32,
    generation: u64,
    json: &[u8],
) -> Result<Vec<u8>, super::SealError> {
    let mut file = Vec::with_capacity(HEADER + json.len() + 32);
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(&version.to_be_bytes());
    file.extend_from_slice(&sealer.key_id());
    file.extend_from_slice(&generation.to_be_bytes());
    let sealed = sealer.seal(&file, json)?;
    file.extend_from_slice(&sealed);
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> Record {
        Record {
            id: format!("svc_{name}"),
            name: name.into(),
            connector: "openai".into(),
            default: false,
            origin: "api".into(),
            created_at: 1,
            validated_at: None,
            sealed: Some("AAAA".into()),
            entry: RecordEntry::default(),
        }
    }

    mod load {
        use super::*;

        #[test]
        fn round_trip_and_missing_file() {
            let dir = tempfile::tempdir().unwrap();
            let s = Snapshot::new(dir.path().join("snap"));
            let key = Sealer::new(&[1u8; 32]).unwrap();
            assert!(s.load(&key).unwrap().services.is_empty());
            let mut contents = Contents {
                services: vec![record("a"), record("b")],
                ..Contents::default()
            };
            contents
                .sections
                .insert("budgets".into(), serde_json::json!({"llm": {"used": 12}}));
            s.write(&key, &contents).unwrap();
            let again = Snapshot::new(dir.path().join("snap"));
            let r = again.load(&key).unwrap();
            assert_eq!(r.services.len(), 2);
            assert_eq!(r.services[1].name, "b");
            assert_eq!(r.sections["budgets"]["llm"]["used"], 12);
        }

        #[test]
        fn reads_a_version_1_snapshot() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("snap");
            let key = Sealer::new(&[1u8; 32]).unwrap();
            let mut header = Vec::new();
            header.extend_from_slice(MAGIC);
            header.extend_from_slice(&1u32.to_be_bytes());
            header.extend_from_slice(&key.key_id());
            header.extend_from_slice(&7u64.to_be_bytes());
            let json = serde_json::to_vec(&[record("old")]).unwrap();
            let sealed = key.seal(&header, &json).unwrap();
            std::fs::write(&path, [header, sealed].concat()).unwrap();
            let r = Snapshot::new(path).load(&key).unwrap();
            assert_eq!(r.services[0].name, "old");
            assert!(r.sections.is_empty());
        }

        #[test]
        fn refuses_other_key_flipped_byte_and_truncation() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("snap");
            let s = Snapshot::new(path.clone());
            let key = Sealer::new(&[1u8; 32]).unwrap();
            let contents = Contents {
                services: vec![record("a")],
                ..Contents::default()
            };
            s.write(&key, &contents).unwrap();
            let e = s.load(&Sealer::new(&[2u8; 32]).unwrap()).unwrap_err();
            assert!(e.to_string().contains("another master key"), "{e}");
            let mut bytes = std::fs::read(&path).unwrap();
            let last = bytes.len() - 5;
            bytes[last] ^= 0x40;
            std::fs::write(&path, &bytes).unwrap();
            let e = s.load(&key).unwrap_err();
            assert!(e.to_string().contains("tampered"), "{e}");
            std::fs::write(&path, &bytes[..20]).unwrap();
            assert!(s.load(&key).unwrap_err().to_string().contains("truncated"));
            // A refused snapshot is left as it was.
            assert_eq!(std::fs::read(&path).unwrap().len(), 20);
        }
    }
}
