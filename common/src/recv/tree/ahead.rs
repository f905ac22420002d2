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

/// A file to make ahead of its frame.
pub(super) struct ToMake {
    pub index: u32,
    /// Its parent directory, as on disk (`None`: the receive directory).
    pub parent: Option<Vec<u8>>,
    /// In a new tree built under a hidden name: the name to make it under (it needs no
    /// temporary one), and the mode it may be made with, if the directory and the umask give
    /// it whole.
    pub direct: Option<(String, Option<u32>)>,
}

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
    /// Starts making, at most `depth` ahead, a temporary file for each of `files` (entry
    /// indices increasing).
    pub fn start(
        scope: &'scope Scope<'scope, '_>,
        root: Arc<OwnedFd>,
        files: Vec<ToMake>,
        depth: usize,
    ) -> Ahead<'scope> {
        let (made, ready) = mpsc::sync_channel((depth / CHUNK).max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = scope.spawn(move || {
            let mut dirs = DirCache::new(root);
            let umask = crate::sys::umask();
            // Whether the last parent made in gives files their modes whole.
            let mut plain: Option<(Option<Vec<u8>>, bool)> = None;
            for chunk in files.chunks(CHUNK) {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let temps = chunk
                    .iter()
                    .map(|f| {
                        let dir = dirs.get(f.parent.as_deref());
                        let temp = match (&f.direct, dir) {
                            (Some((name, mode)), Ok(d)) => {
                                let mode = mode.filter(|m| umask.is_some_and(|u| m & u == 0));
                                let mode = mode.filter(|_| match &plain {
                                    Some((p, is)) if *p == f.parent => *is,
                                    _ => {
                                        let is = crate::sys::gives_modes_whole(&d);
                                        plain = Some((f.parent.clone(), is));
                                        is
                                    }
                                });
                                TempFile::create_as(d, name.clone(), mode)
                            }
                            (None, Ok(d)) => TempFile::create(d),
                            (_, Err(e)) => Err(e),
                        };
                        (f.index, temp)
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
