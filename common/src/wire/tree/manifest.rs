//! The manifest: every entry of a tree, parents before children, bounded and checked as a whole.

use std::collections::HashSet;
use std::io::Read;

use super::{malformed, read_text, read_u64, MANIFEST_MAGIC};
use crate::name::validate_name;
use crate::wire::read_exact;
use crate::wire::{ProtocolError, SOURCE_ID_LEN};
use crate::wire::{MAX_ENTRIES, MAX_PATH_LEN};

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file (or block device) with its content.
    File {
        /// Its length.
        size: u64,
        /// Bytes of data when it has holes (sent as records).
        sparse_data_len: Option<u64>,
        /// The sender's identity of it, when it can resume.
        source_id: Option<[u8; SOURCE_ID_LEN]>,
    },
    /// A directory; its entries follow it in the manifest.
    Dir,
    /// A symbolic link; where its target leads is judged by the receiver (see `links`).
    Symlink {
        /// The link's content.
        target: String,
    },
}

/// One entry of a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Relative path under the receiver's directory: safe components joined with `/`.
    pub path: String,
    /// What it is.
    pub kind: Kind,
    /// Permission bits (the receiver keeps [`KEPT_MODE`](crate::wire::KEPT_MODE)).
    pub mode: u32,
    /// Modification time: seconds and nanoseconds since the epoch.
    pub mtime: (i64, u32),
}

impl Entry {
    /// The size of a file's content, 0 for anything else.
    pub fn size(&self) -> u64 {
        match self.kind {
            Kind::File { size, .. } => size,
            _ => 0,
        }
    }

    /// The directory part of the path, if any (`a/b` for `a/b/c`).
    pub fn parent(&self) -> Option<&str> {
        self.path.rsplit_once('/').map(|(p, _)| p)
    }

    /// The last component of the path.
    pub fn base(&self) -> &str {
        self.path.rsplit_once('/').map_or(&self.path, |(_, b)| b)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let kind = match self.kind {
            Kind::File { .. } => 1u8,
            Kind::Dir => 2,
            Kind::Symlink { .. } => 3,
        };
        out.push(kind);
        out.extend_from_slice(&(self.path.len() as u16).to_be_bytes());
        out.extend_from_slice(self.path.as_bytes());
        out.extend_from_slice(&self.mode.to_be_bytes());
        out.extend_from_slice(&self.mtime.0.to_be_bytes());
        out.extend_from_slice(&self.mtime.1.to_be_bytes());
        match &self.kind {
            Kind::File {
                size,
                sparse_data_len,
                source_id,
            } => {
                out.extend_from_slice(&size.to_be_bytes());
                let flags =
                    u8::from(sparse_data_len.is_some()) | u8::from(source_id.is_some()) << 1;
                out.push(flags);
                if let Some(d) = sparse_data_len {
                    out.extend_from_slice(&d.to_be_bytes());
                }
                if let Some(id) = source_id {
                    out.extend_from_slice(id);
                }
            }
            Kind::Dir => {}
            Kind::Symlink { target } => {
                out.extend_from_slice(&(target.len() as u16).to_be_bytes());
                out.extend_from_slice(target.as_bytes());
            }
        }
    }

    fn read(r: &mut impl Read, text: &mut usize) -> Result<Entry, ProtocolError> {
        let mut kind = [0u8; 1];
        read_exact(r, &mut kind, "manifest entry")?;
        let path = read_text(r, text, "path")?;
        let mut fixed = [0u8; 16];
        read_exact(r, &mut fixed, "manifest entry")?;
        let mode = u32::from_be_bytes(fixed[0..4].try_into().expect("4 bytes"));
        let sec = i64::from_be_bytes(fixed[4..12].try_into().expect("8 bytes"));
        let nsec = u32::from_be_bytes(fixed[12..16].try_into().expect("4 bytes"));
        if nsec >= 1_000_000_000 {
            return Err(malformed(format!("mtime nanoseconds {nsec} out of range")));
        }
        let kind = match kind[0] {
            1 => {
                let mut b = [0u8; 9];
                read_exact(r, &mut b, "manifest entry")?;
                let size = u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
                if b[8] & !3 != 0 {
                    return Err(malformed(format!("unknown entry flags {:#x}", b[8])));
                }
                let sparse_data_len = match b[8] & 1 {
                    0 => None,
                    _ => Some(read_u64(r)?)
                        .filter(|d| *d <= size)
                        .map(Some)
                        .ok_or_else(|| {
                            malformed("sparse data length exceeds the file size".into())
                        })?,
                };
                let source_id = match b[8] & 2 {
                    0 => None,
                    _ => {
                        let mut id = [0u8; SOURCE_ID_LEN];
                        read_exact(r, &mut id, "manifest entry")?;
                        Some(id)
                    }
                };
                Kind::File {
                    size,
                    sparse_data_len,
                    source_id,
                }
            }
            2 => Kind::Dir,
            3 => Kind::Symlink {
                target: read_text(r, text, "link target")?,
            },
            k => return Err(malformed(format!("unknown entry kind {k}"))),
        };
        Ok(Entry {
            path,
            kind,
            mode,
            mtime: (sec, nsec),
        })
    }
}

/// Every entry of a tree transfer, parents before their children.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    /// The entries, in the order files will be sent.
    pub entries: Vec<Entry>,
}

