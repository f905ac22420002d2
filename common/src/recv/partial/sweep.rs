//! The stale-partial sweep: removes the receiver's hidden files that nobody touched for a while
//! (temporary files a killed receiver left, partials kept for resuming that nobody resumed)
//! anywhere beneath the receive directory, never following a symlink.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString, OsStr};
use std::fmt;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use super as partial;
use crate::name::{text_key, Escaped, TEMP_PREFIX};

/// Directories the walk holds open at once; beyond that it closes one and opens it again, from
/// its closest open ancestor, when it comes back to it.
const MAX_OPEN_DIRS: usize = 64;

/// The walk keeps every directory at a depth that is a multiple of this open while it can, and
/// closes others first: coming back up a deep chain then reopens each directory from an
/// ancestor at most this far above it, instead of from the top (which cost time quadratic in
/// the depth). Paths of at most 4096 bytes are at most 2048 deep: 32 such anchors.
const ANCHOR_EVERY: usize = 64;

/// A receiver's own temporary file whose ctime is at most this much before the receiver
/// started is still its own (file times come from a coarser clock than `SystemTime::now`).
const CLOCK_SLACK: Duration = Duration::from_secs(1);

/// What one sweep did.
#[derive(Debug, Default)]
pub struct Swept {
    /// The files removed, relative to the receive directory.
    pub removed: Vec<PathBuf>,
    /// The files of roots removed because their tree is gone (see [`orphan_roots`]), and the
    /// piece-layer sidecars removed because their file is gone.
    pub forgotten: Vec<PathBuf>,
    /// Files and directories that could not be examined or removed; each was logged as a
    /// warning.
    pub errors: usize,
}

/// How often a receiver whose partials expire after `max_age` sweeps: a quarter of the age,
/// at least every hour and at most every second.
pub fn sweep_interval(max_age: Duration) -> Duration {
    (max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600))
}

/// Parses zrecv's `--partial-max-age`: a whole number with a unit, `90s`, `30m`, `12h`, `2d`,
/// or a bare number of seconds; at least one second.
pub fn parse_age(s: &str) -> Result<Duration, String> {
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => {
            return Err(format!(
                "{s:?} is not a duration such as 90s, 30m, 12h or 2d"
            ))
        }
    };
    let secs = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("{s:?} is not a duration such as 90s, 30m, 12h or 2d"))?;
    match secs {
        0 => Err("the age must be at least 1s".into()),
        _ => Ok(Duration::from_secs(secs)),
    }
}

/// Shows a duration as [`parse_age`] reads it, in the largest unit that divides it: `90s`,
/// `30m`, `1d`.
#[derive(Clone, Copy, Debug)]
pub struct Age(pub Duration);

impl fmt::Display for Age {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        let (n, unit) = [(86400, "d"), (3600, "h"), (60, "m")]
            .into_iter()
            .find(|(scale, _)| secs > 0 && secs / scale * scale == secs)
            .map_or((secs, "s"), |(scale, unit)| (secs / scale, unit));
        write!(f, "{n}{unit}")
    }
}

/// Removes, beneath `root` (a directory handle), the regular files (and the receiver's own
/// symlinks) that [`partial::is_hidden_file`] recognises and that were last modified more than
/// `max_age` ago. With `own_since`, the time this receiver started, its own temporary files
/// (named after its pid, made since then) are spared whatever their age: those are transfers
/// in flight, or small files of a tree waiting for their batch to land.
///
/// Every directory is opened relative to its parent's descriptor with `O_NOFOLLOW`, and every
/// file is examined and removed relative to its directory's: a directory swapped for a symlink
/// during the walk cannot lead it, or an unlink, outside `root`.
///
/// It also removes the files of roots whose tree is gone (see [`orphan_roots`]).
pub(crate) fn sweep(
    root: BorrowedFd<'_>,
    max_age: Duration,
    own_since: Option<SystemTime>,
) -> Swept {
    let mut swept = Walk {
        root,
        cutoff: SystemTime::now().checked_sub(max_age),
        own: own_since.map(|since| (partial::pid().to_string(), since)),
        max_open: MAX_OPEN_DIRS,
        frames: Vec::new(),
        swept: Swept::default(),
    }
    .run();
    orphan_roots(root, &mut swept);
    swept
}

/// A file of roots younger than this stays even when its tree is not there: a tree published
/// after the listing may have just written its own.
const ROOTS_SETTLE: Duration = Duration::from_secs(60);

