//! The roots zsend remembers of the files it hashed (`crate::roots`): a tree sent again is
//! checked with them, without reading a file unchanged since (same device, inode, size, mtime
//! and ctime). They are kept in `$XDG_CACHE_HOME/zsend` (or `~/.cache/zsend`), one file per
//! tree, named after the SHA-256 of the tree's absolute path. Without a cache directory that
//! can be made, nothing is remembered and every file is read, as before.
//!
//! They are read only for a transfer that checks files (a tree the receiver has), and learnt
//! only from the files such a transfer reads: a first copy neither reads nor writes them.
//! Such a transfer marks its trees' files as used (their mtime), and removes the files of trees
//! not sent for [`UNUSED_FOR`], so that the cache does not grow with every tree ever sent.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use rustix::fs::{AtFlags, Timestamps};
use rustix::time::Timespec;

use sha2::{Digest, Sha256};

use super::walk::Tree;
use crate::roots::{Identity, Roots};

/// The roots remembered for one tree transfer, once it has files to check.
pub(super) struct Remembered {
    /// The directory they are kept in, and the roots, once read.
    opened: OnceLock<Option<Opened>>,
    rehash: bool,
    /// Checks answered from memory.
    used: AtomicUsize,
}

struct Opened {
    dir: OwnedFd,
    roots: Roots,
}

impl Remembered {
    /// Roots to be read at [`open`](Self::open) (with `rehash`, none: every file is hashed,
    /// and remembered again).
    pub fn new(rehash: bool) -> Remembered {
        Remembered {
            opened: OnceLock::new(),
            rehash,
            used: AtomicUsize::new(0),
        }
    }

    /// Reads the roots remembered for `tree`'s files as they are now; without a cache
    /// directory, none.
    pub fn open(&self, tree: &Tree) {
        self.opened.get_or_init(|| Opened::read(tree, self.rehash));
    }

    /// Whether roots were read (and are learnt).
    pub fn is_open(&self) -> bool {
        self.opened().is_some()
    }

    fn opened(&self) -> Option<&Opened> {
        self.opened.get().and_then(Option::as_ref)
    }

    /// The root remembered for entry `i`, if the file was listed, in this run, with the
    /// identity it was remembered with (the roots were read for those). What a check says is
    /// of the file as listed, as a file sent whole is the file as listed or abandoned.
    pub fn known(&self, i: usize) -> Option<[u8; 32]> {
        let (_, root) = self.opened()?.roots.remembered(i as u32)?;
        self.used.fetch_add(1, Ordering::Relaxed);
        Some(root)
    }

    /// Remembers `root` for entry `i` of `tree`, read from `file`, if `before` (its identity
    /// taken before it was read) still holds, can be remembered, and is the one it was listed
    /// with (the root is of the size listed).
    pub fn learn(
        &self,
        tree: &Tree,
        i: usize,
        file: &File,
        before: Option<Identity>,
        root: [u8; 32],
    ) {
        let Some(opened) = self.opened() else { return };
        if let (Some(before), Some(after)) = (before, Identity::settled(file)) {
            if before == after && tree.identities[i] == Some(after) {
                opened.roots.learn(i as u32, after, root);
            }
        }
    }

    /// How many checks were answered from memory.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Writes what changed.
    pub fn save(&self) {
        if let Some(o) = self.opened() {
            o.roots.save(&o.dir);
        }
    }
}

impl Opened {
    fn read(tree: &Tree, rehash: bool) -> Option<Opened> {
        let dir = match cache_dir() {
            Ok(d) => d,
            Err(e) => {
                log::debug!("no cache directory for roots: {e}");
                return None;
            }
        };
        let entries = &tree.manifest.entries;
        let files = entries
            .iter()
            .zip(&tree.identities)
            .map(|(e, id)| id.is_some().then_some(&e.path[..]));
        let roots = Roots::new(files, |top| file_name(tree, top));
        // Ours are used now; those of trees long unsent go.
        let used = Timestamps {
            last_access: now(),
            last_modification: now(),
        };
        for name in roots.files() {
            let _ = rustix::fs::utimensat(&dir, name, &used, AtFlags::SYMLINK_NOFOLLOW);
        }
        prune(&dir, std::time::SystemTime::now());
        if !rehash {
            let wanted: Vec<(u32, Identity)> = (tree.identities.iter().enumerate())
                .filter_map(|(i, id)| Some((i as u32, (*id)?)))
                .collect();
            roots.load(&dir, &wanted);
        }
        Some(Opened { dir, roots })
    }
}

