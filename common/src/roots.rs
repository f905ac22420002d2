//! Roots remembered: each file of a tree hashed (or landed) on this machine, with the identity
//! that proves the file unchanged since (device, inode, size, mtime and ctime). A tree sent
//! again is then checked with the remembered roots, without reading the files: zrecv keeps them
//! for what it landed or read, zsend for what it read and sent.
//!
//! Why ctime: no one can set it. Any change to a file's data or metadata moves it to the time
//! of the change (rename, chmod and link included), and a remembered identity is taken only
//! once a change made after it cannot land on the same stamp (see [`Identity::settled`]; Linux
//! 6.13's multigrain timestamps promise as much, the rule keeps older kernels and coarse file
//! systems honest too). A remembered root is used only for a file that has that identity at
//! the moment it is used. This is why the identity cannot live in an extended attribute of the
//! file: writing one moves the ctime it records. The one change that does not move a ctime at
//! once: a write through a shared mapping to a page already dirty (a database that writes
//! through mmap) is stamped when the page is written back; `--rehash` for such files.
//!
//! A tree's roots are in one file, named by the caller (zrecv: `.zrecv-KEY.roots` in the
//! receive directory, KEY from the tree's top-level name as for its partials; zsend: in its
//! cache directory, named after the tree's absolute path): a magic, records of 80 bytes, and
//! the SHA-256 of what precedes it; anything else is ignored and the files hashed. It holds the
//! files of the last manifest of that tree, at most [`MAX_ENTRIES`] records. It is a cache:
//! rewritten under a temporary name and renamed, never synced; lost, it costs one more
//! hashing.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Mutex, PoisonError};

use rustix::fs::{AtFlags, Mode, OFlags, Stat};
use rustix::time::{ClockId, Timespec};
use sha2::{Digest, Sha256};

use crate::wire::MAX_ENTRIES;

const MAGIC: &[u8; 8] = b"ZROOTS\x00\x01";
const RECORD_LEN: usize = 80;

/// What proves a file unchanged since its root was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, u32),
    ctime: (i64, u32),
}

impl Identity {
    /// The identity of what `st` describes.
    pub fn of(st: &Stat) -> Identity {
        Identity {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec as u32),
            ctime: (st.st_ctime, st.st_ctime_nsec as u32),
        }
    }

    /// Its size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The identity of the open file `fd`, if it can be remembered: any later change must
    /// stamp a later ctime. On a local file system that stamps nanoseconds (ext4 with large
    /// inodes, XFS, Btrfs, tmpfs) that holds once the coarse clock read first is past the
    /// ctime; elsewhere (whole seconds, 2-second FAT stamps, a server's clock) only two
    /// seconds after it.
    pub fn settled(fd: impl AsFd) -> Option<Identity> {
        let now = rustix::time::clock_gettime(ClockId::RealtimeCoarse);
        let st = rustix::fs::fstat(&fd).ok()?;
        let id = Identity::of(&st);
        settles(id.ctime, fine_stamps(&fd, st.st_dev), &now).then_some(id)
    }

    fn encode(&self, root: &[u8; 32], out: &mut Vec<u8>) {
        out.extend_from_slice(&self.dev.to_le_bytes());
        out.extend_from_slice(&self.ino.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.mtime.0.to_le_bytes());
        out.extend_from_slice(&self.mtime.1.to_le_bytes());
        out.extend_from_slice(&self.ctime.0.to_le_bytes());
        out.extend_from_slice(&self.ctime.1.to_le_bytes());
        out.extend_from_slice(root);
    }

    fn decode(r: &[u8]) -> (Identity, [u8; 32]) {
        let u64_at = |k: usize| u64::from_le_bytes(r[k..k + 8].try_into().expect("8 bytes"));
        let u32_at = |k: usize| u32::from_le_bytes(r[k..k + 4].try_into().expect("4 bytes"));
        let id = Identity {
            dev: u64_at(0),
            ino: u64_at(8),
            size: u64_at(16),
            mtime: (u64_at(24) as i64, u32_at(32)),
            ctime: (u64_at(36) as i64, u32_at(44)),
        };
        (id, r[48..80].try_into().expect("32 bytes"))
    }
}

