//! The sender's side of a tree: turn the paths on the command line into a manifest of files,
//! directories and (with `--links`) symbolic links, and say what was left out and why.

use std::collections::HashSet;
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::SendError;
use crate::hash::SMALL_FILE;
use crate::links::{LinkJudge, Resolution};
use crate::name::Escaped;
use crate::send::source::{data_between, source_id};
use crate::wire::{check_path, Entry, Kind, Manifest};

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
    }
}

/// How to walk.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct WalkOptions {
    /// Send symbolic links as links when a receiver would make them: when they resolve inside
    /// their tree among the entries sent before them (see [`LinkJudge`]).
    pub(super) links: bool,
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
    let mut tree = Tree::default();
    // Fed every entry of the manifest, every directory real, as a receiver that makes them all.
    let mut judge = LinkJudge::new();
    let mut tops = HashSet::new();
    for root in roots {
        let meta = std::fs::metadata(root).map_err(|error| SendError::Source {
            path: root.clone(),
            error,
        })?;
        let base = match name {
            Some(n) => n.to_owned(),
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
                "two of the paths given would land as {base}; send them separately or rename one"
            )));
        }
        if meta.is_dir() {
            tree.push(dir_entry(&base, &meta), root);
            judge.dir(&base, true);
            walk_dir(&mut tree, &mut judge, root, &base, opts);
        } else if meta.is_file() || meta.file_type().is_block_device() {
            let entry = file_entry(root, &base, &meta, opts)?;
            tree.push(entry, root);
            judge.other(&base);
        } else {
            return Err(SendError::NotAFile(root.clone()));
        }
    }
    Ok(tree)
}

fn base_name(root: &Path) -> Result<String, SendError> {
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
    file_name
        .to_str()
        .map(str::to_owned)
        .ok_or(err(crate::name::NameError::NotUtf8))
}

/// Lists what is below `root`; entries left out are not shown to `judge` either, since the
/// receiver will not know them.
fn walk_dir(tree: &mut Tree, judge: &mut LinkJudge, root: &Path, base: &str, opts: WalkOptions) {
    let walker = walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name();
    let mut left_out: Vec<PathBuf> = Vec::new();
    for item in walker {
        let item = match item {
            Ok(i) => i,
            Err(e) => {
                let path = e.path().unwrap_or(root).to_owned();
                // The reason alone: the path is printed beside it.
                let why = e
                    .io_error()
                    .map_or_else(|| e.to_string(), crate::units::os_reason);
                tree.unreadable.push((path, why));
                continue;
            }
        };
        let path = item.path();
        // Below a directory that was left out, everything is left out with it.
        if left_out.iter().any(|d| path.starts_with(d)) {
            continue;
        }
        let rel = match relative_name(base, root, path) {
            Ok(r) => r,
            Err(reason) => {
                tree.skipped.push((path.to_owned(), reason));
                if item.file_type().is_dir() {
                    left_out.push(path.to_owned());
                }
                continue;
            }
        };
        let meta = match item.metadata() {
            Ok(m) => m,
            Err(e) => {
                let why = e
                    .io_error()
                    .map_or_else(|| e.to_string(), crate::units::os_reason);
                tree.unreadable.push((path.to_owned(), why));
                continue;
            }
        };
        let ft = item.file_type();
        if ft.is_dir() {
            tree.push(dir_entry(&rel, &meta), path);
            judge.dir(&rel, true);
        } else if ft.is_file() {
            match file_entry(path, &rel, &meta, opts) {
                Ok(e) => {
                    tree.push(e, path);
                    judge.other(&rel);
                }
                Err(SendError::Source { error, .. }) => tree
                    .unreadable
                    .push((path.to_owned(), crate::units::os_reason(&error))),
                Err(e) => tree.unreadable.push((path.to_owned(), e.to_string())),
            }
        } else if ft.is_symlink() {
            match link_entry(path, &rel, &meta, opts.links, judge) {
                Ok((e, resolution)) => {
                    tree.push(e, path);
                    judge.accept(&rel, resolution);
                }
                Err(reason) => tree.skipped.push((path.to_owned(), reason)),
            }
        } else {
            tree.skipped.push((
                path.to_owned(),
                "special file (device, fifo or socket)".into(),
            ));
        }
    }
}

/// `base/rel/path` with `/` separators, or why it cannot be sent.
fn relative_name(base: &str, root: &Path, path: &Path) -> Result<String, String> {
    let rel = path.strip_prefix(root).map_err(|e| e.to_string())?;
    let mut name = base.to_owned();
    for component in rel.components() {
        let c = component
            .as_os_str()
            .to_str()
            .ok_or("the name is not valid UTF-8")?;
        name.push('/');
        name.push_str(c);
    }
    check_path(&name).map_err(|e| e.to_string())?;
    Ok(name)
}

