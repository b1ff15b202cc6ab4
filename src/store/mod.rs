//! The sealed store: services and their credentials, held only as AES-256-GCM
//! ciphertext. `open` is the one way to plaintext, and it returns a
//! [`Secret`] that is wiped when the request that needed it is done.

mod rotated;
pub(crate) mod seal;
pub(crate) mod snapshot;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::SystemTime;

use ring::rand::{SecureRandom, SystemRandom};

pub(crate) use seal::{SealError, Sealer};
pub(crate) use snapshot::{Snapshot, SnapshotError};

use snapshot::{Contents, Record};

use crate::config::EntrySpec;
use crate::connector::Connector;
use crate::credentials::Credentials;
use crate::redact::{Anchors, Patterns};
use crate::secret::Secret;

/// Where a service was defined: config services are rebuilt at every start,
/// API services live in the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Config,
    Api,
}

#[derive(Debug, Clone)]
pub(crate) struct Service {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) connector: Arc<Connector>,
    pub(crate) default: bool,
    pub(crate) origin: Origin,
    pub(crate) created_at: SystemTime,
    pub(crate) validated_at: Option<SystemTime>,
    /// What the entries API shows: notes, URL, username, custom fields.
    pub(crate) entry: Entry,
    sealed: Option<Arc<Sealed>>,
    /// The credentials come from a secret source (Vault): never written
    /// to the snapshot, read again at every start.
    sourced: bool,
}

/// A service's credentials as kept: AES-GCM sealed, plus what the response
/// scrubber derives from them on first use (only the first bytes of each
/// encoded form, see [`Anchors`]). Shared by clones of the service; new
/// credentials make a new one, with a new version.
#[derive(Debug)]
struct Sealed {
    bytes: Vec<u8>,
    version: u64,
    anchors: OnceLock<Arc<Anchors>>,
}

impl Sealed {
    fn new(bytes: Vec<u8>) -> Arc<Sealed> {
        static VERSIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Arc::new(Sealed {
            bytes,
            version: VERSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            anchors: OnceLock::new(),
        })
    }
}

/// A service seen as a vault entry. Sensitive field values are sealed like
/// credentials and never shown; the others are plain metadata.
#[derive(Debug, Clone, Default)]
pub(crate) struct Entry {
    pub(crate) notes: String,
    pub(crate) url: Option<String>,
    pub(crate) username: Option<String>,
    pub(crate) fields: Vec<EntryField>,
}

#[derive(Clone)]
pub(crate) struct EntryField {
    pub(crate) name: String,
    /// `None` for sensitive fields: their value exists only sealed.
    pub(crate) value: Option<String>,
    sealed: Option<Vec<u8>>,
}

impl std::fmt::Debug for EntryField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryField")
            .field("name", &self.name)
            .field("sensitive", &self.sensitive())
            .finish()
    }
}

impl EntryField {
    pub(crate) fn sensitive(&self) -> bool {
        self.sealed.is_some()
    }
}

impl Service {
    pub(crate) fn has_credentials(&self) -> bool {
        self.sealed.is_some()
    }

    /// Its credentials come from a secret source (and are refreshed from it).
    pub(crate) fn sourced(&self) -> bool {
        self.sourced
    }

    /// Changes whenever the credentials do (`0`: none stored): what a
    /// token fetched with them is tied to.
    pub(crate) fn credentials_version(&self) -> u64 {
        self.sealed.as_ref().map_or(0, |s| s.version)
    }

    fn record(&self) -> Record {
        use base64::Engine;
        Record {
            id: self.id.clone(),
            name: self.name.clone(),
            connector: self.connector.name.clone(),
            default: self.default,
            origin: match self.origin {
                Origin::Config => "config".into(),
                Origin::Api => "api".into(),
            },
            created_at: snapshot::unix(self.created_at),
            validated_at: self.validated_at.map(snapshot::unix),
            // Sourced credentials live in memory only (SPEC §13.3).
            sealed: self
                .sealed
                .as_ref()
                .filter(|_| !self.sourced)
                .map(|s| base64::engine::general_purpose::STANDARD.encode(&s.bytes)),
            entry: snapshot::RecordEntry {
                notes: self.entry.notes.clone(),
                url: self.entry.url.clone(),
                username: self.entry.username.clone(),
                fields: self
                    .entry
                    .fields
                    .iter()
                    .map(|f| snapshot::RecordField {
                        name: f.name.clone(),
                        value: f.value.clone(),
                        sealed: f
                            .sealed
                            .as_ref()
                            .map(|s| base64::engine::general_purpose::STANDARD.encode(s)),
                    })
                    .collect(),
            },
        }
    }

