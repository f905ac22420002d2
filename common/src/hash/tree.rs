//! The BitTorrent v2 (BEP 52) per-file root: SHA-256 over 16 KiB leaves, combined pairwise up a
//! binary tree whose leaf layer is padded to a power of two with all-zero hashes.
//!
//! Files are hashed a [`PIECE`] at a time: each piece's subtree root (its entry in a BEP 52
//! piece layer) is independent of every other, so pieces can be hashed on many threads and
//! folded in order into a [`Frontier`], which keeps only one node per tree height. A piece
//! that is all zeros (a hole) has a constant root, and so has every aligned run of 2^k of
//! them, so a hole of any length costs O(log n) hashes.

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// A leaf: 16 KiB, as BEP 52 fixes.
pub const LEAF: usize = 16 * 1024;
/// Leaves per piece, a power of two.
pub const PIECE_LEAVES: usize = 64;
/// The piece: 1 MiB, the unit hashed by one thread, kept for a resume, and compared in a
/// piece layer. A power of two times [`LEAF`], as BEP 52 requires.
pub const PIECE: u64 = (LEAF * PIECE_LEAVES) as u64;
/// log2 of [`PIECE_LEAVES`]: a piece's height above the leaves.
const PIECE_HEIGHT: usize = PIECE_LEAVES.trailing_zeros() as usize;

/// A 32-byte SHA-256 value.
pub type Hash = [u8; 32];

/// The digest of an empty file, which BEP 52 leaves undefined: SHA-256 of no bytes (the value
/// `sha256sum` prints for an empty file).
pub fn empty_root() -> Hash {
    Sha256::digest(b"").into()
}

/// SHA-256(left || right): an inner node.
pub fn join(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// SHA-256 of one leaf (at most [`LEAF`] bytes; only the file's last one may be shorter).
pub fn leaf(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

/// Nodes that never change: the padding of each height and the root of each run of zeros.
struct Constants {
    /// `pad[h]`: the root of 2^h padding leaves (all-zero hashes): `pad[0]` is 32 zero bytes.
    pad: Vec<Hash>,
    /// `zeros[k]`: the root of 2^k pieces of zeros (`zeros[0]`, the root of one zero piece).
    zeros: Vec<Hash>,
    /// The hash of a leaf of [`LEAF`] zero bytes.
    zero_leaf: Hash,
}

/// Heights up to which the tables go: 2^64 pieces are more than a u64 file can hold.
const HEIGHTS: usize = 64 + PIECE_HEIGHT + 1;

fn constants() -> &'static Constants {
    static TABLES: OnceLock<Constants> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut pad = vec![[0u8; 32]];
        for h in 1..HEIGHTS {
            pad.push(join(&pad[h - 1], &pad[h - 1]));
        }
        let zero_leaf = leaf(&[0u8; LEAF]);
        let mut node = zero_leaf;
        for _ in 0..PIECE_HEIGHT {
            node = join(&node, &node);
        }
        let mut zeros = vec![node];
        for k in 1..=64 {
            zeros.push(join(&zeros[k - 1], &zeros[k - 1]));
        }
        Constants {
            pad,
            zeros,
            zero_leaf,
        }
    })
}

/// Folds `n` leaf hashes (`n` at most `width`, a power of two) into the root of a subtree
/// `width` leaves wide, padding with zero hashes. Works in place.
fn fold_leaves(leaves: &mut [Hash], width: usize) -> Hash {
    debug_assert!(width.is_power_of_two() && leaves.len() <= width);
    let pad = &constants().pad;
    let (mut n, mut w, mut height) = (leaves.len(), width, 0);
    while w > 1 {
        let pairs = n.div_ceil(2);
        for i in 0..pairs {
            let right = if 2 * i + 1 < n {
                leaves[2 * i + 1]
            } else {
                pad[height]
            };
            leaves[i] = join(&leaves[2 * i], &right);
        }
        (n, w, height) = (pairs, w / 2, height + 1);
    }
    match n {
        0 => pad[height],
        _ => leaves[0],
    }
}

