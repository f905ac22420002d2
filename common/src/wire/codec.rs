//! Bounded reading shared by every message: exact reads that name what was cut short, messages
//! of at most [`MAX_MESSAGE_LEN`] bytes, and a bounds-checked cursor over a header body.

use std::io::{self, Read};

use super::error::ProtocolError;
use super::limits::MAX_MESSAGE_LEN;

/// Cuts a message to at most MAX_MESSAGE_LEN bytes on a character boundary.
pub(crate) fn clip(msg: &str) -> &str {
    if msg.len() <= MAX_MESSAGE_LEN {
        return msg;
    }
    let mut end = MAX_MESSAGE_LEN;
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    &msg[..end]
}

pub(crate) fn read_message(
    r: &mut impl Read,
    len: u16,
    what: &'static str,
) -> Result<String, ProtocolError> {
    Ok(String::from_utf8_lossy(&read_bytes(r, len, what)?).into_owned())
}

pub(crate) fn read_bytes(
    r: &mut impl Read,
    len: u16,
    what: &'static str,
) -> Result<Vec<u8>, ProtocolError> {
    let len = len as usize;
    if len > MAX_MESSAGE_LEN {
        return Err(ProtocolError::Malformed(format!(
            "{what} message of {len} bytes exceeds {MAX_MESSAGE_LEN}"
        )));
    }
    let mut buf = vec![0u8; len];
    read_exact(r, &mut buf, what)?;
    Ok(buf)
}

pub(crate) fn read_exact(
    r: &mut impl Read,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), ProtocolError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => ProtocolError::Truncated(what),
        _ => ProtocolError::Io(what, e),
    })
}

/// A bounds-checked reader over a header body.
pub(super) struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf }
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(ProtocolError::Malformed(format!(
                "header ends {} bytes early",
                n - self.buf.len()
            )));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        Ok(self.take(N)?.try_into().expect("exact length"))
    }

    pub(super) fn u16(&mut self) -> Result<u16, ProtocolError> {
        self.array().map(u16::from_be_bytes)
    }

    pub(super) fn u32(&mut self) -> Result<u32, ProtocolError> {
        self.array().map(u32::from_be_bytes)
    }

    pub(super) fn u64(&mut self) -> Result<u64, ProtocolError> {
        self.array().map(u64::from_be_bytes)
    }

    pub(super) fn rest(&self) -> &'a [u8] {
        self.buf
    }
}
