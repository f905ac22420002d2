//! The sender's frames (a file's content follows, a check, a resume, the end of a pass, a
//! keepalive) and the reader that takes control bytes without reaching into a payload.

use std::io::Read;

use super::{malformed, read_u64, END_OF_PASS_MAGIC, FRAME_MAGIC};
use crate::wire::{read_exact, ProtocolError, KEEPALIVE_MAGIC};

/// What the sender sends next in a tree transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Entry `index`'s whole content follows, then a trailer.
    Full(u32),
    /// Entry `index` is already there; this is the sender's digest of its file.
    Check(u32, [u8; 32]),
    /// Entry `index`'s content from `offset` follows, then the proof that the sender's first
    /// `offset` bytes are the receiver's partial (a [`PrefixProof`](crate::wire::PrefixProof)
    /// keyed with the answer's nonce), then a trailer.
    Resume(u32, u64),
    /// Entry `index` is already there by size and mtime (the receiver answered 1), and the
    /// sender takes that as unchanged without comparing roots (`zsend --quick-check`).
    Quick(u32),
    /// Entry `index` is a hard link (answered 0): make it a second name of its first file once
    /// that file is here, before the end of the pass.
    Link(u32),
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
            Frame::Quick(i) => (FRAME_MAGIC, *i, 3),
            Frame::Link(i) => (FRAME_MAGIC, *i, 4),
        };
        out.extend_from_slice(&magic);
        out.extend_from_slice(&index.to_be_bytes());
        out.push(kind);
        match self {
            Frame::Check(_, d) => out.extend_from_slice(d),
            Frame::Resume(_, offset) => out.extend_from_slice(&offset.to_be_bytes()),
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
            2 => Frame::Resume(index, read_u64(r)?),
            3 => Frame::Quick(index),
            4 => Frame::Link(index),
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
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes after those held that are declared control bytes.
    declared: usize,
}

/// Most bytes [`Control::gather`] looks at and takes at once.
const GATHER: usize = 64 << 10;

impl<R: Read> Control<R> {
    pub fn new(inner: R) -> Control<R> {
        Control {
            inner,
            buf: vec![0; 128],
            start: 0,
            end: 0,
            declared: 0,
        }
    }

    /// Bytes held, read and not taken yet.
    pub fn held(&self) -> usize {
        self.end - self.start
    }

    /// When nothing is held and a frame head is expected: looks at what the socket already
    /// has (`peek`, which must not take it, and which the caller bounds so that it sees no
    /// payload) and takes at once every whole frame there up to the first one a payload
    /// follows (its head, and a resume's offset, included), and never a byte past it: a tree
    /// sent again is thousands of checks back to back, read with one call instead of one each.
    pub fn gather(
        &mut self,
        peek: impl FnOnce(&mut [u8]) -> std::io::Result<usize>,
    ) -> std::io::Result<()> {
        if self.start != self.end || self.declared != FRAME_HEAD_LEN {
            return Ok(());
        }
        self.buf.resize(GATHER, 0);
        let seen = peek(&mut self.buf)?;
        let mut take = 0;
        while take + FRAME_HEAD_LEN <= seen {
            let head = &self.buf[take..take + FRAME_HEAD_LEN];
            let (magic, kind) = (&head[..4], head[8]);
            let (len, last) = match (magic == FRAME_MAGIC, kind) {
                (true, 0) => (FRAME_HEAD_LEN, true),
                (true, 1) => (FRAME_HEAD_LEN + 32, false),
                (true, 2) => (FRAME_HEAD_LEN + 8, true),
                (true, 3 | 4) => (FRAME_HEAD_LEN, false),
                (false, _) if magic == KEEPALIVE_MAGIC => (FRAME_HEAD_LEN, false),
                (false, _) if magic == END_OF_PASS_MAGIC => (FRAME_HEAD_LEN, true),
                // Anything else is read as it comes, and refused there.
                _ => break,
            };
            if take + len > seen {
                break;
            }
            take += len;
            if last {
                break;
            }
        }
        if take > 0 {
            // The very bytes looked at: nobody else reads this socket.
            let mut got = 0;
            while got < take {
                match self.inner.read(&mut self.buf[got..take]) {
                    Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            (self.start, self.end) = (0, take);
            self.declared = 0;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let trailer = crate::wire::Trailer {
            root: Some([7; 32]),
            seal: [8; 32],
        };
        for keepalives in [0, 1, 3] {
            let mut wire = crate::wire::KEEPALIVE.repeat(keepalives);
            wire.extend(trailer.encode());
            wire.extend(Frame::Full(3).encode());
            wire.extend(b"PAYLOAD");
            let mut inner = Recording {
                data: &wire,
                asked: Vec::new(),
            };
            let mut control = Control::new(&mut inner);
            control.expect(crate::wire::TRAILER_LEN + FRAME_HEAD_LEN);
            let got = crate::wire::Trailer::read(&mut control).unwrap();
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
}
