//! AES-256-GCM sealing under the master key (ring). Every seal draws a fresh
//! random 96-bit nonce; the associated data binds a ciphertext to its slot,
//! so a sealed value cannot be moved to another service.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::secret::{Locked, Plain};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("the master key must be 32 bytes, raw or as 64 hex characters")]
    BadKey,
    #[error("sealed data failed authentication (wrong master key, or tampered)")]
    Open,
    #[error("the system random generator failed")]
    Random,
    #[error("could not map memory for the master key: {0}")]
    Memory(String),
}

pub(crate) struct Sealer {
    /// The key schedule, on locked pages kept out of core dumps (SPEC §3.1).
    key: Locked<LessSafeKey>,
    /// First 8 bytes of SHA-256(key): names the key in snapshots without revealing it.
    key_id: [u8; 8],
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([REDACTED])")
    }
}

impl Sealer {
    pub(crate) fn new(key_bytes: &[u8]) -> Result<Sealer, SealError> {
        let key = UnboundKey::new(&AES_256_GCM, key_bytes).map_err(|_| SealError::BadKey)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key_bytes);
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&digest.as_ref()[..8]);
        Ok(Sealer {
            key: Locked::new(LessSafeKey::new(key))
                .map_err(|e| SealError::Memory(e.to_string()))?,
            key_id,
            rng: SystemRandom::new(),
        })
    }

    /// A fresh random key, for a process without `store.master_key_file`.
    pub(crate) fn random() -> Result<Sealer, SealError> {
        let mut key = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(key.as_mut())
            .map_err(|_| SealError::Random)?;
        Sealer::new(key.as_ref())
    }

    /// Reads a key file's contents: 32 raw bytes, or 64 hex characters
    /// (surrounding whitespace ignored).
    pub(crate) fn from_file_bytes(bytes: &[u8]) -> Result<Sealer, SealError> {
        if bytes.len() == 32 {
            return Sealer::new(bytes);
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|_| SealError::BadKey)?
            .trim();
        let key = Zeroizing::new(crate::encoding::hex_decode::<32>(text).ok_or(SealError::BadKey)?);
        Sealer::new(key.as_ref())
    }

    /// Whether the key's pages are locked in RAM (`mlock` may be refused by
    /// `RLIMIT_MEMLOCK`; they are kept out of core dumps either way).
    pub(crate) fn key_locked(&self) -> bool {
        self.key.is_locked()
    }

    pub(crate) fn key_id(&self) -> [u8; 8] {
        self.key_id
    }

    /// `nonce ‖ ciphertext ‖ tag`.
    pub(crate) fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + AES_256_GCM.tag_len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[NONCE_LEN..],
            )
            .map_err(|_| SealError::Random)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Opens into a buffer that is zeroed when dropped.
    pub(crate) fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Plain, SealError> {
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(SealError::Open);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let mut buf = Zeroizing::new(body.to_vec());
        let len = self
            .key
            .open_in_place(nonce, Aad::from(aad), buf.as_mut_slice())
            .map_err(|_| SealError::Open)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod seal {
        use super::*;

        #[test]
        fn round_trips_and_uses_fresh_nonces() {
            let s = Sealer::random().unwrap();
            let a = s.seal(b"svc_1", b"sk-secret").unwrap();
            let b = s.seal(b"svc_1", b"sk-secret").unwrap();
            assert_ne!(a, b);
            assert_eq!(s.open(b"svc_1", &a).unwrap().as_slice(), b"sk-secret");
            assert!(!a.windows(9).any(|w| w == b"sk-secret"));
        }

        #[test]
        fn aad_binds_to_slot() {
            let s = Sealer::random().unwrap();
            let a = s.seal(b"svc_1", b"x").unwrap();
            assert_eq!(s.open(b"svc_2", &a), Err(SealError::Open));
        }

        #[test]
        fn other_key_and_flipped_byte_fail() {
            let s = Sealer::random().unwrap();
            let mut a = s.seal(b"k", b"x").unwrap();
            assert_eq!(
                Sealer::random().unwrap().open(b"k", &a),
                Err(SealError::Open)
            );
            a[NONCE_LEN] ^= 1;
            assert_eq!(s.open(b"k", &a), Err(SealError::Open));
            assert_eq!(s.open(b"k", &[1, 2, 3]), Err(SealError::Open));
        }

        #[test]
        fn key_file_forms() {
            assert!(Sealer::from_file_bytes(&[7u8; 32]).is_ok());
            let hex = "ab".repeat(32) + "\n";
            assert!(Sealer::from_file_bytes(hex.as_bytes()).is_ok());
            assert_eq!(
                Sealer::from_file_bytes(b"short").unwrap_err(),
                SealError::BadKey
            );
        }
    }
}
