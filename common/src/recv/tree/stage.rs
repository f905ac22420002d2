//! A new tree lands whole: a top-level directory that is not on the receiver is built under a
//! hidden name (`.zrecv-KEY.stage`), its files renamed there as they are verified without a
//! sync each, then made durable with one `syncfs` and published with one rename at the end of
//! the pass. Nobody sees half of it, and an interrupted one is taken up again by the next
//! transfer of the same name.

use std::collections::HashSet;

use rustix::fs::{OFlags, RenameFlags};
use rustix::io::Errno;

use super::{top_of, Session};
use crate::error::RecvError;
use crate::name::{text_key, Escaped};
use crate::recv::partial::{self, open_beneath};
use crate::units::os_reason;
use crate::wire::{Answer, FileStatus, Kind};

impl Session<'_, '_> {
    /// Makes the hidden directory for top-level directory entry `i` (which is not here), or
    /// takes up the one an interrupted transfer of it left.
    pub(super) fn stage(&mut self, i: usize) -> Answer {
        let e = &self.manifest.entries[i];
        let hidden = partial::hidden_name(&text_key(&e.path), "stage");
        let root = self.dirs.root();
        // Held (and its mtime now) while this transfer builds it: the sweep leaves it alone.
        let fresh = match partial::take_stage(&root, &hidden) {
            Ok((fd, fresh)) => {
                self.stage_locks.push(fd);
                fresh
            }
            Err(err) => {
                return Answer::Refused(format!("making {hidden}: {}", os_reason(&err)));
            }
        };
        if !fresh {
            log::info!(
                "{}: taking up the tree an interrupted transfer left",
                Escaped(&e.path)
            );
        }
        self.made_dirs.push(i);
        if fresh {
            self.fresh_dirs.insert(e.path.clone());
        }
        self.dirs.stage(e.path.clone(), hidden.clone());
        self.staged.push((i, hidden));
        self.counts.dirs += 1;
        Answer::Done
    }

    /// Whether `path` is in a tree still being built under a hidden name.
    pub(super) fn in_stage(&self, path: &[u8]) -> bool {
        self.dirs.staged(path)
    }

    /// Makes every tree built under a hidden name that has no file coming again durable with
    /// one `syncfs`, renames each into place (never over anything), makes the renames
    /// durable, and sends the verdicts held for their files: landed or unchanged when their
    /// tree was published, failed when it could not be (the tree then stays hidden, for the
    /// next transfer to take up). A tree with a file coming again stays hidden, its verdicts
    /// held, for the end of the next pass.
    pub(super) fn publish_stages(&mut self) -> Result<(), RecvError> {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.staged)
            .into_iter()
            .partition(|(i, _)| !self.unfinished.contains(&self.manifest.entries[*i].path));
        self.staged = later;
        if due.is_empty() {
            return Ok(());
        }
        // Published or given up, these trees are done with: a later pass sets nothing in them
        // (under a name that appeared meanwhile, it would set it on what appeared).
        let tops: HashSet<&[u8]> = due
            .iter()
            .map(|(i, _)| &self.manifest.entries[*i].path[..])
            .collect();
        let entries = &self.manifest.entries;
        // Those whose metadata is still to be set (not failed, reported already): they get it
        // once published.
        let to_time: HashSet<usize> = (due.iter().map(|(i, _)| *i))
            .filter(|i| self.made_dirs.contains(i))
            .collect();
        self.made_dirs
            .retain(|&d| !tops.contains(top_of(&entries[d].path)));
        let root = self.dirs.root();
        let synced = self.syncs.syncfs();
        let mut failed: Vec<(Vec<u8>, String)> = Vec::new();
        let mut untimed: Vec<(usize, String)> = Vec::new();
        for (i, hidden) in due {
            let top = &self.manifest.entries[i].path;
            let flags = RenameFlags::NOREPLACE;
            let published = synced.and_then(|()| {
                rustix::fs::renameat_with(&root, hidden.as_str(), &root, top, flags)
            });
            // Its mode, owner and mtime only once published (see `set_dir_metadata`), durable
            // with the rename.
            if published.is_ok() && to_time.contains(&i) {
                let e = &self.manifest.entries[i];
                let dir = open_beneath(&root, top, OFlags::RDONLY | OFlags::DIRECTORY);
                let timed = dir.map_err(std::io::Error::from).and_then(|d| {
                    self.dir_metadata(&d, e)?;
                    Ok(rustix::fs::fsync(&d)?)
                });
                if let Err(err) = timed {
                    let why = format!("setting the directory's metadata: {}", os_reason(&err));
                    log::warn!("{}: {why}", Escaped(top));
                    untimed.push((i, why));
                }
            }
            let published = published.and_then(|()| rustix::fs::fsync(&root));
            if let Err(err) = published {
                let why = match err {
                    Errno::EXIST => format!(
                        "{} appeared while the tree was received; it is kept as {hidden}",
                        Escaped(top)
                    ),
                    err => format!("publishing the tree (kept as {hidden}): {err}"),
                };
                log::warn!("{}: {why}", Escaped(top));
                failed.push((top.clone(), why));
            }
        }
        let unfinished = &self.unfinished;
        self.dirs.unstage(|top| !unfinished.contains(top));
        let held = self.outbox.release(|index| {
            let path = &self.manifest.entries[index as usize].path;
            !unfinished.contains(top_of(path))
        });
        for (index, mut status, root, mut message) in held {
            let top = top_of(&self.manifest.entries[index as usize].path);
            if let Some((_, why)) = failed.iter().find(|(t, _)| t == top) {
                // Counted as it was held: take it back.
                let kind = &self.manifest.entries[index as usize].kind;
                match (kind, status) {
                    (Kind::HardLink { .. }, _) => self.counts.hard_links -= 1,
                    (_, FileStatus::Unchanged) => self.counts.unchanged -= 1,
                    // The lander counts what it lands, in its own tally.
                    _ => self.unpublished += 1,
                }
                self.counts.failed += 1;
                (status, message) = (FileStatus::Failed, why.clone());
            }
            self.outbox.verdict(index, status, root, &message);
        }
        for (i, why) in untimed {
            self.dir_failed(i, &why)?;
        }
        Ok(())
    }
}