fn dir_entry(rel: &str, meta: &Metadata) -> Entry {
    Entry {
        path: rel.to_owned(),
        kind: Kind::Dir,
        mode: meta.mode(),
        mtime: (meta.mtime(), meta.mtime_nsec() as u32),
    }
}

fn file_entry(
    path: &Path,
    rel: &str,
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
    })
}

/// The entry of a link and where it resolves, or why it is left out: without `--links`, or
/// when `judge` (which knows the entries before it) says a receiver would refuse it.
fn link_entry(
    path: &Path,
    rel: &str,
    meta: &Metadata,
    links: bool,
    judge: &LinkJudge,
) -> Result<(Entry, Resolution), String> {
    if !links {
        return Err("symbolic link (use --links to send links)".into());
    }
    let target = std::fs::read_link(path).map_err(|e| e.to_string())?;
    let target = target
        .to_str()
        .ok_or("the link's target is not valid UTF-8")?
        .to_owned();
    let resolution = judge
        .judge(rel, &target)
        .map_err(|e| format!("symbolic link to {} {e}", Escaped(&target)))?;
    let entry = Entry {
        path: rel.to_owned(),
        kind: Kind::Symlink { target },
        mode: meta.mode(),
        mtime: (meta.mtime(), meta.mtime_nsec() as u32),
    };
    Ok((entry, resolution))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_tree_lists_parents_first_and_leaves_out_what_it_must() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("top");
        std::fs::create_dir_all(top.join("a/b")).unwrap();
        std::fs::create_dir(top.join("empty")).unwrap();
        std::fs::write(top.join("a/b/f.txt"), b"hi").unwrap();
        std::fs::write(top.join("z.txt"), b"").unwrap();
        symlink("a/b/f.txt", top.join("in")).unwrap();
        symlink("/etc/passwd", top.join("out")).unwrap();
        let opts = WalkOptions {
            links: true,
            resumable: true,
        };
        let tree = walk(std::slice::from_ref(&top), None, opts).unwrap();
        let paths: Vec<&str> = tree
            .manifest
            .entries
            .iter()
            .map(|e| e.path.as_str())
            .collect();
        assert_eq!(
            paths,
            [
                "top",
                "top/a",
                "top/a/b",
                "top/a/b/f.txt",
                "top/empty",
                "top/in",
                "top/z.txt"
            ]
        );
        assert_eq!(tree.skipped.len(), 1, "{:?}", tree.skipped);
        assert!(tree.skipped[0].1.contains("points out of the tree"));
        assert_eq!(tree.file_count(), 2);
        assert_eq!(tree.total_bytes(), 2);

        let without = walk(&[top], None, WalkOptions::default()).unwrap();
        assert_eq!(without.skipped.len(), 2);
        assert!(without.manifest.entries.iter().all(|e| e.path != "top/in"));
    }

    /// Whether a receiver that makes every directory would make every link of `m`.
    fn a_receiver_makes_every_link(m: &Manifest) -> bool {
        let mut judge = LinkJudge::new();
        m.entries.iter().all(|e| {
            match &e.kind {
                Kind::Dir => judge.dir(&e.path, true),
                Kind::File { .. } => judge.other(&e.path),
                Kind::Symlink { target } => match judge.judge(&e.path, target) {
                    Ok(r) => judge.accept(&e.path, r),
                    Err(_) => return false,
                },
            }
            true
        })
    }

    #[test]
    fn a_link_through_a_link_is_judged_where_it_resolves() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("top");
        let d = top.join("d");
        std::fs::create_dir_all(&d).unwrap();
        // Each passes the old lexical rule; w resolves above the receive directory.
        for (name, target) in [
            ("u", ".."),
            ("v", "u/.."),
            ("w", "v/.."),
            ("x", "w/outside"),
        ] {
            symlink(target, d.join(name)).unwrap();
        }
        let opts = WalkOptions {
            links: true,
            resumable: false,
        };
        let tree = walk(std::slice::from_ref(&top), None, opts).unwrap();
        let paths: Vec<&str> = tree
            .manifest
            .entries
            .iter()
            .map(|e| e.path.as_str())
            .collect();
        // x goes down through w, which the receiver will not know: a dangling link, no more.
        assert_eq!(paths, ["top", "top/d", "top/d/u", "top/d/x"]);
        let skipped: Vec<(PathBuf, &str)> = tree
            .skipped
            .iter()
            .map(|(p, r)| (p.strip_prefix(&d).unwrap().to_owned(), r.as_str()))
            .collect();
        assert_eq!(
            skipped,
            [
                ("v".into(), "symbolic link to u/.. points out of the tree"),
                (
                    "w".into(),
                    "symbolic link to v/.. uses .. below top/d/v, where the tree cannot say what is there"
                ),
            ]
        );
        assert!(a_receiver_makes_every_link(&tree.manifest));
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
