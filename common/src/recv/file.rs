//! A single file: into a hidden temporary file (or the partial kept from an interrupted
//! transfer), spliced from the socket while a second thread hashes it back, then landed.

use std::fs::File;
use std::io;
use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};

use rustix::io::Errno;

use super::chain::{Forward, ForwardSink};
use super::handshake::{accept, refused, tell};
use super::land::send_verdict;
use super::partial::{self, TempFile};
use super::payload::{receive_into, FileSink, Incoming, Sink};
use super::update::{self, Fix};
use super::{Receiver, TransferRecord, PIPE_SIZE, WRITEBACK_WINDOW};
use crate::auth::Integrity;
use crate::error::RecvError;
use crate::hash::{hash_from, Hash, Prefix, Start, Watermark, PIECE, SMALL_FILE, UNTIL_CLOSED};
use crate::name::Escaped;
use crate::sys::{self, CopyError, Pipe, SpliceStats};
use crate::units::Bytes;
use crate::watch::{self, Done, Patience};
use crate::wire::{
    pieces_of, Header, PrefixProof, ProtocolError, RefuseCode, Reply, Status, Trailer, RESTART,
};

impl Receiver {
    /// Receives one file (into a temporary file, or to standard output) after the handshake,
    /// forwarding it on when it is part of a chain, and sends the verdict.
    pub(super) fn transfer_file(
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
            let digest =
                self.check_trailer(stream, header, integrity, digest, record, None, None)?;
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
        let dir = match self.transfer_dir() {
            Ok(d) => d,
            Err(e) => {
                let msg = format!(
                    "opening {}: {}",
                    self.config.dir.display(),
                    crate::units::os_reason(&e)
                );
                return Err(refused(stream, RefuseCode::Io, msg));
            }
        };
        // An update in place that a killed receiver left half done is finished (or dropped)
        // before anything looks at the file.
        if let Err(e) = update::journal::recover(&dir, &header.name) {
            let msg = format!(
                "recovering an interrupted update of {}: {}",
                Escaped(&header.name),
                crate::units::os_reason(&e)
            );
            return Err(refused(stream, RefuseCode::Io, msg));
        }
        self.check_exists(stream, header)?;
        let kept = partial::take(&dir, header);
        let held = kept.as_ref().map_or(0, |(_, held)| *held);
        if kept.is_none() {
            if let Some(old) = self.updatable(header) {
                if !header.inplace() {
                    self.check_space(stream, header, 0)?;
                }
                return self.update_file(&dir, stream, header, integrity, record, old);
            }
        }
        self.check_space(stream, header, held)?;
        let temp = self.ready_temp(&dir, stream, header, kept.map(|(temp, _)| temp))?;
        if held > 0 {
            partial::resume_started(&temp, header);
        }
        record.received = held;
        let outcome = self.receive_to_temp(stream, header, integrity, &temp, held, record, forward);
        let digest = match outcome {
            Ok(digest) => digest,
            Err(e) => {
                if e.is_interruption() {
                    partial::keep(temp, header, record.received);
                    return Err(e);
                }
                partial::discard(temp, header);
                if let RecvError::Local { .. } = e {
                    // At once: the sender may still be sending, and will read this when its
                    // writes fail.
                    verdict(Status::Failed, None, &e.to_string());
                }
                return Err(e);
            }
        };
        // The landed file's piece layer, kept for a later update of it.
        // Only a receiver that replaces files is ever asked for an update.
        let keep_layer = self.config.force && digest.is_some() && header.size > PIECE;
        let layer = (keep_layer && !header.stream())
            .then(|| temp.pieces.first(u64::MAX))
            .filter(|runs| runs.iter().map(|(_, n)| n).sum::<u64>() == pieces_of(header.size))
            .and_then(|runs| Some((temp.file.try_clone().ok()?, runs)));
        match self.land(temp, &header.name, header) {
            Ok(fsync) => {
                record.stages.fsync = fsync;
                // A layer of an earlier file of this name is of other bytes: it goes, whether
                // or not this one's is kept (its identity check alone stood in the way).
                match layer {
                    Some((file, runs)) => update::cache::store(&dir, &header.name, &file, &runs),
                    None => update::cache::forget(&dir, &header.name),
                }
            }
            Err(e) => {
                // Nothing to resume from: the file is gone, and so goes the record it started.
                if header.resumable() {
                    partial::forget(&self.dir, &header.name);
                }
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
    pub(super) fn receive_to_temp(
        &self,
        stream: &TcpStream,
        header: &Header,
        integrity: &Integrity,
        temp: &TempFile<impl AsFd>,
        held: u64,
        record: &mut TransferRecord,
        mut forward: Option<&mut Forward>,
    ) -> Result<Option<[u8; 32]>, RecvError> {
        let (offer, start) = match held {
            0 => {
                accept(stream, header, Reply::Accept)?;
                (None, Start::Hashed(Prefix::empty()))
            }
            _ => self.offer_resume(stream, header, temp, held)?,
        };
        record.resumed_from = start.offset();
        // What we know of the first bytes at once (their pieces' roots were kept), or once
        // they are hashed again beside the rest.
        let known = match &start {
            Start::Hashed(p) => Some(p.digest()),
            Start::Unhashed(_) | Start::Partly(..) => None,
        };
        let pipe = Pipe::new(PIPE_SIZE).map_err(|e| self.local("creating a pipe", e))?;
        let route = Route {
            pipe: &pipe,
            forward: forward.as_deref_mut(),
        };
        let received = self.receive_payload(stream, header, temp, start, route, record)?;
        // After a resume, once the rest is in, the sender proves it holds our first bytes.
        let proven = match offer {
            None => true,
            Some(offer) => {
                let mut patience = Patience::for_bytes(self.config.timeout, header.size);
                let theirs = PrefixProof::read_telling(&mut &*stream, &mut || patience.still())?;
                offer.proven(known.or(received.prefix), &theirs)
            }
        };
        if proven {
            let fix = Fix::of(&temp.file, &temp.pieces, &pipe);
            let mut repair = self.repairer(stream, header, integrity, fix);
            let digest = received.digest;
            return self.check_trailer(
                stream,
                header,
                integrity,
                digest,
                record,
                forward,
                Some(&mut repair),
            );
        }
        log::info!(
            "{}: the partial file differs from the sender's; taking it all again",
            Escaped(&header.name)
        );
        // Its trailer vouches for bytes we do not hold: read, and left unused.
        let mut patience = Patience::for_bytes(self.config.timeout, header.size);
        if let Err(e) = Trailer::read_telling(&mut &*stream, &mut || patience.still()) {
            if let ProtocolError::Abandoned = e {
                let msg = "source changed during transfer; discarded";
                send_verdict(stream, integrity, Status::Failed, None, msg);
            }
            return Err(e.into());
        }
        record.resumed_from = 0;
        record.received = 0;
        temp.pieces.clear();
        rustix::fs::ftruncate(&temp.file, 0)
            .map_err(io::Error::from)
            .and_then(|()| prepare(&temp.file, header))
            .map_err(|e| self.local("emptying the partial file", e))?;
        tell(
            stream,
            &RESTART,
            "asking for the whole file",
            0,
            header.size,
        )?;
        let route = Route {
            pipe: &pipe,
            forward: None,
        };
        let start = Start::Hashed(Prefix::empty());
        let received = self.receive_payload(stream, header, temp, start, route, record)?;
        let fix = Fix::of(&temp.file, &temp.pieces, &pipe);
        let mut repair = self.repairer(stream, header, integrity, fix);
        self.check_trailer(
            stream,
            header,
            integrity,
            received.digest,
            record,
            None,
            Some(&mut repair),
        )
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
        // A file that can resume logs its pieces' roots, for its record if it is interrupted.
        let log = verify.then_some(&temp.pieces);
        let done = match threaded {
            true => Some(Done::new().map_err(|e| self.local("creating an event", e))?),
            false => None,
        };
        let mark = Watermark::new();
        if !inline {
            mark.raise(offset);
        }
        let mut received = offset;
        // A failed write-back that a wait along the way took the report of (see DropBehind).
        let mut written_back: io::Result<()> = Ok(());
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
                    hash_from(st, file, hash_len, mark, sparse, log)
                }));
            }
            let mut behind = sys::DropBehind::starting_at(offset, WRITEBACK_WINDOW);
            // What a power loss would keep (for a file that can resume).
            // Counted without the holes that came (`holes`): 8 GiB of holes would otherwise
            // make 32 checkpoints with nothing to make durable.
            let mut durable = offset;
            let holes = std::cell::Cell::new(0);
            let copied = {
                let (mut plain, mut onward);
                let sink: &mut dyn Sink = match forward.as_deref_mut() {
                    Some(forward) => {
                        onward = ForwardSink {
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
                            holes: &holes,
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
                        let mut step = behind.advance(file, done, hashed);
                        if header.resumable() && done - holes.get() - durable >= partial::CHECKPOINT
                        {
                            step = step.and(partial::checkpoint(temp, header, done));
                            durable = done - holes.get();
                        }
                        if let (Err(e), Ok(())) = (step, &written_back) {
                            written_back = Err(e);
                        }
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
                    Some(hash_from(st, file, size, &all, sparse, log))
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
        let writing = || format!("writing {}", Escaped(&header.name));
        // First: a partial whose write-back failed is not kept for resuming, even when the
        // connection broke too (its bytes may be in the page cache only).
        written_back.map_err(|e| self.local("writing the data back", e))?;
        self.payload_outcome(header, copied, record, writing)?;
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

    /// Turns the end of a payload into the transfer's error, if it is one.
    pub(super) fn payload_outcome(
        &self,
        header: &Header,
        copied: Result<u64, Incoming>,
        record: &mut TransferRecord,
        writing: impl FnOnce() -> String,
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
            Err(Incoming::Copy(CopyError::Write(e))) => Err(self.local(&writing(), e)),
            Err(Incoming::Copy(CopyError::Unsupported | CopyError::SourceChanged)) => {
                unreachable!("receiving neither gives up on the kernel nor reads a source")
            }
        }
    }

    /// Readies the partial file kept from an interrupted transfer, or a new temporary file,
    /// refusing the transfer if it cannot.
    pub(super) fn ready_temp<'d>(
        &'d self,
        dir: &'d OwnedFd,
        stream: &TcpStream,
        header: &Header,
        kept: Option<TempFile<&'d OwnedFd>>,
    ) -> Result<TempFile<&'d OwnedFd>, RecvError> {
        match kept {
            Some(temp) => self.prepare_temp(stream, header, temp),
            None => self.create_temp(dir, stream, header),
        }
    }

    /// Creates and readies the hidden temporary file in `dir`, refusing the transfer if it
    /// cannot.
    pub(super) fn create_temp<'d>(
        &'d self,
        dir: &'d OwnedFd,
        stream: &TcpStream,
        header: &Header,
    ) -> Result<TempFile<&'d OwnedFd>, RecvError> {
        // A transfer that can resume starts as its own partial, so that even a receiver killed
        // outright leaves one to resume from.
        let created = match header.resumable() {
            true => partial::start(dir, header),
            false => TempFile::create(dir),
        };
        let temp = match created {
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
    pub(super) fn prepare_temp<'d>(
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
}

/// What receiving a payload found.
#[derive(Default)]
pub(crate) struct Received {
    /// The root of the whole file, when verifying.
    pub(crate) digest: Option<Hash>,
    /// For a [`Start::Unhashed`] start: the root of the bytes that were already there.
    pub(crate) prefix: Option<Hash>,
}

/// Where a payload goes besides the temporary file: the pipe to splice it through, and the
/// next host of a chain.
pub(crate) struct Route<'a> {
    pub(crate) pipe: &'a Pipe,
    pub(crate) forward: Option<&'a mut Forward>,
}

/// Readies the temporary file: a sparse file gets its full size at once (its holes are never
/// written); a dense one over [`SMALL_FILE`] has its blocks reserved, so a full disk is found
/// before data flows.
/// Filesystems that cannot preallocate are fine.
pub(super) fn prepare(file: &File, header: &Header) -> io::Result<()> {
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
