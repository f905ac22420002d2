//! The receiver's side of the handshake: the hello read within a deadline, the token proved
//! both ways, and the refusals (a name in use, one that exists, too little space) that end a
//! transfer before any payload flows.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use rustix::fs::AtFlags;
use rustix::io::Errno;

use super::Receiver;
use crate::auth::{self, Integrity, Role};
use crate::error::RecvError;
use crate::name::Escaped;
use crate::units::Bytes;
use crate::watch;
use crate::wire::{read_hello, read_proof, Header, ProtocolError, RefuseCode, Reply, KEEPALIVE};

/// How long a sender waits for another connection to let go of its name before it is refused
/// as busy, while that connection's sender still looks alive.
pub(super) const SAME_NAME_GRACE: Duration = Duration::from_secs(3);

impl Receiver {
    /// Reads the hello before `deadline`, refusing (with the reason) one that is not zsend's,
    /// of another version, malformed or with an unsafe name.
    pub(super) fn hello(&self, stream: &TcpStream, deadline: Instant) -> Result<Header, RecvError> {
        read_hello(&mut Deadline::new(stream, deadline)).map_err(|e| {
            if !matches!(e, ProtocolError::Truncated(_) | ProtocolError::Io(..)) {
                refuse(stream, e.refuse_code(), &e.to_string());
            }
            e.into()
        })
    }

    /// With a token, challenges the sender and checks its proof; without one, lets anyone in.
    /// Returns the key that seals this connection's digests (none without a token).
    pub(super) fn authenticate(
        &self,
        stream: &TcpStream,
        header: &Header,
        deadline: Instant,
    ) -> Result<Integrity, RecvError> {
        let Some(token) = &self.config.token else {
            return Ok(Integrity::none());
        };
        let auth_refused = |msg: &str| {
            refuse(stream, RefuseCode::Auth, msg);
            RecvError::Auth(msg.to_owned())
        };
        let Some(theirs) = header.auth_nonce else {
            return Err(auth_refused(
                "this receiver requires a token: give zsend --token-file",
            ));
        };
        let hello = header.encode_hello();
        let ours = auth::nonce().map_err(|e| self.local("drawing a nonce", e))?;
        let proof = auth::proof(token, Role::Receiver, &theirs, &ours, &hello);
        let challenge = Reply::Challenge { nonce: ours, proof };
        tell(
            stream,
            &challenge.encode(),
            "authenticating",
            0,
            header.size,
        )?;
        let answer = read_proof(&mut Deadline::new(stream, deadline))?;
        if !auth::verify(token, Role::Sender, &theirs, &ours, &hello, &answer) {
            return Err(auth_refused("wrong token"));
        }
        Ok(Integrity::derive(token, &theirs, &ours, &hello))
    }

    /// Refuses names that exist (unless `--force`).
    pub(super) fn check_exists(
        &self,
        stream: &TcpStream,
        header: &Header,
    ) -> Result<(), RecvError> {
        match rustix::fs::statat(&self.dir, header.name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => {
                let is_dir = rustix::fs::FileType::from_raw_mode(st.st_mode)
                    == rustix::fs::FileType::Directory;
                if is_dir {
                    let msg = format!("{} is a directory", Escaped(&header.name));
                    return Err(refused(stream, RefuseCode::Exists, msg));
                }
                if !self.config.force {
                    return Err(refused(
                        stream,
                        RefuseCode::Exists,
                        "file exists (use --force on the receiver)".into(),
                    ));
                }
            }
            Err(Errno::NOENT) => {}
            Err(e) => {
                let msg = format!("checking {}: {e}", Escaped(&header.name));
                return Err(refused(stream, RefuseCode::Io, msg));
            }
        }
        Ok(())
    }

    /// Refuses files that cannot fit, given that `held` bytes of them are already on disk.
    pub(super) fn check_space(
        &self,
        stream: &TcpStream,
        header: &Header,
        held: u64,
    ) -> Result<(), RecvError> {
        if let Ok(vfs) = rustix::fs::fstatvfs(&self.dir) {
            let have = vfs.f_bavail.saturating_mul(vfs.f_frsize);
            // A stream's length is unknown: the disk filling up is caught as it happens.
            let need = header
                .sparse_data_len
                .unwrap_or(header.size)
                .saturating_sub(held);
            if need > have {
                let msg = format!(
                    "not enough space on {}: need {}, have {}",
                    self.config.dir.display(),
                    Bytes(need),
                    Bytes(have)
                );
                return Err(refused(stream, RefuseCode::NoSpace, msg));
            }
        }
        Ok(())
    }

