//! Wire protocol: the messages zsend and zrecv exchange, and bounded decoders for them.
//!
//! Every integer is big-endian. Every length read from the peer is checked against a fixed limit
//! before anything is allocated for it. docs/PROTOCOL.md describes the same bytes for humans.

use std::io::{self, Read};

use crate::auth::{Integrity, Seal, NONCE_LEN, PROOF_LEN};
use crate::error::ProtocolError;
use crate::name::{validate_name, MAX_NAME_LEN};

/// The protocol version this build speaks.
pub const VERSION: u16 = 8;
/// First bytes of a sender's hello.
pub const HELLO_MAGIC: [u8; 4] = *b"ZSND";
/// First bytes of the receiver's reply to a hello.
pub const REPLY_MAGIC: [u8; 4] = *b"ZRCV";
/// First bytes of the trailer that follows the payload.
pub const TRAILER_MAGIC: [u8; 4] = *b"ZTRL";
/// First bytes of the receiver's final verdict.
pub const VERDICT_MAGIC: [u8; 4] = *b"ZVRD";
/// First bytes of the sender's authentication proof.
pub const PROOF_MAGIC: [u8; 4] = *b"ZPRF";
/// First bytes of the sender's proof that it holds the prefix the receiver offers to resume.
pub const PREFIX_MAGIC: [u8; 4] = *b"ZPFX";
/// First bytes of the receiver's decision on a resume.
pub const DECISION_MAGIC: [u8; 4] = *b"ZDCD";
/// First bytes of a keepalive: "still here, still working". It may come wherever the peer
/// waits for the sender's next message while the sender hashes (before a trailer, before a
/// prefix proof, between a tree's frames).
pub const KEEPALIVE_MAGIC: [u8; 4] = *b"ZNOP";
/// A whole keepalive: its magic and five zero bytes (the length of a tree frame's head).
pub const KEEPALIVE: [u8; KEEPALIVE_LEN] = *b"ZNOP\0\0\0\0\0";
/// Size of a keepalive.
pub const KEEPALIVE_LEN: usize = 9;
/// Largest header body a receiver accepts.
pub const MAX_HEADER_LEN: u32 = 64 * 1024;
/// Largest human-readable message in a reply or verdict.
pub const MAX_MESSAGE_LEN: usize = 1024;
/// Size of the hello preamble: magic, version, header length.
pub const PREAMBLE_LEN: usize = 10;
/// Size of the fixed part of a header body, before the name.
pub const HEADER_FIXED_LEN: usize = 4 + 8 + 4 + 8 + 4 + 2;
/// Size of a trailer: magic, kind, digest, seal.
pub const TRAILER_LEN: usize = 4 + 1 + 32 + 32;

/// Header flag: the sender does not hash and asks the receiver not to either.
pub const FLAG_NO_VERIFY: u32 = 1;
/// Header flag: the sender holds a token; a 32-byte nonce follows the name.
pub const FLAG_AUTH: u32 = 2;
/// Header flag: the payload is a sequence of data and hole records (a sparse file); the
/// total of the data records follows the name as a u64.
pub const FLAG_SPARSE: u32 = 4;
/// Header flag: the length is not known up front (standard input); `size` is 0 and the payload
/// is data records until an end record.
pub const FLAG_STREAM: u32 = 8;
/// Header flag: the sender can resume into a partial file the receiver kept; a
/// [`SOURCE_ID_LEN`]-byte identity of the source file follows the sparse length.
pub const FLAG_RESUME: u32 = 16;
/// Header flag: many files and directories follow as a manifest (see `manifest`); `name` is a
/// label for logs and `size` the total of the files. `SPARSE`, `STREAM` and `RESUME` are per
/// entry then, and must be clear in the header.
pub const FLAG_TREE: u32 = 32;
/// Header flag: the receiver is asked to forward the file to further hosts (a chain); their
/// addresses follow the nonce. Not with `STREAM`, `RESUME` or `TREE`.
pub const FLAG_CHAIN: u32 = 64;
const KNOWN_FLAGS: u32 =
    FLAG_NO_VERIFY | FLAG_AUTH | FLAG_SPARSE | FLAG_STREAM | FLAG_RESUME | FLAG_TREE | FLAG_CHAIN;
/// Most hosts a chain may name after the first.
pub const MAX_HOPS: usize = 16;
/// Longest address of a host in a chain.
pub const MAX_HOP_LEN: usize = 255;
/// First bytes of the per-host reports that follow a chained transfer's verdict.
pub const HOPS_MAGIC: [u8; 4] = *b"ZHOP";
/// Length of the sender's identity of its source file.
pub const SOURCE_ID_LEN: usize = 16;
/// Size of a payload record header in sparse mode.
pub const RECORD_LEN: usize = 17;
/// Reply code of a receiver's authentication challenge.
const CHALLENGE_CODE: u8 = 0xC0;
/// Reply code of a receiver's offer to resume.
const RESUME_CODE: u8 = 0xC1;
/// Size of the sender's prefix proof.
pub const PREFIX_LEN: usize = 4 + 32;
/// Length of a resume offer's message: the offset and the receiver's nonce.
const RESUME_OFFER_LEN: usize = 8 + NONCE_LEN;

/// What the sender announces before the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// File name on the receiver: one path component (see [`validate_name`]).
    pub name: String,
    /// Exact number of payload bytes that follow the receiver's accept.
    pub size: u64,
    /// Unix permission bits of the source; the receiver keeps only 0o777.
    pub mode: u32,
    /// Modification time of the source, seconds since the epoch.
    pub mtime_sec: i64,
    /// Nanoseconds part of the modification time, below 1e9.
    pub mtime_nsec: u32,
    /// Header flags (`FLAG_*`).
    pub flags: u32,
    /// With `FLAG_RESUME`: the sender's identity of its source (see `send::source_id`), so
    /// that a partial file is only reused for the file it came from.
    pub source_id: Option<[u8; SOURCE_ID_LEN]>,
    /// The sender's fresh nonce when it authenticates with a token (`FLAG_AUTH`).
    pub auth_nonce: Option<[u8; NONCE_LEN]>,
    /// With `FLAG_CHAIN`: the hosts (`HOST:PORT`) the receiver forwards to, next one first.
    pub chain: Option<Vec<String>>,
    /// For a sparse payload (`FLAG_SPARSE`): the bytes of data records, holes excluded.
    pub sparse_data_len: Option<u64>,
}

impl Header {
    /// A plain header for `size` bytes named `name`: mode 0644, mtime 0, verified, dense, no
    /// token. Fields are public for everything else.
    pub fn new(name: &str, size: u64) -> Header {
        Header {
            name: name.to_owned(),
            size,
            mode: 0o644,
            mtime_sec: 0,
            mtime_nsec: 0,
            flags: 0,
            source_id: None,
            auth_nonce: None,
            sparse_data_len: None,
            chain: None,
        }
    }