impl Manifest {
    /// Encodes the manifest.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.entries.len() * 64);
        out.extend_from_slice(&MANIFEST_MAGIC);
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for e in &self.entries {
            e.encode(&mut out);
        }
        out
    }

    /// Reads a manifest and checks it: every path is relative and made of safe components,
    /// no two entries share a path, every parent is a directory listed before its children,
    /// and every link target is a non-empty text without NUL. (Where a link leads is judged
    /// link by link when the receiver makes it: see `links`.) Bounded by [`MAX_ENTRIES`] and
    /// [`MAX_MANIFEST_TEXT`](crate::wire::MAX_MANIFEST_TEXT) before anything is allocated for it.
    pub fn read(r: &mut impl Read) -> Result<Manifest, ProtocolError> {
        let mut head = [0u8; 8];
        read_exact(r, &mut head, "manifest")?;
        if head[..4] != MANIFEST_MAGIC {
            return Err(malformed("manifest magic missing".into()));
        }
        let count = u32::from_be_bytes(head[4..].try_into().expect("4 bytes"));
        if count > MAX_ENTRIES {
            return Err(malformed(format!(
                "{count} entries; the limit is {MAX_ENTRIES}"
            )));
        }
        let mut text = 0usize;
        let mut entries = Vec::with_capacity(count.min(4096) as usize);
        for _ in 0..count {
            entries.push(Entry::read(r, &mut text)?);
        }
        let manifest = Manifest { entries };
        manifest.check()?;
        Ok(manifest)
    }

    fn check(&self) -> Result<(), ProtocolError> {
        let mut seen: HashSet<&str> = HashSet::with_capacity(self.entries.len());
        let mut dirs: HashSet<&str> = HashSet::new();
        for e in &self.entries {
            check_path(&e.path)?;
            if let Some(parent) = e.parent() {
                if !dirs.contains(parent) {
                    return Err(malformed(format!(
                        "{} comes before its directory",
                        crate::name::Escaped(&e.path)
                    )));
                }
            }
            if !seen.insert(&e.path) {
                return Err(malformed(format!(
                    "two entries named {}",
                    crate::name::Escaped(&e.path)
                )));
            }
            match &e.kind {
                Kind::Dir => {
                    dirs.insert(&e.path);
                }
                Kind::Symlink { target } => {
                    // Where it leads is judged link by link, when the links are made
                    // (crate::links): a bad one is refused, not the whole manifest.
                    if target.is_empty() || target.contains('\0') || target.len() > MAX_PATH_LEN {
                        return Err(malformed(format!(
                            "the link {} has an empty target, a NUL in it or more than \
                             {MAX_PATH_LEN} bytes",
                            crate::name::Escaped(&e.path)
                        )));
                    }
                }
                Kind::File { .. } => {}
            }
        }
        Ok(())
    }
}

/// Checks that `path` is relative and each `/`-separated component is a safe name.
pub fn check_path(path: &str) -> Result<(), ProtocolError> {
    if path.len() > MAX_PATH_LEN {
        return Err(malformed(format!("a path of {} bytes", path.len())));
    }
    for component in path.split('/') {
        validate_name(component).map_err(ProtocolError::BadName)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, size: u64) -> Entry {
        Entry {
            path: path.into(),
            kind: Kind::File {
                size,
                sparse_data_len: None,
                source_id: None,
            },
            mode: 0o644,
            mtime: (1, 2),
        }
    }

    fn dir(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: Kind::Dir,
            mode: 0o755,
            mtime: (3, 4),
        }
    }

    fn link(path: &str, target: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: Kind::Symlink {
                target: target.into(),
            },
            mode: 0o777,
            mtime: (5, 6),
        }
    }

    fn decode(m: &Manifest) -> Result<Manifest, ProtocolError> {
        Manifest::read(&mut &m.encode()[..])
    }

    #[test]
    fn a_tree_round_trips() {
        let mut sparse = file("top/disk.img", 1 << 30);
        sparse.kind = Kind::File {
            size: 1 << 30,
            sparse_data_len: Some(4096),
            source_id: Some([9; SOURCE_ID_LEN]),
        };
        let m = Manifest {
            entries: vec![
                dir("top"),
                dir("top/empty"),
                file("top/a.txt", 5),
                sparse,
                link("top/l", "empty/../a.txt"),
                file("ünïcødé ✓", 0),
            ],
        };
        assert_eq!(decode(&m).unwrap(), m);
    }

    #[test]
    fn hostile_manifests_are_refused() {
        let cases = [
            vec![file("a", 1), file("a", 2)],
            vec![dir("d"), file("d/x", 1), file("d/x", 1)],
            vec![file("d/x", 1)],
            vec![file("d", 1), file("d/x", 1)],
            vec![file("../x", 1)],
            vec![file("/etc/passwd", 1)],
            vec![dir("d"), file("d//x", 1)],
            vec![dir("d"), file("d/./x", 1)],
            vec![dir("d"), link("d/l", "")],
            vec![dir("d"), link("d/l", "a\0b")],
            vec![file(".zrecv-1.part", 1)],
        ];
        for entries in cases {
            let m = Manifest { entries };
            assert!(decode(&m).is_err(), "{m:?}");
        }
    }

    #[test]
    fn link_targets_are_judged_link_by_link_not_here() {
        // Each is refused when the receiver makes links (crate::links), not with the manifest.
        let m = Manifest {
            entries: vec![
                link("l", "x"),
                dir("d"),
                link("d/up", "../../etc"),
                link("d/abs", "/etc/passwd"),
                link("d/u", ".."),
                link("d/v", "u/.."),
            ],
        };
        assert_eq!(decode(&m).unwrap(), m);
    }

    #[test]
    fn an_oversized_count_is_refused_before_allocating() {
        let mut bytes = MANIFEST_MAGIC.to_vec();
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(Manifest::read(&mut &bytes[..]).is_err());
    }
}
