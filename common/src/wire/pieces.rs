//! Sections 2d and 5a of docs/PROTOCOL.md: sending only the pieces that differ. The sender's
//! piece layer (runs of equal piece roots), the receiver's list of the pieces it needs, and the
//! receiver's call for a repair round when the roots disagree after a trailer.

use std::io::Read;

use super::codec::read_exact;
use super::error::ProtocolError;
use super::keepalive::read_after_keepalives;
use crate::hash::{Hash, PIECE};

/// First bytes of the sender's piece layer.
pub const LAYER_MAGIC: [u8; 4] = *b"ZPLY";
/// First bytes of the receiver's list of needed pieces.
pub const NEED_MAGIC: [u8; 4] = *b"ZNED";
/// First bytes of the receiver's call for a repair round.
pub const REPAIR_MAGIC: [u8; 4] = *b"ZFIX";
/// Most repair rounds one transfer may take.
pub const MAX_REPAIR_ROUNDS: u8 = 3;
/// Size of one run of a piece layer: a root and how many pieces in a row have it.
const RUN_LEN: usize = 32 + 8;

/// How many pieces a file of `size` bytes has (the empty file: none).
pub fn pieces_of(size: u64) -> u64 {
    size.div_ceil(PIECE)
}

/// Encodes a piece layer: runs of equal roots in file order, as `hash::PieceLog` keeps them.
pub fn encode_layer(runs: &[(Hash, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + runs.len() * RUN_LEN);
    out.extend_from_slice(&LAYER_MAGIC);
    out.extend_from_slice(&(runs.len() as u64).to_be_bytes());
    for (root, n) in runs {
        out.extend_from_slice(root);
        out.extend_from_slice(&n.to_be_bytes());
    }
    out
}

/// Reads a piece layer of exactly `pieces` pieces (after any keepalives), handing each run to
/// `run` as it comes, so that nothing but one run is held: a layer is as long as its sender
/// makes it, within the pieces the header's size allows.
pub fn read_layer(
    r: &mut impl Read,
    pieces: u64,
    run: &mut dyn FnMut(Hash, u64),
) -> Result<(), ProtocolError> {
    read_layer_telling(r, pieces, run, &mut || true)
}

/// As [`read_layer`], asking `on_keepalive` at each keepalive before it whether to wait on.
pub fn read_layer_telling(
    r: &mut impl Read,
    pieces: u64,
    run: &mut dyn FnMut(Hash, u64),
    on_keepalive: &mut dyn FnMut() -> bool,
) -> Result<(), ProtocolError> {
    let mut head = [0u8; 12];
    read_after_keepalives(r, &mut head, "piece layer", on_keepalive)?;
    if head[..4] != LAYER_MAGIC {
        return Err(ProtocolError::Malformed("piece layer magic missing".into()));
    }
    let runs = u64::from_be_bytes(head[4..].try_into().expect("8 bytes"));
    if runs > pieces || (runs == 0) != (pieces == 0) {
        return Err(ProtocolError::Malformed(format!(
            "a piece layer of {runs} runs for {pieces} pieces"
        )));
    }
    let mut seen = 0u64;
    for _ in 0..runs {
        let mut buf = [0u8; RUN_LEN];
        read_exact(r, &mut buf, "piece layer")?;
        let n = u64::from_be_bytes(buf[32..].try_into().expect("8 bytes"));
        if n == 0 || n > pieces - seen {
            return Err(ProtocolError::Malformed(format!(
                "a piece layer run of {n} pieces after {seen} of {pieces}"
            )));
        }
        seen += n;
        run(buf[..32].try_into().expect("32 bytes"), n);
    }
    if seen != pieces {
        return Err(ProtocolError::Malformed(format!(
            "a piece layer of {seen} pieces for {pieces}"
        )));
    }
    Ok(())
}

/// Ranges of pieces, `(first, count)`, in increasing order, none empty, none touching the next.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Needed(Vec<(u64, u64)>);

impl Needed {
    /// No piece.
    pub fn none() -> Needed {
        Needed::default()
    }

    /// Every piece of a file of `pieces` pieces.
    pub fn all(pieces: u64) -> Needed {
        let mut n = Needed::none();
        n.add(0, pieces);
        n
    }

    /// Adds `count` pieces from `first` on, which must come after every piece already added.
    pub fn add(&mut self, first: u64, count: u64) {
        if count == 0 {
            return;
        }
        match self.0.last_mut() {
            Some((f, c)) if *f + *c == first => *c += count,
            last => {
                debug_assert!(last.is_none_or(|(f, c)| *f + *c < first));
                self.0.push((first, count));
            }
        }
    }

    /// The pieces in either list.
    pub fn union(&self, other: &Needed) -> Needed {
        let mut all: Vec<(u64, u64)> = self.0.iter().chain(&other.0).copied().collect();
        all.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (f, n) in all {
            match out.last_mut() {
                Some((lf, ln)) if f <= *lf + *ln => *ln = (*ln).max(f + n - *lf),
                _ => out.push((f, n)),
            }
        }
        Needed(out)
    }

    /// The ranges.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.0
    }

    /// How many pieces.
    pub fn pieces(&self) -> u64 {
        self.0.iter().map(|(_, n)| n).sum()
    }

    /// Whether piece `i` is one of them.
    pub fn contains(&self, i: u64) -> bool {
        let at = self.0.partition_point(|(f, _)| *f <= i);
        at > 0 && i < self.0[at - 1].0 + self.0[at - 1].1
    }

    /// The byte ranges `(offset, len)` of these pieces in a file of `size` bytes.
    pub fn spans(&self, size: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().map(move |&(f, n)| {
            let start = f * PIECE;
            (start, ((f + n) * PIECE).min(size) - start)
        })
    }

    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.0.len() * 16);
        out.extend_from_slice(&NEED_MAGIC);
        out.extend_from_slice(&(self.0.len() as u32).to_be_bytes());
        for (f, n) in &self.0 {
            out.extend_from_slice(&f.to_be_bytes());
            out.extend_from_slice(&n.to_be_bytes());
        }
        out
    }

    /// Reads the list for a file of `pieces` pieces (after any keepalives the receiver sent
    /// while it hashed its own file), checking that the ranges are in order, apart and inside.
    pub fn read(r: &mut impl Read, pieces: u64) -> Result<Needed, ProtocolError> {
        Needed::read_telling(r, pieces, &mut || true)
    }

    /// As [`Needed::read`], asking `on_keepalive` at each keepalive whether to wait on.
    pub fn read_telling(
        r: &mut impl Read,
        pieces: u64,
        on_keepalive: &mut dyn FnMut() -> bool,
    ) -> Result<Needed, ProtocolError> {
        let mut head = [0u8; 8];
        read_after_keepalives(r, &mut head, "list of needed pieces", on_keepalive)?;
        if head[..4] != NEED_MAGIC {
            return Err(ProtocolError::Malformed(
                "list of needed pieces: magic missing".into(),
            ));
        }
        let count = u32::from_be_bytes(head[4..].try_into().expect("4 bytes")) as u64;
        if count > pieces.div_ceil(2) {
            return Err(ProtocolError::Malformed(format!(
                "{count} ranges of needed pieces for {pieces} pieces"
            )));
        }
        let mut needed = Needed::none();
        let mut next = 0u64;
        for i in 0..count {
            let mut buf = [0u8; 16];
            read_exact(r, &mut buf, "list of needed pieces")?;
            let first = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
            let n = u64::from_be_bytes(buf[8..].try_into().expect("8 bytes"));
            let apart = i == 0 || first > next;
            if n == 0 || first < next || !apart || first >= pieces || n > pieces - first {
                return Err(ProtocolError::Malformed(format!(
                    "needed pieces {first}+{n} out of order or past {pieces}"
                )));
            }
            needed.0.push((first, n));
            next = first + n;
        }
        Ok(needed)
    }
}

