//! A tree's first exchange: the manifest goes out, the receiver answers for every entry at
//! once, and the answers say what the first pass sends for each file.

use std::io::Write;

use super::Session;
use crate::auth::{Hashing, Seal};
use crate::client::net;
use crate::error::SendError;
use crate::hash::PIECE;
use crate::name::Escaped;
use crate::wire::read_message_seal;
use crate::wire::ProtocolError;
use crate::wire::{Answer, Answers, Kind};

/// What to send for one file.
#[derive(Clone, Copy, Debug)]
pub(super) enum Action {
    Full,
    Check,
    /// The receiver holds this many bytes; the proof of ours is keyed with this nonce.
    Resume(u64, [u8; 32]),
    /// A hard link: made by the receiver once its first name is there.
    Link,
    /// A check by roots, never a quick one: the copy there has another mtime.
    Verify,
}

impl Session<'_> {
    /// Sends the manifest and reads the receiver's answers: directories and links it made are
    /// counted, refused entries failed; returns what the first pass sends for each file.
    pub(super) fn answers(&mut self, label: &str) -> Result<Vec<(usize, Action)>, SendError> {
        let manifest = &self.tree.manifest;
        // With a token, sealed: the seals of the files' digests say nothing of the paths,
        // kinds, modes, owners and link targets the receiver makes them under.
        let mut words = manifest.encode();
        if self.integrity.keyed() {
            let seal = self.integrity.seal_message(Seal::Manifest, &words);
            words.extend_from_slice(&seal);
        }
        self.stream
            .write_all(&words)
            .map_err(net("sending the manifest"))?;
        // The receiver sends nothing after its answers until it has our first frame, so they
        // can be read through a buffer (one system call, not one per entry).
        let mut buffered = std::io::BufReader::new(self.stream);
        let mut hashing = Hashing::new(&mut buffered);
        let answers = Answers::read(&mut hashing, manifest.entries.len())?;
        let digest = hashing.digest();
        if let (Answers::Each(..), true) = (&answers, self.integrity.keyed()) {
            let seal_of = "the answers' seal";
            read_message_seal(
                &mut buffered,
                &self.integrity,
                Seal::Answers,
                &digest,
                seal_of,
            )?;
        }
        let answers = match answers {
            Answers::Each(a, unkept) => {
                self.report.unkept = unkept as usize;
                a
            }
            Answers::Refused(code, message) => {
                return Err(SendError::Refused {
                    name: label.to_owned(),
                    code,
                    message,
                })
            }
        };
        if !buffered.buffer().is_empty() {
            return Err(ProtocolError::Malformed(
                "the receiver spoke after its answers, before any file went out".into(),
            )
            .into());
        }
        let mut first = Vec::new();
        for (i, (entry, answer)) in manifest.entries.iter().zip(answers).enumerate() {
            match (&entry.kind, answer) {
                (_, Answer::Refused(why)) => self.fail(i, why),
                (Kind::Dir, Answer::Done) => {
                    self.report.dirs += 1;
                    self.ledger.directory(i);
                }
                (Kind::Symlink { .. }, Answer::Done) => self.report.links += 1,
                (Kind::Fifo | Kind::Socket | Kind::Device { .. }, Answer::Done) => {
                    self.report.specials += 1
                }
                (Kind::HardLink { .. }, Answer::Send) => first.push((i, Action::Link)),
                (Kind::File { .. }, Answer::Send) => first.push((i, Action::Full)),
                (Kind::File { .. }, Answer::Landed) => first.push((i, Action::Check)),
                (Kind::File { .. }, Answer::SameSize) => first.push((i, Action::Verify)),
                // Only a file we offered to resume (it has a source id), within it and at a
                // piece boundary past 0.
                (
                    Kind::File {
                        size,
                        source_id: Some(_),
                        ..
                    },
                    Answer::Partial(offset, nonce),
                ) if offset <= *size && offset > 0 && offset.is_multiple_of(PIECE) => {
                    first.push((i, Action::Resume(offset, nonce)))
                }
                (_, answer) => {
                    return Err(ProtocolError::Malformed(format!(
                        "answer {answer:?} to {}",
                        Escaped(&entry.path)
                    ))
                    .into())
                }
            }
        }
        Ok(first)
    }
}
