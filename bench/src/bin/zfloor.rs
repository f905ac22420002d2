//! zfloor: the file-system part of receiving many small files, without network or hashing, to
//! tell what the file system alone costs.
//!
//! `zfloor direct|synced|landed SRC DEST` reads every file below SRC into memory, then writes the
//! same tree below DEST and prints the seconds the writing took (on stdout):
//! - `direct` as `tar x` does: create under the final name, write, set the mtime, close;
//! - `synced` the same followed by one `syncfs`: the least any copy that is durable must do;
//! - `landed` as zrecv must at least: create a hidden temporary file, write, set mode and mtime,
//!   and per batch of 1024 files one `syncfs`, the renames and a second `syncfs`.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use rustix::fs::{Mode, Timespec, Timestamps};

const BATCH: usize = 1024;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (mode, src, dest) = match args.get(1..) {
        Some([mode, src, dest]) if ["direct", "synced", "landed"].contains(&mode.as_str()) => {
            (mode, src, dest)
        }
        _ => bail!("usage: zfloor direct|synced|landed SRC DEST"),
    };
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    collect(Path::new(src), Path::new(""), &mut dirs, &mut files)?;
    let dest = Path::new(dest);
    let started = Instant::now();
    for d in &dirs {
        std::fs::create_dir(dest.join(d)).with_context(|| d.display().to_string())?;
    }
    let mut batch: Vec<(File, PathBuf, PathBuf)> = Vec::new();
    for (n, (path, content, mtime)) in files.iter().enumerate() {
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_NOW,
            },
            last_modification: Timespec {
                tv_sec: *mtime,
                tv_nsec: 0,
            },
        };
        let target = dest.join(path);
        if mode != "landed" {
            let mut f = File::create_new(&target)?;
            f.write_all(content)?;
            rustix::fs::futimens(&f, &times)?;
            continue;
        }
        let temp = target.with_file_name(format!(".zfloor-{n}.part"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        f.write_all(content)?;
        rustix::fs::fchmod(&f, Mode::from_raw_mode(0o644))?;
        rustix::fs::futimens(&f, &times)?;
        batch.push((f, temp, target));
        if batch.len() == BATCH {
            land(&mut batch, dest)?;
        }
    }
    land(&mut batch, dest)?;
    if mode == "synced" {
        rustix::fs::syncfs(File::open(dest)?)?;
    }
    println!("{:.6}", started.elapsed().as_secs_f64());
    Ok(())
}

/// Every directory and file below `root`, relative to it, with each file's content and mtime.
fn collect(
    root: &Path,
    rel: &Path,
    dirs: &mut Vec<PathBuf>,
    files: &mut Vec<(PathBuf, Vec<u8>, i64)>,
) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = rel.join(e.file_name());
        let meta = e.metadata()?;
        if meta.is_dir() {
            dirs.push(path.clone());
            collect(root, &path, dirs, files)?;
        } else if meta.is_file() {
            files.push((path.clone(), std::fs::read(root.join(&path))?, meta.mtime()));
        }
    }
    Ok(())
}

/// Makes the batch durable, renames it into place, makes the renames durable.
fn land(batch: &mut Vec<(File, PathBuf, PathBuf)>, dest: &Path) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let fs = File::open(dest)?;
    rustix::fs::syncfs(&fs)?;
    for (_, temp, target) in batch.drain(..) {
        std::fs::rename(&temp, &target)?;
    }
    rustix::fs::syncfs(&fs)?;
    Ok(())
}
