//! The verification digest: a file's BEP 52 tree root (see `tree`), hashed a piece at a time on
//! up to [`threads`] threads while the bytes flow, reading the file back through the page cache
//! behind (receiver) or beside (sender) the zero-copy loop; and the plain SHA-256 that
//! `sha256sum` prints, for who asks for it (see `plain`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

mod plain;
mod tree;

pub use plain::sha256_of;
pub use tree::{empty_root, root_of, zero_piece, Frontier, Hash, PieceHasher, TreeHasher, PIECE};

use crate::stages::thread_cpu;
use crate::sys;

/// Files up to this size are hashed on the copying thread once they are copied, on both ends: a
/// thread per file would cost more than the hashing. The receiver does not preallocate them either.
pub(crate) const SMALL_FILE: u64 = 1 << 20;

/// Bytes read per call while hashing a piece. Small enough to stay in the L2 cache between the
/// copy out of the page cache and the hashing of it.
pub const HASH_CHUNK: usize = 256 * 1024;

/// How many pieces the hashing threads may run ahead of the first one not yet folded in: the
/// bound on what waits in memory to be folded in order.
const WINDOW: u64 = 256;

static THREADS: AtomicUsize = AtomicUsize::new(0);

/// Sets how many threads hash one file (`--hash-threads`); 0 means the machine's cores.
pub fn set_threads(n: usize) {
    THREADS.store(n, Ordering::Relaxed);
}

/// How many threads hash one file: as set, else the cores this process may run on (asked of
/// the kernel once: the standard library reads the cgroup's quota files on every call, which
/// cost four system calls per file of a tree).
pub fn threads() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    match THREADS.load(Ordering::Relaxed) {
        0 => *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        n => n,
    }
}

/// The pieces' roots in file order, for a partial to resume from without reading back what it
/// holds: runs of equal roots (holes) take one entry.
#[derive(Debug, Default)]
pub struct PieceLog(Mutex<Vec<(Hash, u64)>>);

impl PieceLog {
    /// A log starting with `pieces` (what a kept partial's record held).
    pub fn with(pieces: Vec<(Hash, u64)>) -> PieceLog {
        PieceLog(Mutex::new(pieces))
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(Hash, u64)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, root: Hash, n: u64) {
        let mut log = self.lock();
        match log.last_mut() {
            Some((last, count)) if *last == root => *count += n,
            _ => log.push((root, n)),
        }
    }

    /// The first `n` pieces' roots (all there are, when fewer).
    pub fn first(&self, n: u64) -> Vec<(Hash, u64)> {
        let mut out = Vec::new();
        let mut left = n;
        for &(root, count) in self.lock().iter() {
            if left == 0 {
                break;
            }
            out.push((root, count.min(left)));
            left -= count.min(left);
        }
        out
    }

    /// How many pieces are logged.
    pub fn pieces(&self) -> u64 {
        self.lock().iter().map(|(_, n)| n).sum()
    }

    /// Empties the log (the file was emptied).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Keeps only the first `n` pieces (the file was cut back to them).
    pub fn truncate(&self, n: u64) {
        let first = self.first(n);
        *self.lock() = first;
    }

    /// Logs `runs` in place of what was logged (the file's pieces, read back as they are now).
    pub fn replace(&self, runs: Vec<(Hash, u64)>) {
        *self.lock() = runs;
    }
}

/// How far a file may be read: the copy loop raises it, the hashing threads wait on it.
#[derive(Debug, Default)]
pub struct Watermark {
    state: Mutex<State>,
    moved: Condvar,
    hashed: AtomicU64,
    /// Set with `aborted`, read without the lock by a hashing thread between chunks, so that
    /// a long run stops within one chunk of an abort.
    stop: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    ready: u64,
    closed: bool,
    aborted: bool,
}

impl Watermark {
    /// A watermark at 0 that a copy loop will raise.
    pub fn new() -> Watermark {
        Watermark::default()
    }

    /// A watermark with all `len` bytes readable at once (the sender's file is complete).
    pub fn complete(len: u64) -> Watermark {
        let mark = Watermark::new();
        // Nobody can be waiting on it yet: no wake-up (a system call each) is needed.
        let mut state = mark.lock();
        state.ready = len;
        state.closed = true;
        drop(state);
        mark
    }

