//! The receive phase of a tree: each file as its frame comes (whole, checked, or resumed),
//! spliced in and hashed, landed alone or handed to a batch; reports back to the sender and
//! the end of each pass.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;

use rustix::fs::{Mode, OFlags};

use super::batch::Pending;
use super::{header_of, DirCache, Session, LAND_ALONE, RESTAT_AFTER};
use crate::auth::{self};
use crate::error::RecvError;
use crate::hash::{Prefix, Start};
use crate::name::Escaped;
use crate::recv::file::{prepare, Route};
use crate::recv::land::timestamps;
use crate::recv::partial::{self, open_beneath, TempFile};
use crate::recv::TransferRecord;
use crate::roots::Identity;
use crate::units::os_reason;
use crate::watch::{Patience, KEEPALIVE_EVERY};
use crate::wire::ProtocolError;
use crate::wire::{Answer, Entry, FileStatus, Kind, Report, FRAME_HEAD_LEN};
use crate::wire::{Header, PrefixProof, Trailer, KEPT_MODE, PREFIX_LEN, TRAILER_LEN};

impl Session<'_, '_> {
    /// The entry a frame names, if the frame may name it: one of the manifest, of the kind
    /// the frame is for (`kind`, named `what` in the message), neither refused nor settled.
    pub(super) fn framed(
        &self,
        i: u32,
        kind: fn(&Kind) -> bool,
        what: &str,
    ) -> Result<&Entry, RecvError> {
        let bad = |why: String| RecvError::Protocol(ProtocolError::Malformed(why));
        let e = self
            .manifest
            .entries
            .get(i as usize)
            .ok_or_else(|| bad(format!("a frame for entry {i} of {}", self.answers.len())))?;
        if !kind(&e.kind) {
            return Err(bad(format!(
                "a frame for {}, which is not {what}",
                Escaped(&e.path)
            )));
        }
        if matches!(self.answers[i as usize], Answer::Refused(_)) || self.settled[i as usize] {
            return Err(bad(format!("a second frame for {}", Escaped(&e.path))));
        }
        Ok(e)
    }

    /// The file entry a frame names, if the frame may name it.
    pub(super) fn file_entry(&self, i: u32) -> Result<(&Entry, Header), RecvError> {
        let e = self.framed(i, |k| matches!(k, Kind::File { .. }), "a file")?;
        Ok((e, header_of(e, self.verify)))
    }

    /// The whole file follows.
    pub(super) fn full(&mut self, i: u32, record: &mut TransferRecord) -> Result<(), RecvError> {
        let (e, header) = self.file_entry(i)?;
        let parent_path = e.parent().map(<[u8]>::to_vec);
        // A kept partial the sender chose not to resume is of no use any more.
        self.partials.remove(&i);
        let made = self.ahead.as_mut().and_then(|a| a.take(i));
        let temp = match made {
            Some(temp) => temp,
            None => {
                let create = |dirs: &mut DirCache| {
                    dirs.get(parent_path.as_deref()).and_then(TempFile::create)
                };
                let mut created = create(&mut self.dirs);
                if matches!(&created, Err(e) if e.raw_os_error() == Some(libc::EMFILE)) {
                    // Out of open files (a limit below what batches were sized for): land
                    // what is open, make no more ahead, and try again.
                    self.stop_ahead();
                    self.lander.flush();
                    created = create(&mut self.dirs);
                }
                match created {
                    Ok(temp) => temp,
                    Err(err) => {
                        let e = self.rx.local("creating a temporary file", err);
                        return Err(self.fatal(i, e));
                    }
                }
            }
        };
        if let Err(err) = prepare(&temp.file, &header) {
            return Err(self.fatal(i, self.rx.local("preallocating", err)));
        }
        self.receive_file(
            i,
            &header,
            temp,
            Start::Hashed(Prefix::empty()),
            None,
            record,
        )
    }

