//! The writing side of the password file (`mqtt-kafka-proxy passwd FILE
//! USER`): hash a password, and add or replace one user's line, replacing
//! the file atomically with its owner and mode kept.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHasher};
use tempfile::NamedTempFile;

use super::{check_user, entry_user, parse_except, random, PasswdError};

/// Hashes a password with Argon2id (the argon2 crate's default parameters,
/// random salt from the OS) as a PHC string `$argon2id$v=19$...`.
pub fn hash_password(password: &[u8]) -> Result<String, PasswdError> {
    let mut salt = [0; argon2::RECOMMENDED_SALT_LEN];
    random(&mut salt)?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| PasswdError::Hash(e.to_string()))?;
    let hash = Argon2::default()
        .hash_password(password, &salt)
        .map_err(|e| PasswdError::Hash(e.to_string()))?;
    Ok(hash.to_string())
}

/// Adds or replaces `user`'s entry in the file at `path` (creating it with
/// mode 0600 if missing), keeping every other line, comments included, as
/// it was; later duplicate lines of the same user are dropped. Writes a
/// temporary file in the same directory and renames it over the original
/// (atomic, so a running proxy never reads half a file); an existing file's
/// permissions and owner carry over. A symlink at `path` is replaced by a
/// regular file.
///
/// Refuses user names that are empty, contain ':', whitespace or control
/// characters, or are longer than 65535 bytes (an MQTT string), and refuses
/// to write a result the proxy would not load (an existing broken line other
/// than `user`'s), naming that line.
pub fn set_entry(path: &Path, user: &str, password: &[u8]) -> Result<(), PasswdError> {
    check_user(user).map_err(|reason| PasswdError::InvalidUser {
        user: shorten(user),
        reason,
    })?;
    let existing = match fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(PasswdError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let existing = existing.unwrap_or_default();
    // Every other line must already load; the new one does by construction
    // (name checked above, hash made by argon2). Checked before the slow hash.
    parse_except(path, &existing, Some(user))?;
    let phc = hash_password(password)?;
    write_replacing(path, with_entry(&existing, user, &phc).as_bytes())
}

/// `text` with `user`'s line replaced (or appended) by `user:phc`, line
/// endings kept.
pub(super) fn with_entry(text: &str, user: &str, phc: &str) -> String {
    let mut out = String::with_capacity(text.len() + user.len() + phc.len() + 2);
    let mut replaced = false;
    for piece in text.split_inclusive('\n') {
        let body = piece.trim_end_matches(['\n', '\r']);
        if entry_user(body) != Some(user) {
            out.push_str(piece);
            continue;
        }
        if !replaced {
            out.push_str(user);
            out.push(':');
            out.push_str(phc);
            out.push_str(&piece[body.len()..]);
            replaced = true;
        }
    }
    if !replaced {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(user);
        out.push(':');
        out.push_str(phc);
        out.push('\n');
    }
    out
}

/// A user name for an error message, cut to a readable length.
fn shorten(user: &str) -> String {
    const SHOWN: usize = 64;
    match user.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}…", &user[..cut]),
        None => user.to_owned(),
    }
}

/// Writes `contents` to a new file beside `path` and renames it over `path`.
/// The temporary file is `tempfile`'s: created with mode 0600, never an
/// existing file (a stale temp or a planted symlink), and removed if
/// anything fails before the rename.
fn write_replacing(path: &Path, contents: &[u8]) -> Result<(), PasswdError> {
    let write_err = |source: io::Error| PasswdError::Write {
        path: path.to_owned(),
        source,
    };
    if path.file_name().is_none() {
        return Err(write_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path does not name a file",
        )));
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let original = match fs::metadata(path) {
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(write_err(e)),
    };
    let mut tmp = NamedTempFile::new_in(dir).map_err(write_err)?;
    tmp.write_all(contents).map_err(write_err)?;
    if let Some(meta) = &original {
        keep_owner_and_mode(tmp.as_file(), meta).map_err(write_err)?;
    }
    tmp.as_file().sync_all().map_err(write_err)?;
    tmp.persist(path).map_err(|e| write_err(e.error))?;
    // Makes the rename itself durable. Best effort: some filesystems refuse
    // to sync a directory, and the new file is already in place.
    #[cfg(unix)]
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Gives the new file the old one's permissions and owner, so that (say)
/// root editing the proxy user's 0640 file does not leave a root-only file
/// the proxy cannot read. Fails rather than change the owner silently.
fn keep_owner_and_mode(file: &fs::File, original: &fs::Metadata) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let now = file.metadata()?;
        if (now.uid(), now.gid()) != (original.uid(), original.gid()) {
            std::os::unix::fs::fchown(file, Some(original.uid()), Some(original.gid()))?;
        }
    }
    file.set_permissions(original.permissions())
}