    /// Reserves `name` for this transfer. When another connection holds it, waits for it to
    /// let go: a sender interrupted a moment ago may not look gone yet (its kernel still
    /// delivers what it had sent, and the end of its connection comes last), so a live-looking
    /// holder gets [`SAME_NAME_GRACE`]; one whose sender has gone (its partial is being kept)
    /// gets the timeout. So a sender trying again at once resumes instead of being turned
    /// away. `None` if a live transfer still holds the name after that.
    pub(super) fn claim(&self, name: &str, stream: &TcpStream) -> Option<Claim<'_>> {
        let start = Instant::now();
        let grace = start + SAME_NAME_GRACE.min(self.config.timeout);
        let deadline = start + self.config.timeout;
        let lock = || self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let mut held = lock();
        let mut told = Instant::now();
        while let Some(holder) = held.get(name) {
            let until = match watch::peer_gone(holder) {
                true => deadline,
                false => grace,
            };
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            // The sender is kept told that it waits (protocol, section 2).
            if told.elapsed() >= watch::KEEPALIVE_EVERY {
                told = Instant::now();
                if (&*stream).write_all(&KEEPALIVE).is_err() {
                    return None;
                }
            }
            // Woken when a name is released; and now and then, to see the holder's sender go.
            held = self
                .released
                .wait_timeout(held, left.min(Duration::from_millis(50)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        held.insert(name.to_owned(), stream.try_clone().ok()?);
        Some(Claim {
            rx: self,
            name: name.to_owned(),
        })
    }
}

/// A name reserved by a running transfer; released on drop.
pub(super) struct Claim<'a> {
    rx: &'a Receiver,
    name: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.rx
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.name);
        self.rx.released.notify_all();
    }
}

/// Reads from a stream but fails once `deadline` has passed, however the bytes trickle in: a
/// peer sending one byte a second cannot stretch the handshake.
pub(super) struct Deadline<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
}

impl<'a> Deadline<'a> {
    pub(super) fn new(stream: &'a TcpStream, deadline: Instant) -> Self {
        Deadline { stream, deadline }
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        (&*self.stream).read(buf)
    }
}

/// Sends a refusal, then lets the sender read it before the connection closes: shut down our
/// side and drain what the sender already sent (bounded in bytes and time), so the close does
/// not turn into a reset that could overtake the refusal.
pub(super) fn refuse(stream: &TcpStream, code: RefuseCode, message: &str) {
    let mut s = stream;
    if s.write_all(&Reply::Refuse(code, message.to_owned()).encode())
        .is_err()
    {
        return;
    }
    linger(stream);
}

pub(super) fn refused(stream: &TcpStream, code: RefuseCode, message: String) -> RecvError {
    refuse(stream, code, &message);
    RecvError::Refused(message)
}

/// Sends an accept (or a resume offer) after which the payload flows.
pub(super) fn accept(stream: &TcpStream, header: &Header, reply: Reply) -> Result<(), RecvError> {
    tell(stream, &reply.encode(), "accepting", 0, header.size)
}

/// Writes a message to the sender; failing is a network error `during` this step, with
/// `received` of `expected` bytes in.
pub(crate) fn tell(
    stream: &TcpStream,
    bytes: &[u8],
    during: &'static str,
    received: u64,
    expected: u64,
) -> Result<(), RecvError> {
    (&*stream)
        .write_all(bytes)
        .map_err(|error| RecvError::Network {
            during,
            received,
            expected,
            error,
        })
}

/// Closes our side and reads (and drops) what the peer still sends, for up to 2 s in all or
/// 1 MiB: closing with unread data would reset the connection, and a reset can destroy our
/// last words before the peer reads them. In all: a peer trickling a byte now and then kept a
/// refused connection, and its transfer slot, for days.
pub(crate) fn linger(stream: &TcpStream) {
    let mut s = stream;
    let _ = stream.shutdown(Shutdown::Write);
    let until = Instant::now() + LINGER;
    let mut sink = [0u8; 16 * 1024];
    let mut drained = 0usize;
    while drained < 1 << 20 {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match s.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

/// How long [`linger`] waits for the peer to read a refusal, in all.
const LINGER: Duration = Duration::from_secs(2);
