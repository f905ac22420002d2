//! What a tree's entries carry beyond content, mode and mtime: owners and extended attributes
//! (POSIX ACLs and file capabilities among them), read on the sender and applied on the
//! receiver under its rule for privilege-carrying metadata.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Uid, XattrFlags};
use rustix::io::Errno;

use crate::name::Escaped;
use crate::units::os_reason;
use crate::wire::{Entry, Extras, Kind, Owner, KEPT_MODE};

/// What of a tree to send beyond files, directories, modes and mtimes (`zsend -a` turns on all
/// of it).
#[derive(Clone, Copy, Debug, Default)]
pub struct Keep {
    /// Symbolic links as links (else they are left out, counted).
    pub links: bool,
    /// Hard links as one file with more names (else each name is a file of its own).
    pub hard_links: bool,
    /// Owners and groups (`-o`/`-g`); by number only with `numeric_ids`.
    pub owner: bool,
    /// Send no user or group names, only numbers (`--numeric-ids`).
    pub numeric_ids: bool,
    /// Extended attributes (`-X`: `user.*`, `trusted.*`, `security.*`).
    pub xattrs: bool,
    /// POSIX ACLs (`-A`: `system.posix_acl_access` and `system.posix_acl_default`).
    pub acls: bool,
    /// Fifos and sockets (`--specials`).
    pub specials: bool,
    /// Device files (`--devices`).
    pub devices: bool,
}

/// The attributes that are POSIX ACLs.
const ACLS: [&[u8]; 2] = [b"system.posix_acl_access", b"system.posix_acl_default"];

/// Whether an attribute carries privilege (a file capability, a security label, a trusted
/// attribute): kept only under the receiver's rule for privileged metadata.
pub fn privileged_xattr(name: &[u8]) -> bool {
    name.starts_with(b"security.") || name.starts_with(b"trusted.")
}

/// The sender's side: user and group names looked up once per id, and the buffers attributes
/// are read into (allocated once per walk, not per entry).
#[derive(Debug, Default)]
pub struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
    list: Vec<u8>,
    value: Vec<u8>,
}

impl Names {
    fn user(&mut self, uid: u32) -> String {
        self.users
            .entry(uid)
            .or_insert_with(|| printable(uzers::get_user_by_uid(uid).map(|u| u.name().to_owned())))
            .clone()
    }

    fn group(&mut self, gid: u32) -> String {
        self.groups
            .entry(gid)
            .or_insert_with(|| printable(uzers::get_group_by_gid(gid).map(|g| g.name().to_owned())))
            .clone()
    }
}

/// A name fit to send (short, printable UTF-8), or none.
fn printable(name: Option<std::ffi::OsString>) -> String {
    name.and_then(|n| n.into_string().ok())
        .filter(|n| n.len() <= crate::wire::MAX_OWNER_NAME && !n.chars().any(char::is_control))
        .unwrap_or_default()
}

/// Reads what `keep` asks for of the entry at `path` (never following a link there).
/// Attributes that vanish meanwhile are left out; a file system without them has none.
pub fn extras_of(
    path: &Path,
    st: &rustix::fs::Stat,
    keep: &Keep,
    names: &mut Names,
) -> io::Result<Option<Box<Extras>>> {
    let mut extras = Extras::default();
    if keep.owner {
        let (user, group) = match keep.numeric_ids {
            true => (String::new(), String::new()),
            false => (names.user(st.st_uid), names.group(st.st_gid)),
        };
        extras.owner = Some(Owner {
            uid: st.st_uid,
            gid: st.st_gid,
            user,
            group,
        });
    }
    // Every kind keeps its attributes, as rsync -X keeps them: Linux allows links, fifos,
    // sockets and devices only trusted and security ones (and links no ACL).
    if keep.xattrs || keep.acls {
        extras.xattrs = names.xattrs_of(path, keep)?;
    }
    Ok((!extras.is_empty()).then(|| Box::new(extras)))
}

