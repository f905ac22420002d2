//! The sender's side of a tree: turn the paths on the command line into a manifest of files,
//! directories, symbolic and hard links, and (when asked) special files, owners and attributes,
//! and say what was left out and why.

use std::collections::{HashMap, HashSet};
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::SendError;
use crate::hash::SMALL_FILE;
use crate::meta::{extras_of, Keep, Names};
use crate::name::Escaped;
use crate::roots::Identity;
use crate::send::source::{data_between, source_id};
use crate::wire::{check_path, Entry, Kind, Manifest};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

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
    fn push_file(&mut self, entry: Entry, path: &Path, meta: &Metadata) {
        self.push(entry, path);
        if meta.is_file() {
            *self.identities.last_mut().expect("just pushed") = Some(Identity::of_metadata(meta));
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
    };
    let mut tops = HashSet::new();
    for root in roots {
        let meta = std::fs::metadata(root).map_err(|error| SendError::Source {
            path: root.clone(),
            error,
        })?;
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
        if meta.is_dir() {
            walker.add(root, &base, Kind::Dir, &meta);
            walker.walk_dir(root, &base);
        } else if meta.is_file() || meta.file_type().is_block_device() {
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

/// A walk under way: the tree so far, and what it remembers to send hard links and owners.
struct Walker {
    tree: Tree,
    opts: WalkOptions,
    names: Names,
    /// The entry of each file with more than one name, by device and inode.
    inodes: HashMap<(u64, u64), u32>,
}

impl Walker {
    /// Lists what is below `root`.
    fn walk_dir(&mut self, root: &Path, base: &[u8]) {
        let mut walker = walkdir::WalkDir::new(root)
            .min_depth(1)
            .follow_links(false)
            .sort_by_file_name()
            .into_iter();
        // The relative name of the directory at each depth: an entry's is its parent's and its
        // own name (no path parsed again per entry).
        let mut names: Vec<Vec<u8>> = vec![base.to_vec()];
        while let Some(item) = walker.next() {
            let item = match item {
                Ok(i) => i,
                Err(e) => {
                    let path = e.path().unwrap_or(root).to_owned();
                    // The reason alone: the path is printed beside it.
                    let why = e
                        .io_error()
                        .map_or_else(|| e.to_string(), crate::units::os_reason);
                    self.tree.unreadable.push((path, why));
                    continue;
                }
            };
            let path = item.path();
            names.truncate(item.depth());
            let rel = match child_name(&names[item.depth() - 1], item.file_name().as_bytes()) {
                Ok(r) => r,
                Err(reason) => {
                    self.tree.skipped.push((path.to_owned(), reason));
                    // Below a directory that was left out, everything is left out with it.
                    if item.file_type().is_dir() {
                        walker.skip_current_dir();
                    }
                    continue;
                }
            };
            if item.file_type().is_dir() {
                names.push(rel.clone());
            }
            let meta = match item.metadata() {
                Ok(m) => m,
                Err(e) => {
                    let why = e
                        .io_error()
                        .map_or_else(|| e.to_string(), crate::units::os_reason);
                    self.tree.unreadable.push((path.to_owned(), why));
                    continue;
                }
            };
            self.entry(path, &rel, &meta);
        }
    }

    /// Lists one entry found below a root, or says why it is left out.
    fn entry(&mut self, path: &Path, rel: &[u8], meta: &Metadata) {
        let keep = self.opts.keep;
        let ft = meta.file_type();
        let skip = |why: &str| Some(format!("{why} (use {} or -a)", flag_for(why)));
        let left_out = if ft.is_dir() {
            self.add(path, rel, Kind::Dir, meta);
            None
        } else if ft.is_file() {
            let linked = (keep.hard_links && meta.nlink() > 1)
                .then(|| self.inodes.get(&(meta.dev(), meta.ino())).copied())
                .flatten();
            match linked {
                Some(first) => {
                    self.add(path, rel, Kind::HardLink { first }, meta);
                    None
                }
                None => match file_entry(path, rel, meta, self.opts) {
                    Ok(mut e) => {
                        if keep.hard_links && meta.nlink() > 1 {
                            let index = self.tree.manifest.entries.len() as u32;
                            self.inodes.insert((meta.dev(), meta.ino()), index);
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
            let rdev = meta.rdev();
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
        self.skip(path, left_out);
    }

    fn skip(&mut self, path: &Path, why: Option<String>) {
        if let Some(why) = why {
            self.tree.skipped.push((path.to_owned(), why));
        }
    }

    /// Lists an entry that has no content of its own.
    fn add(&mut self, path: &Path, rel: &[u8], kind: Kind, meta: &Metadata) {
        let extras = match kind {
            // The same inode as its first name: nothing of its own to keep.
            Kind::HardLink { .. } => None,
            _ => self.extras(path, meta),
        };
        let entry = Entry {
            path: rel.to_owned(),
            kind,
            mode: meta.mode(),
            mtime: (meta.mtime(), meta.mtime_nsec() as u32),
            extras,
        };
        self.tree.push(entry, path);
    }

    /// The owner and attributes asked for; one that cannot be read is a failure, and the entry
    /// goes without them.
    fn extras(&mut self, path: &Path, meta: &Metadata) -> Option<Box<crate::wire::Extras>> {
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

fn file_entry(
    path: &Path,
    rel: &[u8],
    meta: &Metadata,
    opts: WalkOptions,
) -> Result<Entry, SendError> {
    let source_err = |error| SendError::Source {
        path: path.to_owned(),
        error,
    };
    let (size, sparse_data_len) = if meta.file_type().is_block_device() {
        let f = std::fs::File::open(path).map_err(source_err)?;
        (crate::sys::block_device_size(&f).map_err(source_err)?, None)
    } else if meta.len() > SMALL_FILE && meta.blocks() * 512 < meta.len() {
        // Fewer blocks than bytes: it may have holes worth finding.
        let f = std::fs::File::open(path).map_err(source_err)?;
        let data = data_between(&f, 0, meta.len()).map_err(source_err)?;
        (meta.len(), (data < meta.len()).then_some(data))
    } else {
        (meta.len(), None)
    };
    Ok(Entry {
        path: rel.to_owned(),
        kind: Kind::File {
            size,
            sparse_data_len,
            source_id: opts
                .resumable
                .then(|| source_id(meta.dev(), meta.ino(), meta.rdev())),
        },
        mode: meta.mode(),
        mtime: (meta.mtime(), meta.mtime_nsec() as u32),
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
        let st = std::fs::metadata(&f).unwrap();
        let owner = extras.owner.as_ref().unwrap();
        assert_eq!((owner.uid, owner.gid), (st.uid(), st.gid()));
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
