//! Zero-copy primitives: the sendfile and splice loops, pipes, and writeback hints.
//!
//! Each loop handles short transfers, EINTR and the kernel's per-call cap, and reports progress
//! after every call so the callers can drive a progress bar and a hashing thread from it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use rustix::io::Errno;
use rustix::pipe::{self, PipeFlags, SpliceFlags};

/// Most bytes one sendfile(2) call moves (see sendfile(2) NOTES).
pub const MAX_SENDFILE: usize = 0x7fff_f000;

/// Buffer size of the read/write fallbacks.
const FALLBACK_BUF: usize = 256 * 1024;

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
}

fn is_unsupported(e: Errno) -> bool {
    e == Errno::INVAL || e == Errno::NOSYS || e == Errno::OPNOTSUPP
}

/// Sends `len` bytes of `file` starting at `*offset` into `sock` with sendfile(2), `chunk` bytes
/// a call at most. Returns the bytes sent, fewer than `len` only if the file ended early.
pub fn sendfile_all(
    sock: impl AsFd,
    file: impl AsFd,
    offset: &mut u64,
    len: u64,
    chunk: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, CopyError> {
    let chunk = chunk.clamp(1, MAX_SENDFILE);
    let mut sent = 0u64;
    while sent < len {
        let want = (len - sent).min(chunk as u64) as usize;
        match rustix::fs::sendfile(&sock, &file, Some(offset), want) {
            Ok(0) => break,
            Ok(n) => {
                sent += n as u64;
                progress(n as u64);
            }
            Err(Errno::INTR) => continue,
            Err(e) if sent == 0 && is_unsupported(e) => return Err(CopyError::Unsupported),
            // sendfile reports errors of both sides; a socket error is the common one.
            Err(e) => return Err(CopyError::Write(e.into())),
        }
    }
    Ok(sent)
}

/// Fallback for sources sendfile cannot read: pread into a buffer, write to the socket.
pub fn read_write_all(
    mut sock: impl Write,
    file: &File,
    offset: &mut u64,
    len: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; FALLBACK_BUF];
    let mut sent = 0u64;
    while sent < len {
        let want = (len - sent).min(buf.len() as u64) as usize;
        let n = match file.read_at(&mut buf[..want], *offset) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        sock.write_all(&buf[..n]).map_err(CopyError::Write)?;
        *offset += n as u64;
        sent += n as u64;
        progress(n as u64);
    }
    Ok(sent)
}

/// A pipe used as the in-kernel buffer between a socket and a file.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    /// Creates a pipe and tries to enlarge it to `want` bytes; EPERM (over the user's pipe
    /// allowance) keeps the default size.
    pub fn new(want: usize) -> io::Result<Pipe> {
        let (read, write) = pipe::pipe_with(PipeFlags::CLOEXEC)?;
        let capacity = match pipe::fcntl_setpipe_size(&write, want) {
            Ok(n) => n,
            Err(e) => {
                log::debug!("F_SETPIPE_SZ {want}: {e}; keeping the default pipe size");
                pipe::fcntl_getpipe_size(&write)?
            }
        };
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }
}

/// Moves exactly `len` bytes from `sock` into `file` at `*offset` through `pipe` with splice(2),
/// never reading past `len` from the socket. Returns the bytes written: fewer than `len` only
/// if the peer closed. `progress` gets the total written after each step.
///
/// If the filesystem cannot splice, it finishes with read/write and says so in the log.
pub fn splice_into_file(
    sock: impl AsFd + Read,
    pipe: &Pipe,
    file: &File,
    offset: &mut u64,
    len: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, CopyError> {
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(pipe.capacity as u64) as usize;
        let n = match pipe::splice(&sock, None, &pipe.write, None, want, SpliceFlags::MORE) {
            Ok(0) => break,
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(CopyError::Read(e.into())),
        };
        let mut left = n;
        while left > 0 {
            match pipe::splice(
                &pipe.read,
                None,
                file,
                Some(offset),
                left,
                SpliceFlags::empty(),
            ) {
                Ok(0) => {
                    return Err(CopyError::Write(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "splice into the file made no progress",
                    )))
                }
                Ok(k) => left -= k,
                Err(Errno::INTR) => continue,
                Err(e) if is_unsupported(e) => {
                    log::info!(
                        "splice into this filesystem is unsupported ({e}); using read/write"
                    );
                    drain_pipe(pipe, file, offset, left)?;
                    done += n as u64;
                    progress(done);
                    let rest = read_into_file(sock, file, offset, len - done, &mut |k| {
                        progress(done + k)
                    })?;
                    return Ok(done + rest);
                }
                Err(e) => return Err(CopyError::Write(e.into())),
            }
        }
        done += n as u64;
        progress(done);
    }
    Ok(done)
}

/// Copies `left` bytes already in `pipe` into `file` through a buffer.
fn drain_pipe(
    pipe: &Pipe,
    file: &File,
    offset: &mut u64,
    mut left: usize,
) -> Result<(), CopyError> {
    let mut buf = vec![0u8; left.min(FALLBACK_BUF)];
    let mut reader = File::from(pipe.read.try_clone().map_err(CopyError::Read)?);
    while left > 0 {
        let want = left.min(buf.len());
        let n = reader.read(&mut buf[..want]).map_err(CopyError::Read)?;
        file.write_all_at(&buf[..n], *offset)
            .map_err(CopyError::Write)?;
        *offset += n as u64;
        left -= n;
    }
    Ok(())
}

/// Fallback receive loop: read from the socket, pwrite into the file.
fn read_into_file(
    mut sock: impl Read,
    file: &File,
    offset: &mut u64,
    len: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; FALLBACK_BUF];
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(buf.len() as u64) as usize;
        let n = match sock.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        file.write_all_at(&buf[..n], *offset)
            .map_err(CopyError::Write)?;
        *offset += n as u64;
        done += n as u64;
        progress(done);
    }
    Ok(done)
}

/// Starts asynchronous writeback of `len` bytes at `offset` (sync_file_range with
/// SYNC_FILE_RANGE_WRITE), so the final fsync finds little left to do. A hint: errors surface
/// at fsync, so they are ignored here.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    // SAFETY: sync_file_range takes a file descriptor and integers only; `file` keeps the
    // descriptor open for the duration of the call.
    let rc = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    if rc != 0 {
        log::debug!("sync_file_range: {}", io::Error::last_os_error());
    }
}