/// Removes the files of roots in `root` (`.zrecv-KEY.roots`, what zrecv remembers of a tree it
/// landed there: see `roots.rs`) whose tree is gone: no entry of `root` has their KEY, nor
/// does a hidden tree being built (`.zrecv-KEY.stage`). They would otherwise outlive every
/// tree removed or renamed on the receiver.
fn orphan_roots(root: BorrowedFd<'_>, swept: &mut Swept) {
    let mut fail = |what: &str, name: &[u8], e: Errno| {
        log::warn!("sweeping stale partials: {what} {}: {e}", Escaped(name));
        swept.errors += 1;
    };
    let mut listing = match Dir::read_from(root) {
        Ok(listing) => listing,
        Err(e) => return fail("listing", b".", e),
    };
    let (mut roots, mut others) = (Vec::new(), Vec::new());
    while let Some(entry) = listing.read() {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => return fail("listing", b".", e),
        };
        let name = entry.file_name().to_bytes();
        match name {
            b"." | b".." => {}
            n if n.starts_with(TEMP_PREFIX.as_bytes()) && n.ends_with(b".roots") => {
                roots.push(String::from_utf8_lossy(n).into_owned())
            }
            n => others.push(n.to_owned()),
        }
    }
    if roots.is_empty() {
        return;
    }
    let have: HashSet<String> = (others.iter())
        .filter_map(
            |n| match std::str::from_utf8(n).ok().filter(|n| partial::is_stage(n)) {
                Some(stage) => stage.strip_suffix(".stage").map(|k| format!("{k}.roots")),
                None if n.starts_with(TEMP_PREFIX.as_bytes()) => None,
                None => Some(partial::hidden_name(&text_key(n), "roots")),
            },
        )
        .collect();
    let settled = SystemTime::now().checked_sub(ROOTS_SETTLE);
    for name in roots.iter().filter(|r| !have.contains(*r)) {
        let _lock = partial::sweeping();
        let st = match rustix::fs::statat(root, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue,
            Err(e) => {
                fail("examining", name.as_bytes(), e);
                continue;
            }
        };
        let mtime = time(st.st_mtime, st.st_mtime_nsec);
        let file = FileType::from_raw_mode(st.st_mode) == FileType::RegularFile;
        if !file || settled.is_none_or(|settled| mtime >= settled) {
            continue;
        }
        match rustix::fs::unlinkat(root, name.as_str(), AtFlags::empty()) {
            Ok(()) => swept.forgotten.push(PathBuf::from(name)),
            Err(Errno::NOENT) => {}
            Err(e) => fail("removing", name.as_bytes(), e),
        }
    }
}

/// A directory on the walk's stack.
struct Frame {
    /// Its name in its parent (empty for the root).
    name: CString,
    /// Its path from the root, for messages and the report.
    path: PathBuf,
    /// Its listing; `None` while closed to bound the descriptors held.
    dir: Option<Dir>,
    /// Where the listing stands: the offset after the last entry read (0: the start).
    pos: i64,
    /// The piece-layer sidecars (`.zrecv-KEY.pieces`) listed so far: once the listing ends,
    /// those whose file is not in the directory any more are removed.
    sidecars: Vec<CString>,
}

/// A depth-first walk with an explicit stack of open directories.
struct Walk<'a> {
    root: BorrowedFd<'a>,
    /// Files last modified before this are stale; `None`: nothing is that old.
    cutoff: Option<SystemTime>,
    /// This process's pid, and when it started.
    own: Option<(String, SystemTime)>,
    max_open: usize,
    frames: Vec<Frame>,
    swept: Swept,
}

