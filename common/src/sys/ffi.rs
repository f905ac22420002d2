//! The only unsafe code of the project: three system calls rustix does not wrap as we need
//! them, each behind a safe function whose arguments keep the descriptor open for the call.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

/// Waits up to `wait` for `sock` to take data (or to have an error or a hang-up to report).
/// poll(2).
pub(super) fn poll_out(sock: impl AsFd, wait: Duration) -> io::Result<()> {
    let ms = wait.as_millis().min(libc::c_int::MAX as u128) as libc::c_int;
    let mut pfd = libc::pollfd {
        fd: sock.as_fd().as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: `pfd` is one pollfd whose descriptor `sock` keeps open for the call.
    match unsafe { libc::poll(&mut pfd, 1, ms) } {
        -1 => match io::Error::last_os_error() {
            e if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            e => Err(e),
        },
        _ => Ok(()),
    }
}

/// Size in bytes of a block device, from the BLKGETSIZE64 ioctl (its `st_size` is 0).
pub fn block_device_size(file: &File) -> io::Result<u64> {
    const BLKGETSIZE64: rustix::ioctl::Opcode = rustix::ioctl::opcode::read::<u64>(0x12, 114);
    // SAFETY: BLKGETSIZE64 writes the size into one u64 (`_IOR(0x12, 114, size_t)` with a
    // 64-bit size_t), which is exactly what this Getter lends the kernel.
    let size =
        unsafe { rustix::ioctl::ioctl(file, rustix::ioctl::Getter::<BLKGETSIZE64, u64>::new()) }?;
    Ok(size)
}

/// sync_file_range(2).
pub(super) fn sync_range(
    file: &File,
    offset: u64,
    len: u64,
    flags: libc::c_uint,
) -> io::Result<()> {
    // SAFETY: sync_file_range takes a file descriptor and integers only; `file` keeps the
    // descriptor open for the duration of the call.
    let rc = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            flags,
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}
