//! What the sender waits to hear about each entry of a tree (the ledger), and the thread that
//! reads the receiver's reports and checks each verdict against it.

use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::wire::ProtocolError;
use crate::wire::{FileStatus, Report};

/// What went out for an entry, and so which verdicts may come back for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sent {
    /// The whole file and its trailer.
    Full,
    /// A check of the copy the receiver has.
    Check,
    /// The rest of a partial the receiver holds, and its trailer.
    Resume,
    /// The whole payload, then word that the source changed: the receiver must discard it.
    Abandoned,
    /// Word that the copy the receiver has, of the same size and mtime, is taken as it is.
    Quick,
    /// A hard link to make: landed, already that file, failed, refused, or back to us with
    /// its first name.
    Link,
    /// Nothing: a directory the receiver made or found, which hears back only that it would
    /// not take its owner, mode, attributes or mtime.
    Dir,
}

impl Sent {
    /// Whether the receiver may answer `status` to this.
    fn allows(self, status: FileStatus) -> bool {
        use FileStatus::*;
        match self {
            Sent::Full => matches!(status, Landed | Mismatch | Failed | Refused),
            Sent::Resume => matches!(status, Landed | Mismatch | Failed | Refused | Resend),
            Sent::Check => matches!(status, Unchanged | Resend | Failed | Refused),
            Sent::Abandoned => matches!(status, Failed | Refused),
            Sent::Quick => matches!(status, Unchanged | Failed | Refused),
            Sent::Link => matches!(status, Landed | Unchanged | Failed | Refused | Resend),
            Sent::Dir => matches!(status, Failed),
        }
    }
}

/// Where each entry stands: nothing out, going out, waiting for its verdict, or answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Idle,
    /// Its frame went out and its payload is going: the receiver may only say it failed (a
    /// local failure such as a full disk, after which it ends the tree).
    Sending(Sent),
    Awaiting(Sent),
    /// A directory answered made or found: a failure to take its metadata may come, once, at
    /// the end of a pass; nothing else may, and nothing need.
    Made,
    Answered,
}

/// What the sender waits to hear, shared with the thread that reads verdicts: an entry awaits
/// its verdict from the moment its last byte (its trailer, or its check) goes out, so a
/// verdict for anything else (an entry not sent, not finished, or already answered; a status
/// that does not answer what was sent) is refused as it is read. No entry is answered twice,
/// so no tree can count more verdicts than files. It also notes when the receiver last said
/// anything.
pub(super) struct Ledger {
    slots: Mutex<Vec<Slot>>,
    start: Instant,
    /// Milliseconds from `start` to the receiver's latest word.
    heard: AtomicU64,
}

