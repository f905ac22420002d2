//! A single file's transfer: header, handshake, a resumed prefix, the body (dense with
//! sendfile, or as sparse records) hashed on a second thread, the trailer, the verdict.

use std::io::Write;
use std::net::TcpStream;

use super::chain::read_hosts;
use super::land::{copy_failure, explain, judge, spoke_early};
use super::source::{data_between, Source};
use super::{auth_nonce, update, Phase, SendOptions, SendReport, Tick};
use crate::auth;
use crate::client::{handshake, net};
use crate::error::SendError;
use crate::hash::{
    hash_from, sha256_of, Hash, PieceLog, Prefix, Start, Watermark, PIECE, SMALL_FILE,
};
use crate::stages::thread_cpu;
use crate::sys::{self, CopyError};
use crate::watch::{tick_until, Patient};
use crate::wire::ProtocolError;
use crate::wire::{
    AfterTrailer, Header, PrefixProof, Record, Status, Trailer, Verdict, FLAG_INPLACE,
    FLAG_NO_VERIFY, FLAG_REPAIR, FLAG_UPDATE, KEEPALIVE,
};

/// Bytes per sendfile call: large enough that syscalls cost nothing, small enough for a lively
/// progress bar.
const SEND_CHUNK: usize = 4 << 20;