impl Walk<'_> {
    fn run(mut self) -> Swept {
        self.frames.push(Frame {
            name: CString::default(),
            path: PathBuf::new(),
            dir: None,
            pos: 0,
            sidecars: Vec::new(),
        });
        while let Some(top) = self.frames.len().checked_sub(1) {
            if self.frames[top].dir.is_none() {
                match self.reopen(top) {
                    Ok(dir) => self.frames[top].dir = Some(dir),
                    Err(e) => {
                        let path = self.frames[top].path.clone();
                        self.fail("opening", &path, e);
                        self.frames.pop();
                        continue;
                    }
                }
            }
            let frame = &mut self.frames[top];
            let entry = match frame.dir.as_mut().and_then(Dir::read) {
                None => {
                    self.orphan_sidecars();
                    self.frames.pop();
                    continue;
                }
                Some(Err(e)) => {
                    let path = frame.path.clone();
                    self.fail("listing", &path, e);
                    self.frames.pop();
                    continue;
                }
                Some(Ok(entry)) => entry,
            };
            frame.pos = entry.offset();
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let bytes = name.to_bytes();
            if bytes.starts_with(TEMP_PREFIX.as_bytes()) && bytes.ends_with(b".pieces") {
                frame.sidecars.push(name.to_owned());
                continue;
            }
            match entry.file_type() {
                FileType::Directory if self.stale_stage(name) => self.remove_stage(name),
                FileType::Directory => self.descend(name),
                FileType::RegularFile | FileType::Symlink => self.examine(name),
                FileType::Unknown => {
                    // The file system does not say in its listing: ask.
                    match rustix::fs::statat(self.top_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                            match self.stale_stage(name) {
                                true => self.remove_stage(name),
                                false => self.descend(name),
                            }
                        }
                        Ok(_) => self.examine(name),
                        Err(Errno::NOENT) => {}
                        Err(e) => {
                            let path = self.path_of(name);
                            self.fail("examining", &path, e);
                        }
                    }
                }
                _ => {}
            }
        }
        self.swept
    }

    /// The descriptor of the directory being listed.
    fn top_fd(&self) -> BorrowedFd<'_> {
        let dir = self.frames.last().and_then(|f| f.dir.as_ref());
        let dir = dir.expect("the directory being listed is open");
        dir.fd().expect("a Dir has a descriptor")
    }

    /// `name` in the directory being listed, from the root.
    fn path_of(&self, name: &CStr) -> PathBuf {
        let top = self.frames.last().expect("a directory is being listed");
        top.path.join(OsStr::from_bytes(name.to_bytes()))
    }

    /// Pushes the subdirectory `name` of the directory being listed, if it still is one.
    fn descend(&mut self, name: &CStr) {
        let path = self.path_of(name);
        let dir = open_dir(self.top_fd(), name).and_then(Dir::new);
        match dir {
            Ok(dir) => {
                self.frames.push(Frame {
                    name: name.to_owned(),
                    path,
                    dir: Some(dir),
                    pos: 0,
                    sidecars: Vec::new(),
                });
                let open = self.frames.iter().filter(|f| f.dir.is_some()).count();
                if open > self.max_open {
                    // Never the directory just entered; an anchor only when nothing else is.
                    let below = self.frames.len() - 1;
                    let candidates = || {
                        self.frames[..below]
                            .iter()
                            .enumerate()
                            .filter(|(_, f)| f.dir.is_some())
                            .map(|(depth, _)| depth)
                    };
                    let victim = candidates()
                        .find(|depth| depth % ANCHOR_EVERY != 0)
                        .or_else(|| candidates().next());
                    if let Some(depth) = victim {
                        self.frames[depth].dir = None;
                    }
                }
            }
            // Removed since it was listed: nothing to sweep there.
            Err(Errno::NOENT) => {}
            // Replaced by a symlink or a file since it was listed: never followed.
            Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                log::debug!("not sweeping {}: no longer a directory", show(&path));
            }
            Err(e) => self.fail("opening", &path, e),
        }
    }

    /// Opens the directory of frame `k` again, from its closest open ancestor (or the root),
    /// one directory at a time, and seeks back to where its listing stood.
    fn reopen(&self, k: usize) -> rustix::io::Result<Dir> {
        let open = (0..k).rev().find(|&i| self.frames[i].dir.is_some());
        let mut dir = match open {
            Some(i) => {
                let fd = open_dir(self.fd_of(i)?, &self.frames[i + 1].name)?;
                self.descend_from(fd, i + 2, k)?
            }
            None if k == 0 => Dir::read_from(self.root)?,
            None => {
                let fd = open_dir(self.root, &self.frames[1].name)?;
                self.descend_from(fd, 2, k)?
            }
        };
        if self.frames[k].pos != 0 {
            dir.seek(self.frames[k].pos)?;
        }
        Ok(dir)
    }

    /// From the open directory of frame `from - 1`, opens frames `from..=k` in turn.
    fn descend_from(&self, mut fd: OwnedFd, from: usize, k: usize) -> rustix::io::Result<Dir> {
        for frame in &self.frames[from..=k] {
            fd = open_dir(&fd, &frame.name)?;
        }
        Dir::new(fd)
    }

    fn fd_of(&self, i: usize) -> rustix::io::Result<BorrowedFd<'_>> {
        self.frames[i].dir.as_ref().expect("an open frame").fd()
    }

    /// Removes `name`, in the directory being listed, if it is a stale hidden file.
    fn examine(&mut self, name: &CStr) {
        let Ok(text) = name.to_str() else { return };
        if !partial::is_hidden_file(text) || self.cutoff.is_none() {
            return;
        }
        let path = self.path_of(name);
        let dir = self.top_fd();
        let _lock = partial::sweeping();
        let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return,
            Err(e) => return self.fail("examining", &path, e),
        };
        let kind = FileType::from_raw_mode(st.st_mode);
        let removable = kind == FileType::RegularFile || kind == FileType::Symlink;
        let stale = self
            .cutoff
            .is_some_and(|cutoff| time(st.st_mtime, st.st_mtime_nsec) < cutoff);
        if !removable || !stale || self.is_own_in_flight(text, &st) || is_held(dir, text) {
            return;
        }
        // unlinkat never follows a symlink: it removes the name in this directory.
        match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) => self.swept.removed.push(path),
            Err(Errno::NOENT) => {}
            Err(e) => self.fail("removing", &path, e),
        }
    }

    /// Removes the piece-layer sidecars of the directory just listed whose file is gone: none
    /// of its entries has the inode the sidecar was taken of (see `update/cache.rs`), in a
    /// second listing, made only where there are sidecars. A sidecar younger than
    /// [`ROOTS_SETTLE`] stays: its file may have landed after the listing.
    fn orphan_sidecars(&mut self) {
        let Some(frame) = self.frames.last_mut() else {
            return;
        };
        let sidecars = std::mem::take(&mut frame.sidecars);
        if sidecars.is_empty() {
            return;
        }
        let settled = SystemTime::now().checked_sub(ROOTS_SETTLE);
        let dir = self.top_fd();
        // Each settled sidecar, by the inode it describes.
        let mut wanted: HashMap<u64, Vec<CString>> = HashMap::new();
        for name in sidecars {
            let _lock = partial::sweeping();
            let Ok(file) = partial::open_regular_beneath(dir, name.as_bytes()) else {
                continue;
            };
            let Ok(st) = rustix::fs::fstat(&file) else {
                continue;
            };
            if settled.is_none_or(|s| time(st.st_mtime, st.st_mtime_nsec) >= s) {
                continue;
            }
            let mut head = String::new();
            let _ = file.take(256).read_to_string(&mut head);
            if let Some(ino) = partial::sidecar_inode(&head) {
                wanted.entry(ino).or_default().push(name);
            }
        }
        if wanted.is_empty() {
            return;
        }
        let mut listing = match Dir::read_from(dir) {
            Ok(listing) => listing,
            Err(e) => {
                let path = self.path_of(c".");
                return self.fail("listing", &path, e);
            }
        };
        while let Some(entry) = listing.read() {
            match entry {
                Ok(entry) => {
                    let name = entry.file_name().to_bytes();
                    if !name.starts_with(TEMP_PREFIX.as_bytes()) {
                        wanted.remove(&entry.ino());
                    }
                }
                Err(e) => {
                    let path = self.path_of(c".");
                    return self.fail("listing", &path, e);
                }
            }
            if wanted.is_empty() {
                return;
            }
        }
        for name in wanted.into_values().flatten() {
            let path = self.path_of(&name);
            match rustix::fs::unlinkat(self.top_fd(), name.as_c_str(), AtFlags::empty()) {
                Ok(()) => self.swept.forgotten.push(path),
                Err(Errno::NOENT) => {}
                Err(e) => self.fail("removing", &path, e),
            }
        }
    }

    /// Whether the directory `name`, in the directory being listed, is the hidden directory of a
    /// new tree that nobody touched for `--partial-max-age` (a transfer that takes one up, or
    /// builds one, sets its mtime to now and holds it locked). Only where zrecv makes them: at
    /// the top of the receive directory, named as it names them, and its own. Deeper down, a
    /// user who may rename entries in a directory there could otherwise rename a directory it
    /// cannot empty to such a name, and have the sweep empty it.
    fn stale_stage(&self, name: &CStr) -> bool {
        let Ok(text) = name.to_str() else {
            return false;
        };
        let at_top = self.frames.len() == 1;
        let Some(cutoff) = self.cutoff.filter(|_| at_top && partial::is_stage(text)) else {
            return false;
        };
        let ours = rustix::process::geteuid().as_raw();
        rustix::fs::statat(self.top_fd(), name, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| st.st_uid == ours && time(st.st_mtime, st.st_mtime_nsec) < cutoff)
    }

    /// Removes a stale hidden tree and everything in it, unless a transfer holds it.
    fn remove_stage(&mut self, name: &CStr) {
        let path = self.path_of(name);
        let _lock = partial::sweeping();
        let dir = match open_dir(self.top_fd(), name) {
            Ok(d) => d,
            Err(Errno::NOENT) => return,
            Err(e) => return self.fail("opening", &path, e),
        };
        let dir = std::fs::File::from(dir);
        if partial::is_running(&dir) {
            return;
        }
        match remove_all(&dir)
            .and_then(|()| rustix::fs::unlinkat(self.top_fd(), name, AtFlags::REMOVEDIR))
        {
            Ok(()) => self.swept.removed.push(path),
            Err(e) => self.fail("removing", &path, e),
        }
    }

    /// Whether `name` is a temporary file this receiver made: named after its pid
    /// (`.zrecv-PID-…` or `.zrecv-link-PID-…`) and changed since it started. A file of another
    /// process that had the same pid (a restarted container) changed before that.
    fn is_own_in_flight(&self, name: &str, st: &Stat) -> bool {
        let Some((pid, since)) = &self.own else {
            return false;
        };
        let rest = name.strip_prefix(TEMP_PREFIX).unwrap_or(name);
        let rest = rest.strip_prefix("link-").unwrap_or(rest);
        let named_ours = rest.split_once('-').is_some_and(|(p, _)| p == pid);
        named_ours && time(st.st_ctime, st.st_ctime_nsec) + CLOCK_SLACK >= *since
    }

    fn fail(&mut self, what: &str, path: &std::path::Path, e: Errno) {
        log::warn!("sweeping stale partials: {what} {}: {e}", show(path));
        self.swept.errors += 1;
    }
}