/// The receiver's call for a repair round `round` (1 to [`MAX_REPAIR_ROUNDS`]).
pub fn encode_repair(round: u8) -> [u8; 5] {
    let mut out = [0u8; 5];
    out[..4].copy_from_slice(&REPAIR_MAGIC);
    out[4] = round;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receiver's keepalives before its list of needed pieces are taken only while the
    /// sender's patience lasts: "still hashing" forever used to hold zsend forever.
    #[test]
    fn keepalives_before_the_needed_pieces_end_when_patience_does() {
        let stream = crate::wire::KEEPALIVE.repeat(100);
        let mut left = 3;
        let mut still = || {
            left -= 1;
            left > 0
        };
        let err = Needed::read_telling(&mut &stream[..], 4, &mut still).unwrap_err();
        assert!(
            err.to_string().contains("longer than hashing could take"),
            "{err}"
        );
    }
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn layers_and_lists_round_trip(runs in proptest::collection::vec((any::<[u8; 32]>(), 1u64..5), 0..20), gaps in proptest::collection::vec((0u64..4, 1u64..4), 0..20)) {
            let pieces: u64 = runs.iter().map(|(_, n)| n).sum();
            let mut got = Vec::new();
            read_layer(&mut &encode_layer(&runs)[..], pieces, &mut |h, n| got.push((h, n))).unwrap();
            prop_assert_eq!(&got, &runs);
            prop_assert!(read_layer(&mut &encode_layer(&runs)[..], pieces + 1, &mut |_, _| ()).is_err());
            let mut needed = Needed::none();
            let mut at = 0;
            for (gap, n) in gaps {
                needed.add(at + gap + 1, n);
                at += gap + 1 + n;
            }
            let total = at + 1;
            let back = Needed::read(&mut &needed.encode()[..], total).unwrap();
            prop_assert_eq!(&back, &needed);
            prop_assert_eq!(needed.union(&needed), needed.clone());
            prop_assert_eq!(needed.union(&Needed::all(total)), Needed::all(total));
            for i in 0..total {
                let inside = needed.ranges().iter().any(|(f, n)| i >= *f && i < f + n);
                prop_assert_eq!(needed.contains(i), inside);
            }
        }
    }

    #[test]
    fn hostile_lists_are_refused() {
        let list = |ranges: &[(u64, u64)]| {
            let mut out = NEED_MAGIC.to_vec();
            out.extend_from_slice(&(ranges.len() as u32).to_be_bytes());
            for (f, n) in ranges {
                out.extend_from_slice(&f.to_be_bytes());
                out.extend_from_slice(&n.to_be_bytes());
            }
            out
        };
        for bad in [
            &[(0, 0)][..],
            &[(3, 1), (1, 1)],
            &[(0, 2), (2, 1)],
            &[(9, 2)],
            &[(0, u64::MAX)],
            &[(u64::MAX, 1)],
        ] {
            assert!(Needed::read(&mut &list(bad)[..], 10).is_err(), "{bad:?}");
        }
        let mut huge = NEED_MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(Needed::read(&mut &huge[..], 10).is_err());
        let mut zero_run = encode_layer(&[([1; 32], 2)]);
        zero_run[44..52].copy_from_slice(&0u64.to_be_bytes());
        assert!(read_layer(&mut &zero_run[..], 2, &mut |_, _| ()).is_err());
        let overflow = encode_layer(&[([1; 32], 2), ([2; 32], u64::MAX)]);
        assert!(read_layer(&mut &overflow[..], 3, &mut |_, _| ()).is_err());
    }
}
