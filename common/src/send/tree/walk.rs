//! The sender's side of a tree: turn the paths on the command line into a manifest of files,
//! directories, symbolic and hard links, and (when asked) special files, owners and attributes,
//! and say what was left out and why.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Stat};

use crate::error::SendError;
use crate::hash::SMALL_FILE;
use crate::meta::{extras_of, Keep, Names};
use crate::name::Escaped;
use crate::roots::Identity;
use crate::send::source::{data_between, source_id};
use crate::wire::{check_path, Entry, Kind, Manifest};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use super::scan::{Found, Key, Listing, Scanner};

/// A tree ready to send: the manifest, where each entry is on this machine, and what was left
/// out.
#[derive(Debug, Default)]
pub(super) struct Tree {
    /// What will be announced, parents before children.
    pub(super) manifest: Manifest,
    /// The local path of each manifest entry, in the same order.
    pub(super) paths: Vec<PathBuf>,
    /// Entries left out, with the reason (a warning, not a failure).
    pub(super) skipped: Vec<(PathBuf, String)>,
    /// Entries that could not be read (a failure).
    pub(super) unreadable: Vec<(PathBuf, String)>,
    /// Second and later names of a link, fifo, socket or device with several: sent as entries
    /// of their own, since the protocol links regular files only (a fidelity loss, counted).
    pub(super) unlinked: Vec<PathBuf>,
    /// Each regular file's identity when listed (what its remembered root is looked up by).
    pub(super) identities: Vec<Option<Identity>>,
}

impl Tree {
    /// How many regular files the manifest holds.
    pub(super) fn file_count(&self) -> usize {
        self.manifest
            .entries
            .iter()
            .filter(|e| matches!(e.kind, Kind::File { .. }))
            .count()
    }

    /// The bytes of all files.
    pub(super) fn total_bytes(&self) -> u64 {
        self.manifest.entries.iter().map(Entry::size).sum()
    }

    fn push(&mut self, entry: Entry, path: &Path) {
        self.manifest.entries.push(entry);
        self.paths.push(path.to_owned());
        self.identities.push(None);
    }

    /// Pushes a file's entry, with its identity if it is a regular file.
    fn push_file(&mut self, entry: Entry, path: &Path, st: &Stat) {
        self.push(entry, path);
        if FileType::from_raw_mode(st.st_mode).is_file() {
            *self.identities.last_mut().expect("just pushed") = Some(Identity::of(st));
        }
    }
}

/// How to walk.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct WalkOptions {
    /// What to send beyond files, directories, modes and mtimes.
    pub(super) keep: Keep,
    /// Give files a source identity so that they can be resumed (needs verification).
    pub(super) resumable: bool,
}

/// Lists `roots` (files, block devices and directories, recursively) for sending. A root keeps
/// its base name (or `name`, for a single root); entries below keep their path relative to it.
/// Symbolic links are followed when named on the command line, as by `cp -r` and `scp -r`.
pub(super) fn walk(
    roots: &[PathBuf],
    name: Option<&str>,
    opts: WalkOptions,
) -> Result<Tree, SendError> {
    let mut walker = Walker {
        tree: Tree::default(),
        opts,
        names: Names::default(),
        inodes: HashMap::new(),
        other_inodes: Default::default(),
    };
    let mut tops = HashSet::new();
    let scanner = Scanner::default();
    for (n, root) in roots.iter().enumerate() {
        let meta = rustix::fs::stat(root).map_err(|error| SendError::Source {
            path: root.clone(),
            error: error.into(),
        })?;
        let kind = FileType::from_raw_mode(meta.st_mode);
        let base = match name {
            Some(n) => n.as_bytes().to_vec(),
            None => base_name(root)?,
        };
        check_path(&base).map_err(|e| SendError::Name {
            path: root.clone(),
            reason: match e {
                crate::wire::ProtocolError::BadName(n) => n,
                _ => crate::name::NameError::Empty,
            },
        })?;
        if !tops.insert(base.clone()) {
            return Err(SendError::Usage(format!(
                "two of the paths given would land as {}; send them separately or rename one",
                Escaped(&base)
            )));
        }
        if kind.is_dir() {
            walker.add(root, &base, Kind::Dir, &meta);
            walker.walk_dir(&scanner, n as u32, root, &base);
        } else if kind.is_file() || kind == FileType::BlockDevice {
            let mut entry = file_entry(root, &base, &meta, opts)?;
            entry.extras = walker.extras(root, &meta);
            walker.tree.push_file(entry, root, &meta);
        } else {
            return Err(SendError::NotAFile(root.clone()));
        }
    }
    Ok(walker.tree)
}

