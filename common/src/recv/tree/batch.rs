//! Landing a tree's small files in batches on a thread of their own: their metadata is set, one
//! syncfs makes the batch durable, the renames publish it, a second syncfs makes the renames
//! durable, then the verdicts go out. The session's thread goes on receiving meanwhile.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::Instant;

use super::sync::Syncs;
use crate::auth::{Integrity, Seal};
use crate::error::RecvError;
use crate::meta::Plan;
use crate::recv::handshake::tell;
use crate::recv::partial::TempFile;
use crate::recv::Receiver;
use crate::roots::Roots;
use crate::watch::KEEPALIVE_EVERY;
use crate::wire::Header;
use crate::wire::{FileStatus, Report};

/// A verified small file waiting for its batch to be made durable and renamed.
pub(super) struct Pending {
    pub index: u32,
    pub temp: TempFile<Arc<OwnedFd>>,
    /// Its final name within the temporary file's directory.
    pub base: Vec<u8>,
    /// Its mode, mtime and size.
    pub header: Header,
    /// Its owner and attributes, when sent and kept.
    pub plan: Option<Plan>,
    /// In a new tree built under a hidden name: renamed there without a sync of its own, its
    /// verdict held until the tree is published.
    pub staged: bool,
    pub digest: Option<[u8; 32]>,
}

/// Verdicts waiting to go to the sender, written together whenever a thread is about to wait.
/// Either thread may post: the lock keeps each write whole.
pub(super) struct Outbox<'s> {
    stream: &'s std::net::TcpStream,
    /// Seals each verdict's digest.
    integrity: &'s Integrity,
    queued: Mutex<Vec<u8>>,
    /// The latest verdict on each file that is the first name of a hard link.
    firsts: Mutex<HashMap<u32, Option<FileStatus>>>,
    /// Verdicts held until the tree they are in is published (landed or unchanged in a tree
    /// built under a hidden name): entry, status, digest, message.
    held: Mutex<Vec<Held>>,
}

/// A verdict held back: entry, status, digest, message.
pub(super) type Held = (u32, FileStatus, Option<[u8; 32]>, String);

impl<'s> Outbox<'s> {
    /// An outbox that remembers the verdicts on `firsts`.
    pub fn new(
        stream: &'s std::net::TcpStream,
        integrity: &'s Integrity,
        firsts: Vec<u32>,
    ) -> Outbox<'s> {
        Outbox {
            stream,
            integrity,
            queued: Mutex::new(Vec::new()),
            firsts: Mutex::new(firsts.into_iter().map(|i| (i, None)).collect()),
            held: Mutex::new(Vec::new()),
        }
    }

    /// Holds entry `index`'s verdict until [`release`](Self::release): its file is durable,
    /// but not under its name yet.
    pub fn hold(&self, index: u32, status: FileStatus, root: Option<[u8; 32]>, message: &str) {
        self.note(index, status);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.push((index, status, root, message.to_owned()));
    }

    /// The verdicts held so far on the entries `due` picks, taken out.
    pub fn release(&self, due: impl Fn(u32) -> bool) -> Vec<Held> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let (out, kept) = std::mem::take(&mut *held)
            .into_iter()
            .partition(|h| due(h.0));
        *held = kept;
        out
    }

    fn note(&self, index: u32, status: FileStatus) {
        let mut firsts = self.firsts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(latest) = firsts.get_mut(&index) {
            *latest = Some(status);
        }
    }

    /// The latest verdict on entry `index`, a first name of a hard link.
    pub fn status_of(&self, index: u32) -> Option<FileStatus> {
        let firsts = self.firsts.lock().unwrap_or_else(|p| p.into_inner());
        firsts.get(&index).copied().flatten()
    }

    /// Queues a report.
    pub fn queue(&self, report: &Report) {
        self.lock().extend_from_slice(&report.encode());
    }

    /// Queues entry `index`'s verdict, its status and digest (32 zero bytes when it has none)
    /// sealed for that entry.
    pub fn verdict(&self, index: u32, status: FileStatus, root: Option<[u8; 32]>, message: &str) {
        self.note(index, status);
        let digest = root.unwrap_or_default();
        self.queue(&Report::File {
            index,
            status,
            root,
            seal: (self.integrity).seal(Seal::Verdict, index, status as u8, &digest),
            message: message.to_owned(),
        });
    }

    /// Sends what is queued in one write.
    pub fn post(&self) -> Result<(), RecvError> {
        let mut queued = self.lock();
        if queued.is_empty() {
            return Ok(());
        }
        let sent = tell(self.stream, &queued, "sending verdicts", 0, 0);
        queued.clear();
        sent
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.queued.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Removes the record a resumed file's checkpoints wrote beside it, now that it landed: it
/// would otherwise be left in the tree.
fn forget_record(p: &Pending) {
    if p.temp.is_kept() {
        crate::recv::partial::forget(&p.temp.dir, &p.header.name);
    }
}

/// Files landed and failed by the landing thread.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Tally {
    pub landed: usize,
    pub failed: usize,
}