/// How long the roots of a tree not sent again are kept.
const UNUSED_FOR: Duration = Duration::from_secs(90 * 24 * 3600);

/// How long a temporary file of roots (a save interrupted) is left for the save under way.
const TEMP_FOR: Duration = Duration::from_secs(24 * 3600);

/// The time `UTIME_NOW`.
fn now() -> Timespec {
    Timespec {
        tv_sec: 0,
        tv_nsec: rustix::fs::UTIME_NOW,
    }
}

/// Removes from the cache `dir` the files of roots last used more than [`UNUSED_FOR`] before
/// `now`, and temporary ones older than [`TEMP_FOR`]. Nothing else there is touched.
fn prune(dir: &OwnedFd, now: std::time::SystemTime) {
    let Ok(entries) = rustix::fs::Dir::read_from(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Ok(text) = name.to_str() else { continue };
        let keep_for = match (text.ends_with(".roots"), text.ends_with(".part")) {
            (true, _) => UNUSED_FOR,
            (_, true) if text.contains(".roots.") => TEMP_FOR,
            _ => continue,
        };
        let Ok(st) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        let used = std::time::UNIX_EPOCH + Duration::from_secs(st.st_mtime.max(0) as u64);
        if now.duration_since(used).is_ok_and(|age| age > keep_for) {
            let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
        }
    }
}

/// `$XDG_CACHE_HOME/zsend` or `$HOME/.cache/zsend`, made (0700) if need be, opened.
fn cache_dir() -> std::io::Result<OwnedFd> {
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    let base = std::env::var_os("XDG_CACHE_HOME")
        .and_then(absolute)
        .or_else(|| {
            std::env::var_os("HOME")
                .and_then(absolute)
                .map(|h| h.join(".cache"))
        })
        .ok_or_else(|| std::io::Error::other("neither XDG_CACHE_HOME nor HOME is set"))?;
    let dir = base.join("zsend");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    Ok(File::open(&dir)?.into())
}

/// The file of the tree whose top-level entry is `top`: the SHA-256 of where that entry is on
/// this machine (its absolute, resolved path), in hex.
fn file_name(tree: &Tree, top: &[u8]) -> String {
    let path = (tree.manifest.entries.iter())
        .position(|e| e.path == top)
        .map(|i| &tree.paths[i]);
    let resolved = path.and_then(|p| std::fs::canonicalize(p).ok());
    let key = match &resolved {
        Some(p) => Sha256::digest(p.as_os_str().as_bytes()),
        // Not found again: a name of its own, never another tree's.
        None => Sha256::digest([b"\0".as_slice(), top].concat()),
    };
    format!("{}.roots", hex::encode(&key[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_roots_of_trees_long_unsent_go_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let old = std::time::SystemTime::now() - UNUSED_FOR - Duration::from_secs(3600);
        let day_old = std::time::SystemTime::now() - TEMP_FOR - Duration::from_secs(60);
        let made = |name: &str, when: std::time::SystemTime| {
            let f = File::create(tmp.path().join(name)).unwrap();
            f.set_modified(when).unwrap();
        };
        made("old.roots", old);
        made("recent.roots", day_old);
        made("old.roots.17-0.part", day_old);
        made("other-file", old);
        let dir: OwnedFd = File::open(tmp.path()).unwrap().into();
        prune(&dir, std::time::SystemTime::now());
        let mut left: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["other-file", "recent.roots"]);
    }
}