fn base_name(root: &Path) -> Result<Vec<u8>, SendError> {
    let err = |reason| SendError::Name {
        path: root.to_owned(),
        reason,
    };
    let canonical;
    let file_name = match root.file_name() {
        Some(n) => n,
        None => {
            // `.`, `..` or `/`: name it after what it is.
            canonical = root.canonicalize().map_err(|error| SendError::Source {
                path: root.to_owned(),
                error,
            })?;
            canonical
                .file_name()
                .ok_or(err(crate::name::NameError::Empty))?
        }
    };
    Ok(file_name.as_bytes().to_vec())
}

/// A directory being walked: where it is, and its entries not walked yet, each with its path in
/// the tree or why it cannot be sent.
struct Level {
    key: Key,
    path: PathBuf,
    entries: std::vec::IntoIter<(u32, Found, Result<Vec<u8>, String>)>,
}

/// A walk under way: the tree so far, and what it remembers to send hard links and owners.
struct Walker {
    tree: Tree,
    opts: WalkOptions,
    names: Names,
    /// The entry of each file with more than one name, by device and inode.
    inodes: HashMap<(u64, u64), u32>,
    /// Links, fifos, sockets and devices with more than one name, by device and inode.
    other_inodes: std::collections::HashSet<(u64, u64)>,
}

impl Walker {
    /// Lists what is below `root`, the `n`th path given, in the order of a depth-first walk
    /// with each directory's entries sorted by name.
    fn walk_dir(&mut self, scanner: &Scanner, n: u32, root: &Path, base: &[u8]) {
        let mut levels = Vec::new();
        let listing = scanner.take(&vec![n], root, true);
        self.descend(scanner, &mut levels, vec![n], root, base, listing);
        while let Some(level) = levels.last_mut() {
            let Some((k, found, rel)) = level.entries.next() else {
                levels.pop();
                continue;
            };
            let path = level
                .path
                .join(std::ffi::OsStr::from_bytes(found.name.as_bytes()));
            let rel = match rel {
                Ok(rel) => rel,
                Err(reason) => {
                    // Below a directory that was left out, everything is left out with it.
                    self.tree.skipped.push((path, reason));
                    continue;
                }
            };
            let st = match found.stat {
                Ok(st) => st,
                Err(e) => {
                    let why = crate::units::os_reason(&e);
                    self.tree.unreadable.push((path, why));
                    continue;
                }
            };
            self.entry(&path, &rel, &st);
            if FileType::from_raw_mode(st.st_mode).is_dir() {
                let mut key = level.key.clone();
                key.push(k);
                let listing = scanner.take(&key, &path, false);
                self.descend(scanner, &mut levels, key, &path, &rel, listing);
            }
        }
    }

    /// Goes into the directory `path` (`rel` in the tree): its subdirectories are queued to be
    /// read ahead, and its entries are walked next.
    fn descend(
        &mut self,
        scanner: &Scanner,
        levels: &mut Vec<Level>,
        key: Key,
        path: &Path,
        rel: &[u8],
        listing: Listing,
    ) {
        let found = match listing {
            Ok(found) => found,
            Err(e) => {
                let why = crate::units::os_reason(&e);
                self.tree.unreadable.push((path.to_owned(), why));
                return;
            }
        };
        let mut entries = Vec::with_capacity(found.len());
        for (k, f) in found.into_iter().enumerate() {
            let k = k as u32;
            let child = child_name(rel, f.name.as_bytes());
            let is_dir = f
                .stat
                .as_ref()
                .is_ok_and(|st| FileType::from_raw_mode(st.st_mode).is_dir());
            if is_dir && child.is_ok() {
                let mut below = key.clone();
                below.push(k);
                scanner.queue(
                    below,
                    path.join(std::ffi::OsStr::from_bytes(f.name.as_bytes())),
                );
            }
            entries.push((k, f, child));
        }
        levels.push(Level {
            key,
            path: path.to_owned(),
            entries: entries.into_iter(),
        });
    }

