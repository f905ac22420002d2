//! What is already here for each entry of a manifest, looked at ahead of the answers on a
//! thread of their own: for a tree sent again, one `fstatat` per entry is most of the answer
//! phase, and it does not depend on the answers before it. The looks are taken after the
//! answers' clock started, so what they saw is as old as the answers say; an entry whose
//! directory is not there yet (made by an answer before it) is not looked at here.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::Scope;

use rustix::fs::{AtFlags, Stat};
use rustix::io::Errno;

use super::DirCache;
use crate::wire::Entry;

/// What was found at an entry's path, or `None` if its directory could not be opened.
pub(super) type Seen = Option<Result<Stat, Errno>>;

/// Entries go across in chunks of this many: one wake-up per chunk, not per entry.
const CHUNK: usize = 256;

/// Chunks looked at and not yet taken, at most.
const AHEAD: usize = 64;

/// Looks ahead of the answers, in the manifest's order.
pub(super) struct Prestat {
    ready: Receiver<Vec<Seen>>,
    /// Received and not yet taken; the first is entry `first`'s.
    next: VecDeque<Seen>,
    first: usize,
}

impl Prestat {
    /// Starts looking at each of `entries` in `root` (each in its directory, opened beneath
    /// `root`), on a thread of `scope`. It ends when the [`Prestat`] is dropped.
    pub fn start<'scope, 'env>(
        scope: &'scope Scope<'scope, 'env>,
        root: Arc<OwnedFd>,
        entries: &'env [Entry],
    ) -> Prestat {
        let (seen, ready) = mpsc::sync_channel(AHEAD);
        scope.spawn(move || {
            let mut dirs = DirCache::new(root);
            let mut missing: Option<&[u8]> = None;
            for chunk in entries.chunks(CHUNK) {
                let looks = chunk
                    .iter()
                    .map(|e| {
                        let parent = e.parent();
                        if parent.is_some() && parent == missing {
                            return None;
                        }
                        match dirs.get(parent) {
                            Ok(dir) => Some(rustix::fs::statat(
                                &dir,
                                e.base(),
                                AtFlags::SYMLINK_NOFOLLOW,
                            )),
                            Err(_) => {
                                missing = parent;
                                None
                            }
                        }
                    })
                    .collect();
                if seen.send(looks).is_err() {
                    break;
                }
            }
        });
        Prestat {
            ready,
            next: VecDeque::new(),
            first: 0,
        }
    }

    /// What was found for entry `i`; entries are taken in increasing order. `None`: look
    /// again (its directory was not there when looked at, or the thread is gone).
    pub fn take(&mut self, i: usize) -> Seen {
        if i < self.first {
            return None;
        }
        while self.first + self.next.len() <= i {
            let chunk = self.ready.recv().ok()?;
            self.next.extend(chunk);
        }
        while self.first < i {
            self.next.pop_front();
            self.first += 1;
        }
        self.first += 1;
        self.next.pop_front().flatten()
    }
}
