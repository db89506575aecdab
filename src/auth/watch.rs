//! Noticing that a file changed, by polling its metadata. Polling (not
//! inotify) because Kubernetes rotates mounted secrets by swapping a symlink,
//! which file-watch APIs report unreliably; a stat every few seconds is cheap.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// What identifies one version of a file: modification time, size and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    // `metadata` follows symlinks: a swapped `..data` link shows as a change.
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode,
    })
}

/// Remembers the version of a set of files last loaded.
#[derive(Debug)]
pub struct FileWatch {
    paths: Vec<PathBuf>,
    seen: Vec<Option<Stamp>>,
}

impl FileWatch {
    /// Watches `paths` (empty paths are skipped), taking their current
    /// versions as loaded.
    pub fn new<I: IntoIterator<Item = PathBuf>>(paths: I) -> FileWatch {
        let paths: Vec<PathBuf> = paths
            .into_iter()
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        let seen = paths.iter().map(|p| stamp(p)).collect();
        FileWatch { paths, seen }
    }

    /// True when any file differs from the version last seen (a file that
    /// disappears counts as a change too, so the reload reports it); the new
    /// versions are remembered.
    pub fn changed(&mut self) -> bool {
        let now: Vec<Option<Stamp>> = self.paths.iter().map(|p| stamp(p)).collect();
        if now == self.seen {
            return false;
        }
        self.seen = now;
        true
    }
}

/// The reload step every watched resource shares (password file, JWT keys,
/// TLS files): if the files changed, load them and apply the result, all
/// under one lock so two reloads cannot apply out of order; count the
/// outcome in `file_reloads_total{file, result}`. Logging stays with the
/// caller, which knows what the files are.
#[derive(Debug)]
pub struct Reloader {
    watch: Mutex<FileWatch>,
    label: &'static str,
}

impl Reloader {
    /// Watches `paths`, taking their current versions as loaded; `label` is
    /// the metric's `file` label.
    pub fn new<I: IntoIterator<Item = PathBuf>>(label: &'static str, paths: I) -> Reloader {
        Reloader {
            watch: Mutex::new(FileWatch::new(paths)),
            label,
        }
    }

    /// `Ok(false)`: nothing changed. `Ok(true)`: `load` succeeded and `apply`
    /// ran. `Err`: `load` failed, nothing applied, and the same broken
    /// version is not retried until the files change again.
    pub fn reload_if_changed<T, E>(
        &self,
        load: impl FnOnce() -> Result<T, E>,
        apply: impl FnOnce(T),
    ) -> Result<bool, E> {
        // A poisoned lock still holds a whole FileWatch.
        let mut watch = self.watch.lock().unwrap_or_else(|e| e.into_inner());
        if !watch.changed() {
            return Ok(false);
        }
        match load() {
            Ok(loaded) => {
                apply(loaded);
                metrics::counter!(crate::metrics::FILE_RELOADS, "file" => self.label, "result" => "ok")
                    .increment(1);
                Ok(true)
            }
            Err(e) => {
                metrics::counter!(crate::metrics::FILE_RELOADS, "file" => self.label, "result" => "error")
                    .increment(1);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewrite_is_a_change_and_a_second_look_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "one").unwrap();
        let mut w = FileWatch::new([path.clone(), PathBuf::new()]);
        assert!(!w.changed());
        // A different size is a change even within the mtime granularity.
        std::fs::write(&path, "three").unwrap();
        assert!(w.changed());
        assert!(!w.changed());
        // Replaced by rename (how rotations and `passwd` write): new inode.
        let tmp = dir.path().join("f.tmp");
        std::fs::write(&tmp, "three").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert!(w.changed());
        std::fs::remove_file(&path).unwrap();
        assert!(w.changed());
    }

    #[test]
    fn reloader_applies_only_changes_that_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "1").unwrap();
        let r = Reloader::new("test", [path.clone()]);
        let mut applied = Vec::new();
        let read = || std::fs::read_to_string(&path).map(|s| s.trim().to_owned());
        assert!(!r.reload_if_changed(read, |v| applied.push(v)).unwrap());
        std::fs::write(&path, "22").unwrap();
        assert!(r.reload_if_changed(read, |v| applied.push(v)).unwrap());
        // A version that fails to load is not applied, nor retried unchanged.
        std::fs::write(&path, "333").unwrap();
        let fail = || Err::<String, &str>("broken");
        assert_eq!(
            r.reload_if_changed(fail, |v| applied.push(v)),
            Err("broken")
        );
        assert!(!r.reload_if_changed(read, |v| applied.push(v)).unwrap());
        assert_eq!(applied, ["22"]);
    }
}