impl Names {
    fn xattrs_of(&mut self, path: &Path, keep: &Keep) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if self.list.is_empty() {
            self.list = vec![0u8; 64 << 10];
            self.value = vec![0u8; crate::wire::MAX_XATTR_VALUE];
        }
        let n = match rustix::fs::llistxattr(path, &mut self.list[..]) {
            Ok(n) => n,
            Err(rustix::io::Errno::OPNOTSUPP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for name in self.list[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
            let wanted = match ACLS.contains(&name) {
                true => keep.acls,
                false => keep.xattrs && !name.starts_with(b"system."),
            };
            if !wanted || name.len() > crate::wire::MAX_XATTR_NAME {
                continue;
            }
            let cname = std::ffi::CString::new(name).expect("no NUL in a listed name");
            match rustix::fs::lgetxattr(path, cname.as_c_str(), &mut self.value[..]) {
                Ok(len) => out.push((name.to_vec(), self.value[..len].to_vec())),
                Err(rustix::io::Errno::NODATA) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }
}

/// What the receiver lets a transfer set, decided once per connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rights {
    /// Owners, setuid and setgid bits, privileged attributes and device files: for a sender
    /// that proved the token, to a receiver run as root with `--preserve-privileged`.
    pub privileged: bool,
    /// Who the receiver is: what a file it makes belongs to when it may not choose.
    pub uid: u32,
    pub gid: u32,
}

impl Rights {
    /// The rights of this process for a sender that did (`authenticated`) or did not prove
    /// the token, when the receiver was started `preserve` (`--preserve-privileged`).
    pub fn of(authenticated: bool, preserve: bool) -> Rights {
        let uid = rustix::process::geteuid().as_raw();
        Rights {
            privileged: authenticated && preserve && uid == 0,
            uid,
            gid: rustix::process::getegid().as_raw(),
        }
    }
}

/// What to set on one entry once it is made: owner, mode and attributes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub owner: Option<(u32, u32)>,
    /// The permission bits to set after the owner (which clears setuid and setgid).
    pub mode: u32,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The receiver's side: local ids of the sender's user and group names, looked up once each.
#[derive(Debug, Default)]
pub struct Ids {
    users: RefCell<HashMap<String, Option<u32>>>,
    groups: RefCell<HashMap<String, Option<u32>>>,
}

impl Ids {
    /// The local owner of `o`: by name where both ends know it, else by number.
    fn map(&self, o: &Owner) -> (u32, u32) {
        let uid = cached(&self.users, &o.user, |n| {
            uzers::get_user_by_name(n).map(|u| u.uid())
        });
        let gid = cached(&self.groups, &o.group, |n| {
            uzers::get_group_by_name(n).map(|g| g.gid())
        });
        (uid.unwrap_or(o.uid), gid.unwrap_or(o.gid))
    }

    /// What to set on `e`, and whether some of what it carries is not kept under `rights`:
    /// an owner other than the receiver's own, setuid or setgid bits sent with an owner, a
    /// privileged attribute. `None` when the entry carries nothing beyond its mode.
    pub fn plan(&self, e: &Entry, rights: &Rights) -> Option<(Plan, bool)> {
        let extras = e.extras.as_deref()?;
        let mut unkept = false;
        let mut plan = Plan {
            mode: e.mode & KEPT_MODE,
            ..Plan::default()
        };
        if let Some(o) = &extras.owner {
            let ids = self.map(o);
            if rights.privileged {
                plan.owner = Some(ids);
                plan.mode = e.mode & 0o7777;
            } else {
                unkept |= ids != (rights.uid, rights.gid) || e.mode & 0o6000 != 0;
            }
        }
        for (name, value) in &extras.xattrs {
            if privileged_xattr(name) && !rights.privileged {
                unkept = true;
            } else {
                plan.xattrs.push((name.clone(), value.clone()));
            }
        }
        Some((plan, unkept))
    }
}

impl Plan {
    /// A plan that sets the kept mode bits and nothing else.
    pub fn of_mode(mode: u32) -> Plan {
        Plan {
            mode: mode & KEPT_MODE,
            ..Plan::default()
        }
    }

    /// Sets the owner, then the mode, then the attributes (ACLs after the mode they refine,
    /// capabilities after the owner change that would clear them) on an open file or
    /// directory whose kept mode bits are set already. Its mtime is left as it was.
    pub fn apply(&self, fd: impl AsFd) -> io::Result<()> {
        let fd = fd.as_fd();
        if let Some((uid, gid)) = self.owner {
            rustix::fs::fchown(fd, Some(uid_of(uid)), Some(gid_of(gid)))?;
        }
        // The kept bits are there; a change of owner clears setuid and setgid, which only a
        // plan with an owner sets.
        if self.owner.is_some() || self.mode & !KEPT_MODE != 0 {
            rustix::fs::fchmod(fd, Mode::from_raw_mode(self.mode))?;
        }
        for (name, value) in &self.xattrs {
            let cname = std::ffi::CString::new(name.as_slice())
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            rustix::fs::fsetxattr(fd, cname.as_c_str(), value, XattrFlags::empty())
                .map_err(|e| xattr_error(name, e))?;
        }
        Ok(())
    }

    /// Sets the owner, mode and attributes of `name` in `dir`, a link, fifo, socket or device
    /// just made there as a `want` (which cannot be opened for it). Every change goes through
    /// a handle on that very entry (`O_PATH`, never following it), checked to be a `want`:
    /// someone who can write to `dir` and swaps a symlink in under the name meanwhile gets
    /// the entry refused, never the change made to where the symlink leads.
    pub fn apply_at(&self, dir: impl AsFd, name: &str, want: FileType) -> io::Result<()> {
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let node = rustix::fs::openat(dir, name, flags, Mode::empty())?;
        let st = rustix::fs::fstat(&node)?;
        if FileType::from_raw_mode(st.st_mode) != want {
            return Err(io::Error::other("replaced while it was being made"));
        }
        if let Some((uid, gid)) = self.owner {
            let (u, g) = (Some(uid_of(uid)), Some(gid_of(gid)));
            rustix::fs::chownat(&node, "", u, g, AtFlags::EMPTY_PATH)?;
        }
        // The handle's name in /proc leads to the entry itself, a symlink included.
        let fds = "/proc/self/fd";
        let path = format!("{fds}/{}", node.as_raw_fd());
        let proc_missing = |what: &str| {
            let why = format!("{what}: {fds} is not mounted");
            io::Error::new(io::ErrorKind::NotFound, why)
        };
        // A link has no mode of its own on Linux.
        if want != FileType::Symlink {
            match rustix::fs::chmod(&path, Mode::from_raw_mode(self.mode)) {
                Err(Errno::NOENT) if !Path::new(fds).exists() => {
                    return Err(proc_missing("setting the mode"))
                }
                other => other?,
            }
        }
        for (attr, value) in &self.xattrs {
            let cname = std::ffi::CString::new(attr.as_slice())
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            match rustix::fs::setxattr(&path, cname.as_c_str(), value, XattrFlags::empty()) {
                Err(Errno::NOENT) if !Path::new(fds).exists() => {
                    return Err(proc_missing(&format!("setting {}", Escaped(attr))));
                }
                other => other.map_err(|e| xattr_error(attr, e))?,
            }
        }
        Ok(())
    }
}

/// The file type a link, fifo, socket or device entry is made as.
pub fn node_type(kind: &Kind) -> FileType {
    match kind {
        Kind::Symlink { .. } => FileType::Symlink,
        Kind::Fifo => FileType::Fifo,
        Kind::Socket => FileType::Socket,
        Kind::Device { block: true, .. } => FileType::BlockDevice,
        Kind::Device { block: false, .. } => FileType::CharacterDevice,
        _ => FileType::Unknown,
    }
}

/// The error of setting attribute `name`, which it names.
fn xattr_error(name: &[u8], e: rustix::io::Errno) -> io::Error {
    let e = io::Error::from(e);
    let why = format!("setting {}: {}", Escaped(name), os_reason(&e));
    io::Error::new(e.kind(), why)
}

/// An id from the manifest, which never holds -1 (it would mean "leave it as it is").
fn uid_of(uid: u32) -> Uid {
    Uid::from_raw(uid)
}

fn gid_of(gid: u32) -> Gid {
    Gid::from_raw(gid)
}

/// The local id of `name` (none for an empty name), looked up with `find` once per name.
fn cached(
    cache: &RefCell<HashMap<String, Option<u32>>>,
    name: &str,
    find: impl FnOnce(&str) -> Option<u32>,
) -> Option<u32> {
    if name.is_empty() {
        return None;
    }
    *cache
        .borrow_mut()
        .entry(name.to_owned())
        .or_insert_with(|| find(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A symlink swapped in under the name of a node being made is refused, and nothing is
    /// set on where it leads (a chmod that followed it let a local user give any file the
    /// sender's mode when zrecv ran as root); the node itself takes its mode and attributes.
    #[test]
    fn a_node_swapped_for_a_symlink_is_refused_and_its_target_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, b"secret").unwrap();
        std::fs::set_permissions(&outside, PermissionsExt::from_mode(0o600)).unwrap();
        let dir = std::fs::File::open(tmp.path()).unwrap();
        std::os::unix::fs::symlink(&outside, tmp.path().join("node")).unwrap();
        let plan = Plan {
            mode: 0o666,
            xattrs: vec![(b"user.planted".to_vec(), b"x".to_vec())],
            ..Plan::default()
        };
        let err = plan.apply_at(&dir, "node", FileType::Fifo).unwrap_err();
        assert!(err.to_string().contains("replaced"), "{err}");
        let mode = std::fs::metadata(&outside).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o600);
        assert!(xattr_names(&outside).is_empty());

        rustix::fs::mknodat(&dir, "fifo", FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
        // Linux allows a fifo no user attribute: it is refused on the node itself.
        let err = plan.apply_at(&dir, "fifo", FileType::Fifo).unwrap_err();
        assert!(err.to_string().contains("setting user.planted"), "{err}");
        let fifo = tmp.path().join("fifo");
        let mode = std::fs::symlink_metadata(&fifo)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o666);
        let trusted = Plan {
            mode: 0o640,
            xattrs: vec![(b"trusted.kept".to_vec(), b"x".to_vec())],
            ..Plan::default()
        };
        trusted.apply_at(&dir, "fifo", FileType::Fifo).unwrap();
        assert_eq!(xattr_names(&fifo), [b"trusted.kept".to_vec()]);
        let mode = std::fs::symlink_metadata(&fifo)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o640);
    }

    fn xattr_names(path: &Path) -> Vec<Vec<u8>> {
        let mut list = vec![0u8; 4096];
        let n = rustix::fs::llistxattr(path, &mut list[..]).unwrap();
        let names = list[..n].split(|b| *b == 0).filter(|n| !n.is_empty());
        names.map(<[u8]>::to_vec).collect()
    }
}
