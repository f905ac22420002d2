//! Hidden files in the destination directory: the temporary file of each transfer in flight,
//! and the partial file an interrupted transfer leaves for the next attempt to resume.
//!
//! A kept partial is a pair named after a digest of the final name:
//! `.zrecv-KEY.part` (the bytes received) and `.zrecv-KEY.resume` (a record of what they belong
//! to: name, size, mtime, the sender's identity of its file, and how many bytes are held). The
//! record only says which file the partial may belong to; the bytes themselves are trusted only
//! once their tree root matches the sender's proof (see docs/PROTOCOL.md, resume). A partial
//! kept by a receiver that was not killed also has its pieces' roots in its record, made when
//! its bytes were durable, so that resuming reads none of them back.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use crate::hash::{Hash, PieceLog, PIECE};
use crate::name::{Escaped, TEMP_PREFIX};
use crate::wire::{Header, SOURCE_ID_LEN};

mod agree;
mod list;
pub(crate) mod sweep;

pub(crate) use agree::{resume_point, start_at};
pub use list::{kept_partials, remove_partial, KeptPartial};

/// Longest record read back, before its pieces: a real one is under 1 KiB.
const MAX_RECORD_LEN: u64 = 4096;
/// Longest line of a record's piece roots.
const PIECE_LINE: u64 = 96;
/// First line of a record.
const RECORD_MAGIC: &str = "zrecv partial 1";

/// A hidden temporary file in a destination directory (`dir`, a handle such as `&OwnedFd` or
/// `Arc<OwnedFd>`), removed on drop unless published or kept for resuming.
pub(crate) struct TempFile<D: AsFd> {
    pub(crate) dir: D,
    pub(crate) name: String,
    pub(crate) file: File,
    /// The roots of the pieces hashed so far (a file that can resume logs them).
    pub(crate) pieces: PieceLog,
    /// The mode it was made with, when it has exactly that one (see [`TempFile::create_as`]):
    /// nothing needs to set it again.
    pub(crate) made_with: Option<u32>,
    /// For a partial a transfer runs on: known to the sweep as this process's, until dropped.
    _held: Option<Held>,
    armed: bool,
}

impl<D: AsFd> TempFile<D> {
    /// Whether this is a partial kept for resuming (it may have a record beside it).
    pub(crate) fn is_kept(&self) -> bool {
        self._held.is_some()
    }

    /// Creates `.zrecv-….part` beneath `dir`, never following a symlink and never reusing a name.
    pub(crate) fn create(dir: D) -> io::Result<TempFile<D>> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        loop {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let name = format!(
                "{TEMP_PREFIX}{}-{}-{nanos:08x}.part",
                pid(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL;
            match open_beneath(&dir, &name, flags) {
                Ok(fd) => {
                    return Ok(TempFile {
                        dir,
                        name,
                        file: File::from(fd),
                        pieces: PieceLog::default(),
                        made_with: None,
                        _held: None,
                        armed: true,
                    })
                }
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Creates `name` itself beneath `dir` (which must not hold it): for a file of a tree built
    /// under a hidden name, where it needs no name of its own before it lands. Removed when
    /// dropped armed, as any temporary file.
    ///
    /// It is made with `mode` (0600 without), which the caller knows it gets whole: no bit of
    /// it in the umask, and `dir` as `sys::gives_modes_whole` requires (the hidden tree is
    /// closed to others meanwhile).
    pub(crate) fn create_as(dir: D, name: String, mode: Option<u32>) -> io::Result<TempFile<D>> {
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL;
        let fd = match mode {
            Some(m) => open_beneath_as(&dir, &name, flags, Mode::from_raw_mode(m))?,
            None => open_beneath(&dir, &name, flags)?,
        };
        Ok(TempFile {
            dir,
            name,
            file: File::from(fd),
            pieces: PieceLog::default(),
            made_with: mode,
            _held: None,
            armed: true,
        })
    }

    /// Keeps the file: it has been renamed into place.
    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }
}

impl<D: AsFd> Drop for TempFile<D> {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = rustix::fs::unlinkat(&self.dir, self.name.as_str(), AtFlags::empty()) {
                log::warn!("removing temporary file {}: {e}", self.name);
            }
        }
    }
}

/// This process's id, asked of the kernel once.
pub(crate) fn pid() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

/// A fresh hidden name for something made before it is renamed into place (a link, a special
/// file, a hard link): `.zrecv-link-PID-N.part`, swept with the partials if left behind (and
/// known to the sweep as this process's own while it runs).
pub(crate) fn scratch_name() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}link-{}-{n}.part", crate::name::TEMP_PREFIX, pid())
}