/// Sends one opened file: the header and handshake, the proof of a resumed prefix, the body,
/// the trailer, then the verdict (every host's, for a chain).
pub(super) fn transfer(
    mut stream: &TcpStream,
    source: &Source,
    opts: &SendOptions,
    report: &mut SendReport,
    progress: &mut dyn FnMut(Tick),
) -> Result<(), SendError> {
    let chained = !opts.chain.is_empty();
    let dense;
    let source = if chained && source.sparse_data.is_some() {
        dense = Source {
            sparse_data: None,
            file: source.file.try_clone().map_err(|error| SendError::Source {
                path: source.path.clone(),
                error,
            })?,
            path: source.path.clone(),
            ..*source
        };
        &dense
    } else {
        source
    };
    // Only a file of more than one piece can have some of its pieces there already; the plain
    // SHA-256 is computed beside a whole payload.
    let updatable = opts.update && !chained && !opts.sha256 && source.size > PIECE;
    let header = Header {
        name: report.name.clone(),
        size: source.size,
        mode: source.mode,
        mtime_sec: source.mtime.0,
        mtime_nsec: source.mtime.1,
        flags: match (opts.verify, chained, updatable) {
            (false, _, _) => FLAG_NO_VERIFY,
            (true, true, _) => 0,
            (true, false, false) => FLAG_REPAIR,
            (true, false, true) if opts.inplace => FLAG_REPAIR | FLAG_UPDATE | FLAG_INPLACE,
            (true, false, true) => FLAG_REPAIR | FLAG_UPDATE,
        },
        // Resuming trusts a prefix only by its digest, so it needs verification. A chain is
        // neither resumed nor sparse (every hop forwards plain bytes).
        source_id: (opts.verify && !chained).then_some(source.id),
        sparse_data_len: source.sparse_data.filter(|_| !chained),
        auth_nonce: auth_nonce(opts)?,
        chain: chained.then(|| opts.chain.clone()),
    };
    let accepted = handshake(stream, &header, opts.token.as_ref())?;
    let integrity = accepted.integrity;
    if accepted.update {
        return update::send_update(stream, source, &integrity, opts.inplace, report, progress);
    }
    // A resumed transfer sends the rest at once; the first bytes are hashed meanwhile, and
    // proven to be the receiver's after the payload.
    let (start, offer) = match accepted.resume {
        Some((offset, nonce)) => (Start::Unhashed(offset), Some((offset, nonce))),
        None => (Start::Hashed(Prefix::empty()), None),
    };
    report.resumed_from = start.offset();
    progress(Tick::Bytes(start.offset()));
    progress(Tick::Phase(Phase::Sending));

    let mut bytes = |n| progress(Tick::Bytes(n));
    let sent = send_body(
        stream,
        source,
        start,
        opts.verify,
        opts.sha256,
        report,
        &mut bytes,
    );
    let mut ending = Vec::new();
    if let Some((offset, nonce)) = offer {
        // An abandoned file's proof is not looked at: the file is discarded anyway.
        let root = match &sent {
            Ok(body) => body.prefix.unwrap_or_default(),
            Err(_) => [0; 32],
        };
        ending.extend_from_slice(&PrefixProof(auth::prefix_proof(&nonce, offset, &root)).encode());
    }
    let trailer = match &sent {
        Ok(body) => Trailer::sealed(body.digest, &integrity, 0).encode(),
        // The whole payload went out, then the source changed: the receiver is told to
        // discard it, and says it did.
        Err(SendError::SourceChanged) => Trailer::abandoned(),
        Err(_) => {
            let e = explain(stream, report, sent.expect_err("matched Err"));
            // Without a trailer the receiver keeps what it got, hidden, for a resume.
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return Err(e);
        }
    };
    ending.extend_from_slice(&trailer);
    // The receiver speaks only after the trailer (but for a failure, at once).
    if let Some(early) = spoke_early(stream, report)? {
        return Err(early);
    }
    stream
        .write_all(&ending)
        .map_err(net("sending the trailer"))?;
    progress(Tick::Phase(Phase::Landing));

    let digest = sent.as_ref().ok().and_then(|b| b.digest);
    let verdict = match offer {
        Some((offset, _)) => {
            match update::answer(stream, source, digest, &integrity, report, progress)? {
                AfterTrailer::Verdict(v) => v,
                AfterTrailer::Restart if sent.is_ok() => {
                    log::warn!(
                    "the receiver's partial file ({offset} bytes) differs from this file; sending it all again"
                );
                    report.resumed_from = 0;
                    progress(Tick::Restart);
                    progress(Tick::Phase(Phase::Sending));
                    let mut bytes = |n| progress(Tick::Bytes(n));
                    let again = send_body(
                        stream,
                        source,
                        Start::Hashed(Prefix::empty()),
                        false,
                        false,
                        report,
                        &mut bytes,
                    );
                    let digest = sent.as_ref().map(|b| b.digest).unwrap_or_default();
                    let trailer = match again {
                        Ok(_) => Trailer::sealed(digest, &integrity, 0).encode(),
                        Err(SendError::SourceChanged) => Trailer::abandoned(),
                        Err(e) => {
                            let e = explain(stream, report, e);
                            let _ = stream.shutdown(std::net::Shutdown::Both);
                            return Err(e);
                        }
                    };
                    if let Some(early) = spoke_early(stream, report)? {
                        return Err(early);
                    }
                    stream
                        .write_all(&trailer)
                        .map_err(net("sending the trailer"))?;
                    progress(Tick::Phase(Phase::Landing));
                    let verdict =
                        match update::answer(stream, source, digest, &integrity, report, progress)?
                        {
                            AfterTrailer::Verdict(v) => v,
                            _ => {
                                return Err(
                                    ProtocolError::Malformed("a second restart".into()).into()
                                )
                            }
                        };
                    return match again {
                        Ok(_) => judge(verdict, digest, &integrity, 0, report),
                        Err(e) => abandoned(verdict, e),
                    };
                }
                AfterTrailer::Restart | AfterTrailer::Repair(_) => {
                    return Err(ProtocolError::Malformed(
                        "a restart for a file its sender abandoned".into(),
                    )
                    .into())
                }
            }
        }
        None if chained => Verdict::read(&mut Patient::message(stream))?,
        None => match update::answer(stream, source, digest, &integrity, report, progress)? {
            AfterTrailer::Verdict(v) => v,
            _ => {
                return Err(
                    ProtocolError::Malformed("a restart for a transfer not resumed".into()).into(),
                )
            }
        },
    };
    let digest = match sent {
        Ok(body) => body.digest,
        Err(e) => return abandoned(verdict, e),
    };
    if chained {
        read_hosts(stream, &opts.chain, verdict, digest, &integrity, report);
        return Ok(());
    }
    judge(verdict, digest, &integrity, 0, report)
}

