//! Creating a tree's temporary files ahead of their frames, on a thread of their own: making an
//! inode is the costliest step of receiving a small file, and it does not depend on the data.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::{Scope, ScopedJoinHandle};

use super::tree::DirCache;
use crate::partial::TempFile;

type Made = (u32, io::Result<TempFile<Arc<OwnedFd>>>);

/// Temporary files made in the order the sender will send their entries.
pub(super) struct Ahead<'scope> {
    ready: Option<Receiver<Made>>,
    /// The next one made, when a frame asked for an entry before it.
    next: Option<Made>,
    stop: Arc<AtomicBool>,
    thread: Option<ScopedJoinHandle<'scope, ()>>,
}

impl<'scope> Ahead<'scope> {
    /// Starts making, at most `depth` ahead, a temporary file for each of `files`: entry
    /// indices, increasing, with their parent directories (`None`: the receive directory).
    pub fn start(
        scope: &'scope Scope<'scope, '_>,
        root: Arc<OwnedFd>,
        files: Vec<(u32, Option<String>)>,
        depth: usize,
    ) -> Ahead<'scope> {
        let (made, ready) = mpsc::sync_channel(depth);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = scope.spawn(move || {
            let mut dirs = DirCache::new(root);
            for (i, parent) in files {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let temp = dirs.get(parent.as_deref()).and_then(TempFile::create);
                if made.send((i, temp)).is_err() {
                    break;
                }
            }
        });
        Ahead {
            ready: Some(ready),
            next: None,
            stop,
            thread: Some(thread),
        }
    }

    /// The temporary file made for entry `i`, if one was; those made for entries the sender
    /// left out are removed on the way. `None` also when making it failed: the caller then
    /// makes it itself and reports why that fails.
    pub fn take(&mut self, i: u32) -> Option<TempFile<Arc<OwnedFd>>> {
        loop {
            let (j, temp) = match self.next.take() {
                Some(made) => made,
                None => self.ready.as_ref()?.recv().ok()?,
            };
            if j == i {
                return temp.ok();
            }
            if j > i {
                // Not one of ours (a file sent again in a second pass): keep ours for later.
                self.next = Some((j, temp));
                return None;
            }
        }
    }

    /// Stops making files and removes those not taken.
    pub fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.next = None;
        // Dropping the receiving end fails the thread's next send, which ends it; what it had
        // made and not sent is dropped with the channel, which removes the files.
        self.ready = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
