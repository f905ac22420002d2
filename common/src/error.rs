//! Typed errors of the library and the exit code each one maps to.

use std::io;
use std::path::PathBuf;

use crate::exit::ExitStatus;
use crate::name::NameError;
use crate::units::Bytes;
use crate::wire::{ProtocolError, RefuseCode};

/// Why sending failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The source could not be opened or examined.
    #[error("{}: {}", .path.display(), crate::units::os_reason(.error))]
    Source {
        /// The source path.
        path: PathBuf,
        /// What went wrong.
        error: io::Error,
    },
    /// The source is a directory, socket or other file that cannot be sent.
    #[error("{}: not a regular file", .0.display())]
    NotAFile(PathBuf),
    /// No usable remote name.
    #[error("cannot send {}: {reason}", .path.display())]
    Name {
        /// The source path.
        path: PathBuf,
        /// Why the name is unusable.
        reason: NameError,
    },
    /// HOST:PORT could not be parsed or resolved.
    #[error("resolving {addr}: {reason}")]
    Resolve {
        /// What the user gave.
        addr: String,
        /// Why it failed.
        reason: String,
    },
    /// Could not connect.
    #[error("connecting to {addr}: {}", crate::units::os_reason(.error))]
    Connect {
        /// The address tried last.
        addr: String,
        /// The last failure.
        error: io::Error,
    },
    /// The receiver said no.
    #[error("receiver refused {}: {}", crate::name::Escaped(.name), crate::name::Escaped(.message))]
    Refused {
        /// The remote name.
        name: String,
        /// Machine-readable reason.
        code: RefuseCode,
        /// The receiver's words.
        message: String,
    },
    /// The network failed in the middle.
    #[error("{during}: {}", crate::units::os_reason(.error))]
    Network {
        /// What was going on.
        during: String,
        /// The failure.
        error: io::Error,
    },
    /// The source file got shorter while it was being sent.
    #[error("source shrank during transfer: sent {} of {}; nothing landed", Bytes(*.sent), Bytes(*.expected))]
    SourceShrank {
        /// Bytes sent before the file ended.
        sent: u64,
        /// The size announced in the header.
        expected: u64,
    },
    /// The source was modified while it was being sent; the whole payload went out, followed
    /// by an abandoned trailer, and the receiver confirmed it discarded the file.
    #[error("source changed during transfer; the receiver discarded it")]
    SourceChanged,
    /// The source was modified while it was being sent, in a way that cut the payload short
    /// (its data extents moved): the sender closed the connection.
    #[error("source changed during transfer after {} of {}; nothing landed", Bytes(*.sent), Bytes(*.expected))]
    SourceChangedMidway {
        /// Bytes covered before the change was seen.
        sent: u64,
        /// The size announced in the header.
        expected: u64,
    },
    /// With a token: a verdict whose digest is not sealed with this connection's key, so it
    /// was changed on the way or does not come from the receiver.
    #[error("{0}: its seal does not match (changed on the way?)")]
    Unsealed(String),
    /// The digests differ.
    #[error("checksum mismatch: sent {sent}, receiver wrote {received}")]
    Mismatch {
        /// Sender's digest, hex.
        sent: String,
        /// Receiver's digest, hex.
        received: String,
    },
    /// The receiver could not land the file.
    #[error("receiver failed to land {}: {}", crate::name::Escaped(.name), crate::name::Escaped(.message))]
    ReceiverFailed {
        /// The remote name.
        name: String,
        /// The receiver's words.
        message: String,
    },
    /// Authentication failed, or one side has a token and the other none.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The receiver broke the protocol. (Not a `#[from]`: that would make the protocol error the
    /// source too, and `{:#}` would print it twice.)
    #[error("receiver: {0}")]
    Protocol(ProtocolError),
    /// The command line asks for something impossible.
    #[error("{0}")]
    Usage(String),
    /// Some hosts of a chain did not land the file (the report lists each).
    #[error("{failed} of {hosts} hosts did not land the file")]
    Hosts {
        /// Hosts that failed.
        failed: usize,
        /// Hosts in the chain.
        hosts: usize,
    },
    /// Some entries of a tree did not land, or were left out, or landed without metadata
    /// they were sent with (the warnings and `--json` list them).
    #[error("{}", partial(*.failed, *.skipped, *.unkept, *.unlinked))]
    Partial {
        /// Entries that failed.
        failed: usize,
        /// Entries left out.
        skipped: usize,
        /// Entries the receiver said would land without their owners or privileged metadata.
        unkept: usize,
        /// Second names of links and special files, sent as entries of their own.
        unlinked: usize,
        /// Files in the tree.
        files: usize,
    },
}

