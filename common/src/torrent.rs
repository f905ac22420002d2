//! A BitTorrent v2 (BEP 52, v2 only) `.torrent` of one file, from the digests the transfer
//! already computes: the file's tree root is its `pieces root`, and the roots of its
//! [`PIECE`]s (the `PieceLog` hashing fills) are its piece layer. No byte of the file
//! is read again.
//!
//! The metainfo is bencoded by a writer of its own (integers, byte strings, dictionaries with
//! keys sorted as raw byte strings): what BEP 52 needs of bencode is that small. Its bytes are
//! those libtorrent's `create_torrent(..., v2_only)` gives the same file with a piece length of
//! [`PIECE`], but for `created by` and `creation date`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::hash::{Prefix, PIECE};

/// The piece length of every torrent written here: the project's [`PIECE`], 1 MiB.
pub const PIECE_LENGTH: u64 = PIECE;

/// What `created by` says.
const CREATED_BY: &str = concat!("zsend ", env!("CARGO_PKG_VERSION"));

/// Everything a v2 .torrent of one file needs.
#[derive(Clone, Copy, Debug)]
pub struct TorrentFile<'a> {
    /// The file's name: the torrent's `name` and its one entry in the `file tree`.
    pub name: &'a str,
    /// The file's size in bytes.
    pub size: u64,
    /// The file's BEP 52 tree root (its `pieces root`).
    pub root: [u8; 32],
    /// The roots of its pieces in file order, runs of equal roots as one `(root, count)` entry,
    /// as `PieceLog::first` returns them. Used only for a file larger than one piece; the
    /// hashing logs none for a smaller one, whose root is its only hash.
    pub pieces: &'a [([u8; 32], u64)],
}

/// Why a file cannot be written as a torrent.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TorrentError {
    /// The file is empty. BEP 52 gives an empty file no `pieces root`, and a torrent of
    /// nothing else has no pieces: libtorrent refuses it ("invalid length of torrent").
    #[error("an empty file cannot be a BitTorrent v2 torrent")]
    Empty,
    /// The name is not one path component (empty, `.`, `..`, or with `/` or NUL).
    #[error("{0:?} is not a file name a torrent can carry")]
    Name(String),
    /// The piece roots are not one per [`PIECE_LENGTH`] of the file.
    #[error("{logged} piece roots for a file of {want} pieces")]
    Pieces {
        /// How many roots were given.
        logged: u64,
        /// ceil(size / [`PIECE_LENGTH`]).
        want: u64,
    },
    /// The piece roots do not hash up to the root: they are not this file's.
    #[error("the piece roots do not hash up to the file's root")]
    Layer,
}

/// The bencoded metainfo: `{"created by": "zsend <version>", "creation date": created,
/// "info": {"file tree": {name: {"": {"length": size, "pieces root": root}}}, "meta version": 2,
/// "name": name, "piece length": 1048576}, "piece layers": {root: the piece roots,
/// concatenated}}`, keys sorted as raw byte strings. `created` is in seconds since the Unix
/// epoch.
///
/// "piece layers" has an entry only for a file larger than one piece, but is always there
/// (empty otherwise), as libtorrent writes it. The piece roots are checked to number
/// ceil(size / 1 MiB) and to hash up to `root`.
pub fn encode(t: &TorrentFile, created: u64) -> Result<Vec<u8>, TorrentError> {
    if t.size == 0 {
        return Err(TorrentError::Empty);
    }
    if t.name.is_empty() || t.name == "." || t.name == ".." || t.name.contains(['/', '\0']) {
        return Err(TorrentError::Name(t.name.to_owned()));
    }
    if t.size > PIECE_LENGTH {
        let logged = t.pieces.iter().map(|(_, n)| n).sum();
        let want = t.size.div_ceil(PIECE_LENGTH);
        if logged != want {
            return Err(TorrentError::Pieces { logged, want });
        }
        if Prefix::of_pieces(t.pieces).digest() != t.root {
            return Err(TorrentError::Layer);
        }
    }
    let mut out = Vec::new();
    metainfo(t, created).write(&mut out);
    Ok(out)
}