/// Whether the file system of `fd`, on device `dev`, is local and stamps times in nanoseconds
/// from this machine's clock. The answer is kept for a second per thread and device: asking
/// was a system call per file landed, and a device changes file system only when unmounted.
fn fine_stamps(fd: impl AsFd, dev: u64) -> bool {
    const KEPT: std::time::Duration = std::time::Duration::from_secs(1);
    thread_local! {
        static LAST: std::cell::Cell<Option<(u64, bool, std::time::Instant)>> =
            const { std::cell::Cell::new(None) };
    }
    if let Some((d, fine, when)) = LAST.get() {
        if d == dev && when.elapsed() < KEPT {
            return fine;
        }
    }
    let fine = crate::sys::is_local_fs(fd);
    LAST.set(Some((dev, fine, std::time::Instant::now())));
    fine
}

/// Most top-level directories whose roots one manifest remembers.
pub(crate) const MAX_TREES: usize = 256;

/// A path's top-level directory, if it is below one.
fn top_dir(path: &[u8]) -> Option<&[u8]> {
    let k = path.iter().position(|b| *b == b'/')?;
    Some(&path[..k])
}

/// Whether a change after a file's `ctime` stamps a later one once the clock reads `now`, on
/// a file system that stamps nanoseconds (`fine_fs`) or not: with nanoseconds, once the clock
/// has passed it; otherwise two seconds after it. A stamp of whole seconds may come from a file
/// system that keeps no more (ext4 with small inodes); any other, on those file systems, is of
/// nanoseconds. (Files made in one clock tick share its stamp: a test of whole microseconds
/// here held back every file of such a tree one time in a thousand.)
fn settles(ctime: (i64, u32), fine_fs: bool, now: &Timespec) -> bool {
    match fine_fs && ctime.1 != 0 {
        true => before(ctime, now),
        false => now.tv_sec >= ctime.0.saturating_add(2),
    }
}

/// Whether `t` is strictly before `now`.
fn before(t: (i64, u32), now: &Timespec) -> bool {
    t < (now.tv_sec, now.tv_nsec as u32)
}

/// The remembered roots of one session's manifest, and those it learns (on several threads).
pub(crate) struct Roots {
    /// Each file entry's tree: the index of its top-level name in `tops`.
    top_of: Vec<Option<usize>>,
    /// Each tree's top-level name, and the name of its file of roots.
    tops: Vec<(Vec<u8>, String)>,
    state: Mutex<State>,
}

/// An identity and the root remembered with it.
type Record = (Identity, [u8; 32]);

#[derive(Default)]
struct State {
    /// Remembered roots of entries whose copy here has the identity remembered with them, by
    /// entry (empty until one is found).
    known: Vec<Option<Record>>,
    /// Entries whose copy changed in this session: nothing read later is kept for them.
    forgotten: std::collections::HashSet<u32>,
    /// Roots learnt in this session (landed or hashed), by entry.
    learnt: HashMap<u32, Record>,
    /// Per tree, whether what is remembered of it changed: its file is written again.
    changed: Vec<bool>,
}

