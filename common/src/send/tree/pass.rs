//! A tree's passes: every file's frame and body back to back without waiting for verdicts
//! (read meanwhile on the reader thread), then the end of the pass and the verdicts still due;
//! a second pass for the files the receiver asks to have whole.

use std::io::Write;
use std::sync::mpsc;

use super::ledger::{Incoming, Sent};
use super::manifest::Action;
use super::prehash::{Hashed, Prehash};
use super::{Phase, Session, Tick};
use crate::auth;
use crate::client::net;
use crate::error::SendError;
use crate::hash::{Prefix, Start};
use crate::roots::Identity;
use crate::send::file::send_body;
use crate::send::resume::hash_prefix_telling;
use crate::send::source::Source;
use crate::watch::Patience;
use crate::wire::ProtocolError;
use crate::wire::{Frame, Kind, PrefixProof, Report, Trailer, TRAILER_LEN};

/// After a tree's end of pass, how many times `--timeout` a receiver's keepalives are taken in
/// place of its verdicts (beyond its owed files' share): 30 minutes by default.
const VERDICT_PATIENCE: u32 = 30;

/// How often the wait for verdicts looks at whether the receiver's patience is spent.
const PATIENCE_TICK: std::time::Duration = std::time::Duration::from_millis(500);

/// Files at least this large are hashed on a second thread while keepalive frames go out.
pub(super) const KEEPALIVE_ABOVE: u64 = 64 << 20;

