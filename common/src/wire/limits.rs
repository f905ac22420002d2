//! The limits and the version of docs/PROTOCOL.md (sections Limits and Versioning): every length
//! read from a peer is checked against one of these before anything is allocated for it.

/// The protocol version this build speaks.
pub const VERSION: u16 = 14;
/// Largest header body a receiver accepts.
pub const MAX_HEADER_LEN: u32 = 64 * 1024;
/// Largest human-readable message in a reply or verdict.
pub const MAX_MESSAGE_LEN: usize = 1024;
/// Most hosts a chain may name after the first.
pub const MAX_HOPS: usize = 16;
/// Longest address of a host in a chain.
pub const MAX_HOP_LEN: usize = 255;
/// Most entries in one manifest.
pub const MAX_ENTRIES: u32 = 1 << 20;
/// Longest relative path (Linux PATH_MAX).
pub const MAX_PATH_LEN: usize = 4096;
/// Most bytes of paths and link targets in one manifest, all entries together.
pub const MAX_MANIFEST_TEXT: usize = 64 << 20;