impl Roots {
    /// Roots for a manifest of these `paths` (`None`: not a file), none remembered yet; the
    /// roots of the tree under the top-level directory `top` are kept in the file
    /// `file_of(top)`. Files at the top level are not remembered (a file each would be one
    /// more file beside them), nor anything in a manifest of more than [`MAX_TREES`]
    /// top-level directories.
    pub fn new<'p>(
        paths: impl Iterator<Item = Option<&'p [u8]>>,
        file_of: impl Fn(&[u8]) -> String,
    ) -> Roots {
        let mut index: HashMap<&[u8], usize> = HashMap::new();
        let mut top_of: Vec<Option<usize>> = paths
            .map(|p| {
                let top = top_dir(p?)?;
                let next = index.len();
                Some(*index.entry(top).or_insert(next))
            })
            .collect();
        let mut tops = vec![(Vec::new(), String::new()); index.len()];
        for (top, k) in &index {
            tops[*k] = (top.to_vec(), String::new());
        }
        if tops.len() > MAX_TREES {
            log::debug!("{} trees in one manifest: no roots remembered", tops.len());
            tops.clear();
            top_of.iter_mut().for_each(|t| *t = None);
        }
        for (top, name) in &mut tops {
            *name = file_of(top);
        }
        let state = State {
            changed: vec![false; tops.len()],
            ..State::default()
        };
        Roots {
            top_of,
            tops,
            state: Mutex::new(state),
        }
    }

    /// The names of the files of roots of the trees in the manifest.
    pub fn files(&self) -> impl Iterator<Item = &str> {
        self.tops.iter().map(|(_, name)| name.as_str())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn top(&self, i: u32) -> Option<usize> {
        self.top_of.get(i as usize).copied().flatten()
    }

    /// Reads the roots remembered in `dir` for the copies here of `wanted` (entry and the
    /// identity of its copy here), keeping those remembered with that same identity.
    pub fn load(&self, dir: impl AsFd, wanted: &[(u32, Identity)]) {
        // Each tree's wanted entries sorted by device and inode, for its records to be looked
        // up in.
        let mut by_top: Vec<Vec<(u64, u64, u32, Identity)>> = vec![Vec::new(); self.tops.len()];
        let mut state = self.state();
        for &(i, id) in wanted {
            if let (Some(t), false) = (self.top(i), state.forgotten.contains(&i)) {
                by_top[t].push((id.dev, id.ino, i, id));
            }
        }
        for (t, wanted) in by_top.iter_mut().enumerate() {
            if wanted.is_empty() {
                continue;
            }
            wanted.sort_unstable_by_key(|w| (w.0, w.1));
            let name = &self.tops[t].1;
            let records = match read(&dir, name) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    log::debug!("reading {name}: {e}");
                    state.changed[t] = true;
                    continue;
                }
            };
            // Records and wanted entries, both in the order of device and inode, are matched in
            // one pass over each. (Records are saved in the order of their entries, which for
            // a tree made in one go is mostly that of their inodes: the sort has little to do.)
            let mut records: Vec<Record> = (records[MAGIC.len()..].chunks_exact(RECORD_LEN))
                .map(Identity::decode)
                .collect();
            records.sort_unstable_by_key(|(id, _)| (id.dev, id.ino));
            let mut kept = 0;
            let mut next = wanted.iter().peekable();
            for (id, root) in &records {
                while next.next_if(|w| (w.0, w.1) < (id.dev, id.ino)).is_some() {}
                let Some(&&(_, _, i, here)) = next.peek() else {
                    break;
                };
                if here != *id {
                    continue;
                }
                if state.known.is_empty() {
                    state.known = vec![None; self.top_of.len()];
                }
                if let Some(slot @ None) = state.known.get_mut(i as usize) {
                    *slot = Some((*id, *root));
                    kept += 1;
                }
            }
            // Records of files gone or changed go when the file is written again.
            state.changed[t] |= kept < records.len();
        }
    }

    /// Whether anything was learnt or forgotten (or found stale) since the files were read.
    pub fn changed(&self) -> bool {
        self.state().changed.iter().any(|c| *c)
    }

    /// The identity and root remembered for entry `i`: its identity when looked up (as
    /// [`load`](Self::load) was given it).
    pub fn remembered(&self, i: u32) -> Option<(Identity, [u8; 32])> {
        self.state().known.get(i as usize).copied().flatten()
    }

    /// Remembers `root` for entry `i`, landed in `file` with `mtime`, once we changed it for
    /// the last time: if its identity can be remembered and still has that mtime (nobody wrote
    /// to it since).
    pub fn learn_landed(&self, i: u32, file: impl AsFd, mtime: (i64, u32), root: Option<[u8; 32]>) {
        let id = Identity::settled(file).filter(|id| id.mtime == mtime);
        if let (Some(id), Some(root)) = (id, root) {
            self.learn(i, id, root);
        }
    }

    /// Remembers `root` for entry `i`, whose copy has identity `id`.
    pub fn learn(&self, i: u32, id: Identity, root: [u8; 32]) {
        let Some(t) = self.top(i) else { return };
        let mut state = self.state();
        if state.known.get(i as usize) == Some(&Some((id, root))) {
            return;
        }
        state.learnt.insert(i, (id, root));
        state.changed[t] = true;
    }

    /// Forgets what is remembered of entry `i`: its copy changed.
    pub fn forget(&self, i: u32) {
        let mut state = self.state();
        state.forgotten.insert(i);
        let known = state
            .known
            .get_mut(i as usize)
            .and_then(Option::take)
            .is_some();
        let learnt = state.learnt.remove(&i).is_some();
        if let (Some(t), true) = (self.top(i), known || learnt) {
            state.changed[t] = true;
        }
    }

    /// Writes the roots of each tree whose roots changed to `dir`: those remembered that still
    /// hold and those learnt.
    pub fn save(&self, dir: impl AsFd) {
        let state = self.state();
        let mut by_top = vec![Vec::new(); self.tops.len()];
        let known = (state.known.iter().enumerate())
            .filter_map(|(i, r)| Some((i as u32, r.as_ref()?)))
            .filter(|(i, _)| !state.learnt.contains_key(i));
        for (i, record) in known.chain(state.learnt.iter().map(|(i, r)| (*i, r))) {
            if let Some(t) = self.top(i).filter(|t| state.changed[*t]) {
                by_top[t].push((i, record));
            }
        }
        for (t, (_, name)) in self.tops.iter().enumerate() {
            if !state.changed[t] {
                continue;
            }
            let mut entries = std::mem::take(&mut by_top[t]);
            entries.sort_by_key(|(i, _)| *i);
            let mut out = Vec::with_capacity(8 + entries.len() * RECORD_LEN + 32);
            out.extend_from_slice(MAGIC);
            for (_, (id, root)) in entries {
                id.encode(root, &mut out);
            }
            let digest = Sha256::digest(&out);
            out.extend_from_slice(&digest);
            if let Err(e) = write(&dir, name, &out) {
                log::warn!("remembering the roots of a tree in {name}: {e}");
            }
        }
    }
}

