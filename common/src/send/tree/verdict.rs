//! Taking in the receiver's verdict on each file of a tree: checked against our digest and
//! counted as landed, unchanged or failed, or put aside to be sent again whole.

use super::ledger::Sent;
use super::Session;
use crate::auth::Seal;
use crate::error::SendError;
use crate::name::Escaped;
use crate::units::Bytes;
use crate::wire::ProtocolError;
use crate::wire::{FileStatus, Report};

impl Session<'_> {
    /// Takes in one report; a verdict comes with what it answers (the reader checked it
    /// against the ledger).
    pub(super) fn apply(
        &mut self,
        report: Report,
        sent: Option<Sent>,
        resend: &mut Vec<usize>,
    ) -> Result<(), SendError> {
        let (index, status, root, seal, message) = match report {
            Report::File {
                index,
                status,
                root,
                seal,
                message,
            } => (index, status, root, seal, message),
            Report::Keepalive => return Ok(()),
            Report::EndOfPass => {
                return Err(ProtocolError::Malformed("an end of pass before ours".into()).into())
            }
        };
        let i = index as usize;
        let ours = self.digests[i];
        self.last_failed = (status == FileStatus::Failed).then(|| {
            let path = Escaped(&self.tree.manifest.entries[i].path).to_string();
            (path, message.clone())
        });
        if root.is_some() && matches!(sent, Some(Sent::Link | Sent::Dir)) {
            return Err(ProtocolError::Malformed(format!(
                "a digest on the verdict for the hard link or directory {}",
                Escaped(&self.tree.manifest.entries[i].path)
            ))
            .into());
        }
        // Sealed with or without a digest: a quick check's, a hard link's or a failure's status
        // is no one's to change on the way either.
        let digest = root.unwrap_or_default();
        if !(self.integrity).opens(Seal::Verdict, index, status as u8, &digest, &seal) {
            let why = SendError::Unsealed("the receiver's verdict".into());
            self.fail(i, why.to_string());
            return Ok(());
        }
        let mismatch = || {
            let hex = |d: Option<[u8; 32]>| d.map(hex::encode).unwrap_or_else(|| "nothing".into());
            format!(
                "checksum mismatch: sent {}, receiver has {}",
                hex(ours),
                hex(root)
            )
        };
        match status {
            // Taken on size and mtime: nobody compared roots.
            FileStatus::Unchanged if sent == Some(Sent::Quick) => {
                let path = Escaped(&self.tree.manifest.entries[i].path);
                log::debug!("{path}: already there (size and mtime)");
                self.report.quick += 1;
                self.report.unchanged += 1;
            }
            // A second name of a file whose own verdict carried the digest.
            FileStatus::Landed | FileStatus::Unchanged if sent == Some(Sent::Link) => {
                log::debug!("{}: linked", Escaped(&self.tree.manifest.entries[i].path));
                self.report.hard_links += 1;
            }
            FileStatus::Landed | FileStatus::Unchanged if self.opts.verify => match root {
                None => {
                    return Err(ProtocolError::Malformed(format!(
                        "a verdict without a digest for {} on a verified transfer",
                        Escaped(&self.tree.manifest.entries[i].path)
                    ))
                    .into())
                }
                Some(_) if root != ours => self.fail(i, mismatch()),
                Some(_) => self.count(i, status),
            },
            FileStatus::Landed | FileStatus::Unchanged => self.count(i, status),
            FileStatus::Mismatch => self.fail(i, mismatch()),
            FileStatus::Failed | FileStatus::Refused if sent == Some(Sent::Abandoned) => {
                self.fail(i, SendError::SourceChanged.to_string())
            }
            FileStatus::Failed | FileStatus::Refused if sent == Some(Sent::Dir) => {
                self.report.dirs -= 1;
                self.fail(i, message)
            }
            FileStatus::Failed | FileStatus::Refused => self.fail(i, message),
            FileStatus::Resend => {
                log::debug!(
                    "{}: differs from the receiver's; sending it again whole",
                    Escaped(&self.tree.manifest.entries[i].path)
                );
                self.resumed[i] = 0;
                resend.push(i);
            }
        }
        Ok(())
    }

    /// Counts a file that landed, or was already there (and says so with `-vv`).
    fn count(&mut self, i: usize, status: FileStatus) {
        let path = Escaped(&self.tree.manifest.entries[i].path);
        match status {
            FileStatus::Unchanged => {
                log::debug!("{path}: already there (roots compared)");
                self.report.unchanged += 1;
            }
            _ => {
                match self.resumed[i] {
                    0 => log::debug!("{path}: landed"),
                    held => log::debug!("{path}: landed, resumed after {}", Bytes(held)),
                }
                self.report.landed += 1;
                self.report.resumed_from += self.resumed[i];
            }
        }
    }
}