    fn entry_from(record: &snapshot::RecordEntry) -> Entry {
        use base64::Engine;
        Entry {
            notes: record.notes.clone(),
            url: record.url.clone(),
            username: record.username.clone(),
            fields: record
                .fields
                .iter()
                .map(|f| EntryField {
                    name: f.name.clone(),
                    value: f.value.clone(),
                    sealed: f
                        .sealed
                        .as_ref()
                        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok()),
                })
                .collect(),
        }
    }

    fn session_aad(id: &str) -> Vec<u8> {
        [b"clavis/v1/session\0", id.as_bytes()].concat()
    }

    fn field_aad(id: &str, field: &str) -> Vec<u8> {
        [b"clavis/v1/field\0", id.as_bytes(), b"\0", field.as_bytes()].concat()
    }

    /// Associated data: a ciphertext opens only in its own service's slot.
    /// (Built on every use of a credential: no formatting machinery.)
    fn aad(id: &str, connector: &str) -> Vec<u8> {
        [b"clavis/v1\0", id.as_bytes(), b"\0", connector.as_bytes()].concat()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("a service named {0:?} already exists")]
    Duplicate(String),
    #[error("no service {0:?}")]
    NotFound(String),
    #[error("service {0:?} has no credentials stored")]
    NoCredentials(String),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("stored credentials for {0:?} are corrupt")]
    Corrupt(String),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

/// An immutable view of every service, swapped whole on each change, so the
/// request path reads it without holding a lock.
#[derive(Debug, Default)]
pub(crate) struct Table {
    list: Vec<Arc<Service>>,
    by_name: HashMap<String, Arc<Service>>,
    by_id: HashMap<String, Arc<Service>>,
    by_connector: HashMap<String, Vec<Arc<Service>>>,
}

impl Table {
    fn build(list: Vec<Arc<Service>>) -> Table {
        let mut t = Table::default();
        for s in &list {
            t.by_name.insert(s.name.clone(), s.clone());
            t.by_id.insert(s.id.clone(), s.clone());
            t.by_connector
                .entry(s.connector.name.clone())
                .or_default()
                .push(s.clone());
        }
        t.list = list;
        t
    }

    pub(crate) fn all(&self) -> &[Arc<Service>] {
        &self.list
    }

    /// By name, or by id.
    pub(crate) fn find(&self, name_or_id: &str) -> Option<&Arc<Service>> {
        self.by_name
            .get(name_or_id)
            .or_else(|| self.by_id.get(name_or_id))
    }