/// Whether `name` is the hidden directory of a new tree being built (`.zrecv-KEY.stage`).
pub(crate) fn is_stage(name: &str) -> bool {
    (name.strip_prefix(TEMP_PREFIX))
        .and_then(|n| n.strip_suffix(".stage"))
        .is_some_and(|key| key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Makes the hidden directory `name` of a new tree in `root`, or takes up the one an
/// interrupted transfer left (`false`: it was there). Either way it is in use for as long as
/// the handle returned is open: its mtime is now, and a shared lock tells the sweep (which
/// cannot come between the two) to leave it.
pub(crate) fn take_stage(root: impl AsFd, name: &str) -> io::Result<(OwnedFd, bool)> {
    let _held = hold_off();
    let made = match rustix::fs::mkdirat(&root, name, Mode::from_raw_mode(0o700)) {
        Ok(()) => true,
        Err(Errno::EXIST) => false,
        Err(e) => return Err(e.into()),
    };
    let fd = open_beneath(&root, name, OFlags::RDONLY | OFlags::DIRECTORY)?;
    mark_in_use(&fd);
    mark_running(&fd);
    Ok((fd, made))
}

/// The mode a file zrecv makes gets, unless it is made with its final one.
const PRIVATE: Mode = Mode::from_raw_mode(0o600);

/// Opens `name` strictly beneath `dir`: openat2 with RESOLVE_BENEATH and RESOLVE_NO_SYMLINKS
/// where the kernel has it, [`walk_beneath`] where it does not (ENOSYS before Linux 5.6; ENOSYS
/// or EPERM from a seccomp profile that does not know the call). New files get mode 0600.
pub(crate) fn open_beneath(
    dir: impl AsFd,
    name: impl AsRef<[u8]>,
    flags: OFlags,
) -> rustix::io::Result<OwnedFd> {
    open_beneath_as(dir, name, flags, PRIVATE)
}

/// Opens the regular file `name` beneath `dir` for reading, without waiting: another transfer
/// may have put a fifo under its name, whose open would wait for a writer. Anything but a
/// regular file is refused.
pub(crate) fn open_regular_beneath(dir: impl AsFd, name: impl AsRef<[u8]>) -> io::Result<File> {
    let fd = open_beneath(dir, name, OFlags::RDONLY | OFlags::NONBLOCK)?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(io::Error::other("not a regular file"));
    }
    // Reads of a regular file never wait anyway; splices from it must not see the flag.
    rustix::fs::fcntl_setfl(&fd, OFlags::empty())?;
    Ok(File::from(fd))
}

/// As [`open_beneath`], a new file made with `mode` (less the umask).
fn open_beneath_as(
    dir: impl AsFd,
    name: impl AsRef<[u8]>,
    flags: OFlags,
    mode: Mode,
) -> rustix::io::Result<OwnedFd> {
    let name = name.as_ref();
    let (flags, mode) = beneath_flags(flags, mode);
    match rustix::fs::openat2(
        &dir,
        name,
        flags,
        mode,
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    ) {
        // A real EPERM (O_NOATIME on another's file, an immutable file opened for writing)
        // comes back from the walk too.
        Err(Errno::NOSYS | Errno::PERM) => walk_beneath(dir, name, flags, mode),
        other => other,
    }
}

/// The flags and mode of an open beneath the receive directory: never following a symlink,
/// never inherited by a child, `mode` for a new file (openat2 refuses a mode without O_CREAT).
fn beneath_flags(flags: OFlags, mode: Mode) -> (OFlags, Mode) {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mode = match flags.contains(OFlags::CREATE) {
        true => mode,
        false => Mode::empty(),
    };
    (flags, mode)
}

/// What openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) does, without it: opens `name` beneath
/// `dir` one component at a time, each directory with
/// `openat(O_PATH | O_DIRECTORY | O_NOFOLLOW)` from the one before, the last component with
/// `flags` and O_NOFOLLOW. No symlink is followed anywhere in the path (O_NOFOLLOW alone on the
/// whole path guards only its last component).
///
/// Refuses what openat2 refuses, with its errno: an absolute name or a `..` (EXDEV), a symlink
/// in the middle (ELOOP). Stricter than openat2, it also refuses a `..` that would come back
/// down (EXDEV) and empty or `.` components (EINVAL): no name zrecv opens has one. A new file
/// gets `mode` (less the umask).
pub(crate) fn walk_beneath(
    dir: impl AsFd,
    name: impl AsRef<[u8]>,
    flags: OFlags,
    mode: Mode,
) -> rustix::io::Result<OwnedFd> {
    let name = name.as_ref();
    let (flags, mode) = beneath_flags(flags, mode);
    if name.is_empty() {
        return Err(Errno::NOENT);
    }
    if name.starts_with(b"/") {
        return Err(Errno::XDEV);
    }
    let mut parts = name.split(|b| *b == b'/');
    let last = parts.next_back().unwrap_or(name);
    let check = |part: &[u8]| match part {
        b".." => Err(Errno::XDEV),
        b"" | b"." => Err(Errno::INVAL),
        _ => Ok(()),
    };
    // O_PATH: crossing a directory needs search permission only, as in a path lookup.
    let through = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut held: Option<OwnedFd> = None;
    for part in parts {
        check(part)?;
        let at = held.as_ref().map_or(dir.as_fd(), |fd| fd.as_fd());
        let next = match rustix::fs::openat(at, part, through, Mode::empty()) {
            Ok(fd) => fd,
            // O_NOFOLLOW | O_DIRECTORY says ENOTDIR for a link; openat2 says ELOOP.
            Err(Errno::NOTDIR) => {
                let st = rustix::fs::statat(at, part, AtFlags::SYMLINK_NOFOLLOW)?;
                return Err(match FileType::from_raw_mode(st.st_mode) {
                    FileType::Symlink => Errno::LOOP,
                    _ => Errno::NOTDIR,
                });
            }
            Err(e) => return Err(e),
        };
        held = Some(next);
    }
    check(last)?;
    let at = held.as_ref().map_or(dir.as_fd(), |fd| fd.as_fd());
    rustix::fs::openat(at, last, flags, mode)
}

/// The partials this process's transfers run on, by device and inode (see [`Held`]).
static HELD: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

/// A partial this process's transfer runs on, known as such until dropped: the sweep spares it
/// without opening it. (Where flock is a POSIX lock, as on NFS, closing any descriptor of the
/// file would drop the lock the transfer holds in the same process.)
pub(crate) struct Held((u64, u64));

impl Held {
    fn new(st: &rustix::fs::Stat) -> Held {
        let key = (st.st_dev, st.st_ino);
        HELD.lock().unwrap_or_else(|p| p.into_inner()).push(key);
        Held(key)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = held.iter().position(|k| *k == self.0) {
            held.swap_remove(k);
        }
    }
}

/// Whether the file with this device and inode is a partial this process's transfer runs on.
pub(crate) fn held_here(dev: u64, ino: u64) -> bool {
    let held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    held.contains(&(dev, ino))
}

/// Taken shared while a transfer takes up a kept partial (opens it and sets its mtime to now),
/// and exclusively while the sweep examines and removes a file: the sweep never removes a
/// partial between a transfer opening it and making it young.
static TAKING: RwLock<()> = RwLock::new(());

/// Keeps the sweep off a kept partial while a transfer takes it up (see [`mark_in_use`]).
fn hold_off() -> RwLockReadGuard<'static, ()> {
    TAKING.read().unwrap_or_else(|p| p.into_inner())
}