    /// Whether the sender asked for SHA-256 verification.
    pub fn verify(&self) -> bool {
        self.flags & FLAG_NO_VERIFY == 0
    }

    /// Whether the sender offers to resume (`FLAG_RESUME`, with a source identity).
    pub fn resumable(&self) -> bool {
        self.source_id.is_some()
    }

    /// Whether a manifest of many entries follows (`FLAG_TREE`).
    pub fn tree(&self) -> bool {
        self.flags & FLAG_TREE != 0
    }

    /// Whether the length is unknown up front (`FLAG_STREAM`).
    pub fn stream(&self) -> bool {
        self.flags & FLAG_STREAM != 0
    }

    /// The complete hello: preamble followed by the header body. `FLAG_AUTH`, `FLAG_SPARSE`
    /// and `FLAG_RESUME` are set exactly when their fields are present.
    pub fn encode_hello(&self) -> Vec<u8> {
        let nonce_len = self.auth_nonce.map_or(0, |n| n.len());
        let sparse_len = self.sparse_data_len.map_or(0, |_| 8);
        let id_len = self.source_id.map_or(0, |i| i.len());
        let chain_len = self
            .chain
            .as_ref()
            .map_or(0, |c| 1 + c.iter().map(|h| 2 + h.len()).sum::<usize>());
        let body_len =
            HEADER_FIXED_LEN + self.name.len() + sparse_len + id_len + nonce_len + chain_len;
        let mut flags = self.flags & !(FLAG_AUTH | FLAG_SPARSE | FLAG_RESUME | FLAG_CHAIN);
        if self.chain.is_some() {
            flags |= FLAG_CHAIN;
        }
        if self.auth_nonce.is_some() {
            flags |= FLAG_AUTH;
        }
        if self.sparse_data_len.is_some() {
            flags |= FLAG_SPARSE;
        }
        if self.source_id.is_some() {
            flags |= FLAG_RESUME;
        }
        let mut out = Vec::with_capacity(PREAMBLE_LEN + body_len);
        out.extend_from_slice(&HELLO_MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&(body_len as u32).to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.mode.to_be_bytes());
        out.extend_from_slice(&self.mtime_sec.to_be_bytes());
        out.extend_from_slice(&self.mtime_nsec.to_be_bytes());
        out.extend_from_slice(&(self.name.len() as u16).to_be_bytes());
        out.extend_from_slice(self.name.as_bytes());
        if let Some(d) = self.sparse_data_len {
            out.extend_from_slice(&d.to_be_bytes());
        }
        if let Some(id) = &self.source_id {
            out.extend_from_slice(id);
        }
        if let Some(n) = &self.auth_nonce {
            out.extend_from_slice(n);
        }
        if let Some(chain) = &self.chain {
            out.push(chain.len() as u8);
            for hop in chain {
                out.extend_from_slice(&(hop.len() as u16).to_be_bytes());
                out.extend_from_slice(hop.as_bytes());
            }
        }
        out
    }

    /// Decodes a header body (what follows the preamble), checking every field.
    pub fn decode_body(body: &[u8]) -> Result<Header, ProtocolError> {
        let mut r = Cursor::new(body);
        let flags = r.u32()?;
        let size = r.u64()?;
        let mode = r.u32()?;
        let mtime_sec = r.u64()? as i64;
        let mtime_nsec = r.u32()?;
        let name_len = r.u16()? as usize;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(ProtocolError::Malformed(format!(
                "unknown header flags {:#x}",
                flags & !KNOWN_FLAGS
            )));
        }
        if flags & FLAG_STREAM != 0 && (size != 0 || flags & (FLAG_SPARSE | FLAG_RESUME) != 0) {
            return Err(ProtocolError::Malformed(
                "a stream has size 0, no sparse records and no resume".into(),
            ));
        }
        if flags & FLAG_TREE != 0 && flags & (FLAG_SPARSE | FLAG_STREAM | FLAG_RESUME) != 0 {
            return Err(ProtocolError::Malformed(
                "a tree's sparse files and resumes are per entry".into(),
            ));
        }
        let not_chained = FLAG_STREAM | FLAG_RESUME | FLAG_TREE | FLAG_SPARSE;
        if flags & FLAG_CHAIN != 0 && flags & not_chained != 0 {
            return Err(ProtocolError::Malformed(
                "a chain carries one dense file, not resumed".into(),
            ));
        }
        if flags & FLAG_RESUME != 0 && flags & FLAG_NO_VERIFY != 0 {
            return Err(ProtocolError::Malformed(
                "resuming needs verification: a prefix is trusted only by its digest".into(),
            ));
        }
        if mtime_nsec >= 1_000_000_000 {
            return Err(ProtocolError::Malformed(format!(
                "mtime nanoseconds {mtime_nsec} out of range"
            )));
        }
        if name_len > MAX_NAME_LEN {
            return Err(ProtocolError::NameTooLong(name_len));
        }
        let name_bytes = r.take(name_len)?;
        let sparse_data_len = match flags & FLAG_SPARSE {
            0 => None,
            _ => Some(r.u64()?),
        };
        if sparse_data_len.is_some_and(|d| d > size) {
            return Err(ProtocolError::Malformed(
                "sparse data length exceeds the file size".into(),
            ));
        }
        let source_id = match flags & FLAG_RESUME {
            0 => None,
            _ => Some(r.array::<SOURCE_ID_LEN>()?),
        };
        let auth_nonce = match flags & FLAG_AUTH {
            0 => None,
            _ => Some(r.array::<NONCE_LEN>()?),
        };
        let chain = match flags & FLAG_CHAIN {
            0 => None,
            _ => Some(read_chain(&mut r)?),
        };
        if !r.rest().is_empty() {
            return Err(ProtocolError::Malformed(format!(
                "{} unexpected bytes after the name",
                r.rest().len()
            )));
        }
        let name = std::str::from_utf8(name_bytes)
            .map_err(|_| ProtocolError::BadName(crate::name::NameError::NotUtf8))?
            .to_owned();
        validate_name(&name).map_err(ProtocolError::BadName)?;
        Ok(Header {
            name,
            size,
            mode,
            mtime_sec,
            mtime_nsec,
            flags,
            source_id,
            auth_nonce,
            sparse_data_len,
            chain,
        })
    }
}

