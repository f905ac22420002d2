//! How long a copy into a socket waits for a peer that takes nothing: the socket's send
//! timeout counted since the last byte moved, not per system call.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::sockopt::{set_socket_timeout, socket_timeout, Timeout};

use super::ffi::poll_out;

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
pub(super) struct Stall {
    /// The socket's send timeout.
    limit: Duration,
    /// A slice of it: the longest one blocking wait.
    slice: Duration,
    /// When a byte last moved.
    last: Instant,
}

/// The send timeout of `sock`; `None` without one, or for what is not a socket.
pub(super) fn send_timeout(sock: impl AsFd) -> Option<Duration> {
    socket_timeout(sock, Timeout::Send).ok().flatten()
}

impl Stall {
    /// `None` when `sock` has no send timeout (or is not a socket): writes may then block.
    pub(super) fn of(sock: impl AsFd) -> Option<Stall> {
        send_timeout(sock).map(|limit| Stall {
            limit,
            slice: (limit / 8).clamp(Duration::from_millis(50), Duration::from_secs(1)),
            last: Instant::now(),
        })
    }

    /// Whether nothing has moved for the whole timeout.
    pub(super) fn timed_out(&self) -> bool {
        self.last.elapsed() >= self.limit
    }

    /// Writes all of `buf` into the socket `sock` without blocking in the write: while the
    /// timeout has not passed since the last byte moved, waits up to a slice for room and tries
    /// again, then fails with [`timed_out`].
    pub(super) fn send_all(&mut self, sock: impl AsFd, mut buf: &[u8]) -> io::Result<()> {
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
pub(super) enum Call {
    /// Moved all it was asked.
    Full,
    /// Moved part of it.
    Short,
    /// Moved nothing: EAGAIN.
    Empty,
}

/// Watches a loop of blocking calls into a socket for a peer that stopped taking data
/// ([`Stall`]). Once sliced, the socket's send timeout is put back on drop.
pub(super) struct Watch<'a> {
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
    pub(super) fn new(sock: BorrowedFd<'a>, eager: bool) -> Watch<'a> {
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

    pub(super) fn slice(&mut self) {
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
    pub(super) fn after(&mut self, call: Call) -> io::Result<()> {
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
pub(super) fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the peer took no data for the whole timeout",
    )
}
