//! The password file: `user:argon2-hash` lines checked at CONNECT when the
//! `password` auth method is on, and written by `mqtt-kafka-proxy passwd
//! FILE USER`. [`PasswordFile`] holds the loaded entries, reloads them when
//! the file changes ([`Reloader`]) and verifies passwords off the async
//! threads, remembering successful checks so that a fleet reconnecting after
//! a network blip costs one fast digest per device instead of one Argon2 run.
//! [`set_entry`] and [`hash_password`] are the writing side.
//!
//! Format: one `user:phc-hash` per line (surrounding whitespace ignored);
//! blank lines and lines starting with `#` are ignored. Hashes are Argon2
//! (`$argon2id$`, `$argon2i$` or `$argon2d$`) PHC strings; a user may appear
//! once.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use argon2::password_hash;
use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordVerifier, Version};
use tokio::sync::Semaphore;

use crate::auth::watch::Reloader;

mod write;
pub use self::write::{hash_password, set_entry};

/// Longest user name: an MQTT UTF-8 string holds at most 65535 bytes.
const MAX_USER_LEN: usize = 65_535;

/// Length of the fast digest remembered for a verified password.
const DIGEST_LEN: usize = 32;

/// Errors of the password file.
#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    /// The file cannot be read (missing, unreadable, not UTF-8).
    #[error("cannot read password file {path}: {source}")]
    Read {
        /// The password file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A line is not a valid `user:argon2-hash` entry.
    #[error("password file {path}, line {line}: {reason}")]
    Parse {
        /// The password file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        reason: String,
    },
    /// Argon2 refused to hash the password.
    #[error("cannot hash password: {0}")]
    Hash(String),
    /// The operating system's random number generator failed.
    #[error("cannot get random bytes from the operating system: {0}")]
    Random(String),
    /// Writing the new file (or replacing the old one with it) failed.
    #[error("cannot write password file {path}: {source}")]
    Write {
        /// The password file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The user name given to [`set_entry`] cannot be stored in the file or
    /// cannot be sent in an MQTT CONNECT.
    #[error("user name {user:?} is refused: it {reason}")]
    InvalidUser {
        /// The name (shortened when very long).
        user: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Result of checking one user's password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordCheck {
    /// The file has no entry for this user; the next auth method may try.
    UnknownUser,
    /// The user exists and the password is wrong (or the hash cannot be
    /// checked, which is logged).
    Mismatch,
    /// The password matches the user's hash.
    Ok,
}

/// One user's entry.
struct Entry {
    /// The PHC string, validated at load; re-parsed per check because
    /// `PasswordHash` borrows its text.
    phc: String,
    /// Fast digest of the password that last verified against `phc`. Set
    /// once: only one password (short of an Argon2 collision) verifies, so it
    /// never needs replacing. An entry whose hash changes is a new `Entry`,
    /// which is what clears it.
    verified: OnceLock<[u8; DIGEST_LEN]>,
}

/// The per-process key of the fast digest, so a memory dump of the cache is
/// no shortcut to the passwords and digests cannot be precomputed.
struct DigestKey {
    secret: [u8; 32],
    salt: [u8; 16],
}

/// The loaded password file; cheap to share (`Arc<PasswordFile>`), safe to
/// call from many tasks.
pub struct PasswordFile {
    path: PathBuf,
    /// User → entry. Swapped whole on reload; readers clone the `Arc<Entry>`
    /// out and never hold the lock across an `.await`.
    entries: RwLock<HashMap<String, Arc<Entry>>>,
    /// Version of the file last loaded; also serialises reloads.
    reloader: Reloader,
    key: DigestKey,
    /// Argon2 runs in flight at once. Each takes ~19 MiB and a core for tens
    /// of milliseconds: unbounded, a fleet reconnecting after a proxy restart
    /// would fill tokio's 512 blocking threads and gigabytes of memory.
    slots: Arc<Semaphore>,
}

impl fmt::Debug for PasswordFile {
    // Hashes and the digest key stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile")
            .field("path", &self.path)
            .field("users", &self.len())
            .finish_non_exhaustive()
    }
}

impl PasswordFile {
    /// Loads the file (format in the module docs). Errors name the file and
    /// line.
    pub fn load(path: &Path) -> Result<PasswordFile, PasswdError> {
        // Stamp before reading, so a write racing the read shows as a change
        // at the next poll.
        let reloader = Reloader::new("password", [path.to_owned()]);
        let users = read_file(path)?;
        let entries = users
            .into_iter()
            .map(|(user, phc)| (user, Arc::new(Entry::new(phc))))
            .collect();
        let mut key = DigestKey {
            secret: [0; 32],
            salt: [0; 16],
        };
        random(&mut key.secret)?;
        random(&mut key.salt)?;
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Ok(PasswordFile {
            path: path.to_owned(),
            entries: RwLock::new(entries),
            reloader,
            key,
            slots: Arc::new(Semaphore::new(cores)),
        })
    }

    /// Re-reads the file when [`Reloader`] says it changed. On a read or
    /// parse error the previous entries stay in force, the error (naming the
    /// file and line) is logged and returned; the file is not retried until
    /// it changes again. `Ok(true)`: new entries were loaded.
    ///
    /// Remembered verifications survive for users whose hash is unchanged
    /// (the same hash accepts the same password); a changed or removed
    /// user's are dropped.
    ///
    /// Blocking file I/O: call it from a periodic task (or `spawn_blocking`
    /// for very large files), not from a connection's hot path.
    pub fn reload_if_changed(&self) -> Result<bool, PasswdError> {
        let apply = |users: HashMap<String, String>| {
            let count = users.len();
            let mut entries = self.write_entries();
            let next = users
                .into_iter()
                .map(|(user, phc)| {
                    let entry = match entries.get(&user) {
                        Some(old) if old.phc == phc => Arc::clone(old),
                        _ => Arc::new(Entry::new(phc)),
                    };
                    (user, entry)
                })
                .collect();
            *entries = next;
            tracing::info!(
                file = %self.path.display(),
                users = count,
                "password file changed; new entries in force"
            );
        };
        self.reloader
            .reload_if_changed(|| read_file(&self.path), apply)
            .inspect_err(|e| {
                tracing::error!(
                    file = %self.path.display(),
                    error = %e,
                    "password file changed but cannot be loaded; keeping the previous entries"
                )
            })
    }

    /// Number of users loaded.
    pub fn len(&self) -> usize {
        self.read_entries().len()
    }

    /// Whether `user` has an entry (no hashing).
    pub fn has_user(&self, user: &str) -> bool {
        self.read_entries().contains_key(user)
    }

    /// True when the file has no users.
    pub fn is_empty(&self) -> bool {
        self.read_entries().is_empty()
    }

    /// Verifies `password` for `user`.
    ///
    /// Argon2 is deliberately slow (tens of milliseconds), so it runs on
    /// tokio's blocking pool, at most one run per core at a time. A password
    /// that verified before is recognised by a fast keyed digest (compared in
    /// constant time) without Argon2. A wrong password always pays the full
    /// Argon2 run and is never remembered: answering it fast would hand an
    /// online guesser thousands of tries per second.
    ///
    /// An unknown user returns [`PasswordCheck::UnknownUser`] at once, so the
    /// next auth method gets its turn; the timing difference reveals only
    /// whether a device id is in the file, and device ids are not secrets.
    ///
    /// Cancel-safe: dropping the future does not stop an Argon2 run already
    /// started, which still fills the cache and frees its slot.
    pub async fn verify(&self, user: &str, password: &[u8]) -> PasswordCheck {
        let entry = {
            let entries = self.read_entries();
            match entries.get(user) {
                Some(entry) => Arc::clone(entry),
                None => return PasswordCheck::UnknownUser,
            }
        };
        let digest = self.digest(password);
        if let (Some(known), Some(digest)) = (entry.verified.get(), &digest) {
            if ct_eq(known, digest) {
                return PasswordCheck::Ok;
            }
        }
        let permit = match Arc::clone(&self.slots).acquire_owned().await {
            Ok(permit) => permit,
            // Only a closed semaphore errs, and nothing closes this one.
            Err(_) => return PasswordCheck::Mismatch,
        };
        let password = password.to_vec();
        let checked = Arc::clone(&entry);
        let joined = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let matched = argon2_verify(&checked.phc, &password)?;
            if matched {
                if let Some(digest) = digest {
                    // Already set means a concurrent check of the same
                    // (only) matching password won the race: same digest.
                    let _ = checked.verified.set(digest);
                }
            }
            Ok::<bool, password_hash::Error>(matched)
        })
        .await;
        match joined {
            Ok(Ok(true)) => PasswordCheck::Ok,
            Ok(Ok(false)) => PasswordCheck::Mismatch,
            Ok(Err(e)) => {
                tracing::error!(
                    file = %self.path.display(),
                    user,
                    error = %e,
                    "password hash cannot be checked; refusing"
                );
                PasswordCheck::Mismatch
            }
            Err(e) => {
                tracing::error!(user, error = %e, "password check task failed; refusing");
                PasswordCheck::Mismatch
            }
        }
    }

    /// The fast keyed digest of a password: Argon2id at its minimum cost
    /// (8 KiB, one pass: ~15 µs, against ~25 ms at the default cost) keyed with this process's
    /// random secret. Argon2 with a secret is a keyed hash, and it comes from
    /// a crate already linked. `None` only if Argon2 refuses its inputs
    /// (a password over 4 GiB); the caller then skips the cache.
    fn digest(&self, password: &[u8]) -> Option<[u8; DIGEST_LEN]> {
        let params = Params::new(
            Params::MIN_M_COST,
            Params::MIN_T_COST,
            Params::MIN_P_COST,
            Some(DIGEST_LEN),
        )
        .ok()?;
        let argon = Argon2::new_with_secret(
            &self.key.secret,
            Algorithm::Argon2id,
            Version::V0x13,
            params,
        )
        .ok()?;
        let mut out = [0; DIGEST_LEN];
        argon
            .hash_password_into(password, &self.key.salt, &mut out)
            .ok()?;
        Some(out)
    }

    fn read_entries(&self) -> RwLockReadGuard<'_, HashMap<String, Arc<Entry>>> {
        // A panic elsewhere while holding the lock leaves a complete map
        // (writers only swap it whole), so a poisoned lock is still usable.
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_entries(&self) -> RwLockWriteGuard<'_, HashMap<String, Arc<Entry>>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl Entry {
    fn new(phc: String) -> Entry {
        Entry {
            phc,
            verified: OnceLock::new(),
        }
    }
}

