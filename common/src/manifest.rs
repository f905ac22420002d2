//! Wire messages of a tree transfer (`FLAG_TREE`): the manifest of every entry, the receiver's
//! answer for each, the per-file frames, the per-file verdicts and the end-of-pass marks.
//! docs/PROTOCOL.md section 6 describes the same bytes for humans.

use std::collections::HashSet;
use std::io::Read;

use crate::auth::NONCE_LEN;
use crate::error::ProtocolError;
use crate::name::validate_name;
use crate::protocol::{
    read_bytes, read_exact, RefuseCode, KEEPALIVE_MAGIC, MAX_MESSAGE_LEN, SOURCE_ID_LEN,
};

/// First bytes of the manifest.
pub const MANIFEST_MAGIC: [u8; 4] = *b"ZMAN";
/// First bytes of the receiver's answers to a manifest.
pub const ANSWERS_MAGIC: [u8; 4] = *b"ZANS";
/// First bytes of a file frame.
pub const FRAME_MAGIC: [u8; 4] = *b"ZENT";
/// First bytes of a per-file verdict.
pub const FILE_VERDICT_MAGIC: [u8; 4] = *b"ZFVD";
/// First bytes of an end-of-pass mark, both ways.
pub const END_OF_PASS_MAGIC: [u8; 4] = *b"ZEOP";
/// Most entries in one manifest.
pub const MAX_ENTRIES: u32 = 1 << 20;
/// Longest relative path (Linux PATH_MAX).
pub const MAX_PATH_LEN: usize = 4096;
/// Most bytes of paths and link targets in one manifest, all entries together.
pub const MAX_MANIFEST_TEXT: usize = 64 << 20;

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file (or block device) with its content.
    File {
        /// Its length.
        size: u64,
        /// Bytes of data when it has holes (sent as records).
        sparse_data_len: Option<u64>,
        /// The sender's identity of it, when it can resume.
        source_id: Option<[u8; SOURCE_ID_LEN]>,
    },
    /// A directory; its entries follow it in the manifest.
    Dir,
    /// A symbolic link; where its target leads is judged by the receiver (see `links`).
    Symlink {
        /// The link's content.
        target: String,
    },
}

/// One entry of a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Relative path under the receiver's directory: safe components joined with `/`.
    pub path: String,
    /// What it is.
    pub kind: Kind,
    /// Permission bits (the receiver keeps 0o777).
    pub mode: u32,
    /// Modification time: seconds and nanoseconds since the epoch.
    pub mtime: (i64, u32),
}

impl Entry {
    /// The size of a file's content, 0 for anything else.
    pub fn size(&self) -> u64 {
        match self.kind {
            Kind::File { size, .. } => size,
            _ => 0,
        }
    }

    /// The directory part of the path, if any (`a/b` for `a/b/c`).
    pub fn parent(&self) -> Option<&str> {
        self.path.rsplit_once('/').map(|(p, _)| p)
    }

    /// The last component of the path.
    pub fn base(&self) -> &str {
        self.path.rsplit_once('/').map_or(&self.path, |(_, b)| b)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let kind = match self.kind {
            Kind::File { .. } => 1u8,
            Kind::Dir => 2,
            Kind::Symlink { .. } => 3,
        };
        out.push(kind);
        out.extend_from_slice(&(self.path.len() as u16).to_be_bytes());
        out.extend_from_slice(self.path.as_bytes());
        out.extend_from_slice(&self.mode.to_be_bytes());
        out.extend_from_slice(&self.mtime.0.to_be_bytes());
        out.extend_from_slice(&self.mtime.1.to_be_bytes());
        match &self.kind {
            Kind::File {
                size,
                sparse_data_len,
                source_id,
            } => {
                out.extend_from_slice(&size.to_be_bytes());
                let flags =
                    u8::from(sparse_data_len.is_some()) | u8::from(source_id.is_some()) << 1;
                out.push(flags);
                if let Some(d) = sparse_data_len {
                    out.extend_from_slice(&d.to_be_bytes());
                }
                if let Some(id) = source_id {
                    out.extend_from_slice(id);
                }
            }
            Kind::Dir => {}
            Kind::Symlink { target } => {
                out.extend_from_slice(&(target.len() as u16).to_be_bytes());
                out.extend_from_slice(target.as_bytes());
            }
        }
    }

