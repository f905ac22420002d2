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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// No decoder panics or allocates beyond its bounds on bytes from a hostile peer.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = read_hello(&mut &bytes[..]);
            let _ = Header::decode_body(&bytes);
            let _ = Reply::read(&mut &bytes[..]);
            let _ = Verdict::read(&mut &bytes[..]);
            let _ = read_proof(&mut &bytes[..]);
            let _ = Record::read(&mut &bytes[..]);
            let _ = Trailer::read(&mut &bytes[..]);
            let _ = PrefixProof::read(&mut &bytes[..]);
            let _ = AfterTrailer::read(&mut &bytes[..]);
            let _ = read_hops(&mut &bytes[..]);
            let _ = Manifest::read(&mut &bytes[..]);
            let _ = Answers::read(&mut &bytes[..], 3);
            let _ = Frame::read(&mut &bytes[..]);
            let _ = Report::read(&mut &bytes[..]);
        }
    }
}
