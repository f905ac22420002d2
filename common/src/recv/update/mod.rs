//! Taking only what differs (protocol sections 2d and 5a): an update of a file this receiver
//! holds and will replace, and the repair rounds that follow a trailer whose root differs from
//! ours.
//!
//! - `layer.rs`: piece layers: hashing, comparing, taking pieces off the connection, folding;
//! - `cache.rs`: the layer of each landed file, kept beside it so that an update reads nothing
//!   back;
//! - `journal.rs`: updates in place (`--inplace`), through a redo journal;
//! - here: the update itself (atomic: the new version built beside the old from its unchanged
//!   pieces and renamed over it; or in place), and the repair rounds.

use std::fs::File;
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

use super::handshake::{accept, tell};
use super::land::{send_verdict, Repair};
use super::partial::{self, TempFile};
use super::payload::Incoming;
use super::{Receiver, TransferRecord, PIPE_SIZE, WRITEBACK_WINDOW};
use crate::auth::Integrity;
use crate::error::RecvError;
use crate::hash::{Hash, PieceLog, Watermark, PIECE};
use crate::name::Escaped;
use crate::sys::{self, CopyError, Pipe, SpliceStats};
use crate::watch::{telling, Patience};
use crate::wire::{
    encode_repair, pieces_of, Header, Needed, ProtocolError, Reply, Status, Trailer, KEEPALIVE,
    MAX_REPAIR_ROUNDS,
};

pub(crate) mod cache;
pub(crate) mod journal;
pub(crate) mod layer;

use layer::Runs;

/// What an update did, for the log and `--json`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpdateCounts {
    /// Applied in place, through the journal.
    pub inplace: bool,
    /// The file's pieces.
    pub pieces: u64,
    /// The pieces that crossed.
    pub received: u64,
}

/// What a repair round works on: the file being received, the roots of the pieces it holds,
/// and the pieces this connection wrote into it.
pub(crate) struct Fix<'a> {
    pub(crate) file: &'a File,
    pub(crate) runs: Runs,
    /// The log of a file received whole, which a partial kept for resuming and the layer kept
    /// for updating are taken from: a repair rewrites pieces, and their roots with them.
    pub(crate) log: Option<&'a PieceLog>,
    pub(crate) pipe: &'a Pipe,
    pub(crate) touched: Needed,
}

/// What an update builds on: the file here and its identity when we took its piece roots
/// (`ours`), the pieces needed, and the pipe to splice them through.
struct Basis<'a> {
    /// The transfer's own description of the receive directory (see
    /// `Receiver::transfer_dir`): the directory is synced through it.
    dir: &'a OwnedFd,
    old: &'a File,
    before: Option<String>,
    ours: Runs,
    needed: Needed,
    pipe: &'a Pipe,
}