    /// Whether the hashing should stop: the transfer failed or the peer went away.
    pub fn aborted(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// How many bytes from the start are hashed so far.
    pub fn hashed(&self) -> u64 {
        self.hashed.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes bytes up to `ready` readable.
    pub fn raise(&self, ready: u64) {
        self.lock().ready = ready;
        self.moved.notify_all();
    }

    /// No more bytes will come.
    pub fn close(&self) {
        self.lock().closed = true;
        self.moved.notify_all();
    }

    /// Stop the hashing threads as soon as possible: the transfer failed.
    pub fn abort(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let mut s = self.lock();
        s.aborted = true;
        s.closed = true;
        drop(s);
        self.moved.notify_all();
    }

    /// Waits until bytes up to `end` are readable, or the watermark is closed.
    fn wait_for(&self, end: u64) -> Wait {
        let mut s = self.lock();
        loop {
            if s.aborted {
                return Wait::Aborted;
            }
            if s.ready >= end {
                return Wait::Ready(s.ready);
            }
            if s.closed {
                return Wait::Closed(s.ready);
            }
            s = self.moved.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// What a hashing thread may do next.
enum Wait {
    /// Bytes up to this offset are readable.
    Ready(u64),
    /// No more bytes will come; this many are readable.
    Closed(u64),
    /// The transfer failed.
    Aborted,
}

/// Length to pass to [`hash_from`] when the end is only known when the watermark closes (a
/// stream).
pub const UNTIL_CLOSED: u64 = u64::MAX;

/// The root of everything `reader` yields until end of file (a pipe fed by tee(2)).
pub fn hash_reader(mut reader: impl io::Read) -> io::Result<Hash> {
    let mut tree = TreeHasher::new();
    let mut buf = vec![0u8; HASH_CHUNK];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(tree.finalize()),
            Ok(n) => tree.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Where hashing a file starts: from a prefix already hashed, or from the first `n` bytes
/// already there but not hashed yet (`n` a multiple of [`PIECE`]), whose own root is wanted
/// too (a partial to check, or the prefix a sender proves it holds).
pub enum Start {
    /// Hashed: go on from here.
    Hashed(Prefix),
    /// This many bytes are in the file, not hashed.
    Unhashed(u64),
    /// This many bytes are in the file, of which the prefix's are hashed (a partial whose
    /// record kept the roots of fewer pieces than it holds): hashing goes on from the prefix.
    Partly(Prefix, u64),
}

impl Start {
    /// Where the bytes still to come begin.
    pub fn offset(&self) -> u64 {
        match self {
            Start::Hashed(p) => p.len(),
            Start::Unhashed(n) | Start::Partly(_, n) => *n,
        }
    }
}

/// What [`hash_from`] finds: the root of the first `len` bytes (`None` if stopped early), and
/// for an unhashed start, the root of its prefix taken as a file of its own.
pub type Digests = (Option<Hash>, Option<Hash>);

/// [`Digests`] and the CPU time the hashing threads spent on them.
pub type HashedFrom = (io::Result<Digests>, Duration);

/// Hashes `file` from `start` to `len` as the watermark releases it (see [`hash_rest`]); for an
/// unhashed start, the prefix is hashed in the same pass (its pieces first), and its root
/// returned as well, so that a receiver takes in the rest while it checks what it held, and a
/// sender sends the rest while it proves what the receiver holds. Also returns the CPU time.
pub fn hash_from(
    start: Start,
    file: &File,
    len: u64,
    mark: &Watermark,
    sparse: bool,
    log: Option<&PieceLog>,
) -> HashedFrom {
    let (mut prefix, at) = match start {
        Start::Hashed(p) => (p, None),
        Start::Unhashed(n) => (Prefix::empty(), Some(n)),
        Start::Partly(p, n) => (p, Some(n)),
    };
    let job = Job {
        file,
        len,
        mark,
        sparse,
        at,
        log,
    };
    let (hashed, cpu) = job.run(&mut prefix);
    let digests = hashed.map(|snapshot| match snapshot {
        Some(snapshot) => (Some(prefix.digest()), snapshot),
        None => (None, None),
    });
    (digests, cpu)
}

/// The root of a whole file on disk (holes, with `sparse`, cost nothing), and the CPU time the
/// hashing threads spent on it.
pub fn root_of_file(file: &File, sparse: bool) -> io::Result<(Hash, Duration)> {
    let len = file.metadata()?.len();
    let mark = Watermark::complete(len);
    let (hashed, cpu) = hash_from(
        Start::Hashed(Prefix::empty()),
        file,
        len,
        &mark,
        sparse,
        None,
    );
    match hashed? {
        (Some(root), _) => Ok((root, cpu)),
        (None, _) => unreachable!("nobody aborts this watermark"),
    }
}

/// The root and piece layer (runs of equal piece roots) of the first `len` bytes of a file or
/// block device, for a .torrent of a file whose transfer did not hash it here.
pub fn layer_of_file(file: &File, len: u64, sparse: bool) -> io::Result<(Hash, Vec<(Hash, u64)>)> {
    let mark = Watermark::complete(len);
    let log = PieceLog::default();
    let start = Start::Hashed(Prefix::empty());
    match hash_from(start, file, len, &mark, sparse, Some(&log)).0? {
        (Some(root), _) => Ok((root, log.first(u64::MAX))),
        (None, _) => unreachable!("nobody aborts this watermark"),
    }
}

/// The hashed state of a file's first bytes: what a resumed transfer goes on from, or, once
/// hashing reached the end, the file's root.
#[derive(Clone, Debug, Default)]
pub struct Prefix {
    frontier: Frontier,
    len: u64,
    /// The root, once the whole file is hashed and does not end on a piece boundary (or is no
    /// longer than one piece).
    root: Option<Hash>,
}

impl Prefix {
    /// Nothing hashed yet.
    pub fn empty() -> Prefix {
        Prefix::default()
    }

    /// The first pieces of a file, from their roots (runs of equal roots as one entry), as a
    /// partial's record keeps them: no byte is read.
    pub fn of_pieces(pieces: &[(Hash, u64)]) -> Prefix {
        let mut frontier = Frontier::new();
        for &(root, n) in pieces {
            if root == tree::zero_piece() {
                frontier.push_zeros(n);
            } else {
                (0..n).for_each(|_| frontier.push(&root));
            }
        }
        Prefix {
            len: frontier.pieces() * PIECE,
            frontier,
            root: None,
        }
    }

    /// Hashes the first `len` bytes of `file`, which are all there.
    pub fn of_file(file: &File, len: u64, sparse: bool) -> io::Result<Prefix> {
        let mark = Watermark::complete(len);
        match Prefix::of_file_until(file, len, sparse, &mark)? {
            Some(prefix) => Ok(prefix),
            None => unreachable!("nobody aborts this watermark"),
        }
    }

    /// As [`Prefix::of_file`], stopping early (`None`) when `mark`, a complete watermark of at
    /// least `len`, is aborted.
    pub fn of_file_until(
        file: &File,
        len: u64,
        sparse: bool,
        mark: &Watermark,
    ) -> io::Result<Option<Prefix>> {
        let mut prefix = Prefix::empty();
        let job = Job {
            file,
            len,
            mark,
            sparse,
            at: None,
            log: None,
        };
        Ok(job.run(&mut prefix).0?.map(|_| prefix))
    }

    /// How many bytes are hashed.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The root of those bytes, taken as a file of their own.
    pub fn digest(&self) -> Hash {
        match self.root {
            Some(root) => root,
            None if self.len == 0 => empty_root(),
            None => self.frontier.root(),
        }
    }
}

/// One pass of hashing over a file.
struct Job<'a> {
    file: &'a File,
    /// Where the file ends, or [`UNTIL_CLOSED`].
    len: u64,
    mark: &'a Watermark,
    sparse: bool,
    /// A piece boundary whose prefix root is wanted.
    at: Option<u64>,
    log: Option<&'a PieceLog>,
}

/// A piece claimed by a hashing thread.
enum Claim {
    /// Hash piece `index`, which ends at `end`; `last` when the file ends there.
    Data { index: u64, end: u64, last: bool },
    /// `n` whole pieces from `index` on are holes.
    Zeros { index: u64, n: u64 },
    /// Nothing is left to claim.
    Done,
    /// Stop: aborted, or another thread failed.
    Stop,
}

/// A hashed piece waiting to be folded in order.
enum Hashed {
    Piece(Hash),
    Zeros(u64),
    /// The root of a whole file of one piece or less, and that piece's root when it is logged
    /// (padding it to a whole piece costs more than hashing a small file's bytes).
    Whole(Hash, Option<Hash>),
}

/// The next piece to hand out, and where the file ends once known.
struct Claims {
    next: u64,
    end: Option<u64>,
}

/// Pieces folded in order so far.
struct Fold {
    frontier: Frontier,
    pending: BTreeMap<u64, Hashed>,
    next: u64,
    whole: Option<Hash>,
    snapshot: Option<Hash>,
    error: Option<io::Error>,
}

struct Shared<'a> {
    job: &'a Job<'a>,
    claims: Mutex<Claims>,
    fold: Mutex<Fold>,
    folded: Condvar,
    failed: AtomicBool,
    cpu: AtomicU64,
    /// Where the file ends, as `claims.end`, or [`UNTIL_CLOSED`]: read while folding, which
    /// must not take the claims' lock (a claim holds it while it takes the fold's).
    end: AtomicU64,
    /// Whether other threads hash too: only they may wait for the fold to move (one thread
    /// folds every piece it hashes before it claims the next), so only they need waking.
    shared: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Job<'_> {
    /// Hashes from `prefix.len()` (a piece boundary) on, on up to [`threads`] threads, folding
    /// the pieces in order into `prefix`. `Ok(Some(snapshot))` when done (with the root at
    /// `self.at`, when asked), `Ok(None)` when stopped early.
    fn run(&self, prefix: &mut Prefix) -> (io::Result<Option<Option<Hash>>>, Duration) {
        debug_assert!(prefix.len.is_multiple_of(PIECE) && prefix.root.is_none());
        let first = prefix.len / PIECE;
        let known = (self.len != UNTIL_CLOSED).then_some(self.len);
        let to_go = known.map_or(u64::MAX, |len| {
            len.saturating_sub(prefix.len).div_ceil(PIECE)
        });
        let shared = Shared {
            job: self,
            claims: Mutex::new(Claims {
                next: first,
                end: known,
            }),
            fold: Mutex::new(Fold {
                frontier: std::mem::take(&mut prefix.frontier),
                pending: BTreeMap::new(),
                next: first,
                whole: None,
                snapshot: None,
                error: None,
            }),
            folded: Condvar::new(),
            failed: AtomicBool::new(false),
            cpu: AtomicU64::new(0),
            end: AtomicU64::new(self.len),
            shared: threads() > 1 && to_go > 1,
        };
        let helpers = (threads() as u64).min(to_go).saturating_sub(1) as usize;
        let timed = to_go > 1;
        std::thread::scope(|s| {
            for _ in 0..helpers {
                s.spawn(|| shared.work(true));
            }
            shared.work(timed);
        });
        let cpu = Duration::from_nanos(shared.cpu.load(Ordering::Relaxed));
        let fold = shared.fold.into_inner().unwrap_or_else(|p| p.into_inner());
        let claims = shared
            .claims
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        prefix.frontier = fold.frontier;
        if let Some(e) = fold.error {
            return (Err(e), cpu);
        }
        let end = match claims.end {
            Some(end) if !self.mark.aborted() && fold.next * PIECE >= end => end,
            _ => return (Ok(None), cpu),
        };
        prefix.len = end;
        prefix.root = fold
            .whole
            .or_else(|| (end % PIECE != 0).then(|| prefix.frontier.root()));
        let snapshot = match self.at {
            Some(0) => Some(empty_root()),
            _ => fold.snapshot,
        };
        (Ok(Some(snapshot)), cpu)
    }
}

impl Shared<'_> {
    /// One hashing thread: claims pieces, hashes them, folds what is in order.
    fn work(&self, timed: bool) {
        let cpu = timed.then(thread_cpu);
        // No larger than the file: zeroing 256 KiB for each small file of a tree cost more than
        // hashing it.
        let len = self.job.len.min(HASH_CHUNK as u64).max(1) as usize;
        let mut buf = vec![0u8; len.next_multiple_of(4096).min(HASH_CHUNK)];
        let mut piece = PieceHasher::new();
        loop {
            let hashed = match self.claim() {
                Claim::Done | Claim::Stop => break,
                Claim::Zeros { index, n } => (index, Hashed::Zeros(n)),
                Claim::Data { index, end, last } => {
                    match self.hash_piece(index, end, &mut piece, &mut buf) {
                        Ok(true) if last && index == 0 => {
                            // A file of one piece: its root, and its piece's for the log.
                            let (root, padded) = match self.job.log {
                                Some(_) => {
                                    let (root, padded) = piece.finish_file_and_piece();
                                    (root, Some(padded))
                                }
                                None => (piece.finish_file(), None),
                            };
                            (index, Hashed::Whole(root, padded))
                        }
                        Ok(true) => (index, Hashed::Piece(piece.finish())),
                        Ok(false) => break,
                        Err(e) => {
                            self.fail(e);
                            break;
                        }
                    }
                }
            };
            self.deliver(hashed.0, hashed.1);
        }
        if let Some(start) = cpu {
            let spent = thread_cpu().saturating_sub(start).as_nanos() as u64;
            self.cpu.fetch_add(spent, Ordering::Relaxed);
        }
    }

    fn fail(&self, e: io::Error) {
        self.failed.store(true, Ordering::Relaxed);
        lock(&self.fold).error.get_or_insert(e);
        if self.shared {
            self.folded.notify_all();
        }
    }

    /// The next piece to hash, once its bytes are readable.
    fn claim(&self) -> Claim {
        let job = self.job;
        let mut claims = lock(&self.claims);
        let index = claims.next;
        let start = index * PIECE;
        if claims.end.is_some_and(|end| start >= end) {
            return Claim::Done;
        }
        // Not too far ahead of the fold.
        let mut fold = lock(&self.fold);
        while index >= fold.next + WINDOW {
            if self.failed.load(Ordering::Relaxed) || job.mark.aborted() {
                return Claim::Stop;
            }
            fold = self
                .folded
                .wait_timeout(fold, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(fold);
        if self.failed.load(Ordering::Relaxed) {
            return Claim::Stop;
        }
        let want = claims
            .end
            .map_or(start + PIECE, |end| end.min(start + PIECE));
        let ready = match job.mark.wait_for(want) {
            Wait::Ready(r) => r,
            Wait::Aborted => return Claim::Stop,
            // A stream ends where its bytes stopped; a file of known length was cut short.
            Wait::Closed(r) if job.len == UNTIL_CLOSED => {
                claims.end = Some(r);
                self.end.store(r, Ordering::Relaxed);
                if start >= r {
                    return Claim::Done;
                }
                r
            }
            Wait::Closed(_) => return Claim::Stop,
        };
        let end = want.min(ready);
        let last = claims.end == Some(end);
        if job.sparse {
            let limit = claims.end.map_or(ready, |e| e.min(ready));
            let hole_end = match sys::next_data(job.file, start, limit) {
                Ok(Some((data, _))) => data,
                Ok(None) => limit,
                Err(e) => {
                    drop(claims);
                    self.fail(e);
                    return Claim::Stop;
                }
            };
            let mut n = (hole_end - start) / PIECE;
            // A hole never folds past the piece whose prefix root is wanted.
            if let Some(at) = job.at.filter(|&at| at > start) {
                n = n.min((at - start) / PIECE);
            }
            if n > 0 {
                claims.next += n;
                return Claim::Zeros { index, n };
            }
        }
        claims.next += 1;
        Claim::Data { index, end, last }
    }

    /// Reads piece `index` (up to `end`) into `piece`. False when aborted. In a sparse file
    /// only the data is read and holes are fed as zeros: reading a hole that is an unwritten
    /// extent would cache pages that SEEK_DATA then reports as data, changing the extents the
    /// copy loop is sending.
    fn hash_piece(
        &self,
        index: u64,
        end: u64,
        piece: &mut PieceHasher,
        buf: &mut [u8],
    ) -> io::Result<bool> {
        let mut pos = index * PIECE;
        while pos < end {
            let data_end = if self.job.sparse {
                let (start, stop) = sys::next_data(self.job.file, pos, end)?.unwrap_or((end, end));
                piece.zeros(start - pos);
                pos = start;
                stop
            } else {
                end
            };
            while pos < data_end {
                if self.job.mark.aborted() || self.failed.load(Ordering::Relaxed) {
                    return Ok(false);
                }
                let want = (data_end - pos).min(buf.len() as u64) as usize;
                match self.job.file.read_at(&mut buf[..want], pos) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "file ended while hashing",
                        ))
                    }
                    Ok(n) => {
                        piece.update(&buf[..n]);
                        pos += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(true)
    }

    /// Folds what is now in order.
    fn deliver(&self, index: u64, hashed: Hashed) {
        let mut fold = lock(&self.fold);
        fold.pending.insert(index, hashed);
        loop {
            let next = fold.next;
            let Some(hashed) = fold.pending.remove(&next) else {
                break;
            };
            let n = match hashed {
                Hashed::Piece(root) => {
                    fold.frontier.push(&root);
                    if let Some(log) = self.job.log {
                        log.add(root, 1);
                    }
                    1
                }
                Hashed::Zeros(n) => {
                    fold.frontier.push_zeros(n);
                    if let Some(log) = self.job.log {
                        log.add(tree::zero_piece(), n);
                    }
                    n
                }
                Hashed::Whole(root, piece) => {
                    fold.whole = Some(root);
                    if let (Some(log), Some(piece)) = (self.job.log, piece) {
                        log.add(piece, 1);
                    }
                    1
                }
            };
            fold.next += n;
            if self.job.at == Some(fold.next * PIECE) {
                fold.snapshot = Some(fold.whole.unwrap_or_else(|| fold.frontier.root()));
            }
            let end = self.end.load(Ordering::Relaxed);
            self.job
                .mark
                .hashed
                .store(end.min(fold.next * PIECE), Ordering::Relaxed);
        }
        drop(fold);
        if self.shared {
            self.folded.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 4093) as u8).collect()
    }

    #[test]
    fn every_size_and_thread_count_gives_the_root_of_the_bytes() {
        for n in [
            0,
            1,
            16383,
            16384,
            16385,
            (1 << 20) + 1,
            3 << 20,
            (5 << 20) - 3,
        ] {
            let data = pattern(n);
            let mut f = tempfile::tempfile().unwrap();
            f.write_all(&data).unwrap();
            for threads in [1, 2, 3] {
                set_threads(threads);
                let mark = Watermark::new();
                let (hashed, _) = std::thread::scope(|s| {
                    let h = s.spawn(|| {
                        let start = Start::Hashed(Prefix::empty());
                        hash_from(start, &f, n as u64, &mark, false, None)
                    });
                    for end in (0..=n).step_by(99_999) {
                        mark.raise(end as u64);
                    }
                    mark.raise(n as u64);
                    mark.close();
                    h.join().unwrap()
                });
                let (root, _) = hashed.unwrap();
                assert_eq!(root, Some(root_of(&data)), "{n} bytes, {threads} threads");
            }
        }
        set_threads(0);
    }

    #[test]
    fn a_stream_ends_where_its_watermark_closes() {
        for n in [0usize, 5, 1 << 20, (2 << 20) + 9] {
            let data = pattern(n);
            let mut f = tempfile::tempfile().unwrap();
            f.write_all(&data).unwrap();
            let mark = Watermark::new();
            let (hashed, _) = std::thread::scope(|s| {
                let h = s.spawn(|| {
                    let start = Start::Hashed(Prefix::empty());
                    hash_from(start, &f, UNTIL_CLOSED, &mark, false, None)
                });
                mark.raise(n as u64);
                mark.close();
                h.join().unwrap()
            });
            assert_eq!(hashed.unwrap().0, Some(root_of(&data)), "{n} bytes");
        }
    }

    #[test]
    fn an_unhashed_start_gives_its_own_root_and_the_whole() {
        let data = pattern((7 << 20) + 123);
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&data).unwrap();
        let len = data.len() as u64;
        for cut in [PIECE, 3 * PIECE, 7 * PIECE] {
            let mark = Watermark::complete(len);
            let log = PieceLog::default();
            let (hashed, _) = hash_from(Start::Unhashed(cut), &f, len, &mark, false, Some(&log));
            let (root, prefix) = hashed.unwrap();
            assert_eq!(root, Some(root_of(&data)));
            assert_eq!(prefix, Some(root_of(&data[..cut as usize])), "cut at {cut}");
            // What a kept partial records is enough to go on without reading the prefix.
            let kept = Prefix::of_pieces(&log.first(cut / PIECE));
            assert_eq!(kept.len(), cut);
            assert_eq!(kept.digest(), root_of(&data[..cut as usize]));
            let mark = Watermark::complete(len);
            let (rest, _) = hash_from(Start::Hashed(kept), &f, len, &mark, false, None);
            assert_eq!(rest.unwrap().0, Some(root_of(&data)));
            // Fewer roots kept than bytes held: the rest of the held bytes are read again.
            let fewer = Prefix::of_pieces(&log.first(cut / PIECE - 1));
            let mark = Watermark::complete(len);
            let start = Start::Partly(fewer, cut);
            let (both, _) = hash_from(start, &f, len, &mark, false, None);
            let (root, prefix) = both.unwrap();
            assert_eq!(root, Some(root_of(&data)));
            assert_eq!(
                prefix,
                Some(root_of(&data[..cut as usize])),
                "partly, cut at {cut}"
            );
        }
    }

    #[test]
    fn holes_hash_as_zeros() {
        use std::os::unix::fs::FileExt;
        let f = tempfile::tempfile().unwrap();
        let len = (9 << 20) + 777;
        f.set_len(len).unwrap();
        f.write_all_at(b"data in the middle", 4 << 20).unwrap();
        f.write_all_at(b"and at the end", len - 14).unwrap();
        let mut content = vec![0u8; len as usize];
        f.read_exact_at(&mut content, 0).unwrap();
        for sparse in [false, true] {
            let (root, _) = root_of_file(&f, sparse).unwrap();
            assert_eq!(root, root_of(&content), "sparse: {sparse}");
        }
    }

    /// Hashing reads no hole: on ext4 a cached page over an unwritten (fallocated) extent
    /// counts as data for SEEK_DATA, so reading one would change the extents a sender is
    /// sending (it then reports its source changed).
    #[test]
    fn hashing_leaves_unwritten_extents_holes() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("unwritten"))
            .unwrap();
        let len = 4 * PIECE;
        f.set_len(len).unwrap();
        let fallocated = rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::KEEP_SIZE, 0, len);
        f.write_all_at(&[7u8; 4096], PIECE + 8192).unwrap();
        let before = sys::next_data(&f, 0, len).unwrap();
        let (root, _) = root_of_file(&f, true).unwrap();
        let mut content = vec![0u8; len as usize];
        content[(PIECE + 8192) as usize..][..4096].fill(7);
        assert_eq!(root, root_of(&content));
        if fallocated.is_ok() {
            assert_eq!(sys::next_data(&f, 0, len).unwrap(), before);
        }
    }

