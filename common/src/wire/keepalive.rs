//! Section 2c of docs/PROTOCOL.md: the keepalive a sender sends while it hashes, and reading a
//! message that keepalives may precede.

use std::io::Read;

use super::codec::read_exact;
use super::error::ProtocolError;

/// First bytes of a keepalive: "still here, still working". It may come wherever the peer
/// waits for the sender's next message while the sender hashes (before a trailer, before a
/// prefix proof, between a tree's frames).
pub const KEEPALIVE_MAGIC: [u8; 4] = *b"ZNOP";
/// A whole keepalive: its magic and five zero bytes (the length of a tree frame's head).
pub const KEEPALIVE: [u8; KEEPALIVE_LEN] = *b"ZNOP\0\0\0\0\0";
/// Size of a keepalive.
pub const KEEPALIVE_LEN: usize = 9;

/// Reads `buf.len()` bytes of a message that may be preceded by keepalives: each
/// [`KEEPALIVE`] is checked, skipped, and told to `on_keepalive`, which says whether to wait on
/// (a peer may say "still hashing" only for as long as hashing could take). `buf` must be at
/// least 4 bytes (a magic).
pub(crate) fn read_after_keepalives(
    r: &mut impl Read,
    buf: &mut [u8],
    what: &'static str,
    on_keepalive: &mut dyn FnMut() -> bool,
) -> Result<(), ProtocolError> {
    loop {
        read_exact(r, &mut buf[..4], what)?;
        if buf[..4] != KEEPALIVE_MAGIC {
            break;
        }
        let mut rest = [0u8; KEEPALIVE_LEN - 4];
        read_exact(r, &mut rest, what)?;
        if rest != [0; KEEPALIVE_LEN - 4] {
            return Err(ProtocolError::Malformed("a keepalive with content".into()));
        }
        if !on_keepalive() {
            return Err(ProtocolError::Malformed(format!(
                "keepalives before the {what} for longer than hashing could take"
            )));
        }
    }
    read_exact(r, &mut buf[4..], what)
}
