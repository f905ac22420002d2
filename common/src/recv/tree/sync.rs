//! A tree session's syncs: through a description of the receive directory of its own, and,
//! once one has failed, every later one failing too.

use std::os::fd::OwnedFd;
use std::sync::{Arc, OnceLock};

use rustix::io::Errno;

/// The kernel reports a write-back error once per open description, to whichever sync asks
/// first. A description of its own keeps other transfers from taking this session's report.
/// Within the session, a sync covers every file written on the file system, not only those of
/// the batch that asks: a batch's sync may take the report of a failure in the next batch's
/// files, whose own sync would then say nothing. So the first failure is kept and given to
/// every later sync: nothing written in this session after it is taken to be on disk.
pub(super) struct Syncs {
    dir: Arc<OwnedFd>,
    /// The device of its file system (`None`: unknown).
    dev: Option<u64>,
    failed: OnceLock<Errno>,
}

impl Syncs {
    /// Syncs through `dir`, a description of the receive directory this session opened.
    pub fn new(dir: Arc<OwnedFd>) -> Syncs {
        Syncs {
            dev: rustix::fs::fstat(&dir).ok().map(|st| st.st_dev),
            dir,
            failed: OnceLock::new(),
        }
    }

    /// Whether `dir` is on another file system than the receive directory (a mount point in a
    /// tree merged into one here), which [`Syncs::syncfs`] does not reach. True when unsure.
    pub fn elsewhere(&self, dir: &OwnedFd) -> bool {
        let dev = rustix::fs::fstat(dir).ok().map(|st| st.st_dev);
        dev.is_none() || dev != self.dev
    }

    /// Makes everything written on the receive directory's file system durable (syncfs), or
    /// says why not: this sync's error, or the one an earlier sync of the session had.
    pub fn syncfs(&self) -> rustix::io::Result<()> {
        if let Some(e) = self.failed.get() {
            return Err(*e);
        }
        rustix::fs::syncfs(&self.dir).inspect_err(|e| {
            let _ = self.failed.set(*e);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_given_to_every_later_sync() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = rustix::fs::open(tmp.path(), rustix::fs::OFlags::DIRECTORY, 0.into()).unwrap();
        let syncs = Syncs::new(Arc::new(dir));
        assert_eq!(syncs.syncfs(), Ok(()));
        // As if write-back had failed under the last sync.
        syncs.failed.set(Errno::IO).unwrap();
        assert_eq!(syncs.syncfs(), Err(Errno::IO));
        assert_eq!(syncs.syncfs(), Err(Errno::IO));
    }
}