/// Whether a running transfer holds the partial `name` in `dir`, or the partial whose record
/// `name` is: it keeps the file locked from start to end, whatever its mtime says (a file about
/// to land already carries its source's mtime, perhaps years old, until it is renamed).
fn is_held(dir: BorrowedFd<'_>, name: &str) -> bool {
    let part = match name.strip_suffix(".resume") {
        Some(stem) => format!("{stem}.part"),
        None => name.to_owned(),
    };
    // This process's own are known without opening them (see `partial::Held`); another
    // process's are asked of their lock.
    let st = rustix::fs::statat(dir, part.as_str(), AtFlags::SYMLINK_NOFOLLOW);
    if st.is_ok_and(|st| partial::held_here(st.st_dev, st.st_ino)) {
        return true;
    }
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
    rustix::fs::openat(dir, part.as_str(), flags | OFlags::CLOEXEC, Mode::empty())
        .is_ok_and(|fd| partial::is_running(&std::fs::File::from(fd)))
}

/// Removes everything in the directory `dir`, depth first, never following a symlink (each
/// subdirectory opened with `O_NOFOLLOW | O_DIRECTORY` from its parent).
fn remove_all(dir: impl AsFd) -> rustix::io::Result<()> {
    let dir = dir.as_fd();
    let mut listing = Dir::read_from(dir)?;
    let mut names = Vec::new();
    while let Some(entry) = listing.read() {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    for name in names {
        match rustix::fs::unlinkat(dir, name.as_c_str(), AtFlags::empty()) {
            Err(Errno::ISDIR) | Err(Errno::PERM) => {
                let sub = open_dir(dir, &name)?;
                remove_all(&sub)?;
                rustix::fs::unlinkat(dir, name.as_c_str(), AtFlags::REMOVEDIR)?;
            }
            other => other?,
        }
    }
    Ok(())
}

/// Opens the directory `name` beneath `parent`, never following a symlink.
fn open_dir(parent: impl AsFd, name: &CStr) -> rustix::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(parent, name, flags, Mode::empty())
}