/// Held while the sweep examines and removes a file.
pub(crate) fn sweeping() -> RwLockWriteGuard<'static, ()> {
    TAKING.write().unwrap_or_else(|p| p.into_inner())
}

/// Sets the mtime of a partial a transfer just took up to now: the sweep goes by mtime, and a
/// hidden file's mtime means nothing to anyone else.
fn mark_in_use(file: impl AsFd) {
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: rustix::fs::UTIME_NOW,
    };
    let times = Timestamps {
        last_access: now,
        last_modification: now,
    };
    if let Err(e) = rustix::fs::futimens(file, &times) {
        log::warn!("marking a partial file as in use: {e}");
    }
}
/// Marks a partial as taken by a running transfer, for as long as its file stays open: a shared
/// lock, which `--remove-partials` and the sweep (trying an exclusive one) see. It waits out
/// their brief exclusive tries rather than run unlocked.
fn mark_running(fd: impl AsFd) {
    use rustix::fs::FlockOperation;
    if let Err(e) = rustix::fs::flock(fd, FlockOperation::LockShared) {
        log::warn!("locking a partial in use: {e}");
    }
}

/// Whether a running transfer holds the partial open (see [`mark_running`]).
pub(crate) fn is_running(file: &File) -> bool {
    use rustix::fs::FlockOperation;
    match rustix::fs::flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {
            let _ = rustix::fs::flock(file, FlockOperation::Unlock);
            false
        }
        Err(_) => true,
    }
}

/// What a kept partial file belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    name: String,
    size: u64,
    mtime: (i64, u32),
    source_id: [u8; SOURCE_ID_LEN],
    sparse: bool,
    /// Bytes received, from the start of the file; `None` while the transfer runs (a receiver
    /// killed then leaves no count: the next attempt measures the file).
    held: Option<u64>,
    /// The roots of the first pieces (runs of equal roots as one entry), and the partial's
    /// ctime when they were written: any later change to the partial (which moves its ctime)
    /// makes them worthless, and its bytes are then hashed again.
    pieces: Option<(Timespec, Vec<(Hash, u64)>)>,
}

impl Record {
    /// The record of a transfer of `header` interrupted after `held` bytes; `None` if the
    /// sender cannot resume.
    fn of(header: &Header, held: Option<u64>) -> Option<Record> {
        Some(Record {
            name: header.name.clone(),
            size: header.size,
            mtime: (header.mtime_sec, header.mtime_nsec),
            source_id: header.source_id?,
            sparse: header.sparse_data_len.is_some(),
            held,
            pieces: None,
        })
    }

