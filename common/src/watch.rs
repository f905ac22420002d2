//! Waiting on work done for a peer (hashing what it sent, a partial it wants to resume) while
//! watching the peer: work goes on only while the peer shows it is still there. Keepalives
//! count as progress; silence for the timeout, or the peer going away, stops the work.
//!
//! This is what bounds a receiver's hashing by the sender's progress: a hole record declaring
//! terabytes costs hashing time only while the sender keeps the connection alive, and none
//! once it has gone.

use std::io;
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::RecvFlags;

use crate::hash::Watermark;
use crate::wire::{KEEPALIVE, KEEPALIVE_LEN, KEEPALIVE_MAGIC};

/// How often a sender that is busy hashing says it is still there: often enough for any
/// receiver `--timeout` (at least a second).
pub const KEEPALIVE_EVERY: Duration = Duration::from_millis(400);

/// The slowest hashing a receiver allows for: a peer's keepalives before one message are taken
/// for as long as hashing its bytes at this rate could take, and its timeout.
pub(crate) const MIN_HASH_RATE: u64 = 4 << 20;

/// What hashing may take beyond [`MIN_HASH_RATE`] (starting, a busy machine).
const HASHING_SLACK: Duration = Duration::from_secs(5);

/// Reads one message from a peer: at most `silence` without a byte, and at most `whole` in all,
/// so that a peer dripping a byte just inside each read's timeout cannot stretch one message
/// of a thousand bytes over a thousand timeouts. The stream's read timeout is put back when
/// it is dropped.
pub(crate) struct Patient<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
    silence: Duration,
    before: Option<Duration>,
}

impl<'a> Patient<'a> {
    pub(crate) fn new(stream: &'a TcpStream, whole: Duration, silence: Duration) -> Patient<'a> {
        Patient {
            stream,
            deadline: Instant::now() + whole,
            silence,
            before: stream.read_timeout().ok().flatten(),
        }
    }

    /// For one short message (a verdict) on a stream with a read timeout: that timeout without
    /// a byte, as before, and twice it for the whole message. An honest peer writes one at once.
    pub(crate) fn message(stream: &'a TcpStream) -> Patient<'a> {
        let timeout = (stream.read_timeout().ok().flatten()).unwrap_or(Duration::from_secs(60));
        Patient::new(stream, timeout.saturating_mul(2), timeout)
    }
}

impl io::Read for Patient<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left.min(self.silence)))?;
        (&*self.stream).read(buf)
    }
}

impl Drop for Patient<'_> {
    fn drop(&mut self) {
        let _ = self.stream.set_read_timeout(self.before);
    }
}

/// How long a peer may keep saying "still hashing" before one message: its timeout, plus the
/// time hashing `bytes` could take at [`MIN_HASH_RATE`], plus [`HASHING_SLACK`]. Keepalives past
/// that hold a transfer slot (and a name) for nothing: the peer is given up on.
#[derive(Debug)]
pub(crate) struct Patience {
    since: Option<Instant>,
    allowed: Duration,
}

impl Patience {
    pub(crate) fn for_bytes(timeout: Duration, bytes: u64) -> Patience {
        let hashing = Duration::from_secs(bytes / MIN_HASH_RATE).saturating_add(HASHING_SLACK);
        Patience {
            since: None,
            allowed: timeout.saturating_add(hashing),
        }
    }

    /// A keepalive came: whether to wait on (the clock starts at the first).
    pub(crate) fn still(&mut self) -> bool {
        self.since.get_or_insert_with(Instant::now).elapsed() <= self.allowed
    }

    /// The message came: the next wait starts afresh.
    pub(crate) fn reset(&mut self) {
        self.since = None;
    }

    /// The clock starts now, keepalives or not (a wait that is timed whether or not they come).
    pub(crate) fn restart(&mut self) {
        self.since = Some(Instant::now());
    }
}

/// A flag a worker thread raises when it ends, that a poll can wait on beside a socket.
pub(crate) struct Done(OwnedFd);

impl Done {
    pub(crate) fn new() -> io::Result<Done> {
        Ok(Done(eventfd(0, EventfdFlags::CLOEXEC)?))
    }

    /// A guard that raises the flag when dropped: at the end of the worker, however it ends.
    pub(crate) fn on_drop(&self) -> Raise<'_> {
        Raise(self)
    }
}

/// Raises a [`Done`] when dropped.
pub(crate) struct Raise<'a>(&'a Done);

impl Drop for Raise<'_> {
    fn drop(&mut self) {
        let _ = rustix::io::write(&self.0 .0, &1u64.to_ne_bytes());
    }
}