/// An abandoned file's outcome: only a receiver that says it failed (discarded) is believed.
fn abandoned(verdict: Verdict, e: SendError) -> Result<(), SendError> {
    match verdict.status {
        Status::Failed => Err(e),
        _ => Err(ProtocolError::Malformed(
            "the receiver did not discard a file abandoned by its sender".into(),
        )
        .into()),
    }
}

/// What [`send_body`] sent: the file's root when verifying, and the root of the first bytes
/// when it started from an unhashed prefix (the proof of a resumed transfer).
#[derive(Debug, Default)]
pub(super) struct Body {
    pub(super) digest: Option<Hash>,
    pub(super) prefix: Option<Hash>,
}

/// Sends `source`'s content from `start` on (dense, or as sparse records) and, when verifying,
/// returns its root over the whole file (on [`hash::threads`] threads, beside the copy), with
/// the root of an unhashed start's first bytes. Adds to the report's byte counts and CPU. With
/// `sha256`, also the plain SHA-256 (see [`SendReport::sha256`]). On error no trailer may
/// follow: the payload is short, or the source changed.
pub(super) fn send_body(
    stream: &TcpStream,
    source: &Source,
    start: Start,
    verify: bool,
    sha256: bool,
    report: &mut SendReport,
    progress: &mut dyn FnMut(u64),
) -> Result<Body, SendError> {
    let hash_start = start;
    let start = hash_start.offset();
    let small = source.size <= SMALL_FILE;
    // No TCP_CORK: the header has already crossed (the accept must come back before any
    // payload), and corking the payload measured 11 % slower with --no-verify
    // (docs/BENCHMARKS.md, levers).
    if !small {
        let _ = rustix::fs::fadvise(&source.file, 0, None, rustix::fs::Advice::Sequential);
    }
    let mark = Watermark::complete(source.size);
    let sparse = source.sparse_data.is_some();
    // The pieces' roots, for a repair round or a .torrent.
    let log = PieceLog::default();
    let hash = |start| hash_from(start, &source.file, source.size, &mark, sparse, Some(&log));
    let plain = sha256.then_some(());
    let (copied, digest) = std::thread::scope(|s| {
        let (mut prefix, mut hasher) = (Some(hash_start), None);
        let (finished, hashing) = std::sync::mpsc::channel::<()>();
        if verify && !small {
            let p = prefix.take().expect("not taken yet");
            hasher = Some(s.spawn(move || {
                let hashed = hash(p);
                let _ = finished.send(());
                hashed
            }));
        }
        let sha256 = plain.map(|()| {
            s.spawn(|| {
                let cpu = thread_cpu();
                let d = sha256_of(&source.file, source.size, &mark, sparse);
                (d, thread_cpu().saturating_sub(cpu))
            })
        });
        let cpu = (!small).then(thread_cpu);
        let zero_copy = &mut report.zero_copy;
        let copied = match source.sparse_data {
            Some(_) => copy_sparse(stream, source, start, zero_copy, progress),
            None => copy_range(
                stream,
                source,
                start,
                source.size - start,
                zero_copy,
                progress,
            )
            .map(|n| start + n),
        };
        if let Some(cpu) = cpu {
            report.stages.network_cpu += thread_cpu().saturating_sub(cpu);
        }
        // The payload is out and the receiver hashes what it got; while our own hashing
        // finishes, tell it we are still here, and stop hashing if it has gone.
        let mut told = Ok(());
        if copied.is_err() {
            mark.abort();
        } else if hasher.is_some() {
            told = tick_until(&hashing, &mark, &mut || (&*stream).write_all(&KEEPALIVE));
        }
        let hashed = match (verify, prefix) {
            (true, Some(p)) if copied.is_ok() => Some(hash(p)),
            _ => hasher.map(|h| h.join().expect("hashing thread panicked")),
        };
        let digest = hashed.map(|(digest, cpu)| {
            report.stages.hash_cpu += cpu;
            digest
        });
        if let Some(h) = sha256 {
            let (d, cpu) = h.join().expect("hashing thread panicked");
            report.stages.sha256_cpu += cpu;
            report.sha256 = d.ok().flatten();
        }
        (
            copied.and_then(|n| told.map(|()| n).map_err(CopyError::Write)),
            digest,
        )
    });
    let sent = match copied {
        Ok(n) => n,
        Err(e) => return Err(copy_failure(report, e)),
    };
    report.bytes_sent += match source.sparse_data {
        Some(_) => data_between(&source.file, start, source.size).unwrap_or(0),
        None => sent - start,
    };
    if sent < source.size {
        return Err(SendError::SourceShrank {
            sent,
            expected: source.size,
        });
    }
    let body = match digest {
        None => Body::default(),
        Some(Ok((Some(digest), prefix))) => Body {
            digest: Some(digest),
            prefix,
        },
        Some(Ok((None, _))) => unreachable!("the sender's watermark is complete from the start"),
        Some(Err(source_err)) => {
            return Err(SendError::Source {
                path: source.path.clone(),
                error: source_err,
            })
        }
    };
    if source.changed() {
        return Err(SendError::SourceChanged);
    }
    if body.digest.is_some() && !small {
        report.layer = Some(log.first(u64::MAX));
    }
    Ok(body)
}

