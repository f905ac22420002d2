//! Piece layers on the receiver: hashing a file into one, comparing the sender's with ours into
//! the list of pieces we need, taking those pieces off the connection, and folding a layer into
//! the file's root.

use std::fs::File;
use std::io::{self, Read};
use std::net::TcpStream;

use rustix::fs::FallocateFlags;

use crate::hash::{hash_from, zero_piece, Hash, PieceLog, Prefix, Start, Watermark, PIECE};
use crate::recv::payload::Incoming;
use crate::sys::{CopyError, Pipe, SpliceStats, SpliceTo};
use crate::wire::{read_layer_telling, Needed, ProtocolError, Record};

/// Runs of equal piece roots, in file order.
pub(crate) type Runs = Vec<(Hash, u64)>;

/// The root and runs of the first `len` bytes of `file` (holes cost nothing), on every thread,
/// stopping early (`None`) when `mark` (complete at `len`) is aborted.
pub(crate) fn layer_of(
    file: &File,
    len: u64,
    mark: &Watermark,
) -> io::Result<Option<(Hash, Runs)>> {
    let log = PieceLog::default();
    let (hashed, _cpu) = hash_from(
        Start::Hashed(Prefix::empty()),
        file,
        len,
        mark,
        true,
        Some(&log),
    );
    Ok(hashed?.0.map(|root| (root, log.first(u64::MAX))))
}

/// The roots of the `needed` pieces of `file` (of `size` bytes), in order, as runs.
pub(crate) fn hash_needed(file: &File, size: u64, needed: &Needed) -> io::Result<Runs> {
    let log = PieceLog::default();
    for &(first, n) in needed.ranges() {
        let end = ((first + n) * PIECE).min(size);
        // Hashing starts at a piece boundary after a prefix of holes, which costs nothing.
        let before = Prefix::of_pieces(&[(zero_piece(), first)]);
        let mark = Watermark::complete(end);
        hash_from(Start::Hashed(before), file, end, &mark, true, Some(&log)).0?;
    }
    Ok(log.first(u64::MAX))
}

/// The piece whose bytes differ in length between a file of `old_len` bytes and one of `size`
/// (the last piece of the shorter, when it is short): its old root is of other bytes than the
/// new piece would hold, whatever root the sender claims for it.
pub(crate) fn uneven_piece(size: u64, old_len: u64) -> Option<u64> {
    let shorter = size.min(old_len);
    (size != old_len && !shorter.is_multiple_of(PIECE)).then_some(shorter / PIECE)
}

/// Reads the sender's piece layer for a file of `pieces` pieces and compares it, run by run,
/// with `ours` (what we hold): the pieces we need are those whose roots differ, those past
/// what we hold, and the `uneven` one (see [`uneven_piece`]), whatever its root.
pub(crate) fn compare(
    r: &mut impl Read,
    pieces: u64,
    ours: &Runs,
    uneven: Option<u64>,
    on_keepalive: &mut dyn FnMut() -> bool,
) -> Result<Needed, ProtocolError> {
    let mut needed = Needed::none();
    let mut mine = ours.iter().copied().peekable();
    let mut left_in_mine = mine.peek().map_or(0, |r| r.1);
    let mut at = 0u64;
    let mut take = |root: Hash, mut n: u64| {
        while n > 0 {
            let Some(&(our_root, _)) = mine.peek() else {
                needed.add(at, n);
                at += n;
                return;
            };
            let step = n.min(left_in_mine);
            if our_root != root {
                needed.add(at, step);
            } else if let Some(k) = uneven.filter(|k| (at..at + step).contains(k)) {
                needed.add(k, 1);
            }
            at += step;
            n -= step;
            left_in_mine -= step;
            if left_in_mine == 0 {
                mine.next();
                left_in_mine = mine.peek().map_or(0, |r| r.1);
            }
        }
    };
    read_layer_telling(r, pieces, &mut take, on_keepalive)?;
    Ok(needed)
}

