//! Section 1 of docs/PROTOCOL.md: the sender's hello (preamble, header, flags).

use std::io::Read;

use super::chain::read_chain;
use super::codec::{read_exact, Cursor};
use super::error::ProtocolError;
use super::limits::{MAX_HEADER_LEN, VERSION};
use crate::auth::NONCE_LEN;
use crate::name::{validate_name, MAX_NAME_LEN};

/// First bytes of a sender's hello.
pub const HELLO_MAGIC: [u8; 4] = *b"ZSND";
/// Size of the hello preamble: magic, version, header length.
pub const PREAMBLE_LEN: usize = 10;
/// Size of the fixed part of a header body, before the name.
pub const HEADER_FIXED_LEN: usize = 4 + 8 + 4 + 8 + 4 + 2;

/// Header flag: the sender does not hash and asks the receiver not to either.
pub const FLAG_NO_VERIFY: u32 = 1;
/// Header flag: the sender holds a token; a 32-byte nonce follows the name.
pub const FLAG_AUTH: u32 = 2;
/// Header flag: the payload is a sequence of data and hole records (a sparse file); the
/// total of the data records follows the name as a u64.
pub const FLAG_SPARSE: u32 = 4;
/// Header flag: the length is not known up front (standard input); `size` is 0 and the payload
/// is data records until an end record.
pub const FLAG_STREAM: u32 = 8;
/// Header flag: the sender can resume into a partial file the receiver kept; a
/// [`SOURCE_ID_LEN`]-byte identity of the source file follows the sparse length.
pub const FLAG_RESUME: u32 = 16;
/// Header flag: many files and directories follow as a manifest (see `manifest`); `name` is a
/// label for logs and `size` the total of the files. `SPARSE`, `STREAM` and `RESUME` are per
/// entry then, and must be clear in the header.
pub const FLAG_TREE: u32 = 32;
/// Header flag: the receiver is asked to forward the file to further hosts (a chain); their
/// addresses follow the nonce. Not with `STREAM`, `RESUME` or `TREE`.
pub const FLAG_CHAIN: u32 = 64;
/// Header flag: when the name exists on the receiver and it would replace it, the sender can
/// send only the pieces that differ (section 2d). Not with `NO_VERIFY`, `STREAM`, `TREE` or
/// `CHAIN`.
pub const FLAG_UPDATE: u32 = 128;
/// Header flag, only with `UPDATE`: apply such an update to the file in place, through a
/// journal, rather than building the new version beside it.
pub const FLAG_INPLACE: u32 = 256;
/// Header flag: the sender answers a receiver's call for repair rounds when the roots disagree
/// (section 5a). Not with `NO_VERIFY`, `STREAM`, `TREE` or `CHAIN`.
pub const FLAG_REPAIR: u32 = 512;
const KNOWN_FLAGS: u32 = FLAG_NO_VERIFY
    | FLAG_AUTH
    | FLAG_SPARSE
    | FLAG_STREAM
    | FLAG_RESUME
    | FLAG_TREE
    | FLAG_CHAIN
    | FLAG_UPDATE
    | FLAG_INPLACE
    | FLAG_REPAIR;
/// The mode bits a receiver applies: read, write and execute for all, and the sticky bit (a
/// world-writable directory without it would let anyone remove anyone's files); never setuid
/// or setgid, which carry privilege.
pub const KEPT_MODE: u32 = 0o1777;
/// Length of the sender's identity of its source file.
pub const SOURCE_ID_LEN: usize = 16;

/// What the sender announces before the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// File name on the receiver: one path component (see [`validate_name`]).
    pub name: String,
    /// Exact number of payload bytes that follow the receiver's accept.
    pub size: u64,
    /// Unix permission bits of the source; the receiver keeps only [`KEPT_MODE`].
    pub mode: u32,
    /// Modification time of the source, seconds since the epoch.
    pub mtime_sec: i64,
    /// Nanoseconds part of the modification time, below 1e9.
    pub mtime_nsec: u32,
    /// Header flags (`FLAG_*`).
    pub flags: u32,
    /// With `FLAG_RESUME`: the sender's identity of its source (see `send::source_id`), so
    /// that a partial file is only reused for the file it came from.
    pub source_id: Option<[u8; SOURCE_ID_LEN]>,
    /// The sender's fresh nonce when it authenticates with a token (`FLAG_AUTH`).
    pub auth_nonce: Option<[u8; NONCE_LEN]>,
    /// With `FLAG_CHAIN`: the hosts (`HOST:PORT`) the receiver forwards to, next one first.
    pub chain: Option<Vec<String>>,
    /// For a sparse payload (`FLAG_SPARSE`): the bytes of data records, holes excluded.
    pub sparse_data_len: Option<u64>,
}

