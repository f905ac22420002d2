//! The plain SHA-256 of a whole file, as `sha256sum` prints it: sequential (one core), computed
//! only for who asks for it (zsend `--sha256`), beside the tree root.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};

use super::{Hash, Watermark, HASH_CHUNK};
use crate::sys;

/// The SHA-256 of the first `len` bytes of `file`, holes (with `sparse`) fed as zeros without
/// reading them. `Ok(None)` when `mark` is aborted first.
pub fn sha256_of(
    file: &File,
    len: u64,
    mark: &Watermark,
    sparse: bool,
) -> io::Result<Option<Hash>> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_CHUNK.min(len as usize).max(1)];
    let zeros = vec![0u8; buf.len()];
    let mut pos = 0;
    while pos < len {
        let data_end = if sparse {
            let (start, end) = sys::next_data(file, pos, len)?.unwrap_or((len, len));
            while pos < start {
                if mark.aborted() {
                    return Ok(None);
                }
                let n = (start - pos).min(zeros.len() as u64) as usize;
                hasher.update(&zeros[..n]);
                pos += n as u64;
            }
            end
        } else {
            len
        };
        while pos < data_end {
            if mark.aborted() {
                return Ok(None);
            }
            let want = (data_end - pos).min(buf.len() as u64) as usize;
            match file.read_at(&mut buf[..want], pos) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file ended while hashing",
                    ))
                }
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(Some(hasher.finalize().into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_hash_as_zeros() {
        let f = tempfile::tempfile().unwrap();
        let len = 5 << 20;
        f.set_len(len).unwrap();
        f.write_all_at(b"data in the middle", 2 << 20).unwrap();
        f.write_all_at(b"and at the end", len - 14).unwrap();
        let mut content = vec![0u8; len as usize];
        f.read_exact_at(&mut content, 0).unwrap();
        let want: Hash = Sha256::digest(&content).into();
        for sparse in [false, true] {
            let d = sha256_of(&f, len, &Watermark::complete(len), sparse).unwrap();
            assert_eq!(d, Some(want), "sparse: {sparse}");
        }
    }
}