/// Reads a chain's hosts: a count of 1 to [`MAX_HOPS`], then each as a u16 length and UTF-8.
fn read_chain(r: &mut Cursor) -> Result<Vec<String>, ProtocolError> {
    let count = r.array::<1>()?[0] as usize;
    if count == 0 || count > MAX_HOPS {
        return Err(ProtocolError::Malformed(format!(
            "a chain of {count} hosts (1 to {MAX_HOPS})"
        )));
    }
    let mut hops = Vec::with_capacity(count);
    for _ in 0..count {
        let len = r.u16()? as usize;
        if len == 0 || len > MAX_HOP_LEN {
            return Err(ProtocolError::Malformed(format!("a host of {len} bytes")));
        }
        let hop = std::str::from_utf8(r.take(len)?)
            .map_err(|_| ProtocolError::Malformed("a host that is not UTF-8".into()))?;
        check_hop(hop).map_err(ProtocolError::Malformed)?;
        hops.push(hop.to_owned());
    }
    Ok(hops)
}

/// Checks the hosts a chain may name after the first receiver: 1 to [`MAX_HOPS`] of them, each
/// 1 to [`MAX_HOP_LEN`] bytes without control characters. Senders check before connecting, so
/// that nothing they send could be cut or wrapped.
pub fn check_chain(hops: &[String]) -> Result<(), String> {
    if hops.len() > MAX_HOPS {
        return Err(format!(
            "a chain reaches at most {} hosts (the first and {MAX_HOPS} after it); {} were given",
            MAX_HOPS + 1,
            hops.len() + 1
        ));
    }
    hops.iter().try_for_each(|h| check_hop(h))
}

fn check_hop(hop: &str) -> Result<(), String> {
    if hop.is_empty() || hop.len() > MAX_HOP_LEN {
        return Err(format!(
            "a host of {} bytes (1 to {MAX_HOP_LEN})",
            hop.len()
        ));
    }
    if hop.chars().any(char::is_control) {
        return Err(format!(
            "the host {} has a control character",
            crate::name::Escaped(hop)
        ));
    }
    Ok(())
}

/// What became of the file on one host of a chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HopReport {
    /// The host as the chain named it.
    pub host: String,
    /// Its verdict; `Failed` with a reason when it was not reached or did not report.
    pub verdict: Verdict,
}

impl HopReport {
    /// The report of a host that did not land the file, for `why`.
    pub fn failed(host: &str, why: &str) -> HopReport {
        HopReport {
            host: host.to_owned(),
            verdict: Verdict::failed(why),
        }
    }
}

/// Encodes the reports of the hosts after this one, in chain order.
pub fn encode_hops(hops: &[HopReport]) -> Vec<u8> {
    debug_assert!(
        hops.len() <= MAX_HOPS,
        "a chain is checked before it starts"
    );
    let mut out = HOPS_MAGIC.to_vec();
    out.push(hops.len().min(MAX_HOPS) as u8);
    for h in hops.iter().take(MAX_HOPS) {
        let host = clip(&h.host);
        out.extend_from_slice(&(host.len() as u16).to_be_bytes());
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(&h.verdict.encode());
    }
    out
}

/// Reads the reports of a chain's further hosts: at most [`MAX_HOPS`].
pub fn read_hops(r: &mut impl Read) -> Result<Vec<HopReport>, ProtocolError> {
    let mut head = [0u8; 5];
    read_exact(r, &mut head, "chain reports")?;
    if head[..4] != HOPS_MAGIC {
        return Err(ProtocolError::Malformed(
            "chain reports magic missing".into(),
        ));
    }
    let count = head[4] as usize;
    if count > MAX_HOPS {
        return Err(ProtocolError::Malformed(format!("{count} chain reports")));
    }
    let mut hops = Vec::with_capacity(count);
    for _ in 0..count {
        let mut len = [0u8; 2];
        read_exact(r, &mut len, "chain report")?;
        let host = read_message(r, u16::from_be_bytes(len), "chain report")?;
        hops.push(HopReport {
            host,
            verdict: Verdict::read(r)?,
        });
    }
    Ok(hops)
}

/// Matches the reports a chain sent back with the hosts that were asked for, in order: host
/// `k` gets report `k` only if that report names it. A host without its report (fewer came
/// back, or another name stands in its place) gets a failure; reports beyond the hosts asked
/// for are dropped. Returns the reports, one per host asked for, and how many did not match.
pub fn align_hops(asked: &[String], got: Vec<HopReport>) -> (Vec<HopReport>, usize) {
    let mut got = got.into_iter();
    let mut unmatched = 0;
    let aligned = asked
        .iter()
        .map(|host| match got.next() {
            Some(r) if r.host == *host => r,
            Some(r) => {
                unmatched += 1;
                let why = format!(
                    "did not report (the chain reported {} in its place)",
                    crate::name::Escaped(&r.host)
                );
                HopReport::failed(host, &why)
            }
            None => {
                unmatched += 1;
                HopReport::failed(host, "did not report (the chain's reports end before it)")
            }
        })
        .collect();
    (aligned, unmatched + got.count())
}

/// One record of a sparse payload: data (followed by `len` bytes), a hole, or the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// `len` bytes of file content at `offset` follow.
    Data {
        /// Where the bytes go.
        offset: u64,
        /// How many follow, at least 1.
        len: u64,
    },
    /// `len` bytes of zeros at `offset`, not sent.
    Hole {
        /// Where the hole starts.
        offset: u64,
        /// Its length, at least 1.
        len: u64,
    },
    /// No more records: the trailer follows.
    End,
}

impl Record {
    /// Encodes the record header.
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let (kind, offset, len) = match *self {
            Record::End => (0u8, 0, 0),
            Record::Data { offset, len } => (1, offset, len),
            Record::Hole { offset, len } => (2, offset, len),
        };
        let mut out = [0u8; RECORD_LEN];
        out[0] = kind;
        out[1..9].copy_from_slice(&offset.to_be_bytes());
        out[9..].copy_from_slice(&len.to_be_bytes());
        out
    }

    /// Reads a record header, refusing unknown kinds and empty data or holes.
    pub fn read(r: &mut impl Read) -> Result<Record, ProtocolError> {
        let mut buf = [0u8; RECORD_LEN];
        read_exact(r, &mut buf, "sparse record")?;
        let offset = u64::from_be_bytes(buf[1..9].try_into().expect("8 bytes"));
        let len = u64::from_be_bytes(buf[9..].try_into().expect("8 bytes"));
        match buf[0] {
            0 if offset == 0 && len == 0 => Ok(Record::End),
            1 | 2 if len == 0 => Err(ProtocolError::Malformed("empty sparse record".into())),
            1 => Ok(Record::Data { offset, len }),
            2 => Ok(Record::Hole { offset, len }),
            k => Err(ProtocolError::Malformed(format!("unknown record kind {k}"))),
        }
    }
}

