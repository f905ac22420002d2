//! Sending standard input: a stream of unknown length, spliced from the input pipe to the
//! socket in data records, hashed on a second thread from a tee(2) of the same pipe.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::file::send_record;
use super::land::{explain_failure, judge, spoke_early};
use super::{auth_nonce, open_connection, Phase, SendOptions, SendReport, Tick};
use crate::client::{handshake, net};
use crate::error::SendError;
use crate::hash::{hash_reader, TreeHasher};
use crate::name::{validate_name, NameError};
use crate::stages::thread_cpu;
use crate::sys::{self, CopyError, Pipe};
use crate::watch::Patient;
use crate::wire::{Header, Record, Trailer, Verdict, FLAG_NO_VERIFY, FLAG_STREAM};

/// Sends standard input to `addr` under `opts.name` (required: a stream has no name of its
/// own). `progress` is told each phase, and the bytes moved by each step.
pub fn send_stdin(
    addr: &str,
    opts: &SendOptions,
    progress: &mut dyn FnMut(Tick),
) -> Result<SendReport, SendError> {
    let name_err = |reason| SendError::Name {
        path: "-".into(),
        reason,
    };
    let name = opts.name.clone().ok_or(name_err(NameError::Empty))?;
    validate_name(&name).map_err(name_err)?;
    let start = Instant::now();
    progress(Tick::Phase(Phase::Connecting));
    let (stream, mut report) = open_connection(addr, opts, "-".as_ref(), name.clone())?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let header = Header {
        mode: 0o644,
        mtime_sec: now.as_secs() as i64,
        mtime_nsec: now.subsec_nanos(),
        flags: FLAG_STREAM | if opts.verify { 0 } else { FLAG_NO_VERIFY },
        auth_nonce: auth_nonce(opts)?,
        ..Header::new(&name, 0)
    };
    // A stream is not resumable, so a resume offer is refused inside the handshake.
    let integrity = handshake(&stream, &header, opts.token.as_ref())?.integrity;
    progress(Tick::Phase(Phase::Sending));
    let cpu = thread_cpu();
    let mut bytes = |n| progress(Tick::Bytes(n));
    let pumped = pump(&stream, opts.verify, &mut report.zero_copy, &mut bytes);
    report.stages.network_cpu = thread_cpu().saturating_sub(cpu);
    let (sent, digest) = match pumped {
        Ok(r) => r,
        Err(e) => return Err(explain_failure(&stream, &report, e)),
    };
    report.bytes = sent;
    report.bytes_sent = sent;
    if let Some(early) = spoke_early(&stream, &report)? {
        return Err(early);
    }
    let trailer = Trailer::sealed(digest, &integrity, 0);
    (&stream)
        .write_all(&trailer.encode())
        .map_err(net("sending the trailer"))?;
    progress(Tick::Phase(Phase::Landing));
    let verdict = Verdict::read(&mut Patient::message(&stream))?;
    judge(verdict, digest, &integrity, 0, &mut report)?;
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Moves standard input into the socket as data records and an end record. Returns the bytes
/// moved and, when verifying, their SHA-256.
fn pump(
    sock: &TcpStream,
    verify: bool,
    zero_copy: &mut bool,
    progress: &mut dyn FnMut(u64),
) -> Result<(u64, Option<[u8; 32]>), CopyError> {
    let input = std::io::stdin();
    let pipe = Pipe::new(1 << 20).map_err(CopyError::Read)?;
    let first = match sys::fill_pipe(&input, &pipe) {
        Err(CopyError::Unsupported) => {
            log::info!("cannot splice from standard input; using read/write");
            *zero_copy = false;
            return pump_buffered(std::io::stdin().lock(), sock, verify, progress);
        }
        other => other?,
    };
    let copy = if verify {
        Some(Pipe::new(1 << 20).map_err(CopyError::Read)?.into_ends())
    } else {
        None
    };
    let (copy_read, copy_write) = match copy {
        Some((r, w)) => (Some(r), Some(w)),
        None => (None, None),
    };
    std::thread::scope(|s| {
        let hasher = copy_read.map(|r| s.spawn(move || hash_reader(File::from(r))));
        let mut copy_write = copy_write;
        let result = (|| {
            let mut pos = 0u64;
            let mut n = first;
            while n > 0 {
                send_record(
                    sock,
                    Record::Data {
                        offset: pos,
                        len: n as u64,
                    },
                )?;
                sys::drain_pipe_to(&pipe, copy_write.as_ref(), sock, n)?;
                pos += n as u64;
                progress(n as u64);
                n = sys::fill_pipe(&input, &pipe)?;
            }
            send_record(sock, Record::End)?;
            Ok(pos)
        })();
        // End of the copy: the hashing thread sees end of file.
        copy_write.take();
        let digest = hasher.map(|h| h.join().expect("hashing thread panicked"));
        let pos = result?;
        match digest {
            None => Ok((pos, None)),
            Some(Ok(d)) => Ok((pos, Some(d))),
            Some(Err(e)) => Err(CopyError::Read(e)),
        }
    })
}

/// For inputs the kernel cannot splice from (a terminal, before Linux 6.5): read, hash, write.
fn pump_buffered(
    mut input: impl Read,
    sock: &TcpStream,
    verify: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<(u64, Option<[u8; 32]>), CopyError> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut hasher = verify.then(TreeHasher::new);
    let mut pos = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        send_record(
            sock,
            Record::Data {
                offset: pos,
                len: n as u64,
            },
        )?;
        (&*sock).write_all(&buf[..n]).map_err(CopyError::Write)?;
        if let Some(h) = &mut hasher {
            h.update(&buf[..n]);
        }
        pos += n as u64;
        progress(n as u64);
    }
    send_record(sock, Record::End)?;
    Ok((pos, hasher.map(TreeHasher::finalize)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What zsend reads and writes itself is hashed as the receiver hashes it: a tree root,
    /// past one leaf (below it, a root is a plain SHA-256).
    #[test]
    fn the_buffered_pump_sends_records_and_hashes_the_root() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).unwrap();
            got
        });
        let (sent, digest) = pump_buffered(&data[..], &sock, true, &mut |_| {}).unwrap();
        drop(sock);
        assert_eq!(sent, data.len() as u64);
        assert_eq!(digest, Some(crate::hash::root_of(&data)));
        let wire = reader.join().unwrap();
        let (mut r, mut payload) = (&wire[..], Vec::new());
        loop {
            match Record::read(&mut r).unwrap() {
                Record::Data { len, .. } => {
                    let (now, rest) = r.split_at(len as usize);
                    payload.extend_from_slice(now);
                    r = rest;
                }
                Record::End => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(payload, data);
    }
}