/// Hashes the leaves of one piece's bytes (at most [`PIECE`]), feeding them as they come.
#[derive(Clone)]
pub struct PieceHasher {
    leaves: Vec<Hash>,
    partial: Vec<u8>,
}

impl Default for PieceHasher {
    fn default() -> PieceHasher {
        PieceHasher::new()
    }
}

impl PieceHasher {
    /// A piece with nothing in it yet.
    pub fn new() -> PieceHasher {
        PieceHasher {
            leaves: Vec::with_capacity(PIECE_LEAVES),
            partial: Vec::new(),
        }
    }

    /// Adds the piece's next bytes.
    pub fn update(&mut self, mut bytes: &[u8]) {
        if !self.partial.is_empty() {
            let take = (LEAF - self.partial.len()).min(bytes.len());
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.partial.len() == LEAF {
                self.leaves.push(leaf(&self.partial));
                self.partial.clear();
            }
        }
        let mut blocks = bytes.chunks_exact(LEAF);
        for block in &mut blocks {
            self.leaves.push(leaf(block));
        }
        self.partial.extend_from_slice(blocks.remainder());
        debug_assert!(self.leaves.len() + usize::from(!self.partial.is_empty()) <= PIECE_LEAVES);
    }

    /// Adds `n` zero bytes (a hole): a whole leaf of them costs no hashing.
    pub fn zeros(&mut self, mut n: u64) {
        static ZEROS: [u8; LEAF] = [0; LEAF];
        while n > 0 {
            if self.partial.is_empty() && n >= LEAF as u64 {
                self.leaves.push(constants().zero_leaf);
                n -= LEAF as u64;
            } else {
                let take = ((LEAF - self.partial.len()) as u64).min(n) as usize;
                self.update(&ZEROS[..take]);
                n -= take as u64;
            }
        }
    }

    /// How many bytes the piece holds so far.
    pub fn len(&self) -> u64 {
        (self.leaves.len() * LEAF + self.partial.len()) as u64
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn close_leaf(&mut self) {
        if !self.partial.is_empty() {
            self.leaves.push(leaf(&self.partial));
            self.partial.clear();
        }
    }

    /// The piece's root: its entry in a piece layer, as BEP 52 pads a file's last piece (to
    /// [`PIECE_LEAVES`] leaves). Empties the hasher for the next piece.
    pub fn finish(&mut self) -> Hash {
        self.close_leaf();
        let root = fold_leaves(&mut self.leaves, PIECE_LEAVES);
        self.leaves.clear();
        root
    }

    /// The root of a whole file no longer than one piece: its leaves padded only to the next
    /// power of two, as BEP 52 does for a file of that size (the empty file: [`empty_root`]).
    pub fn finish_file(&mut self) -> Hash {
        self.close_leaf();
        let root = match self.leaves.len() {
            0 => empty_root(),
            n => fold_leaves(&mut self.leaves, n.next_power_of_two()),
        };
        self.leaves.clear();
        root
    }

    /// Both [`finish_file`](Self::finish_file) and [`finish`](Self::finish) of a file no
    /// longer than one piece: the file's root and its piece's, each leaf hashed once (hashing
    /// its last leaf twice doubled the work on every small file of a tree).
    pub fn finish_file_and_piece(&mut self) -> (Hash, Hash) {
        self.close_leaf();
        let piece = fold_leaves(&mut self.leaves.clone(), PIECE_LEAVES);
        (self.finish_file(), piece)
    }
}

/// The root of one piece of zeros (a whole piece in a hole).
pub fn zero_piece() -> Hash {
    constants().zeros[0]
}

/// Pieces folded in order: one node per height at most (the binary representation of how many
/// pieces came), so a file of any size takes a few KiB. Also what a resumed transfer goes on
/// from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    /// (height above the pieces, root), highest first; heights strictly decrease.
    nodes: Vec<(u32, Hash)>,
    /// Pieces folded so far.
    pieces: u64,
}

