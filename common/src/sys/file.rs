//! Files: where a sparse file's data is, a block device's size, the open-file limit, and the
//! writeback hints that keep a receiver's footprint in the page cache small.

use std::fs::File;
use std::io;

use rustix::io::Errno;

pub use super::ffi::block_device_size;
use super::ffi::sync_range;
use super::is_unsupported;

/// The next data extent of `file` at or after `from` and below `size`, as `(start, end)`, or
/// `None` when only a hole remains (SEEK_DATA / SEEK_HOLE). A filesystem that cannot tell
/// reports everything as data.
pub fn next_data(file: &File, from: u64, size: u64) -> io::Result<Option<(u64, u64)>> {
    if from >= size {
        return Ok(None);
    }
    let start = match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(from)) {
        Ok(s) => s,
        Err(Errno::NXIO) => return Ok(None),
        Err(e) if is_unsupported(e) => return Ok(Some((from, size))),
        Err(e) => return Err(e.into()),
    };
    if start >= size {
        return Ok(None);
    }
    let end = rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(start))?.min(size);
    Ok(Some((start, end)))
}

/// Raises this process's soft limit on open files to its hard limit, as servers commonly do
/// (shells start with 1024), and returns the soft limit then in force.
pub fn raise_open_files_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    // Beyond the kernel's usual ceiling (fs.nr_open) raising fails anyway.
    const CEILING: u64 = 1 << 20;
    let mut limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(CEILING);
    let wanted = limit.maximum.unwrap_or(CEILING).min(CEILING);
    if wanted <= current {
        return current;
    }
    limit.current = Some(wanted);
    match setrlimit(Resource::Nofile, limit) {
        Ok(()) => wanted,
        Err(_) => current,
    }
}

/// This process's umask, as the kernel reports it in /proc/self/status (read once: umask(2)
/// can only be read by setting it, which would race with files made on other threads).
/// `None` where the kernel does not say.
pub fn umask() -> Option<u32> {
    static UMASK: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let value = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
        u32::from_str_radix(value.trim(), 8).ok()
    })
}

/// Whether `fd` is on a local file system whose behaviour zsend relies on where it says so:
/// ext4, XFS, Btrfs or tmpfs, which stamp times in nanoseconds from this machine's clock and
/// give a new file the mode it is made with (less the umask, or as a default ACL says). A
/// network or FUSE file system may do otherwise. False when unsure.
pub fn is_local_fs(fd: impl std::os::fd::AsFd) -> bool {
    const EXT4: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    const BTRFS: i64 = 0x9123_683E;
    const TMPFS: i64 = 0x0102_1994;
    rustix::fs::fstatfs(fd).is_ok_and(|fs| matches!(fs.f_type, EXT4 | XFS | BTRFS | TMPFS))
}

/// Whether a file made in the directory `dir` gets the mode it is made with, less the umask:
/// `dir` is on a local file system ([`is_local_fs`]) and has no default ACL (which would decide
/// instead). False when unsure.
pub fn gives_modes_whole(dir: impl std::os::fd::AsFd) -> bool {
    is_local_fs(&dir)
        && matches!(
            rustix::fs::fgetxattr(&dir, "system.posix_acl_default", &mut [0u8; 0][..]),
            Err(Errno::NODATA) | Err(Errno::OPNOTSUPP)
        )
}

/// Keeps a receiver's footprint in the page cache to a few windows: starts writeback of each
/// full window as soon as it is written, waits for the window before it to reach the disk, and
/// drops from the page cache what is both on disk and already hashed. The final fsync then has
/// little left to do, a huge transfer does not evict everything else from the page cache, and
/// the pages it frees are reused for the next window while they are still warm.
///
/// These are hints: durability still comes from the fsync at the end. But waiting for a
/// window takes the report of a write-back error that the fsync would otherwise have given
/// (the kernel reports it once per open file), so [`DropBehind::advance`] returns it.
pub struct DropBehind {
    window: u64,
    kicked: u64,
    durable: u64,
    dropped: u64,
}

impl DropBehind {
    /// Works in windows of `window` bytes, from byte `start` of the file: bytes before it were
    /// written earlier (a resumed transfer) and are left to the final fsync.
    pub fn starting_at(start: u64, window: u64) -> DropBehind {
        let window = window.max(1);
        let first = start / window * window;
        DropBehind {
            window,
            kicked: first,
            durable: first,
            dropped: first,
        }
    }

    /// Bytes up to `written` are in the file and bytes up to `hashed` have been read back.
    /// A jump over many windows (a hole) costs one call, not one per window. An error is a
    /// failed write-back of the file, which the final fsync would no longer report: the file
    /// cannot be trusted to be on disk.
    pub fn advance(&mut self, file: &File, written: u64, hashed: u64) -> io::Result<()> {
        let whole = written / self.window * self.window;
        if whole > self.kicked {
            // Starting write-back takes no error report: a failure here is the fsync's to say.
            let kick = libc::SYNC_FILE_RANGE_WRITE;
            if let Err(e) = sync_range(file, self.kicked, whole - self.kicked, kick) {
                log::debug!("sync_file_range: {e}");
            }
            self.kicked = whole;
        }
        // The windows before the one just started: normally on disk already.
        let settled = self.kicked.saturating_sub(self.window);
        if settled > self.durable {
            let wait = libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER;
            match sync_range(file, self.durable, settled - self.durable, wait) {
                Err(e) if !super::is_unsupported(Errno::from_io_error(&e).unwrap_or(Errno::IO)) => {
                    return Err(e)
                }
                _ => {}
            }
            self.durable = settled;
        }
        let droppable = self.durable.min(hashed);
        if droppable > self.dropped {
            let len = std::num::NonZeroU64::new(droppable - self.dropped);
            let _ = rustix::fs::fadvise(file, self.dropped, len, rustix::fs::Advice::DontNeed);
            self.dropped = droppable;
        }
        Ok(())
    }
}
