//! Out of a socket or a pipe: splice(2) through a pipe into a file (teed on to the next host of a
//! chain), or through to standard output, with read/write fallbacks where splice cannot go.

use std::fs::File;
use std::io::{self, Read};
use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use rustix::io::Errno;
use rustix::pipe::{self, PipeFlags, SpliceFlags};

use super::send::FALLBACK_BUF;
use super::stall::{Call, Watch};
use super::{is_unsupported, CopyError};
use crate::stages::thread_cpu;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::tests::pattern;
    use std::io::{Seek, Write};
    use std::os::unix::net::UnixStream;

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