/// Why the wait ended without the work.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The peer closed or reset the connection.
    Gone,
    /// Nothing came from the peer for the timeout (or, once its next message had come, the
    /// work took longer than the timeout after it).
    Silent,
    /// The peer sent something that is neither a keepalive nor a message's first bytes.
    Malformed,
    /// Polling or reading the socket failed.
    Io(io::Error),
}

/// Waits until `done` is raised, while reading keepalives from `stream`: each one gives the
/// work another `timeout`. Once anything else shows at the head of the stream (the peer's next
/// message, left in the socket for the caller), the peer has finished its part and the work
/// gets `timeout` more; only the connection breaking stops it then (not the peer closing its
/// side, nor a receiver being stopped: what it needs is in). `on_alive` is called for each
/// keepalive, and every [`KEEPALIVE_EVERY`] once the peer's next message is in, so that a
/// forwarding receiver keeps the next host of a chain told. The caller aborts the work when
/// this returns an error.
pub(crate) fn wait_for(
    stream: &TcpStream,
    done: &Done,
    timeout: Duration,
    on_alive: &mut dyn FnMut(),
) -> Result<(), Stop> {
    let mut deadline = Instant::now() + timeout;
    // The peer's next message is in: from then on only its going away matters.
    let mut peer_done = false;
    // Bytes of a keepalive already identified by its magic but not all arrived.
    let mut keepalive_left = 0usize;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Stop::Silent);
        }
        let (wanted, left) = match peer_done {
            // HUP and ERR are always reported.
            true => (PollFlags::empty(), left.min(KEEPALIVE_EVERY)),
            false => (PollFlags::IN | PollFlags::RDHUP, left),
        };
        let mut fds = [
            PollFd::new(stream, wanted),
            PollFd::new(&done.0, PollFlags::IN),
        ];
        let wait = Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        match poll(&mut fds, Some(&wait)) {
            Ok(_) => {}
            Err(Errno::INTR) => continue,
            Err(e) => return Err(Stop::Io(e.into())),
        }
        if fds[1].revents().contains(PollFlags::IN) {
            return Ok(());
        }
        let events = fds[0].revents();
        // What the peer sent before it closed still counts (its trailer may be there, with the
        // end of the connection behind it): it is gone only once nothing is left to read.
        if events.intersects(PollFlags::HUP | PollFlags::ERR)
            || events.contains(PollFlags::RDHUP) && !events.contains(PollFlags::IN)
        {
            return Err(Stop::Gone);
        }
        if !events.contains(PollFlags::IN) {
            if peer_done {
                on_alive();
            }
            continue; // timed out: the loop's head says whether it is the deadline
        }
        let mut head = [0u8; KEEPALIVE_LEN];
        let peeked =
            match rustix::net::recv(stream, &mut head, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
                Ok((n, _)) => n,
                Err(Errno::INTR | Errno::AGAIN) => continue,
                Err(e) => return Err(Stop::Io(e.into())),
            };
        if peeked == 0 {
            return Err(Stop::Gone);
        }
        if keepalive_left == 0 {
            if peeked < KEEPALIVE_MAGIC.len() {
                if events.contains(PollFlags::RDHUP) {
                    // The peer closed after those few bytes: nothing will complete them.
                    return Err(Stop::Gone);
                }
                // Too little to tell a keepalive from a message: wait for the rest.
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            if head[..4] != KEEPALIVE_MAGIC {
                peer_done = true;
                deadline = Instant::now() + timeout;
                continue;
            }
            keepalive_left = KEEPALIVE_LEN;
        }
        // Take in the keepalive's bytes that are here.
        let at = KEEPALIVE_LEN - keepalive_left;
        let take = keepalive_left.min(peeked);
        let mut got = [0u8; KEEPALIVE_LEN];
        let n = match rustix::net::recv(stream, &mut got[..take], RecvFlags::DONTWAIT) {
            Ok((n, _)) => n,
            Err(Errno::INTR | Errno::AGAIN) => continue,
            Err(e) => return Err(Stop::Io(e.into())),
        };
        if got[..n] != KEEPALIVE[at..at + n] {
            return Err(Stop::Malformed);
        }
        keepalive_left -= n;
        if keepalive_left == 0 {
            deadline = Instant::now() + timeout;
            on_alive();
        }
    }
}

/// Runs `work` on a thread of its own while `tick` tells the peer, every [`KEEPALIVE_EVERY`],
/// that we are still here; when telling fails, aborts `mark` (which `work` watches, so that it
/// stops within a chunk). Returns what `work` returned, and how telling went.
pub(crate) fn telling<T: Send, E>(
    mark: &Watermark,
    work: impl FnOnce() -> T + Send,
    tick: &mut dyn FnMut() -> Result<(), E>,
) -> (T, Result<(), E>) {
    std::thread::scope(|s| {
        let (finished, hashing) = mpsc::channel::<()>();
        let worker = s.spawn(move || {
            let done = work();
            let _ = finished.send(());
            done
        });
        let told = tick_until(&hashing, mark, tick);
        (worker.join().expect("worker thread panicked"), told)
    })
}

