//! Section 3a of docs/PROTOCOL.md: the data, hole and end records of a sparse payload or a stream.

use std::io::Read;

use super::codec::read_exact;
use super::error::ProtocolError;

/// Size of a payload record header in sparse mode.
pub const RECORD_LEN: usize = 17;

/// One record of a sparse payload: data (followed by `len` bytes), a hole, or the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// `len` bytes of file content at `offset` follow.
    Data {
        /// Where the bytes go.
        offset: u64,
        /// How many follow, at least 1.
        len: u64,
    },
    /// `len` bytes of zeros at `offset`, not sent.
    Hole {
        /// Where the hole starts.
        offset: u64,
        /// Its length, at least 1.
        len: u64,
    },
    /// No more records: the trailer follows.
    End,
}

impl Record {
    /// Encodes the record header.
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let (kind, offset, len) = match *self {
            Record::End => (0u8, 0, 0),
            Record::Data { offset, len } => (1, offset, len),
            Record::Hole { offset, len } => (2, offset, len),
        };
        let mut out = [0u8; RECORD_LEN];
        out[0] = kind;
        out[1..9].copy_from_slice(&offset.to_be_bytes());
        out[9..].copy_from_slice(&len.to_be_bytes());
        out
    }

    /// Reads a record header, refusing unknown kinds and empty data or holes.
    pub fn read(r: &mut impl Read) -> Result<Record, ProtocolError> {
        let mut buf = [0u8; RECORD_LEN];
        read_exact(r, &mut buf, "sparse record")?;
        let offset = u64::from_be_bytes(buf[1..9].try_into().expect("8 bytes"));
        let len = u64::from_be_bytes(buf[9..].try_into().expect("8 bytes"));
        match buf[0] {
            0 if offset == 0 && len == 0 => Ok(Record::End),
            1 | 2 if len == 0 => Err(ProtocolError::Malformed("empty sparse record".into())),
            1 => Ok(Record::Data { offset, len }),
            2 => Ok(Record::Hole { offset, len }),
            k => Err(ProtocolError::Malformed(format!("unknown record kind {k}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn records_round_trip(offset in any::<u64>(), len in 1u64.., kind in 0u8..3) {
            let r = match kind {
                0 => Record::End,
                1 => Record::Data { offset, len },
                _ => Record::Hole { offset, len },
            };
            prop_assert_eq!(Record::read(&mut &r.encode()[..]).unwrap(), r);
        }
    }
}
