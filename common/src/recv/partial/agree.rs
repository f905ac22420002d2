//! Resume agreement: the receiver offers the bytes it kept with a fresh nonce, hashes them while
//! the sender proves it holds the same, and decides whether the payload goes on from there.

use std::io;
use std::net::TcpStream;
use std::os::fd::AsFd;

use super::TempFile;
use crate::auth;
use crate::error::RecvError;
use crate::hash::{Prefix, Watermark};
use crate::name::Escaped;
use crate::recv::file::prepare;
use crate::recv::handshake::{accept, tell};
use crate::recv::{Receiver, TransferRecord};
use crate::watch::{self, Done};
use crate::wire::{Decision, Header, PrefixProof, Reply};

impl Receiver {
    /// Offers to resume from the `held` bytes kept from an interrupted transfer, with a fresh
    /// nonce; hashes them while the sender hashes its own and proves it holds the same bytes;
    /// then says whether the payload goes on from there. Returns the prefix to go on from:
    /// empty, with the file emptied, when the sender's proof does not match (or ours could not
    /// be read back). Our digest never crosses the wire, so a sender without the bytes learns
    /// nothing it could extend into a "verified" file.
    pub(crate) fn agree_on_prefix(
        &self,
        stream: &TcpStream,
        header: &Header,
        temp: &TempFile<impl AsFd>,
        held: u64,
        record: &mut TransferRecord,
    ) -> Result<Prefix, RecvError> {
        let nonce = auth::nonce().map_err(|e| self.local("drawing a nonce", e))?;
        accept(
            stream,
            header,
            Reply::Resume {
                offset: held,
                nonce,
            },
        )?;
        let sparse = header.sparse_data_len.is_some();
        let mark = Watermark::complete(held);
        let done = Done::new().map_err(|e| self.local("creating an event", e))?;
        let file = &temp.file;
        let (ours, watched) = std::thread::scope(|s| {
            let hasher = s.spawn(|| {
                let _raise = done.on_drop();
                Prefix::of_file_until(file, held, sparse, &mark)
            });
            let watched = watch::wait_for(stream, &done, self.config.timeout, &mut || {});
            if watched.is_err() {
                mark.abort();
            }
            (hasher.join().expect("hashing thread panicked"), watched)
        });
        watched.map_err(|stop| {
            self.gave_up(stop, "waiting for the resume proof", held, header.size)
        })?;
        let theirs = PrefixProof::read(&mut &*stream)?;
        let matches = match ours {
            Ok(Some(ours)) => {
                let proof = auth::prefix_proof(&nonce, held, &ours.digest());
                auth::same_proof(&proof, &theirs.0).then_some(ours)
            }
            Ok(None) => unreachable!("aborted only when the wait failed"),
            Err(e) => {
                log::warn!("reading back the partial {}: {e}", Escaped(&header.name));
                None
            }
        };
        let decision = match matches {
            Some(_) => Decision::Resume,
            None => {
                log::info!(
                    "{}: the partial file differs from the sender's; starting over",
                    Escaped(&header.name)
                );
                record.received = 0;
                rustix::fs::ftruncate(&temp.file, 0)
                    .map_err(io::Error::from)
                    .and_then(|()| prepare(&temp.file, header))
                    .map_err(|e| self.local("emptying the partial file", e))?;
                Decision::Restart
            }
        };
        tell(
            stream,
            &decision.encode(),
            "deciding to resume",
            held,
            header.size,
        )?;
        Ok(matches.unwrap_or_else(Prefix::empty))
    }
}
