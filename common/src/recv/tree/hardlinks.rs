//! A tree's hard links: each framed after its first name, and made at the end of the pass,
//! once that name has its verdict, as a second name of the very file that landed (or was
//! already here) under it.

use rustix::fs::{AtFlags, FileType};
use rustix::io::Errno;

use super::Session;
use crate::error::RecvError;
use crate::name::Escaped;
use crate::recv::partial;
use crate::units::os_reason;
use crate::wire::{FileStatus, Kind};

impl Session<'_, '_> {
    /// The sender framed hard link `i`: it is made at the end of the pass.
    pub(super) fn link_frame(&mut self, i: u32) -> Result<(), RecvError> {
        self.framed(i, |k| matches!(k, Kind::HardLink { .. }), "a hard link")?;
        self.settled[i as usize] = true;
        self.links_due.push(i);
        Ok(())
    }

    /// Makes the hard links framed in this pass, each answered with a verdict of its own:
    /// landed, unchanged (the name is that file already), refused or failed, or "send it again"
    /// when its first name is to be sent again.
    pub(super) fn make_hard_links(&mut self) -> Result<(), RecvError> {
        let due = std::mem::take(&mut self.links_due);
        let mut outcomes = Vec::with_capacity(due.len());
        for i in due {
            let Kind::HardLink { first } = self.manifest.entries[i as usize].kind else {
                continue;
            };
            outcomes.push(match self.outbox.status_of(first) {
                Some(FileStatus::Landed | FileStatus::Unchanged) => {
                    match self.hard_link(i, first) {
                        Ok(true) => (i, FileStatus::Landed, String::new()),
                        Ok(false) => (i, FileStatus::Unchanged, String::new()),
                        Err(RecvError::Refused(why)) => (i, FileStatus::Refused, why),
                        Err(e) => (i, FileStatus::Failed, e.to_string()),
                    }
                }
                Some(FileStatus::Resend) => {
                    (i, FileStatus::Resend, "its first name comes again".into())
                }
                _ => (
                    i,
                    FileStatus::Failed,
                    format!(
                        "its first name {} did not land",
                        Escaped(&self.manifest.entries[first as usize].path)
                    ),
                ),
            });
        }
        // Landed means durable under its name: one syncfs for all the links of the pass.
        if outcomes.iter().any(|o| o.1 == FileStatus::Landed) {
            if let Err(err) = self.syncs.syncfs() {
                let why = self.rx.local("syncing the links", err.into()).to_string();
                for o in outcomes.iter_mut().filter(|o| o.1 == FileStatus::Landed) {
                    (o.1, o.2) = (FileStatus::Failed, why.clone());
                }
            }
        }
        for (i, status, message) in outcomes {
            match status {
                FileStatus::Landed | FileStatus::Unchanged => self.counts.hard_links += 1,
                FileStatus::Resend => self.settled[i as usize] = false,
                _ => {
                    self.counts.failed += 1;
                    let path = Escaped(&self.manifest.entries[i as usize].path);
                    log::warn!("{path}: {message}");
                }
            }
            self.report(i, status, None, &message)?;
        }
        Ok(())
    }

    /// Gives entry `first`'s file the name of entry `i`; false when that name is the file
    /// already.
    fn hard_link(&mut self, i: u32, first: u32) -> Result<bool, RecvError> {
        let (e, f) = (
            &self.manifest.entries[i as usize],
            &self.manifest.entries[first as usize],
        );
        let local = |what: &str, err: Errno| self.rx.local(what, err.into());
        let opening = |err: std::io::Error| {
            RecvError::Refused(format!("opening its directory: {}", os_reason(&err)))
        };
        let from = self.dirs.get(f.parent()).map_err(opening)?;
        let to = self.dirs.get(e.parent()).map_err(opening)?;
        let source = rustix::fs::statat(&from, f.base(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|err| local("finding its first name", err))?;
        if FileType::from_raw_mode(source.st_mode) != FileType::RegularFile {
            return Err(RecvError::Refused(format!(
                "its first name {} is not a file",
                Escaped(&f.path)
            )));
        }
        // In a tree being built under a hidden name, everything is this receiver's own. (A
        // copy with other names there, as here, never has its metadata set in place: see
        // `differs` in the answers.)
        let replace = self.rx.config.force || self.in_stage(&e.path);
        match rustix::fs::statat(&to, e.base(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if (st.st_dev, st.st_ino) == (source.st_dev, source.st_ino) => return Ok(false),
            Ok(_) if !replace => {
                return Err(RecvError::Refused(
                    "exists (use --force on the receiver)".into(),
                ))
            }
            _ => {}
        }
        let temp = partial::scratch_name();
        let _ = rustix::fs::unlinkat(&to, temp.as_str(), AtFlags::empty());
        rustix::fs::linkat(&from, f.base(), &to, temp.as_str(), AtFlags::empty())
            .map_err(|err| local(&format!("linking {}", Escaped(&e.path)), err))?;
        let published = match replace {
            true => rustix::fs::renameat(&to, temp.as_str(), &to, e.base())
                .map_err(|err| local(&format!("renaming into {}", Escaped(&e.path)), err)),
            false => self.rx.publish(&to, &temp, e.base()),
        };
        if let Err(err) = published {
            let _ = rustix::fs::unlinkat(&to, temp.as_str(), AtFlags::empty());
            return Err(err);
        }
        Ok(true)
    }
}