    fn read(r: &mut impl Read, text: &mut usize) -> Result<Entry, ProtocolError> {
        let mut kind = [0u8; 1];
        read_exact(r, &mut kind, "manifest entry")?;
        let path = read_text(r, text, "path")?;
        let mut fixed = [0u8; 16];
        read_exact(r, &mut fixed, "manifest entry")?;
        let mode = u32::from_be_bytes(fixed[0..4].try_into().expect("4 bytes"));
        let sec = i64::from_be_bytes(fixed[4..12].try_into().expect("8 bytes"));
        let nsec = u32::from_be_bytes(fixed[12..16].try_into().expect("4 bytes"));
        if nsec >= 1_000_000_000 {
            return Err(malformed(format!("mtime nanoseconds {nsec} out of range")));
        }
        let kind = match kind[0] {
            1 => {
                let mut b = [0u8; 9];
                read_exact(r, &mut b, "manifest entry")?;
                let size = u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
                if b[8] & !3 != 0 {
                    return Err(malformed(format!("unknown entry flags {:#x}", b[8])));
                }
                let sparse_data_len = match b[8] & 1 {
                    0 => None,
                    _ => Some(read_u64(r)?)
                        .filter(|d| *d <= size)
                        .map(Some)
                        .ok_or_else(|| {
                            malformed("sparse data length exceeds the file size".into())
                        })?,
                };
                let source_id = match b[8] & 2 {
                    0 => None,
                    _ => {
                        let mut id = [0u8; SOURCE_ID_LEN];
                        read_exact(r, &mut id, "manifest entry")?;
                        Some(id)
                    }
                };
                Kind::File {
                    size,
                    sparse_data_len,
                    source_id,
                }
            }
            2 => Kind::Dir,
            3 => Kind::Symlink {
                target: read_text(r, text, "link target")?,
            },
            k => return Err(malformed(format!("unknown entry kind {k}"))),
        };
        Ok(Entry {
            path,
            kind,
            mode,
            mtime: (sec, nsec),
        })
    }
}

/// Every entry of a tree transfer, parents before their children.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    /// The entries, in the order files will be sent.
    pub entries: Vec<Entry>,
}

impl Manifest {
    /// Encodes the manifest.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.entries.len() * 64);
        out.extend_from_slice(&MANIFEST_MAGIC);
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for e in &self.entries {
            e.encode(&mut out);
        }
        out
    }

    /// Reads a manifest and checks it: every path is relative and made of safe components,
    /// no two entries share a path, every parent is a directory listed before its children,
    /// and every link target is a non-empty text without NUL. (Where a link leads is judged
    /// link by link when the receiver makes it: see `links`.) Bounded by [`MAX_ENTRIES`] and
    /// [`MAX_MANIFEST_TEXT`] before anything is allocated for it.
    pub fn read(r: &mut impl Read) -> Result<Manifest, ProtocolError> {
        let mut head = [0u8; 8];
        read_exact(r, &mut head, "manifest")?;
        if head[..4] != MANIFEST_MAGIC {
            return Err(malformed("manifest magic missing".into()));
        }
        let count = u32::from_be_bytes(head[4..].try_into().expect("4 bytes"));
        if count > MAX_ENTRIES {
            return Err(malformed(format!(
                "{count} entries; the limit is {MAX_ENTRIES}"
            )));
        }
        let mut text = 0usize;
        let mut entries = Vec::with_capacity(count.min(4096) as usize);
        for _ in 0..count {
            entries.push(Entry::read(r, &mut text)?);
        }
        let manifest = Manifest { entries };
        manifest.check()?;
        Ok(manifest)
    }

    fn check(&self) -> Result<(), ProtocolError> {
        let mut seen: HashSet<&str> = HashSet::with_capacity(self.entries.len());
        let mut dirs: HashSet<&str> = HashSet::new();
        for e in &self.entries {
            check_path(&e.path)?;
            if let Some(parent) = e.parent() {
                if !dirs.contains(parent) {
                    return Err(malformed(format!(
                        "{} comes before its directory",
                        crate::name::Escaped(&e.path)
                    )));
                }
            }
            if !seen.insert(&e.path) {
                return Err(malformed(format!(
                    "two entries named {}",
                    crate::name::Escaped(&e.path)
                )));
            }
            match &e.kind {
                Kind::Dir => {
                    dirs.insert(&e.path);
                }
                Kind::Symlink { target } => {
                    // Where it leads is judged link by link, when the links are made
                    // (crate::links): a bad one is refused, not the whole manifest.
                    if target.is_empty() || target.contains('\0') || target.len() > MAX_PATH_LEN {
                        return Err(malformed(format!(
                            "the link {} has an empty target, a NUL in it or more than \
                             {MAX_PATH_LEN} bytes",
                            crate::name::Escaped(&e.path)
                        )));
                    }
                }
                Kind::File { .. } => {}
            }
        }
        Ok(())
    }
}