    pub(crate) fn for_connector(&self, connector: &str) -> &[Arc<Service>] {
        self.by_connector
            .get(connector)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

pub(crate) struct Store {
    sealer: Sealer,
    table: RwLock<Arc<Table>>,
    rng: SystemRandom,
    /// Set once the snapshot was loaded: changes before that (the config
    /// services at start) are not written, so they cannot overwrite it.
    snapshot: std::sync::OnceLock<Snapshot>,
    /// Serializes changes, so each one is written to the snapshot before it
    /// becomes visible, without holding the read path's lock during I/O.
    /// Holds the snapshot's other sections.
    writer: Mutex<BTreeMap<String, serde_json::Value>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    pub(crate) fn new(sealer: Sealer) -> Store {
        Store {
            sealer,
            table: RwLock::new(Arc::new(Table::default())),
            rng: SystemRandom::new(),
            snapshot: std::sync::OnceLock::new(),
            writer: Mutex::new(BTreeMap::new()),
        }
    }

    /// The current services; cheap (one `Arc` clone).
    pub(crate) fn table(&self) -> Arc<Table> {
        match self.table.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Applies a change: persisted first (when a snapshot is configured),
    /// then made visible. A failed write changes nothing, in memory or on disk.
    fn update<R>(
        &self,
        change: impl FnOnce(&mut Vec<Arc<Service>>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let sections = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut list = self.table().list.clone();
        let out = change(&mut list)?;
        self.persist(&list, &sections)?;
        let table = Arc::new(Table::build(list));
        match self.table.write() {
            Ok(mut g) => *g = table,
            Err(poisoned) => *poisoned.into_inner() = table,
        }
        Ok(out)
    }

    /// Writes the services and sections to the snapshot, if there is one.
    fn persist(
        &self,
        list: &[Arc<Service>],
        sections: &BTreeMap<String, serde_json::Value>,
    ) -> Result<(), StoreError> {
        if let Some(snapshot) = self.snapshot.get() {
            let contents = Contents {
                services: list.iter().map(|s| s.record()).collect(),
                sections: sections.clone(),
            };
            snapshot.write(&self.sealer, &contents)?;
        }
        Ok(())
    }

    /// Keeps `value` as the snapshot's section `name` (budget counts,
    /// pending approvals), written at once.
    pub(crate) fn write_section(
        &self,
        name: &str,
        value: serde_json::Value,
    ) -> Result<(), StoreError> {
        let mut sections = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        sections.insert(name.to_owned(), value);
        let list = self.table().list.clone();
        self.persist(&list, &sections)
    }

    /// A section as the snapshot held it at start.
    pub(crate) fn section(&self, name: &str) -> Option<serde_json::Value> {
        let sections = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        sections.get(name).cloned()
    }

    /// Loads the snapshot at start, after the config services were added.
    /// The config wins on a name clash (with a warning), except that a config
    /// service without credentials takes the ones stored through the API.
    /// Any unreadable record refuses the whole start.
    pub(crate) fn restore(
        &self,
        snapshot: Snapshot,
        registry: &crate::connector::Registry,
    ) -> Result<usize, StoreError> {
        let mut sections = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let Contents {
            services: records,
            sections: saved,
        } = snapshot.load(&self.sealer)?;
        *sections = saved;
        let registry_of = |name: &str| self.table().find(name).cloned();
        let mut restored = 0;
        let mut list = self.table().list.clone();
        for r in records {
            let creds = match r.sealed_bytes() {
                Some(sealed) => {
                    let aad = Service::aad(&r.id, &r.connector);
                    let plain = self.sealer.open(&aad, &sealed)?;
                    Some(
                        Credentials::decode(&plain)
                            .ok_or_else(|| StoreError::Corrupt(r.name.clone()))?,
                    )
                }
                None => None,
            };
            match registry_of(&r.name) {
                Some(existing) => {
                    if existing.has_credentials() || creds.is_none() {
                        if r.origin() == Origin::Api {
                            tracing::warn!(service = %r.name, "the config file defines this service too; the config wins");
                        }
                        continue;
                    }
                    if existing.connector.name != r.connector {
                        tracing::warn!(service = %r.name, "stored credentials belong to another connector; ignored");
                        continue;
                    }
                    let Some(slot) = list.iter_mut().find(|s| s.name == r.name) else {
                        continue;
                    };
                    let sealed = match &creds {
                        Some(c) => Some(
                            self.sealer
                                .seal(&Service::aad(&slot.id, &slot.connector.name), &c.encode())?,
                        ),
                        None => None,
                    };
                    *slot = Arc::new(Service {
                        sealed: sealed.map(Sealed::new),
                        validated_at: r.validated_at.map(snapshot::from_unix),
                        ..slot.as_ref().clone()
                    });
                    restored += 1;
                }
                None if r.origin() == Origin::Config => {
                    tracing::warn!(service = %r.name, "service removed from the config file; its stored credentials are dropped");
                }
                None => {
                    let Some(connector) = registry.get(&r.connector).cloned() else {
                        return Err(StoreError::Corrupt(format!(
                            "{} (unknown connector {:?})",
                            r.name, r.connector
                        )));
                    };
                    list.push(Arc::new(Service {
                        id: r.id.clone(),
                        name: r.name.clone(),
                        connector,
                        default: r.default,
                        origin: Origin::Api,
                        created_at: snapshot::from_unix(r.created_at),
                        validated_at: r.validated_at.map(snapshot::from_unix),
                        entry: Service::entry_from(&r.entry),
                        sealed: r.sealed_bytes().map(Sealed::new),
                        sourced: false,
                    }));
                    restored += 1;
                }
            }
        }
        let table = Arc::new(Table::build(list));
        match self.table.write() {
            Ok(mut g) => *g = table,
            Err(poisoned) => *poisoned.into_inner() = table,
        }
        let _ = self.snapshot.set(snapshot);
        Ok(restored)
    }

    fn new_id(&self) -> Result<String, StoreError> {
        let mut bytes = [0u8; 8];
        self.rng.fill(&mut bytes).map_err(|_| SealError::Random)?;
        Ok(format!("svc_{}", crate::encoding::hex(&bytes)))
    }

    /// Registers a service; the name must be new.
    pub(crate) fn add(
        &self,
        name: &str,
        connector: Arc<Connector>,
        default: bool,
        origin: Origin,
    ) -> Result<Arc<Service>, StoreError> {
        let id = self.new_id()?;
        self.update(|list| {
            if list.iter().any(|s| s.name == name) {
                return Err(StoreError::Duplicate(name.to_owned()));
            }
            let service = Arc::new(Service {
                id,
                name: name.to_owned(),
                connector,
                default,
                origin,
                created_at: SystemTime::now(),
                validated_at: None,
                entry: Entry::default(),
                sealed: None,
                sourced: false,
            });
            list.push(service.clone());
            Ok(service)
        })
    }

    /// Seals and stores credentials for a service (replacing earlier ones).
    pub(crate) fn set_credentials(
        &self,
        name_or_id: &str,
        creds: &Credentials,
        validated: bool,
    ) -> Result<Arc<Service>, StoreError> {
        self.put_credentials(name_or_id, creds, validated, false)
    }

    /// As [`Store::set_credentials`], for credentials read from a secret
    /// source: sealed in memory like any, left out of the snapshot.
    pub(crate) fn set_sourced_credentials(
        &self,
        name_or_id: &str,
        creds: &Credentials,
    ) -> Result<Arc<Service>, StoreError> {
        self.put_credentials(name_or_id, creds, false, true)
    }

    fn put_credentials(
        &self,
        name_or_id: &str,
        creds: &Credentials,
        validated: bool,
        sourced: bool,
    ) -> Result<Arc<Service>, StoreError> {
        self.update(|list| {
            let slot = list
                .iter_mut()
                .find(|s| s.name == name_or_id || s.id == name_or_id)
                .ok_or_else(|| StoreError::NotFound(name_or_id.to_owned()))?;
            let aad = Service::aad(&slot.id, &slot.connector.name);
            let sealed = self.sealer.seal(&aad, &creds.encode())?;
            let service = Arc::new(Service {
                validated_at: validated.then(SystemTime::now).or(slot.validated_at),
                sealed: Some(Sealed::new(sealed)),
                sourced,
                ..slot.as_ref().clone()
            });
            *slot = service.clone();
            Ok(service)
        })
    }

    /// Replaces a service's entry metadata, sealing its sensitive fields.
    pub(crate) fn set_entry(
        &self,
        name_or_id: &str,
        new: EntrySpec,
    ) -> Result<Arc<Service>, StoreError> {
        self.update(|list| {
            let slot = list
                .iter_mut()
                .find(|s| s.name == name_or_id || s.id == name_or_id)
                .ok_or_else(|| StoreError::NotFound(name_or_id.to_owned()))?;
            let mut fields = Vec::with_capacity(new.fields.len());
            for (name, value, sensitive) in new.fields {
                let field = if sensitive {
                    let aad = Service::field_aad(&slot.id, &name);
                    EntryField {
                        sealed: Some(self.sealer.seal(&aad, value.expose().as_bytes())?),
                        value: None,
                        name,
                    }
                } else {
                    EntryField {
                        value: Some(value.expose().clone()),
                        sealed: None,
                        name,
                    }
                };
                fields.push(field);
            }
            let service = Arc::new(Service {
                entry: Entry {
                    notes: new.notes,
                    url: new.url,
                    username: new.username,
                    fields,
                },
                ..slot.as_ref().clone()
            });
            *slot = service.clone();
            Ok(service)
        })
    }

    /// Points every service at the connector of the same name in
    /// `registry` (a reload built new ones; ids, credentials and the
    /// credentials' version are kept, since a ciphertext is bound to the
    /// connector's name). A service whose connector is gone is an error,
    /// and nothing changes.
    pub(crate) fn rebind(&self, registry: &crate::connector::Registry) -> Result<(), StoreError> {
        self.update(|list| {
            for slot in list.iter_mut() {
                let connector = registry.get(&slot.connector.name).ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "{} (unknown connector {:?})",
                        slot.name, slot.connector.name
                    ))
                })?;
                if !Arc::ptr_eq(connector, &slot.connector) {
                    *slot = Arc::new(Service {
                        connector: connector.clone(),
                        ..slot.as_ref().clone()
                    });
                }
            }
            Ok(())
        })
    }