fn partial(failed: usize, skipped: usize, unkept: usize, unlinked: usize) -> String {
    let mut parts = Vec::new();
    if failed > 0 {
        parts.push(format!(
            "{failed} entries did not land or could not be read"
        ));
    }
    if skipped > 0 {
        parts.push(format!("{skipped} were left out"));
    }
    if unkept > 0 {
        parts.push(format!(
            "{unkept} landed without the owners, setuid or setgid bits or privileged attributes \
             sent with them"
        ));
    }
    if unlinked > 0 {
        parts.push(format!(
            "{unlinked} hard links between links or special files landed as separate entries"
        ));
    }
    format!("{} (each is named above)", parts.join(", "))
}

impl From<ProtocolError> for SendError {
    fn from(e: ProtocolError) -> SendError {
        SendError::Protocol(e)
    }
}

impl SendError {
    /// The process exit status for this failure.
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            SendError::Source { .. } | SendError::NotAFile(_) | SendError::Name { .. } => {
                ExitStatus::Local
            }
            SendError::Resolve { .. } | SendError::Connect { .. } | SendError::Network { .. } => {
                ExitStatus::Network
            }
            SendError::Refused {
                code: RefuseCode::Auth,
                ..
            }
            | SendError::Auth(_) => ExitStatus::Auth,
            SendError::Refused { .. } => ExitStatus::Refused,
            SendError::SourceShrank { .. }
            | SendError::SourceChanged
            | SendError::SourceChangedMidway { .. }
            | SendError::Unsealed(_)
            | SendError::Mismatch { .. } => ExitStatus::Verify,
            SendError::ReceiverFailed { .. } => ExitStatus::RemoteFailed,
            SendError::Protocol(ProtocolError::Truncated(_) | ProtocolError::Io(..)) => {
                ExitStatus::Network
            }
            SendError::Protocol(_) => ExitStatus::Protocol,
            SendError::Usage(_) => ExitStatus::Usage,
            SendError::Partial { .. } | SendError::Hosts { .. } => ExitStatus::Partial,
        }
    }
}

/// Why receiving one transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// The sender broke the protocol or closed inside a message.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// We refused the transfer.
    #[error("refused: {0}")]
    Refused(String),
    /// The sender did not prove it knows the token.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The sender closed before sending the whole payload.
    #[error("sender closed after {} of {}", Bytes(*.received), Bytes(*.expected))]
    ShortPayload {
        /// Bytes received.
        received: u64,
        /// Bytes announced.
        expected: u64,
    },
    /// The connection failed or stalled.
    #[error("{during} after {} of {}: {}", Bytes(*.received), Bytes(*.expected), crate::units::os_reason(.error))]
    Network {
        /// What was going on.
        during: &'static str,
        /// Bytes received so far.
        received: u64,
        /// Bytes announced.
        expected: u64,
        /// The failure.
        error: io::Error,
    },
    /// The digests differ.
    #[error("checksum mismatch: sender sent {sent}, we wrote {received}; discarded")]
    Mismatch {
        /// Sender's digest, hex.
        sent: String,
        /// Our digest, hex.
        received: String,
    },
    /// With a token: the trailer's digest is not sealed with this connection's key, so the
    /// payload or its digest was changed on the way.
    #[error("the trailer's seal does not match its digest (changed on the way?); discarded")]
    Unsealed,
    /// A local filesystem operation failed.
    #[error("{during} in {}: {}", .dir.display(), crate::units::os_reason(.error))]
    Local {
        /// What was going on.
        during: String,
        /// The destination directory.
        dir: PathBuf,
        /// The failure.
        error: io::Error,
    },
}

impl RecvError {
    /// Whether the connection broke off (the sender went away, the network failed or stalled)
    /// rather than the transfer going wrong: what an interrupted transfer's partial file is
    /// kept for.
    pub fn is_interruption(&self) -> bool {
        self.exit_status() == ExitStatus::Network
    }

    /// The process exit status when this ends a `--once` receiver.
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            RecvError::Protocol(ProtocolError::Truncated(_) | ProtocolError::Io(..)) => {
                ExitStatus::Network
            }
            RecvError::Protocol(ProtocolError::Abandoned) => ExitStatus::Verify,
            RecvError::Protocol(_) => ExitStatus::Protocol,
            RecvError::Refused(_) => ExitStatus::Refused,
            RecvError::Auth(_) => ExitStatus::Auth,
            RecvError::ShortPayload { .. } | RecvError::Network { .. } => ExitStatus::Network,
            RecvError::Mismatch { .. } | RecvError::Unsealed => ExitStatus::Verify,
            // The same code as the sender's for the same failure: the file could not land.
            RecvError::Local { .. } => ExitStatus::RemoteFailed,
        }
    }
}