    /// Lists one entry found below a root, or says why it is left out.
    fn entry(&mut self, path: &Path, rel: &[u8], meta: &Stat) {
        let keep = self.opts.keep;
        let ft = FileType::from_raw_mode(meta.st_mode);
        let skip = |why: &str| Some(format!("{why} (use {} or -a)", flag_for(why)));
        let left_out = if ft.is_dir() {
            self.add(path, rel, Kind::Dir, meta);
            None
        } else if ft.is_file() {
            let linked = (keep.hard_links && meta.st_nlink > 1)
                .then(|| self.inodes.get(&(meta.st_dev, meta.st_ino)).copied())
                .flatten();
            match linked {
                Some(first) => {
                    self.add(path, rel, Kind::HardLink { first }, meta);
                    None
                }
                None => match file_entry(path, rel, meta, self.opts) {
                    Ok(mut e) => {
                        if keep.hard_links && meta.st_nlink > 1 {
                            let index = self.tree.manifest.entries.len() as u32;
                            self.inodes.insert((meta.st_dev, meta.st_ino), index);
                        }
                        e.extras = self.extras(path, meta);
                        self.tree.push_file(e, path, meta);
                        None
                    }
                    Err(SendError::Source { error, .. }) => {
                        let why = crate::units::os_reason(&error);
                        self.tree.unreadable.push((path.to_owned(), why));
                        None
                    }
                    Err(e) => {
                        self.tree.unreadable.push((path.to_owned(), e.to_string()));
                        None
                    }
                },
            }
        } else if ft.is_symlink() {
            match (keep.links, std::fs::read_link(path)) {
                (false, _) => Some("symbolic link (sent unless --no-links)".into()),
                (true, Err(e)) => {
                    let why = crate::units::os_reason(&e);
                    self.tree.unreadable.push((path.to_owned(), why));
                    None
                }
                (true, Ok(target)) => {
                    let target = target.into_os_string().into_vec();
                    self.add(path, rel, Kind::Symlink { target }, meta);
                    None
                }
            }
        } else if ft.is_fifo() || ft.is_socket() {
            match keep.specials {
                true if ft.is_fifo() => self.add(path, rel, Kind::Fifo, meta),
                true => self.add(path, rel, Kind::Socket, meta),
                false if ft.is_fifo() => return self.skip(path, skip("fifo")),
                false => return self.skip(path, skip("socket")),
            }
            None
        } else if ft.is_block_device() || ft.is_char_device() {
            if !keep.devices {
                return self.skip(path, skip("device file"));
            }
            let rdev = meta.st_rdev;
            let kind = Kind::Device {
                block: ft.is_block_device(),
                major: rustix::fs::major(rdev),
                minor: rustix::fs::minor(rdev),
            };
            self.add(path, rel, kind, meta);
            None
        } else {
            Some("of a kind Linux does not name".into())
        };
        // A link or special file with other names lands as an entry of its own: say so.
        let other = !ft.is_dir() && !ft.is_file() && left_out.is_none();
        if other && keep.hard_links && meta.st_nlink > 1 {
            let inode = (meta.st_dev, meta.st_ino);
            if !self.other_inodes.insert(inode) {
                self.tree.unlinked.push(path.to_owned());
            }
        }
        self.skip(path, left_out);
    }

    fn skip(&mut self, path: &Path, why: Option<String>) {
        if let Some(why) = why {
            self.tree.skipped.push((path.to_owned(), why));
        }
    }

    /// Lists an entry that has no content of its own.
    fn add(&mut self, path: &Path, rel: &[u8], kind: Kind, meta: &Stat) {
        let extras = match kind {
            // The same inode as its first name: nothing of its own to keep.
            Kind::HardLink { .. } => None,
            _ => self.extras(path, meta),
        };
        let entry = Entry {
            path: rel.to_owned(),
            kind,
            mode: meta.st_mode,
            mtime: (meta.st_mtime, meta.st_mtime_nsec as u32),
            extras,
        };
        self.tree.push(entry, path);
    }

    /// The owner and attributes asked for; one that cannot be read is a failure, and the entry
    /// goes without them.
    fn extras(&mut self, path: &Path, meta: &Stat) -> Option<Box<crate::wire::Extras>> {
        match extras_of(path, meta, &self.opts.keep, &mut self.names) {
            Ok(x) => x,
            Err(e) => {
                let why = format!("reading its attributes: {}", crate::units::os_reason(&e));
                self.tree.unreadable.push((path.to_owned(), why));
                None
            }
        }
    }
}

/// The option that sends a kind of entry left out by default.
fn flag_for(what: &str) -> &'static str {
    match what {
        "device file" => "--devices",
        _ => "--specials",
    }
}

/// `parent/name`, or why it cannot be sent (the parent was checked already).
fn child_name(parent: &[u8], name: &[u8]) -> Result<Vec<u8>, String> {
    crate::name::validate_component(name).map_err(|e| e.to_string())?;
    let len = parent.len() + 1 + name.len();
    if len > crate::wire::MAX_PATH_LEN {
        return Err(format!("a path of {len} bytes"));
    }
    let mut rel = Vec::with_capacity(len);
    rel.extend_from_slice(parent);
    rel.push(b'/');
    rel.extend_from_slice(name);
    Ok(rel)
}

