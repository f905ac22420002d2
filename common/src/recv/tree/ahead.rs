//! Creating a tree's temporary files ahead of their frames, on a thread of their own: making an
//! inode is the costliest step of receiving a small file, and it does not depend on the data.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::{Scope, ScopedJoinHandle};

use super::DirCache;
use crate::recv::partial::TempFile;

type Made = (u32, io::Result<TempFile<Arc<OwnedFd>>>);

/// Files go across in chunks of this many: one wake-up per chunk, not per file.
const CHUNK: usize = 16;

/// Temporary files made in the order the sender will send their entries.
pub(super) struct Ahead<'scope> {
    ready: Option<Receiver<Vec<Made>>>,
    /// Made and received, not yet taken.
    next: VecDeque<Made>,
    stop: Arc<AtomicBool>,
    thread: Option<ScopedJoinHandle<'scope, ()>>,
}

impl<'scope> Ahead<'scope> {
    /// Starts making, at most `depth` ahead, a temporary file for each of `files`: entry
    /// indices, increasing, with their parent directories (`None`: the receive directory), and
    /// the name to make it under when it needs no temporary one (a new tree built under a
    /// hidden name).
    pub fn start(
        scope: &'scope Scope<'scope, '_>,
        root: Arc<OwnedFd>,
        files: Vec<(u32, Option<Vec<u8>>, Option<String>)>,
        depth: usize,
    ) -> Ahead<'scope> {
        let (made, ready) = mpsc::sync_channel((depth / CHUNK).max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = scope.spawn(move || {
            let mut dirs = DirCache::new(root);
            for chunk in files.chunks(CHUNK) {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let temps = chunk
                    .iter()
                    .map(|(i, parent, name)| {
                        let dir = dirs.get(parent.as_deref());
                        let temp = match name {
                            Some(name) => dir.and_then(|d| TempFile::create_as(d, name.clone())),
                            None => dir.and_then(TempFile::create),
                        };
                        (*i, temp)
                    })
                    .collect();
                if made.send(temps).is_err() {
                    break;
                }
            }
        });
        Ahead {
            ready: Some(ready),
            next: VecDeque::new(),
            stop,
            thread: Some(thread),
        }
    }

    /// The temporary file made for entry `i`, if one was; those made for entries the sender
    /// left out are removed on the way. `None` also when making it failed: the caller then
    /// makes it itself and reports why that fails.
    pub fn take(&mut self, i: u32) -> Option<TempFile<Arc<OwnedFd>>> {
        loop {
            if self.next.is_empty() {
                self.next = self.ready.as_ref()?.recv().ok()?.into();
            }
            let (j, _) = self.next.front()?;
            if *j > i {
                // Entries come in order, so `i` was not among ours (or the sender is out of
                // order): the caller makes its own, and ours stay for their frames.
                return None;
            }
            let (j, temp) = self.next.pop_front()?;
            if j == i {
                return temp.ok();
            }
        }
    }

    /// Stops making files and removes those not taken.
    pub fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.next.clear();
        // Dropping the receiving end fails the thread's next send, which ends it; what it had
        // made and not sent is dropped with the channel, which removes the files.
        self.ready = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