/// Opens `name`, one component, in `dir`, never following a link.
fn open(dir: impl AsFd, name: &str, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o600))
}

/// The magic and records in `dir/name`, checked whole; `None` if there is no such file.
fn read(dir: impl AsFd, name: &str) -> io::Result<Option<Vec<u8>>> {
    let fd = match open(&dir, name, OFlags::RDONLY) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut file = std::fs::File::from(fd);
    let most = (MAGIC.len() + MAX_ENTRIES as usize * RECORD_LEN + 32) as u64;
    let size = file.metadata().map_or(0, |m| m.len().min(most));
    let mut bytes = Vec::with_capacity(size as usize + 1);
    (&mut file).take(most + 1).read_to_end(&mut bytes)?;
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_owned());
    if bytes.len() as u64 > most {
        return Err(bad("too large"));
    }
    let records = bytes
        .len()
        .checked_sub(MAGIC.len() + 32)
        .ok_or(bad("short"))?;
    if !bytes.starts_with(MAGIC) || records % RECORD_LEN != 0 {
        return Err(bad("not a file of roots"));
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body)[..] != digest[..] {
        return Err(bad("its digest does not match"));
    }
    bytes.truncate(bytes.len() - 32);
    Ok(Some(bytes))
}

/// Writes `bytes` to `dir/name` under a temporary name, renamed over it. (In a receive
/// directory, one left by a crash is a stale `.zrecv-….part` to the sweep.)
fn write(dir: impl AsFd, name: &str, bytes: &[u8]) -> io::Result<()> {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temp = format!("{name}.{}-{n}.part", std::process::id());
    let _ = rustix::fs::unlinkat(&dir, temp.as_str(), AtFlags::empty());
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL;
    let fd: OwnedFd = open(&dir, &temp, flags)?;
    let written = std::fs::File::from(fd).write_all(bytes).and_then(|()| {
        rustix::fs::renameat(&dir, temp.as_str(), &dir, name).map_err(io::Error::from)
    });
    if written.is_err() {
        let _ = rustix::fs::unlinkat(&dir, temp.as_str(), AtFlags::empty());
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ino: u64, ctime: i64) -> Identity {
        Identity {
            dev: 7,
            ino,
            size: 4096,
            mtime: (1_700_000_000, 5),
            ctime: (ctime, 9),
        }
    }

    fn file_name(top: &[u8]) -> String {
        format!("{}.roots", String::from_utf8_lossy(top))
    }

    fn root_of(roots: &Roots, i: u32) -> Option<[u8; 32]> {
        roots.remembered(i).map(|(_, root)| root)
    }

    fn roots(paths: &[&str]) -> Roots {
        Roots::new(paths.iter().map(|p| Some(p.as_bytes())), file_name)
    }

    #[test]
    fn a_root_is_known_again_only_under_the_identity_it_was_learnt_with() {
        let dir = tempfile::tempdir().unwrap();
        let d = std::fs::File::open(dir.path()).unwrap();
        let first = roots(&["t/a", "t/b", "u/c"]);
        first.learn(0, id(1, 10), [1; 32]);
        first.learn(1, id(2, 10), [2; 32]);
        first.learn(2, id(3, 10), [3; 32]);
        first.save(&d);
        let again = roots(&["t/a", "t/b", "u/c"]);
        // b changed since (its ctime moved); c is the same.
        again.load(&d, &[(0, id(1, 10)), (1, id(2, 11)), (2, id(3, 10))]);
        assert_eq!(root_of(&again, 0), Some([1; 32]));
        assert_eq!(root_of(&again, 1), None);
        assert_eq!(root_of(&again, 2), Some([3; 32]));
        // Saved again: b's stale record goes, the others stay.
        again.save(&d);
        let third = roots(&["t/a", "t/b", "u/c"]);
        third.load(&d, &[(0, id(1, 10)), (1, id(2, 10)), (2, id(3, 10))]);
        assert_eq!(root_of(&third, 1), None);
        assert_eq!(root_of(&third, 0), Some([1; 32]));
        // A file at the top level, or one of more than MAX_TREES trees, is not remembered.
        let top = roots(&["f"]);
        top.learn(0, id(4, 10), [4; 32]);
        assert!(!top.changed());
        let many: Vec<String> = (0..=MAX_TREES).map(|k| format!("d{k}/f")).collect();
        let many = roots(&many.iter().map(String::as_str).collect::<Vec<_>>());
        many.learn(0, id(5, 10), [5; 32]);
        assert!(!many.changed());
    }

    #[test]
    fn a_damaged_file_of_roots_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let d = std::fs::File::open(dir.path()).unwrap();
        let first = roots(&["t/a"]);
        first.learn(0, id(1, 10), [1; 32]);
        first.save(&d);
        let path = dir.path().join(file_name(b"t"));
        let mut bytes = std::fs::read(&path).unwrap();
        for k in [8, 60, bytes.len() - 1] {
            bytes[k] ^= 1;
            std::fs::write(&path, &bytes).unwrap();
            let again = roots(&["t/a"]);
            again.load(&d, &[(0, id(1, 10))]);
            assert_eq!(root_of(&again, 0), None, "flipped byte {k}");
            bytes[k] ^= 1;
        }
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let again = roots(&["t/a"]);
        again.load(&d, &[(0, id(1, 10))]);
        assert_eq!(root_of(&again, 0), None);
    }

    #[test]
    fn an_identity_is_remembered_once_the_clock_has_passed_its_ctime() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join("f")).unwrap();
        // Just made: its ctime may be this very tick. A few ticks later, it is before the
        // clock.
        let settled = (0..200).find_map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            Identity::settled(&f)
        });
        let st = rustix::fs::fstat(&f).unwrap();
        assert_eq!(settled, Some(Identity::of(&st)));
        let now = rustix::time::clock_gettime(ClockId::RealtimeCoarse);
        let future = Timespec {
            tv_sec: now.tv_sec - 1,
            tv_nsec: 0,
        };
        assert!(!before(Identity::of(&st).ctime, &future));
    }

    #[test]
    fn a_fine_stamp_settles_in_a_tick_whatever_its_digits_and_a_whole_second_in_two() {
        let at = |tv_sec, tv_nsec| Timespec { tv_sec, tv_nsec };
        // A stamp that happens to fall on a whole microsecond is still one of nanoseconds.
        assert!(settles((100, 250_000), true, &at(100, 250_001)));
        assert!(!settles((100, 250_000), true, &at(100, 250_000)));
        // Whole seconds, or a file system not known to stamp nanoseconds: two seconds later.
        for (ctime, fine) in [((100, 0), true), ((100, 250_000), false)] {
            assert!(!settles(ctime, fine, &at(101, 999_999_999)), "{ctime:?}");
            assert!(settles(ctime, fine, &at(102, 0)), "{ctime:?}");
        }
    }
}