/// Checks that `path` is relative and each `/`-separated component is a safe name.
pub fn check_path(path: &str) -> Result<(), ProtocolError> {
    if path.len() > MAX_PATH_LEN {
        return Err(malformed(format!("a path of {} bytes", path.len())));
    }
    for component in path.split('/') {
        validate_name(component).map_err(ProtocolError::BadName)?;
    }
    Ok(())
}

/// The receiver's answer to one manifest entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Send the whole file.
    Send,
    /// A file of this size and mtime is already there: send a [`Frame::Check`] with your digest.
    Landed,
    /// A kept partial of this very file holds this many bytes: send a [`Frame::Resume`] whose
    /// proof is keyed with this fresh nonce.
    Partial(u64, [u8; NONCE_LEN]),
    /// Done already: a directory made, a link created.
    Done,
    /// Will not take it; the message says why.
    Refused(String),
}

/// The receiver's answers, one per manifest entry in order, or a refusal of the whole manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answers {
    /// One answer per entry.
    Each(Vec<Answer>),
    /// The manifest as a whole is refused, for a reason and with a message for a human.
    Refused(RefuseCode, String),
}

impl Answers {
    /// Encodes the answers.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&ANSWERS_MAGIC);
        match self {
            Answers::Refused(code, msg) => {
                out.push(1);
                out.push(code.to_byte());
                push_message(&mut out, msg);
            }
            Answers::Each(answers) => {
                out.push(0);
                out.extend_from_slice(&(answers.len() as u32).to_be_bytes());
                for a in answers {
                    match a {
                        Answer::Send => out.push(0),
                        Answer::Landed => out.push(1),
                        Answer::Partial(offset, nonce) => {
                            out.push(2);
                            out.extend_from_slice(&offset.to_be_bytes());
                            out.extend_from_slice(nonce);
                        }
                        Answer::Done => out.push(3),
                        Answer::Refused(msg) => {
                            out.push(4);
                            push_message(&mut out, msg);
                        }
                    }
                }
            }
        }
        out
    }

    /// Reads answers to a manifest of `count` entries.
    pub fn read(r: &mut impl Read, count: usize) -> Result<Answers, ProtocolError> {
        let mut head = [0u8; 5];
        read_exact(r, &mut head, "manifest answers")?;
        if head[..4] != ANSWERS_MAGIC {
            return Err(malformed("manifest answers magic missing".into()));
        }
        match head[4] {
            0 => {}
            1 => {
                let mut code = [0u8; 1];
                read_exact(r, &mut code, "manifest refusal")?;
                let code = RefuseCode::from_byte(code[0]);
                return Ok(Answers::Refused(code, read_message(r)?));
            }
            k => return Err(malformed(format!("unknown answers status {k}"))),
        }
        let n = read_u32(r)? as usize;
        if n != count {
            return Err(malformed(format!("{n} answers to {count} entries")));
        }
        let mut answers = Vec::with_capacity(count);
        for _ in 0..count {
            let mut code = [0u8; 1];
            read_exact(r, &mut code, "manifest answer")?;
            answers.push(match code[0] {
                0 => Answer::Send,
                1 => Answer::Landed,
                2 => {
                    let offset = read_u64(r)?;
                    let mut nonce = [0u8; NONCE_LEN];
                    read_exact(r, &mut nonce, "manifest answer")?;
                    Answer::Partial(offset, nonce)
                }
                3 => Answer::Done,
                4 => Answer::Refused(read_message(r)?),
                k => return Err(malformed(format!("unknown answer {k}"))),
            });
        }
        Ok(Answers::Each(answers))
    }
}

