//! The roots of the files a pass checks, hashed ahead on every core: a tree sent again is
//! thousands of checks, each a file read and hashed for a frame of 41 bytes, and one thread
//! hashing them in turn leaves the other cores idle while the receiver waits. They start once
//! the receiver's answers say which files it holds: a file sent is hashed as it goes out,
//! never before.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::thread::Scope;

use super::remember::Remembered;
use super::walk::Tree;
use crate::error::SendError;
use crate::hash::Prefix;
use crate::roots::Identity;
use crate::send::source::Source;

/// What hashing one file ahead came to.
pub(super) enum Hashed {
    /// Its root, and its size.
    Root([u8; 32], u64),
    /// It could not be opened as listed: that file fails, the tree goes on.
    Unlisted(String),
    /// It could not be read: the transfer ends, as it does when hashed in turn.
    Unread(SendError),
}

/// What the hashing threads and the pass share.
pub(super) struct Shared {
    /// The entries to hash, in the order the pass wants them.
    order: Vec<usize>,
    /// The next of `order` a thread takes.
    next: AtomicUsize,
    /// Set when the pass wants no more: the threads stop at their next file.
    stop: AtomicBool,
    done: Mutex<Done>,
    ready: Condvar,
}

struct Done {
    roots: Vec<Option<Hashed>>,
    /// Whether the pass is waiting for one (only then is it woken).
    waiting: bool,
}

impl Shared {
    /// Room for hashing `order`'s entries.
    pub fn new(order: Vec<usize>) -> Shared {
        let n = order.len();
        Shared {
            order,
            next: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            done: Mutex::new(Done {
                roots: (0..n).map(|_| None).collect(),
                waiting: false,
            }),
            ready: Condvar::new(),
        }
    }

    fn done(&self) -> std::sync::MutexGuard<'_, Done> {
        self.done.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Entries' roots being hashed ahead, in the order the pass will want them.
pub(super) struct Prehash<'env> {
    shared: &'env Shared,
    /// Where each entry is in `shared.order`, if it is.
    slot: Vec<Option<usize>>,
}

impl<'env> Prehash<'env> {
    /// Starts `threads` threads in `scope` hashing the files of `shared.order` from `tree`.
    pub fn start<'scope>(
        scope: &'scope Scope<'scope, 'env>,
        shared: &'env Shared,
        tree: &'env Tree,
        remembered: Option<&'env Remembered>,
        threads: usize,
    ) -> Prehash<'env> {
        let mut slot = vec![None; tree.manifest.entries.len()];
        for (k, &i) in shared.order.iter().enumerate() {
            slot[i] = Some(k);
        }
        for _ in 0..threads.min(shared.order.len()) {
            scope.spawn(move || hash_in_turn(shared, tree, remembered));
        }
        Prehash { shared, slot }
    }

    /// Entry `i`'s result, once it is there; `None` if `i` is not hashed ahead.
    pub fn take(&self, i: usize) -> Option<Hashed> {
        let k = self.slot.get(i).copied().flatten()?;
        let mut done = self.shared.done();
        loop {
            if let Some(hashed) = done.roots[k].take() {
                done.waiting = false;
                return Some(hashed);
            }
            done.waiting = true;
            done = self
                .shared
                .ready
                .wait(done)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Drop for Prehash<'_> {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// One hashing thread: takes the next entry until none is left or the pass stops.
fn hash_in_turn(shared: &Shared, tree: &Tree, remembered: Option<&Remembered>) {
    loop {
        let k = shared.next.fetch_add(1, Ordering::Relaxed);
        if k >= shared.order.len() || shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let i = shared.order[k];
        let entry = &tree.manifest.entries[i];
        // Whatever happens, the slot is filled: the pass waits for it.
        let hashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            match remembered.and_then(|r| r.known(i)) {
                Some(root) => Hashed::Root(root, entry.size()),
                None => hash_one(&tree.paths[i], entry, |file, before, root| {
                    if let Some(r) = remembered {
                        r.learn(tree, i, file, before, root);
                    }
                }),
            }
        }))
        .unwrap_or_else(|_| Hashed::Unlisted("hashing it failed unexpectedly".into()));
        let mut done = shared.done();
        done.roots[k] = Some(hashed);
        if done.waiting {
            shared.ready.notify_one();
        }
    }
}

/// Hashes the file of `entry` at `path`; `learn` is told its root, with its identity before it
/// was read.
fn hash_one(
    path: &std::path::Path,
    entry: &crate::wire::Entry,
    learn: impl FnOnce(&std::fs::File, Option<Identity>, [u8; 32]),
) -> Hashed {
    let source = match Source::listed(path, entry) {
        Ok(s) => s,
        Err(e) => return Hashed::Unlisted(e.to_string()),
    };
    let sparse = source.sparse_data.is_some();
    let before = Identity::settled(&source.file);
    match Prefix::of_file(&source.file, source.size, sparse) {
        Ok(p) => {
            let root = p.digest();
            learn(&source.file, before, root);
            Hashed::Root(root, source.size)
        }
        Err(error) => Hashed::Unread(SendError::Source {
            path: source.path,
            error,
        }),
    }
}