/// Full Argon2 check of `password` against a PHC string. `Ok(false)`: wrong
/// password; `Err`: the hash cannot be used (validated at load, so not
/// expected).
fn argon2_verify(phc: &str, password: &[u8]) -> Result<bool, password_hash::Error> {
    let hash = PasswordHash::new(phc)?;
    // `Argon2::default()` takes algorithm, version and parameters from the
    // hash, and compares the outputs in constant time.
    match Argon2::default().verify_password(password, &hash) {
        Ok(()) => Ok(true),
        Err(password_hash::Error::Password) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Equality of two digests in time independent of where they differ.
fn ct_eq(a: &[u8; DIGEST_LEN], b: &[u8; DIGEST_LEN]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keeps the optimiser from turning the fold into an early-exit compare.
    std::hint::black_box(diff) == 0
}

fn random(buf: &mut [u8]) -> Result<(), PasswdError> {
    OsRng
        .try_fill_bytes(buf)
        .map_err(|e| PasswdError::Random(e.to_string()))
}

/// Reads and parses the file into user → PHC string.
fn read_file(path: &Path) -> Result<HashMap<String, String>, PasswdError> {
    let text = fs::read_to_string(path).map_err(|source| PasswdError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Parses the file's text; `path` only names the file in errors.
fn parse(path: &Path, text: &str) -> Result<HashMap<String, String>, PasswdError> {
    parse_except(path, text, None)
}

/// [`parse`], skipping the lines of user `except` (whatever they hold).
fn parse_except(
    path: &Path,
    text: &str,
    except: Option<&str>,
) -> Result<HashMap<String, String>, PasswdError> {
    // User → (PHC string, line), the line for the duplicate error.
    let mut users: HashMap<String, (String, usize)> = HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let error = |reason: String| PasswdError::Parse {
            path: path.to_owned(),
            line,
            reason,
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (user, phc) = trimmed
            .split_once(':')
            .ok_or_else(|| error("expected user:hash, found no ':'".to_owned()))?;
        if except == Some(user) {
            continue;
        }
        check_user(user).map_err(|reason| error(format!("user name {reason}")))?;
        check_hash(phc).map_err(|reason| error(format!("user {user:?}: {reason}")))?;
        if let Some((_, first)) = users.get(user) {
            return Err(error(format!(
                "user {user:?} already appears on line {first}"
            )));
        }
        users.insert(user.to_owned(), (phc.to_owned(), line));
    }
    Ok(users
        .into_iter()
        .map(|(user, (phc, _))| (user, phc))
        .collect())
}

/// The user of an entry line, `None` for blank, comment and malformed lines;
/// the same reading as [`parse`].
fn entry_user(line: &str) -> Option<&str> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return None;
    }
    trimmed.split_once(':').map(|(user, _)| user)
}

/// Why a user name cannot be in the file, completing "it …".
fn check_user(user: &str) -> Result<(), &'static str> {
    if user.is_empty() {
        return Err("is empty");
    }
    if user.len() > MAX_USER_LEN {
        return Err("is longer than 65535 bytes, the most an MQTT string holds");
    }
    if user.contains(':') {
        return Err("contains ':', the separator in the password file");
    }
    if user.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or a control character");
    }
    Ok(())
}

