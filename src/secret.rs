//! Secret material: zeroized on drop, redacted in `Debug`/`Display`, compared in constant time.

use std::fmt;

use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

/// A secret value. Its bytes are wiped when it is dropped and it never prints.
///
/// Reading it is explicit (`expose`), so every place that touches plaintext is
/// easy to find with grep.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Secret<T: Zeroize>(T);

impl<T: Zeroize> Secret<T> {
    pub(crate) fn new(value: T) -> Self {
        Secret(value)
    }

    pub(crate) fn expose(&self) -> &T {
        &self.0
    }
}

impl<T: Zeroize> Drop for Secret<T> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<T: Zeroize> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl<T: Zeroize> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl From<String> for Secret<String> {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret<String> {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

/// A scratch buffer for plaintext that is wiped on drop.
pub(crate) type Plain = Zeroizing<Vec<u8>>;

/// SHA-256 of a token, as stored for agents and the admin: the token itself is
/// never kept.
#[derive(Clone, Copy, Eq)]
pub(crate) struct TokenDigest([u8; 32]);

impl PartialEq for TokenDigest {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

impl TokenDigest {
    pub(crate) fn of(token: &[u8]) -> Self {
        TokenDigest(Sha256::digest(token).into())
    }

    /// Parses 64 hex characters (the `token_sha256` config form).
    pub(crate) fn from_hex(hex: &str) -> Option<Self> {
        crate::encoding::hex_decode::<32>(hex).map(TokenDigest)
    }

    /// Constant-time comparison of a presented token with this digest.
    pub(crate) fn matches(&self, token: &[u8]) -> bool {
        ct_eq(&self.0, &TokenDigest::of(token).0)
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenDigest([REDACTED])")
    }
}

/// A long-lived secret on memory pages of its own: locked in RAM so it is never
/// swapped out, left out of core dumps, and zeroed before the pages are
/// returned. Holds the master key's AES key schedule for the process's life.
///
/// Locking is best effort (`RLIMIT_MEMLOCK` may forbid it); [`Locked::is_locked`]
/// says whether it took. Moving a value in still passes it through the stack
/// once, which only the next calls overwrite.
pub(crate) struct Locked<T> {
    ptr: std::ptr::NonNull<T>,
    /// Bytes mapped: `size_of::<T>()` rounded up to whole pages.
    len: usize,
    locked: bool,
}

// SAFETY: `Locked<T>` owns its `T` exclusively, like a `Box<T>`.
unsafe impl<T: Send> Send for Locked<T> {}
// SAFETY: shared access only hands out `&T`, like a `Box<T>`.
unsafe impl<T: Sync> Sync for Locked<T> {}

impl<T> Locked<T> {
    pub(crate) fn new(value: T) -> std::io::Result<Locked<T>> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        if std::mem::align_of::<T>() > page {
            return Err(std::io::Error::other("alignment larger than a page"));
        }
        let len = std::mem::size_of::<T>().max(1).div_ceil(page) * page;
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        #[cfg(target_os = "linux")]
        // SAFETY: advice on the mapping made above, whole pages.
        unsafe {
            libc::madvise(raw, len, libc::MADV_DONTDUMP);
        }
        // SAFETY: locks the mapping made above; failure only leaves it unlocked.
        let locked = unsafe { libc::mlock(raw, len) } == 0;
        let ptr = raw.cast::<T>();
        // SAFETY: `raw` is page-aligned (so aligned for T, checked above),
        // writable and at least size_of::<T>() bytes long.
        unsafe { ptr.write(value) };
        let ptr = std::ptr::NonNull::new(ptr).ok_or_else(std::io::Error::last_os_error)?;
        Ok(Locked { ptr, len, locked })
    }

    /// Whether the pages are locked in RAM (`mlock` succeeded).
    pub(crate) fn is_locked(&self) -> bool {
        self.locked
    }
}

impl<T> std::ops::Deref for Locked<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: `ptr` holds an initialized T until `drop`.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T> Drop for Locked<T> {
    fn drop(&mut self) {
        let raw = self.ptr.as_ptr();
        // SAFETY: the T is initialized and dropped exactly once, here; then
        // the whole mapping (ours alone) is zeroed, unlocked and unmapped.
        unsafe {
            std::ptr::drop_in_place(raw);
            std::slice::from_raw_parts_mut(raw.cast::<u8>(), self.len).zeroize();
            if self.locked {
                libc::munlock(raw.cast(), self.len);
            }
            libc::munmap(raw.cast(), self.len);
        }
    }
}

impl<T> fmt::Debug for Locked<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Locked([REDACTED])")
    }
}

/// Compares two byte strings without an early exit on the first difference.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    mod secret {
        use super::*;

        #[test]
        fn debug_and_display_are_redacted() {
            let s = Secret::from("sk-live-123");
            assert_eq!(format!("{s:?}"), "[REDACTED]");
            assert_eq!(format!("{s}"), "[REDACTED]");
        }
    }

    mod locked {
        use super::*;

        /// The `VmFlags` and `Locked` lines of the mapping that holds `addr`.
        fn smaps_of(addr: usize) -> Option<(String, String)> {
            let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
            let mut inside = false;
            let mut locked = String::new();
            for line in smaps.lines() {
                let head = line.split_whitespace().next().unwrap_or("");
                if let Some((lo, hi)) = head.split_once('-') {
                    if let (Ok(lo), Ok(hi)) =
                        (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                    {
                        inside = (lo..hi).contains(&addr);
                        continue;
                    }
                }
                if inside && line.starts_with("Locked:") {
                    locked = line.to_owned();
                }
                if inside && line.starts_with("VmFlags:") {
                    return Some((line.to_owned(), locked));
                }
            }
            None
        }

        #[test]
        #[cfg(target_os = "linux")]
        fn pages_are_locked_kept_out_of_dumps_and_unmapped_on_drop() {
            let key = Locked::new([7u8; 48]).unwrap();
            assert_eq!(key[47], 7);
            let addr = &*key as *const [u8; 48] as usize;
            let (flags, locked) = smaps_of(addr).expect("the mapping is listed");
            assert!(flags.split_whitespace().any(|f| f == "dd"), "{flags}");
            if key.is_locked() {
                assert!(flags.split_whitespace().any(|f| f == "lo"), "{flags}");
                assert!(!locked.contains(" 0 kB"), "{locked}");
            }
            drop(key);
            assert!(smaps_of(addr).is_none_or(|(flags, _)| !flags.contains(" dd")));
        }

        #[test]
        fn drops_its_value_once_and_prints_nothing() {
            let witness = std::sync::Arc::new(());
            let key = Locked::new((witness.clone(), Secret::from("sk-live-abc"))).unwrap();
            assert_eq!(std::sync::Arc::strong_count(&witness), 2);
            assert_eq!(format!("{key:?}"), "Locked([REDACTED])");
            drop(key);
            assert_eq!(std::sync::Arc::strong_count(&witness), 1);
        }
    }

    mod token_digest {
        use super::*;

        #[test]
        fn matches_only_the_token() {
            let d = TokenDigest::of(b"hunter2");
            assert!(d.matches(b"hunter2"));
            assert!(!d.matches(b"hunter3"));
            assert!(!d.matches(b""));
        }

        #[test]
        fn parses_hex_form() {
            let hex = "f52fbd32b2b3b86ff88ef6c490628285f482af15ddcb29541f94bcf526a3f6c7";
            let d = TokenDigest::from_hex(hex).unwrap();
            assert!(d.matches(b"hunter2"));
            assert!(TokenDigest::from_hex("zz").is_none());
        }
    }
}