impl Ledger {
    pub(super) fn new(entries: usize) -> Ledger {
        Ledger {
            slots: Mutex::new(vec![Slot::Idle; entries]),
            start: Instant::now(),
            heard: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The receiver said something.
    pub(super) fn heard(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.heard.store(now, Ordering::Relaxed);
    }

    /// How long since the receiver last said anything (since the start, if it never did).
    pub(super) fn since_heard(&self) -> Duration {
        let heard = Duration::from_millis(self.heard.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(heard)
    }

    /// Entry `i`'s frame is about to go out, its payload after it.
    pub(super) fn sending(&self, i: usize, sent: Sent) {
        self.lock()[i] = Slot::Sending(sent);
    }

    /// Entry `i` is a directory the receiver made or found: it may be answered failed.
    pub(super) fn directory(&self, i: usize) {
        self.lock()[i] = Slot::Made;
    }

    /// Entry `i`'s last byte is about to go out. One the receiver already failed while it came
    /// stays answered: a verdict after it would be a second.
    pub(super) fn expect(&self, i: usize, sent: Sent) {
        let mut slots = self.lock();
        if !matches!(slots[i], Slot::Answered) {
            slots[i] = Slot::Awaiting(sent);
        }
    }

    /// Takes in a verdict for entry `index`; returns what it answers.
    fn answer(&self, index: u32, status: FileStatus) -> Result<Sent, ProtocolError> {
        let mut slots = self.lock();
        let count = slots.len();
        let bad = |why: String| Err(ProtocolError::Malformed(why));
        let Some(slot) = slots.get_mut(index as usize) else {
            return bad(format!("a verdict for entry {index} of {count}"));
        };
        match *slot {
            Slot::Awaiting(sent) if sent.allows(status) => {
                *slot = match status {
                    FileStatus::Resend => Slot::Idle,
                    _ => Slot::Answered,
                };
                Ok(sent)
            }
            Slot::Awaiting(sent) => bad(format!(
                "a verdict {status:?} for entry {index}, which was sent as {sent:?}"
            )),
            Slot::Sending(sent) if status == FileStatus::Failed => {
                *slot = Slot::Answered;
                Ok(sent)
            }
            Slot::Made if Sent::Dir.allows(status) => {
                *slot = Slot::Answered;
                Ok(Sent::Dir)
            }
            Slot::Made => bad(format!("a verdict {status:?} for the directory {index}")),
            Slot::Sending(_) => bad(format!(
                "a verdict {status:?} for entry {index} before all of it was sent"
            )),
            Slot::Idle => bad(format!(
                "a verdict for entry {index} before all of it was sent"
            )),
            Slot::Answered => bad(format!("a second verdict for entry {index}")),
        }
    }

    /// How many entries still await their verdict.
    pub(super) fn awaiting(&self) -> usize {
        self.unanswered().len()
    }

    /// The entries that still await their verdict.
    pub(super) fn unanswered(&self) -> Vec<usize> {
        let slots = self.lock();
        let awaiting = |(i, s): (usize, &Slot)| matches!(s, Slot::Awaiting(_)).then_some(i);
        slots.iter().enumerate().filter_map(awaiting).collect()
    }
}

/// What the verdict reader passes on: a report, with what it answers when it is a verdict.
pub(super) type Incoming = Result<(Report, Option<Sent>), ProtocolError>;

/// The thread reading what the receiver says, the only reader once the passes begin: takes
/// each verdict into the ledger (refusing one it does not expect) and hands it on with what it
/// answers; ends at the first error, handed on too, or when nobody listens any more.
pub(super) fn read_reports(stream: &TcpStream, ledger: Arc<Ledger>, tx: mpsc::Sender<Incoming>) {
    // The only reader from here on: buffering saves a system call per field.
    let mut incoming = std::io::BufReader::new(stream);
    loop {
        let report = Report::read(&mut incoming).and_then(|r| {
            ledger.heard();
            match &r {
                Report::File { index, status, .. } => ledger
                    .answer(*index, *status)
                    .map(|sent| (Some(r), Some(sent))),
                // Kept here: a receiver sending keepalives faster than we take them
                // would otherwise fill our memory.
                Report::Keepalive => Ok((None, None)),
                Report::EndOfPass => Ok((Some(r), None)),
            }
        });
        let report = match report {
            Ok((None, _)) => continue,
            Ok((Some(r), sent)) => Ok((r, sent)),
            Err(e) => Err(e),
        };
        let end = report.is_err();
        if tx.send(report).is_err() || end {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file failed while its payload went out has had its verdict: "landed" once its trailer
    /// is out is a second one (it used to count the file both failed and landed).
    #[test]
    fn a_file_failed_while_it_went_out_takes_no_other_verdict() {
        let ledger = Ledger::new(2);
        ledger.sending(0, Sent::Full);
        assert!(ledger.answer(0, FileStatus::Failed).is_ok());
        ledger.expect(0, Sent::Full);
        let again = ledger.answer(0, FileStatus::Landed).unwrap_err();
        assert!(again.to_string().contains("a second verdict"), "{again}");
        assert_eq!(ledger.awaiting(), 0);
        // The other file goes its usual way.
        ledger.sending(1, Sent::Full);
        ledger.expect(1, Sent::Full);
        assert_eq!(ledger.awaiting(), 1);
        assert!(ledger.answer(1, FileStatus::Landed).is_ok());
    }
}