/// The metainfo as [`encode`] writes it, unchecked (an empty file gets no `pieces root`).
fn metainfo<'a>(t: &'a TorrentFile, created: u64) -> Value<'a> {
    let mut attrs = vec![(&b"length"[..], Value::Int(t.size))];
    if t.size > 0 {
        attrs.push((b"pieces root", Value::Bytes(Cow::Borrowed(&t.root))));
    }
    let file = dict([(&b""[..], dict(attrs))]);
    let info = dict([
        (&b"file tree"[..], dict([(t.name.as_bytes(), file)])),
        (b"meta version", Value::Int(2)),
        (b"name", Value::Bytes(Cow::Borrowed(t.name.as_bytes()))),
        (b"piece length", Value::Int(PIECE_LENGTH)),
    ]);
    let mut layers = Vec::new();
    if t.size > PIECE_LENGTH {
        let mut layer = Vec::with_capacity(32 * t.size.div_ceil(PIECE_LENGTH) as usize);
        for (root, n) in t.pieces {
            (0..*n).for_each(|_| layer.extend_from_slice(root));
        }
        layers.push((&t.root[..], Value::Bytes(Cow::Owned(layer))));
    }
    dict([
        (
            &b"created by"[..],
            Value::Bytes(Cow::Borrowed(CREATED_BY.as_bytes())),
        ),
        (b"creation date", Value::Int(created)),
        (b"info", info),
        (b"piece layers", dict(layers)),
    ])
}

/// A bencoded value: what a v2 metainfo needs (no lists, no negative integers).
#[derive(Debug)]
enum Value<'a> {
    Int(u64),
    Bytes(Cow<'a, [u8]>),
    /// A map of byte slices iterates in raw byte order, the order bencode requires.
    Dict(BTreeMap<&'a [u8], Value<'a>>),
}

fn dict<'a>(entries: impl IntoIterator<Item = (&'a [u8], Value<'a>)>) -> Value<'a> {
    Value::Dict(entries.into_iter().collect())
}

impl Value<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int(i) => {
                out.push(b'i');
                out.extend_from_slice(i.to_string().as_bytes());
                out.push(b'e');
            }
            Value::Bytes(b) => write_bytes(b, out),
            Value::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    write_bytes(k, out);
                    v.write(out);
                }
                out.push(b'e');
            }
        }
    }
}

