//! SHA-256 computed on a second thread while the bytes flow, reading the file back through the
//! page cache behind (receiver) or beside (sender) the zero-copy loop.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::stages::thread_cpu;
use crate::sys;

/// Files up to this size are hashed on the copying thread once they are copied, on both ends: a
/// thread per file would cost more than the hashing. The receiver does not preallocate them either.
pub(crate) const SMALL_FILE: u64 = 1 << 20;

/// Bytes hashed per read. Small enough to stay in the L2 cache between the copy out of the
/// page cache and the hashing of it.
pub const HASH_CHUNK: usize = 256 * 1024;

/// How far a file may be read: the copy loop raises it, the hashing thread waits on it.
#[derive(Debug, Default)]
pub struct Watermark {
    state: Mutex<State>,
    moved: Condvar,
    hashed: AtomicU64,
    /// Set with `aborted`, read without the lock by a hashing thread between chunks, so that
    /// a long run (a hole of terabytes) stops within one chunk of an abort.
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
        Watermark {
            state: Mutex::new(State {
                ready: len,
                closed: true,
                aborted: false,
            }),
            moved: Condvar::new(),
            hashed: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        }
    }

    /// Whether the hashing should stop: the transfer failed or the peer went away.
    pub fn aborted(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// How many bytes the hashing thread has read back so far.
    pub fn hashed(&self) -> u64 {
        self.hashed.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
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

    /// Stop the hashing thread as soon as possible: the transfer failed.
    pub fn abort(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let mut s = self.lock();
        s.aborted = true;
        s.closed = true;
        drop(s);
        self.moved.notify_all();
    }

    /// Waits until more than `pos` bytes are readable, or the watermark is closed.
    fn wait_past(&self, pos: u64) -> Wait {
        let mut s = self.lock();
        loop {
            if s.aborted {
                return Wait::Aborted;
            }
            if s.ready > pos {
                return Wait::Ready(s.ready);
            }
            if s.closed {
                return Wait::Closed;
            }
            s = self.moved.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// What a hashing thread may do next.
enum Wait {
    /// Bytes up to this offset are readable.
    Ready(u64),
    /// No more bytes will come.
    Closed,
    /// The transfer failed.
    Aborted,
}

/// Length to pass to [`hash_from`] when the end is only known when the watermark closes (a
/// stream).
pub const UNTIL_CLOSED: u64 = u64::MAX;

/// Hashes everything `reader` yields until end of file (a pipe fed by tee(2)).
pub fn hash_reader(mut reader: impl io::Read) -> io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_CHUNK];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(hasher.finalize().into()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The result of a hashing thread: the digest (`None` if stopped early) and the thread's CPU.
pub type Hashed = (io::Result<Option<[u8; 32]>>, Duration);

/// [`hash_rest`], also returning the CPU time the calling thread spent on it.
pub fn hash_rest_timed(
    prefix: Prefix,
    file: &File,
    len: u64,
    mark: &Watermark,
    sparse: bool,
) -> Hashed {
    let start = thread_cpu();
    let digest = hash_rest(prefix, file, len, mark, sparse);
    (digest, thread_cpu().saturating_sub(start))
}

/// Where hashing a received file starts: from a prefix already hashed, or from the first `n`
/// bytes already in the file but not hashed yet (a partial whose digest is still to be checked).
pub enum Start {
    /// Hashed: go on from here.
    Hashed(Prefix),
    /// This many bytes are in the file, not hashed.
    Unhashed(u64),
}

impl Start {
    /// Where the bytes still to come begin.
    pub fn offset(&self) -> u64 {
        match self {
            Start::Hashed(p) => p.len(),
            Start::Unhashed(n) => *n,
        }
    }
}

/// What [`hash_from`] finds: the digest of the first `len` bytes (`None` if stopped early), and
/// for an unhashed start, the digest of its prefix.
pub type Digests = (Option<[u8; 32]>, Option<[u8; 32]>);

/// [`Digests`] and the CPU time they took.
pub type HashedFrom = (io::Result<Digests>, Duration);

/// As [`hash_rest_timed`], from a [`Start`]: an unhashed prefix is hashed first, and its digest
/// returned as well, so that a receiver can take in the rest while it checks what it held.
pub fn hash_from_timed(
    start: Start,
    file: &File,
    len: u64,
    mark: &Watermark,
    sparse: bool,
) -> HashedFrom {
    let cpu = thread_cpu();
    let hashed = hash_from(start, file, len, mark, sparse);
    (hashed, thread_cpu().saturating_sub(cpu))
}

/// [`hash_from_timed`] without the timing.
pub fn hash_from(
    start: Start,
    file: &File,
    len: u64,
    mark: &Watermark,
    sparse: bool,
) -> io::Result<Digests> {
    (|| {
        let (prefix, at) = match start {
            Start::Hashed(p) => (p, None),
            Start::Unhashed(n) => {
                let p = Prefix::of_file(file, n, sparse)?;
                let d = p.digest();
                (p, Some(d))
            }
        };
        Ok((hash_rest(prefix, file, len, mark, sparse)?, at))
    })()
}

/// The running hash of the first `len` bytes of a file: what a resumed transfer starts from.
#[derive(Clone)]
pub struct Prefix {
    hasher: Sha256,
    len: u64,
}

impl Prefix {
    /// Nothing hashed yet.
    pub fn empty() -> Prefix {
        Prefix {
            hasher: Sha256::new(),
            len: 0,
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
        Ok(hash_into(&mut prefix, file, len, mark, sparse)?.then_some(prefix))
    }

    fn feed(&mut self, bytes: &[u8], mark: &Watermark) {
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        mark.hashed.store(self.len, Ordering::Relaxed);
    }

    /// How many bytes are hashed.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The SHA-256 of those bytes.
    pub fn digest(&self) -> [u8; 32] {
        self.hasher.clone().finalize().into()
    }
}

/// Hashes the first `len` bytes of `file` as the watermark lets it (all of them up to where
/// the watermark closes with [`UNTIL_CLOSED`]), going on from a prefix already hashed (empty,
/// or what a resumed transfer holds): the digest covers the prefix and the rest. Returns
/// `Ok(None)` when the watermark was aborted, or closed before `len` bytes were readable.
///
/// With `sparse`, holes (SEEK_HOLE) are hashed as the zeros they read as, without reading them:
/// reading a hole would fill the page cache with zero pages and copy them.
pub fn hash_rest(
    mut prefix: Prefix,
    file: &File,
    len: u64,
    mark: &Watermark,
    sparse: bool,
) -> io::Result<Option<[u8; 32]>> {
    match hash_into(&mut prefix, file, len, mark, sparse)? {
        true => Ok(Some(prefix.digest())),
        false => Ok(None),
    }
}

/// Feeds bytes from `prefix.len()` up to `len` into the prefix as the watermark releases
/// them. Returns false when stopped early.
fn hash_into(
    prefix: &mut Prefix,
    file: &File,
    len: u64,
    mark: &Watermark,
    sparse: bool,
) -> io::Result<bool> {
    let mut buf = vec![0u8; HASH_CHUNK.min(len as usize).max(1)];
    let zeros = vec![0u8; buf.len()];
    while prefix.len < len {
        let ready = match mark.wait_past(prefix.len) {
            Wait::Ready(r) => r.min(len),
            Wait::Closed if len == UNTIL_CLOSED => break,
            Wait::Closed | Wait::Aborted => return Ok(false),
        };
        while prefix.len < ready {
            let data_end = if sparse {
                let pos = prefix.len;
                let (start, end) = sys::next_data(file, pos, ready)?.unwrap_or((ready, ready));
                while prefix.len < start {
                    if mark.aborted() {
                        return Ok(false);
                    }
                    let n = (start - prefix.len).min(zeros.len() as u64) as usize;
                    prefix.feed(&zeros[..n], mark);
                }
                end
            } else {
                ready
            };
            while prefix.len < data_end {
                if mark.aborted() {
                    return Ok(false);
                }
                let want = (data_end - prefix.len).min(buf.len() as u64) as usize;
                let n = match file.read_at(&mut buf[..want], prefix.len) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "file ended while hashing",
                        ))
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                prefix.feed(&buf[..n], mark);
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn hash_file(
        file: &File,
        len: u64,
        mark: &Watermark,
        sparse: bool,
    ) -> io::Result<Option<[u8; 32]>> {
        hash_rest(Prefix::empty(), file, len, mark, sparse)
    }

    #[test]
    fn hashes_what_the_watermark_releases() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7) as u8).collect();
        f.write_all(&data).unwrap();
        let mark = Watermark::new();
        let digest = std::thread::scope(|s| {
            let h = s.spawn(|| hash_file(&f, data.len() as u64, &mark, false));
            for end in (0..=data.len()).step_by(99_999) {
                mark.raise(end as u64);
            }
            mark.raise(data.len() as u64);
            mark.close();
            h.join().unwrap().unwrap()
        });
        assert_eq!(digest, Some(Sha256::digest(&data).into()));
    }

    #[test]
    fn abort_stops_the_hash() {
        let f = tempfile::tempfile().unwrap();
        let mark = Watermark::new();
        let r = std::thread::scope(|s| {
            let h = s.spawn(|| hash_file(&f, 10, &mark, false));
            mark.abort();
            h.join().unwrap()
        });
        assert_eq!(r.unwrap(), None);
    }

    /// A hole of a terabyte would take minutes to hash as zeros: an abort stops it at once.
    #[test]
    fn an_abort_stops_a_long_hole_within_a_chunk() {
        let f = tempfile::tempfile().unwrap();
        let len = 1u64 << 40;
        f.set_len(len).unwrap();
        let mark = Watermark::complete(len);
        let hashed = std::thread::scope(|s| {
            let h = s.spawn(|| Prefix::of_file_until(&f, len, true, &mark));
            while mark.hashed() == 0 {
                std::thread::yield_now();
            }
            mark.abort();
            h.join().unwrap().unwrap()
        });
        assert!(hashed.is_none());
        assert!(mark.hashed() < len / 1000, "hashed {} bytes", mark.hashed());
    }

    #[test]
    fn holes_hash_as_zeros() {
        use std::os::unix::fs::FileExt;
        let f = tempfile::tempfile().unwrap();
        let len = 5 << 20;
        f.set_len(len).unwrap();
        f.write_all_at(b"data in the middle", 2 << 20).unwrap();
        f.write_all_at(b"and at the end", len - 14).unwrap();
        let mut content = vec![0u8; len as usize];
        f.read_exact_at(&mut content, 0).unwrap();
        let want: [u8; 32] = Sha256::digest(&content).into();
        for sparse in [false, true] {
            let d = hash_file(&f, len, &Watermark::complete(len), sparse).unwrap();
            assert_eq!(d, Some(want), "sparse: {sparse}");
        }
    }

    #[test]
    fn a_prefix_and_the_rest_hash_as_the_whole() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 13 + 5) as u8).collect();
        f.write_all(&data).unwrap();
        let len = data.len() as u64;
        for cut in [0, 1, 999_999, len - 1, len] {
            let prefix = Prefix::of_file(&f, cut, false).unwrap();
            assert_eq!(prefix.len(), cut);
            let want: [u8; 32] = Sha256::digest(&data[..cut as usize]).into();
            assert_eq!(prefix.digest(), want, "prefix of {cut}");
            let whole = hash_rest(prefix, &f, len, &Watermark::complete(len), false).unwrap();
            assert_eq!(whole, Some(Sha256::digest(&data).into()), "cut at {cut}");
        }
    }

    #[test]
    fn empty_file_hashes_to_the_empty_digest() {
        let f = tempfile::tempfile().unwrap();
        let d = hash_file(&f, 0, &Watermark::complete(0), false).unwrap();
        assert_eq!(d, Some(Sha256::digest(b"").into()));
    }
}
