//! The payload as it crosses: one run of bytes, or records (data, holes, the end) checked to
//! tile the file in order, moved from the socket into a sink: the file, standard output, or
//! the file and the next host of a chain.

use std::fs::File;
use std::net::TcpStream;

use crate::sys::{self, CopyError, Pipe, SpliceStats};
use crate::wire::{Header, ProtocolError, Record};

/// What stopped a payload short.
pub(super) enum Incoming {
    /// The copy itself failed.
    Copy(CopyError),
    /// A sparse sender's records broke the rules.
    Protocol(ProtocolError),
}

/// Where a payload goes: a file (data spliced at its offset, holes left unwritten) or standard
/// output (data spliced through, holes written as zeros).
pub(super) trait Sink {
    /// Moves `len` bytes of data at `offset` from the socket; returns how many arrived.
    fn data(
        &mut self,
        stream: &TcpStream,
        offset: u64,
        len: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, CopyError>;
    /// A hole of `len` bytes at `offset`, the records coming from `stream`.
    fn hole(&mut self, stream: &TcpStream, offset: u64, len: u64) -> Result<(), CopyError>;
}

/// Into the temporary file, hashed later by reading it back.
pub(super) struct FileSink<'a> {
    pub(super) pipe: &'a Pipe,
    pub(super) file: &'a File,
    pub(super) stats: &'a mut SpliceStats,
    /// Bytes of holes so far: what a durable checkpoint need not count.
    pub(super) holes: &'a std::cell::Cell<u64>,
}

impl Sink for FileSink<'_> {
    fn data(
        &mut self,
        stream: &TcpStream,
        offset: u64,
        len: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, CopyError> {
        let mut to = sys::SpliceTo {
            pipe: self.pipe,
            file: self.file,
            stats: self.stats,
            onward: None,
        };
        to.take_from(stream, offset, len, progress)
    }

    fn hole(&mut self, _: &TcpStream, _offset: u64, len: u64) -> Result<(), CopyError> {
        // The file was sized with ftruncate: the hole is already there.
        self.holes.set(self.holes.get() + len);
        Ok(())
    }
}

/// Receives the payload into `sink` from byte `start` on (0 unless resuming): one run of the
/// remaining bytes; for a sparse file, records that must tile the rest of the file in order
/// with data adding up to what the header announced; for a stream, data records until the end
/// record. Returns the logical bytes covered: fewer than the size if the sender closed early.
/// `progress` gets that count as it grows.
pub(super) fn receive_into(
    stream: &TcpStream,
    header: &Header,
    start: u64,
    sink: &mut dyn Sink,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, Incoming> {
    let is_stream = header.stream();
    let (size, data_len) = match (is_stream, header.sparse_data_len) {
        (true, _) => (u64::MAX, u64::MAX),
        (false, Some(data_len)) => (header.size, data_len),
        (false, None) => {
            return sink
                .data(stream, start, header.size - start, &mut |k| {
                    progress(start + k)
                })
                .map(|n| start + n)
                .map_err(Incoming::Copy)
        }
    };
    let bad = |what: String| Incoming::Protocol(ProtocolError::Malformed(what));
    // After a resumed prefix only the rest's data is counted: it must not exceed the total.
    let (mut pos, mut data) = (start, 0u64);
    let data_complete = |data: u64| data == data_len || (start > 0 && data <= data_len);
    loop {
        let record = match Record::read(&mut &*stream) {
            Ok(r) => r,
            // A stream has no length to fall short of: only its end record ends it.
            Err(ProtocolError::Truncated(_)) if !is_stream => return Ok(pos),
            Err(e) => return Err(Incoming::Protocol(e)),
        };
        let (offset, len) = match record {
            Record::End if is_stream => return Ok(pos),
            Record::Hole { .. } if is_stream => return Err(bad("a hole in a stream".into())),
            Record::End if pos == size && data_complete(data) => return Ok(pos),
            Record::End => {
                return Err(bad(format!(
                "sparse records end at {pos} of {size} bytes with {data} of {data_len} data bytes"
            )))
            }
            Record::Data { offset, len } | Record::Hole { offset, len } => (offset, len),
        };
        if offset != pos || len > size - pos {
            return Err(bad(format!(
                "sparse record at {offset}+{len} where {pos} of {size} was expected"
            )));
        }
        if let Record::Data { .. } = record {
            if len > data_len - data {
                return Err(bad(format!(
                    "more data than the {data_len} bytes announced"
                )));
            }
            let n = sink
                .data(stream, offset, len, &mut |k| progress(offset + k))
                .map_err(Incoming::Copy)?;
            data += n;
            pos += n;
            if n < len {
                return Ok(pos);
            }
        } else {
            sink.hole(stream, offset, len).map_err(Incoming::Copy)?;
            pos += len;
            progress(pos);
        }
    }
}
