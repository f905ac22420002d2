//! Section 2a of docs/PROTOCOL.md: the sender's answer to a challenge (the challenge itself is a
//! reply, in `hello`). The keys and proofs are computed in `crate::auth`.

use std::io::Read;

use super::codec::read_exact;
use super::error::ProtocolError;
use crate::auth::{Integrity, Seal, PROOF_LEN};

/// First bytes of the sender's authentication proof.
pub const PROOF_MAGIC: [u8; 4] = *b"ZPRF";

/// Reads the 32-byte seal that follows a sealed message (a tree's manifest or its answers,
/// with a token) and checks it against `digest`, the SHA-256 of the message's bytes as they
/// arrived; `seal_of` names it ("the manifest's seal") in the error.
pub(crate) fn read_message_seal(
    r: &mut impl Read,
    integrity: &Integrity,
    what: Seal,
    digest: &[u8; 32],
    seal_of: &'static str,
) -> Result<(), ProtocolError> {
    let mut seal = [0u8; 32];
    read_exact(r, &mut seal, seal_of)?;
    match integrity.opens_message(what, digest, &seal) {
        true => Ok(()),
        false => Err(ProtocolError::Malformed(format!(
            "{seal_of} does not match the token (changed on the way?)"
        ))),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Reply;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn challenge_and_proof_round_trip(n in any::<[u8; 32]>(), p in any::<[u8; 32]>()) {
            let c = Reply::Challenge { nonce: n, proof: p };
            prop_assert_eq!(Reply::read(&mut &c.encode()[..]).unwrap(), c);
            prop_assert_eq!(read_proof(&mut &encode_proof(&p)[..]).unwrap(), p);
        }
    }
}
