//! The receiving side: accept connections, check each hello, splice the payload into a hidden
//! temporary file while a second thread hashes it back, and publish it only when verified and
//! durable.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, Timespec, Timestamps};
use rustix::io::Errno;
use socket2::{Domain, Protocol, Socket, Type};

use crate::auth::{self, Integrity, Role, Seal, Token};
use crate::error::RecvError;
use crate::hash::SMALL_FILE;
use crate::hash::{
    hash_from, hash_from_timed, hash_reader, Prefix, Start, Watermark, UNTIL_CLOSED,
};
use crate::name::Escaped;
use crate::partial::{self, TempFile};
use crate::stages::StageTimes;
use crate::sys::{self, CopyError, Pipe, SpliceStats};
use crate::units::Bytes;
use crate::watch::{self, Done, Stop};
use crate::wire::ProtocolError;
use crate::wire::{
    encode_hops, read_hello, read_proof, Decision, Header, HopReport, PrefixProof, Record,
    RefuseCode, Reply, Status, Trailer, Verdict,
};
use chain::Forward;

mod ahead;
mod chain;
mod land;
mod stop;
mod tree;

pub use tree::TreeCounts;

/// Pipe size asked for with F_SETPIPE_SZ (the default pipe-max-size).
const PIPE_SIZE: usize = 1 << 20;
/// Writeback and drop-behind work in windows of this many bytes (see `sys::DropBehind`).
const WRITEBACK_WINDOW: u64 = 16 << 20;
/// How long a sender waits for another connection to let go of its name before it is refused
/// as busy, while that connection's sender still looks alive.
const SAME_NAME_GRACE: Duration = Duration::from_secs(3);
/// Connections refused as busy that may linger at once, to let the refusal reach the sender.
const MAX_LINGERING: usize = 64;

/// How the receiver behaves.
#[derive(Clone, Debug)]
pub struct ReceiverConfig {
    /// Where files land.
    pub dir: PathBuf,
    /// Replace existing files.
    pub force: bool,
    /// Longest wait for the peer at any step; a stalled transfer is dropped after it.
    pub timeout: Duration,
    /// Most transfers served at once; the next connection is refused as busy.
    pub max_transfers: usize,
    /// Deliver payloads to standard output instead of files (one transfer at a time).
    pub to_stdout: bool,
    /// Shared secret; with one, every sender must prove it holds it before anything else.
    pub token: Option<Token>,
    /// Networks this receiver may forward a chain to; empty: it never forwards.
    pub allow_forward: Vec<ipnet::IpNet>,
}

/// The outcome of one connection, for the log line and `--json`.
#[derive(Debug)]
pub struct TransferRecord {
    /// The sender's address.
    pub peer: SocketAddr,
    /// The announced name, if a header was read.
    pub name: Option<String>,
    /// The announced size, if a header was read.
    pub size: Option<u64>,
    /// Bytes of the file now held, from its start (a resumed prefix included).
    pub received: u64,
    /// Bytes kept from an interrupted transfer that this one resumed from (0: none).
    pub resumed_from: u64,
    /// From accept to verdict.
    pub elapsed: Duration,
    /// Our digest of what we wrote, if hashed.
    pub sha256: Option<[u8; 32]>,
    /// Whether both digests were computed and matched.
    pub verified: bool,
    /// Whether the payload went through splice (false: the read/write fallback).
    pub zero_copy: bool,
    /// CPU of each stage, and the fsync wall time.
    pub stages: StageTimes,
    /// For a tree: what happened to its entries.
    pub tree: Option<TreeCounts>,
    /// For a chain: the verdicts of the hosts after this one.
    pub hops: Vec<HopReport>,
    /// Landed, or why not.
    pub result: Result<(), RecvError>,
}

impl TransferRecord {
    /// A record of nothing yet from `peer`.
    pub fn new(peer: SocketAddr) -> TransferRecord {
        TransferRecord {
            peer,
            name: None,
            size: None,
            received: 0,
            resumed_from: 0,
            elapsed: Duration::ZERO,
            sha256: None,
            verified: false,
            zero_copy: true,
            stages: StageTimes::default(),
            tree: None,
            hops: Vec::new(),
            result: Ok(()),
        }
    }
}

/// A listening receiver.
pub struct Receiver {
    listener: TcpListener,
    dir: OwnedFd,
    config: ReceiverConfig,
    active: AtomicUsize,
    lingering: AtomicUsize,
    /// Names being received, each with its connection (to tell whether its sender is gone).
    in_flight: Mutex<HashMap<String, TcpStream>>,
    /// Signalled whenever a name is released.
    released: Condvar,
    /// Most small files of a tree held open while they wait to land together.
    batch_files: usize,
    /// The connections being served, for [`Receiver::stop`].
    connections: stop::Connections,
    /// When it was bound: its temporary files are all younger.
    started: SystemTime,
}