fn write_bytes(b: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::{empty_root, hash_from, PieceLog, Start, Watermark};
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    fn bencoded(v: &Value) -> String {
        let mut out = Vec::new();
        v.write(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn integers_and_byte_strings() {
        assert_eq!(bencoded(&Value::Int(0)), "i0e");
        assert_eq!(bencoded(&Value::Int(42)), "i42e");
        assert_eq!(bencoded(&Value::Int(u64::MAX)), "i18446744073709551615e");
        assert_eq!(bencoded(&Value::Bytes(Cow::Borrowed(b"spam"))), "4:spam");
        assert_eq!(bencoded(&Value::Bytes(Cow::Borrowed(b""))), "0:");
        let mut out = Vec::new();
        Value::Bytes(Cow::Owned(vec![0, 0xff, b':'])).write(&mut out);
        assert_eq!(out, b"3:\x00\xff:");
    }

    #[test]
    fn dictionary_keys_are_sorted_as_raw_bytes() {
        let v = dict([
            (&b"zeta"[..], Value::Int(1)),
            (b"aa", Value::Int(2)),
            (b"a", dict([])),
            (b"B", Value::Bytes(Cow::Borrowed(b"x"))),
            (b"\xff", Value::Int(3)),
            (b"creation date", Value::Int(4)),
            (b"created by", Value::Int(5)),
        ]);
        let mut out = Vec::new();
        v.write(&mut out);
        assert_eq!(
            out,
            &b"d1:B1:x1:ade2:aai2e10:created byi5e13:creation datei4e4:zetai1e1:\xffi3ee"[..]
        );
    }

    #[test]
    fn a_one_piece_file_byte_for_byte() {
        let t = TorrentFile {
            name: "a",
            size: 5,
            root: [b'r'; 32],
            pieces: &[],
        };
        let got = encode(&t, 1_700_000_000).unwrap();
        let root = "r".repeat(32);
        let want = format!(
            "d10:created by{}:{CREATED_BY}13:creation datei1700000000e4:infod9:file treed1:ad0:\
             d6:lengthi5e11:pieces root32:{root}eee12:meta versioni2e4:name1:a\
             12:piece lengthi1048576ee12:piece layersdee",
            CREATED_BY.len()
        );
        assert_eq!(String::from_utf8(got).unwrap(), want);
    }

    #[test]
    fn what_cannot_be_a_torrent_is_refused() {
        let t = |name, size, root, pieces| TorrentFile {
            name,
            size,
            root,
            pieces,
        };
        let e = empty_root();
        assert_eq!(encode(&t("e", 0, e, &[]), 0), Err(TorrentError::Empty));
        for name in ["", ".", "..", "a/b", "a\0"] {
            let want = Err(TorrentError::Name(name.into()));
            assert_eq!(encode(&t(name, 1, e, &[]), 0), want);
        }
        let (root, log) = digests(&data_file(3 * PIECE + 1), false);
        let want = Err(TorrentError::Pieces { logged: 3, want: 4 });
        let three = PieceLog::with(log.clone()).first(3);
        assert_eq!(encode(&t("f", 3 * PIECE + 1, root, &three), 0), want);
        let mut swapped = log.clone();
        swapped.swap(0, 1);
        let size = 3 * PIECE + 1;
        assert_eq!(
            encode(&t("f", size, root, &swapped), 0),
            Err(TorrentError::Layer)
        );
        assert!(encode(&t("f", size, root, &log), 0).is_ok());
    }

    /// Deterministic bytes that differ from piece to piece.
    fn pattern(len: u64, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn data_file(len: u64) -> File {
        let f = tempfile::tempfile().unwrap();
        f.write_all_at(&pattern(len, len), 0).unwrap();
        f
    }

    /// The file's root and its piece roots, as a transfer computes them.
    fn digests(file: &File, sparse: bool) -> ([u8; 32], Vec<([u8; 32], u64)>) {
        let len = file.metadata().unwrap().len();
        let log = PieceLog::default();
        let mark = Watermark::complete(len);
        let start = Start::Hashed(Prefix::empty());
        let (hashed, _) = hash_from(start, file, len, &mark, sparse, Some(&log));
        let root = hashed.unwrap().0.expect("nobody aborts this watermark");
        (root, log.first(u64::MAX))
    }

    /// Loads each torrent with libtorrent, compares it with libtorrent's own torrent of the
    /// same file, and checks the file (and a copy with one byte changed) against it.
    /// Arguments, 7 per file: torrent, dir, bad dir, root (hex), size, name, changed offset;
    /// then "empty" and a torrent libtorrent must refuse.
    const ORACLE: &str = r#"
import os, sys, time
import libtorrent as lt

PIECE = 1 << 20
WAIT = 30.0
cat = lt.alert.category_t
st = lt.torrent_status
ses = lt.session({
    'listen_interfaces': '127.0.0.1:0', 'enable_dht': False, 'enable_lsd': False,
    'enable_upnp': False, 'enable_natpmp': False,
    'alert_mask': cat.status_notification | cat.error_notification | cat.storage_notification,
})

def fail(msg):
    sys.exit('libtorrent oracle: ' + msg)

def check(path, save_path, what):
    """Adds the torrent over save_path (no seed mode, so every piece is hashed) and returns
    its status once libtorrent checked the files."""
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(path)
    atp.save_path = save_path
    atp.flags = 0  # not paused, not auto-managed, not seed mode
    h = ses.add_torrent(atp)
    deadline = time.monotonic() + WAIT
    checked = False
    while not checked:
        if time.monotonic() > deadline:
            fail(f'{what}: not checked within {WAIT} s: {h.status().state}')
        ses.wait_for_alert(100)
        for a in ses.pop_alerts():
            if isinstance(a, (lt.torrent_error_alert, lt.file_error_alert)):
                fail(f'{what}: {a.message()}')
            if isinstance(a, lt.torrent_checked_alert) and a.handle == h:
                checked = True
    while True:
        s = h.status()
        if s.state not in (st.checking_files, st.checking_resume_data, st.queued_for_checking):
            break
        if time.monotonic() > deadline:
            fail(f'{what}: still {s.state} after {WAIT} s')
        time.sleep(0.05)
    ses.remove_torrent(h)
    return s

def strip(d):
    return {k: v for k, v in d.items() if k not in (b'created by', b'creation date')}

args = sys.argv[1:]
while args:
    if args[0] == 'empty':
        try:
            lt.torrent_info(args[1])
        except RuntimeError as e:
            print(f'empty: refused ({e})')
        else:
            fail('libtorrent loads a torrent of an empty file')
        args = args[2:]
        continue
    path, good, bad, root, size, name, changed = args[:7]
    args = args[7:]
    size, changed = int(size), int(changed)
    pieces = -(-size // PIECE)
    raw = open(path, 'rb').read()
    ti = lt.torrent_info(path)
    ih = ti.info_hashes()
    if not ih.has_v2() or ih.has_v1():
        fail(f'{name}: not v2 only')
    fs = ti.files()
    # libtorrent pads a v2 file to a piece boundary with a pad file of its own making, which
    # total_size() counts: the data is what is not padding.
    pad = [i for i in range(fs.num_files()) if fs.file_flags(i) & fs.flag_pad_file]
    data = ti.total_size() - sum(fs.file_size(i) for i in pad)
    got = (fs.num_files() - len(pad), fs.file_path(0), fs.file_size(0), str(fs.root(0)), data,
           ti.name(), ti.piece_length(), ti.num_pieces())
    want = (1, name, size, root, size, name, PIECE, pieces)
    if got != want:
        fail(f'{name}: (files, path, size, root, data, name, piece length, pieces) {got} != {want}')
    ours = lt.bdecode(raw)
    if lt.bencode(ours) != raw:
        fail(f'{name}: not canonical bencode (keys unsorted?)')
    layers = ours[b'piece layers']
    want_layers = {bytes.fromhex(root): 32 * pieces} if size > PIECE else {}
    if {k: len(v) for k, v in layers.items()} != want_layers:
        fail(f'{name}: piece layers {[(k.hex(), len(v)) for k, v in layers.items()]}')
    lfs = lt.file_storage()
    lt.add_files(lfs, os.path.join(good, name))
    ct = lt.create_torrent(lfs, PIECE, flags=lt.create_torrent.v2_only)
    lt.set_piece_hashes(ct, good)
    theirs = lt.bencode(strip(ct.generate()))
    mine = lt.bencode(strip(ours))
    if mine != theirs:
        fail(f'{name}: differs from libtorrent create_torrent:\n ours   {mine[:400]}\n theirs {theirs[:400]}')
    s = check(path, good, name)
    if s.progress != 1.0 or not s.is_seeding or not all(s.pieces):
        fail(f'{name}: the file is not complete: {s.state}, progress {s.progress}')
    s = check(path, bad, name + ' with one byte changed')
    missing = [i for i, have in enumerate(s.pieces) if not have]
    if s.progress >= 1.0 or s.is_seeding or missing != [changed // PIECE]:
        fail(f'{name} with byte {changed} changed: progress {s.progress}, missing pieces {missing}')
    print(f'{name}: {size} bytes, {pieces} pieces, root {root}: same as libtorrent, complete; '
          f'byte {changed} changed: piece {missing[0]} fails')
"#;

    /// Runs the oracle over `args`, at most `limit`, and returns what it printed.
    fn oracle(args: &[String], dir: &Path, limit: Duration) -> String {
        let has = Command::new("/usr/bin/python3")
            .args(["-c", "import libtorrent"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            has,
            "/usr/bin/python3 cannot import libtorrent: run scripts/test, which installs \
             Debian's python3-libtorrent"
        );
        let (out, err) = (dir.join("oracle.out"), dir.join("oracle.err"));
        let mut child = Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(ORACLE)
            .args(args)
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > limit {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!("the libtorrent oracle ran past {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let (out, err) = (
            std::fs::read_to_string(out).unwrap(),
            std::fs::read_to_string(err).unwrap(),
        );
        assert!(status.success(), "{out}{err}");
        out
    }

    /// The files: name, size, where its data is (None: all of it), sparse, byte to change.
    type Case = (&'static str, u64, Option<&'static [(u64, u64)]>, u64);

    #[test]
    fn libtorrent_loads_the_torrents_and_finds_the_files_complete() {
        const BIG: u64 = 12 * PIECE + 777;
        let cases: [Case; 6] = [
            ("one.bin", 1, None, 0),
            ("leaf.bin", 16384, None, 9000),
            ("piece.bin", PIECE, None, PIECE - 1),
            ("piece-and-one.bin", PIECE + 1, None, PIECE),
            ("five.bin", 5 * PIECE + 12345, None, 5 * PIECE + 100),
            // Holes of whole pieces between data: runs of equal roots; the change is in a hole.
            (
                "sparse.img",
                BIG,
                Some(&[(0, 70_000), (9 * PIECE + 5, 100), (BIG - 7, 7)]),
                4 * PIECE + 3,
            ),
        ];
        let dir = tempfile::tempdir().unwrap();
        let mut args = Vec::new();
        for (i, &(name, size, data, changed)) in cases.iter().enumerate() {
            let good = dir.path().join(format!("good{i}"));
            let bad = dir.path().join(format!("bad{i}"));
            std::fs::create_dir(&good).unwrap();
            std::fs::create_dir(&bad).unwrap();
            let f = File::create_new(good.join(name)).unwrap();
            f.set_len(size).unwrap();
            for &(at, len) in data.unwrap_or(&[(0, size)]) {
                f.write_all_at(&pattern(len, size + at), at).unwrap();
            }
            let f = File::open(good.join(name)).unwrap();
            let (root, pieces) = digests(&f, data.is_some());
            if data.is_some() {
                assert!(pieces.iter().any(|&(_, n)| n > 1), "{pieces:?}");
            }
            let t = TorrentFile {
                name,
                size,
                root,
                pieces: &pieces,
            };
            let torrent = dir.path().join(format!("{name}.torrent"));
            std::fs::write(&torrent, encode(&t, 1_700_000_000 + i as u64).unwrap()).unwrap();
            std::fs::copy(good.join(name), bad.join(name)).unwrap();
            let b = File::options()
                .read(true)
                .write(true)
                .open(bad.join(name))
                .unwrap();
            let mut byte = [0u8];
            b.read_exact_at(&mut byte, changed).unwrap();
            b.write_all_at(&[byte[0] ^ 0x01], changed).unwrap();
            for arg in [&torrent, &good, &bad] {
                args.push(arg.to_str().unwrap().to_owned());
            }
            args.extend([hex::encode(root), size.to_string(), name.into()]);
            args.push(changed.to_string());
        }
        // What encode refuses, libtorrent refuses too.
        let empty = TorrentFile {
            name: "empty",
            size: 0,
            root: empty_root(),
            pieces: &[],
        };
        let mut bytes = Vec::new();
        metainfo(&empty, 0).write(&mut bytes);
        let path = dir.path().join("empty.torrent");
        std::fs::write(&path, bytes).unwrap();
        args.extend(["empty".into(), path.to_str().unwrap().to_owned()]);
        let out = oracle(&args, dir.path(), Duration::from_secs(180));
        eprint!("{out}");
        assert_eq!(out.lines().count(), cases.len() + 1, "{out}");
    }
}
