//! The manifest: every entry of a tree, parents before children, bounded and checked as a whole.

use std::collections::HashSet;
use std::io::Read;

use super::{malformed, read_counted, read_text, read_u32, read_u64, MANIFEST_MAGIC};
use crate::name::validate_component;
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
    /// A symbolic link; where its target leads is judged by the receiver (see `links`), unless
    /// it trusts the sender.
    Symlink {
        /// The link's content: bytes, as Linux keeps it.
        target: Vec<u8>,
    },
    /// Another name of an earlier file entry (a hard link): the two share one copy of the data.
    HardLink {
        /// The index of that file entry in the manifest.
        first: u32,
    },
    /// A named pipe.
    Fifo,
    /// A Unix socket's name (nothing listens on it once made).
    Socket,
    /// A device file.
    Device {
        /// A block device (else a character device).
        block: bool,
        /// Its major and minor numbers.
        major: u32,
        minor: u32,
    },
}

/// What an entry carries beyond mode and mtime, when the sender was asked to keep it
/// (`zsend -o/-g/-X/-A`, all in `-a`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extras {
    /// The owner and group, by number and (when the sender knows them) by name.
    pub owner: Option<Owner>,
    /// Extended attributes: name (with its namespace) and value. POSIX ACLs are the
    /// `system.posix_acl_access` and `system.posix_acl_default` attributes, file capabilities
    /// `security.capability`.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// An entry's owner and group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    /// The user's name on the sender, empty when it has none (or `--numeric-ids`).
    pub user: String,
    /// The group's name on the sender, likewise.
    pub group: String,
}

/// The namespaces an extended attribute's name may start with.
pub const XATTR_NAMESPACES: [&str; 4] = ["user.", "trusted.", "security.", "system."];
/// Longest extended attribute name (Linux XATTR_NAME_MAX).
pub const MAX_XATTR_NAME: usize = 255;
/// Largest extended attribute value (Linux XATTR_SIZE_MAX).
pub const MAX_XATTR_VALUE: usize = 64 << 10;
/// Longest user or group name.
pub const MAX_OWNER_NAME: usize = 255;

impl Extras {
    /// Whether it holds anything.
    pub fn is_empty(&self) -> bool {
        self.owner.is_none() && self.xattrs.is_empty()
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let flags = u8::from(self.owner.is_some()) | u8::from(!self.xattrs.is_empty()) << 1;
        out.push(flags);
        if let Some(o) = &self.owner {
            out.extend_from_slice(&o.uid.to_be_bytes());
            out.extend_from_slice(&o.gid.to_be_bytes());
            for name in [&o.user, &o.group] {
                out.push(name.len() as u8);
                out.extend_from_slice(name.as_bytes());
            }
        }
        if !self.xattrs.is_empty() {
            out.extend_from_slice(&(self.xattrs.len() as u16).to_be_bytes());
            for (name, value) in &self.xattrs {
                out.push(name.len() as u8);
                out.extend_from_slice(name);
                out.extend_from_slice(&(value.len() as u32).to_be_bytes());
                out.extend_from_slice(value);
            }
        }
    }

