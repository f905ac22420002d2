//! Resuming: the receiver holds a prefix of this file from an interrupted transfer; hash ours
//! and prove it is the same before the payload continues after it.

use std::io::Write;
use std::net::TcpStream;

use super::source::Source;
use crate::auth;
use crate::client::net;
use crate::error::SendError;
use crate::hash::{Prefix, Watermark};
use crate::watch::tick_until;
use crate::wire::{Decision, PrefixProof, KEEPALIVE};

/// The receiver holds the first `offset` bytes of this file from an interrupted transfer:
/// hashes ours (saying we are still here meanwhile), proves we hold the same bytes with a
/// proof keyed by its `nonce`, and reads its decision. Returns the prefix the payload
/// continues from (empty to start over).
pub(super) fn prove_prefix(
    mut stream: &TcpStream,
    source: &Source,
    offset: u64,
    nonce: &[u8; 32],
) -> Result<Prefix, SendError> {
    let ours = hash_prefix_telling(source, offset, &mut || {
        stream
            .write_all(&KEEPALIVE)
            .map_err(net("keeping the connection up"))
    })?;
    let proof = PrefixProof(auth::prefix_proof(nonce, offset, &ours.digest()));
    stream
        .write_all(&proof.encode())
        .map_err(net("proving the resumed prefix"))?;
    match Decision::read(&mut stream)? {
        Decision::Resume => {
            log::info!("resuming: the receiver holds the first {offset} bytes");
            Ok(ours)
        }
        Decision::Restart => {
            log::warn!(
                "the receiver's partial file ({offset} bytes) differs from this file; starting over"
            );
            Ok(Prefix::empty())
        }
    }
}

/// Hashes the first `len` bytes of `source` on a thread of its own while `tick` tells the
/// receiver, every [`crate::watch::KEEPALIVE_EVERY`], that we are still here; stops hashing as
/// soon as telling fails (the receiver has gone) and returns that error.
pub(super) fn hash_prefix_telling(
    source: &Source,
    len: u64,
    tick: &mut dyn FnMut() -> Result<(), SendError>,
) -> Result<Prefix, SendError> {
    let sparse = source.sparse_data.is_some();
    let mark = Watermark::complete(len);
    let (hashed, told) = std::thread::scope(|s| {
        let (finished, hashing) = std::sync::mpsc::channel::<()>();
        let (file, mark_ref) = (&source.file, &mark);
        let hasher = s.spawn(move || {
            let hashed = Prefix::of_file_until(file, len, sparse, mark_ref);
            let _ = finished.send(());
            hashed
        });
        let told = tick_until(&hashing, &mark, tick);
        (hasher.join().expect("hashing thread panicked"), told)
    });
    told?;
    match hashed {
        Ok(Some(prefix)) => Ok(prefix),
        Ok(None) => unreachable!("aborted only when telling failed"),
        Err(error) => Err(SendError::Source {
            path: source.path.clone(),
            error,
        }),
    }
}
