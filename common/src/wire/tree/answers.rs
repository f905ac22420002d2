//! The receiver's answer to each entry of a manifest, or its refusal of the whole tree.

use std::io::Read;

use super::{malformed, push_message, read_message, read_u32, read_u64, ANSWERS_MAGIC};
use crate::auth::NONCE_LEN;
use crate::wire::{read_exact, ProtocolError, RefuseCode};

/// The receiver's answer to one manifest entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Send the whole file.
    Send,
    /// A file of this size and mtime is already there: send a [`Frame::Check`](super::Frame::Check) with your digest.
    Landed,
    /// A kept partial of this very file holds this many bytes: send a [`Frame::Resume`](super::Frame::Resume) whose
    /// proof is keyed with this fresh nonce.
    Partial(u64, [u8; NONCE_LEN]),
    /// Done already: a directory made, a link created.
    Done,
    /// A file of this size but another mtime is here, and the receiver may update it: send a
    /// [`Frame::Check`](super::Frame::Check) (never a quick one); if the contents agree, only
    /// its metadata changes.
    SameSize,
    /// Will not take it; the message says why.
    Refused(String),
}

/// The receiver's answers, one per manifest entry in order, or a refusal of the whole manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answers {
    /// One answer per entry, and how many entries will land without some of the owners,
    /// setuid or setgid bits or privileged attributes (`security.*`, `trusted.*`) they carry:
    /// the receiver keeps those only from a sender with a token, when it runs as root with
    /// `--preserve-privileged`.
    Each(Vec<Answer>, u32),
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
            Answers::Each(answers, unkept) => {
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
                        Answer::SameSize => out.push(5),
                    }
                }
                out.extend_from_slice(&unkept.to_be_bytes());
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
                5 => Answer::SameSize,
                k => return Err(malformed(format!("unknown answer {k}"))),
            });
        }
        let unkept = read_u32(r)?;
        if unkept as usize > count {
            return Err(malformed(format!(
                "{unkept} entries without their metadata, of {count}"
            )));
        }
        Ok(Answers::Each(answers, unkept))
    }
}
