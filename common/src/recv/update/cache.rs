//! The piece layer of each file the receiver landed, kept in a hidden sidecar beside it
//! (`.zrecv-KEY.pieces`) with the identity that proves the file unchanged since (size, inode,
//! ctime, mtime): an update of that file then reads none of it back. A file changed in any way
//! moves its ctime, and its sidecar no longer counts.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;

use rustix::fs::{AtFlags, OFlags};

use super::layer::Runs;
use crate::recv::partial::{hidden_name, open_beneath, TempFile, PIECES_MAGIC as MAGIC};
use crate::wire::pieces_of;

/// Longest line of a sidecar: a root in hex, a count.
const LINE: u64 = 96;

/// What proves a file unchanged since its layer was taken.
pub(crate) fn identity(file: &File) -> Option<String> {
    let st = rustix::fs::fstat(file).ok()?;
    Some(format!(
        "id {} {} {} {} {} {}",
        st.st_size, st.st_ino, st.st_ctime, st.st_ctime_nsec, st.st_mtime, st.st_mtime_nsec
    ))
}

/// The runs kept for `name` in `dir`, if its sidecar is there, well formed, and was taken of
/// this very `file` as it is now.
pub(crate) fn load(dir: impl AsFd, name: &str, file: &File) -> Option<Runs> {
    let size = file.metadata().ok()?.len();
    let pieces = pieces_of(size);
    let fd = open_beneath(&dir, hidden_name(name, "pieces"), OFlags::RDONLY).ok()?;
    let mut text = String::new();
    let most = LINE.saturating_mul(pieces.saturating_add(2));
    File::from(fd).take(most).read_to_string(&mut text).ok()?;
    let mut lines = text.lines();
    if lines.next()? != MAGIC || lines.next()? != identity(file)? {
        return None;
    }
    let mut runs = Runs::new();
    let mut total = 0u64;
    for line in lines {
        let (root, n) = line.split_once(' ')?;
        let n: u64 = n.parse().ok().filter(|n| *n > 0)?;
        let mut hash = [0u8; 32];
        hex::decode_to_slice(root, &mut hash).ok()?;
        total = total.checked_add(n)?;
        runs.push((hash, n));
    }
    (total == pieces).then_some(runs)
}

/// Keeps `runs` as the layer of `name`, which is `file` (just landed or updated), whole or
/// not at all. A failure costs only a later re-hash, so it is logged, not returned.
pub(crate) fn store(dir: impl AsFd, name: &str, file: &File, runs: &Runs) {
    let Some(id) = identity(file) else { return };
    let mut text = format!("{MAGIC}\n{id}\n");
    for (root, n) in runs {
        text += &format!("{} {n}\n", hex::encode(root));
    }
    let dir = dir.as_fd();
    let stored = (|| -> std::io::Result<()> {
        let note = TempFile::create(dir)?;
        (&note.file).write_all(text.as_bytes())?;
        rustix::fs::renameat(
            dir,
            note.name.as_str(),
            dir,
            hidden_name(name, "pieces").as_str(),
        )?;
        note.disarm();
        Ok(())
    })();
    if let Err(e) = stored {
        log::debug!(
            "keeping the piece layer of {}: {e}",
            crate::name::Escaped(name)
        );
    }
}

/// Drops the layer kept for `name` (the file is about to change).
pub(crate) fn forget(dir: impl AsFd, name: &str) {
    let _ = rustix::fs::unlinkat(dir, hidden_name(name, "pieces").as_str(), AtFlags::empty());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_counts_only_for_the_file_it_was_taken_of() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = std::fs::File::open(tmp.path()).unwrap();
        let path = tmp.path().join("img");
        std::fs::write(&path, vec![7u8; 3 << 20]).unwrap();
        let file = File::open(&path).unwrap();
        let runs: Runs = vec![([1; 32], 2), ([2; 32], 1)];
        store(&dir, "img", &file, &runs);
        assert_eq!(load(&dir, "img", &file), Some(runs.clone()));
        assert_eq!(load(&dir, "other", &file), None);
        // Any change moves the identity: the layer no longer counts.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"x")
            .unwrap();
        assert_eq!(load(&dir, "img", &file), None);
        // Nor does one that does not add up to the file's pieces.
        store(&dir, "img", &file, &vec![([1; 32], 2)]);
        assert_eq!(load(&dir, "img", &file), None);
    }

    /// The sweep finds the file a sidecar describes by its inode: it reads what is stored.
    #[test]
    fn the_sweep_reads_the_inode_a_layer_was_taken_of() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = std::fs::File::open(tmp.path()).unwrap();
        let path = tmp.path().join("img");
        std::fs::write(&path, vec![7u8; 1 << 20]).unwrap();
        let file = File::open(&path).unwrap();
        store(&dir, "img", &file, &vec![([1; 32], 1)]);
        let text = std::fs::read_to_string(tmp.path().join(hidden_name("img", "pieces"))).unwrap();
        let ino = file.metadata().unwrap().ino();
        assert_eq!(crate::recv::partial::sidecar_inode(&text), Some(ino));
    }
}