    /// The sender's file is already here if our copy has this digest.
    pub(super) fn check(&mut self, i: u32, digest: [u8; 32]) -> Result<(), RecvError> {
        let (e, header) = self.file_entry(i)?;
        if !matches!(self.answers[i as usize], Answer::Landed | Answer::SameSize) {
            return Err(ProtocolError::Malformed(format!(
                "a check of {}, which was not here",
                Escaped(&e.path)
            ))
            .into());
        }
        let base = e.base().to_owned();
        let parent_path = e.parent().map(<[u8]>::to_vec);
        let parent = self
            .dirs
            .get(parent_path.as_deref())
            .map_err(|err| self.rx.local("opening a directory", err))?;
        self.settled[i as usize] = true;
        // What is remembered is read at the first check (a quick check needs none of it).
        if !self.wanted.is_empty() && !self.rx.config.rehash {
            self.roots
                .load(&self.rx.dir, &std::mem::take(&mut self.wanted));
        }
        // Unchanged since its root was taken here: nothing to read. (A remembered root that
        // differs proves nothing against the file: it is read.) The copy is taken as it was
        // when answered, unless a payload came since or a second went by: then as it is now.
        let fresh = !self.payload_since && self.answered.elapsed() < RESTAT_AFTER;
        let remembered = self.roots.remembered(i).filter(|(_, root)| *root == digest);
        let holds = remembered.is_some_and(|(id, _)| {
            fresh
                || rustix::fs::statat(&parent, &base, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| Identity::of(&st) == id)
        });
        if holds {
            self.counts.remembered += 1;
            return self.checked(i, digest, Ok((digest, None)));
        }
        let size = header.size;
        let stop = self.checks.stop.clone();
        // Read densely, a hole reads as zeros: the hint only saves reading holes.
        let sparse = self.holey.contains(&i);
        let hash = move || {
            let file = partial::open_regular_beneath(&parent, &base)?;
            // Remembered only if nothing changed the file while it was read.
            let before = Identity::settled(&file);
            match Prefix::of_file_until(&file, size, sparse, &stop)? {
                Some(p) => {
                    let after = before.and_then(|_| Identity::settled(&file));
                    let whole = before.is_some_and(|id| id.size() == size);
                    Ok((p.digest(), before.filter(|_| after == before && whole)))
                }
                None => Err(io::Error::other("the session ended")),
            }
        };
        if size < LAND_ALONE {
            return self.checked(i, digest, hash());
        }
        // A large file takes a while: hash it beside the frames that keep coming, so that the
        // sender is never left waiting on a full socket.
        self.checks.start(Box::new(move || (i, digest, hash())));
        Ok(())
    }

    /// The sender takes the copy here, of its size and mtime, as unchanged without comparing
    /// roots: nothing is read, and the verdict carries no digest.
    pub(super) fn quick(&mut self, i: u32) -> Result<(), RecvError> {
        let (e, _) = self.file_entry(i)?;
        if self.answers[i as usize] != Answer::Landed {
            return Err(ProtocolError::Malformed(format!(
                "a quick check of {}, which was not here (or not with its mtime)",
                Escaped(&e.path)
            ))
            .into());
        }
        self.settled[i as usize] = true;
        if let Err(err) = self.refresh_metadata(i) {
            self.counts.failed += 1;
            return self.report(i, FileStatus::Failed, None, &err.to_string());
        }
        self.counts.unchanged += 1;
        self.counts.quick += 1;
        self.report(i, FileStatus::Unchanged, None, "")
    }