impl Session<'_> {
    /// The first pass, and a second for the files the receiver asks to have whole.
    pub(super) fn passes(
        &mut self,
        first: Vec<(usize, Action)>,
        ahead: &Prehash,
        reports: &mpsc::Receiver<Incoming>,
        progress: &mut dyn FnMut(Tick),
    ) -> Result<(), SendError> {
        let resend = self.pass(&first, Some(ahead), reports, progress, false)?;
        if resend.is_empty() {
            return Ok(());
        }
        if self.stopping() {
            // Their verdicts were held for a tree that stays hidden without the second pass.
            for i in self.ledger.unanswered() {
                self.fail(
                    i,
                    "not published: the tree was stopped before it was whole".into(),
                );
            }
            for i in resend {
                self.fail(
                    i,
                    "not sent again: the tree was stopped (--fail-fast)".into(),
                );
            }
            return Ok(());
        }
        // Whole files only: the ledger refuses a second "send it whole" for them. A hard link
        // comes back when its first name did, and follows it again.
        let second: Vec<(usize, Action)> = resend
            .into_iter()
            .map(|i| match self.tree.manifest.entries[i].kind {
                Kind::HardLink { .. } => (i, Action::Link),
                _ => (i, Action::Full),
            })
            .collect();
        self.pass(&second, None, reports, progress, true).map(drop)
    }

    /// Sends every action's frame back to back, then an end of pass, and reads verdicts until
    /// the receiver's end of pass. Returns the files to send again whole, none after the `last`
    /// pass.
    fn pass(
        &mut self,
        actions: &[(usize, Action)],
        ahead: Option<&Prehash>,
        reports: &mpsc::Receiver<Incoming>,
        progress: &mut dyn FnMut(Tick),
        last: bool,
    ) -> Result<Vec<usize>, SendError> {
        let mut resend = Vec::new();
        progress(Tick::Phase(Phase::Sending));
        for &(i, action) in actions {
            while let Ok(report) = reports.try_recv() {
                let (report, sent) = report?;
                self.apply(report, sent, &mut resend)?;
            }
            if self.stopping() {
                break;
            }
            self.send_one(i, action, ahead, progress)?;
            progress(Tick::File);
        }
        self.write(&Frame::EndOfPass.encode(), None, "ending a pass")?;
        progress(Tick::Phase(Phase::Landing));
        // The wait starts now, however long the receiver was quiet while files arrived.
        self.ledger.heard();
        // Its keepalives say it is still there, but not forever: one saying so forever held
        // zsend forever. What it does meanwhile is hash large files and sync the file system,
        // which writes back every program's data there, not only ours: so the bound is
        // generous, [`VERDICT_PATIENCE`] times the timeout plus the owed files' bytes at the
        // slowest hashing rate (see `Patience`).
        let owed = (self.ledger.unanswered().into_iter())
            .map(|i| self.tree.manifest.entries[i].size())
            .fold(0u64, u64::saturating_add);
        let waited = self.opts.timeout.saturating_mul(VERDICT_PATIENCE);
        let mut patience = Patience::for_bytes(waited, owed);
        patience.restart();
        loop {
            // Anything the receiver says, keepalives included, is word that it is still there.
            let left = self.opts.timeout.saturating_sub(self.ledger.since_heard());
            let (report, sent) = match reports.recv_timeout(left.min(PATIENCE_TICK)) {
                Ok(report) => {
                    // A verdict: the next one may take as long again.
                    patience.restart();
                    report?
                }
                Err(mpsc::RecvTimeoutError::Timeout) if !left.is_zero() && patience.still() => {
                    continue
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(SendError::Network {
                        during: "waiting for the receiver's verdicts".into(),
                        error: std::io::ErrorKind::TimedOut.into(),
                    })
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(ProtocolError::Truncated("verdicts").into())
                }
            };
            if report == Report::EndOfPass {
                // Everything of the last pass was sent whole: nothing comes back from it.
                if last && !resend.is_empty() {
                    return Err(ProtocolError::Malformed(format!(
                        "{} entries asked for again in the last pass",
                        resend.len()
                    ))
                    .into());
                }
                // A new tree with a file asked for again stays hidden until the next pass has
                // brought it: the verdicts held for its other files come then. The last pass
                // leaves none due.
                let awaiting = self.ledger.awaiting();
                if awaiting > 0 && resend.is_empty() {
                    return Err(ProtocolError::Malformed(format!(
                        "an end of pass with {awaiting} files still without their verdict"
                    ))
                    .into());
                }
                return Ok(resend);
            }
            self.apply(report, sent, &mut resend)?;
        }
    }

    /// Whether to send no more files: `--fail-fast` and something failed.
    fn stopping(&self) -> bool {
        self.tree_opts.fail_fast && !self.report.failures.is_empty()
    }

    fn send_one(
        &mut self,
        i: usize,
        action: Action,
        ahead: Option<&Prehash>,
        progress: &mut dyn FnMut(Tick),
    ) -> Result<(), SendError> {
        let entry = &self.tree.manifest.entries[i];
        let path = &self.tree.paths[i];
        let index = i as u32;
        if let (Action::Check, true) = (action, self.tree_opts.quick) {
            // Nothing to read: the receiver's copy is taken on its size and mtime. Quick checks
            // go out together (thousands of them, for a tree sent again).
            self.queue(i, &Frame::Quick(index).encode(), Sent::Quick)?;
            if let Kind::File { size, .. } = entry.kind {
                progress(Tick::Bytes(size));
            }
            return Ok(());
        }
        if let Action::Link = action {
            return self.queue(i, &Frame::Link(index).encode(), Sent::Link);
        }
        let checked = matches!(action, Action::Check | Action::Verify);
        match ahead.filter(|_| checked).and_then(|a| a.take(i)) {
            Some(Hashed::Root(digest, size)) => return self.checked(i, digest, size, progress),
            Some(Hashed::Unlisted(why)) => {
                self.fail(i, why);
                return Ok(());
            }
            Some(Hashed::Unread(e)) => return Err(e),
            None => {}
        }
        // A large file hashed in turn: nothing to open if its root is remembered.
        if let Some(root) = (self.remembered)
            .filter(|_| checked)
            .and_then(|r| r.known(i))
        {
            return self.checked(i, root, entry.size(), progress);
        }
        let source = match Source::listed(path, entry) {
            Ok(s) => s,
            Err(e) => {
                self.fail(i, e.to_string());
                return Ok(());
            }
        };
        let (frame, start, sent, nonce) = match action {
            Action::Link => unreachable!("a hard link's frame went out above"),
            Action::Check | Action::Verify => {
                let before = Identity::settled(&source.file);
                let digest = self.hash_alive(&source, source.size)?.digest();
                if let Some(r) = self.remembered {
                    r.learn(self.tree, i, &source.file, before, digest);
                }
                return self.checked(i, digest, source.size, progress);
            }
            Action::Full => (
                Frame::Full(index),
                Start::Hashed(Prefix::empty()),
                Sent::Full,
                None,
            ),
            // The rest goes at once; the first bytes are hashed meanwhile and proven after it.
            Action::Resume(offset, nonce) => (
                Frame::Resume(index, offset),
                Start::Unhashed(offset),
                Sent::Resume,
                Some((offset, nonce)),
            ),
        };
        // Its identity before a byte is read: if it still holds once all went out, the root is
        // of what was sent, and remembered.
        let before = (self.remembered)
            .filter(|r| r.is_open())
            .and_then(|_| Identity::settled(&source.file));
        self.ledger.sending(i, sent);
        self.write(&frame.encode(), None, "sending a file header")?;
        let resumed = start.offset();
        progress(Tick::Bytes(resumed));
        let mut bytes = |n| progress(Tick::Bytes(n));
        let mut body = send_body(
            self.stream,
            &source,
            start,
            self.opts.verify,
            false,
            &mut self.scratch,
            &mut bytes,
        );
        // A dense file that shrank while it went out: its payload is made whole with zeros,
        // so that the tree goes on, and abandoned, so that the receiver discards it.
        if let (Err(SendError::SourceShrank { sent, expected }), None) = (&body, source.sparse_data)
        {
            self.pad(expected - sent)?;
            body = Err(SendError::SourceChanged);
        }
        if let Some((offset, nonce)) = nonce {
            // An abandoned file's proof is not looked at.
            let root = body
                .as_ref()
                .ok()
                .and_then(|b| b.prefix)
                .unwrap_or_default();
            let proof = PrefixProof(auth::prefix_proof(&nonce, offset, &root));
            if matches!(body, Ok(_) | Err(SendError::SourceChanged)) {
                self.write(&proof.encode(), None, "proving the resumed prefix")?;
            }
        }
        match body {
            Ok(body) => {
                let digest = body.digest;
                // Hashed as it went out, unchanged since it was listed: remembered.
                if let (Some(r), Some(root), 0) = (self.remembered, digest, resumed) {
                    r.learn(self.tree, i, &source.file, before, root);
                }
                self.digests[i] = digest;
                self.resumed[i] = resumed;
                let trailer = Trailer::sealed(digest, &self.integrity, index);
                self.hold(i, trailer.encode(), sent)
            }
            // Its verdict says the receiver discarded it; the failure is counted then.
            Err(SendError::SourceChanged) => self.hold(i, Trailer::abandoned(), Sent::Abandoned),
            Err(e) => Err(e),
        }
    }

    /// Queues the check of entry `i`, of `size` bytes, whose root is `digest`.
    fn checked(
        &mut self,
        i: usize,
        digest: [u8; 32],
        size: u64,
        progress: &mut dyn FnMut(Tick),
    ) -> Result<(), SendError> {
        self.digests[i] = Some(digest);
        self.queue(i, &Frame::Check(i as u32, digest).encode(), Sent::Check)?;
        progress(Tick::Bytes(size));
        Ok(())
    }

    /// Queues entry `i`'s check (`frame`, the whole of what it sends), which awaits its
    /// verdict from now on; the queue goes out with the next bytes written, or once it holds
    /// 64 KiB: a tree sent again is thousands of checks, each a few dozen bytes.
    fn queue(&self, i: usize, frame: &[u8], sent: Sent) -> Result<(), SendError> {
        if self.held.get().is_some() {
            return self.write(frame, Some((i, sent)), "sending a check");
        }
        self.ledger.expect(i, sent);
        let full = {
            let mut queue = self.queued.borrow_mut();
            queue.extend_from_slice(frame);
            queue.len() >= 64 << 10
        };
        match full {
            true => self.write(&[], None, "sending checks"),
            false => Ok(()),
        }
    }

    /// Sends `n` zero bytes: the rest of a payload whose file shrank.
    fn pad(&self, mut n: u64) -> Result<(), SendError> {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let mut stream = self.stream;
        while n > 0 {
            let k = n.min(ZEROS.len() as u64) as usize;
            stream
                .write_all(&ZEROS[..k])
                .map_err(net("sending the rest of a file that shrank"))?;
            n -= k as u64;
        }
        Ok(())
    }

    /// Hashes the first `len` bytes of `source`. A large file takes a while, and the receiver
    /// is waiting for our next frame meanwhile: keepalive frames tell it we are still here.
    fn hash_alive(&self, source: &Source, len: u64) -> Result<Prefix, SendError> {
        let sparse = source.sparse_data.is_some();
        let source_err = |error| SendError::Source {
            path: source.path.clone(),
            error,
        };
        if len < KEEPALIVE_ABOVE {
            return Prefix::of_file(&source.file, len, sparse).map_err(source_err);
        }
        hash_prefix_telling(source, len, &mut || {
            self.write(
                &Frame::Keepalive.encode(),
                None,
                "keeping the connection up",
            )
        })
    }

    /// Sends `bytes`, after the trailer held back if there is one. `completes` names an entry
    /// whose last byte this is (a check), which then awaits its verdict.
    fn write(
        &self,
        bytes: &[u8],
        completes: Option<(usize, Sent)>,
        during: &'static str,
    ) -> Result<(), SendError> {
        let mut stream = self.stream;
        // An entry awaits its verdict before its last byte leaves, so that the reader never
        // sees a verdict before the entry is in the ledger.
        let held = self.held.take();
        for (i, sent) in held.iter().map(|(i, _, sent)| (*i, *sent)).chain(completes) {
            self.ledger.expect(i, sent);
        }
        // Checks queued (only ever while no trailer is held) go first.
        let queued = std::mem::take(&mut *self.queued.borrow_mut());
        match held {
            Some((_, trailer, _)) => stream.write_all(&[&queued[..], &trailer[..], bytes].concat()),
            None if queued.is_empty() => stream.write_all(bytes),
            None => stream.write_all(&[&queued[..], bytes].concat()),
        }
        .map_err(net(during))
    }

    /// Holds entry `i`'s trailer back until the next frame: a frame always follows one.
    fn hold(&self, i: usize, trailer: [u8; TRAILER_LEN], sent: Sent) -> Result<(), SendError> {
        if self.held.get().is_some() {
            self.write(&[], None, "sending a trailer")?;
        }
        self.held.set(Some((i, trailer, sent)));
        Ok(())
    }
}