    /// A terabyte of holes folds as runs of constant subtrees: no byte of it is read.
    #[test]
    fn a_terabyte_of_holes_costs_a_few_hashes() {
        use std::os::unix::fs::FileExt;
        let f = tempfile::tempfile().unwrap();
        let len = 1u64 << 40;
        f.set_len(len).unwrap();
        f.write_all_at(b"x", len / 3).unwrap();
        let (root, cpu) = root_of_file(&f, true).unwrap();
        // The same file hashed by definition: the pieces around the byte, zeros elsewhere.
        let mut frontier = Frontier::new();
        let at = len / 3 / PIECE;
        frontier.push_zeros(at);
        let mut piece = vec![0u8; PIECE as usize];
        piece[(len / 3 % PIECE) as usize] = b'x';
        let mut p = PieceHasher::new();
        p.update(&piece);
        frontier.push(&p.finish());
        frontier.push_zeros(len / PIECE - at - 1);
        assert_eq!(root, frontier.root());
        // Hashing a terabyte of zeros would take ten minutes of CPU; a few pieces take none.
        assert!(cpu < Duration::from_secs(30), "{cpu:?}");
    }

    #[test]
    fn an_abort_stops_the_hashing_threads() {
        let f = tempfile::tempfile().unwrap();
        let mark = Watermark::new();
        let (hashed, _) = std::thread::scope(|s| {
            let h = s.spawn(|| {
                hash_from(
                    Start::Hashed(Prefix::empty()),
                    &f,
                    10 << 20,
                    &mark,
                    false,
                    None,
                )
            });
            mark.abort();
            h.join().unwrap()
        });
        assert_eq!(hashed.unwrap().0, None);
    }
}