    /// Sets the sender's mode, mtime, owner and attributes on the copy here of entry `i`, whose
    /// content is the sender's, when they differ (see `refresh`).
    fn refresh_metadata(&mut self, i: u32) -> Result<(), RecvError> {
        let Some(answered) = self.refresh.remove(&i) else {
            return Ok(());
        };
        let e = &self.manifest.entries[i as usize];
        let header = header_of(e, self.verify);
        let plan = self.plan(e);
        let parent = self
            .dirs
            .get(e.parent())
            .map_err(|err| self.rx.local("opening a directory", err))?;
        let file = partial::open_regular_beneath(&parent, e.base())
            .map_err(|err| self.rx.local("opening the copy here", err))?;
        // The file answered, still with one name: another transfer may have put a hard link
        // under this name since (to a file with a name outside --dir, say), and its metadata is
        // not this transfer's to set.
        let st = rustix::fs::fstat(&file)
            .map_err(|err| self.rx.local("looking at the copy here", err.into()))?;
        if (st.st_dev, st.st_ino) != answered || st.st_nlink > 1 {
            return Err(RecvError::Refused(
                "replaced or linked elsewhere since it was answered; left as it is".into(),
            ));
        }
        self.rx
            .set_metadata_planned(&file, &header, plan.as_ref(), None)?;
        // Its ctime moved: what was remembered of it no longer holds.
        self.roots.forget(i);
        log::debug!("{}: metadata updated", Escaped(&e.path));
        Ok(())
    }