/// A file time as a `SystemTime` (before the epoch: the epoch, which is old enough).
fn time(sec: i64, nsec: impl TryInto<u32>) -> SystemTime {
    let nsec = nsec.try_into().unwrap_or(0).min(999_999_999);
    match u64::try_from(sec) {
        Ok(sec) => UNIX_EPOCH + Duration::new(sec, nsec),
        Err(_) => UNIX_EPOCH,
    }
}

/// A path for the log, control characters escaped.
pub(crate) fn show(path: &std::path::Path) -> String {
    Escaped(path.as_os_str().as_encoded_bytes()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::path::Path;

    use rustix::fs::{Timespec, Timestamps};

    fn age(path: &Path, secs: u64) {
        let when = SystemTime::now() - Duration::from_secs(secs);
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }

    fn plant(path: &Path, old: bool) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"partial").unwrap();
        if old {
            age(path, 3 * 3600);
        }
    }

    fn open(path: &Path) -> OwnedFd {
        rustix::fs::open(path, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap()
    }

    fn removed(swept: &Swept) -> Vec<String> {
        let mut v: Vec<String> = swept
            .removed
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    /// Sets the mtime of a directory `secs` ago.
    fn age_dir(path: &Path, secs: u64) {
        let when = Timespec {
            tv_sec: (SystemTime::now() - Duration::from_secs(secs))
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64,
            tv_nsec: 0,
        };
        let times = Timestamps {
            last_access: when,
            last_modification: when,
        };
        rustix::fs::utimensat(rustix::fs::CWD, path, &times, AtFlags::empty()).unwrap();
    }

    #[test]
    fn an_abandoned_hidden_tree_goes_whole_and_one_in_use_stays() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("recv");
        std::fs::create_dir(&root).unwrap();
        let fd = open(&root);
        let stage = |key: &str| format!(".zrecv-{}.stage", key.repeat(32));
        for key in ["a", "b", "c"] {
            let dir = root.join(stage(key));
            plant(&dir.join("sub/deeper/landed"), false);
            std::os::unix::fs::symlink("/etc", dir.join("sub/link")).unwrap();
        }
        // b is old but a transfer holds it; c is young.
        let (held, made) = partial::take_stage(&fd, &stage("b")).unwrap();
        assert!(!made);
        for key in ["a", "b"] {
            age_dir(&root.join(stage(key)), 3 * 3600);
        }
        let swept = sweep(fd.as_fd(), Duration::from_secs(3600), None);
        assert_eq!(removed(&swept), [stage("a")]);
        assert!(!root.join(stage("a")).exists());
        assert!(root.join(stage("b")).join("sub/deeper/landed").exists());
        assert!(root.join(stage("c")).join("sub/deeper/landed").exists());
        // The link was removed, never followed.
        assert!(Path::new("/etc").exists());
        drop(held);
        age_dir(&root.join(stage("b")), 3 * 3600);
        let swept = sweep(fd.as_fd(), Duration::from_secs(3600), None);
        assert_eq!(removed(&swept), [stage("b")]);
    }

    /// Only a hidden tree where zrecv makes them, and its own, is removed whole: a directory
    /// renamed to such a name deeper down (by a user who may rename entries there but could not
    /// empty it), one at the top that someone else owns, or one named otherwise, is not.
    #[test]
    fn a_directory_renamed_to_look_like_a_hidden_tree_is_not_emptied() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("recv");
        let stage = format!(".zrecv-{KEY}.stage");
        let planted = [
            format!("shared/{stage}"),
            stage.clone(),
            ".zrecv-not-hex.stage".to_owned(),
        ];
        for dir in &planted {
            plant(&root.join(dir).join("victim/data"), false);
            age_dir(&root.join(dir), 3 * 3600);
        }
        // The one at the top belongs to nobody (the tests run as root).
        let top = root.join(&stage);
        let nobody = Some(rustix::fs::Uid::from_raw(65534));
        rustix::fs::chown(&top, nobody, None).expect("the tests run as root");
        let fd = open(&root);
        let swept = sweep(fd.as_fd(), Duration::from_secs(3600), None);
        assert_eq!(removed(&swept), Vec::<String>::new());
        for dir in &planted {
            assert!(root.join(dir).join("victim/data").exists(), "{dir}");
        }
        // Its own, at the top: removed whole.
        rustix::fs::chown(&top, Some(rustix::process::geteuid()), None).unwrap();
        age_dir(&top, 3 * 3600);
        let swept = sweep(fd.as_fd(), Duration::from_secs(3600), None);
        assert_eq!(removed(&swept), [stage]);
    }

    #[test]
    fn old_hidden_files_go_at_every_depth_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("recv");
        let outside = tmp.path().join("outside");
        let part = format!(".zrecv-{KEY}.part");
        let resume = format!(".zrecv-{KEY}.resume");
        let old = [
            part.clone(),
            format!("a/{resume}"),
            format!("a/{part}"),
            format!("a/b/c/{part}"),
            ".zrecv-1-0-00000000.part".to_owned(),
            "a/b/.zrecv-2-7-0badcafe.part".to_owned(),
        ];
        for p in &old {
            plant(&root.join(p), true);
        }
        let young = [resume.clone(), format!("a/b/c/{resume}")];
        for p in &young {
            plant(&root.join(p), false);
        }
        // Not hidden files of the receiver: kept however old.
        let other = ["keep.part", "a/.zrecv-notes.txt", "a/b/c/disk.img"];
        for p in other {
            plant(&root.join(p), true);
        }
        // A hidden name that is a directory is walked, not removed.
        plant(&root.join(format!("d/.zrecv-x.part/{part}")), true);
        // A symlink to a directory outside, whose old hidden file must stay.
        plant(&outside.join(&part), true);
        std::os::unix::fs::symlink(&outside, root.join("a/escape")).unwrap();

        let swept = sweep(open(&root).as_fd(), Duration::from_secs(3600), None);
        assert_eq!(swept.errors, 0);
        let mut want: Vec<String> = old.to_vec();
        want.push(format!("d/.zrecv-x.part/{part}"));
        want.sort();
        assert_eq!(removed(&swept), want);
        for p in &old {
            assert!(!root.join(p).exists(), "{p}");
        }
        for p in young.iter().map(String::as_str).chain(other) {
            assert!(root.join(p).exists(), "{p}");
        }
        assert!(outside.join(&part).exists(), "the sweep followed a symlink");
        assert!(root.join("a/escape").symlink_metadata().is_ok());
    }

    #[test]
    fn deep_trees_are_walked_with_few_descriptors() {
        let tmp = tempfile::tempdir().unwrap();
        let mut dir = tmp.path().to_owned();
        let mut want = Vec::new();
        let mut rel = PathBuf::new();
        for depth in 0..12 {
            // Siblings at every level, so the walk comes back to closed directories.
            for sibling in ["x", "y"] {
                let p = rel.join(sibling).join(".zrecv-1-0-0.part");
                plant(&tmp.path().join(&p), true);
                want.push(p.to_string_lossy().into_owned());
            }
            rel.push(format!("d{depth}"));
            dir.push(format!("d{depth}"));
        }
        let p = rel.join(".zrecv-1-0-0.part");
        plant(&tmp.path().join(&p), true);
        want.push(p.to_string_lossy().into_owned());
        want.sort();
        let root = open(tmp.path());
        let swept = Walk {
            root: root.as_fd(),
            cutoff: SystemTime::now().checked_sub(Duration::from_secs(60)),
            own: None,
            max_open: 3,
            frames: Vec::new(),
            swept: Swept::default(),
        }
        .run();
        assert_eq!(swept.errors, 0);
        assert_eq!(removed(&swept), want);
    }

    #[test]
    fn own_temporary_files_in_flight_are_spared() {
        let tmp = tempfile::tempdir().unwrap();
        let started = SystemTime::now();
        let ours = format!(".zrecv-{}-3-00000000.part", partial::pid());
        let link = format!(".zrecv-link-{}-3.part", partial::pid());
        plant(&tmp.path().join(&ours), true);
        let theirs = tmp.path().join(".zrecv-1-3-00000000.part");
        plant(&theirs, true);
        let root = open(tmp.path());
        std::os::unix::fs::symlink("target", tmp.path().join(&link)).unwrap();
        let old = Timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 0,
        };
        let times = Timestamps {
            last_access: old,
            last_modification: old,
        };
        rustix::fs::utimensat(&root, link.as_str(), &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
        let hour = Duration::from_secs(3600);
        let swept = sweep(root.as_fd(), hour, Some(started));
        assert_eq!(removed(&swept), vec![".zrecv-1-3-00000000.part"]);
        assert!(tmp.path().join(&ours).exists());
        // Before this receiver started, a file named after its pid was another process's.
        let later = SystemTime::now() + Duration::from_secs(60);
        let swept = sweep(root.as_fd(), hour, Some(later));
        let mut want = vec![link, ours];
        want.sort();
        assert_eq!(removed(&swept), want);
    }

    #[test]
    fn a_partial_taken_up_by_a_transfer_is_young() {
        use crate::wire::{Header, SOURCE_ID_LEN};
        use std::io::Write;
        let tmp = tempfile::tempdir().unwrap();
        let dir = open(tmp.path());
        let header = Header {
            mtime_sec: 1_700_000_000,
            source_id: Some([7; SOURCE_ID_LEN]),
            ..Header::new("disk.img", 10)
        };
        let temp = partial::TempFile::create(&dir).unwrap();
        (&temp.file).write_all(b"hello").unwrap();
        partial::keep(temp, &header, 5);
        for e in std::fs::read_dir(tmp.path()).unwrap() {
            age(&e.unwrap().path(), 3 * 3600);
        }
        let (taken, held) = partial::take(&dir, &header).expect("kept");
        assert_eq!(held, 5);
        let swept = sweep(dir.as_fd(), Duration::from_secs(3600), None);
        assert!(swept.removed.is_empty(), "{:?}", swept.removed);
        assert!(tmp.path().join(&taken.name).exists());
    }

    #[test]
    fn a_partial_a_transfer_holds_stays_whatever_its_mtime() {
        use crate::wire::{Header, SOURCE_ID_LEN};
        let tmp = tempfile::tempdir().unwrap();
        let dir = open(tmp.path());
        let header = Header {
            mtime_sec: 1_600_000_000,
            source_id: Some([7; SOURCE_ID_LEN]),
            ..Header::new("disk.img", 0)
        };
        // A transfer that can resume runs as its own partial; just before the rename, the file
        // takes its source's mtime (as `set_metadata` does), and its record may be old too.
        let temp = partial::start(&dir, &header).unwrap();
        for e in std::fs::read_dir(tmp.path()).unwrap() {
            age(&e.unwrap().path(), 3 * 3600);
        }
        let swept = sweep(dir.as_fd(), Duration::from_secs(3600), None);
        assert!(swept.removed.is_empty(), "{:?}", swept.removed);
        assert_eq!(swept.errors, 0);
        assert!(tmp.path().join(&temp.name).exists());
        // This process's own is known without its lock (which a POSIX-lock flock, as on NFS,
        // would lose when the sweep closed its probe).
        rustix::fs::flock(&temp.file, rustix::fs::FlockOperation::Unlock).unwrap();
        let swept = sweep(dir.as_fd(), Duration::from_secs(3600), None);
        assert!(swept.removed.is_empty(), "{:?}", swept.removed);
        // Once the transfer lets go (here: the file is closed and kept), they are stale.
        let name = temp.name.clone();
        temp.disarm();
        let swept = sweep(dir.as_fd(), Duration::from_secs(3600), None);
        let mut want = vec![name.clone(), name.replace(".part", ".resume")];
        want.sort();
        assert_eq!(removed(&swept), want);
    }

    #[test]
    fn the_roots_of_a_tree_that_is_gone_go_once_settled() {
        use std::os::unix::ffi::OsStrExt;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let roots = |top: &[u8]| partial::hidden_name(&text_key(top), "roots");
        let not_text = b"caf\xe9";
        std::fs::create_dir(root.join("kept")).unwrap();
        std::fs::create_dir(root.join(OsStr::from_bytes(not_text))).unwrap();
        let stage = partial::hidden_name("building", "stage");
        let _building = partial::take_stage(open(root), &stage).unwrap();
        let tops: [&[u8]; 5] = [b"kept", not_text, b"building", b"gone", b"just-gone"];
        for top in tops {
            std::fs::write(root.join(roots(top)), b"roots").unwrap();
            if top != b"just-gone" {
                age(&root.join(roots(top)), 3600);
            }
        }
        let swept = sweep(open(root).as_fd(), Duration::from_secs(86400), None);
        assert_eq!(swept.errors, 0);
        assert!(swept.removed.is_empty(), "{:?}", swept.removed);
        assert_eq!(swept.forgotten, [PathBuf::from(roots(b"gone"))]);
        for top in [&b"kept"[..], not_text, b"building", b"just-gone"] {
            assert!(root.join(roots(top)).exists(), "{}", Escaped(top));
        }
    }

    /// The piece layer of a file that is gone goes; those of files still there (in the
    /// directory itself or a subdirectory), a young one, and anything that is not a sidecar
    /// stay.
    #[test]
    fn the_piece_layer_of_a_file_that_is_gone_goes_once_settled() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir(root.join("sub")).unwrap();
        let sidecar = |dir: &Path, name: &str, ino: u64, old: bool| {
            let path = dir.join(partial::hidden_name(name, "pieces"));
            let text = format!(
                "{}\nid 5 {ino} 1 2 3 4\n{} 1\n",
                partial::PIECES_MAGIC,
                "0".repeat(64)
            );
            std::fs::write(&path, text).unwrap();
            if old {
                age(&path, 3600);
            }
            path
        };
        std::fs::write(root.join("kept.img"), b"kept").unwrap();
        std::fs::write(root.join("sub/deep.img"), b"deep").unwrap();
        let ino = |p: &str| std::fs::metadata(root.join(p)).unwrap().ino();
        let kept = sidecar(root, "kept.img", ino("kept.img"), true);
        let deep = sidecar(&root.join("sub"), "deep.img", ino("sub/deep.img"), true);
        // Its file deleted: an inode nothing in the directory has.
        let gone = sidecar(root, "gone.img", ino("sub/deep.img") + 1_000_000, true);
        let young = sidecar(root, "young.img", ino("sub/deep.img") + 2_000_000, false);
        let not_one = root.join(partial::hidden_name("odd", "pieces"));
        std::fs::write(&not_one, b"something else").unwrap();
        age(&not_one, 3600);
        let swept = sweep(open(root).as_fd(), Duration::from_secs(86400), None);
        assert_eq!(swept.errors, 0);
        assert!(swept.removed.is_empty(), "{:?}", swept.removed);
        let name = gone.file_name().unwrap();
        assert_eq!(swept.forgotten, [PathBuf::from(name)]);
        assert!(!gone.exists());
        for stays in [kept, deep, young, not_one] {
            assert!(stays.exists(), "{}", stays.display());
        }
    }

    #[test]
    fn ages_parse_and_show() {
        for (text, secs) in [
            ("90s", 90),
            ("90", 90),
            ("30m", 1800),
            ("12h", 43200),
            ("2d", 172800),
        ] {
            assert_eq!(parse_age(text), Ok(Duration::from_secs(secs)), "{text}");
        }
        for bad in [
            "",
            "0",
            "0s",
            "s",
            "1.5h",
            "-1",
            "1w",
            "1 d",
            "99999999999999999999d",
        ] {
            assert!(parse_age(bad).is_err(), "{bad:?}");
        }
        for (secs, text) in [
            (90, "90s"),
            (1800, "30m"),
            (3600, "1h"),
            (86400, "1d"),
            (0, "0s"),
        ] {
            assert_eq!(Age(Duration::from_secs(secs)).to_string(), text);
        }
    }

    #[test]
    fn the_interval_is_a_quarter_of_the_age_within_bounds() {
        let s = Duration::from_secs;
        assert_eq!(sweep_interval(s(2)), s(1));
        assert_eq!(sweep_interval(s(120)), s(30));
        assert_eq!(sweep_interval(s(86400)), s(3600));
    }
}
