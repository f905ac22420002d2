//! Sending only what differs: the file's piece layer, then the pieces the receiver asks for,
//! both for an update of a file the receiver holds (protocol section 2d) and for the repair
//! rounds a receiver calls for when its root and the trailer's disagree (section 5a).

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use super::file::{copy_range, send_record};
use super::land::{copy_failure, explain, judge, spoke_early};
use super::source::Source;
use super::{Phase, SendReport, Tick, UpdateReport};
use crate::auth::Integrity;
use crate::client::net;
use crate::error::SendError;
use crate::hash::{hash_from, Hash, PieceLog, Prefix, Start, Watermark};
use crate::sys::{self, CopyError};
use crate::watch::{telling, Patience, Patient};
use crate::wire::{
    encode_layer, pieces_of, AfterTrailer, Needed, ProtocolError, Record, Trailer, KEEPALIVE,
    MAX_REPAIR_ROUNDS,
};

/// Sends an update of the receiver's file (after its [`Reply::Update`](crate::wire::Reply)):
/// hashes the whole file on every thread while telling the receiver we are here, sends the
/// piece layer, then the pieces the receiver lists and the trailer; then its verdict, through
/// any repair rounds.
pub(super) fn send_update(
    stream: &TcpStream,
    source: &Source,
    integrity: &Integrity,
    inplace: bool,
    report: &mut SendReport,
    progress: &mut dyn FnMut(Tick),
) -> Result<(), SendError> {
    progress(Tick::Phase(Phase::Comparing));
    let mut tell = || {
        (&*stream)
            .write_all(&KEEPALIVE)
            .map_err(net("comparing pieces"))
    };
    let (root, layer) = layer_telling(source, report, &mut tell)?;
    let pieces = pieces_of(source.size);
    (&*stream)
        .write_all(&encode_layer(&layer))
        .map_err(net("sending the piece layer"))?;
    let needed = needed_pieces(stream, pieces, source.size)?;
    report.update = Some(UpdateReport {
        inplace,
        pieces,
        sent: needed.pieces(),
    });
    let unchanged = source.size - needed.spans(source.size).map(|(_, n)| n).sum::<u64>();
    progress(Tick::Bytes(unchanged));
    progress(Tick::Phase(Phase::Sending));
    send_pieces(stream, source, &needed, report, progress)?;
    report.layer = Some(layer);
    let digest = Some(root);
    write_trailer(stream, source, digest, integrity, report)?;
    progress(Tick::Phase(Phase::Landing));
    match answer(stream, source, digest, integrity, report, progress)? {
        AfterTrailer::Verdict(v) => judge(v, digest, integrity, 0, report),
        _ => Err(ProtocolError::Malformed("a restart for an update".into()).into()),
    }
}

/// Sends the trailer: the root, or, when the source changed meanwhile, an abandoned one (and
/// then the file is not sent).
fn write_trailer(
    stream: &TcpStream,
    source: &Source,
    digest: Option<Hash>,
    integrity: &Integrity,
    report: &SendReport,
) -> Result<(), SendError> {
    let changed = source.changed();
    let trailer = match changed {
        true => Trailer::abandoned(),
        false => Trailer::sealed(digest, integrity, 0).encode(),
    };
    if let Some(early) = spoke_early(stream, report)? {
        return Err(early);
    }
    (&*stream)
        .write_all(&trailer)
        .map_err(net("sending the trailer"))?;
    if changed {
        let _ = crate::wire::Verdict::read(&mut Patient::message(stream));
        return Err(SendError::SourceChanged);
    }
    Ok(())
}