    fn read(r: &mut impl Read, text: &mut usize) -> Result<Extras, ProtocolError> {
        let mut flags = [0u8; 1];
        read_exact(r, &mut flags, "manifest entry")?;
        if flags[0] & !3 != 0 {
            return Err(malformed(format!("unknown extras flags {:#x}", flags[0])));
        }
        let mut extras = Extras::default();
        if flags[0] & 1 != 0 {
            let mut ids = [0u8; 8];
            read_exact(r, &mut ids, "owner")?;
            if ids[..4] == [0xff; 4] || ids[4..] == [0xff; 4] {
                return Err(malformed("an owner or group of -1".into()));
            }
            let mut name = || -> Result<String, ProtocolError> {
                let bytes = read_short(r, text, MAX_OWNER_NAME, "owner name")?;
                String::from_utf8(bytes)
                    .ok()
                    .filter(|n| !n.chars().any(|c| c.is_control()))
                    .ok_or_else(|| malformed("an owner name that is not printable UTF-8".into()))
            };
            let user = name()?;
            let group = name()?;
            extras.owner = Some(Owner {
                uid: u32::from_be_bytes(ids[..4].try_into().expect("4 bytes")),
                gid: u32::from_be_bytes(ids[4..].try_into().expect("4 bytes")),
                user,
                group,
            });
        }
        if flags[0] & 2 != 0 {
            let mut count = [0u8; 2];
            read_exact(r, &mut count, "extended attributes")?;
            let count = u16::from_be_bytes(count);
            if count == 0 {
                return Err(malformed("an empty list of extended attributes".into()));
            }
            // Names seen, for the duplicate check: linear, whatever the count.
            let mut seen = std::collections::HashSet::new();
            for _ in 0..count {
                let name = read_short(r, text, MAX_XATTR_NAME, "attribute name")?;
                let known = XATTR_NAMESPACES
                    .iter()
                    .any(|ns| name.len() > ns.len() && name.starts_with(ns.as_bytes()));
                if !known || name.contains(&0) {
                    return Err(malformed(format!(
                        "an attribute named {}",
                        crate::name::Escaped(&name)
                    )));
                }
                if !seen.insert(name.clone()) {
                    return Err(malformed("an attribute named twice".into()));
                }
                let len = read_u32(r)? as usize;
                let value = read_counted(r, len, MAX_XATTR_VALUE, text, "attribute value")?;
                extras.xattrs.push((name, value));
            }
        }
        Ok(extras)
    }
}

/// Reads a u8-length byte string of at most `max` bytes, counted against the manifest's text.
fn read_short(
    r: &mut impl Read,
    text: &mut usize,
    max: usize,
    what: &'static str,
) -> Result<Vec<u8>, ProtocolError> {
    let mut len = [0u8; 1];
    read_exact(r, &mut len, what)?;
    read_counted(r, len[0] as usize, max, text, what)
}

/// One entry of a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Relative path under the receiver's directory: safe components joined with `/`, bytes
    /// as Linux names are (not always UTF-8).
    pub path: Vec<u8>,
    /// What it is.
    pub kind: Kind,
    /// Permission bits (the receiver keeps [`KEPT_MODE`](crate::wire::KEPT_MODE)).
    pub mode: u32,
    /// Modification time: seconds and nanoseconds since the epoch.
    pub mtime: (i64, u32),
    /// Owner and extended attributes, when sent.
    pub extras: Option<Box<Extras>>,
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
    pub fn parent(&self) -> Option<&[u8]> {
        parent_of(&self.path)
    }

    /// The last component of the path.
    pub fn base(&self) -> &[u8] {
        match self.path.iter().rposition(|b| *b == b'/') {
            Some(i) => &self.path[i + 1..],
            None => &self.path,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let kind = match self.kind {
            Kind::File { .. } => 1u8,
            Kind::Dir => 2,
            Kind::Symlink { .. } => 3,
            Kind::HardLink { .. } => 4,
            Kind::Fifo => 5,
            Kind::Socket => 6,
            Kind::Device { block: false, .. } => 7,
            Kind::Device { block: true, .. } => 8,
        };
        out.push(kind);
        out.extend_from_slice(&(self.path.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.path);
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
            Kind::Dir | Kind::Fifo | Kind::Socket => {}
            Kind::Symlink { target } => {
                out.extend_from_slice(&(target.len() as u16).to_be_bytes());
                out.extend_from_slice(target);
            }
            Kind::HardLink { first } => out.extend_from_slice(&first.to_be_bytes()),
            Kind::Device { major, minor, .. } => {
                out.extend_from_slice(&major.to_be_bytes());
                out.extend_from_slice(&minor.to_be_bytes());
            }
        }
        match &self.extras {
            Some(x) => x.encode(out),
            None => out.push(0),
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
            4 => Kind::HardLink {
                first: read_u32(r)?,
            },
            5 => Kind::Fifo,
            6 => Kind::Socket,
            7 | 8 => Kind::Device {
                block: kind[0] == 8,
                major: read_u32(r)?,
                minor: read_u32(r)?,
            },
            k => return Err(malformed(format!("unknown entry kind {k}"))),
        };
        let extras = Some(Extras::read(r, text)?).filter(|x| !x.is_empty());
        Ok(Entry {
            path,
            kind,
            mode,
            mtime: (sec, nsec),
            extras: extras.map(Box::new),
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
        let mut seen: HashSet<&[u8]> = HashSet::with_capacity(self.entries.len());
        let mut dirs: HashSet<&[u8]> = HashSet::new();
        for (i, e) in self.entries.iter().enumerate() {
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
                    if target.is_empty() || target.contains(&0) || target.len() > MAX_PATH_LEN {
                        return Err(malformed(format!(
                            "the link {} has an empty target, a NUL in it or more than \
                             {MAX_PATH_LEN} bytes",
                            crate::name::Escaped(&e.path)
                        )));
                    }
                }
                Kind::HardLink { first } => {
                    let names_a_file = (*first as usize) < i
                        && matches!(self.entries[*first as usize].kind, Kind::File { .. });
                    if !names_a_file || e.extras.is_some() {
                        return Err(malformed(format!(
                            "the hard link {} names entry {first}, not a file before it, or has \
                             extras of its own",
                            crate::name::Escaped(&e.path)
                        )));
                    }
                }
                Kind::File { .. } | Kind::Fifo | Kind::Socket | Kind::Device { .. } => {}
            }
        }
        Ok(())
    }
}

