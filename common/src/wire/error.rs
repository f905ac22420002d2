//! The error of a peer that broke the protocol, and the refusal it earns in a hello.

use std::io;

use super::limits::{MAX_HEADER_LEN, VERSION};
use crate::name::NameError;

/// A peer broke the protocol, or the connection ended inside a message.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The first bytes were not zsend's.
    #[error("peer is not speaking the zsend protocol (got {:?})", String::from_utf8_lossy(.0))]
    BadMagic([u8; 4]),
    /// A version this build does not speak.
    #[error("unsupported protocol version {0} (this side speaks {v})", v = VERSION)]
    UnsupportedVersion(u16),
    /// Header length over the limit.
    #[error("header of {0} bytes exceeds the limit of {max} bytes", max = MAX_HEADER_LEN)]
    HeaderTooLong(u32),
    /// Name length over the limit.
    #[error("name of {0} bytes exceeds the limit of {max} bytes", max = crate::name::MAX_NAME_LEN)]
    NameTooLong(usize),
    /// The name is not safe.
    #[error("bad name: {0}")]
    BadName(NameError),
    /// A field is out of range or inconsistent.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The peer closed the connection inside a message.
    #[error("connection closed in the middle of the {0}")]
    Truncated(&'static str),
    /// Reading a message failed.
    #[error("reading the {0}: {reason}", reason = crate::units::os_reason(.1))]
    Io(&'static str, io::Error),
    /// The sender gave up on a file: it changed while being sent.
    #[error("source changed during transfer; the sender abandoned it and it was discarded")]
    Abandoned,
}