/// What the sender sends next in a tree transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Entry `index`'s whole content follows, then a trailer.
    Full(u32),
    /// Entry `index` is already there; this is the sender's digest of its file.
    Check(u32, [u8; 32]),
    /// Entry `index`'s content from `offset` follows, then a trailer; the proof that the
    /// sender's first `offset` bytes are the receiver's partial comes first
    /// (`auth::prefix_proof` with the answer's nonce).
    Resume(u32, u64, [u8; 32]),
    /// No more frames in this pass: land everything and answer with an end of pass.
    EndOfPass,
    /// Nothing: the sender is busy hashing a large file and says it is still there.
    Keepalive,
}

/// Bytes every frame begins with: magic, entry index (0 for an end of pass or a keepalive) and
/// kind. Since a trailer is always followed by a frame, a receiver may read a trailer and the
/// next frame's head in one call without reaching into a payload.
pub const FRAME_HEAD_LEN: usize = 9;

impl Frame {
    /// Encodes the frame header.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FRAME_HEAD_LEN + 40);
        let (magic, index, kind) = match self {
            Frame::EndOfPass => (END_OF_PASS_MAGIC, 0, 0),
            Frame::Keepalive => (KEEPALIVE_MAGIC, 0, 0),
            Frame::Full(i) => (FRAME_MAGIC, *i, 0),
            Frame::Check(i, _) => (FRAME_MAGIC, *i, 1),
            Frame::Resume(i, ..) => (FRAME_MAGIC, *i, 2),
        };
        out.extend_from_slice(&magic);
        out.extend_from_slice(&index.to_be_bytes());
        out.push(kind);
        match self {
            Frame::Check(_, d) => out.extend_from_slice(d),
            Frame::Resume(_, offset, d) => {
                out.extend_from_slice(&offset.to_be_bytes());
                out.extend_from_slice(d);
            }
            _ => {}
        }
        out
    }

    /// Reads the next frame; `None` when the sender closed cleanly between frames.
    pub fn read(r: &mut impl Read) -> Result<Option<Frame>, ProtocolError> {
        let mut head = [0u8; FRAME_HEAD_LEN];
        let mut got = 0;
        while got < head.len() {
            match r.read(&mut head[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(ProtocolError::Truncated("frame")),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ProtocolError::Io("frame", e)),
            }
        }
        let magic: [u8; 4] = head[..4].try_into().expect("4 bytes");
        let index = u32::from_be_bytes(head[4..8].try_into().expect("4 bytes"));
        let kind = head[8];
        if magic == END_OF_PASS_MAGIC || magic == KEEPALIVE_MAGIC {
            if (index, kind) != (0, 0) {
                return Err(malformed("an end of pass or keepalive with content".into()));
            }
            return Ok(Some(match magic == END_OF_PASS_MAGIC {
                true => Frame::EndOfPass,
                false => Frame::Keepalive,
            }));
        }
        if magic != FRAME_MAGIC {
            return Err(malformed("frame magic missing".into()));
        }
        let mut digest = [0u8; 32];
        Ok(Some(match kind {
            0 => Frame::Full(index),
            1 => {
                read_exact(r, &mut digest, "frame")?;
                Frame::Check(index, digest)
            }
            2 => {
                let offset = read_u64(r)?;
                read_exact(r, &mut digest, "frame")?;
                Frame::Resume(index, offset, digest)
            }
            k => return Err(malformed(format!("unknown frame mode {k}"))),
        }))
    }
}

/// Reads a tree's frames and trailers in as few system calls as the protocol allows, and never
/// past them: the caller declares how many of the next bytes are certainly control bytes (a
/// trailer and the head of the frame after it), and the payload stays in the socket for
/// splice. Reads beyond what was declared go straight to the socket, exactly as asked.
pub struct Control<R> {
    inner: R,
    buf: [u8; 128],
    start: usize,
    end: usize,
    /// Bytes after those held that are declared control bytes.
    declared: usize,
}

impl<R: Read> Control<R> {
    pub fn new(inner: R) -> Control<R> {
        Control {
            inner,
            buf: [0; 128],
            start: 0,
            end: 0,
            declared: 0,
        }
    }