    pub(crate) fn remove(&self, name_or_id: &str) -> Result<Arc<Service>, StoreError> {
        let removed = self.update(|list| {
            let pos = list
                .iter()
                .position(|s| s.name == name_or_id || s.id == name_or_id)
                .ok_or_else(|| StoreError::NotFound(name_or_id.to_owned()))?;
            Ok(list.remove(pos))
        })?;
        if let Err(e) = self.forget_rotated_refresh_token(&removed.name) {
            tracing::warn!(service = %removed.name, error = %e, "could not drop the rotated refresh token of a deleted service");
        }
        Ok(removed)
    }

    /// Seals a login session's token (Kalshi email + password) for
    /// `service`: like credentials, it is kept only as ciphertext.
    pub(crate) fn seal_session(
        &self,
        service: &Service,
        token: &str,
    ) -> Result<Vec<u8>, StoreError> {
        Ok(self
            .sealer
            .seal(&Service::session_aad(&service.id), token.as_bytes())?)
    }

    /// Opens a token sealed by [`Store::seal_session`] for one use.
    pub(crate) fn open_session(
        &self,
        service: &Service,
        sealed: &[u8],
    ) -> Result<Secret<String>, StoreError> {
        let plain = self
            .sealer
            .open(&Service::session_aad(&service.id), sealed)?;
        let text =
            std::str::from_utf8(&plain).map_err(|_| StoreError::Corrupt(service.name.clone()))?;
        Ok(Secret::new(text.to_owned()))
    }