/// Checks that `phc` is an Argon2 PHC string Argon2 can verify against, so
/// that a bad hash is a load error naming its line, not a refusal at CONNECT.
fn check_hash(phc: &str) -> Result<(), String> {
    let hash = PasswordHash::new(phc).map_err(|e| format!("hash is not a PHC string: {e}"))?;
    Algorithm::try_from(hash.algorithm).map_err(|_| {
        format!(
            "hash algorithm {:?} is not argon2id, argon2i or argon2d",
            hash.algorithm.as_str()
        )
    })?;
    if let Some(version) = hash.version {
        Version::try_from(version)
            .map_err(|_| format!("argon2 version {version} is not 16 or 19"))?;
    }
    Params::try_from(&hash).map_err(|e| format!("argon2 parameters: {e}"))?;
    let salt = hash.salt.ok_or("hash has no salt")?;
    let mut buf = [0; 64];
    let salt = salt
        .decode_b64(&mut buf)
        .map_err(|e| format!("hash salt: {e}"))?;
    if salt.len() < argon2::MIN_SALT_LEN {
        return Err(format!(
            "hash salt is {} bytes, argon2 needs at least {}",
            salt.len(),
            argon2::MIN_SALT_LEN
        ));
    }
    if hash.hash.is_none() {
        return Err("hash has no output".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::SaltString;
    use argon2::PasswordHasher;

    use super::write::*;
    use super::*;

    /// A valid Argon2id hash at minimum cost, so tests that only need a file
    /// do not pay for the default parameters.
    fn cheap_hash(password: &[u8]) -> String {
        let params = Params::new(Params::MIN_M_COST, 1, 1, None).unwrap();
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(password, &salt)
            .unwrap()
            .to_string()
    }

    fn write_file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("passwd");
        fs::write(&path, text).unwrap();
        path
    }

    #[tokio::test]
    async fn right_wrong_and_unknown() {
        let hash = hash_password(b"s3cret").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(
            &dir,
            &format!(
                "# devices\n\ndev-1:{hash}\r\n  dev-2:{}  \n",
                cheap_hash(b"other")
            ),
        );
        let file = PasswordFile::load(&path).unwrap();
        assert_eq!(file.len(), 2);
        assert!(!file.is_empty());
        // Default-cost Argon2 is slow in debug builds: one run for the
        // default hash, the rest against the cheap one.
        assert_eq!(file.verify("dev-1", b"s3cret").await, PasswordCheck::Ok);
        assert_eq!(file.verify("dev-2", b"other").await, PasswordCheck::Ok);
        assert_eq!(file.verify("dev-2", b"othe").await, PasswordCheck::Mismatch);
        assert_eq!(file.verify("dev-2", b"").await, PasswordCheck::Mismatch);
        assert_eq!(
            file.verify("dev-3", b"s3cret").await,
            PasswordCheck::UnknownUser
        );
        assert_eq!(
            file.verify("DEV-1", b"s3cret").await,
            PasswordCheck::UnknownUser
        );
        assert!(file.has_user("dev-1") && !file.has_user("dev-3"));
    }

    #[tokio::test]
    async fn the_cache_never_turns_a_wrong_password_into_ok() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(&dir, &format!("dev-1:{}\n", cheap_hash(b"right")));
        let file = PasswordFile::load(&path).unwrap();
        assert_eq!(
            file.verify("dev-1", b"wrong").await,
            PasswordCheck::Mismatch
        );
        assert!(file.read_entries()["dev-1"].verified.get().is_none());
        assert_eq!(file.verify("dev-1", b"right").await, PasswordCheck::Ok);
        assert!(file.read_entries()["dev-1"].verified.get().is_some());
        assert_eq!(file.verify("dev-1", b"right").await, PasswordCheck::Ok);
        assert_eq!(
            file.verify("dev-1", b"wrong").await,
            PasswordCheck::Mismatch
        );
        assert_eq!(file.verify("dev-1", b"righ").await, PasswordCheck::Mismatch);
        assert_eq!(file.verify("dev-1", b"right").await, PasswordCheck::Ok);
    }

    #[test]
    fn digest_is_keyed_per_file_and_constant_time_compare_works() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(&dir, "");
        let a = PasswordFile::load(&path).unwrap();
        let b = PasswordFile::load(&path).unwrap();
        let da = a.digest(b"pw").unwrap();
        assert!(ct_eq(&da, &a.digest(b"pw").unwrap()));
        assert!(!ct_eq(&da, &a.digest(b"pw2").unwrap()));
        assert!(!ct_eq(&da, &b.digest(b"pw").unwrap()));
        assert!(a.is_empty());
    }

    #[tokio::test]
    async fn reload_picks_up_changes_and_keeps_unchanged_users_cache() {
        let dir = tempfile::tempdir().unwrap();
        let one = cheap_hash(b"one");
        let path = write_file(&dir, &format!("a:{one}\nb:{}\n", cheap_hash(b"two")));
        let file = PasswordFile::load(&path).unwrap();
        assert!(!file.reload_if_changed().unwrap());
        assert_eq!(file.verify("a", b"one").await, PasswordCheck::Ok);
        assert_eq!(file.verify("b", b"two").await, PasswordCheck::Ok);

        // Different size, so FileWatch sees it without waiting on mtime.
        fs::write(
            &path,
            format!(
                "a:{one}\nb:{}\nc:{}\n",
                cheap_hash(b"new"),
                cheap_hash(b"c")
            ),
        )
        .unwrap();
        assert!(file.reload_if_changed().unwrap());
        assert!(!file.reload_if_changed().unwrap());
        assert_eq!(file.len(), 3);
        {
            let entries = file.read_entries();
            assert!(
                entries["a"].verified.get().is_some(),
                "same hash keeps its cache"
            );
            assert!(
                entries["b"].verified.get().is_none(),
                "new hash starts empty"
            );
        }
        assert_eq!(file.verify("b", b"two").await, PasswordCheck::Mismatch);
        assert_eq!(file.verify("b", b"new").await, PasswordCheck::Ok);
        assert_eq!(file.verify("c", b"c").await, PasswordCheck::Ok);

        fs::write(&path, "c:x\n").unwrap();
        assert!(file.reload_if_changed().is_err());
        fs::write(&path, "").unwrap();
        assert!(file.reload_if_changed().unwrap());
        assert_eq!(file.verify("a", b"one").await, PasswordCheck::UnknownUser);
    }

    #[tokio::test]
    async fn a_broken_file_on_reload_keeps_the_old_entries() {
        let dir = tempfile::tempdir().unwrap();
        let hash = cheap_hash(b"pw");
        let path = write_file(&dir, &format!("dev-1:{hash}\n"));
        let file = PasswordFile::load(&path).unwrap();
        fs::write(&path, format!("dev-1:{hash}\n# fine\ndev-2 {hash}\n")).unwrap();
        match file.reload_if_changed() {
            Err(PasswdError::Parse { line: 3, .. }) => {}
            other => panic!("expected a parse error on line 3, got {other:?}"),
        }
        assert_eq!(file.len(), 1);
        assert_eq!(file.verify("dev-1", b"pw").await, PasswordCheck::Ok);
        // Not retried until it changes again.
        assert!(!file.reload_if_changed().unwrap());

        fs::remove_file(&path).unwrap();
        assert!(matches!(
            file.reload_if_changed(),
            Err(PasswdError::Read { .. })
        ));
        assert_eq!(file.verify("dev-1", b"pw").await, PasswordCheck::Ok);
    }

    #[test]
    fn parse_errors_name_the_line() {
        let good = cheap_hash(b"pw");
        let argon2i = {
            let params = Params::new(Params::MIN_M_COST, 1, 1, None).unwrap();
            let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
            Argon2::new(Algorithm::Argon2i, Version::V0x13, params)
                .hash_password(b"pw", &salt)
                .unwrap()
                .to_string()
        };
        let path = Path::new("/etc/mqtt/passwd");
        // The variants argon2 accepts all load.
        let ok = parse(path, &format!("a:{good}\nb:{argon2i}\n")).unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok["a"], good);

        let cases: &[(String, usize, &str)] = &[
            (format!("# c\nno-colon {good}\n"), 2, "no ':'"),
            (format!("a:{good}\n\nb:not-a-hash\n"), 3, "not a PHC string"),
            (
                "a:$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo\n".to_owned(),
                1,
                "not argon2id",
            ),
            (
                format!("a:{good}\nb:{good}\na:{good}\n"),
                3,
                "already appears on line 1",
            ),
            (format!(":{good}\n"), 1, "is empty"),
            (format!("a b:{good}\n"), 1, "whitespace"),
            (format!("a\u{1}:{good}\n"), 1, "control character"),
            (
                "a:$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ\n".to_owned(),
                1,
                "no output",
            ),
            (
                "a:$argon2id$v=7$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo\n".to_owned(),
                1,
                "version",
            ),
            (
                "a:$argon2id$v=19$m=1,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo\n".to_owned(),
                1,
                "parameters",
            ),
        ];
        for (text, line, reason) in cases {
            match parse(path, text) {
                Err(e @ PasswdError::Parse { line: l, .. }) => {
                    let msg = e.to_string();
                    assert_eq!(l, *line, "{text:?}: {msg}");
                    assert!(msg.contains("/etc/mqtt/passwd"), "{msg}");
                    assert!(msg.contains(&format!("line {line}")), "{msg}");
                    assert!(msg.contains(reason), "{text:?}: {msg}");
                }
                other => panic!("{text:?}: expected a parse error, got {other:?}"),
            }
        }
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let e = PasswordFile::load(&missing).unwrap_err();
        assert!(matches!(e, PasswdError::Read { .. }));
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[tokio::test]
    async fn set_entry_adds_then_replaces_keeping_other_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        set_entry(&path, "dev-1", b"first").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let other = cheap_hash(b"other");
        let first_line = fs::read_to_string(&path).unwrap();
        // Hand-edited additions, one without a final newline.
        fs::write(
            &path,
            format!("# fleet A\n{first_line}\n# keep me\ndev-2:{other}"),
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        }

        set_entry(&path, "dev-1", b"second").unwrap();
        set_entry(&path, "dev-3", b"third").unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert_eq!(lines[0], "# fleet A");
        assert!(lines[1].starts_with("dev-1:$argon2id$"));
        assert_ne!(lines[1], first_line.trim_end());
        assert_eq!(lines[2], "");
        assert_eq!(lines[3], "# keep me");
        assert_eq!(lines[4], format!("dev-2:{other}"));
        assert!(lines[5].starts_with("dev-3:$argon2id$"));
        assert!(text.ends_with('\n'));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o640, "an existing file keeps its mode");
        }
        // No temporary left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

        let file = PasswordFile::load(&path).unwrap();
        assert_eq!(file.len(), 3);
        assert_eq!(file.verify("dev-1", b"second").await, PasswordCheck::Ok);
        assert_eq!(file.verify("dev-2", b"other").await, PasswordCheck::Ok);
    }

    #[test]
    fn with_entry_keeps_line_endings_and_drops_duplicates_of_the_user() {
        assert_eq!(with_entry("", "u", "H"), "u:H\n");
        assert_eq!(with_entry("# c", "u", "H"), "# c\nu:H\n");
        assert_eq!(
            with_entry("a:1\r\nu:old\r\n#u:x\r\n u:dup\nb:2", "u", "H"),
            "a:1\r\nu:H\r\n#u:x\r\nb:2"
        );
    }

    #[test]
    fn set_entry_refuses_a_file_it_would_break_and_bad_user_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(&dir, "dev-1:garbage\n");
        // A broken line of another user is left to a human (replacing the
        // user's own broken line repairs it: the next test).
        let e = set_entry(&path, "dev-2", b"pw").unwrap_err();
        assert!(matches!(e, PasswdError::Parse { line: 1, .. }), "{e}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "dev-1:garbage\n");

        let long = "x".repeat(MAX_USER_LEN + 1);
        for (user, reason) in [
            ("", "is empty"),
            ("a:b", "':'"),
            ("a b", "whitespace"),
            ("a\tb", "whitespace"),
            ("a\u{7f}b", "control"),
            (long.as_str(), "65535"),
        ] {
            let e = set_entry(&path, user, b"pw").unwrap_err();
            assert!(
                matches!(e, PasswdError::InvalidUser { .. }),
                "{user:?}: {e}"
            );
            assert!(e.to_string().contains(reason), "{e}");
            assert!(e.to_string().len() < 200, "{e}");
        }
        assert!(check_user(&"x".repeat(MAX_USER_LEN)).is_ok());
        assert!(check_user("dev-1/ünïcode").is_ok());
    }

    #[test]
    fn set_entry_repairs_the_users_own_broken_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(&dir, "# x\ndev-1:garbage\n");
        set_entry(&path, "dev-1", b"pw").unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# x\ndev-1:$argon2id$"), "{text}");
        PasswordFile::load(&path).unwrap();
    }
}