    /// Declares that the next `n` bytes are control bytes.
    pub fn expect(&mut self, n: usize) {
        let held = self.end - self.start;
        self.declared = self.declared.max(n.saturating_sub(held));
    }

    /// Whether nothing is held or declared: what follows in the socket is the caller's.
    pub fn is_drained(&self) -> bool {
        self.start == self.end && self.declared == 0
    }
}

impl<R: Read> Read for Control<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.start == self.end {
            if self.declared == 0 {
                return self.inner.read(out);
            }
            let want = self.declared.min(self.buf.len());
            let n = self.inner.read(&mut self.buf[..want])?;
            self.declared -= n;
            (self.start, self.end) = (0, n);
        }
        let n = out.len().min(self.end - self.start);
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }
}

/// How one file of a tree ended on the receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileStatus {
    /// Verified, durable, under its name.
    Landed,
    /// The receiver's copy has the sender's digest: nothing was sent.
    Unchanged,
    /// The digests differ; nothing was published.
    Mismatch,
    /// The receiver could not land it.
    Failed,
    /// The receiver will not take it (it exists, say).
    Refused,
    /// The receiver's copy or partial differs from the sender's file: send it whole.
    Resend,
}

/// The receiver's word on one file, or the end of a pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// Entry `index` ended so.
    File {
        /// The entry.
        index: u32,
        /// How.
        status: FileStatus,
        /// The receiver's digest of what it holds, when it hashed (and may say: never of a
        /// file the sender did not write, unless it equals the sender's).
        sha256: Option<[u8; 32]>,
        /// The seal of that digest (see `auth::Integrity`); zeros without a token or digest.
        seal: [u8; 32],
        /// Why, for anything but success.
        message: String,
    },
    /// Every frame of the pass has its verdict and everything landed is durable.
    EndOfPass,
    /// Nothing: the receiver is busy checking a large file and says it is still there.
    Keepalive,
}

impl Report {
    /// Encodes the report.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            // As the sender's: the magic and five zero bytes.
            Report::EndOfPass => out.extend_from_slice(&Frame::EndOfPass.encode()),
            Report::Keepalive => out.extend_from_slice(&Frame::Keepalive.encode()),
            Report::File {
                index,
                status,
                sha256,
                seal,
                message,
            } => {
                out.extend_from_slice(&FILE_VERDICT_MAGIC);
                out.extend_from_slice(&index.to_be_bytes());
                out.push(*status as u8);
                out.push(u8::from(sha256.is_some()));
                match sha256 {
                    Some(d) => {
                        out.extend_from_slice(d);
                        out.extend_from_slice(seal);
                    }
                    None => out.extend_from_slice(&[0; 64]),
                }
                push_message(&mut out, message);
            }
        }
        out
    }

    /// Reads a report.
    pub fn read(r: &mut impl Read) -> Result<Report, ProtocolError> {
        let mut magic = [0u8; 4];
        read_exact(r, &mut magic, "file verdict")?;
        if magic == END_OF_PASS_MAGIC || magic == KEEPALIVE_MAGIC {
            let mut zeros = [0u8; FRAME_HEAD_LEN - 4];
            read_exact(r, &mut zeros, "end of pass or keepalive")?;
            if zeros != [0; FRAME_HEAD_LEN - 4] {
                return Err(malformed("an end of pass or keepalive with content".into()));
            }
            return Ok(match magic == END_OF_PASS_MAGIC {
                true => Report::EndOfPass,
                false => Report::Keepalive,
            });
        }
        if magic != FILE_VERDICT_MAGIC {
            return Err(malformed("file verdict magic missing".into()));
        }
        let index = read_u32(r)?;
        let mut b = [0u8; 2 + 32 + 32];
        read_exact(r, &mut b, "file verdict")?;
        let status = match b[0] {
            0 => FileStatus::Landed,
            1 => FileStatus::Unchanged,
            2 => FileStatus::Mismatch,
            3 => FileStatus::Failed,
            4 => FileStatus::Refused,
            5 => FileStatus::Resend,
            s => return Err(malformed(format!("unknown file status {s}"))),
        };
        let digest: [u8; 32] = b[2..34].try_into().expect("32 bytes");
        let seal: [u8; 32] = b[34..].try_into().expect("32 bytes");
        let sha256 = match b[1] {
            0 if digest == [0; 32] && seal == [0; 32] => None,
            1 => Some(digest),
            k => return Err(malformed(format!("unknown digest kind {k}"))),
        };
        Ok(Report::File {
            index,
            status,
            sha256,
            seal,
            message: read_message(r)?,
        })
    }
}