/// Reads what the receiver answers a trailer with, going through the repair rounds it calls
/// for (each: our piece layer, its list, those pieces, the trailer again), and returns its
/// verdict or a restart.
pub(super) fn answer(
    stream: &TcpStream,
    source: &Source,
    digest: Option<Hash>,
    integrity: &Integrity,
    report: &mut SendReport,
    progress: &mut dyn FnMut(Tick),
) -> Result<AfterTrailer, SendError> {
    let mut expected = 1;
    loop {
        let round = match AfterTrailer::read(&mut Patient::message(stream))? {
            AfterTrailer::Repair(round) if round == expected && digest.is_some() => round,
            AfterTrailer::Repair(round) => {
                return Err(ProtocolError::Malformed(format!(
                "a repair round {round} where {expected} of at most {MAX_REPAIR_ROUNDS} could come"
            ))
                .into())
            }
            // A restart answers a resumed file's proof, before any round: after one, the
            // rounds would start over (three per transfer).
            AfterTrailer::Restart if expected > 1 => {
                return Err(
                    ProtocolError::Malformed("a restart after a repair round".into()).into(),
                )
            }
            other => return Ok(other),
        };
        log::warn!(
            "the receiver's copy differs from the file (repair round {round}); finding the pieces that differ"
        );
        let layer = match report.layer.take() {
            Some(layer) if layer.iter().map(|(_, n)| n).sum::<u64>() == pieces_of(source.size) => {
                layer
            }
            _ => {
                let mut tell = || (&*stream).write_all(&KEEPALIVE).map_err(net("repairing"));
                layer_telling(source, report, &mut tell)?.1
            }
        };
        (&*stream)
            .write_all(&encode_layer(&layer))
            .map_err(net("sending the piece layer"))?;
        report.layer = Some(layer);
        let needed = needed_pieces(stream, pieces_of(source.size), source.size)?;
        report.repaired += needed.pieces();
        progress(Tick::Phase(Phase::Sending));
        send_pieces(stream, source, &needed, report, &mut |_| {})?;
        write_trailer(stream, source, digest, integrity, report)?;
        progress(Tick::Phase(Phase::Landing));
        expected += 1;
    }
}

/// The file's root and piece layer, hashed on every thread while `tick` tells the receiver,
/// every [`crate::watch::KEEPALIVE_EVERY`], that we are still here.
fn layer_telling(
    source: &Source,
    report: &mut SendReport,
    tick: &mut dyn FnMut() -> Result<(), SendError>,
) -> Result<(Hash, Vec<(Hash, u64)>), SendError> {
    let sparse = source.sparse_data.is_some();
    let mark = Watermark::complete(source.size);
    let log = PieceLog::default();
    let work = || {
        let start = Start::Hashed(Prefix::empty());
        hash_from(start, &source.file, source.size, &mark, sparse, Some(&log))
    };
    let (hashed, told) = telling(&mark, work, tick);
    told?;
    let (hashed, cpu) = hashed;
    report.stages.hash_cpu += cpu;
    match hashed {
        Ok((Some(root), _)) => Ok((root, log.first(u64::MAX))),
        Ok((None, _)) => unreachable!("aborted only when telling failed"),
        Err(error) => Err(SendError::Source {
            path: source.path.clone(),
            error,
        }),
    }
}

/// Sends the listed pieces as records: each span's data extents with sendfile, its holes as
/// hole records, then the end record. A source that shrank below a span is an error.
fn send_pieces(
    stream: &TcpStream,
    source: &Source,
    needed: &Needed,
    report: &mut SendReport,
    progress: &mut dyn FnMut(Tick),
) -> Result<(), SendError> {
    let fail = |report: &SendReport, e| explain(stream, report, copy_failure(report, e));
    for (start, len) in needed.spans(source.size) {
        let end = start + len;
        let mut pos = start;
        while pos < end {
            let next = match source.sparse_data {
                Some(_) => sys::next_data(&source.file, pos, end).map_err(CopyError::Read),
                None => Ok(Some((pos, end))),
            };
            let (from, to) = match next {
                Ok(n) => n.unwrap_or((end, end)),
                Err(e) => return Err(fail(report, e)),
            };
            if from > pos {
                let hole = Record::Hole {
                    offset: pos,
                    len: from - pos,
                };
                send_record(stream, hole).map_err(|e| fail(report, e))?;
                progress(Tick::Bytes(from - pos));
            }
            if to > from {
                let data = Record::Data {
                    offset: from,
                    len: to - from,
                };
                send_record(stream, data).map_err(|e| fail(report, e))?;
                let mut bytes = |n| progress(Tick::Bytes(n));
                let mut zero_copy = report.zero_copy;
                let n = copy_range(stream, source, from, to - from, &mut zero_copy, &mut bytes)
                    .map_err(|e| fail(report, e))?;
                report.zero_copy = zero_copy;
                report.bytes_sent += n;
                if n < to - from {
                    return Err(SendError::SourceShrank {
                        sent: from + n,
                        expected: source.size,
                    });
                }
            }
            pos = to.max(from);
        }
    }
    send_record(stream, Record::End).map_err(|e| fail(report, e))
}

/// The receiver's list of needed pieces, after its keepalives while it hashes its own file of
/// about `size` bytes: for as long as that could take, not forever.
fn needed_pieces(stream: &TcpStream, pieces: u64, size: u64) -> Result<Needed, SendError> {
    let timeout = stream.read_timeout().ok().flatten();
    let mut patience = Patience::for_bytes(timeout.unwrap_or(Duration::from_secs(60)), size);
    Ok(Needed::read_telling(&mut &*stream, pieces, &mut || {
        patience.still()
    })?)
}
