//! Updates in place (`--inplace`), crash-safe through a redo journal. The pieces that differ are
//! taken into a hidden journal beside the file (`.zrecv-KEY.journal`, each piece at its own
//! offset, holes as holes) and checked there; the journal is made durable, then a commit record
//! (`.zrecv-KEY.commit`: the name, the new size, mode and mtime, the pieces) is written, made
//! durable and renamed into place; only then are the pieces copied into the file, which is made
//! durable, and the journal and its record are removed. A receiver killed before the commit
//! leaves the old file untouched and its journal is dropped; killed after it, the journal is
//! applied again (copying the same bytes twice changes nothing) when it starts again, or when
//! the next transfer of that name comes: the file is the old version or the new one, never a
//! mix.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::layer::punch;
use crate::recv::land::timestamps;
use crate::recv::partial::{hidden_name, open_beneath, TempFile};
use crate::sys;
use crate::wire::{Header, Needed, KEPT_MODE};

/// First line of a commit record.
const MAGIC: &str = "zrecv journal 1";
/// Longest commit record read back: the fixed lines and one line per range.
const MAX_RECORD: u64 = 64 << 20;

/// Set to `journaled`, `committed` or `applying`, zrecv kills itself at that step of an update
/// in place: how the tests prove that a receiver killed at any step recovers.
pub(crate) const CRASH_AT: &str = "ZRECV_CRASH_AT";