fn malformed(what: String) -> ProtocolError {
    ProtocolError::Malformed(what)
}

fn read_u32(r: &mut impl Read) -> Result<u32, ProtocolError> {
    let mut b = [0u8; 4];
    read_exact(r, &mut b, "tree message")?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(r: &mut impl Read) -> Result<u64, ProtocolError> {
    let mut b = [0u8; 8];
    read_exact(r, &mut b, "tree message")?;
    Ok(u64::from_be_bytes(b))
}

/// Reads a u16-length UTF-8 text of at most [`MAX_PATH_LEN`] bytes, counting it against the
/// manifest's total.
fn read_text(
    r: &mut impl Read,
    total: &mut usize,
    what: &'static str,
) -> Result<String, ProtocolError> {
    let mut len = [0u8; 2];
    read_exact(r, &mut len, what)?;
    let len = u16::from_be_bytes(len) as usize;
    if len > MAX_PATH_LEN {
        return Err(malformed(format!("a {what} of {len} bytes")));
    }
    *total += len;
    if *total > MAX_MANIFEST_TEXT {
        return Err(malformed(format!(
            "more than {MAX_MANIFEST_TEXT} bytes of paths"
        )));
    }
    let mut bytes = vec![0u8; len];
    read_exact(r, &mut bytes, what)?;
    String::from_utf8(bytes).map_err(|_| malformed(format!("a {what} that is not UTF-8")))
}

fn push_message(out: &mut Vec<u8>, msg: &str) {
    let mut end = msg.len().min(MAX_MESSAGE_LEN);
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_be_bytes());
    out.extend_from_slice(&msg.as_bytes()[..end]);
}