/// Reads the hello preamble and returns the header body length, refusing bad magic, unknown
/// versions and oversized headers before allocating anything.
pub fn read_preamble(r: &mut impl Read) -> Result<u32, ProtocolError> {
    let mut pre = [0u8; PREAMBLE_LEN];
    read_exact(r, &mut pre, "hello")?;
    let magic: [u8; 4] = pre[0..4].try_into().expect("4 bytes");
    if magic != HELLO_MAGIC {
        return Err(ProtocolError::BadMagic(magic));
    }
    let version = u16::from_be_bytes([pre[4], pre[5]]);
    if version != VERSION {
        return Err(ProtocolError::UnsupportedVersion(version));
    }
    let len = u32::from_be_bytes(pre[6..10].try_into().expect("4 bytes"));
    if len > MAX_HEADER_LEN {
        return Err(ProtocolError::HeaderTooLong(len));
    }
    Ok(len)
}

/// Reads and decodes a whole hello (preamble and header body).
pub fn read_hello(r: &mut impl Read) -> Result<Header, ProtocolError> {
    let len = read_preamble(r)?;
    let mut body = vec![0u8; len as usize];
    read_exact(r, &mut body, "header")?;
    Header::decode_body(&body)
}

/// Why a receiver refuses a transfer before any payload flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefuseCode {
    /// The hello was not zsend's, or of a version this receiver does not speak.
    Unsupported,
    /// The header was malformed or out of bounds.
    BadHeader,
    /// The name is not a single safe path component.
    BadName,
    /// The final name exists and the receiver does not replace files.
    Exists,
    /// The destination has less free space than the file needs.
    NoSpace,
    /// The receiver serves as many transfers as it allows, or this name is being received.
    Busy,
    /// The receiver could not prepare the destination.
    Io,
    /// The receiver requires a token and the sender had none, or the wrong one.
    Auth,
    /// The receiver does not forward, or not to the next host of the chain.
    Forward,
    /// A code from a newer receiver.
    Other(u8),
}

impl RefuseCode {
    pub(crate) fn to_byte(self) -> u8 {
        match self {
            RefuseCode::Unsupported => 1,
            RefuseCode::BadHeader => 2,
            RefuseCode::BadName => 3,
            RefuseCode::Exists => 4,
            RefuseCode::NoSpace => 5,
            RefuseCode::Busy => 6,
            RefuseCode::Io => 7,
            RefuseCode::Auth => 8,
            RefuseCode::Forward => 9,
            RefuseCode::Other(b) => b,
        }
    }

    pub(crate) fn from_byte(b: u8) -> RefuseCode {
        match b {
            1 => RefuseCode::Unsupported,
            2 => RefuseCode::BadHeader,
            3 => RefuseCode::BadName,
            4 => RefuseCode::Exists,
            5 => RefuseCode::NoSpace,
            6 => RefuseCode::Busy,
            7 => RefuseCode::Io,
            8 => RefuseCode::Auth,
            9 => RefuseCode::Forward,
            b => RefuseCode::Other(b),
        }
    }
}

/// The receiver's answer to a hello (and, after a challenge, to the sender's proof).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Send the payload.
    Accept,
    /// Do not; the message says why, for a human.
    Refuse(RefuseCode, String),
    /// Prove you know the token: the receiver's nonce, and its own proof.
    Challenge {
        /// The receiver's fresh nonce.
        nonce: [u8; NONCE_LEN],
        /// The receiver's proof (see `auth::proof`).
        proof: [u8; PROOF_LEN],
    },
    /// The receiver holds the first `offset` bytes of this very file from an interrupted
    /// transfer: the sender proves it holds the same bytes with a [`PrefixProof`] keyed with
    /// `nonce`, and the receiver answers with a [`Decision`].
    Resume {
        /// How many bytes the receiver's partial file holds, at most the size.
        offset: u64,
        /// A fresh nonce that keys the sender's proof, so that the proof cannot be computed
        /// without the bytes (nor replayed from another connection).
        nonce: [u8; NONCE_LEN],
    },
}

impl Reply {
    /// Encodes the reply.
    pub fn encode(&self) -> Vec<u8> {
        let body: Vec<u8>;
        let (code, msg): (u8, &[u8]) = match self {
            Reply::Resume { offset, nonce } => {
                body = [&offset.to_be_bytes()[..], nonce].concat();
                (RESUME_CODE, &body)
            }
            Reply::Accept => (0, b""),
            Reply::Refuse(code, msg) => (code.to_byte(), clip(msg).as_bytes()),
            Reply::Challenge { nonce, proof } => {
                body = [nonce.as_slice(), proof.as_slice()].concat();
                (CHALLENGE_CODE, &body)
            }
        };
        let mut out = Vec::with_capacity(9 + msg.len());
        out.extend_from_slice(&REPLY_MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.push(code);
        out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        out.extend_from_slice(msg);
        out
    }

    /// Reads a reply. A receiver of another version still answers in this layout, so its
    /// refusal can be shown.
    pub fn read(r: &mut impl Read) -> Result<Reply, ProtocolError> {
        let mut head = [0u8; 9];
        read_exact(r, &mut head, "receiver's reply")?;
        let magic: [u8; 4] = head[0..4].try_into().expect("4 bytes");
        if magic != REPLY_MAGIC {
            return Err(ProtocolError::BadMagic(magic));
        }
        let code = head[6];
        let version = u16::from_be_bytes([head[4], head[5]]);
        let msg = read_bytes(r, u16::from_be_bytes([head[7], head[8]]), "reply")?;
        // A receiver of another version may only refuse (its message says why).
        if version != VERSION && matches!(code, 0 | CHALLENGE_CODE | RESUME_CODE) {
            return Err(ProtocolError::Malformed(format!(
                "a reply of protocol version {version} (this side speaks {VERSION})"
            )));
        }
        match code {
            0 if msg.is_empty() => Ok(Reply::Accept),
            0 => Err(ProtocolError::Malformed(format!(
                "an accept with {} bytes of message",
                msg.len()
            ))),
            CHALLENGE_CODE => {
                if msg.len() != NONCE_LEN + PROOF_LEN {
                    return Err(ProtocolError::Malformed(format!(
                        "challenge of {} bytes",
                        msg.len()
                    )));
                }
                Ok(Reply::Challenge {
                    nonce: msg[..NONCE_LEN].try_into().expect("32 bytes"),
                    proof: msg[NONCE_LEN..].try_into().expect("32 bytes"),
                })
            }
            RESUME_CODE => {
                if msg.len() != RESUME_OFFER_LEN {
                    return Err(ProtocolError::Malformed(format!(
                        "resume offer of {} bytes",
                        msg.len()
                    )));
                }
                Ok(Reply::Resume {
                    offset: u64::from_be_bytes(msg[..8].try_into().expect("8 bytes")),
                    nonce: msg[8..].try_into().expect("32 bytes"),
                })
            }
            c => Ok(Reply::Refuse(
                RefuseCode::from_byte(c),
                String::from_utf8_lossy(&msg).into_owned(),
            )),
        }
    }
}

/// The sender's proof that the first `offset` bytes of its file are the receiver's partial:
/// an HMAC keyed with the receiver's fresh nonce over the SHA-256 of those bytes (see
/// `auth::prefix_proof`). Only a sender that read the bytes can compute it, and it tells an
/// eavesdropper nothing it could extend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixProof(pub [u8; 32]);

impl PrefixProof {
    /// Encodes the message.
    pub fn encode(&self) -> [u8; PREFIX_LEN] {
        let mut out = [0u8; PREFIX_LEN];
        out[..4].copy_from_slice(&PREFIX_MAGIC);
        out[4..].copy_from_slice(&self.0);
        out
    }

