//! Exit codes of zsend and zrecv, in one place (docs/USAGE.md lists them).

/// How a zsend or zrecv process ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// The file landed, durable (and verified unless `--no-verify`).
    Success = 0,
    /// A local problem: the source, the destination directory, a filesystem call.
    Local = 1,
    /// Bad command line (clap's own code).
    Usage = 2,
    /// Resolving, connecting, or the connection failing or stalling mid-transfer.
    Network = 3,
    /// The receiver refused the transfer (exists, bad name, no space, busy...).
    Refused = 4,
    /// Verification failed: checksum mismatch or the source changed while sent.
    Verify = 5,
    /// The peer broke the protocol.
    Protocol = 6,
    /// The receiver accepted the data but could not make it durable or publish it (a full
    /// disk, a failed fsync or rename): zsend's code, and zrecv's for the transfer it served.
    RemoteFailed = 7,
    /// Authentication failed: a token missing on one side, or not the same on both.
    Auth = 8,
    /// Some files of a tree landed and some did not (the summary says which).
    Partial = 9,
}

impl ExitStatus {
    /// The numeric code.
    pub fn code(self) -> u8 {
        self as u8
    }
}
