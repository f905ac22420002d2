//! A single file's transfer: header, handshake, a resumed prefix, the body (dense with
//! sendfile, or as sparse records) hashed on a second thread, the trailer, the verdict.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use super::chain::read_hosts;
use super::land::{copy_failure, explain, judge, spoke_early};
use super::resume::prove_prefix;
use super::source::{data_between, Source};
use super::{auth_nonce, Phase, SendOptions, SendReport, Tick};
use crate::client::{handshake, net};
use crate::error::SendError;
use crate::hash::SMALL_FILE;
use crate::hash::{hash_rest, hash_rest_timed, Prefix, Watermark};
use crate::stages::thread_cpu;
use crate::sys::{self, CopyError};
use crate::watch::tick_until;
use crate::wire::ProtocolError;
use crate::wire::{Header, Record, Status, Trailer, Verdict, FLAG_NO_VERIFY, KEEPALIVE};

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
    let header = Header {
        name: report.name.clone(),
        size: source.size,
        mode: source.mode,
        mtime_sec: source.mtime.0,
        mtime_nsec: source.mtime.1,
        flags: if opts.verify { 0 } else { FLAG_NO_VERIFY },
        // Resuming trusts a prefix only by its digest, so it needs verification. A chain is
        // neither resumed nor sparse (every hop forwards plain bytes).
        source_id: (opts.verify && !chained).then_some(source.id),
        sparse_data_len: source.sparse_data.filter(|_| !chained),
        auth_nonce: auth_nonce(opts)?,
        chain: chained.then(|| opts.chain.clone()),
    };
    let accepted = handshake(stream, &header, opts.token.as_ref())?;
    let integrity = accepted.integrity;
    let prefix = match accepted.resume {
        Some((offset, nonce)) => {
            progress(Tick::Phase(Phase::Checking(offset)));
            prove_prefix(stream, source, offset, &nonce)?
        }
        None => Prefix::empty(),
    };
    let start = prefix.len();
    report.resumed_from = start;
    progress(Tick::Bytes(start));
    progress(Tick::Phase(Phase::Sending));

    let mut bytes = |n| progress(Tick::Bytes(n));
    let sent = send_body(stream, source, prefix, opts.verify, report, &mut bytes);
    let trailer = match &sent {
        Ok(digest) => Trailer::sealed(*digest, &integrity, 0).encode(),
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
    // The receiver speaks only after the trailer (but for a failure, at once).
    if let Some(early) = spoke_early(stream, report)? {
        return Err(early);
    }
    stream
        .write_all(&trailer)
        .map_err(net("sending the trailer"))?;
    progress(Tick::Phase(Phase::Landing));

    let verdict = Verdict::read(&mut stream)?;
    let digest = match sent {
        Ok(digest) => digest,
        Err(e) => {
            // Abandoned: only a receiver that says it failed (discarded) is believed.
            return match verdict.status {
                Status::Failed => Err(e),
                _ => Err(ProtocolError::Malformed(
                    "the receiver did not discard a file abandoned by its sender".into(),
                )
                .into()),
            };
        }
    };
    if chained {
        read_hosts(stream, &opts.chain, verdict, digest, &integrity, report);
        return Ok(());
    }
    judge(verdict, digest, &integrity, 0, report)
}

/// Sends `source`'s content from `prefix.len()` on (dense, or as sparse records) and returns
/// its SHA-256 over the whole file when verifying. Adds to the report's byte counts and CPU.
/// On error no trailer may follow: the payload is short, or the source changed.
pub(super) fn send_body(
    stream: &TcpStream,
    source: &Source,
    prefix: Prefix,
    verify: bool,
    report: &mut SendReport,
    progress: &mut dyn FnMut(u64),
) -> Result<Option<[u8; 32]>, SendError> {
    let start = prefix.len();
    let small = source.size <= SMALL_FILE;
    // No TCP_CORK: the header has already crossed (the accept must come back before any
    // payload), and corking the payload measured 11 % slower with --no-verify
    // (docs/BENCHMARKS.md, levers).
    if !small {
        let _ = rustix::fs::fadvise(&source.file, 0, None, rustix::fs::Advice::Sequential);
    }
    let mark = Watermark::complete(source.size);
    let sparse = source.sparse_data.is_some();
    let hash = |prefix| hash_rest_timed(prefix, &source.file, source.size, &mark, sparse);
    // Small files are not worth the two clock reads of timing them.
    let untimed = |prefix| {
        (
            hash_rest(prefix, &source.file, source.size, &mark, sparse),
            Duration::ZERO,
        )
    };
    let (copied, digest) = std::thread::scope(|s| {
        let (mut prefix, mut hasher) = (Some(prefix), None);
        let (finished, hashing) = std::sync::mpsc::channel::<()>();
        if verify && !small {
            let p = prefix.take().expect("not taken yet");
            hasher = Some(s.spawn(move || {
                let hashed = hash(p);
                let _ = finished.send(());
                hashed
            }));
        }
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
            (true, Some(p)) if copied.is_ok() => Some(untimed(p)),
            _ => hasher.map(|h| h.join().expect("hashing thread panicked")),
        };
        let digest = hashed.map(|(digest, cpu)| {
            report.stages.hash_cpu += cpu;
            digest
        });
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
    let digest = match digest {
        None => None,
        Some(Ok(Some(d))) => Some(d),
        Some(Ok(None)) => unreachable!("the sender's watermark is complete from the start"),
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
    Ok(digest)
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
fn copy_range(
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
