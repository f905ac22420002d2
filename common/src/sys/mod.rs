//! Zero-copy primitives: the sendfile loop (`send`), the splice loops and pipes (`splice`),
//! waiting on a slow peer (`stall`), file hints (`file`), and the project's only unsafe code
//! (`ffi`).
//!
//! Each loop handles short transfers, EINTR and the kernel's per-call cap, and reports progress
//! after every call so the callers can drive a progress bar and a hashing thread from it.
//!
//! A socket's send timeout (SO_SNDTIMEO, zsend's `--timeout`) is the longest the sending loops
//! wait with nothing moving (see `stall::Stall`), not the longest each system call may wait.

use std::io;

use rustix::io::Errno;

mod ffi;
mod file;
mod send;
mod splice;
mod stall;

pub use file::{
    block_device_size, gives_modes_whole, is_local_fs, next_data, raise_open_files_limit, umask,
    DropBehind,
};
pub use send::{read_write_all, sendfile_all};
pub use splice::{drain_pipe_to, fill_pipe, splice_through, Onward, Pipe, SpliceStats, SpliceTo};

/// Why a zero-copy loop stopped early.
#[derive(Debug)]
pub enum CopyError {
    /// The kernel cannot do this copy for these file kinds (EINVAL or ENOSYS before any byte
    /// moved): use the read/write fallback.
    Unsupported,
    /// Reading the source side failed.
    Read(io::Error),
    /// Writing the destination side failed.
    Write(io::Error),
    /// The source's data extents moved while it was being sent.
    SourceChanged,
}

fn is_unsupported(e: Errno) -> bool {
    e == Errno::INVAL || e == Errno::NOSYS || e == Errno::OPNOTSUPP
}

#[cfg(test)]
mod tests {
    /// `n` bytes of a pattern that repeats only every 251 bytes.
    pub(super) fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }
}
