//! What a receive directory holds for resuming, for `zrecv --list-partials` and
//! `--remove-partials`: each kept partial with the name it belongs to, how much of it is held,
//! and how old it is.

use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{Record, MAX_RECORD_LEN};
use crate::name::TEMP_PREFIX;

/// A partial kept for resuming.
#[derive(Clone, Debug)]
pub struct KeptPartial {
    /// The name it lands under, relative to the receive directory.
    pub name: PathBuf,
    /// The file's size.
    pub size: u64,
    /// Bytes held from its start; `None` when its transfer is running, or its receiver was
    /// killed (the next attempt measures what the file holds).
    pub held: Option<u64>,
    /// Bytes it takes on disk.
    pub on_disk: u64,
    /// Since it was last written.
    pub age: Duration,
    /// Whether a running transfer holds it (a receiver serving the directory now).
    pub in_flight: bool,
    /// The data file (`.zrecv-KEY.part`) and its record (`.zrecv-KEY.resume`).
    pub files: [PathBuf; 2],
}

/// Every kept partial beneath `dir` (symbolic links are not followed), by name. Records that
/// cannot be read, and data files without their record, are left out.
pub fn kept_partials(dir: &Path) -> io::Result<Vec<KeptPartial>> {
    std::fs::read_dir(dir)?; // a missing or unreadable directory is an error, not "none"
    let mut out = Vec::new();
    let now = SystemTime::now();
    for entry in walkdir::WalkDir::new(dir).follow_links(false) {
        let Ok(entry) = entry else { continue };
        let file_name = entry.file_name().to_string_lossy();
        let Some(key) = file_name
            .strip_prefix(TEMP_PREFIX)
            .and_then(|k| k.strip_suffix(".resume"))
        else {
            continue;
        };
        if !entry.file_type().is_file() {
            continue;
        }
        let record_path = entry.path().to_owned();
        let part = record_path.with_file_name(format!("{TEMP_PREFIX}{key}.part"));
        let Some(record) = read_record(&record_path) else {
            continue;
        };
        let Ok(meta) = std::fs::symlink_metadata(&part) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let parent = record_path.parent().unwrap_or(dir);
        let rel = parent.strip_prefix(dir).unwrap_or(Path::new(""));
        let modified = meta.modified().unwrap_or(now);
        let in_flight = std::fs::File::open(&part).is_ok_and(|f| super::is_running(&f));
        out.push(KeptPartial {
            name: rel.join(&record.name),
            size: record.size,
            held: record.held,
            on_disk: meta.blocks() * 512,
            age: now.duration_since(modified).unwrap_or(Duration::ZERO),
            in_flight,
            files: [part, record_path],
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes a kept partial: its data file, then its record.
pub fn remove_partial(kept: &KeptPartial) -> io::Result<()> {
    for f in &kept.files {
        match std::fs::remove_file(f) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn read_record(path: &Path) -> Option<Record> {
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_RECORD_LEN)
        .read_to_string(&mut text)
        .ok()?;
    Record::decode(&text)
}