    /// Whether the partial belongs to the file `header` announces.
    fn belongs_to(&self, header: &Header) -> bool {
        let bare = Record {
            pieces: None,
            ..self.clone()
        };
        Record::of(header, self.held).as_ref() == Some(&bare)
            && self.held.is_none_or(|held| held <= self.size)
    }

    fn encode(&self) -> String {
        let mut text = format!(
            "{RECORD_MAGIC}\nname {}\nsize {}\nmtime {} {}\nsource {}\nsparse {}\nheld {}\n",
            hex::encode(&self.name),
            self.size,
            self.mtime.0,
            self.mtime.1,
            hex::encode(self.source_id),
            u8::from(self.sparse),
            self.held.map_or("?".into(), |h| h.to_string())
        );
        if let Some((ctime, pieces)) = &self.pieces {
            text += &format!("ctime {} {}\n", ctime.tv_sec, ctime.tv_nsec);
            for (root, n) in pieces {
                text += &format!("pieces {} {n}\n", hex::encode(root));
            }
        }
        text
    }

    /// The longest record a file of `size` bytes can have.
    fn max_len(size: u64) -> u64 {
        MAX_RECORD_LEN.saturating_add((size / PIECE + 1).saturating_mul(PIECE_LINE))
    }

    /// Parses a record; `None` for anything but exactly what [`Record::encode`] writes.
    fn decode(text: &str) -> Option<Record> {
        let mut lines = text.lines();
        if lines.next()? != RECORD_MAGIC {
            return None;
        }
        let mut field = |key: &str| {
            let line = lines.next()?;
            line.strip_prefix(key)?.strip_prefix(' ').map(str::to_owned)
        };
        let name = String::from_utf8(hex::decode(field("name")?).ok()?).ok()?;
        let size = field("size")?.parse().ok()?;
        let mtime = field("mtime")?;
        let (sec, nsec) = mtime.split_once(' ')?;
        let mtime = (sec.parse().ok()?, nsec.parse().ok()?);
        let mut source_id = [0u8; SOURCE_ID_LEN];
        hex::decode_to_slice(field("source")?, &mut source_id).ok()?;
        let sparse = match field("sparse")?.as_str() {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        let held = match field("held")?.as_str() {
            "?" => None,
            n => Some(n.parse().ok()?),
        };
        let pieces = match lines.next() {
            None => None,
            Some(line) => {
                let (sec, nsec) = line.strip_prefix("ctime ")?.split_once(' ')?;
                let ctime = Timespec {
                    tv_sec: sec.parse().ok()?,
                    tv_nsec: nsec.parse().ok()?,
                };
                let mut pieces = Vec::new();
                let mut count = 0u64;
                for line in lines {
                    let (root, n) = line.strip_prefix("pieces ")?.split_once(' ')?;
                    let mut hash = [0u8; 32];
                    hex::decode_to_slice(root, &mut hash).ok()?;
                    let n: u64 = n.parse().ok()?;
                    count = count.checked_add(n)?;
                    pieces.push((hash, n));
                }
                // No more pieces than the bytes held fill.
                (count.checked_mul(PIECE)? <= held?).then_some(())?;
                Some((ctime, pieces))
            }
        };
        Some(Record {
            name,
            size,
            mtime,
            source_id,
            sparse,
            held,
            pieces,
        })
    }
}

/// The two hidden names of the partial kept for `name`.
fn kept_names(name: &str) -> (String, String) {
    (hidden_name(name, "part"), hidden_name(name, "resume"))
}

/// The hidden name, with extension `ext`, of something the receiver keeps beside `name`:
/// `.zrecv-KEY.EXT`, KEY the first 16 bytes of SHA-256 of the name in hex.
pub(crate) fn hidden_name(name: &str, ext: &str) -> String {
    let key = hex::encode(&Sha256::digest(name.as_bytes())[..16]);
    format!("{TEMP_PREFIX}{key}.{ext}")
}

/// Keeps `temp`, which holds the first `held` bytes of the file `header` announced, for a
/// later transfer of the same file to resume, in the temporary file's directory. Does nothing
/// (the temporary file is removed) when the sender cannot resume or nothing was received.
pub(crate) fn keep<D: AsFd>(temp: TempFile<D>, header: &Header, held: u64) {
    let Some(record) = Record::of(header, Some(held)).filter(|_| held > 0) else {
        // Nothing to keep: the record this transfer started goes with its file.
        if header.resumable() {
            let (_, resume) = kept_names(&header.name);
            let _ = rustix::fs::unlinkat(&temp.dir, resume.as_str(), AtFlags::empty());
        }
        return;
    };
    let (part, resume) = kept_names(&header.name);
    let dir = temp.dir.as_fd();
    let mut record = record;
    let kept = (|| -> io::Result<()> {
        if !record.sparse {
            // A partial holds what arrived and no more: truncating to its own length also
            // releases the blocks reserved for the rest, which one byte would otherwise pin.
            rustix::fs::ftruncate(&temp.file, held)?;
        }
        if temp.name != part {
            rustix::fs::renameat(dir, temp.name.as_str(), dir, part.as_str())?;
        }
        // The roots of its pieces, so that a resume reads nothing back; recorded only once the
        // bytes they vouch for are durable, with the ctime that any later change would move.
        // A failed write-back is the end of the partial: this sync takes the kernel's one
        // report of it, and its bytes may be in the page cache only, where a resume's proof
        // would find them.
        let pieces = temp.pieces.first(held / PIECE);
        if !pieces.is_empty() {
            rustix::fs::fdatasync(&temp.file)?;
            let st = rustix::fs::fstat(&temp.file)?;
            let ctime = Timespec {
                tv_sec: st.st_ctime as _,
                tv_nsec: st.st_ctime_nsec as _,
            };
            record.pieces = Some((ctime, pieces));
        }
        write_record(dir, &record, &resume)
    })();
    match kept {
        Ok(()) => {
            temp.disarm();
            log::info!(
                "kept {held} bytes of {} in {part} to resume from",
                Escaped(&header.name)
            );
        }
        Err(e) => {
            log::warn!("keeping the partial {}: {e}", Escaped(&header.name));
            forget(dir, &header.name);
        }
    }
}

/// Starts the temporary file of a transfer that can resume under its kept name, with a record
/// that does not say yet how much it holds: a receiver killed outright, or a machine that lost
/// power, still leaves a partial the next attempt takes up for what it can verify (see
/// [`take`]). An interrupted transfer's [`keep`] then writes the count.
pub(crate) fn start<D: AsFd>(dir: D, header: &Header) -> io::Result<TempFile<D>> {
    let record = Record::of(header, None).ok_or(io::ErrorKind::InvalidInput)?;
    let (part, resume) = kept_names(&header.name);
    // A part without its record (a crash between the two) is ours to reuse: the name is claimed.
    // The sweep does not come between opening it and locking it (see `sweep::is_held`).
    let sweep = hold_off();
    let fd = open_beneath(&dir, &part, OFlags::RDWR | OFlags::CREATE | OFlags::TRUNC)?;
    mark_running(&fd);
    let held = rustix::fs::fstat(&fd).ok().map(|st| Held::new(&st));
    drop(sweep);
    let temp = TempFile {
        dir,
        name: part,
        file: File::from(fd),
        pieces: PieceLog::default(),
        made_with: None,
        _held: held,
        armed: true,
    };
    write_record(temp.dir.as_fd(), &record, &resume)?;
    Ok(temp)
}

/// How far apart the durable checkpoints of a running transfer are (see [`checkpoint`]).
pub(crate) const CHECKPOINT: u64 = 256 << 20;

/// A durable checkpoint of a running transfer that [`start`]ed as its own partial: its first
/// `held` bytes are made durable (fdatasync), then its record says it holds them, so that even
/// a power loss leaves them to resume from. Only a hint: the sender's proof still decides what
/// is kept, and failing to write the record is logged and costs nothing else. An error is a
/// failed write-back of the file, which the final fsync would no longer report (the kernel
/// reports it once per open file): the file cannot be trusted to be on disk.
pub(crate) fn checkpoint<D: AsFd>(
    temp: &TempFile<D>,
    header: &Header,
    held: u64,
) -> io::Result<()> {
    let (part, resume) = kept_names(&header.name);
    let Some(record) = Record::of(header, Some(held)).filter(|_| temp.name == part) else {
        return Ok(());
    };
    rustix::fs::fdatasync(&temp.file)?;
    match write_record_synced(&temp.dir, &record, &resume, true) {
        Ok(()) => log::debug!("{}: {held} bytes durable", Escaped(&header.name)),
        Err(e) => log::debug!("checkpointing {}: {e}", Escaped(&header.name)),
    }
    Ok(())
}

/// Writes `record` as `resume` in `dir`, whole or not at all (a temporary file renamed over it).
fn write_record(dir: impl AsFd, record: &Record, resume: &str) -> io::Result<()> {
    write_record_synced(dir, record, resume, false)
}

/// As [`write_record`]; with `sync`, the record's bytes are durable before the rename.
fn write_record_synced(
    dir: impl AsFd,
    record: &Record,
    resume: &str,
    sync: bool,
) -> io::Result<()> {
    let note = TempFile::create(dir.as_fd())?;
    (&note.file).write_all(record.encode().as_bytes())?;
    if sync {
        rustix::fs::fdatasync(&note.file)?;
    }
    rustix::fs::renameat(&note.dir, note.name.as_str(), &note.dir, resume)?;
    note.disarm();
    Ok(())
}

/// Records the partial `temp` taken up for `header` as in use again: until the transfer ends, a
/// record without a count, as [`start`] writes, so that a receiver killed now still leaves it to
/// resume from.
pub(crate) fn resume_started<D: AsFd>(temp: &TempFile<D>, header: &Header) {
    let Some(record) = Record::of(header, None) else {
        return;
    };
    let (_, resume) = kept_names(&header.name);
    if let Err(e) = write_record(&temp.dir, &record, &resume) {
        log::warn!(
            "recording the partial {} in use: {e}",
            Escaped(&header.name)
        );
    }
}

/// Ends a transfer that will not resume (it failed, not interrupted): its temporary file and,
/// for one that could resume, the record it started.
pub(crate) fn discard<D: AsFd>(temp: TempFile<D>, header: &Header) {
    if header.resumable() {
        let (_, resume) = kept_names(&header.name);
        let _ = rustix::fs::unlinkat(&temp.dir, resume.as_str(), AtFlags::empty());
    }
}

/// The partial kept for the file `header` announces, ready to go on writing, and how many bytes
/// it holds. A partial kept for another version of the name (another size, mtime or source)
/// is removed. Its record is removed as soon as the partial is taken: if this attempt fails too,
/// [`keep`] writes a new one.
pub(crate) fn take<D: AsFd>(dir: D, header: &Header) -> Option<(TempFile<D>, u64)> {
    if !header.resumable() {
        return None;
    }
    let (part, resume) = kept_names(&header.name);
    let record = match open_beneath(&dir, &resume, OFlags::RDONLY) {
        Ok(fd) => {
            let mut text = String::new();
            let read = File::from(fd)
                .take(Record::max_len(header.size))
                .read_to_string(&mut text);
            read.ok().and_then(|_| Record::decode(&text))
        }
        Err(Errno::NOENT) => return None,
        Err(_) => None,
    };
    let usable = record.filter(|r| r.belongs_to(header));
    let taken = usable.and_then(|r| {
        // Made young at once, so that the stale-partial sweep leaves it alone while in use.
        let _sweep = hold_off();
        let fd = open_beneath(&dir, &part, OFlags::RDWR).ok()?;
        let st = rustix::fs::fstat(&fd).ok()?;
        // Its pieces' roots count only if nothing touched it since they were recorded.
        let pieces = match r.pieces {
            Some((ctime, pieces))
                if ctime.tv_sec == st.st_ctime as i64 && ctime.tv_nsec == st.st_ctime_nsec as _ =>
            {
                pieces
            }
            _ => Vec::new(),
        };
        mark_in_use(&fd);
        mark_running(&fd);
        let held_here = Held::new(&st);
        let is_file = FileType::from_raw_mode(st.st_mode) == FileType::RegularFile;
        let len = st.st_size as u64;
        let file = File::from(fd);
        // Without a count (its receiver was killed), what the file holds: a dense partial is as
        // long as what was written, and a sparse one's records came in order, so it holds up
        // to its last data. Only what the sender's proof then matches is trusted.
        let held = match r.held {
            Some(held) => held,
            None if r.sparse => last_data_end(&file, len).ok()?,
            None => len,
        };
        // A dense partial is as long as what was written; a sparse one has the full size.
        let fits = if r.sparse {
            len == r.size
        } else {
            len >= held && held <= r.size
        };
        (is_file && fits).then_some((file, held, pieces, held_here))
    });
    let _ = rustix::fs::unlinkat(&dir, resume.as_str(), AtFlags::empty());
    match taken {
        Some((file, held, pieces, held_here)) => Some((
            TempFile {
                dir,
                name: part,
                file,
                pieces: PieceLog::with(pieces),
                made_with: None,
                _held: Some(held_here),
                armed: true,
            },
            held,
        )),
        None => {
            log::info!(
                "removing a partial of {} that belongs to another version of it",
                Escaped(&header.name)
            );
            let _ = rustix::fs::unlinkat(&dir, part.as_str(), AtFlags::empty());
            None
        }
    }
}

/// Where the last data extent of a `len`-byte sparse file ends (0 for all holes).
fn last_data_end(file: &File, len: u64) -> io::Result<u64> {
    let (mut pos, mut end) = (0, 0);
    while let Some((_, to)) = crate::sys::next_data(file, pos, len)? {
        (pos, end) = (to, to);
    }
    Ok(end)
}

/// Removes whatever partial is kept for `name` (it landed, or keeping it failed).
pub(crate) fn forget(dir: impl AsFd, name: &str) {
    let (part, resume) = kept_names(name);
    for n in [resume, part] {
        match rustix::fs::unlinkat(&dir, n.as_str(), AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => log::warn!("removing {n}: {e}"),
        }
    }
}

/// First line of a piece-layer sidecar (`.zrecv-KEY.pieces`, written by `update/cache.rs`);
/// the second is `id SIZE INODE CTIME CTIME_NS MTIME MTIME_NS` of the file it was taken of.
pub(crate) const PIECES_MAGIC: &str = "zrecv pieces 1";

/// The inode of the file a sidecar that begins with `head` was taken of.
pub(crate) fn sidecar_inode(head: &str) -> Option<u64> {
    let mut lines = head.lines();
    if lines.next()? != PIECES_MAGIC {
        return None;
    }
    let mut id = lines.next()?.strip_prefix("id ")?.split(' ');
    id.next()?;
    id.next()?.parse().ok()
}

/// Whether `name` is one of the receiver's hidden files (temporary, partial or record).
pub(crate) fn is_hidden_file(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX) && (name.ends_with(".part") || name.ends_with(".resume"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A fifo put under a file's name (by another transfer) is refused at once: its open
    /// used to wait for a writer forever, holding the transfer's slot. A regular file opens
    /// without the flag that kept the open from waiting.
    #[test]
    fn a_fifo_where_a_file_was_is_refused_without_waiting() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = File::open(tmp.path()).unwrap();
        rustix::fs::mknodat(&dir, "x", FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
        let err = open_regular_beneath(&dir, "x").unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        std::fs::write(tmp.path().join("f"), b"data").unwrap();
        let file = open_regular_beneath(&dir, "f").unwrap();
        let flags = rustix::fs::fcntl_getfl(&file).unwrap();
        assert!(!flags.contains(OFlags::NONBLOCK), "{flags:?}");
    }

    fn header(name: &str, size: u64) -> Header {
        Header {
            mtime_sec: 1_700_000_000,
            mtime_nsec: 5,
            source_id: Some([7; SOURCE_ID_LEN]),
            ..Header::new(name, size)
        }
    }

    proptest! {
        #[test]
        fn records_round_trip(name in "\\PC{1,60}", size in any::<u64>(), held in any::<u64>(), sparse in any::<bool>()) {
            let mut h = header(&name, size);
            if sparse {
                h.sparse_data_len = Some(0);
            }
            let r = Record::of(&h, Some(held)).unwrap();
            prop_assert_eq!(Record::decode(&r.encode()), Some(r));
        }

        #[test]
        fn garbage_never_decodes_or_panics(text in "\\PC{0,300}") {
            prop_assert_eq!(Record::decode(&text), None);
        }
    }

    #[test]
    fn a_record_fits_only_its_own_file() {
        let h = header("disk.img", 1000);
        let r = Record::of(&h, Some(400)).unwrap();
        assert!(r.belongs_to(&h));
        let other_size = header("disk.img", 1001);
        let other_mtime = Header {
            mtime_sec: 1,
            ..header("disk.img", 1000)
        };
        let other_source = Header {
            source_id: Some([8; SOURCE_ID_LEN]),
            ..header("disk.img", 1000)
        };
        let sparse = Header {
            sparse_data_len: Some(10),
            ..header("disk.img", 1000)
        };
        for other in [other_size, other_mtime, other_source, sparse] {
            assert!(!r.belongs_to(&other), "{other:?}");
        }
        assert!(
            !Record::of(&h, Some(1001)).unwrap().belongs_to(&h),
            "held past the end"
        );
    }

    #[test]
    fn keep_then_take_gives_back_the_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = rustix::fs::open(tmp.path(), OFlags::DIRECTORY, Mode::empty()).unwrap();
        let h = header("a b.img", 10);
        let temp = TempFile::create(&dir).unwrap();
        (&temp.file).write_all(b"hello").unwrap();
        keep(temp, &h, 5);
        let (taken, held) = take(&dir, &h).expect("kept");
        assert_eq!(held, 5);
        let mut back = String::new();
        (&taken.file).read_to_string(&mut back).unwrap();
        assert_eq!(back, "hello");
        // In use again: recorded without a count, so that a receiver killed now still leaves
        // it to resume from.
        resume_started(&taken, &h);
        let (_, resume) = kept_names("a b.img");
        let record = std::fs::read_to_string(tmp.path().join(&resume)).unwrap();
        assert!(record.ends_with("\nheld ?\n"), "{record}");
        discard(taken, &h); // it failed: nothing is kept
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_partial_left_without_a_count_is_taken_up_for_what_it_holds() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = rustix::fs::open(tmp.path(), OFlags::DIRECTORY, Mode::empty()).unwrap();
        let h = header("vm.img", 10);
        let temp = start(&dir, &h).unwrap();
        (&temp.file).write_all(b"hello wo").unwrap();
        // The receiver is killed here: nothing removes the file or counts what it holds.
        temp.disarm();
        let (taken, held) = take(&dir, &h).expect("the partial is found");
        assert_eq!(held, 8);
        discard(taken, &h);
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    /// A receive directory `dst` beside `outside`, with `dst/a/b/c` real directories,
    /// `dst/a/out` a link to `outside` and `dst/a/dangling` a link to `outside/new`.
    fn planted() -> (tempfile::TempDir, OwnedFd) {
        let tmp = tempfile::tempdir().unwrap();
        let (dst, outside) = (tmp.path().join("dst"), tmp.path().join("outside"));
        std::fs::create_dir_all(dst.join("a/b/c")).unwrap();
        std::fs::create_dir_all(outside.join("x")).unwrap();
        std::fs::write(outside.join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(&outside, dst.join("a/out")).unwrap();
        std::os::unix::fs::symlink(outside.join("new"), dst.join("a/dangling")).unwrap();
        let dir = rustix::fs::open(&dst, OFlags::DIRECTORY, Mode::empty()).unwrap();
        (tmp, dir)
    }

    /// The walk refuses `name` with `errno`, and so does openat2 where the kernel (and the
    /// seccomp profile) lets us call it.
    fn refused_like_openat2(dir: &OwnedFd, name: &str, flags: OFlags, errno: Errno) {
        let walked = walk_beneath(dir, name, flags, PRIVATE).map(drop);
        assert_eq!(walked, Err(errno), "walk {name:?}");
        let (flags, mode) = beneath_flags(flags, PRIVATE);
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS;
        match rustix::fs::openat2(dir, name, flags, mode, resolve).map(drop) {
            Err(Errno::NOSYS | Errno::PERM) => {}
            kernel => assert_eq!(kernel, Err(errno), "openat2 {name:?}"),
        }
    }

    #[test]
    fn the_walk_opens_real_directories_and_follows_no_link() {
        let (tmp, dir) = planted();
        let (rd, create) = (OFlags::RDONLY, OFlags::RDWR | OFlags::CREATE);
        let d = walk_beneath(&dir, "a/b/c", rd | OFlags::DIRECTORY, PRIVATE).unwrap();
        let real = std::fs::metadata(tmp.path().join("dst/a/b/c")).unwrap();
        let ino = std::os::unix::fs::MetadataExt::ino(&real);
        assert_eq!(rustix::fs::fstat(&d).unwrap().st_ino, ino);
        let f = walk_beneath(&dir, "a/b/c/new", create | OFlags::EXCL, PRIVATE).unwrap();
        assert_eq!(rustix::fs::fstat(&f).unwrap().st_mode & 0o777, 0o600);
        let cloexec = rustix::io::FdFlags::CLOEXEC;
        assert_eq!(rustix::io::fcntl_getfd(&f).unwrap(), cloexec);
        assert!(tmp.path().join("dst/a/b/c/new").is_file());
        // A link in the middle of the path: the one O_NOFOLLOW alone would follow.
        refused_like_openat2(&dir, "a/out/secret", rd, Errno::LOOP);
        refused_like_openat2(&dir, "a/out/x", rd | OFlags::DIRECTORY, Errno::LOOP);
        refused_like_openat2(&dir, "a/out/planted", create, Errno::LOOP);
        refused_like_openat2(&dir, "a/out/x/planted", create, Errno::LOOP);
        // A link as the last component, pointing at something or at nothing yet.
        refused_like_openat2(&dir, "a/out", rd, Errno::LOOP);
        refused_like_openat2(&dir, "a/out", rd | OFlags::DIRECTORY, Errno::NOTDIR);
        refused_like_openat2(&dir, "a/dangling", create, Errno::LOOP);
        // A file where a directory should be.
        std::fs::write(tmp.path().join("dst/a/file"), b"f").unwrap();
        refused_like_openat2(&dir, "a/file/x", create, Errno::NOTDIR);
        let outside = tmp.path().join("outside");
        assert!(!outside.join("planted").exists() && !outside.join("new").exists());
        assert!(!outside.join("x/planted").exists());
    }

    #[test]
    fn the_walk_refuses_dot_dot_absolute_and_odd_components() {
        let (tmp, dir) = planted();
        let create = OFlags::RDWR | OFlags::CREATE;
        refused_like_openat2(&dir, "../outside/planted", create, Errno::XDEV);
        refused_like_openat2(&dir, "a/../../outside/planted", create, Errno::XDEV);
        let abs = tmp.path().join("outside/planted");
        refused_like_openat2(&dir, abs.to_str().unwrap(), create, Errno::XDEV);
        refused_like_openat2(&dir, "", create, Errno::NOENT);
        assert!(!tmp.path().join("outside/planted").exists());
        // Stricter than openat2, which takes these: no name zrecv opens has them.
        for (name, errno) in [
            ("a/../a/b", Errno::XDEV),
            ("..", Errno::XDEV),
            (".", Errno::INVAL),
            ("a/./b", Errno::INVAL),
            ("a//b", Errno::INVAL),
            ("a/b/", Errno::INVAL),
        ] {
            let walked = walk_beneath(&dir, name, OFlags::RDONLY, PRIVATE).map(drop);
            assert_eq!(walked, Err(errno), "{name:?}");
        }
    }

    #[test]
    fn another_version_removes_the_partial() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = rustix::fs::open(tmp.path(), OFlags::DIRECTORY, Mode::empty()).unwrap();
        let temp = TempFile::create(&dir).unwrap();
        (&temp.file).write_all(b"hello").unwrap();
        keep(temp, &header("x", 10), 5);
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2);
        assert!(take(&dir, &header("x", 11)).is_none());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