fn read_message(r: &mut impl Read) -> Result<String, ProtocolError> {
    let mut len = [0u8; 2];
    read_exact(r, &mut len, "message")?;
    let len = u16::from_be_bytes(len);
    if len as usize > MAX_MESSAGE_LEN {
        return Err(malformed(format!("a message of {len} bytes")));
    }
    let bytes = read_bytes(r, len, "message")?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A reader that records how much each read asked for.
    struct Recording<'a> {
        data: &'a [u8],
        asked: Vec<usize>,
    }

    impl Read for Recording<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            self.asked.push(out.len());
            self.data.read(out)
        }
    }

    #[test]
    fn control_reads_a_trailer_and_the_next_frame_at_once_and_no_payload() {
        let trailer = crate::protocol::Trailer {
            sha256: Some([7; 32]),
            seal: [8; 32],
        };
        for keepalives in [0, 1, 3] {
            let mut wire = crate::protocol::KEEPALIVE.repeat(keepalives);
            wire.extend(trailer.encode());
            wire.extend(Frame::Full(3).encode());
            wire.extend(b"PAYLOAD");
            let mut inner = Recording {
                data: &wire,
                asked: Vec::new(),
            };
            let mut control = Control::new(&mut inner);
            control.expect(crate::protocol::TRAILER_LEN + FRAME_HEAD_LEN);
            let got = crate::protocol::Trailer::read(&mut control).unwrap();
            assert_eq!(got, trailer);
            control.expect(FRAME_HEAD_LEN);
            assert_eq!(Frame::read(&mut control).unwrap(), Some(Frame::Full(3)));
            assert!(control.is_drained());
            if keepalives == 0 {
                assert_eq!(inner.asked, [78], "one call for the trailer and the frame");
            }
            assert_eq!(inner.data, b"PAYLOAD", "{keepalives} keepalives");
        }
    }

    #[test]
    fn a_keepalive_with_content_is_malformed() {
        let mut frame = Frame::Keepalive.encode();
        assert_eq!(frame.len(), FRAME_HEAD_LEN);
        frame[8] = 1;
        assert!(matches!(
            Frame::read(&mut &frame[..]),
            Err(ProtocolError::Malformed(_))
        ));
    }

    fn file(path: &str, size: u64) -> Entry {
        Entry {
            path: path.into(),
            kind: Kind::File {
                size,
                sparse_data_len: None,
                source_id: None,
            },
            mode: 0o644,
            mtime: (1, 2),
        }
    }

    fn dir(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: Kind::Dir,
            mode: 0o755,
            mtime: (3, 4),
        }
    }

    fn link(path: &str, target: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: Kind::Symlink {
                target: target.into(),
            },
            mode: 0o777,
            mtime: (5, 6),
        }
    }

    fn decode(m: &Manifest) -> Result<Manifest, ProtocolError> {
        Manifest::read(&mut &m.encode()[..])
    }

    #[test]
    fn a_tree_round_trips() {
        let mut sparse = file("top/disk.img", 1 << 30);
        sparse.kind = Kind::File {
            size: 1 << 30,
            sparse_data_len: Some(4096),
            source_id: Some([9; SOURCE_ID_LEN]),
        };
        let m = Manifest {
            entries: vec![
                dir("top"),
                dir("top/empty"),
                file("top/a.txt", 5),
                sparse,
                link("top/l", "empty/../a.txt"),
                file("ünïcødé ✓", 0),
            ],
        };
        assert_eq!(decode(&m).unwrap(), m);
    }

    #[test]
    fn hostile_manifests_are_refused() {
        let cases = [
            vec![file("a", 1), file("a", 2)],
            vec![dir("d"), file("d/x", 1), file("d/x", 1)],
            vec![file("d/x", 1)],
            vec![file("d", 1), file("d/x", 1)],
            vec![file("../x", 1)],
            vec![file("/etc/passwd", 1)],
            vec![dir("d"), file("d//x", 1)],
            vec![dir("d"), file("d/./x", 1)],
            vec![dir("d"), link("d/l", "")],
            vec![dir("d"), link("d/l", "a\0b")],
            vec![file(".zrecv-1.part", 1)],
        ];
        for entries in cases {
            let m = Manifest { entries };
            assert!(decode(&m).is_err(), "{m:?}");
        }
    }

    #[test]
    fn link_targets_are_judged_link_by_link_not_here() {
        // Each is refused when the receiver makes links (crate::links), not with the manifest.
        let m = Manifest {
            entries: vec![
                link("l", "x"),
                dir("d"),
                link("d/up", "../../etc"),
                link("d/abs", "/etc/passwd"),
                link("d/u", ".."),
                link("d/v", "u/.."),
            ],
        };
        assert_eq!(decode(&m).unwrap(), m);
    }

    #[test]
    fn an_oversized_count_is_refused_before_allocating() {
        let mut bytes = MANIFEST_MAGIC.to_vec();
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(Manifest::read(&mut &bytes[..]).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Manifest::read(&mut &bytes[..]);
            let _ = Answers::read(&mut &bytes[..], 3);
            let _ = Frame::read(&mut &bytes[..]);
            let _ = Report::read(&mut &bytes[..]);
        }

        #[test]
        fn answers_frames_and_reports_round_trip(offset in any::<u64>(), i in any::<u32>(), d in any::<[u8; 32]>(), msg in ".{0,100}") {
            let a = Answers::Each(vec![Answer::Send, Answer::Landed, Answer::Partial(offset, d), Answer::Done, Answer::Refused(msg.clone())]);
            prop_assert_eq!(Answers::read(&mut &a.encode()[..], 5).unwrap(), a);
            let refused = Answers::Refused(RefuseCode::NoSpace, msg.clone());
            prop_assert_eq!(Answers::read(&mut &refused.encode()[..], 5).unwrap(), refused);
            for f in [Frame::Full(i), Frame::Check(i, d), Frame::Resume(i, offset, d), Frame::EndOfPass, Frame::Keepalive] {
                prop_assert_eq!(Frame::read(&mut &f.encode()[..]).unwrap(), Some(f));
            }
            let r = Report::File { index: i, status: FileStatus::Resend, sha256: Some(d), seal: [9; 32], message: msg };
            prop_assert_eq!(Report::read(&mut &r.encode()[..]).unwrap(), r);
        }
    }
}