/// Dies now if the tests asked for it at `step`.
pub(crate) fn crash_point(step: &str) {
    if std::env::var(CRASH_AT).is_ok_and(|v| v == step) {
        log::warn!("{CRASH_AT}={step}: killing this receiver now");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}

/// A journal being filled for `name`.
pub(crate) struct Journal<D: AsFd> {
    pub(crate) file: File,
    dir: D,
    name: String,
    armed: bool,
}

/// What a commit record says: apply these pieces of the journal to the file `name`.
#[derive(Debug, PartialEq, Eq)]
struct Commit {
    name: String,
    size: u64,
    mode: u32,
    mtime: (i64, u32),
    needed: Needed,
}

impl<D: AsFd> Journal<D> {
    /// Starts an empty journal for a new version of `header.size` bytes of `header.name`.
    pub(crate) fn create(dir: D, header: &Header) -> io::Result<Journal<D>> {
        let name = hidden_name(&header.name, "journal");
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::TRUNC;
        let file = File::from(open_beneath(&dir, &name, flags)?);
        rustix::fs::ftruncate(&file, header.size)?;
        Ok(Journal {
            file,
            dir,
            name: header.name.clone(),
            armed: true,
        })
    }

    /// Commits the journal, its pieces checked: the journal made durable, then its record
    /// written, made durable and renamed into place, and the directory made durable. From here
    /// on the new version is what a crash leaves.
    pub(crate) fn commit(&mut self, header: &Header, needed: &Needed) -> io::Result<()> {
        rustix::fs::fdatasync(&self.file)?;
        let commit = Commit::of(header, needed);
        let note = TempFile::create(self.dir.as_fd())?;
        (&note.file).write_all(commit.encode().as_bytes())?;
        rustix::fs::fdatasync(&note.file)?;
        let target = hidden_name(&self.name, "commit");
        rustix::fs::renameat(&self.dir, note.name.as_str(), &self.dir, target.as_str())?;
        note.disarm();
        // Committed: from here on the journal is applied, now or by recovery, never dropped.
        self.armed = false;
        rustix::fs::fsync(&self.dir)?;
        crash_point("committed");
        Ok(())
    }

    /// Applies the committed journal to the file and removes it.
    /// `old` is the file the update was checked against: what the name leads to now must
    /// still be it (someone who can rename in the directory could have swapped it meanwhile).
    pub(crate) fn apply(self, header: &Header, needed: &Needed, old: &File) -> io::Result<()> {
        let commit = Commit::of(header, needed);
        let file = open_target(&self.dir, &commit.name)?;
        let (was, is) = (rustix::fs::fstat(old)?, rustix::fs::fstat(&file)?);
        if (was.st_dev, was.st_ino) != (is.st_dev, is.st_ino) {
            // Another file under the name: the update is not for it, now or after a restart.
            for ext in ["commit", "journal"] {
                let name = hidden_name(&commit.name, ext);
                let _ = rustix::fs::unlinkat(&self.dir, name.as_str(), AtFlags::empty());
            }
            return Err(io::Error::other(
                "the file was replaced while it was being updated",
            ));
        }
        apply(&self.dir, &self.file, &commit, file)
    }
}

impl<D: AsFd> Drop for Journal<D> {
    fn drop(&mut self) {
        if self.armed {
            let _ = rustix::fs::unlinkat(
                &self.dir,
                hidden_name(&self.name, "journal").as_str(),
                AtFlags::empty(),
            );
        }
    }
}

/// Opens the file a journal is for, `name` in `dir`, which must be a regular file with no
/// other name, as when its update was offered (never waiting, should something else be there
/// now; never writing through a hard link made since into a file elsewhere).
fn open_target(dir: impl AsFd, name: &str) -> io::Result<File> {
    let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK;
    let file = File::from(open_beneath(&dir, name, flags)?);
    let st = rustix::fs::fstat(&file)?;
    match rustix::fs::FileType::from_raw_mode(st.st_mode).is_file() && st.st_nlink == 1 {
        true => Ok(file),
        false => Err(io::Error::other(
            "not a regular file with one name any more",
        )),
    }
}

/// Copies the journal's pieces into `file`, punching its holes, sets the size, mode and
/// mtime, makes the file durable, then removes the record and the journal.
fn apply(dir: impl AsFd, journal: &File, commit: &Commit, file: File) -> io::Result<()> {
    for (i, (start, len)) in commit.needed.spans(commit.size).enumerate() {
        let end = start + len;
        let mut pos = start;
        while pos < end {
            let (from, to) = sys::next_data(journal, pos, end)?.unwrap_or((end, end));
            if from > pos {
                punch(&file, pos, from - pos)?;
            }
            copy_at(journal, &file, from, to - from)?;
            pos = to.max(from);
        }
        if i == 0 {
            crash_point("applying");
        }
    }
    rustix::fs::ftruncate(&file, commit.size)?;
    rustix::fs::fchmod(&file, Mode::from_raw_mode(commit.mode & KEPT_MODE))?;
    rustix::fs::futimens(&file, &timestamps(commit.mtime.0, commit.mtime.1))?;
    rustix::fs::fsync(&file)?;
    for ext in ["commit", "journal"] {
        match rustix::fs::unlinkat(
            &dir,
            hidden_name(&commit.name, ext).as_str(),
            AtFlags::empty(),
        ) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    rustix::fs::fsync(&dir)?;
    Ok(())
}

/// Copies `len` bytes at `offset` from one file to the same offset of another, in the kernel.
pub(crate) fn copy_at(from: &File, to: &File, offset: u64, len: u64) -> io::Result<()> {
    let (mut src, mut dst) = (offset, offset);
    let end = offset + len;
    while src < end {
        let want = (end - src).min(1 << 30) as usize;
        match rustix::fs::copy_file_range(from, Some(&mut src), to, Some(&mut dst), want) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file ended while copying",
                ))
            }
            Ok(_) => {}
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Finishes or drops what an update in place of `name` left in `dir` when its receiver was
/// killed: a committed journal is applied (`Some(true)`), one never committed is removed
/// (`Some(false)`). `None`: there was none.
pub(crate) fn recover(dir: impl AsFd, name: &str) -> io::Result<Option<bool>> {
    let journal_name = hidden_name(name, "journal");
    let journal = match open_beneath(&dir, &journal_name, OFlags::RDONLY) {
        Ok(fd) => File::from(fd),
        Err(Errno::NOENT) => {
            // A record whose journal is gone was applied and half removed.
            let _ =
                rustix::fs::unlinkat(&dir, hidden_name(name, "commit").as_str(), AtFlags::empty());
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let commit = read_commit(&dir, name)?.filter(|c| c.name == name);
    match commit {
        Some(commit) => {
            let file = open_target(&dir, &commit.name)?;
            apply(&dir, &journal, &commit, file)?;
            log::warn!(
                "{}: finished an update in place that was interrupted after its commit",
                crate::name::Escaped(name)
            );
            Ok(Some(true))
        }
        None => {
            for ext in ["commit", "journal"] {
                let _ =
                    rustix::fs::unlinkat(&dir, hidden_name(name, ext).as_str(), AtFlags::empty());
            }
            log::warn!(
                "{}: dropped an update in place interrupted before its commit; the file is as it was",
                crate::name::Escaped(name)
            );
            Ok(Some(false))
        }
    }
}

/// Recovers every update in place a killed receiver left in the top of `dir` (see [`recover`]).
/// Returns how many there were; failures are logged.
pub(crate) fn recover_all(dir: impl AsFd) -> usize {
    let Ok(listing) = rustix::fs::Dir::read_from(&dir) else {
        return 0;
    };
    let mut names = Vec::new();
    for entry in listing.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.starts_with(crate::name::TEMP_PREFIX) && file.ends_with(".commit") {
            names.push(file);
        }
    }
    let mut found = 0;
    for commit in names {
        let Some(name) = name_in(&dir, &commit) else {
            let _ = rustix::fs::unlinkat(&dir, commit.as_str(), AtFlags::empty());
            continue;
        };
        match recover(&dir, &name) {
            Ok(Some(_)) => found += 1,
            Ok(None) => {}
            Err(e) => log::warn!(
                "recovering the update in place of {}: {e}",
                crate::name::Escaped(&name)
            ),
        }
    }
    // Journals without a record were never committed: the file is as it was.
    if let Ok(listing) = rustix::fs::Dir::read_from(&dir) {
        for entry in listing.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if let Some(key) = file
                .strip_prefix(crate::name::TEMP_PREFIX)
                .and_then(|f| f.strip_suffix(".journal"))
            {
                let commit = format!("{}{key}.commit", crate::name::TEMP_PREFIX);
                if rustix::fs::statat(&dir, commit.as_str(), AtFlags::SYMLINK_NOFOLLOW).is_err() {
                    let _ = rustix::fs::unlinkat(&dir, file.as_str(), AtFlags::empty());
                    found += 1;
                }
            }
        }
    }
    found
}

/// The file name a commit record `commit` in `dir` is for.
fn name_in(dir: impl AsFd, commit: &str) -> Option<String> {
    let fd = open_beneath(&dir, commit, OFlags::RDONLY).ok()?;
    let mut text = String::new();
    File::from(fd)
        .take(MAX_RECORD)
        .read_to_string(&mut text)
        .ok()?;
    let c = Commit::decode(&text)?;
    (hidden_name(&c.name, "commit") == commit).then_some(c.name)
}

fn read_commit(dir: impl AsFd, name: &str) -> io::Result<Option<Commit>> {
    let fd = match open_beneath(&dir, hidden_name(name, "commit"), OFlags::RDONLY) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut text = String::new();
    File::from(fd).take(MAX_RECORD).read_to_string(&mut text)?;
    Ok(Commit::decode(&text))
}

impl Commit {
    /// The record of the new version `header` announces, made of these pieces.
    fn of(header: &Header, needed: &Needed) -> Commit {
        Commit {
            name: header.name.clone(),
            size: header.size,
            mode: header.mode & KEPT_MODE,
            mtime: (header.mtime_sec, header.mtime_nsec),
            needed: needed.clone(),
        }
    }

    fn encode(&self) -> String {
        let mut s = format!(
            "{MAGIC}\nname {}\nsize {}\nmode {}\nmtime {} {}\n",
            hex::encode(self.name.as_bytes()),
            self.size,
            self.mode,
            self.mtime.0,
            self.mtime.1
        );
        for (f, n) in self.needed.ranges() {
            s += &format!("range {f} {n}\n");
        }
        s += "end\n";
        s
    }

    /// Decodes a record; `None` for anything short of a whole, well-formed one (a record torn
    /// by a crash is never applied).
    fn decode(text: &str) -> Option<Commit> {
        let mut lines = text.lines();
        if lines.next()? != MAGIC {
            return None;
        }
        let field = |line: Option<&str>, key: &str| -> Option<String> {
            line?
                .strip_prefix(key)?
                .strip_prefix(' ')
                .map(str::to_owned)
        };
        let name = String::from_utf8(hex::decode(field(lines.next(), "name")?).ok()?).ok()?;
        let size = field(lines.next(), "size")?.parse().ok()?;
        let mode = field(lines.next(), "mode")?.parse().ok()?;
        let mtime = field(lines.next(), "mtime")?;
        let (s, n) = mtime.split_once(' ')?;
        let mtime = (s.parse().ok()?, n.parse().ok()?);
        let mut needed = Needed::none();
        let pieces = crate::wire::pieces_of(size);
        let mut next = 0u64;
        for line in lines {
            if line == "end" {
                crate::validate_name(&name).ok()?;
                return Some(Commit {
                    name,
                    size,
                    mode,
                    mtime,
                    needed,
                });
            }
            let range = field(Some(line), "range")?;
            let (f, n) = range.split_once(' ')?;
            let (f, n): (u64, u64) = (f.parse().ok()?, n.parse().ok()?);
            if n == 0 || f < next || f >= pieces || n > pieces - f {
                return None;
            }
            needed.add(f, n);
            next = f + n;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_torn_ones_are_refused() {
        let mut needed = Needed::none();
        needed.add(1, 2);
        needed.add(7, 1);
        let c = Commit {
            name: "disk image.raw".into(),
            size: 8 << 20,
            mode: 0o640,
            mtime: (1_700_000_000, 5),
            needed,
        };
        let text = c.encode();
        assert_eq!(Commit::decode(&text), Some(c));
        for cut in 0..text.len() - 1 {
            assert_eq!(Commit::decode(&text[..cut]), None, "cut at {cut}");
        }
    }

    /// A 1 MiB file `image` of ones in `dir`, and a committed journal that makes it all twos.
    fn committed<'a>(dir: &'a File, path: &std::path::Path) -> (Journal<&'a File>, Header, Needed) {
        std::fs::write(path, vec![1u8; 1 << 20]).unwrap();
        let header = Header::new("image", 1 << 20);
        let mut needed = Needed::none();
        needed.add(0, 1);
        let mut journal = Journal::create(dir, &header).unwrap();
        journal.file.write_all(&vec![2u8; 1 << 20]).unwrap();
        journal.commit(&header, &needed).unwrap();
        (journal, header, needed)
    }

    /// A journal is applied only to the file it was checked against: one renamed in under its
    /// name meanwhile (by someone who may rename in the directory) is left as it is, and the
    /// journal and its record go, so that no restart applies them to it either.
    #[test]
    fn a_journal_is_not_applied_to_a_file_swapped_in_under_its_name() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = File::open(tmp.path()).unwrap();
        let path = tmp.path().join("image");
        let (journal, header, needed) = committed(&dir, &path);
        let old = File::open(&path).unwrap();
        std::fs::write(tmp.path().join("other"), b"someone else's").unwrap();
        std::fs::rename(tmp.path().join("other"), &path).unwrap();
        let err = journal.apply(&header, &needed, &old).unwrap_err();
        assert!(err.to_string().contains("replaced"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"someone else's");
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(recover(&dir, "image").unwrap(), None);
    }

    /// After a crash, a committed journal is applied to the file under its name only while
    /// that has one name: a hard link made since (to a file elsewhere) is not written through.
    #[test]
    fn a_journal_recovered_is_not_applied_through_a_hard_link() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = File::open(tmp.path()).unwrap();
        let path = tmp.path().join("image");
        drop(committed(&dir, &path));
        std::fs::hard_link(&path, tmp.path().join("elsewhere")).unwrap();
        assert!(recover(&dir, "image").is_err());
        assert_eq!(
            std::fs::read(tmp.path().join("elsewhere")).unwrap(),
            vec![1u8; 1 << 20]
        );
    }
}