    /// Reads the message, after any keepalives the sender sent while it hashed.
    pub fn read(r: &mut impl Read) -> Result<PrefixProof, ProtocolError> {
        let mut buf = [0u8; PREFIX_LEN];
        read_after_keepalives(r, &mut buf, "resume proof", &mut || {})?;
        if buf[..4] != PREFIX_MAGIC {
            return Err(ProtocolError::Malformed(
                "resume proof magic missing".into(),
            ));
        }
        Ok(PrefixProof(buf[4..].try_into().expect("32 bytes")))
    }
}

/// The receiver's decision on a resume: go on from the offer's offset, or start over from
/// byte 0 because the sender's proof does not match its partial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The prefixes match: the payload starts at the offered offset.
    Resume,
    /// They do not (or the partial could not be read back): the receiver has emptied its
    /// file and the payload starts at 0.
    Restart,
}

impl Decision {
    /// Encodes the decision.
    pub fn encode(self) -> [u8; 5] {
        let mut out = [0u8; 5];
        out[..4].copy_from_slice(&DECISION_MAGIC);
        out[4] = match self {
            Decision::Restart => 0,
            Decision::Resume => 1,
        };
        out
    }

    /// Reads and checks the decision.
    pub fn read(r: &mut impl Read) -> Result<Decision, ProtocolError> {
        let mut buf = [0u8; 5];
        read_exact(r, &mut buf, "resume decision")?;
        if buf[..4] != DECISION_MAGIC {
            return Err(ProtocolError::Malformed(
                "resume decision magic missing".into(),
            ));
        }
        match buf[4] {
            0 => Ok(Decision::Restart),
            1 => Ok(Decision::Resume),
            k => Err(ProtocolError::Malformed(format!(
                "unknown resume decision {k}"
            ))),
        }
    }
}

/// Reads `buf.len()` bytes of a message that may be preceded by keepalives: each
/// [`KEEPALIVE`] is checked, skipped, and told to `on_keepalive`. `buf` must be at least 4
/// bytes (a magic).
pub(crate) fn read_after_keepalives(
    r: &mut impl Read,
    buf: &mut [u8],
    what: &'static str,
    on_keepalive: &mut dyn FnMut(),
) -> Result<(), ProtocolError> {
    loop {
        read_exact(r, &mut buf[..4], what)?;
        if buf[..4] != KEEPALIVE_MAGIC {
            break;
        }
        let mut rest = [0u8; KEEPALIVE_LEN - 4];
        read_exact(r, &mut rest, what)?;
        if rest != [0; KEEPALIVE_LEN - 4] {
            return Err(ProtocolError::Malformed("a keepalive with content".into()));
        }
        on_keepalive();
    }
    read_exact(r, &mut buf[4..], what)
}

/// What follows the payload: the sender's SHA-256 (sealed with the connection's integrity key
/// when both sides hold a token), or nothing when not verifying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// The sender's digest of the bytes it read, if it hashed.
    pub sha256: Option<[u8; 32]>,
    /// The seal of that digest (see `auth::Integrity`); zeros without a token or a digest.
    pub seal: [u8; 32],
}

/// Trailer kind of a file the sender gave up on because it changed while being sent, after
/// the whole payload went out: the receiver discards what it got.
const ABANDONED: u8 = 2;

impl Trailer {
    /// A trailer with `sha256` and no seal.
    pub fn unsealed(sha256: Option<[u8; 32]>) -> Trailer {
        Trailer {
            sha256,
            seal: [0; 32],
        }
    }

    /// A trailer with `sha256` sealed for entry `index` (0 for a single file).
    pub fn sealed(sha256: Option<[u8; 32]>, integrity: &Integrity, index: u32) -> Trailer {
        Trailer {
            sha256,
            seal: sha256.map_or([0; 32], |d| integrity.seal(Seal::Trailer, index, 1, &d)),
        }
    }

    /// Whether the trailer's seal matches its digest for entry `index` (always without a
    /// digest, and without a key when the seal is zeros).
    pub fn opens(&self, integrity: &Integrity, index: u32) -> bool {
        self.sha256
            .is_none_or(|d| integrity.opens(Seal::Trailer, index, 1, &d, &self.seal))
    }

    /// Encodes the trailer.
    pub fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut out = [0u8; TRAILER_LEN];
        out[0..4].copy_from_slice(&TRAILER_MAGIC);
        if let Some(d) = &self.sha256 {
            out[4] = 1;
            out[5..37].copy_from_slice(d);
            out[37..].copy_from_slice(&self.seal);
        }
        out
    }

    /// A trailer saying the source changed while it was sent: discard what came.
    pub fn abandoned() -> [u8; TRAILER_LEN] {
        let mut out = [0u8; TRAILER_LEN];
        out[0..4].copy_from_slice(&TRAILER_MAGIC);
        out[4] = ABANDONED;
        out
    }

    /// Reads and checks a trailer, after any keepalives the sender sent while it hashed.
    /// An abandoned trailer is [`ProtocolError::Abandoned`].
    pub fn read(r: &mut impl Read) -> Result<Trailer, ProtocolError> {
        Trailer::read_telling(r, &mut || {})
    }

    /// As [`Trailer::read`], telling `on_keepalive` of each keepalive before it (a forwarding
    /// receiver passes them on).
    pub fn read_telling(
        r: &mut impl Read,
        on_keepalive: &mut dyn FnMut(),
    ) -> Result<Trailer, ProtocolError> {
        let mut buf = [0u8; TRAILER_LEN];
        read_after_keepalives(r, &mut buf, "trailer", on_keepalive)?;
        Trailer::decode(&buf)
    }

    /// Decodes a trailer from its fixed-size bytes.
    pub fn decode(buf: &[u8; TRAILER_LEN]) -> Result<Trailer, ProtocolError> {
        let magic: [u8; 4] = buf[0..4].try_into().expect("4 bytes");
        if magic != TRAILER_MAGIC {
            return Err(ProtocolError::Malformed(
                "trailer magic missing after the payload (more or fewer bytes than declared?)"
                    .into(),
            ));
        }
        let digest: [u8; 32] = buf[5..37].try_into().expect("32 bytes");
        let seal: [u8; 32] = buf[37..].try_into().expect("32 bytes");
        let empty = digest == [0; 32] && seal == [0; 32];
        match buf[4] {
            0 if empty => Ok(Trailer::unsealed(None)),
            1 => Ok(Trailer {
                sha256: Some(digest),
                seal,
            }),
            ABANDONED if empty => Err(ProtocolError::Abandoned),
            k => Err(ProtocolError::Malformed(format!("unknown digest kind {k}"))),
        }
    }
}

