//! Sections 4 and 5 of docs/PROTOCOL.md: the trailer after the payload (the sender's sealed
//! digest) and the receiver's verdict.

use std::io::Read;

use super::codec::{clip, read_exact, read_message};
use super::error::ProtocolError;
use super::keepalive::read_after_keepalives;
use crate::auth::{Integrity, Seal};

/// First bytes of the trailer that follows the payload.
pub const TRAILER_MAGIC: [u8; 4] = *b"ZTRL";
/// First bytes of the receiver's final verdict.
pub const VERDICT_MAGIC: [u8; 4] = *b"ZVRD";
/// Size of a trailer: magic, kind, digest, seal.
pub const TRAILER_LEN: usize = 4 + 1 + 32 + 32;

/// What follows the payload: the sender's tree root (sealed with the connection's integrity key
/// when both sides hold a token), or nothing when not verifying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// The sender's digest of the bytes it read, if it hashed.
    pub root: Option<[u8; 32]>,
    /// The seal of that digest (see `auth::Integrity`); zeros without a token or a digest.
    pub seal: [u8; 32],
}

/// Trailer kind of a file the sender gave up on because it changed while being sent, after
/// the whole payload went out: the receiver discards what it got.
const ABANDONED: u8 = 2;

impl Trailer {
    /// A trailer with `root` and no seal.
    pub fn unsealed(root: Option<[u8; 32]>) -> Trailer {
        Trailer {
            root,
            seal: [0; 32],
        }
    }

    /// A trailer with `root` sealed for entry `index` (0 for a single file).
    pub fn sealed(root: Option<[u8; 32]>, integrity: &Integrity, index: u32) -> Trailer {
        Trailer {
            root,
            seal: root.map_or([0; 32], |d| integrity.seal(Seal::Trailer, index, 1, &d)),
        }
    }

    /// Whether the trailer's seal matches its digest for entry `index` (always without a
    /// digest, and without a key when the seal is zeros).
    pub fn opens(&self, integrity: &Integrity, index: u32) -> bool {
        self.root
            .is_none_or(|d| integrity.opens(Seal::Trailer, index, 1, &d, &self.seal))
    }

    /// Encodes the trailer.
    pub fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut out = [0u8; TRAILER_LEN];
        out[0..4].copy_from_slice(&TRAILER_MAGIC);
        if let Some(d) = &self.root {
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
        Trailer::read_telling(r, &mut || true)
    }

    /// As [`Trailer::read`], telling `on_keepalive` of each keepalive before it (a forwarding
    /// receiver passes them on), which says whether to wait on.
    pub fn read_telling(
        r: &mut impl Read,
        on_keepalive: &mut dyn FnMut() -> bool,
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
                root: Some(digest),
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
    pub root: Option<[u8; 32]>,
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
            root: None,
            seal: [0; 32],
            message: why.to_owned(),
        }
    }

    /// The verdict with its status and digest (32 zero bytes when it has none) sealed as
    /// `what` for `index`.
    pub fn sealed(mut self, integrity: &Integrity, what: Seal, index: u32) -> Verdict {
        let status = self.status.to_byte();
        self.seal = integrity.seal(what, index, status, &self.root.unwrap_or_default());
        self
    }

    /// Whether the seal matches the status and digest (32 zero bytes when it has none) as
    /// `what` for `index`.
    pub fn opens(&self, integrity: &Integrity, what: Seal, index: u32) -> bool {
        let digest = self.root.unwrap_or_default();
        integrity.opens(what, index, self.status.to_byte(), &digest, &self.seal)
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
        match &self.root {
            Some(d) => {
                out.push(1);
                out.extend_from_slice(d);
                out.extend_from_slice(&self.seal);
            }
            None => {
                out.push(0);
                out.extend_from_slice(&[0; 32]);
                out.extend_from_slice(&self.seal);
            }
        }
        out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        out.extend_from_slice(msg.as_bytes());
        out
    }

    /// Reads and checks a verdict.
    pub fn read(r: &mut impl Read) -> Result<Verdict, ProtocolError> {
        let mut magic = [0u8; 4];
        read_exact(r, &mut magic, "verdict")?;
        Verdict::read_after(magic, r)
    }

    /// Reads and checks the rest of a verdict whose first four bytes were `magic`.
    pub fn read_after(magic: [u8; 4], r: &mut impl Read) -> Result<Verdict, ProtocolError> {
        let mut head = [0u8; VERDICT_HEAD_LEN];
        head[..4].copy_from_slice(&magic);
        read_exact(r, &mut head[4..], "verdict")?;
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
        let root = match head[5] {
            // The seal of a verdict without a digest is that of 32 zero bytes (section 2a).
            0 if digest == [0; 32] => None,
            1 => Some(digest),
            k => return Err(ProtocolError::Malformed(format!("unknown digest kind {k}"))),
        };
        let message = read_message(r, u16::from_be_bytes([head[70], head[71]]), "verdict")?;
        Ok(Verdict {
            status,
            root,
            seal,
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::KEEPALIVE;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn verdict_round_trips(d in proptest::option::of(any::<[u8; 32]>()), seal in any::<[u8; 32]>(), s in 0u8..3, msg in ".{0,200}") {
            let status = [Status::Landed, Status::Mismatch, Status::Failed][s as usize];
            let seal = if d.is_some() { seal } else { [0; 32] };
            let v = Verdict { status, root: d, seal, message: msg };
            prop_assert_eq!(Verdict::read(&mut &v.encode()[..]).unwrap(), v);
        }

        #[test]
        fn trailer_round_trips(d in proptest::option::of(any::<[u8; 32]>()), seal in any::<[u8; 32]>(), keepalives in 0usize..3) {
            let t = Trailer { root: d, seal: if d.is_some() { seal } else { [0; 32] } };
            let mut wire = KEEPALIVE.repeat(keepalives);
            wire.extend_from_slice(&t.encode());
            prop_assert_eq!(Trailer::read(&mut &wire[..]).unwrap(), t);
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
            root: Some([5; 32]),
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

    /// A verdict without a digest (a hard link's, a quick check's, `--no-verify`'s, a failure
    /// before any digest) is sealed too, over 32 zero bytes: its status cannot be turned either.
    /// Without a token its seal is zeros, and anything else does not open.
    #[test]
    fn a_verdict_without_a_digest_is_sealed_too() {
        let token = crate::auth::Token::new(b"secret").unwrap();
        let key = Integrity::derive(&token, &[1; 32], &[2; 32], b"hello");
        let failed = Verdict::failed("no space").sealed(&key, Seal::Verdict, 0);
        assert_ne!(failed.seal, [0; 32]);
        let mut wire = failed.encode();
        let read = Verdict::read(&mut &wire[..]).unwrap();
        assert_eq!(read.root, None);
        assert!(read.opens(&key, Seal::Verdict, 0));
        wire[4] = 0; // landed
        let forged = Verdict::read(&mut &wire[..]).unwrap();
        assert!(!forged.opens(&key, Seal::Verdict, 0));
        let none = Integrity::none();
        let plain = Verdict::failed("no space").sealed(&none, Seal::Verdict, 0);
        assert_eq!(plain.seal, [0; 32]);
        assert!(plain.opens(&none, Seal::Verdict, 0));
        assert!(!failed.opens(&none, Seal::Verdict, 0));
    }
}