impl Header {
    /// A plain header for `size` bytes named `name`: mode 0644, mtime 0, verified, dense, no
    /// token. Fields are public for everything else.
    pub fn new(name: &str, size: u64) -> Header {
        Header {
            name: name.to_owned(),
            size,
            mode: 0o644,
            mtime_sec: 0,
            mtime_nsec: 0,
            flags: 0,
            source_id: None,
            auth_nonce: None,
            sparse_data_len: None,
            chain: None,
        }
    }

    /// Whether the sender asked for SHA-256 verification.
    pub fn verify(&self) -> bool {
        self.flags & FLAG_NO_VERIFY == 0
    }

    /// Whether the sender offers to resume (`FLAG_RESUME`, with a source identity).
    pub fn resumable(&self) -> bool {
        self.source_id.is_some()
    }

    /// Whether the sender can send only the pieces that differ (`FLAG_UPDATE`).
    pub fn update(&self) -> bool {
        self.flags & FLAG_UPDATE != 0
    }

    /// Whether the sender answers repair calls (`FLAG_REPAIR`).
    pub fn repairable(&self) -> bool {
        self.flags & FLAG_REPAIR != 0
    }

    /// Whether an update is to be applied in place (`FLAG_INPLACE`).
    pub fn inplace(&self) -> bool {
        self.flags & FLAG_INPLACE != 0
    }

    /// Whether a manifest of many entries follows (`FLAG_TREE`).
    pub fn tree(&self) -> bool {
        self.flags & FLAG_TREE != 0
    }

    /// Whether the length is unknown up front (`FLAG_STREAM`).
    pub fn stream(&self) -> bool {
        self.flags & FLAG_STREAM != 0
    }

    /// The complete hello: preamble followed by the header body. `FLAG_AUTH`, `FLAG_SPARSE`
    /// and `FLAG_RESUME` are set exactly when their fields are present.
    pub fn encode_hello(&self) -> Vec<u8> {
        let nonce_len = self.auth_nonce.map_or(0, |n| n.len());
        let sparse_len = self.sparse_data_len.map_or(0, |_| 8);
        let id_len = self.source_id.map_or(0, |i| i.len());
        let chain_len = self
            .chain
            .as_ref()
            .map_or(0, |c| 1 + c.iter().map(|h| 2 + h.len()).sum::<usize>());
        let body_len =
            HEADER_FIXED_LEN + self.name.len() + sparse_len + id_len + nonce_len + chain_len;
        let mut flags = self.flags & !(FLAG_AUTH | FLAG_SPARSE | FLAG_RESUME | FLAG_CHAIN);
        if self.chain.is_some() {
            flags |= FLAG_CHAIN;
        }
        if self.auth_nonce.is_some() {
            flags |= FLAG_AUTH;
        }
        if self.sparse_data_len.is_some() {
            flags |= FLAG_SPARSE;
        }
        if self.source_id.is_some() {
            flags |= FLAG_RESUME;
        }
        let mut out = Vec::with_capacity(PREAMBLE_LEN + body_len);
        out.extend_from_slice(&HELLO_MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&(body_len as u32).to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.mode.to_be_bytes());
        out.extend_from_slice(&self.mtime_sec.to_be_bytes());
        out.extend_from_slice(&self.mtime_nsec.to_be_bytes());
        out.extend_from_slice(&(self.name.len() as u16).to_be_bytes());
        out.extend_from_slice(self.name.as_bytes());
        if let Some(d) = self.sparse_data_len {
            out.extend_from_slice(&d.to_be_bytes());
        }
        if let Some(id) = &self.source_id {
            out.extend_from_slice(id);
        }
        if let Some(n) = &self.auth_nonce {
            out.extend_from_slice(n);
        }
        if let Some(chain) = &self.chain {
            out.push(chain.len() as u8);
            for hop in chain {
                out.extend_from_slice(&(hop.len() as u16).to_be_bytes());
                out.extend_from_slice(hop.as_bytes());
            }
        }
        out
    }

