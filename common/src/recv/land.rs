//! Landing: the trailer checked against our digest, the file's metadata set, its data made
//! durable, published under its name with a rename that replaces nothing (unless `--force`),
//! the rename made durable, and the verdict sent.

use std::fs::File;
use std::io::Write;
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, Mode, RenameFlags, Timespec, Timestamps};
use rustix::io::Errno;

use super::chain::Forward;
use super::partial::{self, TempFile};
use super::{Receiver, TransferRecord};
use crate::auth::{Integrity, Seal};
use crate::error::RecvError;
use crate::hash::PIECE;
use crate::meta::Plan;
use crate::name::Escaped;
use crate::watch::Patience;
use crate::wire::{Header, ProtocolError, Status, Trailer, Verdict, KEPT_MODE};

/// Repair rounds for a trailer whose root (the argument) is not ours: the root once they agree.
pub(crate) type Repair<'a> =
    &'a mut dyn FnMut([u8; 32], &mut TransferRecord) -> Result<[u8; 32], RecvError>;

impl Receiver {
    /// Reads the trailer, checks its seal and compares digests, telling the sender when they
    /// differ (or when it abandoned the file). A forwarding receiver passes the trailer on.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn check_trailer(
        &self,
        stream: &TcpStream,
        header: &Header,
        integrity: &Integrity,
        digest: Option<[u8; 32]>,
        record: &mut TransferRecord,
        mut forward: Option<&mut Forward>,
        repair: Option<Repair>,
    ) -> Result<Option<[u8; 32]>, RecvError> {
        // Keepalives still coming go on to the next host of a chain, which may be hashing too;
        // for as long as hashing the file could take.
        let data = header.sparse_data_len.unwrap_or(header.size);
        let mut patience = Patience::for_bytes(self.config.timeout, data);
        let mut relay = || {
            if let Some(f) = forward.as_deref_mut() {
                f.keepalive();
            }
            patience.still()
        };
        let trailer = match Trailer::read_telling(&mut &*stream, &mut relay) {
            Ok(t) => t,
            Err(ProtocolError::Abandoned) => {
                if let Some(f) = forward {
                    f.pass_abandoned();
                }
                let msg = "source changed during transfer; discarded";
                send_verdict(stream, integrity, Status::Failed, None, msg);
                return Err(ProtocolError::Abandoned.into());
            }
            Err(e) => return Err(e.into()),
        };
        if header.verify() != trailer.root.is_some() {
            return Err(ProtocolError::Malformed(
                "trailer digest does not match the header's verify flag".into(),
            )
            .into());
        }
        record.root = digest;
        if !trailer.opens(integrity, 0) {
            if let Some(f) = forward {
                f.pass_abandoned();
            }
            let msg = RecvError::Unsealed.to_string();
            send_verdict(stream, integrity, Status::Mismatch, digest, &msg);
            return Err(RecvError::Unsealed);
        }
        if let Some(f) = forward {
            f.pass_trailer(trailer.root);
        }
        // A file of more than one piece whose root differs is repaired piece by piece, when
        // its sender can.
        if let (Some(repair), Some(theirs)) = (repair, trailer.root) {
            if trailer.root != digest && header.repairable() && header.size > PIECE {
                let repaired = repair(theirs, record)?;
                record.root = Some(repaired);
                return Ok(Some(repaired));
            }
        }
        if trailer.root != digest {
            let hex = |d: Option<[u8; 32]>| d.map(hex::encode).unwrap_or_default();
            send_verdict(
                stream,
                integrity,
                Status::Mismatch,
                digest,
                "checksum mismatch; discarded",
            );
            return Err(RecvError::Mismatch {
                sent: hex(trailer.root),
                received: hex(digest),
            });
        }
        Ok(digest)
    }

    /// Sets mode and mtime, makes the data durable, publishes under the final name `base` in the
    /// temporary file's directory and makes the rename durable. Returns the time spent in fsync.
    pub(crate) fn land<D: AsFd>(
        &self,
        temp: TempFile<D>,
        base: impl AsRef<[u8]>,
        header: &Header,
    ) -> Result<Duration, RecvError> {
        self.land_planned(temp, base, header, None)
    }

    /// [`land`](Self::land), with a tree entry's owner and attributes.
    pub(crate) fn land_planned<D: AsFd>(
        &self,
        temp: TempFile<D>,
        base: impl AsRef<[u8]>,
        header: &Header,
        plan: Option<&Plan>,
    ) -> Result<Duration, RecvError> {
        self.set_metadata_planned(&temp.file, header, plan, temp.made_with)?;
        let start = Instant::now();
        rustix::fs::fsync(&temp.file).map_err(|e| self.local("syncing the data", e.into()))?;
        let mut synced = start.elapsed();
        self.publish(&temp.dir, &temp.name, base)?;
        // Whatever an earlier, interrupted transfer of this name kept is obsolete now.
        partial::forget(&temp.dir, &header.name);
        let start = Instant::now();
        rustix::fs::fsync(&temp.dir).map_err(|e| self.local("syncing the directory", e.into()))?;
        synced += start.elapsed();
        temp.disarm();
        Ok(synced)
    }

    /// Applies the header's mode (its [`KEPT_MODE`] bits) and mtime to a received file.
    pub(crate) fn set_metadata(&self, f: &File, header: &Header) -> Result<(), RecvError> {
        let mode = Mode::from_raw_mode(header.mode & KEPT_MODE);
        rustix::fs::fchmod(f, mode).map_err(|e| self.local("setting the mode", e.into()))?;
        self.set_mtime(f, header)
    }

    fn set_mtime(&self, f: &File, header: &Header) -> Result<(), RecvError> {
        rustix::fs::futimens(f, &timestamps(header.mtime_sec, header.mtime_nsec))
            .map_err(|e| self.local("setting the mtime", e.into()))
    }

    /// [`set_metadata`](Self::set_metadata) (only the mtime for a file `made_with` the mode
    /// already), then a tree entry's owner, full mode and attributes, when it carries them.
    pub(crate) fn set_metadata_planned(
        &self,
        f: &File,
        header: &Header,
        plan: Option<&Plan>,
        made_with: Option<u32>,
    ) -> Result<(), RecvError> {
        match made_with == Some(header.mode & KEPT_MODE) {
            true => self.set_mtime(f, header)?,
            false => self.set_metadata(f, header)?,
        }
        match plan {
            Some(plan) => plan
                .apply(f)
                .map_err(|e| self.local("setting the owner and attributes", e)),
            None => Ok(()),
        }
    }

    /// Renames `temp` to `name` within `dir`: never replacing anything unless `--force`.
    pub(crate) fn publish(
        &self,
        dir: impl AsFd,
        temp: &str,
        name: impl AsRef<[u8]>,
    ) -> Result<(), RecvError> {
        self.publish_over(dir, temp, name, self.config.force)
    }

    /// As [`publish`](Self::publish), replacing what is there when `replace` (`--force`, or
    /// in a new tree's hidden directory, where everything is this receiver's own).
    pub(crate) fn publish_over(
        &self,
        dir: impl AsFd,
        temp: &str,
        name: impl AsRef<[u8]>,
        replace: bool,
    ) -> Result<(), RecvError> {
        let name = name.as_ref();
        let dir = dir.as_fd();
        let result = if replace {
            rustix::fs::renameat(dir, temp, dir, name)
        } else {
            match rustix::fs::renameat_with(dir, temp, dir, name, RenameFlags::NOREPLACE) {
                // Filesystems without RENAME_NOREPLACE: link(2) never replaces either.
                Err(Errno::INVAL) | Err(Errno::NOSYS) => {
                    rustix::fs::linkat(dir, temp, dir, name, AtFlags::empty())
                        .and_then(|()| rustix::fs::unlinkat(dir, temp, AtFlags::empty()))
                }
                other => other,
            }
        };
        result.map_err(|e| match e {
            Errno::EXIST => RecvError::Refused(format!(
                "{} appeared while it was being received; kept the existing file",
                Escaped(name)
            )),
            e => self.local(&format!("renaming into {}", Escaped(name)), e.into()),
        })
    }
}

/// Access time now, modification time as given.
pub(crate) fn timestamps(mtime_sec: i64, mtime_nsec: u32) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        last_modification: Timespec {
            tv_sec: mtime_sec,
            tv_nsec: mtime_nsec as _,
        },
    }
}

/// Sends a verdict, its digest sealed with the connection's key.
pub(super) fn send_verdict(
    stream: &TcpStream,
    integrity: &Integrity,
    status: Status,
    root: Option<[u8; 32]>,
    message: &str,
) {
    let v = Verdict {
        status,
        root,
        seal: [0; 32],
        message: message.to_owned(),
    }
    .sealed(integrity, Seal::Verdict, 0);
    if let Err(e) = (&*stream).write_all(&v.encode()) {
        log::debug!("sending the verdict: {e}");
    }
}
