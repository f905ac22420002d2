//! Hashing a whole file before anything of it is sent (a tree's check of a file the receiver
//! holds), telling the receiver meanwhile that we are still here.

use super::source::Source;
use crate::error::SendError;
use crate::hash::{Prefix, Watermark};
use crate::watch::telling;

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
    let work = || Prefix::of_file_until(&source.file, len, sparse, &mark);
    let (hashed, told) = telling(&mark, work, tick);
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