    /// Reports the background checks that are done; with `all`, waits for every one, telling
    /// the sender meanwhile that we are still here.
    pub(super) fn report_checks(&mut self, all: bool) -> Result<(), RecvError> {
        let every = KEEPALIVE_EVERY;
        while self.checks.running > 0 {
            let next = match all {
                true => self.checks.results.recv_timeout(every),
                false => self
                    .checks
                    .results
                    .try_recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
            };
            match next {
                Ok((i, digest, ours)) => {
                    self.checks.ended();
                    self.checked(i, digest, ours)?;
                }
                Err(RecvTimeoutError::Timeout) => self.send(&Report::Keepalive)?,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        Ok(())
    }

    /// Reports a check of entry `i`: the sender's `digest` against ours.
    pub(super) fn checked(
        &mut self,
        i: u32,
        digest: [u8; 32],
        ours: io::Result<([u8; 32], Option<Identity>)>,
    ) -> Result<(), RecvError> {
        if let Ok((root, Some(id))) = ours {
            self.roots.learn(i, id, root);
        }
        let ours = ours.map(|(root, _)| root);
        // Our digest goes back only when it is the sender's own: a sender that did not write
        // the file here learns "same" or "different", never what the file holds.
        match ours {
            Ok(d) if d == digest => match self.refresh_metadata(i) {
                Ok(()) => {
                    self.counts.unchanged += 1;
                    self.report(i, FileStatus::Unchanged, Some(d), "")
                }
                Err(err) => {
                    self.counts.failed += 1;
                    self.report(i, FileStatus::Failed, None, &err.to_string())
                }
            },
            // In a tree being built under a hidden name, everything is this receiver's own.
            Ok(_)
                if self.rx.config.force
                    || self.in_stage(&self.manifest.entries[i as usize].path) =>
            {
                self.settled[i as usize] = false;
                self.report(i, FileStatus::Resend, None, "differs; send it whole")
            }
            Ok(_) => {
                self.counts.failed += 1;
                let msg = "exists with other content (use --force on the receiver)";
                self.report(i, FileStatus::Refused, None, msg)
            }
            Err(err) => {
                self.counts.failed += 1;
                let msg = format!("reading the copy here: {}", os_reason(&err));
                self.report(i, FileStatus::Failed, None, &msg)
            }
        }
    }

    /// The rest of a file we hold a partial of follows, then the sender's proof of the prefix:
    /// the file lands if that matches ours.
    pub(super) fn resume(
        &mut self,
        i: u32,
        offset: u64,
        record: &mut TransferRecord,
    ) -> Result<(), RecvError> {
        let (e, header) = self.file_entry(i)?;
        let path = e.path.clone();
        let Some((temp, held, nonce)) = self.partials.remove(&i) else {
            return Err(ProtocolError::Malformed(format!("a resume of {}", Escaped(&path))).into());
        };
        if held != offset {
            return Err(ProtocolError::Malformed(format!(
                "a resume of {} at {offset}, not at {held}",
                Escaped(&path)
            ))
            .into());
        }
        // The rest goes into the partial at once while a second thread hashes what it held:
        // the sender, already sending, never waits on our hashing. If the prefix turns out to
        // differ from the sender's, the file is discarded and asked for whole.
        if let Err(err) = prepare(&temp.file, &header) {
            return Err(self.fatal(i, self.rx.local("preallocating", err)));
        }
        let start = partial::start_at(&temp, held);
        self.receive_file(i, &header, temp, start, Some(nonce), record)
    }

    /// Receives a file's payload (from `start` on) and trailer into `temp`; lands it or adds it
    /// to the batch. With `resumed` (the nonce of our resume answer), the bytes before `start`
    /// were already there, and the sender's proof after the payload must show it holds the
    /// same, or the file is asked for whole.
    pub(super) fn receive_file(
        &mut self,
        i: u32,
        header: &Header,
        temp: TempFile<Arc<OwnedFd>>,
        start: Start,
        resumed: Option<[u8; 32]>,
        record: &mut TransferRecord,
    ) -> Result<(), RecvError> {
        let start_at = start.offset();
        // The root of the bytes held, at once when their pieces' roots were kept.
        let known = match &start {
            Start::Hashed(p) if resumed.is_some() => Some(p.digest()),
            _ => None,
        };
        self.left = self.left.saturating_sub(1);
        let mut scratch = TransferRecord::new(record.peer);
        let route = Route {
            pipe: &self.pipe,
            forward: None,
        };
        debug_assert!(
            self.control.is_drained(),
            "control bytes held over a payload"
        );
        self.payload_since = true;
        let received =
            self.rx
                .receive_payload(self.stream, header, &temp, start, route, &mut scratch);
        record.received += scratch.received.saturating_sub(start_at);
        record.zero_copy &= scratch.zero_copy;
        record.stages.add(&scratch.stages);
        let received = match received {
            Ok(r) => r,
            Err(e) => {
                if e.is_interruption() {
                    partial::keep(temp, header, scratch.received);
                    return Err(e);
                }
                drop(temp);
                return Err(match e {
                    RecvError::Local { .. } => self.fatal(i, e),
                    e => e,
                });
            }
        };
        // The trailer and the head of the frame after it (and before them, the proof of a
        // resumed prefix), in one call when they are there.
        let proof = match resumed {
            Some(_) => {
                self.control
                    .expect(PREFIX_LEN + TRAILER_LEN + FRAME_HEAD_LEN);
                let mut patience = Patience::for_bytes(self.rx.config.timeout, header.size);
                match PrefixProof::read_telling(&mut self.control, &mut || patience.still()) {
                    Ok(p) => Some(p),
                    Err(e @ (ProtocolError::Truncated(_) | ProtocolError::Io(..))) => {
                        partial::keep(temp, header, header.size);
                        return Err(e.into());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            None => {
                self.control.expect(TRAILER_LEN + FRAME_HEAD_LEN);
                None
            }
        };
        let mut patience = Patience::for_bytes(self.rx.config.timeout, header.size);
        let trailer = match Trailer::read_telling(&mut self.control, &mut || patience.still()) {
            Ok(t) => t,
            Err(ProtocolError::Abandoned) => {
                self.settled[i as usize] = true;
                self.counts.failed += 1;
                let msg = "source changed during transfer; discarded";
                return self.report(i, FileStatus::Failed, None, msg);
            }
            Err(e @ (ProtocolError::Truncated(_) | ProtocolError::Io(..))) => {
                partial::keep(temp, header, header.size);
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        if trailer.root.is_some() != self.verify {
            return Err(ProtocolError::Malformed(
                "trailer digest does not match the header's verify flag".into(),
            )
            .into());
        }
        if !trailer.opens(self.integrity, i) {
            self.settled[i as usize] = true;
            self.counts.failed += 1;
            let msg = RecvError::Unsealed.to_string();
            log::warn!("{}: {msg}", Escaped(&header.name));
            return self.report(i, FileStatus::Mismatch, received.digest, &msg);
        }
        if let (Some(nonce), Some(theirs)) = (resumed, proof) {
            let ours = known
                .or(received.prefix)
                .map(|d| auth::prefix_proof(&nonce, start_at, &d));
            if !ours.is_some_and(|ours| auth::same_proof(&ours, &theirs.0)) {
                log::info!(
                    "{}: the partial file differs from the sender's; asking for it whole",
                    Escaped(&header.name)
                );
                drop(temp);
                let msg = "the partial file differs; send it whole";
                return self.report(i, FileStatus::Resend, None, msg);
            }
            record.resumed_from += start_at;
        }
        let digest = received.digest;
        self.settled[i as usize] = true;
        if trailer.root != digest {
            self.counts.failed += 1;
            return self.report(
                i,
                FileStatus::Mismatch,
                digest,
                "checksum mismatch; discarded",
            );
        }
        let plan = self
            .ids
            .plan(&self.manifest.entries[i as usize], &self.rights)
            .map(|(plan, _)| plan);
        let staged = self.in_stage(&self.manifest.entries[i as usize].path);
        if header.size >= LAND_ALONE && !staged {
            let base = self.manifest.entries[i as usize].base().to_owned();
            let file = temp.file.try_clone().ok();
            let landed = self.rx.land_planned(temp, &base, header, plan.as_ref());
            if let (Ok(_), Some(file)) = (&landed, file) {
                let mtime = (header.mtime_sec, header.mtime_nsec);
                self.roots.learn_landed(i, &file, mtime, digest);
            }
            return self.landed(i, digest, landed.map(|_| ()));
        }
        let pending = Pending {
            index: i,
            base: self.manifest.entries[i as usize].base().to_owned(),
            temp,
            header: header.clone(),
            plan,
            staged,
            digest,
        };
        self.lander.add(pending, self.left);
        Ok(())
    }

    /// Reports a file's landing.
    pub(super) fn landed(
        &mut self,
        i: u32,
        digest: Option<[u8; 32]>,
        result: Result<(), RecvError>,
    ) -> Result<(), RecvError> {
        match result {
            Ok(()) => {
                self.counts.landed += 1;
                self.report(i, FileStatus::Landed, digest, "")
            }
            Err(e) => {
                self.counts.failed += 1;
                let status = match e {
                    RecvError::Refused(_) => FileStatus::Refused,
                    _ => FileStatus::Failed,
                };
                log::warn!("{}: {e}", Escaped(&self.manifest.entries[i as usize].path));
                self.report(i, status, digest, &e.to_string())
            }
        }
    }

    /// Lands the batch, gives the directories made their mode and mtime (deepest first, after
    /// their content), and tells the sender the pass is complete.
    pub(super) fn end_pass(&mut self) -> Result<(), RecvError> {
        self.report_checks(true)?;
        self.stop_ahead();
        // The last batches may take a while to be made durable: the sender, waiting for our
        // end of pass, hears meanwhile that we are still here.
        let outbox = self.outbox;
        self.lander.flush_telling(&mut || {
            outbox.queue(&Report::Keepalive);
            let _ = outbox.post();
        });
        // Every first name of this pass has its verdict: the hard links to them can be made.
        self.make_hard_links()?;
        self.left = std::mem::take(&mut self.resends);
        self.set_dir_metadata()?;
        // A new tree built under a hidden name is published now, whole, unless some of its
        // files come again in the next pass.
        self.publish_stages()?;
        self.unfinished.clear();
        self.send(&Report::EndOfPass)
    }

    /// Sets the owners, modes, attributes and mtimes of the directories this transfer made,
    /// deepest first (but those of a new tree whose files come again in the next pass). A
    /// directory that will not take them is reported failed, once, and left as it is.
    fn set_dir_metadata(&mut self) -> Result<(), RecvError> {
        let mut failed = Vec::new();
        for &i in self.made_dirs.iter().rev() {
            let e = &self.manifest.entries[i];
            if self.unfinished.contains(super::top_of(&e.path)) {
                continue;
            }
            // A new tree's hidden directory keeps its mode, owner and the time it was taken at
            // until it is published (`publish_stages` sets them then): the sweep knows it by
            // its owner and judges it by its mtime, and a sender's (another user, a time
            // years ahead or behind) would keep it forever or remove it at once.
            let hidden_top = e.parent().is_none() && self.in_stage(&e.path);
            if hidden_top {
                continue;
            }
            let on_disk = self.dirs.on_disk(&e.path);
            let dir = open_beneath(&self.rx.dir, on_disk, OFlags::RDONLY | OFlags::DIRECTORY);
            let set = dir
                .map_err(io::Error::from)
                .and_then(|d| self.dir_metadata(&d, e));
            if let Err(err) = set {
                let why = format!("setting the directory's metadata: {}", os_reason(&err));
                log::warn!("{}: {why}", Escaped(&e.path));
                failed.push((i, why));
            }
        }
        self.made_dirs
            .retain(|i| !failed.iter().any(|(f, _)| f == i));
        for (i, why) in failed {
            self.dir_failed(i, &why)?;
        }
        Ok(())
    }

    /// Gives directory `d`, entry `e`, its mode, owner, attributes (as far as they are kept)
    /// and mtime.
    pub(super) fn dir_metadata(&self, d: &OwnedFd, e: &Entry) -> io::Result<()> {
        rustix::fs::fchmod(d, Mode::from_raw_mode(e.mode & KEPT_MODE))?;
        if let Some(plan) = self.plan(e) {
            plan.apply(d)?;
        }
        Ok(rustix::fs::futimens(d, &timestamps(e.mtime.0, e.mtime.1))?)
    }

    /// Reports directory `i`, counted as made, as failed: it would not take its metadata.
    pub(super) fn dir_failed(&mut self, i: usize, why: &str) -> Result<(), RecvError> {
        self.counts.dirs = self.counts.dirs.saturating_sub(1);
        self.counts.failed += 1;
        self.report(i as u32, FileStatus::Failed, None, why)
    }

    /// Ends the tree over a local failure with entry `i` (a full disk, say: the files after it
    /// would fail the same way). What was verified lands first, so that the failure is the
    /// last verdict the sender reads and can tell why the connection ends.
    pub(super) fn fatal(&mut self, i: u32, e: RecvError) -> RecvError {
        self.stop_ahead();
        self.lander.flush();
        self.counts.failed += 1;
        let _ = self.report(i, FileStatus::Failed, None, &e.to_string());
        e
    }

    /// Removes the temporary files made ahead and not used (the sender left their files out);
    /// later passes make their own.
    pub(super) fn stop_ahead(&mut self) {
        if let Some(mut ahead) = self.ahead.take() {
            ahead.finish();
        }
    }

    /// Queues a file's verdict; verdicts go out together whenever we are about to wait.
    pub(super) fn report(
        &mut self,
        index: u32,
        status: FileStatus,
        root: Option<[u8; 32]>,
        message: &str,
    ) -> Result<(), RecvError> {
        // In a tree not published yet, what is here is not under its name yet.
        let path = &self.manifest.entries[index as usize].path;
        if status == FileStatus::Resend {
            self.resends += 1;
            if self.in_stage(path) {
                self.unfinished.insert(super::top_of(path).to_vec());
            }
        }
        match status {
            FileStatus::Landed | FileStatus::Unchanged if self.in_stage(path) => {
                self.outbox.hold(index, status, root, message)
            }
            _ => self.outbox.verdict(index, status, root, message),
        }
        Ok(())
    }

    /// Sends what is queued, then `report`.
    pub(super) fn send(&mut self, report: &Report) -> Result<(), RecvError> {
        self.outbox.queue(report);
        self.post()
    }

    /// Sends the queued verdicts in one write.
    pub(super) fn post(&mut self) -> Result<(), RecvError> {
        self.outbox.post()
    }
}