fn file_entry(path: &Path, rel: &[u8], meta: &Stat, opts: WalkOptions) -> Result<Entry, SendError> {
    let source_err = |error| SendError::Source {
        path: path.to_owned(),
        error,
    };
    let len = meta.st_size as u64;
    let (size, sparse_data_len) = if FileType::from_raw_mode(meta.st_mode).is_block_device() {
        let f = std::fs::File::open(path).map_err(source_err)?;
        (crate::sys::block_device_size(&f).map_err(source_err)?, None)
    } else if len > SMALL_FILE && (meta.st_blocks as u64).saturating_mul(512) < len {
        // Fewer blocks than bytes: it may have holes worth finding.
        let f = std::fs::File::open(path).map_err(source_err)?;
        let data = data_between(&f, 0, len).map_err(source_err)?;
        (len, (data < len).then_some(data))
    } else {
        (len, None)
    };
    Ok(Entry {
        path: rel.to_owned(),
        kind: Kind::File {
            size,
            sparse_data_len,
            source_id: opts
                .resumable
                .then(|| source_id(meta.st_dev, meta.st_ino, meta.st_rdev)),
        },
        mode: meta.st_mode,
        mtime: (meta.st_mtime, meta.st_mtime_nsec as u32),
        extras: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn paths(tree: &Tree) -> Vec<&str> {
        tree.manifest
            .entries
            .iter()
            .map(|e| std::str::from_utf8(&e.path).unwrap())
            .collect()
    }

    #[test]
    fn a_tree_lists_parents_first_links_as_they_are_and_says_what_it_leaves_out() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("top");
        std::fs::create_dir_all(top.join("a/b")).unwrap();
        std::fs::create_dir(top.join("empty")).unwrap();
        std::fs::write(top.join("a/b/f.txt"), b"hi").unwrap();
        std::fs::write(top.join("z.txt"), b"").unwrap();
        std::fs::hard_link(top.join("a/b/f.txt"), top.join("same")).unwrap();
        symlink("a/b/f.txt", top.join("in")).unwrap();
        symlink("/etc/passwd", top.join("out")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            top.join("pipe"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let keep = Keep {
            links: true,
            hard_links: true,
            ..Keep::default()
        };
        let opts = WalkOptions {
            keep,
            resumable: true,
        };
        let tree = walk(std::slice::from_ref(&top), None, opts).unwrap();
        assert_eq!(
            paths(&tree),
            [
                "top",
                "top/a",
                "top/a/b",
                "top/a/b/f.txt",
                "top/empty",
                "top/in",
                "top/out",
                "top/same",
                "top/z.txt"
            ]
        );
        assert_eq!(tree.manifest.entries[7].kind, Kind::HardLink { first: 3 });
        assert_eq!(
            tree.manifest.entries[6].kind,
            Kind::Symlink {
                target: "/etc/passwd".into()
            }
        );
        assert_eq!(tree.skipped.len(), 1, "{:?}", tree.skipped);
        assert!(tree.skipped[0].1.contains("--specials"));
        assert_eq!(tree.file_count(), 2);
        assert_eq!(tree.total_bytes(), 2);

        let all = Keep {
            specials: true,
            ..keep
        };
        let with = walk(
            std::slice::from_ref(&top),
            None,
            WalkOptions {
                keep: all,
                resumable: false,
            },
        )
        .unwrap();
        assert!(with.skipped.is_empty());
        assert!(with.manifest.entries.iter().any(|e| e.kind == Kind::Fifo));

        let without = walk(&[top], None, WalkOptions::default()).unwrap();
        assert_eq!(without.skipped.len(), 3, "{:?}", without.skipped);
        assert_eq!(without.file_count(), 3, "each name its own file");
    }

    #[test]
    fn owners_and_attributes_go_with_their_entries_when_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("top");
        std::fs::create_dir(&top).unwrap();
        let f = top.join("f");
        std::fs::write(&f, b"x").unwrap();
        let tagged =
            rustix::fs::setxattr(&f, "user.zsend-test", b"v", rustix::fs::XattrFlags::empty())
                .is_ok();
        let keep = Keep {
            owner: true,
            xattrs: true,
            ..Keep::default()
        };
        let tree = walk(
            std::slice::from_ref(&top),
            None,
            WalkOptions {
                keep,
                resumable: false,
            },
        )
        .unwrap();
        let extras = tree.manifest.entries[1].extras.as_deref().unwrap();
        let st = rustix::fs::stat(&f).unwrap();
        let owner = extras.owner.as_ref().unwrap();
        assert_eq!((owner.uid, owner.gid), (st.st_uid, st.st_gid));
        if tagged {
            assert_eq!(
                extras.xattrs,
                [(b"user.zsend-test".to_vec(), b"v".to_vec())]
            );
        }
        let bare = walk(&[top], None, WalkOptions::default()).unwrap();
        assert!(bare.manifest.entries.iter().all(|e| e.extras.is_none()));
    }

    #[test]
    fn two_roots_with_one_name_are_a_usage_error() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("x/same")).unwrap();
        std::fs::create_dir_all(tmp.path().join("y/same")).unwrap();
        let roots = [tmp.path().join("x/same"), tmp.path().join("y/same")];
        assert!(matches!(
            walk(&roots, None, WalkOptions::default()),
            Err(SendError::Usage(_))
        ));
    }
}