impl<'a> Fix<'a> {
    /// A file received whole (or resumed), with the roots of its pieces hashed as they came.
    pub(crate) fn of(file: &'a File, pieces: &'a PieceLog, pipe: &'a Pipe) -> Fix<'a> {
        Fix {
            file,
            runs: pieces.first(u64::MAX),
            log: Some(pieces),
            pipe,
            touched: Needed::none(),
        }
    }
}

impl Receiver {
    /// Repair rounds on `fix` for [`Receiver::check_trailer`], when the roots disagree.
    pub(crate) fn repairer<'a>(
        &'a self,
        stream: &'a TcpStream,
        header: &'a Header,
        integrity: &'a Integrity,
        mut fix: Fix<'a>,
    ) -> impl FnMut(Hash, &mut TransferRecord) -> Result<Hash, RecvError> + 'a {
        move |theirs, record| self.repair(stream, header, integrity, theirs, &mut fix, record)
    }

    /// The file `header` names, opened, when the sender may update it piece by piece: it asked
    /// to, the file is here, regular, longer than one piece, and we replace files (`--force`).
    pub(super) fn updatable(&self, header: &Header) -> Option<File> {
        let asked = header.update() && header.chain.is_none() && header.size > PIECE;
        if !asked || !self.config.force || self.config.to_stdout {
            return None;
        }
        let file = partial::open_regular_beneath(&self.dir, &header.name).ok()?;
        let meta = file.metadata().ok()?;
        // A file with other names shares its inode with them, perhaps outside --dir: an update
        // in place, or one that only sets its metadata, would change them too. It is replaced
        // whole instead, as any file without an update.
        (meta.is_file() && meta.len() > PIECE && meta.nlink() == 1).then_some(file)
    }

    /// Updates `old`, the file of this name: offers the update, takes our layer (kept, or
    /// hashed while the sender hashes its own), answers the sender's layer with the pieces we
    /// lack, and builds the new version from them (atomic, or in place).
    pub(super) fn update_file(
        &self,
        dir: &OwnedFd,
        stream: &TcpStream,
        header: &Header,
        integrity: &Integrity,
        record: &mut TransferRecord,
        old: File,
    ) -> Result<(), RecvError> {
        accept(stream, header, Reply::Update)?;
        let size = header.size;
        let pieces = pieces_of(size);
        let before = cache::identity(&old);
        let ours = match cache::load(&self.dir, &header.name, &old) {
            Some(runs) => runs,
            None => {
                log::info!(
                    "{}: hashing the copy here (its piece layer was not kept, or it changed since)",
                    Escaped(&header.name)
                );
                self.hash_telling(stream, &old, header)
                    .map_err(|e| told_failed(stream, integrity, e))?
            }
        };
        let old_len = old.metadata().map_or(0, |m| m.len());
        let uneven = layer::uneven_piece(size, old_len);
        let mut patience = Patience::for_bytes(self.config.timeout, size);
        let needed = layer::compare(&mut &*stream, pieces, &ours, uneven, &mut || {
            patience.still()
        })?;
        tell(
            stream,
            &needed.encode(),
            "listing the pieces needed",
            0,
            size,
        )?;
        record.update = Some(UpdateCounts {
            inplace: header.inplace(),
            pieces,
            received: needed.pieces(),
        });
        let old_len = old
            .metadata()
            .map_err(|e| self.local("examining the file", e))?
            .len();
        if needed.pieces() == 0 && old_len == size {
            return self.touch(stream, header, integrity, record, &old, ours, before);
        }
        let pipe = Pipe::new(PIPE_SIZE).map_err(|e| self.local("creating a pipe", e))?;
        let basis = Basis {
            dir,
            old: &old,
            before,
            ours,
            needed,
            pipe: &pipe,
        };
        match header.inplace() {
            true => self.update_in_place(stream, header, integrity, record, basis),
            false => self.update_beside(stream, header, integrity, record, basis),
        }
    }

    /// Our layer of `old`, hashed on every thread while the sender is told we are here; kept
    /// for next time.
    fn hash_telling(
        &self,
        stream: &TcpStream,
        old: &File,
        header: &Header,
    ) -> Result<Runs, RecvError> {
        let len = old
            .metadata()
            .map_err(|e| self.local("examining the file", e))?
            .len();
        let mark = Watermark::complete(len);
        let mut tick = || tell(stream, &KEEPALIVE, "hashing the file here", 0, header.size);
        let (hashed, told) = telling(&mark, || layer::layer_of(old, len, &mark), &mut tick);
        told?;
        match hashed {
            Ok(Some((_, runs))) => {
                cache::store(&self.dir, &header.name, old, &runs);
                Ok(runs)
            }
            Ok(None) => unreachable!("aborted only when telling failed"),
            Err(e) => Err(self.local("hashing the file here", e)),
        }
    }

    /// Nothing differs: the file stays, with the sender's mode and mtime, once the trailer's
    /// root is ours.
    #[allow(clippy::too_many_arguments)]
    fn touch(
        &self,
        stream: &TcpStream,
        header: &Header,
        integrity: &Integrity,
        record: &mut TransferRecord,
        old: &File,
        ours: Runs,
        before: Option<String>,
    ) -> Result<(), RecvError> {
        let digest = Some(layer::root_of_runs(&ours));
        record.received = 0;
        // No piece is needed: the records are only their end.
        match crate::wire::Record::read(&mut &*stream)? {
            crate::wire::Record::End => {}
            _ => {
                return Err(
                    ProtocolError::Malformed("records past the needed pieces".into()).into(),
                )
            }
        }
        let digest = self.check_trailer(stream, header, integrity, digest, record, None, None)?;
        let landed = self.unchanged_since(old, &before).and_then(|()| {
            self.set_metadata(old, header)?;
            rustix::fs::fsync(old).map_err(|e| self.local("syncing the file", e.into()))
        });
        if let Err(e) = landed {
            send_verdict(stream, integrity, Status::Failed, digest, &e.to_string());
            return Err(e);
        }
        cache::store(&self.dir, &header.name, old, &ours);
        record.verified = true;
        send_verdict(stream, integrity, Status::Landed, digest, "");
        Ok(())
    }

    /// The atomic update: a new file beside the old, its unchanged pieces copied from the old
    /// one in the kernel (shared, where the filesystem can) while the others arrive, checked,
    /// made durable and renamed over the old one.
    fn update_beside(
        &self,
        stream: &TcpStream,
        header: &Header,
        integrity: &Integrity,
        record: &mut TransferRecord,
        basis: Basis,
    ) -> Result<(), RecvError> {
        let Basis {
            dir,
            old,
            before,
            ours,
            needed,
            pipe,
        } = basis;
        let size = header.size;
        let most = header.sparse_data_len.unwrap_or(size);
        let temp = TempFile::create(dir).map_err(|e| self.local("creating a file", e))?;
        rustix::fs::ftruncate(&temp.file, size)
            .map_err(|e| self.local("sizing the file", e.into()))?;
        let mut stats = SpliceStats::default();
        let started = std::time::Instant::now();
        let (taken, copied) = std::thread::scope(|s| {
            let copier = s.spawn(|| copy_unchanged(old, &temp.file, &needed, size));
            let taken = layer::take_pieces(
                stream,
                &needed,
                (size, most),
                &temp.file,
                pipe,
                &mut stats,
                &mut |_| {},
            );
            (taken, copier.join().expect("copying thread panicked"))
        });
        record.zero_copy &= stats.zero_copy;
        if taken.is_ok() {
            copied.map_err(|e| {
                told_failed(
                    stream,
                    integrity,
                    self.local("copying the unchanged pieces", e),
                )
            })?;
        }
        log::debug!(
            "{}: new pieces in and the others copied in {:.3} s",
            Escaped(&header.name),
            started.elapsed().as_secs_f64()
        );
        let fix = Fix {
            file: &temp.file,
            runs: ours,
            log: None,
            pipe,
            touched: needed,
        };
        let (digest, runs, _) = self.check_new(stream, header, integrity, record, taken, fix)?;
        let landed = temp.file.try_clone().map_err(|e| self.local("landing", e));
        let landed = self
            .unchanged_since(old, &before)
            .and(landed)
            .and_then(|file| {
                let fsync = self.land(temp, &header.name, header)?;
                Ok((file, fsync))
            });
        match landed {
            Ok((file, fsync)) => {
                record.stages.fsync = fsync;
                cache::store(&self.dir, &header.name, &file, &runs);
            }
            Err(e) => {
                send_verdict(stream, integrity, Status::Failed, digest, &e.to_string());
                return Err(e);
            }
        }
        record.verified = true;
        send_verdict(stream, integrity, Status::Landed, digest, "");
        Ok(())
    }

    /// The update in place: the pieces that differ into a journal, checked there, committed,
    /// then applied to the file (see `journal`).
    fn update_in_place(
        &self,
        stream: &TcpStream,
        header: &Header,
        integrity: &Integrity,
        record: &mut TransferRecord,
        basis: Basis,
    ) -> Result<(), RecvError> {
        let Basis {
            dir,
            old,
            before,
            ours,
            needed,
            pipe,
        } = basis;
        let size = header.size;
        let most = header.sparse_data_len.unwrap_or(size);
        let fail = |e: RecvError| {
            send_verdict(stream, integrity, Status::Failed, None, &e.to_string());
            e
        };
        let want: u64 = needed.spans(size).map(|(_, n)| n).sum();
        if let Ok(vfs) = rustix::fs::fstatvfs(&self.dir) {
            let have = vfs.f_bavail.saturating_mul(vfs.f_frsize);
            if want > have {
                let e = std::io::Error::from(std::io::ErrorKind::StorageFull);
                return Err(fail(self.local("journaling the pieces that differ", e)));
            }
        }
        let mut journal = journal::Journal::create(dir, header)
            .map_err(|e| fail(self.local("creating the journal", e)))?;
        let mut stats = SpliceStats::default();
        let taken = layer::take_pieces(
            stream,
            &needed,
            (size, most),
            &journal.file,
            pipe,
            &mut stats,
            &mut |_| {},
        );
        record.zero_copy &= stats.zero_copy;
        let fix = Fix {
            file: &journal.file,
            runs: ours,
            log: None,
            pipe,
            touched: needed,
        };
        let (digest, runs, touched) =
            self.check_new(stream, header, integrity, record, taken, fix)?;
        journal::crash_point("journaled");
        self.unchanged_since(old, &before).map_err(fail)?;
        let start = std::time::Instant::now();
        cache::forget(&self.dir, &header.name);
        journal
            .commit(header, &touched)
            .map_err(|e| fail(self.local("committing the journal", e)))?;
        journal
            .apply(header, &touched, old)
            .map_err(|e| fail(self.local("applying the journal", e)))?;
        record.stages.fsync = start.elapsed();
        if let Ok(file) = partial::open_regular_beneath(&self.dir, &header.name) {
            cache::store(&self.dir, &header.name, &file, &runs);
        }
        record.verified = true;
        send_verdict(stream, integrity, Status::Landed, digest, "");
        Ok(())
    }

    /// Checks a new version whose needed pieces (`fix.touched`) were taken into `fix.file`
    /// (`taken`: how that went), the others being ours (`fix.runs`): hashes the new pieces,
    /// folds the root from theirs and ours, and reads the trailer, through repair rounds when
    /// the roots differ. Returns the root, the new version's piece roots, and every piece
    /// written into the file.
    fn check_new(
        &self,
        stream: &TcpStream,
        header: &Header,
        integrity: &Integrity,
        record: &mut TransferRecord,
        taken: Result<u64, Incoming>,
        mut fix: Fix,
    ) -> Result<(Option<Hash>, Runs, Needed), RecvError> {
        let size = header.size;
        // What crossed: the data of the pieces that differed.
        record.received = *taken.as_ref().unwrap_or(&0);
        let told = |e| told_failed(stream, integrity, e);
        self.pieces_outcome(header, taken).map_err(told)?;
        let fresh = layer::hash_needed(fix.file, size, &fix.touched)
            .map_err(|e| told(self.local("reading back the new pieces", e)))?;
        fix.runs = layer::patch(&fix.runs, &fix.touched, &fresh, pieces_of(size));
        let digest = Some(layer::root_of_runs(&fix.runs));
        let mut repair = |theirs, record: &mut TransferRecord| {
            self.repair(stream, header, integrity, theirs, &mut fix, record)
        };
        let repair: Repair = &mut repair;
        let digest = self.check_trailer(
            stream,
            header,
            integrity,
            digest,
            record,
            None,
            Some(repair),
        )?;
        Ok((digest, fix.runs, fix.touched))
    }

    /// Fails when `old` changed since we took its layer (another process wrote to it): the
    /// pieces we kept would not be what we vouched for.
    fn unchanged_since(&self, old: &File, before: &Option<String>) -> Result<(), RecvError> {
        match cache::identity(old) == *before && before.is_some() {
            true => Ok(()),
            false => Err(RecvError::Refused(
                "the file changed here while it was being updated; kept it as it is".into(),
            )),
        }
    }

    /// Turns the end of the needed pieces into the transfer's error, if it is one.
    fn pieces_outcome(
        &self,
        header: &Header,
        taken: Result<u64, Incoming>,
    ) -> Result<(), RecvError> {
        match taken {
            Ok(_) => Ok(()),
            Err(Incoming::Protocol(e)) => Err(e.into()),
            Err(Incoming::Copy(CopyError::Read(error))) => Err(RecvError::Network {
                during: "receiving the pieces that differ",
                received: 0,
                expected: header.size,
                error,
            }),
            Err(Incoming::Copy(e)) => Err(self.local(
                &format!("writing {}", Escaped(&header.name)),
                match e {
                    CopyError::Write(e) => e,
                    _ => std::io::ErrorKind::Other.into(),
                },
            )),
        }
    }

    /// Repair rounds after a trailer whose root (`theirs`) differs from ours: each asks for the
    /// sender's layer, takes the pieces that differ into the file, and reads the trailer again,
    /// until the roots agree (`Ok` with the root) or [`MAX_REPAIR_ROUNDS`] have passed. Sends
    /// nothing on success: the caller lands the file and sends the verdict.
    pub(crate) fn repair(
        &self,
        stream: &TcpStream,
        header: &Header,
        integrity: &Integrity,
        theirs: Hash,
        fix: &mut Fix,
        record: &mut TransferRecord,
    ) -> Result<Hash, RecvError> {
        let size = header.size;
        let most = header.sparse_data_len.unwrap_or(size);
        let pieces = pieces_of(size);
        if fix.runs.iter().map(|(_, n)| n).sum::<u64>() != pieces {
            let all = Watermark::complete(size);
            fix.runs = match layer::layer_of(fix.file, size, &all) {
                Ok(Some((_, runs))) => runs,
                Ok(None) => unreachable!("nobody aborts this watermark"),
                Err(e) => return Err(self.local("reading back the received file", e)),
            };
        }
        let mut digest = layer::root_of_runs(&fix.runs);
        for round in 1..=MAX_REPAIR_ROUNDS {
            log::warn!(
                "{}: root {} differs from the sender's; repair round {round}",
                Escaped(&header.name),
                hex::encode(digest)
            );
            tell(
                stream,
                &encode_repair(round),
                "calling for a repair",
                size,
                size,
            )?;
            let mut patience = Patience::for_bytes(self.config.timeout, size);
            let still = &mut || patience.still();
            let needed = layer::compare(&mut &*stream, pieces, &fix.runs, None, still)?;
            tell(
                stream,
                &needed.encode(),
                "listing the pieces needed",
                size,
                size,
            )?;
            // From the first piece taken again on, the logged roots are no longer the file's
            // until the round is through: an interruption keeps only those before it.
            if let (Some(log), Some(&(first, _))) = (fix.log, needed.ranges().first()) {
                log.truncate(first);
            }
            let mut stats = SpliceStats::default();
            let taken = layer::take_pieces(
                stream,
                &needed,
                (size, most),
                fix.file,
                fix.pipe,
                &mut stats,
                &mut |_| {},
            );
            let told = |e| told_failed(stream, integrity, e);
            self.pieces_outcome(header, taken).map_err(told)?;
            let fresh = layer::hash_needed(fix.file, size, &needed)
                .map_err(|e| told(self.local("reading back the repaired pieces", e)))?;
            fix.runs = layer::patch(&fix.runs, &needed, &fresh, pieces);
            if let Some(log) = fix.log {
                log.replace(fix.runs.clone());
            }
            fix.touched = fix.touched.union(&needed);
            record.repaired += needed.pieces();
            digest = layer::root_of_runs(&fix.runs);
            let mut patience = Patience::for_bytes(self.config.timeout, size);
            let trailer = match Trailer::read_telling(&mut &*stream, &mut || patience.still()) {
                Ok(t) => t,
                Err(ProtocolError::Abandoned) => {
                    let msg = "source changed during transfer; discarded";
                    send_verdict(stream, integrity, Status::Failed, None, msg);
                    return Err(ProtocolError::Abandoned.into());
                }
                Err(e) => return Err(e.into()),
            };
            if !trailer.opens(integrity, 0) {
                let msg = RecvError::Unsealed.to_string();
                send_verdict(stream, integrity, Status::Mismatch, Some(digest), &msg);
                return Err(RecvError::Unsealed);
            }
            if trailer.root != Some(theirs) {
                return Err(ProtocolError::Malformed(
                    "a repair round's trailer with another root".into(),
                )
                .into());
            }
            if digest == theirs {
                log::info!(
                    "{}: repaired ({} of {pieces} pieces taken again)",
                    Escaped(&header.name),
                    record.repaired
                );
                return Ok(digest);
            }
        }
        send_verdict(
            stream,
            integrity,
            Status::Mismatch,
            Some(digest),
            "checksum mismatch after repair rounds; discarded",
        );
        Err(RecvError::Mismatch {
            sent: hex::encode(theirs),
            received: hex::encode(digest),
        })
    }
}

