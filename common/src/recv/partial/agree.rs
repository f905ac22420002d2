//! Resume agreement: where a kept partial goes on from (its held bytes cut back to a piece
//! boundary), what is known of the bytes before it (their pieces' roots, or nothing), and the
//! sender's proof, checked after the rest has arrived, that it holds the same bytes.

use std::io;
use std::net::TcpStream;
use std::os::fd::AsFd;

use super::TempFile;
use crate::auth;
use crate::error::RecvError;
use crate::hash::{Hash, Prefix, Start, PIECE};
use crate::recv::file::prepare;
use crate::recv::handshake::accept;
use crate::recv::Receiver;
use crate::wire::{Header, PrefixProof, Reply};

/// Where a kept partial that holds `held` bytes resumes: at the last piece boundary within
/// them, with what is known of the bytes before it: their pieces' roots when its record kept
/// them (then nothing is read back), else nothing (they are hashed beside the rest). Cuts the
/// file back to that boundary, so that what follows is written afresh.
pub(crate) fn resume_point<D: AsFd>(
    temp: &TempFile<D>,
    header: &Header,
    held: u64,
) -> io::Result<(u64, Start)> {
    let offset = held - held % PIECE;
    let start = start_at(temp, offset);
    if offset < held {
        rustix::fs::ftruncate(&temp.file, offset)?;
        prepare(&temp.file, header)?;
    }
    Ok((offset, start))
}

/// Where hashing a partial resumed at `offset` (a piece boundary) starts: from the roots its
/// record kept of its first pieces, as many as it kept (those of the last pieces held may be
/// missing: the hashing lags the bytes a little), then reading back only what they miss.
pub(crate) fn start_at<D: AsFd>(temp: &TempFile<D>, offset: u64) -> Start {
    let logged = temp.pieces.pieces().min(offset / PIECE);
    log::debug!(
        "{}: resuming at {offset} with the roots of {logged} pieces kept",
        temp.name
    );
    let pieces = temp.pieces.first(logged);
    temp.pieces.truncate(logged);
    match logged * PIECE {
        0 => Start::Unhashed(offset),
        kept if kept == offset => Start::Hashed(Prefix::of_pieces(&pieces)),
        _ => Start::Partly(Prefix::of_pieces(&pieces), offset),
    }
}

/// A resume offered to the sender: where, and the nonce its proof is keyed with.
pub(crate) struct Offer {
    pub(crate) offset: u64,
    pub(crate) nonce: [u8; 32],
}

impl Offer {
    /// Whether the sender's proof shows it holds the same first bytes as our partial, whose
    /// root is `ours` (`None`: it could not be read back).
    pub(crate) fn proven(&self, ours: Option<Hash>, theirs: &PrefixProof) -> bool {
        ours.is_some_and(|ours| {
            let proof = auth::prefix_proof(&self.nonce, self.offset, &ours);
            auth::same_proof(&proof, &theirs.0)
        })
    }
}

impl Receiver {
    /// Accepts a transfer into a partial that holds `held` bytes: offers to resume from its
    /// last piece boundary with a fresh nonce (or plainly accepts, when that is byte 0).
    /// Returns the offer and where hashing starts.
    pub(crate) fn offer_resume(
        &self,
        stream: &TcpStream,
        header: &Header,
        temp: &TempFile<impl AsFd>,
        held: u64,
    ) -> Result<(Option<Offer>, Start), RecvError> {
        let (offset, start) = resume_point(temp, header, held)
            .map_err(|e| self.local("cutting the partial file back", e))?;
        if offset == 0 {
            accept(stream, header, Reply::Accept)?;
            return Ok((None, Start::Hashed(Prefix::empty())));
        }
        let nonce = auth::nonce().map_err(|e| self.local("drawing a nonce", e))?;
        accept(stream, header, Reply::Resume { offset, nonce })?;
        Ok((Some(Offer { offset, nonce }), start))
    }
}
