//! Refresh tokens that a token endpoint rotated (SPEC §13.1): kept sealed
//! in the snapshot's `refresh_tokens` section, by service name (config
//! services get a new id at every start), together with the configured
//! refresh token they replaced. A rotated token is used for as long as the
//! configured one is still that one: a new value in the config (or new
//! credentials through the API) wins.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::Value;
use zeroize::Zeroizing;

use super::{Service, Store, StoreError};
use crate::secret::{ct_eq, Secret};

const SECTION: &str = "refresh_tokens";

impl Store {
    /// The rotated refresh token to use instead of `configured`, if the
    /// server rotated it since `configured` was set.
    pub(crate) fn rotated_refresh_token(
        &self,
        service: &Service,
        configured: &str,
    ) -> Result<Option<Secret<String>>, StoreError> {
        let sealed = {
            let sections = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            let entry = sections
                .get(SECTION)
                .and_then(|s| s.get(&service.name))
                .and_then(Value::as_str)
                .and_then(|b64| STANDARD.decode(b64).ok());
            match entry {
                Some(sealed) => sealed,
                None => return Ok(None),
            }
        };
        let plain = self.sealer.open(&aad(service), &sealed)?;
        let pair: Value = serde_json::from_slice(&plain).map_err(|_| {
            StoreError::Corrupt(format!("{} (rotated refresh token)", service.name))
        })?;
        let (Some(replaces), Some(current)) = (
            pair.get("replaces").and_then(Value::as_str),
            pair.get("current").and_then(Value::as_str),
        ) else {
            return Err(StoreError::Corrupt(format!(
                "{} (rotated refresh token)",
                service.name
            )));
        };
        let still = ct_eq(replaces.as_bytes(), configured.as_bytes());
        Ok(still.then(|| Secret::new(current.to_owned())))
    }

    /// Keeps `rotated` as the refresh token that replaces `configured`,
    /// sealed, and writes the snapshot (when there is one).
    pub(crate) fn keep_rotated_refresh_token(
        &self,
        service: &Service,
        configured: &str,
        rotated: &str,
    ) -> Result<(), StoreError> {
        let plain = Zeroizing::new(
            serde_json::json!({"replaces": configured, "current": rotated}).to_string(),
        );
        let sealed = STANDARD.encode(self.sealer.seal(&aad(service), plain.as_bytes())?);
        self.change_section(SECTION, |section| {
            section.insert(service.name.clone(), Value::String(sealed));
        })
    }

    /// Drops a deleted service's rotated refresh token.
    pub(crate) fn forget_rotated_refresh_token(&self, name: &str) -> Result<(), StoreError> {
        let held = {
            let sections = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            sections.get(SECTION).is_some_and(|s| s.get(name).is_some())
        };
        if !held {
            return Ok(());
        }
        self.change_section(SECTION, |section| {
            section.remove(name);
        })
    }

    /// Changes one object section under the writer's lock (so concurrent
    /// changes to it are not lost) and writes the snapshot.
    fn change_section(
        &self,
        name: &str,
        change: impl FnOnce(&mut serde_json::Map<String, Value>),
    ) -> Result<(), StoreError> {
        let mut sections = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let section = sections
            .entry(name.to_owned())
            .or_insert_with(|| Value::Object(Default::default()));
        if !section.is_object() {
            *section = Value::Object(Default::default());
        }
        if let Value::Object(map) = section {
            change(map);
        }
        let list = self.table().list.clone();
        self.persist(&list, &sections)
    }
}

/// A rotated token opens only as its own service's (and connector's).
fn aad(service: &Service) -> Vec<u8> {
    [
        b"clavis/v1/rotated\0",
        service.name.as_bytes(),
        b"\0",
        service.connector.name.as_bytes(),
    ]
    .concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::Registry;
    use crate::store::{Origin, Sealer};

    #[test]
    fn a_rotated_token_applies_while_the_configured_one_is_unchanged() {
        let store = Store::new(Sealer::random().unwrap());
        let c = Registry::new(Vec::new())
            .unwrap()
            .get("openai")
            .unwrap()
            .clone();
        let a = store.add("a", c.clone(), false, Origin::Config).unwrap();
        let b = store.add("b", c, false, Origin::Config).unwrap();
        assert!(store.rotated_refresh_token(&a, "rt-0").unwrap().is_none());
        store
            .keep_rotated_refresh_token(&a, "rt-0", "rt-1")
            .unwrap();
        assert_eq!(
            store
                .rotated_refresh_token(&a, "rt-0")
                .unwrap()
                .unwrap()
                .expose(),
            "rt-1"
        );
        // Rotated again: still replaces the configured token.
        store
            .keep_rotated_refresh_token(&a, "rt-0", "rt-2")
            .unwrap();
        assert_eq!(
            store
                .rotated_refresh_token(&a, "rt-0")
                .unwrap()
                .unwrap()
                .expose(),
            "rt-2"
        );
        assert!(store.rotated_refresh_token(&a, "rt-new").unwrap().is_none());
        assert!(store.rotated_refresh_token(&b, "rt-0").unwrap().is_none());
        let section = store.section(SECTION).unwrap().to_string();
        assert!(!section.contains("rt-"), "sealed: {section}");
        store.forget_rotated_refresh_token("a").unwrap();
        assert!(store.rotated_refresh_token(&a, "rt-0").unwrap().is_none());
    }
}