impl Receiver {
    /// Opens the destination directory and binds `addr` (port 0 picks a free port).
    pub fn bind(addr: SocketAddr, config: ReceiverConfig) -> io::Result<Receiver> {
        let dir = rustix::fs::open(
            &config.dir,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        sock.set_reuse_address(true)?;
        if addr.is_ipv6() {
            let _ = sock.set_only_v6(false);
        }
        sock.bind(&addr.into())?;
        sock.listen(128)?;
        // Each small file of a tree stays open until its batch lands. A transfer holds up to
        // four batches' worth at once (one landing, one handed over, one gathering, and the
        // files made ahead), and each file may hold its directory open too: a batch may use a
        // sixteenth of the open files allowed, shared among the transfers served at once.
        let open_files = crate::sys::raise_open_files_limit();
        let per_transfer = open_files / 16 / config.max_transfers.max(1) as u64;
        let batch_files = per_transfer.clamp(16, 1024) as usize;
        Ok(Receiver {
            started: SystemTime::now(),
            connections: stop::Connections::default(),
            batch_files,
            listener: sock.into(),
            dir,
            config,
            active: AtomicUsize::new(0),
            lingering: AtomicUsize::new(0),
            in_flight: Mutex::new(HashMap::new()),
            released: Condvar::new(),
        })
    }

    /// Removes the hidden files (`.zrecv-*.part`, `.zrecv-*.resume`) in the receive directory
    /// and all its subdirectories that have not been modified for `max_age`: what a killed
    /// receiver left behind, and partials nobody resumed in time. Younger ones may belong to a
    /// receiver still running on the same directory, or wait to be resumed; this receiver's own
    /// temporary files, and the partials its transfers took up, are never removed. The walk
    /// stays beneath the directory and never follows a symlink. Failures are logged as warnings
    /// and counted.
    pub fn remove_stale_partials(&self, max_age: Duration) -> crate::sweep::Swept {
        crate::sweep::sweep(self.dir.as_fd(), max_age, Some(self.started))
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves exactly one connection and returns its outcome (an error if stopped before one
    /// came: see [`Receiver::is_stopped`]).
    pub fn serve_once(&self) -> io::Result<TransferRecord> {
        let (stream, peer) = self.listener.accept()?;
        let _registered = self.connections.register(&stream);
        Ok(self.handle(stream, peer))
    }

    /// Serves connections until [`Receiver::stop`], each on its own thread, at most
    /// `max_transfers` at once, then waits for the transfers in flight to end. `report` is
    /// called with every outcome.
    pub fn serve(&self, report: &(dyn Fn(&TransferRecord) + Sync)) -> io::Result<()> {
        std::thread::scope(|s| loop {
            let (stream, peer) = match self.listener.accept() {
                Ok(c) => c,
                Err(_) if self.connections.stopped() => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    // Out of descriptors or memory: say so and give running transfers a
                    // moment to finish before accepting again.
                    log::warn!("accepting a connection: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if self.active.fetch_add(1, Ordering::AcqRel) >= self.config.max_transfers {
                self.active.fetch_sub(1, Ordering::AcqRel);
                self.refuse_busy(s, stream, peer);
                continue;
            }
            s.spawn(move || {
                let registered = self.connections.register(&stream);
                let record = self.handle(stream, peer);
                drop(registered);
                self.active.fetch_sub(1, Ordering::AcqRel);
                report(&record);
            });
        })
    }

    fn refuse_busy<'s>(
        &'s self,
        s: &'s std::thread::Scope<'s, '_>,
        stream: TcpStream,
        peer: SocketAddr,
    ) {
        log::warn!(
            "{peer}: refused: busy ({} transfers running)",
            self.config.max_transfers
        );
        if self.lingering.fetch_add(1, Ordering::AcqRel) >= MAX_LINGERING {
            self.lingering.fetch_sub(1, Ordering::AcqRel);
            return; // dropping the stream closes it
        }
        s.spawn(move || {
            let msg = format!(
                "busy: the receiver is serving {} transfers; try again later",
                self.config.max_transfers
            );
            refuse(&stream, RefuseCode::Busy, &msg);
            self.lingering.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// Runs one transfer from hello to verdict.
    fn handle(&self, stream: TcpStream, peer: SocketAddr) -> TransferRecord {
        let start = Instant::now();
        let mut record = TransferRecord::new(peer);
        record.result = self.transfer(&stream, &mut record);
        record.elapsed = start.elapsed();
        record
    }

    fn transfer(&self, stream: &TcpStream, record: &mut TransferRecord) -> Result<(), RecvError> {
        let timeout = Some(self.config.timeout);
        stream
            .set_read_timeout(timeout)
            .and_then(|()| stream.set_write_timeout(timeout))
            .map_err(|e| self.local("configuring the connection", e))?;
        // The whole handshake must finish within the timeout, however slowly bytes trickle in.
        let deadline = Instant::now() + self.config.timeout;
        let header = match read_hello(&mut Deadline::new(stream, deadline)) {
            Ok(h) => h,
            Err(e) => {
                if !matches!(e, ProtocolError::Truncated(_) | ProtocolError::Io(..)) {
                    refuse(stream, e.refuse_code(), &e.to_string());
                }
                return Err(e.into());
            }
        };
        record.name = Some(header.name.clone());
        record.size = Some(header.size);
        // Before any filesystem call.
        let integrity = self.authenticate(stream, &header, deadline)?;
        stream
            .set_read_timeout(timeout)
            .map_err(|e| self.local("configuring the connection", e))?;

        if header.tree() {
            if self.config.to_stdout {
                let msg = "this receiver writes one file to standard output, not a tree";
                return Err(refused(stream, RefuseCode::BadHeader, msg.into()));
            }
            accept(stream, &header, Reply::Accept)?;
            return self.receive_tree(stream, &header, &integrity, record);
        }
        let mut forward = match &header.chain {
            Some(hops) => Some(self.open_forward(stream, &header, hops)?),
            None => None,
        };
        let result = self.transfer_file(stream, &header, &integrity, record, forward.as_mut());
        if let Some(f) = forward {
            // After our own verdict: the sender reads every host's.
            record.hops = f.finish();
            let _ = (&*stream).write_all(&encode_hops(&chain::sealed(&record.hops, &integrity)));
        }
        result
    }

    /// Receives one file (into a temporary file, or to standard output) after the handshake,
    /// forwarding it on when it is part of a chain, and sends the verdict.
    fn transfer_file(
        &self,
        stream: &TcpStream,
        header: &Header,
        integrity: &Integrity,
        record: &mut TransferRecord,
        forward: Option<&mut Forward>,
    ) -> Result<(), RecvError> {
        let verdict = |status, digest, message: &str| {
            send_verdict(stream, integrity, status, digest, message);
        };
        if self.config.to_stdout {
            accept(stream, header, Reply::Accept)?;
            let digest = self
                .deliver_to_stdout(stream, header, record)
                .inspect_err(|e| {
                    if let RecvError::Local { .. } = e {
                        verdict(Status::Failed, None, &e.to_string());
                    }
                })?;
            let digest = self.check_trailer(stream, header, integrity, digest, record, None)?;
            record.verified = digest.is_some();
            verdict(Status::Landed, digest, "");
            return Ok(());
        }
        let Some(_claim) = self.claim(&header.name, stream) else {
            let msg = format!(
                "busy: {} is being received from another sender",
                Escaped(&header.name)
            );
            return Err(refused(stream, RefuseCode::Busy, msg));
        };
        self.check_exists(stream, header)?;
        let kept = partial::take(&self.dir, header);
        let held = kept.as_ref().map_or(0, |(_, held)| *held);
        self.check_space(stream, header, held)?;
        let temp = self.ready_temp(stream, header, kept.map(|(temp, _)| temp))?;
        record.received = held;
        let outcome = self.receive_to_temp(stream, header, integrity, &temp, held, record, forward);
        let digest = match outcome {
            Ok(digest) => digest,
            Err(e) => {
                if e.is_interruption() {
                    partial::keep(temp, header, record.received);
                } else if let RecvError::Local { .. } = e {
                    // At once: the sender may still be sending, and will read this when its
                    // writes fail.
                    verdict(Status::Failed, None, &e.to_string());
                }
                return Err(e);
            }
        };
        match self.land(temp, &header.name, header) {
            Ok(fsync) => record.stages.fsync = fsync,
            Err(e) => {
                verdict(Status::Failed, digest, &e.to_string());
                return Err(e);
            }
        }
        record.verified = digest.is_some();
        verdict(Status::Landed, digest, "");
        Ok(())
    }

    /// Accepts (offering to resume from the `held` bytes the temporary file already has),
    /// receives the payload into it and checks the trailer. Returns the digest to land with.
    #[allow(clippy::too_many_arguments)]
    fn receive_to_temp(
        &self,
        stream: &TcpStream,
        header: &Header,
        integrity: &Integrity,
        temp: &TempFile<impl AsFd>,
        held: u64,
        record: &mut TransferRecord,
        mut forward: Option<&mut Forward>,
    ) -> Result<Option<[u8; 32]>, RecvError> {
        let prefix = match held {
            0 => {
                accept(stream, header, Reply::Accept)?;
                Prefix::empty()
            }
            _ => self.agree_on_prefix(stream, header, temp, held, record)?,
        };
        record.resumed_from = prefix.len();
        let pipe = Pipe::new(PIPE_SIZE).map_err(|e| self.local("creating a pipe", e))?;
        let route = Route {
            pipe: &pipe,
            forward: forward.as_deref_mut(),
        };
        let received =
            self.receive_payload(stream, header, temp, Start::Hashed(prefix), route, record)?;
        self.check_trailer(stream, header, integrity, received.digest, record, forward)
    }

    /// Offers to resume from the `held` bytes kept from an interrupted transfer, with a fresh
    /// nonce; hashes them while the sender hashes its own and proves it holds the same bytes;
    /// then says whether the payload goes on from there. Returns the prefix to go on from:
    /// empty, with the file emptied, when the sender's proof does not match (or ours could not
    /// be read back). Our digest never crosses the wire, so a sender without the bytes learns
    /// nothing it could extend into a "verified" file.
    fn agree_on_prefix(
        &self,
        stream: &TcpStream,
        header: &Header,
        temp: &TempFile<impl AsFd>,
        held: u64,
        record: &mut TransferRecord,
    ) -> Result<Prefix, RecvError> {
        let nonce = auth::nonce().map_err(|e| self.local("drawing a nonce", e))?;
        accept(
            stream,
            header,
            Reply::Resume {
                offset: held,
                nonce,
            },
        )?;
        let sparse = header.sparse_data_len.is_some();
        let mark = Watermark::complete(held);
        let done = Done::new().map_err(|e| self.local("creating an event", e))?;
        let file = &temp.file;
        let (ours, watched) = std::thread::scope(|s| {
            let hasher = s.spawn(|| {
                let _raise = done.on_drop();
                Prefix::of_file_until(file, held, sparse, &mark)
            });
            let watched = watch::wait_for(stream, &done, self.config.timeout, &mut || {});
            if watched.is_err() {
                mark.abort();
            }
            (hasher.join().expect("hashing thread panicked"), watched)
        });
        watched.map_err(|stop| {
            self.gave_up(stop, "waiting for the resume proof", held, header.size)
        })?;
        let theirs = PrefixProof::read(&mut &*stream)?;
        let matches = match ours {
            Ok(Some(ours)) => {
                let proof = auth::prefix_proof(&nonce, held, &ours.digest());
                auth::same_proof(&proof, &theirs.0).then_some(ours)
            }
            Ok(None) => unreachable!("aborted only when the wait failed"),
            Err(e) => {
                log::warn!("reading back the partial {}: {e}", Escaped(&header.name));
                None
            }
        };
        let decision = match matches {
            Some(_) => Decision::Resume,
            None => {
                log::info!(
                    "{}: the partial file differs from the sender's; starting over",
                    Escaped(&header.name)
                );
                record.received = 0;
                rustix::fs::ftruncate(&temp.file, 0)
                    .map_err(io::Error::from)
                    .and_then(|()| prepare(&temp.file, header))
                    .map_err(|e| self.local("emptying the partial file", e))?;
                Decision::Restart
            }
        };
        tell(
            stream,
            &decision.encode(),
            "deciding to resume",
            held,
            header.size,
        )?;
        Ok(matches.unwrap_or_else(Prefix::empty))
    }

    /// Reads the trailer, checks its seal and compares digests, telling the sender when they
    /// differ (or when it abandoned the file). A forwarding receiver passes the trailer on.
    fn check_trailer(
        &self,
        stream: &TcpStream,
        header: &Header,
        integrity: &Integrity,
        digest: Option<[u8; 32]>,
        record: &mut TransferRecord,
        mut forward: Option<&mut Forward>,
    ) -> Result<Option<[u8; 32]>, RecvError> {
        // Keepalives still coming go on to the next host of a chain, which may be hashing too.
        let mut relay = || {
            if let Some(f) = forward.as_deref_mut() {
                f.keepalive();
            }
        };
        let trailer = match Trailer::read_telling(&mut &*stream, &mut relay) {
            Ok(t) => t,
            Err(ProtocolError::Abandoned) => {
                if let Some(f) = forward {
                    f.pass_abandoned();
                }
                let msg = "source changed during transfer; discarded";
                send_verdict(stream, integrity, Status::Failed, None, msg);
                return Err(ProtocolError::Abandoned.into());
            }
            Err(e) => return Err(e.into()),
        };
        if header.verify() != trailer.sha256.is_some() {
            return Err(ProtocolError::Malformed(
                "trailer digest does not match the header's verify flag".into(),
            )
            .into());
        }
        record.sha256 = digest;
        if !trailer.opens(integrity, 0) {
            if let Some(f) = forward {
                f.pass_abandoned();
            }
            let msg = RecvError::Unsealed.to_string();
            send_verdict(stream, integrity, Status::Mismatch, digest, &msg);
            return Err(RecvError::Unsealed);
        }
        if let Some(f) = forward {
            f.pass_trailer(trailer.sha256);
        }
        if trailer.sha256 != digest {
            let hex = |d: Option<[u8; 32]>| d.map(hex::encode).unwrap_or_default();
            send_verdict(
                stream,
                integrity,
                Status::Mismatch,
                digest,
                "checksum mismatch; discarded",
            );
            return Err(RecvError::Mismatch {
                sent: hex(trailer.sha256),
                received: hex(digest),
            });
        }
        Ok(digest)
    }

    /// What a failed wait on our own work for the sender means for the transfer.
    pub(crate) fn gave_up(
        &self,
        stop: Stop,
        during: &'static str,
        received: u64,
        expected: u64,
    ) -> RecvError {
        let error = match stop {
            Stop::Gone => io::Error::new(io::ErrorKind::ConnectionAborted, "the sender went away"),
            Stop::Silent => io::ErrorKind::TimedOut.into(),
            Stop::Malformed => {
                return ProtocolError::Malformed("a keepalive with content".into()).into()
            }
            Stop::Io(e) => e,
        };
        RecvError::Network {
            during,
            received,
            expected,
            error,
        }
    }

    /// Readies the partial file kept from an interrupted transfer, or a new temporary file,
    /// refusing the transfer if it cannot.
    fn ready_temp<'d>(
        &'d self,
        stream: &TcpStream,
        header: &Header,
        kept: Option<TempFile<&'d OwnedFd>>,
    ) -> Result<TempFile<&'d OwnedFd>, RecvError> {
        match kept {
            Some(temp) => self.prepare_temp(stream, header, temp),
            None => self.create_temp(stream, header),
        }
    }

    /// Creates and readies the hidden temporary file, refusing the transfer if it cannot.
    fn create_temp(
        &self,
        stream: &TcpStream,
        header: &Header,
    ) -> Result<TempFile<&OwnedFd>, RecvError> {
        let temp = match TempFile::create(&self.dir) {
            Ok(t) => t,
            Err(e) => {
                let msg = format!(
                    "cannot create a file in {}: {}",
                    self.config.dir.display(),
                    crate::units::os_reason(&e)
                );
                return Err(refused(stream, RefuseCode::Io, msg));
            }
        };
        self.prepare_temp(stream, header, temp)
    }

    /// Sizes or preallocates a temporary file (see [`prepare`]), refusing the transfer if it
    /// cannot.
    fn prepare_temp<'d>(
        &'d self,
        stream: &TcpStream,
        header: &Header,
        temp: TempFile<&'d OwnedFd>,
    ) -> Result<TempFile<&'d OwnedFd>, RecvError> {
        if let Err(e) = prepare(&temp.file, header) {
            let code = if e.kind() == io::ErrorKind::StorageFull {
                RefuseCode::NoSpace
            } else {
                RefuseCode::Io
            };
            let msg = format!(
                "preallocating {} in {}: {}",
                Bytes(header.size),
                self.config.dir.display(),
                crate::units::os_reason(&e)
            );
            return Err(refused(stream, code, msg));
        }
        Ok(temp)
    }

    /// `--stdout`: splices the payload through to standard output, teeing it into a pipe that a
    /// second thread hashes. Nothing is written to disk.
    fn deliver_to_stdout(
        &self,
        stream: &TcpStream,
        header: &Header,
        record: &mut TransferRecord,
    ) -> Result<Option<[u8; 32]>, RecvError> {
        let pipe = Pipe::new(PIPE_SIZE).map_err(|e| self.local("creating a pipe", e))?;
        let (copy_read, copy_write) = if header.verify() {
            let copy = Pipe::new(PIPE_SIZE).map_err(|e| self.local("creating a pipe", e))?;
            let (r, w) = copy.into_ends();
            (Some(r), Some(w))
        } else {
            (None, None)
        };
        let mut received = 0u64;
        let (copied, digest) = std::thread::scope(|s| {
            let hasher = copy_read.map(|r| s.spawn(move || hash_reader(File::from(r))));
            let mut copy_write = copy_write;
            let mut sink = StdoutSink {
                pipe: &pipe,
                copy: copy_write.as_ref(),
                out: std::io::stdout(),
            };
            let copied = receive_into(stream, header, 0, &mut sink, &mut |done| received = done);
            // The hashing thread sees end of file once the copy's write end is closed.
            copy_write.take();
            let digest = hasher.map(|h| h.join().expect("hashing thread panicked"));
            (copied, digest)
        });
        record.received = received;
        self.payload_outcome(header, copied, record, "writing to standard output")?;
        digest
            .transpose()
            .map_err(|e| self.local("hashing what went to standard output", e))
    }

    /// Turns the end of a payload into the transfer's error, if it is one.
    fn payload_outcome(
        &self,
        header: &Header,
        copied: Result<u64, Incoming>,
        record: &mut TransferRecord,
        writing: &str,
    ) -> Result<(), RecvError> {
        let size = header.size;
        if let (true, Ok(n)) = (header.stream(), &copied) {
            record.size = Some(*n);
        }
        let network = |during, error| RecvError::Network {
            during,
            received: record.received,
            expected: size,
            error,
        };
        match copied {
            Ok(n) if n < size && !header.stream() => Err(RecvError::ShortPayload {
                received: n,
                expected: size,
            }),
            Ok(_) => Ok(()),
            Err(Incoming::Protocol(e)) => Err(e.into()),
            Err(Incoming::Copy(CopyError::Read(e))) => Err(network("receiving", e)),
            Err(Incoming::Copy(CopyError::Write(e))) => Err(self.local(writing, e)),
            Err(Incoming::Copy(CopyError::Unsupported | CopyError::SourceChanged)) => {
                unreachable!("receiving neither gives up on the kernel nor reads a source")
            }
        }
    }

    /// With a token, challenges the sender and checks its proof; without one, lets anyone in.
    /// Returns the key that seals this connection's digests (none without a token).
    fn authenticate(
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

    /// Splices the payload into the temporary file through `pipe`, hashing it back on a second
    /// thread (small files: on this one, once they are in). Once the payload is in, the hashing
    /// goes on only while the sender shows it is still there (see `watch`).
    pub(crate) fn receive_payload(
        &self,
        stream: &TcpStream,
        header: &Header,
        temp: &TempFile<impl AsFd>,
        start: Start,
        route: Route,
        record: &mut TransferRecord,
    ) -> Result<Received, RecvError> {
        let Route { pipe, mut forward } = route;
        let size = header.size;
        let file = &temp.file;
        let offset = start.offset();
        let sparse = header.sparse_data_len.is_some();
        let hash_len = if header.stream() { UNTIL_CLOSED } else { size };
        let verify = header.verify();
        let inline = !header.stream() && size <= SMALL_FILE;
        let threaded = verify && !inline;
        let done = match threaded {
            true => Some(Done::new().map_err(|e| self.local("creating an event", e))?),
            false => None,
        };
        let mark = Watermark::new();
        if !inline {
            mark.raise(offset);
        }
        let mut received = offset;
        let mut splice = SpliceStats {
            timed: !inline,
            ..SpliceStats::default()
        };
        let (copied, hashed, watched) = std::thread::scope(|s| {
            let (mut start, mut hasher) = (Some(start), None);
            if let Some(done) = &done {
                let st = start.take().expect("not taken yet");
                let mark = &mark;
                hasher = Some(s.spawn(move || {
                    let _raise = done.on_drop();
                    hash_from_timed(st, file, hash_len, mark, sparse)
                }));
            }
            let mut behind = sys::DropBehind::starting_at(offset, WRITEBACK_WINDOW);
            let copied = {
                let (mut plain, mut onward);
                let sink: &mut dyn Sink = match forward.as_deref_mut() {
                    Some(forward) => {
                        onward = chain::ForwardSink {
                            pipe,
                            file,
                            stats: &mut splice,
                            forward,
                        };
                        &mut onward
                    }
                    None => {
                        plain = FileSink {
                            pipe,
                            file,
                            stats: &mut splice,
                        };
                        &mut plain
                    }
                };
                // A small file is hashed once it is in, so no watermark (and no wake-ups) for it.
                receive_into(stream, header, offset, sink, &mut |done| {
                    received = done;
                    if !inline {
                        mark.raise(done);
                        let hashed = if verify { mark.hashed() } else { done };
                        behind.advance(file, done, hashed);
                    }
                })
            };
            if !inline {
                match &copied {
                    Ok(n) if *n == size || header.stream() => mark.close(),
                    _ => mark.abort(),
                }
            }
            // What came may take a while yet to hash (a long hole, a slow disk): the work goes
            // on only while the sender is there and says so.
            let watched = match (&done, mark.aborted()) {
                (Some(done), false) => {
                    let mut relay = || {
                        if let Some(f) = forward.as_deref_mut() {
                            f.keepalive();
                        }
                    };
                    let w = watch::wait_for(stream, done, self.config.timeout, &mut relay);
                    if w.is_err() {
                        mark.abort();
                    }
                    w
                }
                _ => Ok(()),
            };
            let hashed = match (verify, start) {
                (true, Some(st)) if copied.is_ok() => {
                    let all = Watermark::complete(size);
                    Some((hash_from(st, file, size, &all, sparse), Duration::ZERO))
                }
                _ => hasher.map(|h| h.join().expect("hashing thread panicked")),
            };
            (copied, hashed, watched)
        });
        record.received = received;
        record.zero_copy &= splice.zero_copy;
        record.stages.network_cpu += splice.to_pipe_cpu;
        record.stages.file_cpu += splice.to_file_cpu;
        let hashed = hashed.map(|(hashed, cpu)| {
            record.stages.hash_cpu += cpu;
            hashed
        });
        let writing = format!("writing {}", Escaped(&header.name));
        self.payload_outcome(header, copied, record, &writing)?;
        watched
            .map_err(|stop| self.gave_up(stop, "hashing what arrived", record.received, size))?;
        match hashed {
            None => Ok(Received::default()),
            Some(Ok((Some(digest), prefix))) => Ok(Received {
                digest: Some(digest),
                prefix,
            }),
            Some(Ok((None, _))) => unreachable!("the watermark was closed at the full size"),
            Some(Err(e)) => Err(self.local("reading back the received file", e)),
        }
    }

    /// Refuses names that exist (unless `--force`).
    fn check_exists(&self, stream: &TcpStream, header: &Header) -> Result<(), RecvError> {
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
    fn check_space(&self, stream: &TcpStream, header: &Header, held: u64) -> Result<(), RecvError> {
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

    /// Sets mode and mtime, makes the data durable, publishes under the final name `base` in the
    /// temporary file's directory and makes the rename durable. Returns the time spent in fsync.
    pub(crate) fn land<D: AsFd>(
        &self,
        temp: TempFile<D>,
        base: &str,
        header: &Header,
    ) -> Result<Duration, RecvError> {
        self.set_metadata(&temp.file, header)?;
        let start = Instant::now();
        rustix::fs::fsync(&temp.file).map_err(|e| self.local("syncing the data", e.into()))?;
        let mut synced = start.elapsed();
        self.publish(&temp.dir, &temp.name, base)?;
        // Whatever an earlier, interrupted transfer of this name kept is obsolete now.
        partial::forget(&temp.dir, &header.name);
        let start = Instant::now();
        rustix::fs::fsync(&temp.dir).map_err(|e| self.local("syncing the directory", e.into()))?;
        synced += start.elapsed();
        temp.disarm();
        Ok(synced)
    }

    /// Applies the header's mode (`& 0o777`) and mtime to a received file.
    pub(crate) fn set_metadata(&self, f: &File, header: &Header) -> Result<(), RecvError> {
        let mode = Mode::from_raw_mode(header.mode & 0o777);
        rustix::fs::fchmod(f, mode).map_err(|e| self.local("setting the mode", e.into()))?;
        rustix::fs::futimens(f, &timestamps(header.mtime_sec, header.mtime_nsec))
            .map_err(|e| self.local("setting the mtime", e.into()))
    }

    /// Renames `temp` to `name` within `dir`: never replacing anything unless `--force`.
    pub(crate) fn publish(&self, dir: impl AsFd, temp: &str, name: &str) -> Result<(), RecvError> {
        let dir = dir.as_fd();
        let result = if self.config.force {
            rustix::fs::renameat(dir, temp, dir, name)
        } else {
            match rustix::fs::renameat_with(dir, temp, dir, name, RenameFlags::NOREPLACE) {
                // Filesystems without RENAME_NOREPLACE: link(2) never replaces either.
                Err(Errno::INVAL) | Err(Errno::NOSYS) => {
                    rustix::fs::linkat(dir, temp, dir, name, AtFlags::empty())
                        .and_then(|()| rustix::fs::unlinkat(dir, temp, AtFlags::empty()))
                }
                other => other,
            }
        };
        result.map_err(|e| match e {
            Errno::EXIST => RecvError::Refused(format!(
                "{} appeared while it was being received; kept the existing file",
                Escaped(name)
            )),
            e => self.local(&format!("renaming into {}", Escaped(name)), e.into()),
        })
    }

    /// Reserves `name` for this transfer. When another connection holds it, waits for it to
    /// let go: a sender interrupted a moment ago may not look gone yet (its kernel still
    /// delivers what it had sent, and the end of its connection comes last), so a live-looking
    /// holder gets [`SAME_NAME_GRACE`]; one whose sender has gone (its partial is being kept)
    /// gets the timeout. So a sender trying again at once resumes instead of being turned
    /// away. `None` if a live transfer still holds the name after that.
    fn claim(&self, name: &str, stream: &TcpStream) -> Option<Claim<'_>> {
        let start = Instant::now();
        let grace = start + SAME_NAME_GRACE.min(self.config.timeout);
        let deadline = start + self.config.timeout;
        let lock = || self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let mut held = lock();
        while let Some(holder) = held.get(name) {
            let until = match watch::peer_gone(holder) {
                true => deadline,
                false => grace,
            };
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
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

    fn local(&self, during: &str, error: io::Error) -> RecvError {
        RecvError::Local {
            during: during.to_owned(),
            dir: self.config.dir.clone(),
            error,
        }
    }
}

/// What receiving a payload found.
#[derive(Default)]
pub(crate) struct Received {
    /// SHA-256 of the whole file, when verifying.
    pub(crate) digest: Option<[u8; 32]>,
    /// For a [`Start::Unhashed`] start: SHA-256 of the bytes that were already there.
    pub(crate) prefix: Option<[u8; 32]>,
}

/// Where a payload goes besides the temporary file: the pipe to splice it through, and the
/// next host of a chain.
pub(crate) struct Route<'a> {
    pub(crate) pipe: &'a Pipe,
    pub(crate) forward: Option<&'a mut Forward>,
}

/// What stopped a payload short.
enum Incoming {
    /// The copy itself failed.
    Copy(CopyError),
    /// A sparse sender's records broke the rules.
    Protocol(ProtocolError),
}

/// Where a payload goes: a file (data spliced at its offset, holes left unwritten) or standard
/// output (data spliced through, holes written as zeros).
trait Sink {
    /// Moves `len` bytes of data at `offset` from the socket; returns how many arrived.
    fn data(
        &mut self,
        stream: &TcpStream,
        offset: u64,
        len: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, CopyError>;
    /// A hole of `len` bytes at `offset`.
    fn hole(&mut self, offset: u64, len: u64) -> Result<(), CopyError>;
}

/// Into the temporary file, hashed later by reading it back.
struct FileSink<'a> {
    pipe: &'a Pipe,
    file: &'a File,
    stats: &'a mut SpliceStats,
}

impl Sink for FileSink<'_> {
    fn data(
        &mut self,
        stream: &TcpStream,
        offset: u64,
        len: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, CopyError> {
        let mut to = sys::SpliceTo {
            pipe: self.pipe,
            file: self.file,
            stats: self.stats,
            onward: None,
        };
        to.take_from(stream, offset, len, progress)
    }

    fn hole(&mut self, _offset: u64, _len: u64) -> Result<(), CopyError> {
        Ok(()) // the file was sized with ftruncate: the hole is already there
    }
}

/// Through to standard output, teed into a pipe that a hashing thread reads.
struct StdoutSink<'a> {
    pipe: &'a Pipe,
    copy: Option<&'a OwnedFd>,
    out: std::io::Stdout,
}

impl Sink for StdoutSink<'_> {
    fn data(
        &mut self,
        stream: &TcpStream,
        _offset: u64,
        len: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, CopyError> {
        sys::splice_through(stream, self.pipe, self.copy, &self.out, len, progress)
    }

    fn hole(&mut self, _offset: u64, len: u64) -> Result<(), CopyError> {
        let zeros = vec![0u8; (1 << 20).min(len as usize)];
        let mut left = len;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            self.out.write_all(&zeros[..n]).map_err(CopyError::Write)?;
            if let Some(c) = self.copy {
                File::from(c.try_clone().map_err(CopyError::Write)?)
                    .write_all(&zeros[..n])
                    .map_err(CopyError::Write)?;
            }
            left -= n as u64;
        }
        Ok(())
    }
}

/// Receives the payload into `sink` from byte `start` on (0 unless resuming): one run of the
/// remaining bytes; for a sparse file, records that must tile the rest of the file in order
/// with data adding up to what the header announced; for a stream, data records until the end
/// record. Returns the logical bytes covered: fewer than the size if the sender closed early.
/// `progress` gets that count as it grows.
fn receive_into(
    stream: &TcpStream,
    header: &Header,
    start: u64,
    sink: &mut dyn Sink,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, Incoming> {
    let is_stream = header.stream();
    let (size, data_len) = match (is_stream, header.sparse_data_len) {
        (true, _) => (u64::MAX, u64::MAX),
        (false, Some(data_len)) => (header.size, data_len),
        (false, None) => {
            return sink
                .data(stream, start, header.size - start, &mut |k| {
                    progress(start + k)
                })
                .map(|n| start + n)
                .map_err(Incoming::Copy)
        }
    };
    let bad = |what: String| Incoming::Protocol(ProtocolError::Malformed(what));
    // After a resumed prefix only the rest's data is counted: it must not exceed the total.
    let (mut pos, mut data) = (start, 0u64);
    let data_complete = |data: u64| data == data_len || (start > 0 && data <= data_len);
    loop {
        let record = match Record::read(&mut &*stream) {
            Ok(r) => r,
            // A stream has no length to fall short of: only its end record ends it.
            Err(ProtocolError::Truncated(_)) if !is_stream => return Ok(pos),
            Err(e) => return Err(Incoming::Protocol(e)),
        };
        let (offset, len) = match record {
            Record::End if is_stream => return Ok(pos),
            Record::Hole { .. } if is_stream => return Err(bad("a hole in a stream".into())),
            Record::End if pos == size && data_complete(data) => return Ok(pos),
            Record::End => {
                return Err(bad(format!(
                "sparse records end at {pos} of {size} bytes with {data} of {data_len} data bytes"
            )))
            }
            Record::Data { offset, len } | Record::Hole { offset, len } => (offset, len),
        };
        if offset != pos || len > size - pos {
            return Err(bad(format!(
                "sparse record at {offset}+{len} where {pos} of {size} was expected"
            )));
        }
        if let Record::Data { .. } = record {
            if len > data_len - data {
                return Err(bad(format!(
                    "more data than the {data_len} bytes announced"
                )));
            }
            let n = sink
                .data(stream, offset, len, &mut |k| progress(offset + k))
                .map_err(Incoming::Copy)?;
            data += n;
            pos += n;
            if n < len {
                return Ok(pos);
            }
        } else {
            sink.hole(offset, len).map_err(Incoming::Copy)?;
            pos += len;
            progress(pos);
        }
    }
}

/// A name reserved by a running transfer; released on drop.
struct Claim<'a> {
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

/// Readies the temporary file: a sparse file gets its full size at once (its holes are never
/// written); a dense one over [`SMALL_FILE`] has its blocks reserved, so a full disk is found
/// before data flows.
/// Filesystems that cannot preallocate are fine.
fn prepare(file: &File, header: &Header) -> io::Result<()> {
    let size = header.size;
    if header.sparse_data_len.is_some() {
        return Ok(rustix::fs::ftruncate(file, size)?);
    }
    // A small file is written at once; reserving its blocks first would only cost a call.
    if size <= SMALL_FILE {
        return Ok(());
    }
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::KEEP_SIZE, 0, size) {
        Ok(()) | Err(Errno::OPNOTSUPP) | Err(Errno::NOSYS) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Reads from a stream but fails once `deadline` has passed, however the bytes trickle in: a
/// peer sending one byte a second cannot stretch the handshake.
struct Deadline<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
}

impl<'a> Deadline<'a> {
    fn new(stream: &'a TcpStream, deadline: Instant) -> Self {
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
fn refuse(stream: &TcpStream, code: RefuseCode, message: &str) {
    let mut s = stream;
    if s.write_all(&Reply::Refuse(code, message.to_owned()).encode())
        .is_err()
    {
        return;
    }
    linger(stream);
}

/// Closes our side and reads (and drops) what the peer still sends, for up to 2 s or 1 MiB:
/// closing with unread data would reset the connection, and a reset can destroy our last
/// words before the peer reads them.
pub(crate) fn linger(stream: &TcpStream) {
    let mut s = stream;
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut sink = [0u8; 16 * 1024];
    let mut drained = 0usize;
    while drained < 1 << 20 {
        match s.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

/// Access time now, modification time as given.
pub(crate) fn timestamps(mtime_sec: i64, mtime_nsec: u32) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        last_modification: Timespec {
            tv_sec: mtime_sec,
            tv_nsec: mtime_nsec as _,
        },
    }
}

/// Sends an accept (or a resume offer) after which the payload flows.
fn accept(stream: &TcpStream, header: &Header, reply: Reply) -> Result<(), RecvError> {
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

fn refused(stream: &TcpStream, code: RefuseCode, message: String) -> RecvError {
    refuse(stream, code, &message);
    RecvError::Refused(message)
}

/// Sends a verdict, its digest sealed with the connection's key.
fn send_verdict(
    stream: &TcpStream,
    integrity: &Integrity,
    status: Status,
    sha256: Option<[u8; 32]>,
    message: &str,
) {
    let v = Verdict {
        status,
        sha256,
        seal: [0; 32],
        message: message.to_owned(),
    }
    .sealed(integrity, Seal::Verdict, 0);
    if let Err(e) = (&*stream).write_all(&v.encode()) {
        log::debug!("sending the verdict: {e}");
    }
}

/// Parses zrecv's `--listen` value: `IP:PORT`, `[V6]:PORT`, a bare IP (default port) or a bare
/// port (all IPv4 addresses).
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, crate::client::DEFAULT_PORT));
    }
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    Err(format!("{s:?} is not IP:PORT, an IP or a port"))
}

/// Parses one network of zrecv's `--allow-forward`: `CIDR` (`10.0.0.0/8`, `fd00::/8`) or a bare
/// address (that host alone).
pub fn parse_network(s: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        return Ok(net);
    }
    s.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| format!("{s:?} is not a network (CIDR such as 10.0.0.0/8) or an address"))
}
