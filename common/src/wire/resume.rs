//! Section 2b of docs/PROTOCOL.md: the sender's proof of the prefix the receiver offers to resume
//! (the offer itself is a reply, in `hello`), and the receiver's decision.

use std::io::Read;

use super::codec::read_exact;
use super::error::ProtocolError;
use super::keepalive::read_after_keepalives;

/// First bytes of the sender's proof that it holds the prefix the receiver offers to resume.
pub const PREFIX_MAGIC: [u8; 4] = *b"ZPFX";
/// First bytes of the receiver's decision on a resume.
pub const DECISION_MAGIC: [u8; 4] = *b"ZDCD";
/// Size of the sender's prefix proof.
pub const PREFIX_LEN: usize = 4 + 32;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Reply, KEEPALIVE};
    use proptest::prelude::*;

    proptest! {
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
    }
}