/// Sends a file with holes as records from `from` on: each data extent with sendfile at its
/// offset, each hole as (offset, length). Returns the logical bytes covered; fewer than the
/// size, or data that no longer adds up to what the header announced, means the file changed.
fn copy_sparse(
    stream: &TcpStream,
    source: &Source,
    from: u64,
    zero_copy: &mut bool,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, CopyError> {
    let before = data_between(&source.file, 0, from).map_err(CopyError::Read)?;
    let (mut pos, mut data) = (from, before);
    while pos < source.size {
        let next = sys::next_data(&source.file, pos, source.size).map_err(CopyError::Read)?;
        let (start, end) = next.unwrap_or((source.size, source.size));
        if start > pos {
            send_record(
                stream,
                Record::Hole {
                    offset: pos,
                    len: start - pos,
                },
            )?;
            progress(start - pos);
            pos = start;
        }
        if end > start {
            let len = end - start;
            send_record(stream, Record::Data { offset: start, len })?;
            let n = copy_range(stream, source, start, len, zero_copy, progress)?;
            data += n;
            pos = start + n;
            if n < len {
                return Ok(pos);
            }
        }
    }
    if Some(data) != source.sparse_data {
        return Err(CopyError::SourceChanged);
    }
    send_record(stream, Record::End)?;
    Ok(pos)
}

/// Sends a record header, telling the kernel more is coming so it leaves with the data.
pub(super) fn send_record(stream: &TcpStream, record: Record) -> Result<(), CopyError> {
    let bytes = record.encode();
    let mut done = 0;
    while done < bytes.len() {
        match rustix::net::send(stream, &bytes[done..], rustix::net::SendFlags::MORE) {
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(CopyError::Write(e.into())),
        }
    }
    Ok(())
}

/// Moves `len` bytes at `offset` with sendfile, or read/write where the kernel cannot.
pub(super) fn copy_range(
    stream: &TcpStream,
    source: &Source,
    offset: u64,
    len: u64,
    zero_copy: &mut bool,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, CopyError> {
    let mut offset = offset;
    match sys::sendfile_all(stream, &source.file, &mut offset, len, SEND_CHUNK, progress) {
        Err(CopyError::Unsupported) => {
            log::info!(
                "sendfile cannot read {}; falling back to read/write",
                source.path.display()
            );
            *zero_copy = false;
            sys::read_write_all(stream, &source.file, &mut offset, len, progress)
        }
        other => other,
    }
}
