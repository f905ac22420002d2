//! The source: the file or block device being sent, opened once, what the header says of it,
//! and whether it changed while it went out.

use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::SendError;
use crate::sys;
use crate::wire::SOURCE_ID_LEN;

/// An opened source file or block device, and what the header says of it.
pub(super) struct Source {
    pub(super) file: File,
    pub(super) path: PathBuf,
    pub(super) size: u64,
    pub(super) mode: u32,
    pub(super) mtime: (i64, u32),
    pub(super) block_device: bool,
    /// Bytes of data, holes excluded, when the file has holes.
    pub(super) sparse_data: Option<u64>,
    /// Which file this is, for resuming (see [`source_id`]).
    pub(super) id: [u8; SOURCE_ID_LEN],
    /// Whether `id` came from a listing and must still be the open file's after sending.
    pub(super) listed_id: bool,
}

impl Source {
    /// Opens `path` for sending.
    pub(super) fn open(path: &Path) -> Result<Source, SendError> {
        let source_err = |error| SendError::Source {
            path: path.to_owned(),
            error,
        };
        // Non-blocking, so that opening a fifo does not wait for a writer; reads of regular
        // files and block devices are not affected.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(source_err)?;
        let meta = file.metadata().map_err(source_err)?;
        if !meta.is_file() && !meta.file_type().is_block_device() {
            return Err(SendError::NotAFile(path.to_owned()));
        }
        let block_device = meta.file_type().is_block_device();
        let size = if block_device {
            sys::block_device_size(&file).map_err(source_err)?
        } else if meta.is_file() {
            meta.len()
        } else {
            return Err(SendError::NotAFile(path.to_owned()));
        };
        // Only a file with fewer blocks than bytes can have holes worth looking for.
        let sparse_data = if block_device || meta.blocks() * 512 >= size {
            None
        } else {
            let data = data_between(&file, 0, size).map_err(source_err)?;
            (data < size).then_some(data)
        };
        let id = source_id(meta.dev(), meta.ino(), meta.rdev());
        Ok(Source {
            file,
            path: path.to_owned(),
            size,
            mode: meta.mode(),
            mtime: (meta.mtime(), meta.mtime_nsec() as u32),
            block_device,
            sparse_data,
            id,
            listed_id: false,
        })
    }

    /// Opens a regular file a tree walk listed, taking what the listing says of it instead of
    /// a stat of its own; after sending, [`Source::changed`] checks the open file against the
    /// listing, its identity included, so a file replaced since is not sent as the listed one.
    pub(super) fn listed(path: &Path, entry: &crate::wire::Entry) -> Result<Source, SendError> {
        let crate::wire::Kind::File {
            size,
            sparse_data_len,
            source_id,
        } = entry.kind
        else {
            return Err(SendError::NotAFile(path.to_owned()));
        };
        // Non-blocking, as in `open`: something put there since the walk may be a fifo.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|error| SendError::Source {
                path: path.to_owned(),
                error,
            })?;
        Ok(Source {
            file,
            path: path.to_owned(),
            size,
            mode: entry.mode,
            mtime: entry.mtime,
            block_device: false,
            sparse_data: sparse_data_len,
            id: source_id.unwrap_or_default(),
            listed_id: source_id.is_some(),
        })
    }

    /// Whether the file was written to since it was opened. (Writes to a block device do not
    /// show in its metadata; only a change of size does. The digests still catch the rest.)
    pub(super) fn changed(&self) -> bool {
        if self.block_device {
            return sys::block_device_size(&self.file).map_or(true, |s| s != self.size);
        }
        match self.file.metadata() {
            Ok(m) => {
                m.len() != self.size
                    || (m.mtime(), m.mtime_nsec() as u32) != self.mtime
                    || !m.is_file()
                    || (self.listed_id && source_id(m.dev(), m.ino(), m.rdev()) != self.id)
            }
            Err(_) => true,
        }
    }

    pub(super) fn default_name(&self) -> Result<String, SendError> {
        let name_err = |reason| SendError::Name {
            path: self.path.clone(),
            reason,
        };
        let base = self
            .path
            .file_name()
            .ok_or(name_err(crate::name::NameError::Empty))?;
        let base = base
            .to_str()
            .ok_or(name_err(crate::name::NameError::NotUtf8))?;
        Ok(base.to_owned())
    }
}

/// The bytes of data between `from` and `to`, holes excluded.
pub(super) fn data_between(file: &File, from: u64, to: u64) -> std::io::Result<u64> {
    let (mut pos, mut data) = (from, 0);
    while let Some((start, end)) = sys::next_data(file, pos, to)? {
        data += end - start;
        pos = end;
    }
    Ok(data)
}

/// The sender's identity of a file, sent with the header so that a receiver resumes only into
/// a partial file that came from this very file: a digest of the machine (its machine-id, or
/// its host name) and the file's device and inode. Size and mtime travel in the header too.
pub(super) fn source_id(dev: u64, ino: u64, rdev: u64) -> [u8; SOURCE_ID_LEN] {
    use sha2::{Digest, Sha256};
    static MACHINE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let machine = MACHINE.get_or_init(|| {
        std::fs::read("/etc/machine-id")
            .or_else(|_| std::fs::read("/proc/sys/kernel/hostname"))
            .unwrap_or_default()
    });
    let mut h = Sha256::new();
    h.update(b"zsend source id 1\0");
    h.update(machine);
    for n in [dev, ino, rdev] {
        h.update(n.to_be_bytes());
    }
    let digest: [u8; 32] = h.finalize().into();
    digest[..SOURCE_ID_LEN].try_into().expect("16 of 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Entry, Kind};

    /// The listing of `path` a walk would make, with `id` as its identity.
    fn listing(path: &Path, id: [u8; SOURCE_ID_LEN]) -> Entry {
        let meta = std::fs::metadata(path).unwrap();
        Entry {
            path: "f".into(),
            kind: Kind::File {
                size: meta.len(),
                sparse_data_len: None,
                source_id: Some(id),
            },
            mode: meta.mode(),
            mtime: (meta.mtime(), meta.mtime_nsec() as u32),
            extras: None,
        }
    }

    #[test]
    fn a_listed_file_is_changed_when_it_is_another_file_or_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"listed").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let id = source_id(meta.dev(), meta.ino(), meta.rdev());
        assert!(!Source::listed(&path, &listing(&path, id))
            .unwrap()
            .changed());
        // Another file in its place, with the same size and mtime: not the one listed.
        assert!(Source::listed(&path, &listing(&path, [1; SOURCE_ID_LEN]))
            .unwrap()
            .changed());
        let source = Source::listed(&path, &listing(&path, id)).unwrap();
        std::fs::write(&path, b"written since").unwrap();
        assert!(source.changed());
    }
}