    /// Decodes a header body (what follows the preamble), checking every field.
    pub fn decode_body(body: &[u8]) -> Result<Header, ProtocolError> {
        let mut r = Cursor::new(body);
        let flags = r.u32()?;
        let size = r.u64()?;
        let mode = r.u32()?;
        let mtime_sec = r.u64()? as i64;
        let mtime_nsec = r.u32()?;
        let name_len = r.u16()? as usize;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(ProtocolError::Malformed(format!(
                "unknown header flags {:#x}",
                flags & !KNOWN_FLAGS
            )));
        }
        if flags & FLAG_STREAM != 0 && (size != 0 || flags & (FLAG_SPARSE | FLAG_RESUME) != 0) {
            return Err(ProtocolError::Malformed(
                "a stream has size 0, no sparse records and no resume".into(),
            ));
        }
        if flags & FLAG_TREE != 0 && flags & (FLAG_SPARSE | FLAG_STREAM | FLAG_RESUME) != 0 {
            return Err(ProtocolError::Malformed(
                "a tree's sparse files and resumes are per entry".into(),
            ));
        }
        let not_chained = FLAG_STREAM | FLAG_RESUME | FLAG_TREE | FLAG_SPARSE;
        if flags & FLAG_CHAIN != 0 && flags & not_chained != 0 {
            return Err(ProtocolError::Malformed(
                "a chain carries one dense file, not resumed".into(),
            ));
        }
        if flags & FLAG_RESUME != 0 && flags & FLAG_NO_VERIFY != 0 {
            return Err(ProtocolError::Malformed(
                "resuming needs verification: a prefix is trusted only by its digest".into(),
            ));
        }
        let not_updated = FLAG_NO_VERIFY | FLAG_STREAM | FLAG_TREE | FLAG_CHAIN;
        if flags & (FLAG_UPDATE | FLAG_REPAIR) != 0 && flags & not_updated != 0 {
            return Err(ProtocolError::Malformed(
                "an update of pieces needs verification, a known size and one file".into(),
            ));
        }
        if flags & FLAG_INPLACE != 0 && flags & FLAG_UPDATE == 0 {
            return Err(ProtocolError::Malformed(
                "an update in place is an update".into(),
            ));
        }
        if mtime_nsec >= 1_000_000_000 {
            return Err(ProtocolError::Malformed(format!(
                "mtime nanoseconds {mtime_nsec} out of range"
            )));
        }
        if name_len > MAX_NAME_LEN {
            return Err(ProtocolError::NameTooLong(name_len));
        }
        let name_bytes = r.take(name_len)?;
        let sparse_data_len = match flags & FLAG_SPARSE {
            0 => None,
            _ => Some(r.u64()?),
        };
        if sparse_data_len.is_some_and(|d| d > size) {
            return Err(ProtocolError::Malformed(
                "sparse data length exceeds the file size".into(),
            ));
        }
        let source_id = match flags & FLAG_RESUME {
            0 => None,
            _ => Some(r.array::<SOURCE_ID_LEN>()?),
        };
        let auth_nonce = match flags & FLAG_AUTH {
            0 => None,
            _ => Some(r.array::<NONCE_LEN>()?),
        };
        let chain = match flags & FLAG_CHAIN {
            0 => None,
            _ => Some(read_chain(&mut r)?),
        };
        if !r.rest().is_empty() {
            return Err(ProtocolError::Malformed(format!(
                "{} unexpected bytes after the name",
                r.rest().len()
            )));
        }
        let name = std::str::from_utf8(name_bytes)
            .map_err(|_| ProtocolError::BadName(crate::name::NameError::NotUtf8))?
            .to_owned();
        validate_name(&name).map_err(ProtocolError::BadName)?;
        Ok(Header {
            name,
            size,
            mode,
            mtime_sec,
            mtime_nsec,
            flags,
            source_id,
            auth_nonce,
            sparse_data_len,
            chain,
        })
    }
}

/// Reads the hello preamble and returns the header body length, refusing bad magic, unknown
/// versions and oversized headers before allocating anything.
pub fn read_preamble(r: &mut impl Read) -> Result<u32, ProtocolError> {
    let mut pre = [0u8; PREAMBLE_LEN];
    read_exact(r, &mut pre, "hello")?;
    let magic: [u8; 4] = pre[0..4].try_into().expect("4 bytes");
    if magic != HELLO_MAGIC {
        return Err(ProtocolError::BadMagic(magic));
    }
    let version = u16::from_be_bytes([pre[4], pre[5]]);
    if version != VERSION {
        return Err(ProtocolError::UnsupportedVersion(version));
    }
    let len = u32::from_be_bytes(pre[6..10].try_into().expect("4 bytes"));
    if len > MAX_HEADER_LEN {
        return Err(ProtocolError::HeaderTooLong(len));
    }
    Ok(len)
}

