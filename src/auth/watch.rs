//! Noticing that a file changed, by polling its metadata. Polling (not
//! inotify) because Kubernetes rotates mounted secrets by swapping a symlink,
//! which file-watch APIs report unreliably; a stat every few seconds is cheap.

use std::path::{Path, PathBuf};
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
}
