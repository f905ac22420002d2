//! Zero-copy primitives: the sendfile and splice loops, pipes, and writeback hints.
//!
//! Each loop handles short transfers, EINTR and the kernel's per-call cap, and reports progress
//! after every call so the callers can drive a progress bar and a hashing thread from it.
//!
//! A socket's send timeout (SO_SNDTIMEO, zsend's `--timeout`) is the longest the sending loops
//! wait with nothing moving (see [`Stall`]), not the longest each system call may wait.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use crate::stages::thread_cpu;

use rustix::io::Errno;
use rustix::net::sockopt::{set_socket_timeout, socket_timeout, Timeout};
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
    /// The source's data extents moved while it was being sent.
    SourceChanged,
}

fn is_unsupported(e: Errno) -> bool {
    e == Errno::INVAL || e == Errno::NOSYS || e == Errno::OPNOTSUPP
}

/// A blocking call into a socket waits at most the socket's send timeout (SO_SNDTIMEO, zsend's
/// `--timeout`) for room, but the kernel counts that per call, not since the last byte moved:
/// one sendfile or splice call makes several sends, and a send that moves something and then
/// waits its whole timeout is followed by another that waits a timeout of its own
/// (splice_to_socket stops only at a send that moves nothing). A sleeping send also wakes only
/// once about a third of the send buffer is free (sk_stream_write_space), so a slow peer can
/// look stopped to it while a new call would find room. Calling again after each short call,
/// as these loops did, waited three to four timeouts for a peer that had stopped reading. So:
///
/// - a loop of blocking calls cuts the socket's send timeout to a slice of itself (an eighth,
///   from 50 ms to 1 s; [`Watch`]): each call then comes back within a slice or two of the
///   last byte it moved, or looks again for room, and the loop gives up once nothing has moved
///   for the whole timeout, a slice or two late at most. A loop of many calls (a file of more
///   than one chunk) slices from the start; one of a single call (a smaller file, a piece of
///   standard input) only after a call came back short or empty, so that call may have
///   waited up to twice the timeout;
/// - the write loop never blocks in the write itself ([`Stall::send_all`]).
///
/// "Moved" means taken by our socket, as the calls report it: what the peer's kernel has
/// acknowledged is not looked at.
struct Stall {
    /// The socket's send timeout.
    limit: Duration,
    /// A slice of it: the longest one blocking wait.
    slice: Duration,
    /// When a byte last moved.
    last: Instant,
}

/// The send timeout of `sock`; `None` without one, or for what is not a socket.
fn send_timeout(sock: impl AsFd) -> Option<Duration> {
    socket_timeout(sock, Timeout::Send).ok().flatten()
}

impl Stall {
    /// `None` when `sock` has no send timeout (or is not a socket): writes may then block.
    fn of(sock: impl AsFd) -> Option<Stall> {
        send_timeout(sock).map(|limit| Stall {
            limit,
            slice: (limit / 8).clamp(Duration::from_millis(50), Duration::from_secs(1)),
            last: Instant::now(),
        })
    }

    /// Whether nothing has moved for the whole timeout.
    fn timed_out(&self) -> bool {
        self.last.elapsed() >= self.limit
    }

