//! The wire format: every message zsend and zrecv exchange, with bounded decoders. One file per
//! section of docs/PROTOCOL.md, which describes the same bytes for humans:
//!
//! | section | file |
//! |---|---|
//! | 1: hello | `hello.rs` |
//! | 2: reply | `reply.rs` |
//! | 2a: authentication | `auth.rs` (keys and proofs: `crate::auth`) |
//! | 2b: resuming | `resume.rs` |
//! | 2c: keepalives | `keepalive.rs` |
//! | 2d, 5a: updates and repairs (pieces) | `pieces.rs` |
//! | 3a: data records | `record.rs` |
//! | 4, 5: trailer and verdict | `trailer.rs` |
//! | 6: trees | `tree/` |
//! | 7: chains | `chain.rs` |
//! | limits, versioning | `limits.rs` |
//!
//! Every integer is big-endian. Every length read from the peer is checked against a fixed limit
//! before anything is allocated for it (`codec.rs`).

mod auth;
mod chain;
mod codec;
mod error;
mod hello;
mod keepalive;
mod limits;
mod pieces;
mod record;
mod reply;
mod resume;
mod trailer;
mod tree;

pub use auth::*;
pub use chain::*;
pub(crate) use codec::read_exact;
pub use error::ProtocolError;
pub use hello::*;
pub use keepalive::*;
pub use limits::*;
pub use pieces::*;
pub use record::*;
pub use reply::*;
pub use resume::*;
pub use trailer::*;
pub use tree::*;

/// Feeds `bytes` to every decoder of peer input, as a hostile peer would: none may panic, and
/// a hello or a manifest that decodes must encode back to the same bytes (this panics if not).
/// The fuzz target (fuzz/) and the property test below both run it, so neither can miss a
/// decoder the other has.
pub fn decode_everything(bytes: &[u8]) {
    if let Ok(h) = read_hello(&mut &bytes[..]) {
        let again = h.encode_hello();
        assert_eq!(&bytes[..again.len()], &again[..]);
    }
    let _ = Header::decode_body(bytes);
    let _ = Reply::read(&mut &bytes[..]);
    let _ = Verdict::read(&mut &bytes[..]);
    let _ = read_proof(&mut &bytes[..]);
    let _ = Record::read(&mut &bytes[..]);
    let _ = Trailer::read(&mut &bytes[..]);
    let _ = PrefixProof::read(&mut &bytes[..]);
    let _ = AfterTrailer::read(&mut &bytes[..]);
    let _ = read_hops(&mut &bytes[..]);
    if let Ok(m) = Manifest::read(&mut &bytes[..]) {
        assert_eq!(Manifest::read(&mut &m.encode()[..]).ok(), Some(m));
    }
    let _ = Answers::read(&mut &bytes[..], 3);
    let _ = Frame::read(&mut &bytes[..]);
    let _ = Report::read(&mut &bytes[..]);
    // The piece count comes from a header: taken from the first bytes, huge ones included.
    let pieces = bytes
        .iter()
        .take(8)
        .fold(0u64, |n, b| n << 8 | u64::from(*b));
    let _ = Needed::read(&mut &bytes[..], pieces);
    let _ = read_layer(&mut &bytes[..], pieces, &mut |_, _| {});
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// No decoder panics or allocates beyond its bounds on bytes from a hostile peer.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            decode_everything(&bytes);
        }
    }
}