/// Reads and decodes a whole hello (preamble and header body).
pub fn read_hello(r: &mut impl Read) -> Result<Header, ProtocolError> {
    let len = read_preamble(r)?;
    let mut body = vec![0u8; len as usize];
    read_exact(r, &mut body, "header")?;
    Header::decode_body(&body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header_strategy() -> impl Strategy<Value = Header> {
        (
            "[a-zA-Z0-9._ -]{1,40}|[\\p{L}]{1,30}",
            any::<u64>(),
            any::<u32>(),
            any::<i64>(),
            0u32..1_000_000_000,
            prop_oneof![Just(0u32), Just(FLAG_NO_VERIFY)],
            proptest::option::of(any::<[u8; NONCE_LEN]>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<[u8; SOURCE_ID_LEN]>()),
        )
            .prop_filter("valid name", |(n, ..)| validate_name(n).is_ok())
            .prop_map(
                |(name, size, mode, mtime_sec, mtime_nsec, flags, nonce, sparse, id)| {
                    let mut flags = flags;
                    if nonce.is_some() {
                        flags |= FLAG_AUTH;
                    }
                    if sparse.is_some() {
                        flags |= FLAG_SPARSE;
                    }
                    // Resuming implies verifying.
                    let source_id = id.filter(|_| flags & FLAG_NO_VERIFY == 0);
                    if source_id.is_some() {
                        flags |= FLAG_RESUME;
                    }
                    let chain = (source_id.is_none() && sparse.is_none() && size % 3 == 0)
                        .then(|| vec!["10.0.0.2:7350".to_owned(), "[fd00::3]:7350".to_owned()]);
                    if chain.is_some() {
                        flags |= FLAG_CHAIN;
                    }
                    Header {
                        name,
                        size,
                        mode,
                        mtime_sec,
                        mtime_nsec,
                        flags,
                        source_id,
                        auth_nonce: nonce,
                        sparse_data_len: sparse.map(|d| d.min(size)),
                        chain,
                    }
                },
            )
    }

    fn hello_with_len(len: u32) -> Vec<u8> {
        let mut v = HELLO_MAGIC.to_vec();
        v.extend_from_slice(&VERSION.to_be_bytes());
        v.extend_from_slice(&len.to_be_bytes());
        v
    }

    proptest! {
        #[test]
        fn hello_round_trips(h in header_strategy()) {
            let bytes = h.encode_hello();
            let back = read_hello(&mut &bytes[..]).unwrap();
            prop_assert_eq!(back, h);
        }

        #[test]
        fn every_truncated_hello_is_an_error(h in header_strategy(), cut in 0usize..300) {
            let bytes = h.encode_hello();
            let cut = cut % bytes.len();
            prop_assert!(read_hello(&mut &bytes[..cut]).is_err());
        }

        #[test]
        fn arbitrary_header_bodies_decode_only_to_valid_headers(
            bytes in proptest::collection::vec(any::<u8>(), 0..400)
        ) {
            if let Ok(h) = Header::decode_body(&bytes) {
                prop_assert!(validate_name(&h.name).is_ok());
                let nonce = h.auth_nonce.map_or(0, |n| n.len());
                let sparse = h.sparse_data_len.map_or(0, |_| 8);
                prop_assert_eq!(HEADER_FIXED_LEN + h.name.len() + sparse + nonce, bytes.len());
                prop_assert_eq!(h.auth_nonce.is_some(), h.flags & FLAG_AUTH != 0);
                prop_assert!(h.mtime_nsec < 1_000_000_000);
            }
        }

    }

    #[test]
    fn oversized_header_is_refused_before_reading_it() {
        let err = read_preamble(&mut &hello_with_len(u32::MAX)[..]).unwrap_err();
        assert!(
            matches!(err, ProtocolError::HeaderTooLong(u32::MAX)),
            "{err}"
        );
        assert!(read_preamble(&mut &hello_with_len(MAX_HEADER_LEN)[..]).is_ok());
    }

    #[test]
    fn bad_magic_and_version_are_named() {
        let err = read_preamble(&mut &b"GET / HTTP/1.1\r\n"[..]).unwrap_err();
        assert!(matches!(err, ProtocolError::BadMagic(m) if &m == b"GET "));
        let mut v = hello_with_len(10);
        v[5] = 8; // the version before this one
        let err = read_preamble(&mut &v[..]).unwrap_err();
        assert!(matches!(err, ProtocolError::UnsupportedVersion(8)));
    }

    #[test]
    fn name_length_over_limit_is_refused() {
        let h = Header::new(&"a".repeat(255), 1);
        let mut bytes = h.encode_hello();
        assert!(read_hello(&mut &bytes[..]).is_ok());
        // Claim 256 bytes of name and supply them.
        let name_len_at = PREAMBLE_LEN + HEADER_FIXED_LEN - 2;
        bytes[name_len_at..name_len_at + 2].copy_from_slice(&256u16.to_be_bytes());
        bytes.push(b'a');
        let len = (HEADER_FIXED_LEN + 256) as u32;
        bytes[6..10].copy_from_slice(&len.to_be_bytes());
        let err = read_hello(&mut &bytes[..]).unwrap_err();
        assert!(matches!(err, ProtocolError::NameTooLong(256)), "{err}");
    }

    #[test]
    fn unsafe_names_are_refused_by_the_decoder() {
        for name in ["..", ".", "a/b", "", "x\u{1b}[2J"] {
            let h = Header::new(name, 1);
            let err = read_hello(&mut &h.encode_hello()[..]).unwrap_err();
            assert!(matches!(err, ProtocolError::BadName(_)), "{name:?}: {err}");
        }
    }
}
