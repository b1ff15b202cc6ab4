//! `Credentials`: a service's secret fields, only ever alive (in plaintext)
//! between `Store::open` and the end of one exchange's authorize phase.

use std::fmt;

use zeroize::{Zeroize, Zeroizing};

use crate::secret::Plain;

#[derive(Clone, Default)]
pub(crate) struct Credentials {
    fields: Vec<(String, Zeroizing<String>)>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.fields.iter().map(|(k, _)| (k, "[REDACTED]")))
            .finish()
    }
}

impl Zeroize for Credentials {
    fn zeroize(&mut self) {
        // Dropping each value zeroes it (Zeroizing); names are not secret.
        self.fields.clear();
    }
}

impl Credentials {
    #[cfg(test)]
    pub(crate) fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Credentials {
        let mut c = Credentials::default();
        for (k, v) in pairs {
            c.insert(k.to_owned(), Zeroizing::new(v.to_owned()));
        }
        c
    }

    pub(crate) fn insert(&mut self, name: String, value: Zeroizing<String>) {
        match self.fields.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((name, value)),
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|(k, _)| k.as_str())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Length-prefixed encoding (`u16 name, u32 value` per field): no
    /// serializer keeps an unzeroed copy of a value along the way.
    pub(crate) fn encode(&self) -> Plain {
        let size: usize = self.fields.iter().map(|(k, v)| 6 + k.len() + v.len()).sum();
        let mut out = Zeroizing::new(Vec::with_capacity(size));
        for (k, v) in &self.fields {
            out.extend_from_slice(&(k.len() as u16).to_be_bytes());
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v.as_bytes());
        }
        out
    }

    pub(crate) fn decode(mut bytes: &[u8]) -> Option<Credentials> {
        let mut c = Credentials::default();
        while !bytes.is_empty() {
            let (len, rest) = bytes.split_first_chunk::<2>()?;
            let (name, rest) = rest.split_at_checked(u16::from_be_bytes(*len) as usize)?;
            let (len, rest) = rest.split_first_chunk::<4>()?;
            let (value, rest) = rest.split_at_checked(u32::from_be_bytes(*len) as usize)?;
            let name = std::str::from_utf8(name).ok()?.to_owned();
            let value = Zeroizing::new(std::str::from_utf8(value).ok()?.to_owned());
            c.insert(name, value);
            bytes = rest;
        }
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod encode {
        use super::*;

        #[test]
        fn round_trips() {
            let c = Credentials::from_pairs([("api_key", "sk-1"), ("email", "a@b.c")]);
            let d = Credentials::decode(&c.encode()).unwrap();
            assert_eq!(d.get("api_key"), Some("sk-1"));
            assert_eq!(d.get("email"), Some("a@b.c"));
        }

        #[test]
        fn truncated_input_is_refused() {
            let c = Credentials::from_pairs([("api_key", "sk-1")]);
            let bytes = c.encode();
            assert!(Credentials::decode(&bytes[..bytes.len() - 1]).is_none());
        }

        #[test]
        fn debug_hides_values() {
            let c = Credentials::from_pairs([("api_key", "sk-1")]);
            assert_eq!(format!("{c:?}"), r#"{"api_key": "[REDACTED]"}"#);
        }
    }
}