enum Job {
    Batch(Vec<Pending>),
    /// Say when everything before has landed.
    Flush(SyncSender<()>),
}

/// The session's handle on its landing thread: it gathers files into a batch and hands the
/// batch over when it is full.
pub(super) struct Lander<'scope> {
    jobs: Option<SyncSender<Job>>,
    thread: Option<ScopedJoinHandle<'scope, Tally>>,
    batch: Vec<Pending>,
    bytes: u64,
    batch_files: usize,
    batch_bytes: u64,
}

/// The smallest batch handed over before the end of a pass.
const MIN_BATCH: usize = 16;

impl<'scope> Lander<'scope> {
    /// Starts the thread; a batch lands once it holds `batch_files` files or `batch_bytes`.
    pub fn start<'env>(
        scope: &'scope Scope<'scope, 'env>,
        rx: &'env Receiver,
        (outbox, roots, syncs): (&'env Outbox<'env>, &'env Roots, &'env Syncs),
        (batch_files, batch_bytes): (usize, u64),
    ) -> Lander<'scope> {
        // One batch waits while one lands: the session gathers a third meanwhile, and is held
        // back when landing is slower than receiving.
        let (jobs, incoming) = mpsc::sync_channel(1);
        let thread = scope.spawn(move || {
            let mut landing = Landing {
                rx,
                syncs,
                outbox,
                roots,
                tally: Tally::default(),
            };
            for job in incoming {
                match job {
                    Job::Batch(batch) => landing.land(batch),
                    Job::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
            landing.tally
        });
        Lander {
            jobs: Some(jobs),
            thread: Some(thread),
            batch: Vec::new(),
            bytes: 0,
            batch_files,
            batch_bytes,
        }
    }

    /// Adds a verified file to the batch. `left` is how many more files the pass will bring:
    /// near the end batches get smaller (each as large as what is left), so that little is
    /// left to land once the last file has arrived.
    pub fn add(&mut self, pending: Pending, left: usize) {
        self.bytes += pending.header.size;
        self.batch.push(pending);
        let files = self.batch_files.min(left.max(MIN_BATCH));
        if self.batch.len() >= files || self.bytes >= self.batch_bytes {
            self.hand_over();
        }
    }

    fn hand_over(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        self.bytes = 0;
        if let (Some(jobs), false) = (&self.jobs, batch.is_empty()) {
            // The thread only ends when `jobs` is dropped, so this cannot fail.
            let _ = jobs.send(Job::Batch(batch));
        }
    }

    /// Returns once everything added has landed and its verdict is queued or sent.
    pub fn flush(&mut self) {
        self.flush_telling(&mut || {});
    }

    /// As [`Lander::flush`], calling `tick` every [`KEEPALIVE_EVERY`] while it waits (to tell
    /// the sender we are still here while a batch is made durable).
    pub fn flush_telling(&mut self, tick: &mut dyn FnMut()) {
        self.hand_over();
        let Some(jobs) = &self.jobs else { return };
        let (done, wait) = mpsc::sync_channel(1);
        if jobs.send(Job::Flush(done)).is_ok() {
            while let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(KEEPALIVE_EVERY) {
                tick();
            }
        }
    }

    /// Lands what is left, ends the thread and returns its counts.
    pub fn finish(&mut self) -> Tally {
        self.hand_over();
        self.jobs = None;
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

/// The landing thread's state.
struct Landing<'env> {
    rx: &'env Receiver,
    /// The session's syncs.
    syncs: &'env Syncs,
    outbox: &'env Outbox<'env>,
    /// Learns the root of each file landed.
    roots: &'env Roots,
    tally: Tally,
}

impl Landing<'_> {
    /// Lands the batch: metadata, syncfs, renames, syncfs, verdicts.
    fn land(&mut self, batch: Vec<Pending>) {
        let started = Instant::now();
        let count = batch.len();
        let mut ready = Vec::with_capacity(count);
        let mut staged = Vec::new();
        for p in batch {
            match self.rx.set_metadata_planned(
                &p.temp.file,
                &p.header,
                p.plan.as_ref(),
                p.temp.made_with,
            ) {
                Ok(()) if p.staged => staged.push(p),
                Ok(()) => ready.push(p),
                Err(e) => self.failed(&p, e),
            }
        }
        // A file in a directory on another file system (a mount point in the tree) is out of
        // the syncfs's reach: it is made durable with an fsync of its own, and its directory
        // after the rename. Each directory is looked at once per batch.
        let mut elsewhere: HashMap<*const OwnedFd, bool> = HashMap::new();
        let mut kept = Vec::with_capacity(ready.len());
        for p in ready {
            let away = *(elsewhere.entry(Arc::as_ptr(&p.temp.dir)))
                .or_insert_with(|| self.syncs.elsewhere(&p.temp.dir));
            match away.then(|| rustix::fs::fsync(&p.temp.file)) {
                Some(Err(e)) => self.failed(&p, self.rx.local("syncing the data", e.into())),
                _ => kept.push((p, away)),
            }
        }
        let ready = kept;
        // One sync for the whole batch, staged files or not. Once a sync of the session has
        // failed, this one fails too (see `Syncs`): its Ok holds for every file written before
        // it. A staged file (its tree published later, with a sync of its own) is written back
        // now, while the next files arrive, and named without a rename; its verdict waits for
        // the tree.
        if let Err(e) = self.syncs.syncfs() {
            for p in staged.iter().chain(ready.iter().map(|(p, _)| p)) {
                self.failed(p, self.rx.local("syncing the received files", e.into()));
            }
            return self.post();
        }
        for p in staged {
            self.stage(p);
        }
        if ready.is_empty() {
            return self.post();
        }
        let mut outcomes = Vec::with_capacity(ready.len());
        for (p, away) in ready {
            let published = self.rx.publish(&p.temp.dir, &p.temp.name, &p.base);
            outcomes.push((p, away, published));
        }
        let synced = self.syncs.syncfs();
        let mut dirs_synced: HashMap<*const OwnedFd, rustix::io::Result<()>> = HashMap::new();
        log::debug!(
            "landed a batch of {count} files in {:.3} s",
            started.elapsed().as_secs_f64()
        );
        for (p, away, published) in outcomes {
            let synced = match away {
                true => *(dirs_synced.entry(Arc::as_ptr(&p.temp.dir)))
                    .or_insert_with(|| rustix::fs::fsync(&p.temp.dir)),
                false => synced,
            };
            match (published, synced) {
                (Ok(()), Ok(())) => {
                    self.tally.landed += 1;
                    self.remember(&p);
                    forget_record(&p);
                    self.outbox
                        .verdict(p.index, FileStatus::Landed, p.digest, "");
                    p.temp.disarm();
                }
                (Ok(()), Err(e)) => {
                    // Published but perhaps not durable: say so, and leave it in place.
                    self.failed(&p, self.rx.local("syncing the directories", e.into()));
                    p.temp.disarm();
                }
                (Err(e), _) => self.failed(&p, e),
            }
        }
        self.post();
    }

    /// Names a file of a tree being built under a hidden name (when it was not made under its
    /// name): the tree is made durable as a whole before it is published, and the file's
    /// verdict waits for that.
    fn stage(&mut self, p: Pending) {
        let dir = p.temp.dir.clone();
        let named = match p.temp.name.as_bytes() == p.base {
            // Made under its own name.
            true => Ok(()),
            false => rustix::fs::renameat(&dir, p.temp.name.as_str(), &dir, &p.base),
        };
        match named {
            Ok(()) => {
                self.tally.landed += 1;
                self.remember(&p);
                forget_record(&p);
                self.outbox.hold(p.index, FileStatus::Landed, p.digest, "");
                p.temp.disarm();
            }
            Err(e) => {
                let what = format!("renaming into {}", crate::name::Escaped(&p.base));
                self.failed(&p, self.rx.local(&what, e.into()));
            }
        }
    }

    /// Remembers the root of a file landed, with its identity now that we changed it for the
    /// last time (when the clock has passed its ctime).
    fn remember(&self, p: &Pending) {
        let mtime = (p.header.mtime_sec, p.header.mtime_nsec);
        (self.roots).learn_landed(p.index, &p.temp.file, mtime, p.digest);
    }

    /// Queues the verdict of a file that did not land.
    fn failed(&mut self, p: &Pending, e: RecvError) {
        self.tally.failed += 1;
        let status = match e {
            RecvError::Refused(_) => FileStatus::Refused,
            _ => FileStatus::Failed,
        };
        log::warn!("{}: {e}", crate::name::Escaped(&p.header.name));
        self.outbox
            .verdict(p.index, status, p.digest, &e.to_string());
    }

    /// Sends the verdicts; a broken connection is the session thread's to report.
    fn post(&self) {
        if let Err(e) = self.outbox.post() {
            log::debug!("sending verdicts: {e}");
        }
    }
}