    /// Writes all of `buf` into the socket `sock` without blocking in the write: while the
    /// timeout has not passed since the last byte moved, waits up to a slice for room and tries
    /// again, then fails with [`timed_out`].
    fn send_all(&mut self, sock: impl AsFd, mut buf: &[u8]) -> io::Result<()> {
        let flags = rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL;
        while !buf.is_empty() {
            match rustix::net::send(&sock, buf, flags) {
                Ok(n) => {
                    buf = &buf[n..];
                    self.last = Instant::now();
                }
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) if self.timed_out() => return Err(timed_out()),
                Err(Errno::AGAIN) => {
                    let left = self.limit.saturating_sub(self.last.elapsed());
                    poll_out(&sock, left.min(self.slice))?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// What one blocking sendfile or splice call into a socket did.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    /// Moved all it was asked.
    Full,
    /// Moved part of it.
    Short,
    /// Moved nothing: EAGAIN.
    Empty,
}

/// Watches a loop of blocking calls into a socket for a peer that stopped taking data
/// ([`Stall`]). Once sliced, the socket's send timeout is put back on drop.
struct Watch<'a> {
    sock: BorrowedFd<'a>,
    /// The stall, once the timeout is sliced.
    stall: Option<Stall>,
    /// Whether slicing was tried (it fails for a socket without a timeout, or not a socket).
    tried: bool,
    /// When a call last moved all it was asked.
    last: Instant,
}

impl<'a> Watch<'a> {
    /// `eager` slices the timeout now: worth its three system calls for a loop of many calls.
    fn new(sock: BorrowedFd<'a>, eager: bool) -> Watch<'a> {
        let mut watch = Watch {
            sock,
            stall: None,
            tried: false,
            last: Instant::now(),
        };
        if eager {
            watch.slice();
        }
        watch
    }

    fn slice(&mut self) {
        self.tried = true;
        let Some(mut stall) = Stall::of(self.sock) else {
            return;
        };
        if stall.slice < stall.limit
            && set_socket_timeout(self.sock, Timeout::Send, Some(stall.slice)).is_ok()
        {
            stall.last = self.last;
            self.stall = Some(stall);
        }
    }

    /// Takes note of a call and says whether to go on, or that nothing has moved for the whole
    /// timeout.
    fn after(&mut self, call: Call) -> io::Result<()> {
        let now = Instant::now();
        if call == Call::Full {
            self.last = now;
            if let Some(stall) = self.stall.as_mut() {
                stall.last = now;
            }
            return Ok(());
        }
        if let Some(stall) = self.stall.as_mut() {
            if call == Call::Short {
                // Its last send waited a whole slice for room and got none.
                let waited = now.checked_sub(stall.slice).unwrap_or(now);
                stall.last = stall.last.max(waited);
            }
            return match stall.timed_out() {
                true => Err(timed_out()),
                false => Ok(()),
            };
        }
        if !self.tried {
            self.slice();
            if let Some(stall) = self.stall.as_mut() {
                if call == Call::Short {
                    // Its last send waited the whole timeout for room and got none; the next
                    // call, a slice long, looks again.
                    let waited = now.checked_sub(stall.limit).unwrap_or(now);
                    stall.last = stall.last.max(waited);
                }
                return Ok(());
            }
        }
        // No timeout to slice: an EAGAIN is the socket's own verdict.
        match call {
            Call::Empty => Err(timed_out()),
            _ => Ok(()),
        }
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if let Some(stall) = &self.stall {
            if let Err(e) = set_socket_timeout(self.sock, Timeout::Send, Some(stall.limit)) {
                log::warn!("restoring the socket's send timeout: {e}");
            }
        }
    }
}

/// The error of a socket that took nothing for its whole send timeout.
fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the peer took no data for the whole timeout",
    )
}

/// Waits up to `wait` for `sock` to take data (or to have an error or a hang-up to report).
/// poll(2).
fn poll_out(sock: impl AsFd, wait: Duration) -> io::Result<()> {
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

/// Sends `len` bytes of `file` starting at `*offset` into `sock` with sendfile(2), `chunk` bytes
/// a call at most. Returns the bytes sent, fewer than `len` only if the file ended early.
/// Fails with a timeout once the socket has taken nothing for its send timeout ([`Stall`]).
pub fn sendfile_all(
    sock: impl AsFd,
    file: impl AsFd,
    offset: &mut u64,
    len: u64,
    chunk: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, CopyError> {
    let chunk = chunk.clamp(1, MAX_SENDFILE);
    let mut watch = Watch::new(sock.as_fd(), len > chunk as u64);
    let mut sent = 0u64;
    while sent < len {
        let want = (len - sent).min(chunk as u64) as usize;
        let call = match rustix::fs::sendfile(&sock, &file, Some(offset), want) {
            Ok(0) => break,
            Ok(n) => {
                sent += n as u64;
                progress(n as u64);
                match n < want {
                    true => Call::Short,
                    false => Call::Full,
                }
            }
            Err(Errno::INTR) => continue,
            Err(e) if sent == 0 && is_unsupported(e) => return Err(CopyError::Unsupported),
            Err(Errno::AGAIN) => Call::Empty,
            // sendfile reports errors of both sides; a socket error is the common one.
            Err(e) => return Err(CopyError::Write(e.into())),
        };
        watch.after(call).map_err(CopyError::Write)?;
    }
    Ok(sent)
}

/// What the receive loop did, for reports and the benchmark.
#[derive(Clone, Debug)]
pub struct SpliceStats {
    /// False if the read/write fallback moved (part of) the payload.
    pub zero_copy: bool,
    /// CPU spent splicing from the socket into the pipe.
    pub to_pipe_cpu: Duration,
    /// CPU spent splicing from the pipe into the file (the kernel's copy into the page cache).
    pub to_file_cpu: Duration,
    /// Whether to measure the CPU at all (two clock reads a step: not worth it for small files).
    pub timed: bool,
}

impl Default for SpliceStats {
    fn default() -> Self {
        SpliceStats {
            zero_copy: true,
            to_pipe_cpu: Duration::ZERO,
            to_file_cpu: Duration::ZERO,
            timed: true,
        }
    }
}

/// Fallback for sources sendfile cannot read: pread into a buffer, write to the socket.
/// Fails with a timeout once the socket has taken nothing for its send timeout ([`Stall`]).
pub fn read_write_all(
    mut sock: impl Write + AsFd,
    file: &File,
    offset: &mut u64,
    len: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; FALLBACK_BUF];
    let mut stall = Stall::of(&sock);
    let mut sent = 0u64;
    while sent < len {
        let want = (len - sent).min(buf.len() as u64) as usize;
        let n = match file.read_at(&mut buf[..want], *offset) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        let written = match stall.as_mut() {
            Some(stall) => stall.send_all(&sock, &buf[..n]),
            None => sock.write_all(&buf[..n]),
        };
        written.map_err(CopyError::Write)?;
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

impl Pipe {
    /// The read end and the write end, for a reader on another thread.
    pub fn into_ends(self) -> (OwnedFd, OwnedFd) {
        (self.read, self.write)
    }
}

/// Splices up to a pipe's capacity from `input` into `pipe`: the number of bytes now in the
/// pipe, 0 at end of input. `Err(Unsupported)` when the kernel cannot splice from `input`.
pub fn fill_pipe(input: impl AsFd, pipe: &Pipe) -> Result<usize, CopyError> {
    loop {
        match pipe::splice(
            &input,
            None,
            &pipe.write,
            None,
            pipe.capacity,
            SpliceFlags::MORE,
        ) {
            Ok(n) => return Ok(n),
            Err(Errno::INTR) => continue,
            Err(e) if is_unsupported(e) => return Err(CopyError::Unsupported),
            Err(e) => return Err(CopyError::Read(e.into())),
        }
    }
}

/// Moves the `n` bytes in `pipe` to `out`; with `copy`, duplicates them into that pipe first
/// with tee(2), so another thread can read them (to hash) without the bytes passing through
/// this one. tee only ever copies from the head of the pipe, so each teed piece is spliced out
/// before the next is teed.
pub fn drain_pipe_to(
    pipe: &Pipe,
    copy: Option<&OwnedFd>,
    out: impl AsFd,
    n: usize,
) -> Result<(), CopyError> {
    let mut watch = Watch::new(out.as_fd(), false);
    let mut left = n;
    while left > 0 {
        let piece = match copy {
            Some(c) => match pipe::tee(&pipe.read, c, left, SpliceFlags::empty()) {
                Ok(0) => return Err(CopyError::Write(io::ErrorKind::WriteZero.into())),
                Ok(k) => k,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(CopyError::Write(e.into())),
            },
            None => left,
        };
        let mut moved = 0;
        while moved < piece {
            let want = piece - moved;
            let call = match pipe::splice(&pipe.read, None, &out, None, want, SpliceFlags::MORE) {
                Ok(0) => return Err(CopyError::Write(io::ErrorKind::WriteZero.into())),
                Ok(k) => {
                    moved += k;
                    match k < want {
                        true => Call::Short,
                        false => Call::Full,
                    }
                }
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => Call::Empty,
                Err(e) => return Err(CopyError::Write(e.into())),
            };
            // Into a socket, the pipe holding all that was asked, short means no room.
            watch.after(call).map_err(CopyError::Write)?;
        }
        left -= piece;
    }
    Ok(())
}

/// Moves exactly `len` bytes from `sock` to `out` through `pipe` (and into `copy` with tee when
/// given). Returns the bytes moved: fewer than `len` only if the peer closed. `progress` gets
/// the total moved after each step.
pub fn splice_through(
    sock: impl AsFd,
    pipe: &Pipe,
    copy: Option<&OwnedFd>,
    out: impl AsFd,
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
        drain_pipe_to(pipe, copy, &out, n)?;
        done += n as u64;
        progress(done);
    }
    Ok(done)
}

/// The next host of a chain, while forwarding to it works.
pub struct Onward<'a> {
    /// The connection to the next host.
    pub sock: &'a TcpStream,
    /// The second pipe, filled with tee(2) from the first.
    pub pipe: &'a Pipe,
    /// Why forwarding stopped, once it has: the rest goes to the file only.
    pub failed: Option<io::Error>,
}

/// Where bytes from a socket go: through `pipe` into `file`, and, for a chain, on to the next
/// host too.
pub struct SpliceTo<'a> {
    /// The pipe the socket is spliced into.
    pub pipe: &'a Pipe,
    /// The file the pipe is spliced into.
    pub file: &'a File,
    /// What the loop did.
    pub stats: &'a mut SpliceStats,
    /// The next host of a chain, if any.
    pub onward: Option<Onward<'a>>,
}

impl SpliceTo<'_> {
    /// Moves exactly `len` bytes from `sock` into the file at `offset` with splice(2), never
    /// reading past `len` from the socket. Returns the bytes written: fewer than `len` only if
    /// the peer closed. `progress` gets the total written after each step.
    ///
    /// With a next host, each chunk is duplicated with tee(2) into its pipe and spliced to its
    /// socket: socket -> pipe A, tee(A -> B), splice(A -> file), splice(B -> next). If the next
    /// host fails, forwarding stops (the reason goes into `onward.failed`) and the file still
    /// gets every byte.
    ///
    /// If the filesystem cannot splice, it finishes with read/write (and stops forwarding),
    /// clears `stats.zero_copy` and says so in the log.
    pub fn take_from(
        &mut self,
        sock: impl AsFd + Read,
        offset: u64,
        len: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, CopyError> {
        let (pipe, file) = (self.pipe, self.file);
        let mut offset = offset;
        let mut done = 0u64;
        let timed = self.stats.timed;
        let mut clock = if timed { thread_cpu() } else { Duration::ZERO };
        let mut lap = |into: &mut Duration| {
            if timed {
                let now = thread_cpu();
                *into += now.saturating_sub(clock);
                clock = now;
            }
        };
        let chunk = self
            .onward
            .as_ref()
            .map_or(pipe.capacity, |o| pipe.capacity.min(o.pipe.capacity));
        while done < len {
            let want = (len - done).min(chunk as u64) as usize;
            let got = pipe::splice(&sock, None, &pipe.write, None, want, SpliceFlags::MORE);
            lap(&mut self.stats.to_pipe_cpu);
            let n = match got {
                Ok(0) => break,
                Ok(n) => n,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(CopyError::Read(e.into())),
            };
            if let Some(onward) = self.onward.as_mut().filter(|o| o.failed.is_none()) {
                if let Err(e) = tee_onward(pipe, n, onward) {
                    onward.failed = Some(e);
                }
            }
            let mut left = n;
            while left > 0 {
                let put = pipe::splice(
                    &pipe.read,
                    None,
                    file,
                    Some(&mut offset),
                    left,
                    SpliceFlags::empty(),
                );
                lap(&mut self.stats.to_file_cpu);
                match put {
                    Ok(0) => {
                        return Err(CopyError::Write(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "splice into the file made no progress",
                        )))
                    }
                    Ok(k) => left -= k,
                    Err(Errno::INTR) => continue,
                    Err(e) if is_unsupported(e) => {
                        log::info!("splice into this file is unsupported ({e}); using read/write");
                        self.stats.zero_copy = false;
                        if let Some(onward) = self.onward.as_mut() {
                            onward.failed.get_or_insert_with(|| {
                                io::Error::other("this host's file system cannot splice")
                            });
                        }
                        drain_pipe(pipe, file, &mut offset, left)?;
                        done += n as u64;
                        progress(done);
                        let rest = read_into_file(sock, file, &mut offset, len - done, &mut |k| {
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
}

/// Duplicates the `n` bytes at the head of `pipe` into the onward pipe and sends them on.
fn tee_onward(pipe: &Pipe, n: usize, onward: &Onward) -> io::Result<()> {
    // The onward pipe is empty and at least as large as a chunk, so one tee takes it all; a
    // short tee could not be completed (tee always copies from the head of the pipe).
    loop {
        match pipe::tee(&pipe.read, &onward.pipe.write, n, SpliceFlags::empty()) {
            Ok(k) if k == n => break,
            Ok(_) => return Err(io::Error::other("tee copied part of a chunk")),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let mut left = n;
    while left > 0 {
        match pipe::splice(
            &onward.pipe.read,
            None,
            onward.sock,
            None,
            left,
            SpliceFlags::MORE,
        ) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(k) => left -= k,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
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

/// Size in bytes of a block device, from the BLKGETSIZE64 ioctl (its `st_size` is 0).
pub fn block_device_size(file: &File) -> io::Result<u64> {
    const BLKGETSIZE64: rustix::ioctl::Opcode = rustix::ioctl::opcode::read::<u64>(0x12, 114);
    // SAFETY: BLKGETSIZE64 writes the size into one u64 (`_IOR(0x12, 114, size_t)` with a
    // 64-bit size_t), which is exactly what this Getter lends the kernel.
    let size =
        unsafe { rustix::ioctl::ioctl(file, rustix::ioctl::Getter::<BLKGETSIZE64, u64>::new()) }?;
    Ok(size)
}

/// Keeps a receiver's footprint in the page cache to a few windows: starts writeback of each
/// full window as soon as it is written, waits for the window before it to reach the disk, and
/// drops from the page cache what is both on disk and already hashed. The final fsync then has
/// little left to do, a huge transfer does not evict everything else from the page cache, and
/// the pages it frees are reused for the next window while they are still warm.
///
/// These are hints: durability still comes from the fsync at the end.
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
    pub fn advance(&mut self, file: &File, written: u64, hashed: u64) {
        while written - self.kicked >= self.window {
            sync_range(file, self.kicked, self.window, libc::SYNC_FILE_RANGE_WRITE);
            self.kicked += self.window;
        }
        // The window before the one just started: normally on disk already.
        while self.kicked - self.durable >= 2 * self.window {
            let wait = libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER;
            sync_range(file, self.durable, self.window, wait);
            self.durable += self.window;
        }
        let droppable = self.durable.min(hashed);
        if droppable > self.dropped {
            let len = std::num::NonZeroU64::new(droppable - self.dropped);
            let _ = rustix::fs::fadvise(file, self.dropped, len, rustix::fs::Advice::DontNeed);
            self.dropped = droppable;
        }
    }
}

/// sync_file_range(2). Errors are ignored: they surface at fsync.
fn sync_range(file: &File, offset: u64, len: u64, flags: libc::c_uint) {
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
    if rc != 0 {
        log::debug!("sync_file_range: {}", io::Error::last_os_error());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Seek;
    use std::os::unix::net::UnixStream;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn sendfile_from_a_pipe_is_unsupported_and_read_write_takes_over() {
        // procfs seq files cannot feed sendfile at an offset: the kernel says EINVAL.
        let status = File::open("/proc/self/status").unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        let mut off = 0;
        let got = sendfile_all(&a, &status, &mut off, 10, 4, &mut |_| {});
        assert!(matches!(got, Err(CopyError::Unsupported)), "{got:?}");

        let data = pattern(700_000);
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&data).unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        let reader = std::thread::spawn(move || {
            let mut v = Vec::new();
            b.read_to_end(&mut v).unwrap();
            v
        });
        let mut off = 0;
        let mut seen = 0;
        let sent = read_write_all(&a, &f, &mut off, data.len() as u64, &mut |n| seen += n).unwrap();
        drop(a);
        assert_eq!(sent, data.len() as u64);
        assert_eq!(seen, sent);
        assert_eq!(reader.join().unwrap(), data);
    }

    /// Sends a 256 MiB file into a loopback connection with a send timeout of `limit`, whose
    /// reading end takes 64 KiB every 300 ms for `slow` rounds (a slow peer), then stops
    /// reading but stays open. `copy` must fail with a timeout, and not before the peer
    /// stopped; returns how long after it stopped.
    fn give_up_time(
        limit: Duration,
        slow: usize,
        copy: impl FnOnce(&TcpStream, &File) -> Result<u64, CopyError>,
    ) -> Duration {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let writer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut reader, _) = listener.accept().unwrap();
        writer.set_write_timeout(Some(limit)).unwrap();
        let file = tempfile::tempfile().unwrap();
        file.set_len(256 << 20).unwrap();
        let (stopped_tx, stopped) = std::sync::mpsc::channel();
        let (done, wait_done) = std::sync::mpsc::channel::<()>();
        let peer = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            for _ in 0..slow {
                reader.read_exact(&mut buf).unwrap();
                // Pacing the slow peer, not synchronisation.
                std::thread::sleep(Duration::from_millis(300));
            }
            stopped_tx.send(Instant::now()).unwrap();
            // Open until the copy gave up.
            let _ = wait_done.recv_timeout(Duration::from_secs(60));
        });
        let got = copy(&writer, &file);
        let gave_up = Instant::now();
        drop(done);
        peer.join().unwrap();
        let stopped = stopped
            .try_recv()
            .expect("gave up while the peer was still reading");
        match got {
            Err(CopyError::Write(e)) => {
                assert_eq!(
                    crate::units::os_reason(&e),
                    "timed out waiting for the peer"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(writer.write_timeout().unwrap(), Some(limit), "restored");
        gave_up - stopped
    }

    // The send timeout is the longest a copy waits with nothing moving: a correctness bound,
    // not a performance threshold. Before, a stopped peer held these copies three to four
    // times the timeout.
    #[test]
    fn sendfile_waits_for_a_slow_peer_and_gives_up_on_a_stopped_one() {
        let limit = Duration::from_secs(1);
        let send = |sock: &TcpStream, file: &File| {
            sendfile_all(sock, file, &mut 0, 256 << 20, 4 << 20, &mut |_| {})
        };
        let took = give_up_time(limit, 6, send);
        assert!(took < limit * 2, "took {took:?}");
        // One call, as for a file of one chunk: the timeout is sliced only once a call comes
        // back short or empty, and that one may have waited up to twice the timeout.
        let send_one = |sock: &TcpStream, file: &File| {
            sendfile_all(sock, file, &mut 0, 64 << 20, 64 << 20, &mut |_| {})
        };
        let took = give_up_time(limit, 6, send_one);
        assert!(took < limit * 4, "took {took:?}");
    }

    #[test]
    fn read_write_waits_for_a_slow_peer_and_gives_up_on_a_stopped_one() {
        let limit = Duration::from_secs(1);
        let send = |sock: &TcpStream, file: &File| {
            read_write_all(sock, file, &mut 0, 256 << 20, &mut |_| {})
        };
        let took = give_up_time(limit, 6, send);
        assert!(took < limit * 2, "took {took:?}");
        let took = give_up_time(limit, 0, send);
        assert!(took < limit * 2, "took {took:?}");
    }

    #[test]
    fn sendfile_stops_at_the_end_of_a_short_file() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&pattern(1000)).unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut off = 0;
        let sent = sendfile_all(&a, &f, &mut off, 5000, 300, &mut |_| {}).unwrap();
        drop(a);
        assert_eq!(sent, 1000);
        let mut v = Vec::new();
        b.read_to_end(&mut v).unwrap();
        assert_eq!(v, pattern(1000));
    }

    /// splice(2) into a file opened with O_APPEND fails with EINVAL: the loop must finish the
    /// job with read/write, including the bytes already sitting in the pipe.
    #[test]
    fn splice_into_an_append_only_file_falls_back() {
        let data = pattern(3_000_000);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("append");
        let f = File::options()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let writer = {
            let data = data.clone();
            std::thread::spawn(move || {
                let mut a = a;
                a.write_all(&data).unwrap();
            })
        };
        let pipe = Pipe::new(1 << 16).unwrap();
        let mut last = 0;
        let mut stats = SpliceStats::default();
        let mut to = SpliceTo {
            pipe: &pipe,
            file: &f,
            stats: &mut stats,
            onward: None,
        };
        let n = to
            .take_from(&b, 0, data.len() as u64, &mut |d| last = d)
            .unwrap();
        writer.join().unwrap();
        assert!(!stats.zero_copy, "the fallback ran");
        assert_eq!(n, data.len() as u64);
        assert_eq!(last, n);
        let mut got = Vec::new();
        let mut f = f;
        f.rewind().unwrap();
        f.read_to_end(&mut got).unwrap();
        assert_eq!(got, data);
    }

    #[test]
    fn splice_reads_no_further_than_asked() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"0123456789trailer").unwrap();
        let f = tempfile::tempfile().unwrap();
        let pipe = Pipe::new(1 << 20).unwrap();
        let mut stats = SpliceStats::default();
        let mut to = SpliceTo {
            pipe: &pipe,
            file: &f,
            stats: &mut stats,
            onward: None,
        };
        let n = to.take_from(&b, 0, 10, &mut |_| {}).unwrap();
        assert!(stats.zero_copy);
        assert_eq!(n, 10);
        let mut rest = [0u8; 7];
        (&b).read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"trailer");
    }
}
