//! `--stdout`: the payload spliced through to standard output, teed into a pipe that a second
//! thread hashes; nothing is written to disk.

use std::fs::File;
use std::io::Write;
use std::net::TcpStream;
use std::os::fd::OwnedFd;

use super::payload::{receive_into, Sink};
use super::{Receiver, TransferRecord, PIPE_SIZE};
use crate::error::RecvError;
use crate::hash::hash_reader;
use crate::sys::{self, CopyError, Pipe};
use crate::wire::Header;

impl Receiver {
    /// `--stdout`: splices the payload through to standard output, teeing it into a pipe that a
    /// second thread hashes. Nothing is written to disk.
    pub(super) fn deliver_to_stdout(
        &self,
        stream: &TcpStream,
        header: &Header,
        record: &mut TransferRecord,
    ) -> Result<Option<[u8; 32]>, RecvError> {
        let pipe = Pipe::new(PIPE_SIZE).map_err(|e| self.local("creating a pipe", e))?;
        let (copy_read, copy_write) = if header.verify() {
            let copy = Pipe::new(PIPE_SIZE).map_err(|e| self.local("creating a pipe", e))?;
            let (r, w) = copy.into_ends();
            (Some(r), Some(w))
        } else {
            (None, None)
        };
        let mut received = 0u64;
        let (copied, digest) = std::thread::scope(|s| {
            let hasher = copy_read.map(|r| s.spawn(move || hash_reader(File::from(r))));
            let mut copy_write = copy_write;
            let mut sink = StdoutSink {
                pipe: &pipe,
                copy: copy_write.as_ref(),
                out: std::io::stdout(),
            };
            let copied = receive_into(stream, header, 0, &mut sink, &mut |done| received = done);
            // The hashing thread sees end of file once the copy's write end is closed.
            copy_write.take();
            let digest = hasher.map(|h| h.join().expect("hashing thread panicked"));
            (copied, digest)
        });
        record.received = received;
        self.payload_outcome(header, copied, record, || {
            "writing to standard output".into()
        })?;
        digest
            .transpose()
            .map_err(|e| self.local("hashing what went to standard output", e))
    }
}

/// Through to standard output, teed into a pipe that a hashing thread reads.
pub(super) struct StdoutSink<'a> {
    pipe: &'a Pipe,
    copy: Option<&'a OwnedFd>,
    out: std::io::Stdout,
}

impl Sink for StdoutSink<'_> {
    fn data(
        &mut self,
        stream: &TcpStream,
        _offset: u64,
        len: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, CopyError> {
        sys::splice_through(stream, self.pipe, self.copy, &self.out, len, progress)
    }

    /// Writes the hole's zeros, a MiB at a time, for as long as the sender is there: a record
    /// of 17 bytes can declare 2^62 of them, and a sender gone ends the work, as it ends the
    /// hashing of holes into a file.
    fn hole(&mut self, stream: &TcpStream, _offset: u64, len: u64) -> Result<(), CopyError> {
        let zeros = vec![0u8; (1 << 20).min(len as usize)];
        let mut left = len;
        while left > 0 {
            if crate::watch::peer_left(stream) {
                let gone = std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "the sender went away",
                );
                return Err(CopyError::Read(gone));
            }
            let n = left.min(zeros.len() as u64) as usize;
            self.out.write_all(&zeros[..n]).map_err(CopyError::Write)?;
            if let Some(c) = self.copy {
                File::from(c.try_clone().map_err(CopyError::Write)?)
                    .write_all(&zeros[..n])
                    .map_err(CopyError::Write)?;
            }
            left -= n as u64;
        }
        Ok(())
    }
}
