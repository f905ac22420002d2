//! Section 2b of docs/PROTOCOL.md: the sender's proof of the prefix the receiver offered to
//! resume from (the offer itself is a reply, in `hello`), sent after the payload, and the
//! receiver's answer when it differs: send it all again.

use std::io::Read;

use super::codec::read_exact;
use super::error::ProtocolError;
use super::keepalive::read_after_keepalives;
use super::pieces::{MAX_REPAIR_ROUNDS, REPAIR_MAGIC};
use super::trailer::Verdict;

/// First bytes of the sender's proof that it holds the prefix the receiver offers to resume.
pub const PREFIX_MAGIC: [u8; 4] = *b"ZPFX";
/// First bytes of the receiver's decision on a resume.
pub const DECISION_MAGIC: [u8; 4] = *b"ZDCD";
/// Size of the sender's prefix proof.
pub const PREFIX_LEN: usize = 4 + 32;

/// The sender's proof that the first `offset` bytes of its file are the receiver's partial:
/// an HMAC keyed with the receiver's fresh nonce over the tree root of those bytes (see
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
        PrefixProof::read_telling(r, &mut || true)
    }

    /// As [`PrefixProof::read`], asking `on_keepalive` at each keepalive whether to wait on.
    pub fn read_telling(
        r: &mut impl Read,
        on_keepalive: &mut dyn FnMut() -> bool,
    ) -> Result<PrefixProof, ProtocolError> {
        let mut buf = [0u8; PREFIX_LEN];
        read_after_keepalives(r, &mut buf, "resume proof", on_keepalive)?;
        if buf[..4] != PREFIX_MAGIC {
            return Err(ProtocolError::Malformed(
                "resume proof magic missing".into(),
            ));
        }
        Ok(PrefixProof(buf[4..].try_into().expect("32 bytes")))
    }
}

/// The receiver's restart: the proof of a resumed transfer did not match its partial (or the
/// partial could not be read back), so it emptied its file; the sender sends the whole payload
/// again, from byte 0, and a trailer.
pub const RESTART: [u8; 5] = [
    DECISION_MAGIC[0],
    DECISION_MAGIC[1],
    DECISION_MAGIC[2],
    DECISION_MAGIC[3],
    0,
];

/// What a receiver answers a trailer with: its verdict; after a resume, a restart; or, when the
/// roots disagree, a call for a repair round (section 5a).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterTrailer {
    /// Its verdict, as for any transfer.
    Verdict(Verdict),
    /// [`RESTART`]: send it all again.
    Restart,
    /// A repair round (1 to `MAX_REPAIR_ROUNDS`): send your piece layer again, then the pieces
    /// the receiver lists.
    Repair(u8),
}

impl AfterTrailer {
    /// Reads a verdict, a restart or a repair call.
    pub fn read(r: &mut impl Read) -> Result<AfterTrailer, ProtocolError> {
        let mut magic = [0u8; 4];
        read_exact(r, &mut magic, "verdict")?;
        if magic == REPAIR_MAGIC {
            let mut round = [0u8; 1];
            read_exact(r, &mut round, "repair call")?;
            return match round[0] {
                1..=MAX_REPAIR_ROUNDS => Ok(AfterTrailer::Repair(round[0])),
                k => Err(ProtocolError::Malformed(format!("repair round {k}"))),
            };
        }
        if magic != DECISION_MAGIC {
            return Verdict::read_after(magic, r).map(AfterTrailer::Verdict);
        }
        let mut decision = [0u8; 1];
        read_exact(r, &mut decision, "resume decision")?;
        match decision[0] {
            0 => Ok(AfterTrailer::Restart),
            k => Err(ProtocolError::Malformed(format!(
                "unknown resume decision {k}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Reply, KEEPALIVE};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn resume_messages_round_trip(offset in any::<u64>(), nonce in any::<[u8; 32]>(), p in any::<[u8; 32]>(), keepalives in 0usize..3) {
            let r = Reply::Resume { offset, nonce };
            prop_assert_eq!(Reply::read(&mut &r.encode()[..]).unwrap(), r);
            let mut wire = KEEPALIVE.repeat(keepalives);
            wire.extend_from_slice(&PrefixProof(p).encode());
            prop_assert_eq!(PrefixProof::read(&mut &wire[..]).unwrap(), PrefixProof(p));
            prop_assert_eq!(AfterTrailer::read(&mut &RESTART[..]).unwrap(), AfterTrailer::Restart);
            let mut go_on = RESTART;
            go_on[4] = 1;
            prop_assert!(AfterTrailer::read(&mut &go_on[..]).is_err());
            for round in 0..=255u8 {
                let got = AfterTrailer::read(&mut &crate::wire::encode_repair(round)[..]);
                match round {
                    1..=MAX_REPAIR_ROUNDS => prop_assert_eq!(got.unwrap(), AfterTrailer::Repair(round)),
                    _ => prop_assert!(got.is_err()),
                }
            }
        }
    }
}
