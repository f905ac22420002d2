//! The receiver's word on each file of a tree (sealed like a verdict), and its end-of-pass mark.

use std::io::Read;

use super::{
    malformed, push_message, read_message, read_u32, END_OF_PASS_MAGIC, FILE_VERDICT_MAGIC,
};
use super::{Frame, FRAME_HEAD_LEN};
use crate::wire::{read_exact, ProtocolError, KEEPALIVE_MAGIC};

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
        root: Option<[u8; 32]>,
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
                root,
                seal,
                message,
            } => {
                out.extend_from_slice(&FILE_VERDICT_MAGIC);
                out.extend_from_slice(&index.to_be_bytes());
                out.push(*status as u8);
                out.push(u8::from(root.is_some()));
                match root {
                    Some(d) => {
                        out.extend_from_slice(d);
                        out.extend_from_slice(seal);
                    }
                    None => {
                        out.extend_from_slice(&[0; 32]);
                        out.extend_from_slice(seal);
                    }
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
        let root = match b[1] {
            // The seal of a verdict without a digest is that of 32 zero bytes (section 2a).
            0 if digest == [0; 32] => None,
            1 => Some(digest),
            k => return Err(malformed(format!("unknown digest kind {k}"))),
        };
        Ok(Report::File {
            index,
            status,
            root,
            seal,
            message: read_message(r)?,
        })
    }
}