/// `base`, a file's runs, with the `needed` pieces' roots taken from `fresh` (theirs, in
/// order), for a file of `pieces` pieces: what the file holds once those pieces are in.
pub(crate) fn patch(base: &Runs, needed: &Needed, fresh: &Runs, pieces: u64) -> Runs {
    let mut runs: Runs = Vec::new();
    let mut push = |root: Hash, n: u64| {
        if n == 0 {
            return;
        }
        match runs.last_mut() {
            Some((r, c)) if *r == root => *c += n,
            _ => runs.push((root, n)),
        }
    };
    // Run by run, never piece by piece: a range of holes may span 2^43 pieces.
    let mut fresh = fresh.iter().copied().filter(|(_, n)| *n > 0);
    let mut current: Option<(Hash, u64)> = None;
    let mut at = 0u64;
    for &(first, n) in needed.ranges() {
        copy_runs(base, at, first, &mut push);
        let mut left = n;
        while left > 0 {
            let (root, have) = match current.take().or_else(|| fresh.next()) {
                Some(run) => run,
                // Fewer roots than pieces: the rest read as holes.
                None => (zero_piece(), left),
            };
            let k = have.min(left);
            push(root, k);
            left -= k;
            if have > k {
                current = Some((root, have - k));
            }
        }
        at = first + n;
    }
    copy_runs(base, at, pieces, &mut push);
    runs
}

/// Pushes the roots of pieces `from..to` of `base`.
fn copy_runs(base: &Runs, from: u64, to: u64, push: &mut dyn FnMut(Hash, u64)) {
    let mut start = 0u64;
    for &(root, n) in base {
        let (a, b) = (start.max(from), (start + n).min(to));
        if a < b {
            push(root, b - a);
        }
        start += n;
        if start >= to {
            break;
        }
    }
}

/// The root of a file of more than one piece, from its runs.
pub(crate) fn root_of_runs(runs: &Runs) -> Hash {
    Prefix::of_pieces(runs).digest()
}

/// Takes the `needed` pieces of a file of `size` bytes off the connection, as records that
/// tile them in order, then the end record: data spliced into `file` at its offset, holes
/// punched (what was there before is replaced). Returns the data bytes taken, which may not
/// exceed `most` (the data the header announced).
pub(crate) fn take_pieces(
    stream: &TcpStream,
    needed: &Needed,
    (size, most): (u64, u64),
    file: &File,
    pipe: &Pipe,
    stats: &mut SpliceStats,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, Incoming> {
    let bad = |what: String| Incoming::Protocol(ProtocolError::Malformed(what));
    let mut data = 0u64;
    for (start, len) in needed.spans(size) {
        let end = start + len;
        let mut pos = start;
        while pos < end {
            let record = Record::read(&mut &*stream).map_err(Incoming::Protocol)?;
            let (offset, n) = match record {
                Record::Data { offset, len } | Record::Hole { offset, len } => (offset, len),
                Record::End => {
                    return Err(bad(format!("records end at {pos}, inside a needed piece")))
                }
            };
            if offset != pos || n > end - pos {
                return Err(bad(format!(
                    "a record at {offset}+{n} where {pos} (up to {end}) was expected"
                )));
            }
            match record {
                Record::Data { .. } if n > most - data => {
                    return Err(bad(format!("more data than the {most} bytes announced")));
                }
                Record::Data { .. } => {
                    let mut to = SpliceTo {
                        pipe,
                        file,
                        stats: &mut *stats,
                        onward: None,
                    };
                    let got = to
                        .take_from(stream, offset, n, &mut |k| progress(k))
                        .map_err(Incoming::Copy)?;
                    if got < n {
                        return Err(Incoming::Protocol(ProtocolError::Truncated(
                            "needed pieces",
                        )));
                    }
                    data += n;
                }
                _ => punch(file, offset, n).map_err(|e| Incoming::Copy(CopyError::Write(e)))?,
            }
            pos += n;
        }
    }
    match Record::read(&mut &*stream).map_err(Incoming::Protocol)? {
        Record::End => Ok(data),
        _ => Err(bad("records past the needed pieces".into())),
    }
}

/// Makes `len` bytes at `offset` a hole (zeros that take no space), where the filesystem can.
pub(crate) fn punch(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
    match rustix::fs::fallocate(file, flags, offset, len) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::OPNOTSUPP) => zero_fill(file, offset, len),
        Err(e) => Err(e.into()),
    }
}

