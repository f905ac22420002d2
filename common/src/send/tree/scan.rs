//! Reading a directory tree ahead of the walk, on every core: each directory's entries sorted by
//! name, each entry's status read relative to its open directory (no path looked up again per
//! entry). Helper threads read the directories the walk will come to next; the walk reads one
//! itself whenever they have not got to it yet, so it never waits on a directory nobody reads.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;

use rustix::fs::{AtFlags, Dir, Mode, OFlags, Stat};

/// One entry of a directory: its name and its status (not following a link).
pub(super) struct Found {
    pub name: CString,
    pub stat: io::Result<Stat>,
}

/// Where a directory is in the walk: its position among its siblings, and each of its
/// parents' among theirs. Sorted keys are in the walk's order, which is the order helpers read
/// directories in.
pub(super) type Key = Vec<u32>;

/// A directory's entries, sorted by name, or why it could not be read.
pub(super) type Listing = io::Result<Vec<Found>>;

/// Most listings read ahead and not yet taken: the helpers wait beyond that.
const MAX_AHEAD: usize = 1024;

/// Most helper threads.
const MAX_HELPERS: usize = 7;

#[derive(Default)]
struct State {
    /// Directories to read, the first in the walk's order first.
    queue: BTreeMap<Key, PathBuf>,
    /// Being read by a helper.
    reading: HashSet<Key>,
    /// Read, waiting to be taken.
    done: HashMap<Key, Listing>,
    stop: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// A directory was queued, a listing taken, or the walk is over.
    work: Condvar,
    /// A listing is read.
    ready: Condvar,
}

impl State {
    /// The first directory queued, unless too many listings wait to be taken already.
    fn next_job(&mut self) -> Option<(Key, PathBuf)> {
        match self.done.len() < MAX_AHEAD {
            true => self.queue.pop_first(),
            false => None,
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reads directories for one walk, with a helper for each core but the walk's own once there
/// is something to read ahead; the helpers end when it is dropped.
#[derive(Default)]
pub(super) struct Scanner {
    shared: Arc<Shared>,
    helpers: OnceLock<Vec<JoinHandle<()>>>,
}

impl Scanner {
    /// Asks for the directory at `path` (a link there is not followed) to be read ahead.
    pub fn queue(&self, key: Key, path: PathBuf) {
        self.helpers.get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (1..cores.min(MAX_HELPERS + 1))
                .filter_map(|k| {
                    let shared = self.shared.clone();
                    std::thread::Builder::new()
                        .name(format!("scan-{k}"))
                        .spawn(move || help(&shared))
                        .ok()
                })
                .collect()
        });
        self.shared.lock().queue.insert(key, path);
        self.shared.work.notify_one();
    }

    /// The listing of the directory at `path`, `key` if it was queued: taken from the helpers,
    /// or read here. `follow`: a link at `path` is followed (a directory named by the user).
    pub fn take(&self, key: &Key, path: &Path, follow: bool) -> Listing {
        let mut state = self.shared.lock();
        loop {
            if let Some(listing) = state.done.remove(key) {
                drop(state);
                self.shared.work.notify_one();
                return listing;
            }
            if !state.reading.contains(key) {
                state.queue.remove(key);
                drop(state);
                return read(path, follow);
            }
            // A helper is reading it: read the next one meanwhile rather than wait.
            state = match state.next_job() {
                Some(job) => read_for(&self.shared, state, job),
                None => (self.shared.ready.wait(state)).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }
}

impl Drop for Scanner {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.work.notify_all();
        for helper in self.helpers.take().into_iter().flatten() {
            let _ = helper.join();
        }
    }
}

/// A helper's loop: read the first directory queued, while not too far ahead of the walk.
fn help(shared: &Shared) {
    let mut state = shared.lock();
    loop {
        if state.stop {
            return;
        }
        state = match state.next_job() {
            Some(job) => read_for(shared, state, job),
            None => shared.work.wait(state).unwrap_or_else(|p| p.into_inner()),
        };
    }
}

/// Reads a queued directory, the lock let go meanwhile, and leaves its listing to be taken.
fn read_for<'a>(
    shared: &'a Shared,
    mut state: MutexGuard<'a, State>,
    (key, path): (Key, PathBuf),
) -> MutexGuard<'a, State> {
    state.reading.insert(key.clone());
    drop(state);
    let listing = read(&path, false);
    let mut state = shared.lock();
    state.reading.remove(&key);
    state.done.insert(key, listing);
    shared.ready.notify_all();
    state
}

/// Reads the directory at `path`: its entries sorted by name, each with its status.
fn read(path: &Path, follow: bool) -> Listing {
    let mut flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    if !follow {
        flags |= OFlags::NOFOLLOW;
    }
    let fd = rustix::fs::open(path, flags, Mode::empty())?;
    let mut dir = Dir::new(fd)?;
    let mut names = Vec::new();
    for entry in &mut dir {
        let name = entry?.file_name().to_owned();
        if !matches!(name.as_bytes(), b"." | b"..") {
            names.push(name);
        }
    }
    names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let fd = dir.fd()?;
    Ok(names
        .into_iter()
        .map(|name| {
            let stat = rustix::fs::statat(fd, &name, AtFlags::SYMLINK_NOFOLLOW).map_err(Into::into);
            Found { name, stat }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_are_sorted_by_bytes_and_come_whole_whether_read_ahead_or_not() {
        let tmp = tempfile::tempdir().unwrap();
        for d in ["b", "a", "C"] {
            std::fs::create_dir(tmp.path().join(d)).unwrap();
            for f in ["z", "y", "\u{e9}", "Y"] {
                std::fs::write(tmp.path().join(d).join(f), d).unwrap();
            }
        }
        let scanner = Scanner::default();
        let top = scanner.take(&vec![0], tmp.path(), true).unwrap();
        let names: Vec<_> = top.iter().map(|f| f.name.to_str().unwrap()).collect();
        assert_eq!(names, ["C", "a", "b"]);
        for (k, f) in top.iter().enumerate() {
            scanner.queue(vec![0, k as u32], tmp.path().join(f.name.to_str().unwrap()));
        }
        for (k, f) in top.iter().enumerate().rev() {
            let path = tmp.path().join(f.name.to_str().unwrap());
            let below = scanner.take(&vec![0, k as u32], &path, false).unwrap();
            let names: Vec<_> = below.iter().map(|f| f.name.to_str().unwrap()).collect();
            assert_eq!(names, ["Y", "y", "z", "\u{e9}"]);
            assert!(below.iter().all(|f| f.stat.as_ref().unwrap().st_size == 1));
        }
        assert!(scanner.shared.lock().done.is_empty());
    }

    #[test]
    fn a_link_is_followed_only_where_the_user_named_it() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("real")).unwrap();
        std::os::unix::fs::symlink("real", tmp.path().join("link")).unwrap();
        let scanner = Scanner::default();
        let link = tmp.path().join("link");
        assert!(scanner.take(&vec![0], &link, true).is_ok());
        assert!(scanner.take(&vec![1], &link, false).is_err());
    }
}