/// Waits for a worker that sends on `finished` when it ends, calling `tick` every
/// [`KEEPALIVE_EVERY`] meanwhile (a sender telling its receiver that it is still there while
/// it hashes). When `tick` fails (the receiver has gone), aborts `mark`, so that the worker
/// stops within a chunk, and returns the error.
pub(crate) fn tick_until<E>(
    finished: &mpsc::Receiver<()>,
    mark: &Watermark,
    tick: &mut dyn FnMut() -> Result<(), E>,
) -> Result<(), E> {
    while let Err(mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(KEEPALIVE_EVERY) {
        if let Err(e) = tick() {
            mark.abort();
            return Err(e);
        }
    }
    Ok(())
}

/// Whether the peer of `stream` has closed or reset the connection with nothing it sent left to
/// read (the rule [`wait_for`] applies): one that shut down its side after its last message is
/// still there for our answer. Reads nothing.
pub(crate) fn peer_left(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match rustix::net::recv(stream, &mut byte, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
        Ok((0, _)) => true,
        Ok(_) | Err(Errno::AGAIN | Errno::INTR) => false,
        Err(_) => true,
    }
}

/// Whether the peer of `stream` has closed or reset the connection; reads nothing.
pub(crate) fn peer_gone(stream: &TcpStream) -> bool {
    let mut fds = [PollFd::new(stream, PollFlags::RDHUP)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match poll(&mut fds, Some(&now)) {
        Ok(_) => fds[0]
            .revents()
            .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn keepalives_extend_the_wait_and_the_work_ends_it() {
        let (mut peer, ours) = pair();
        let done = Done::new().unwrap();
        let mut seen = 0;
        std::thread::scope(|s| {
            s.spawn(|| {
                let _raise = done.on_drop();
                for _ in 0..4 {
                    peer.write_all(&KEEPALIVE).unwrap();
                    std::thread::sleep(Duration::from_millis(150));
                }
            });
            // Four keepalives 150 ms apart outlast a 400 ms timeout.
            wait_for(&ours, &done, Duration::from_millis(400), &mut || seen += 1).unwrap();
        });
        assert_eq!(seen, 4);
    }

    #[test]
    fn silence_and_departure_stop_the_wait() {
        let (peer, ours) = pair();
        let done = Done::new().unwrap();
        let start = Instant::now();
        let r = wait_for(&ours, &done, Duration::from_millis(200), &mut || {});
        assert!(matches!(r, Err(Stop::Silent)), "{r:?}");
        assert!(start.elapsed() >= Duration::from_millis(200));
        drop(peer);
        let r = wait_for(&ours, &done, Duration::from_secs(60), &mut || {});
        assert!(matches!(r, Err(Stop::Gone)), "{r:?}");
    }

    #[test]
    fn the_peers_next_message_is_left_in_the_socket() {
        let (mut peer, mut ours) = pair();
        peer.write_all(&KEEPALIVE).unwrap();
        peer.write_all(b"ZTRL and the rest").unwrap();
        let done = Done::new().unwrap();
        // The message is in, so the work gets the timeout and no more.
        let r = wait_for(&ours, &done, Duration::from_millis(200), &mut || {});
        assert!(matches!(r, Err(Stop::Silent)), "{r:?}");
        let mut next = [0u8; 4];
        std::io::Read::read_exact(&mut ours, &mut next).unwrap();
        assert_eq!(&next, b"ZTRL");
    }

    /// A peer that sent its next message and closed at once is not gone before the message is
    /// seen: the work then gets the timeout, as for any peer whose message is in.
    #[test]
    fn a_message_before_the_end_of_the_connection_is_seen() {
        let (mut peer, ours) = pair();
        peer.write_all(&KEEPALIVE).unwrap();
        peer.write_all(b"ZTRL and the rest").unwrap();
        drop(peer);
        let done = Done::new().unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                let _raise = done.on_drop();
                std::thread::sleep(Duration::from_millis(100));
            });
            wait_for(&ours, &done, Duration::from_secs(60), &mut || {}).unwrap();
        });
    }

    #[test]
    fn garbage_in_a_keepalive_is_malformed() {
        let (mut peer, ours) = pair();
        peer.write_all(b"ZNOP\0\0\x01\0\0").unwrap();
        let done = Done::new().unwrap();
        let r = wait_for(&ours, &done, Duration::from_secs(60), &mut || {});
        assert!(matches!(r, Err(Stop::Malformed)), "{r:?}");
    }
}