/// The receiver's final word on a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Written, durable and published under its name (verified when both sides hashed).
    Landed,
    /// The digests differ; nothing was published.
    Mismatch,
    /// The receiver failed to land the file; nothing was published.
    Failed,
}

impl Status {
    /// The status byte on the wire.
    pub fn to_byte(self) -> u8 {
        match self {
            Status::Landed => 0,
            Status::Mismatch => 1,
            Status::Failed => 2,
        }
    }
}

/// The verdict the receiver sends after the trailer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The outcome.
    pub status: Status,
    /// The receiver's digest of what it wrote, if it hashed.
    pub sha256: Option<[u8; 32]>,
    /// The seal of that digest (see `auth::Integrity`); zeros without a token or a digest.
    pub seal: [u8; 32],
    /// A human explanation for anything but `Landed`.
    pub message: String,
}

/// Size of a verdict before its message.
const VERDICT_HEAD_LEN: usize = 4 + 1 + 1 + 32 + 32 + 2;

impl Verdict {
    /// A failure without a digest, for `why`.
    pub fn failed(why: &str) -> Verdict {
        Verdict {
            status: Status::Failed,
            sha256: None,
            seal: [0; 32],
            message: why.to_owned(),
        }
    }

    /// The verdict with its status and digest sealed as `what` for `index`.
    pub fn sealed(mut self, integrity: &Integrity, what: Seal, index: u32) -> Verdict {
        let status = self.status.to_byte();
        self.seal = self
            .sha256
            .map_or([0; 32], |d| integrity.seal(what, index, status, &d));
        self
    }

    /// Whether the seal matches the status and digest as `what` for `index` (always without
    /// a digest).
    pub fn opens(&self, integrity: &Integrity, what: Seal, index: u32) -> bool {
        self.sha256
            .is_none_or(|d| integrity.opens(what, index, self.status.to_byte(), &d, &self.seal))
    }

    /// The verdict, trusted only if its seal matches: otherwise a failure that says so.
    pub fn opened(self, integrity: &Integrity, what: Seal, index: u32) -> Verdict {
        match self.opens(integrity, what, index) {
            true => self,
            false => Verdict::failed("its verdict's seal does not match (changed on the way?)"),
        }
    }

    /// Encodes the verdict.
    pub fn encode(&self) -> Vec<u8> {
        let msg = clip(&self.message);
        let mut out = Vec::with_capacity(VERDICT_HEAD_LEN + msg.len());
        out.extend_from_slice(&VERDICT_MAGIC);
        out.push(self.status.to_byte());
        match &self.sha256 {
            Some(d) => {
                out.push(1);
                out.extend_from_slice(d);
                out.extend_from_slice(&self.seal);
            }
            None => {
                out.push(0);
                out.extend_from_slice(&[0; 64]);
            }
        }
        out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        out.extend_from_slice(msg.as_bytes());
        out
    }

    /// Reads and checks a verdict.
    pub fn read(r: &mut impl Read) -> Result<Verdict, ProtocolError> {
        let mut head = [0u8; VERDICT_HEAD_LEN];
        read_exact(r, &mut head, "verdict")?;
        if head[0..4] != VERDICT_MAGIC {
            return Err(ProtocolError::Malformed("verdict magic missing".into()));
        }
        let status = match head[4] {
            0 => Status::Landed,
            1 => Status::Mismatch,
            2 => Status::Failed,
            s => return Err(ProtocolError::Malformed(format!("unknown verdict {s}"))),
        };
        let digest: [u8; 32] = head[6..38].try_into().expect("32 bytes");
        let seal: [u8; 32] = head[38..70].try_into().expect("32 bytes");
        let sha256 = match head[5] {
            0 if digest == [0; 32] && seal == [0; 32] => None,
            1 => Some(digest),
            k => return Err(ProtocolError::Malformed(format!("unknown digest kind {k}"))),
        };
        let message = read_message(r, u16::from_be_bytes([head[70], head[71]]), "verdict")?;
        Ok(Verdict {
            status,
            sha256,
            seal,
            message,
        })
    }
}

/// Cuts a message to at most MAX_MESSAGE_LEN bytes on a character boundary.
fn clip(msg: &str) -> &str {
    if msg.len() <= MAX_MESSAGE_LEN {
        return msg;
    }
    let mut end = MAX_MESSAGE_LEN;
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    &msg[..end]
}

/// Encodes the sender's proof.
pub fn encode_proof(proof: &[u8; PROOF_LEN]) -> [u8; 4 + PROOF_LEN] {
    let mut out = [0u8; 4 + PROOF_LEN];
    out[..4].copy_from_slice(&PROOF_MAGIC);
    out[4..].copy_from_slice(proof);
    out
}

/// Reads the sender's proof.
pub fn read_proof(r: &mut impl Read) -> Result<[u8; PROOF_LEN], ProtocolError> {
    let mut buf = [0u8; 4 + PROOF_LEN];
    read_exact(r, &mut buf, "authentication proof")?;
    if buf[..4] != PROOF_MAGIC {
        return Err(ProtocolError::Malformed("proof magic missing".into()));
    }
    Ok(buf[4..].try_into().expect("32 bytes"))
}

pub(crate) fn read_message(
    r: &mut impl Read,
    len: u16,
    what: &'static str,
) -> Result<String, ProtocolError> {
    Ok(String::from_utf8_lossy(&read_bytes(r, len, what)?).into_owned())
}

pub(crate) fn read_bytes(
    r: &mut impl Read,
    len: u16,
    what: &'static str,
) -> Result<Vec<u8>, ProtocolError> {
    let len = len as usize;
    if len > MAX_MESSAGE_LEN {
        return Err(ProtocolError::Malformed(format!(
            "{what} message of {len} bytes exceeds {MAX_MESSAGE_LEN}"
        )));
    }
    let mut buf = vec![0u8; len];
    read_exact(r, &mut buf, what)?;
    Ok(buf)
}

pub(crate) fn read_exact(
    r: &mut impl Read,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), ProtocolError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => ProtocolError::Truncated(what),
        _ => ProtocolError::Io(what, e),
    })
}