    /// Decrypts a service's credentials for one use; none stored is
    /// [`StoreError::NoCredentials`].
    pub(crate) fn open_required(
        &self,
        service: &Service,
    ) -> Result<Secret<Credentials>, StoreError> {
        self.open(service)?
            .ok_or_else(|| StoreError::NoCredentials(service.name.clone()))
    }

    /// Decrypts a service's credentials for one use. `Ok(None)`: none stored.
    pub(crate) fn open(
        &self,
        service: &Service,
    ) -> Result<Option<Secret<Credentials>>, StoreError> {
        let Some(sealed) = &service.sealed else {
            return Ok(None);
        };
        let aad = Service::aad(&service.id, &service.connector.name);
        let plain = self.sealer.open(&aad, &sealed.bytes)?;
        let creds =
            Credentials::decode(&plain).ok_or_else(|| StoreError::Corrupt(service.name.clone()))?;
        Ok(Some(Secret::new(creds)))
    }

    /// Anchors for the service's sensitive entry fields (opened for this
    /// call, never kept): what a search query must not carry into the audit
    /// log. `None` without sensitive fields.
    pub(crate) fn sensitive_field_anchors(
        &self,
        service: &Service,
    ) -> Result<Option<Anchors>, StoreError> {
        let mut patterns = Patterns::new();
        for field in &service.entry.fields {
            if let Some(sealed) = &field.sealed {
                let aad = Service::field_aad(&service.id, &field.name);
                patterns.add(&self.sealer.open(&aad, sealed)?);
            }
        }
        Ok((!patterns.is_empty()).then(|| Anchors::of(&patterns)))
    }