impl Frontier {
    /// Nothing folded yet.
    pub fn new() -> Frontier {
        Frontier::default()
    }

    /// How many pieces were folded.
    pub fn pieces(&self) -> u64 {
        self.pieces
    }

    /// Folds the next piece's root.
    pub fn push(&mut self, piece: &Hash) {
        self.push_node(0, *piece);
    }

    /// Folds `n` pieces of zeros, in O(log n) hashes.
    pub fn push_zeros(&mut self, mut n: u64) {
        while n > 0 {
            // The largest aligned run that starts here and fits.
            let align = if self.pieces == 0 {
                63
            } else {
                self.pieces.trailing_zeros()
            };
            let fits = 63 - n.leading_zeros();
            let k = align.min(fits);
            self.push_node(k, constants().zeros[k as usize]);
            n -= 1 << k;
        }
    }

    fn push_node(&mut self, height: u32, node: Hash) {
        let (mut height, mut node) = (height, node);
        self.pieces += 1 << height;
        while let Some(&(h, left)) = self.nodes.last() {
            if h != height {
                break;
            }
            self.nodes.pop();
            node = join(&left, &node);
            height += 1;
        }
        self.nodes.push((height, node));
    }

    /// The root of a file made of the pieces folded so far, its last one padded as BEP 52
    /// does, when the file has more than one piece. (A file of one piece or less: see
    /// [`PieceHasher::finish_file`].)
    pub fn root(&self) -> Hash {
        let pad = &constants().pad;
        let mut nodes = self.nodes.iter().rev();
        let Some(&(mut height, mut acc)) = nodes.next() else {
            return empty_root();
        };
        for &(h, left) in nodes {
            while height < h {
                acc = join(&acc, &pad[PIECE_HEIGHT + height as usize]);
                height += 1;
            }
            acc = join(&left, &acc);
            height += 1;
        }
        acc
    }
}

/// A whole file's root, from bytes fed in order (a stream, or a test): sequential, on the
/// calling thread.
#[derive(Default)]
pub struct TreeHasher {
    piece: PieceHasher,
    frontier: Frontier,
    len: u64,
}

impl TreeHasher {
    /// Nothing hashed yet.
    pub fn new() -> TreeHasher {
        TreeHasher::default()
    }

    /// Adds the next bytes.
    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.piece.len() == PIECE {
                let root = self.piece.finish();
                self.frontier.push(&root);
            }
            let take = ((PIECE - self.piece.len()) as usize).min(bytes.len());
            self.piece.update(&bytes[..take]);
            self.len += take as u64;
            bytes = &bytes[take..];
        }
    }

    /// The file's root.
    pub fn finalize(mut self) -> Hash {
        finish(&mut self.frontier, &mut self.piece)
    }
}

/// The root of a file whose pieces but the last are folded in `frontier`, and whose last piece
/// (possibly empty, when the file ends on a piece boundary) is in `last`.
pub fn finish(frontier: &mut Frontier, last: &mut PieceHasher) -> Hash {
    if frontier.pieces() == 0 {
        return last.finish_file();
    }
    if !last.is_empty() {
        let root = last.finish();
        frontier.push(&root);
    }
    frontier.root()
}