/// A bounds-checked reader over a header body.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(ProtocolError::Malformed(format!(
                "header ends {} bytes early",
                n - self.buf.len()
            )));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        Ok(self.take(N)?.try_into().expect("exact length"))
    }

    fn u16(&mut self) -> Result<u16, ProtocolError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, ProtocolError> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, ProtocolError> {
        self.array().map(u64::from_be_bytes)
    }

    fn rest(&self) -> &'a [u8] {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header_strategy() -> impl Strategy<Value = Header> {
        (
            "[a-zA-Z0-9._ -]{1,40}|[\\p{L}]{1,30}",
            any::<u64>(),
            any::<u32>(),
            any::<i64>(),
            0u32..1_000_000_000,
            prop_oneof![Just(0u32), Just(FLAG_NO_VERIFY)],
            proptest::option::of(any::<[u8; NONCE_LEN]>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<[u8; SOURCE_ID_LEN]>()),
        )
            .prop_filter("valid name", |(n, ..)| validate_name(n).is_ok())
            .prop_map(
                |(name, size, mode, mtime_sec, mtime_nsec, flags, nonce, sparse, id)| {
                    let mut flags = flags;
                    if nonce.is_some() {
                        flags |= FLAG_AUTH;
                    }
                    if sparse.is_some() {
                        flags |= FLAG_SPARSE;
                    }
                    // Resuming implies verifying.
                    let source_id = id.filter(|_| flags & FLAG_NO_VERIFY == 0);
                    if source_id.is_some() {
                        flags |= FLAG_RESUME;
                    }
                    let chain = (source_id.is_none() && sparse.is_none() && size % 3 == 0)
                        .then(|| vec!["10.0.0.2:7350".to_owned(), "[fd00::3]:7350".to_owned()]);
                    if chain.is_some() {
                        flags |= FLAG_CHAIN;
                    }
                    Header {
                        name,
                        size,
                        mode,
                        mtime_sec,
                        mtime_nsec,
                        flags,
                        source_id,
                        auth_nonce: nonce,
                        sparse_data_len: sparse.map(|d| d.min(size)),
                        chain,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn hello_round_trips(h in header_strategy()) {
            let bytes = h.encode_hello();
            let back = read_hello(&mut &bytes[..]).unwrap();
            prop_assert_eq!(back, h);
        }

        #[test]
        fn every_truncated_hello_is_an_error(h in header_strategy(), cut in 0usize..300) {
            let bytes = h.encode_hello();
            let cut = cut % bytes.len();
            prop_assert!(read_hello(&mut &bytes[..cut]).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = read_hello(&mut &bytes[..]);
            let _ = Header::decode_body(&bytes);
            let _ = Reply::read(&mut &bytes[..]);
            let _ = Verdict::read(&mut &bytes[..]);
            let _ = read_proof(&mut &bytes[..]);
            let _ = Record::read(&mut &bytes[..]);
            let _ = Trailer::read(&mut &bytes[..]);
            let _ = PrefixProof::read(&mut &bytes[..]);
            let _ = Decision::read(&mut &bytes[..]);
            let _ = read_hops(&mut &bytes[..]);
        }

        #[test]
        fn records_round_trip(offset in any::<u64>(), len in 1u64.., kind in 0u8..3) {
            let r = match kind {
                0 => Record::End,
                1 => Record::Data { offset, len },
                _ => Record::Hole { offset, len },
            };
            prop_assert_eq!(Record::read(&mut &r.encode()[..]).unwrap(), r);
        }

        #[test]
        fn arbitrary_header_bodies_decode_only_to_valid_headers(
            bytes in proptest::collection::vec(any::<u8>(), 0..400)
        ) {
            if let Ok(h) = Header::decode_body(&bytes) {
                prop_assert!(validate_name(&h.name).is_ok());
                let nonce = h.auth_nonce.map_or(0, |n| n.len());
                let sparse = h.sparse_data_len.map_or(0, |_| 8);
                prop_assert_eq!(HEADER_FIXED_LEN + h.name.len() + sparse + nonce, bytes.len());
                prop_assert_eq!(h.auth_nonce.is_some(), h.flags & FLAG_AUTH != 0);
                prop_assert!(h.mtime_nsec < 1_000_000_000);
            }
        }

        #[test]
        fn reply_round_trips(code in (1u8..=255).prop_filter("not a challenge or offer", |c| *c != CHALLENGE_CODE && *c != RESUME_CODE), msg in ".{0,300}") {
            let reply = Reply::Refuse(RefuseCode::from_byte(code), msg.clone());
            let back = Reply::read(&mut &reply.encode()[..]).unwrap();
            prop_assert_eq!(back, reply);
        }

        #[test]
        fn challenge_and_proof_round_trip(n in any::<[u8; 32]>(), p in any::<[u8; 32]>()) {
            let c = Reply::Challenge { nonce: n, proof: p };
            prop_assert_eq!(Reply::read(&mut &c.encode()[..]).unwrap(), c);
            prop_assert_eq!(read_proof(&mut &encode_proof(&p)[..]).unwrap(), p);
        }

        #[test]
        fn verdict_round_trips(d in proptest::option::of(any::<[u8; 32]>()), seal in any::<[u8; 32]>(), s in 0u8..3, msg in ".{0,200}") {
            let status = [Status::Landed, Status::Mismatch, Status::Failed][s as usize];
            let seal = if d.is_some() { seal } else { [0; 32] };
            let v = Verdict { status, sha256: d, seal, message: msg };
            prop_assert_eq!(Verdict::read(&mut &v.encode()[..]).unwrap(), v);
        }

        #[test]
        fn resume_messages_round_trip(offset in any::<u64>(), nonce in any::<[u8; 32]>(), p in any::<[u8; 32]>(), go in any::<bool>(), keepalives in 0usize..3) {
            let r = Reply::Resume { offset, nonce };
            prop_assert_eq!(Reply::read(&mut &r.encode()[..]).unwrap(), r);
            let mut wire = KEEPALIVE.repeat(keepalives);
            wire.extend_from_slice(&PrefixProof(p).encode());
            prop_assert_eq!(PrefixProof::read(&mut &wire[..]).unwrap(), PrefixProof(p));
            let c = if go { Decision::Resume } else { Decision::Restart };
            prop_assert_eq!(Decision::read(&mut &c.encode()[..]).unwrap(), c);
        }

        #[test]
        fn trailer_round_trips(d in proptest::option::of(any::<[u8; 32]>()), seal in any::<[u8; 32]>(), keepalives in 0usize..3) {
            let t = Trailer { sha256: d, seal: if d.is_some() { seal } else { [0; 32] } };
            let mut wire = KEEPALIVE.repeat(keepalives);
            wire.extend_from_slice(&t.encode());
            prop_assert_eq!(Trailer::read(&mut &wire[..]).unwrap(), t);
        }

        #[test]
        fn aligned_reports_name_exactly_the_hosts_asked_for(
            asked in proptest::collection::vec("[a-c]:[1-3]", 0..5),
            got in proptest::collection::vec("[a-c]:[1-3]", 0..8),
        ) {
            let reports: Vec<HopReport> = got
                .iter()
                .map(|h| HopReport { host: h.clone(), verdict: Verdict { status: Status::Landed, sha256: Some([1; 32]), seal: [0; 32], message: String::new() } })
                .collect();
            let (aligned, unmatched) = align_hops(&asked, reports);
            prop_assert_eq!(aligned.len(), asked.len());
            for (k, (r, host)) in aligned.iter().zip(&asked).enumerate() {
                prop_assert_eq!(&r.host, host);
                let reported = got.get(k) == Some(host);
                prop_assert_eq!(r.verdict.status == Status::Landed, reported);
            }
            let matched = aligned.iter().filter(|r| r.verdict.status == Status::Landed).count();
            prop_assert_eq!(unmatched, asked.len() - matched + got.len().saturating_sub(asked.len()));
        }
    }

    #[test]
    fn a_trailer_may_follow_keepalives_but_not_a_keepalive_with_content() {
        let t = Trailer::unsealed(Some([3; 32]));
        let mut wire = KEEPALIVE.to_vec();
        wire.extend_from_slice(&t.encode());
        assert_eq!(Trailer::read(&mut &wire[..]).unwrap(), t);
        wire[8] = 1;
        assert!(matches!(
            Trailer::read(&mut &wire[..]),
            Err(ProtocolError::Malformed(_))
        ));
        let mut abandoned = KEEPALIVE.to_vec();
        abandoned.extend_from_slice(&Trailer::abandoned());
        assert!(matches!(
            Trailer::read(&mut &abandoned[..]),
            Err(ProtocolError::Abandoned)
        ));
    }

    /// A man in the middle who turns a sealed failure into a success, keeping its digest and
    /// seal, is caught: the seal covers the status.
    #[test]
    fn a_verdicts_seal_covers_its_status() {
        let token = crate::auth::Token::new(b"secret").unwrap();
        let key = Integrity::derive(&token, &[1; 32], &[2; 32], b"hello");
        let failed = Verdict {
            status: Status::Failed,
            sha256: Some([5; 32]),
            seal: [0; 32],
            message: "renaming: no space".into(),
        }
        .sealed(&key, Seal::Verdict, 0);
        assert!(failed.opens(&key, Seal::Verdict, 0));
        let mut wire = failed.encode();
        wire[4] = 0; // landed
        let forged = Verdict::read(&mut &wire[..]).unwrap();
        assert_eq!(forged.status, Status::Landed);
        assert!(!forged.opens(&key, Seal::Verdict, 0));
        assert_eq!(forged.opened(&key, Seal::Verdict, 0).status, Status::Failed);
        let t = Trailer::sealed(Some([6; 32]), &key, 3);
        assert!(t.opens(&key, 3) && !t.opens(&key, 4));
    }

    #[test]
    fn a_chain_longer_than_the_limit_is_refused_before_anything_is_sent() {
        let hops: Vec<String> = (0..MAX_HOPS).map(|i| format!("10.0.0.{i}:7350")).collect();
        assert!(check_chain(&hops).is_ok());
        let mut too_many = hops.clone();
        too_many.push("10.0.0.99:7350".into());
        let err = check_chain(&too_many).unwrap_err();
        assert!(err.contains("at most 17 hosts"), "{err}");
        assert!(check_chain(&["h\u{1b}[2J:1".to_owned()]).is_err());
        assert!(check_chain(&["x".repeat(256)]).is_err());
        assert!(check_chain(&[String::new()]).is_err());
    }

    #[test]
    fn reports_beyond_the_limit_are_refused() {
        let mut wire = HOPS_MAGIC.to_vec();
        wire.push(MAX_HOPS as u8 + 1);
        assert!(matches!(
            read_hops(&mut &wire[..]),
            Err(ProtocolError::Malformed(_))
        ));
    }

    fn hello_with_len(len: u32) -> Vec<u8> {
        let mut v = HELLO_MAGIC.to_vec();
        v.extend_from_slice(&VERSION.to_be_bytes());
        v.extend_from_slice(&len.to_be_bytes());
        v
    }

    #[test]
    fn oversized_header_is_refused_before_reading_it() {
        let err = read_preamble(&mut &hello_with_len(u32::MAX)[..]).unwrap_err();
        assert!(
            matches!(err, ProtocolError::HeaderTooLong(u32::MAX)),
            "{err}"
        );
        assert!(read_preamble(&mut &hello_with_len(MAX_HEADER_LEN)[..]).is_ok());
    }

    /// A receiver of another version may refuse (its message is shown), and nothing else.
    #[test]
    fn only_a_refusal_is_taken_from_another_version() {
        let mut accept = Reply::Accept.encode();
        accept[5] = 7;
        assert!(matches!(
            Reply::read(&mut &accept[..]),
            Err(ProtocolError::Malformed(m)) if m.contains("version 7")
        ));
        let mut refusal = Reply::Refuse(RefuseCode::Unsupported, "speak 7".into()).encode();
        refusal[5] = 7;
        assert_eq!(
            Reply::read(&mut &refusal[..]).unwrap(),
            Reply::Refuse(RefuseCode::Unsupported, "speak 7".into())
        );
    }

    #[test]
    fn bad_magic_and_version_are_named() {
        let err = read_preamble(&mut &b"GET / HTTP/1.1\r\n"[..]).unwrap_err();
        assert!(matches!(err, ProtocolError::BadMagic(m) if &m == b"GET "));
        let mut v = hello_with_len(10);
        v[5] = 9;
        let err = read_preamble(&mut &v[..]).unwrap_err();
        assert!(matches!(err, ProtocolError::UnsupportedVersion(9)));
    }

    #[test]
    fn name_length_over_limit_is_refused() {
        let h = Header::new(&"a".repeat(255), 1);
        let mut bytes = h.encode_hello();
        assert!(read_hello(&mut &bytes[..]).is_ok());
        // Claim 256 bytes of name and supply them.
        let name_len_at = PREAMBLE_LEN + HEADER_FIXED_LEN - 2;
        bytes[name_len_at..name_len_at + 2].copy_from_slice(&256u16.to_be_bytes());
        bytes.push(b'a');
        let len = (HEADER_FIXED_LEN + 256) as u32;
        bytes[6..10].copy_from_slice(&len.to_be_bytes());
        let err = read_hello(&mut &bytes[..]).unwrap_err();
        assert!(matches!(err, ProtocolError::NameTooLong(256)), "{err}");
    }

    #[test]
    fn unsafe_names_are_refused_by_the_decoder() {
        for name in ["..", ".", "a/b", "", "x\u{1b}[2J"] {
            let h = Header::new(name, 1);
            let err = read_hello(&mut &h.encode_hello()[..]).unwrap_err();
            assert!(matches!(err, ProtocolError::BadName(_)), "{name:?}: {err}");
        }
    }
}