/// Tells the sender of a local failure at once (it may still be sending, and reads this when its
/// writes fail), as for any file (protocol section 5); other errors pass as they are.
fn told_failed(stream: &TcpStream, integrity: &Integrity, e: RecvError) -> RecvError {
    if let RecvError::Local { .. } = e {
        send_verdict(stream, integrity, Status::Failed, None, &e.to_string());
    }
    e
}

/// Copies the pieces of a new file of `size` bytes that `needed` leaves out, which are the old
/// file's, from `old` into `new` at the same offsets: data extents only (holes stay holes), in
/// the kernel (copy_file_range, which shares the blocks where the filesystem can).
fn copy_unchanged(old: &File, new: &File, needed: &Needed, size: u64) -> std::io::Result<()> {
    let old_len = old.metadata()?.len();
    let limit = size.min(old_len);
    // The old file is read once, front to back, with gaps: read it ahead as a stream.
    let _ = rustix::fs::fadvise(old, 0, None, rustix::fs::Advice::Sequential);
    let mut at = 0u64;
    // What is copied is written back as it goes, so that the fsync at the end has little left.
    let mut behind = sys::DropBehind::starting_at(0, WRITEBACK_WINDOW);
    let mut copy = |from: u64, to: u64| -> std::io::Result<()> {
        let (from, to) = (from.min(limit), to.min(limit));
        let mut pos = from;
        while pos < to {
            let Some((a, b)) = sys::next_data(old, pos, to)? else {
                break;
            };
            journal::copy_at(old, new, a, b - a)?;
            behind.advance(new, b, 0)?;
            pos = b;
        }
        Ok(())
    };
    for &(first, n) in needed.ranges() {
        copy(at * PIECE, first * PIECE)?;
        at = first + n;
    }
    copy(at * PIECE, size)
}