/// Checks that `path` is relative and each `/`-separated component is a name Linux allows
/// (see [`validate_component`]).
pub fn check_path(path: &[u8]) -> Result<(), ProtocolError> {
    if path.len() > MAX_PATH_LEN {
        return Err(malformed(format!("a path of {} bytes", path.len())));
    }
    for component in path.split(|b| *b == b'/') {
        validate_component(component).map_err(ProtocolError::BadName)?;
    }
    Ok(())
}

/// The directory part of a path, if any (`a/b` for `a/b/c`).
pub fn parent_of(path: &[u8]) -> Option<&[u8]> {
    path.iter().rposition(|b| *b == b'/').map(|i| &path[..i])
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
            extras: None,
        }
    }

    fn dir(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: Kind::Dir,
            mode: 0o755,
            mtime: (3, 4),
            extras: None,
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
            extras: None,
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
                Entry {
                    kind: Kind::HardLink { first: 2 },
                    ..file("top/again", 0)
                },
                Entry {
                    kind: Kind::Fifo,
                    extras: Some(Box::new(Extras {
                        owner: Some(Owner {
                            uid: 1000,
                            gid: 100,
                            user: "ann".into(),
                            group: String::new(),
                        }),
                        xattrs: vec![
                            (b"user.a".to_vec(), vec![0, 1, 2]),
                            (b"system.posix_acl_access".to_vec(), vec![]),
                        ],
                    })),
                    ..file("top/fifo", 0)
                },
                Entry {
                    kind: Kind::Socket,
                    ..file("top/sock", 0)
                },
                Entry {
                    kind: Kind::Device {
                        block: true,
                        major: 7,
                        minor: 3,
                    },
                    ..file("top/loop3", 0)
                },
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
            vec![Entry {
                kind: Kind::HardLink { first: 0 },
                ..file("a", 1)
            }],
            vec![
                dir("d"),
                Entry {
                    kind: Kind::HardLink { first: 0 },
                    ..file("a", 1)
                },
            ],
            vec![
                file("f", 1),
                Entry {
                    kind: Kind::HardLink { first: 7 },
                    ..file("a", 1)
                },
            ],
            vec![Entry {
                extras: Some(Box::new(Extras {
                    owner: None,
                    xattrs: vec![(b"other.x".to_vec(), vec![])],
                })),
                ..file("a", 1)
            }],
            vec![Entry {
                extras: Some(Box::new(Extras {
                    owner: None,
                    xattrs: vec![(b"user.".to_vec(), vec![])],
                })),
                ..file("a", 1)
            }],
            vec![Entry {
                extras: Some(Box::new(Extras {
                    owner: None,
                    xattrs: vec![(b"user.x".to_vec(), vec![]), (b"user.x".to_vec(), vec![])],
                })),
                ..file("a", 1)
            }],
            vec![Entry {
                extras: Some(Box::new(Extras {
                    owner: None,
                    xattrs: vec![(b"user.x".to_vec(), vec![0; MAX_XATTR_VALUE + 1])],
                })),
                ..file("a", 1)
            }],
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
