//! Section 2 of docs/PROTOCOL.md: the receiver's reply to a hello (accept, refusal, challenge,
//! resume offer).

use std::io::Read;

use super::codec::{clip, read_bytes};
use super::error::ProtocolError;
use super::keepalive::read_after_keepalives;
use super::limits::VERSION;
use crate::auth::{NONCE_LEN, PROOF_LEN};

/// First bytes of the receiver's reply to a hello.
pub const REPLY_MAGIC: [u8; 4] = *b"ZRCV";
/// Reply code of a receiver's authentication challenge.
const CHALLENGE_CODE: u8 = 0xC0;
/// Reply code of a receiver's offer to resume.
const RESUME_CODE: u8 = 0xC1;
/// Reply code of a receiver's offer to take only the pieces that differ.
const UPDATE_CODE: u8 = 0xC2;
/// Length of a resume offer's message: the offset and the receiver's nonce.
const RESUME_OFFER_LEN: usize = 8 + NONCE_LEN;

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
    /// The receiver holds the first `offset` bytes (a multiple of the piece size) of this very
    /// file from an interrupted transfer: the sender sends the rest at once, then proves it
    /// holds the same first bytes with a [`PrefixProof`](super::PrefixProof) keyed with
    /// `nonce`, and the receiver answers with its verdict or a
    /// [`RESTART`](super::RESTART).
    Resume {
        /// How many bytes the receiver's partial file holds, at most the size.
        offset: u64,
        /// A fresh nonce that keys the sender's proof, so that the proof cannot be computed
        /// without the bytes (nor replayed from another connection).
        nonce: [u8; NONCE_LEN],
    },
    /// The name exists and the receiver will replace it: the sender sends its piece layer,
    /// the receiver answers with the pieces it needs (section 2d).
    Update,
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
            Reply::Update => (UPDATE_CODE, b""),
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

    /// Reads a reply, after any keepalives the receiver sent while it waited (for a slot, or
    /// for a name). A receiver of another version still answers in this layout, so its
    /// refusal can be shown.
    pub fn read(r: &mut impl Read) -> Result<Reply, ProtocolError> {
        let mut head = [0u8; 9];
        read_after_keepalives(r, &mut head, "receiver's reply", &mut || true)?;
        let magic: [u8; 4] = head[0..4].try_into().expect("4 bytes");
        if magic != REPLY_MAGIC {
            return Err(ProtocolError::BadMagic(magic));
        }
        let code = head[6];
        let version = u16::from_be_bytes([head[4], head[5]]);
        let msg = read_bytes(r, u16::from_be_bytes([head[7], head[8]]), "reply")?;
        // A receiver of another version may only refuse (its message says why).
        if version != VERSION && matches!(code, 0 | CHALLENGE_CODE | RESUME_CODE | UPDATE_CODE) {
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
            UPDATE_CODE if msg.is_empty() => Ok(Reply::Update),
            UPDATE_CODE => Err(ProtocolError::Malformed(format!(
                "an update offer with {} bytes of message",
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

impl ProtocolError {
    /// The refusal a receiver sends for this error in a hello.
    pub fn refuse_code(&self) -> RefuseCode {
        match self {
            ProtocolError::BadMagic(_) | ProtocolError::UnsupportedVersion(_) => {
                RefuseCode::Unsupported
            }
            ProtocolError::BadName(_) => RefuseCode::BadName,
            _ => RefuseCode::BadHeader,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn reply_round_trips(code in (1u8..=255).prop_filter("not a challenge or offer", |c| ![CHALLENGE_CODE, RESUME_CODE, UPDATE_CODE].contains(c)), msg in ".{0,300}") {
            let reply = Reply::Refuse(RefuseCode::from_byte(code), msg.clone());
            let back = Reply::read(&mut &reply.encode()[..]).unwrap();
            prop_assert_eq!(back, reply);
        }
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
}