/// Writes zeros where a hole cannot be punched.
fn zero_fill(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let zeros = vec![0u8; PIECE as usize];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(PIECE) as usize;
        file.write_all_at(&zeros[..n], offset + at)?;
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::encode_layer;

    #[test]
    fn comparing_finds_differing_and_missing_pieces() {
        let (a, b, c) = ([1; 32], [2; 32], [3; 32]);
        let ours: Runs = vec![(a, 3), (b, 2)];
        let theirs: Runs = vec![(a, 2), (c, 1), (b, 1), (a, 1), (b, 2)];
        let needed = compare(&mut &encode_layer(&theirs)[..], 7, &ours, None, &mut || {
            true
        })
        .unwrap();
        assert_eq!(needed.ranges(), &[(2, 1), (4, 3)]);
        let patched = patch(&ours, &needed, &vec![(c, 1), (a, 1), (b, 2)], 7);
        assert_eq!(patched, theirs);
        // A shorter file: what is past its end is dropped.
        let shorter = compare(
            &mut &encode_layer(&[(a, 2)])[..],
            2,
            &ours,
            None,
            &mut || true,
        )
        .unwrap();
        assert_eq!(shorter, Needed::none());
        assert_eq!(patch(&ours, &shorter, &vec![], 2), vec![(a, 2)]);
    }

    /// A repair of a file of 2^43 pieces, nearly all holes, is patched run by run: piece by
    /// piece, it took hours of CPU after its sender had gone.
    #[test]
    fn a_range_of_trillions_of_pieces_is_patched_run_by_run() {
        let (a, b, zero) = ([1; 32], [2; 32], zero_piece());
        let pieces = 1u64 << 43;
        let ours: Runs = vec![(a, pieces)];
        let mut needed = Needed::none();
        needed.add(0, pieces - 1);
        // Two pieces of data, then holes, and fewer roots than pieces: the rest are holes too.
        let fresh: Runs = vec![(b, 2), (zero, pieces / 2)];
        let patched = patch(&ours, &needed, &fresh, pieces);
        assert_eq!(patched, vec![(b, 2), (zero, pieces - 3), (a, 1)]);
    }

    /// Keepalives before a piece layer are taken only while the receiver's patience lasts: a
    /// sender "still hashing" forever used to hold the update open forever.
    #[test]
    fn keepalives_before_a_layer_end_when_patience_does() {
        let stream = crate::wire::KEEPALIVE.repeat(1000);
        let mut left = 3;
        let mut still = || {
            left -= 1;
            left > 0
        };
        let ours: Runs = vec![([1; 32], 2)];
        let err = compare(&mut &stream[..], 2, &ours, None, &mut still).unwrap_err();
        assert!(
            err.to_string().contains("longer than hashing could take"),
            "{err}"
        );
        assert_eq!(left, 0);
    }

    /// When the file grows or shrinks, the last piece of the shorter version, if short, holds
    /// other bytes in the new one: it is needed whatever root the sender claims (a sender that
    /// claimed the old root had the file published as verified under a root its bytes do not
    /// have).
    #[test]
    fn a_piece_cut_short_by_a_new_size_is_always_needed() {
        assert_eq!(uneven_piece(3 * PIECE, 3 * PIECE), None);
        assert_eq!(uneven_piece(3 * PIECE, 2 * PIECE + 10), Some(2));
        assert_eq!(uneven_piece(2 * PIECE + 10, 3 * PIECE), Some(2));
        assert_eq!(uneven_piece(3 * PIECE, 2 * PIECE), None);
        let (a, b) = ([1; 32], [2; 32]);
        // Ours: 2.5 pieces; theirs: 3 whole pieces claiming the same roots.
        let ours: Runs = vec![(a, 2), (b, 1)];
        let uneven = uneven_piece(3 * PIECE, 2 * PIECE + 10);
        let needed = compare(&mut &encode_layer(&ours)[..], 3, &ours, uneven, &mut || {
            true
        })
        .unwrap();
        assert_eq!(needed.ranges(), &[(2, 1)]);
    }
}