    /// The scrubber's anchors for a service's credentials: derived once per
    /// set of credentials (opening them that one time), then shared.
    pub(crate) fn anchors(&self, service: &Service) -> Result<Option<Arc<Anchors>>, StoreError> {
        if let Some(anchors) = service.sealed.as_ref().and_then(|s| s.anchors.get()) {
            return Ok(Some(anchors.clone()));
        }
        let Some(creds) = self.open(service)? else {
            return Ok(None);
        };
        Ok(Some(Self::anchors_of(service, creds.expose())))
    }

    /// The same anchors, derived from credentials the caller opened already
    /// (an exchange's authorize phase) instead of opening them again.
    pub(crate) fn anchors_of(service: &Service, creds: &Credentials) -> Arc<Anchors> {
        let derive = || Arc::new(Anchors::of(&Patterns::from_credentials(creds)));
        match &service.sealed {
            Some(sealed) => sealed.anchors.get_or_init(derive).clone(),
            None => derive(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::Registry;

    fn store() -> (Store, Arc<Connector>) {
        let r = Registry::new(Vec::new()).unwrap();
        (
            Store::new(Sealer::random().unwrap()),
            r.get("openai").unwrap().clone(),
        )
    }

    mod add {
        use super::*;

        #[test]
        fn duplicate_names_are_refused() {
            let (s, c) = store();
            s.add("a", c.clone(), false, Origin::Api).unwrap();
            assert!(matches!(
                s.add("a", c, false, Origin::Api),
                Err(StoreError::Duplicate(_))
            ));
        }
    }

    mod open {
        use super::*;

        #[test]
        fn returns_what_was_stored() {
            let (s, c) = store();
            let svc = s.add("a", c, false, Origin::Api).unwrap();
            assert!(s.open(&svc).unwrap().is_none());
            let svc = s
                .set_credentials("a", &Credentials::from_pairs([("api_key", "sk-1")]), false)
                .unwrap();
            let creds = s.open(&svc).unwrap().unwrap();
            assert_eq!(creds.expose().get("api_key"), Some("sk-1"));
            assert!(s.table().find(&svc.id).is_some());
        }

        #[test]
        fn sourced_credentials_open_but_stay_out_of_the_snapshot() {
            let (s, c) = store();
            s.add("v", c, false, Origin::Config).unwrap();
            let creds = Credentials::from_pairs([("api_key", "sk-vault")]);
            let svc = s.set_sourced_credentials("v", &creds).unwrap();
            assert!(svc.sourced());
            let opened = s.open(&svc).unwrap().unwrap();
            assert_eq!(opened.expose().get("api_key"), Some("sk-vault"));
            assert!(
                svc.record().sealed.is_none(),
                "no sealed bytes in the record"
            );
            let svc = s.set_credentials("v", &creds, false).unwrap();
            assert!(!svc.sourced() && svc.record().sealed.is_some());
        }

        #[test]
        fn a_session_token_is_sealed_to_its_service() {
            let (s, c) = store();
            let a = s.add("a", c.clone(), false, Origin::Api).unwrap();
            let b = s.add("b", c, false, Origin::Api).unwrap();
            let sealed = s.seal_session(&a, "session-token-0123456789").unwrap();
            assert!(!sealed
                .windows(b"session-token".len())
                .any(|w| w == b"session-token"));
            assert_eq!(
                s.open_session(&a, &sealed).unwrap().expose(),
                "session-token-0123456789"
            );
            assert!(
                s.open_session(&b, &sealed).is_err(),
                "opens only for its own service"
            );
        }
    }
}
