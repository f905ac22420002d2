//! Section 6 of docs/PROTOCOL.md: the messages of a tree transfer (`FLAG_TREE`), in the order
//! they cross: the manifest of every entry, the receiver's answers, the sender's per-file frames,
//! and the receiver's per-file reports and end-of-pass marks.

use std::io::Read;

use super::codec::{read_bytes, read_exact};
use super::error::ProtocolError;
use super::limits::{MAX_MANIFEST_TEXT, MAX_MESSAGE_LEN, MAX_PATH_LEN};

mod answers;
mod frames;
mod manifest;
mod reports;

pub use answers::{Answer, Answers};
pub use frames::{Control, Frame, FRAME_HEAD_LEN};
pub use manifest::{check_path, parent_of, Entry, Extras, Kind, Manifest, Owner};
pub use manifest::{MAX_OWNER_NAME, MAX_XATTR_NAME, MAX_XATTR_VALUE};
pub use reports::{FileStatus, Report};

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

pub(super) fn malformed(what: String) -> ProtocolError {
    ProtocolError::Malformed(what)
}

pub(super) fn read_u32(r: &mut impl Read) -> Result<u32, ProtocolError> {
    let mut b = [0u8; 4];
    read_exact(r, &mut b, "tree message")?;
    Ok(u32::from_be_bytes(b))
}

pub(super) fn read_u64(r: &mut impl Read) -> Result<u64, ProtocolError> {
    let mut b = [0u8; 8];
    read_exact(r, &mut b, "tree message")?;
    Ok(u64::from_be_bytes(b))
}

/// Reads a u16-length text of at most [`MAX_PATH_LEN`] bytes (any bytes: Linux names are not
/// always UTF-8), counting it against the manifest's total.
pub(super) fn read_text(
    r: &mut impl Read,
    total: &mut usize,
    what: &'static str,
) -> Result<Vec<u8>, ProtocolError> {
    let mut len = [0u8; 2];
    read_exact(r, &mut len, what)?;
    read_counted(
        r,
        u16::from_be_bytes(len) as usize,
        MAX_PATH_LEN,
        total,
        what,
    )
}

/// Reads `len` bytes, refused if more than `max` or if they take the manifest's `total` of
/// paths, link targets, names and attributes past [`MAX_MANIFEST_TEXT`]: checked before
/// anything is allocated for them.
pub(super) fn read_counted(
    r: &mut impl Read,
    len: usize,
    max: usize,
    total: &mut usize,
    what: &'static str,
) -> Result<Vec<u8>, ProtocolError> {
    if len > max {
        return Err(malformed(format!("a {what} of {len} bytes")));
    }
    *total += len;
    if *total > MAX_MANIFEST_TEXT {
        return Err(malformed(format!(
            "more than {MAX_MANIFEST_TEXT} bytes of paths and attributes"
        )));
    }
    let mut bytes = vec![0u8; len];
    read_exact(r, &mut bytes, what)?;
    Ok(bytes)
}

pub(super) fn push_message(out: &mut Vec<u8>, msg: &str) {
    let mut end = msg.len().min(MAX_MESSAGE_LEN);
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_be_bytes());
    out.extend_from_slice(&msg.as_bytes()[..end]);
}

pub(super) fn read_message(r: &mut impl Read) -> Result<String, ProtocolError> {
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
    use crate::wire::RefuseCode;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn answers_frames_and_reports_round_trip(offset in any::<u64>(), i in any::<u32>(), d in any::<[u8; 32]>(), msg in ".{0,100}") {
            let a = Answers::Each(vec![Answer::Send, Answer::Landed, Answer::Partial(offset, d), Answer::Done, Answer::Refused(msg.clone()), Answer::SameSize], i % 7);
            prop_assert_eq!(Answers::read(&mut &a.encode()[..], 6).unwrap(), a);
            let refused = Answers::Refused(RefuseCode::NoSpace, msg.clone());
            prop_assert_eq!(Answers::read(&mut &refused.encode()[..], 5).unwrap(), refused);
            for f in [Frame::Full(i), Frame::Check(i, d), Frame::Resume(i, offset), Frame::Quick(i), Frame::Link(i), Frame::EndOfPass, Frame::Keepalive] {
                prop_assert_eq!(Frame::read(&mut &f.encode()[..]).unwrap(), Some(f));
            }
            let r = Report::File { index: i, status: FileStatus::Resend, root: Some(d), seal: [9; 32], message: msg };
            prop_assert_eq!(Report::read(&mut &r.encode()[..]).unwrap(), r);
        }
    }
}