/// The root of one file held in memory.
pub fn root_of(bytes: &[u8]) -> Hash {
    let mut t = TreeHasher::new();
    t.update(bytes);
    t.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The BEP 52 root straight from its definition: every leaf, padded to a power of two.
    fn by_definition(bytes: &[u8]) -> Hash {
        if bytes.is_empty() {
            return empty_root();
        }
        let mut layer: Vec<Hash> = bytes.chunks(LEAF).map(leaf).collect();
        let width = layer.len().next_power_of_two();
        layer.resize(width, [0u8; 32]);
        while layer.len() > 1 {
            layer = layer.chunks(2).map(|p| join(&p[0], &p[1])).collect();
        }
        layer[0]
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8 ^ seed).collect()
    }

    #[test]
    fn matches_the_definition_at_the_edges() {
        let p = PIECE as usize;
        for n in [
            1,
            LEAF - 1,
            LEAF,
            LEAF + 1,
            3 * LEAF,
            p - 1,
            p,
            p + 1,
            2 * p,
            2 * p + LEAF,
            3 * p - 7,
            5 * p,
            8 * p + 1,
        ] {
            let data = pattern(n, 7);
            assert_eq!(root_of(&data), by_definition(&data), "size {n}");
        }
    }

    #[test]
    fn both_roots_of_a_one_piece_file_are_those_taken_apart() {
        let p = PIECE as usize;
        for n in [0, 1, LEAF - 1, LEAF, LEAF + 1, 3 * LEAF, p - 1, p] {
            let mut hasher = PieceHasher::new();
            hasher.update(&pattern(n, 9));
            let apart = (hasher.clone().finish_file(), hasher.clone().finish());
            assert_eq!(hasher.finish_file_and_piece(), apart, "size {n}");
            assert!(hasher.is_empty(), "size {n}: emptied for the next piece");
        }
    }

    #[test]
    fn the_empty_file_is_sha256_of_nothing() {
        assert_eq!(
            hex::encode(root_of(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn runs_of_zero_pieces_fold_as_the_pieces_would() {
        for before in [0u64, 1, 2, 3, 5, 8] {
            for run in [1u64, 2, 3, 4, 7, 9, 16, 33] {
                let mut fast = Frontier::new();
                let mut slow = Frontier::new();
                for i in 0..before {
                    let piece = leaf(&i.to_le_bytes());
                    fast.push(&piece);
                    slow.push(&piece);
                }
                fast.push_zeros(run);
                for _ in 0..run {
                    slow.push(&zero_piece());
                }
                fast.push(&[9u8; 32]);
                slow.push(&[9u8; 32]);
                assert_eq!(fast, slow, "{before} pieces, then {run} zeros");
                assert_eq!(fast.root(), slow.root());
            }
        }
    }

    #[test]
    fn a_hole_of_8_tib_takes_microseconds() {
        let mut f = Frontier::new();
        f.push(&[1u8; 32]);
        let start = std::time::Instant::now();
        f.push_zeros((8u64 << 40) / PIECE);
        let _ = f.root();
        // Not a timing threshold: a count of work. 2^23 pieces fold in at most 2 * 23 nodes.
        assert!(f.nodes.len() <= 24);
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn a_zero_piece_is_the_root_of_its_zeros() {
        let mut p = PieceHasher::new();
        p.update(&vec![0u8; PIECE as usize]);
        assert_eq!(p.finish(), zero_piece());
        // Zeros fed as a hole, in odd cuts around data, hash as the bytes would.
        let mut data = vec![0u8; PIECE as usize - 999];
        data[40_000..40_010].fill(3);
        let mut q = PieceHasher::new();
        q.zeros(40_000);
        q.update(&data[40_000..40_010]);
        q.zeros(data.len() as u64 - 40_010);
        let mut r = PieceHasher::new();
        r.update(&data);
        assert_eq!(q.finish(), r.finish());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn any_size_and_any_split_matches_the_definition(
            n in 0usize..(3 * PIECE as usize),
            cuts in proptest::collection::vec(0usize..(3 * PIECE as usize), 0..6),
        ) {
            let data = pattern(n, 3);
            let mut t = TreeHasher::new();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(n)).collect();
            cuts.sort();
            let mut at = 0;
            for c in cuts.into_iter().chain([n]) {
                t.update(&data[at..c]);
                at = c;
            }
            prop_assert_eq!(t.finalize(), by_definition(&data));
        }
    }
}
