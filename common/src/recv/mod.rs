//! The receiving side, one room per step of a connection:
//!
//! - `mod.rs` (here): the listening receiver, its accept loop, and the dispatch of each
//!   connection: handshake, then one of a single file, a tree or a chain;
//! - `handshake`: the hello, authentication, claims on names and the refusals;
//! - `file`: a single file spliced into a hidden temporary file while a thread hashes it back;
//!   `payload`: the bytes and records as they cross, into a sink; `stdout`: `--stdout`;
//! - `partial`: the partial files an interrupted transfer keeps, the resume agreement that
//!   takes one up, and the sweep of stale ones;
//! - `land`: the trailer checked, the file made durable and published, the verdict sent;
//! - `tree`: many files (the answer phase, then the receive phase, landing in batches);
//! - `chain`: forwarding along a chain; `stop`: stopping on a signal;
//! - `config`, `outcome`: what the receiver is told, and what it reports per connection.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::{Mode, OFlags};
use socket2::{Domain, Protocol, Socket, Type};

use crate::error::RecvError;
use crate::watch::peer_gone as gone;
use crate::watch::Stop;
use crate::wire::{encode_hops, ProtocolError, RefuseCode, Reply, KEEPALIVE};
use handshake::{accept, refuse, refused};

mod chain;
mod config;
mod file;
mod handshake;
mod land;
mod outcome;
pub(crate) mod partial;
mod payload;
mod slots;
mod stdout;
mod stop;
mod tree;
mod update;

pub use config::{parse_listen_addr, parse_network, ReceiverConfig};
pub use outcome::TransferRecord;
pub use partial::sweep::{parse_age, sweep_interval, Age, Swept};
pub use partial::{kept_partials, remove_partial, KeptPartial};
pub use tree::TreeCounts;
pub use update::UpdateCounts;

/// Pipe size asked for with F_SETPIPE_SZ (the default pipe-max-size).
const PIPE_SIZE: usize = 1 << 20;

/// Writeback and drop-behind work in windows of this many bytes (see `sys::DropBehind`).
const WRITEBACK_WINDOW: u64 = 16 << 20;
/// Connections refused as busy that may linger at once, to let the refusal reach the sender.
const MAX_LINGERING: usize = 64;

/// A listening receiver.
pub struct Receiver {
    listener: TcpListener,
    dir: OwnedFd,
    config: ReceiverConfig,
    /// The transfers served at once, and the senders waiting for a slot.
    slots: slots::Slots,
    lingering: AtomicUsize,
    /// Names being received, each with its connection (to tell whether its sender is gone).
    in_flight: Mutex<HashMap<String, TcpStream>>,
    /// Signalled whenever a name is released.
    released: Condvar,
    /// Most small files of a tree held open while they wait to land together.
    batch_files: usize,
    /// The connections being served, for [`Receiver::stop`].
    connections: stop::Connections,
    /// When it was bound: its temporary files are all younger.
    started: SystemTime,
}

impl Receiver {
    /// Opens the destination directory and binds `addr` (port 0 picks a free port).
    pub fn bind(addr: SocketAddr, config: ReceiverConfig) -> io::Result<Receiver> {
        let dir = rustix::fs::open(
            &config.dir,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        sock.set_reuse_address(true)?;
        if addr.is_ipv6() {
            let _ = sock.set_only_v6(false);
        }
        sock.bind(&addr.into())?;
        sock.listen(128)?;
        // Each small file of a tree stays open until its batch lands. A transfer holds up to
        // four batches' worth at once (one landing, one handed over, one gathering, and the
        // files made ahead), and each file may hold its directory open too: a batch may use a
        // sixteenth of the open files allowed, shared among the transfers served at once.
        let open_files = crate::sys::raise_open_files_limit();
        let per_transfer = open_files / 16 / config.max_transfers.max(1) as u64;
        let batch_files = per_transfer.clamp(16, 1024) as usize;
        Ok(Receiver {
            started: SystemTime::now(),
            connections: stop::Connections::default(),
            batch_files,
            listener: sock.into(),
            dir,
            slots: slots::Slots::new(config.max_transfers),
            config,
            lingering: AtomicUsize::new(0),
            in_flight: Mutex::new(HashMap::new()),
            released: Condvar::new(),
        })
    }

    /// Removes the hidden files (`.zrecv-*.part`, `.zrecv-*.resume`) in the receive directory
    /// and all its subdirectories that have not been modified for `max_age`: what a killed
    /// receiver left behind, and partials nobody resumed in time. Younger ones may belong to a
    /// receiver still running on the same directory, or wait to be resumed; this receiver's own
    /// temporary files, and the partials its transfers took up, are never removed. The walk
    /// stays beneath the directory and never follows a symlink. Failures are logged as warnings
    /// and counted.
    pub fn remove_stale_partials(&self, max_age: Duration) -> partial::sweep::Swept {
        partial::sweep::sweep(self.dir.as_fd(), max_age, Some(self.started))
    }

    /// Finishes or drops the updates in place that a receiver killed midway left in the
    /// receive directory (see `update::journal`). Returns how many there were.
    pub fn recover_updates(&self) -> usize {
        update::journal::recover_all(&self.dir)
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves exactly one connection and returns its outcome (an error if stopped before one
    /// came: see [`Receiver::is_stopped`]).
    pub fn serve_once(&self) -> io::Result<TransferRecord> {
        let (stream, peer) = self.listener.accept()?;
        let _registered = self.connections.register(&stream);
        Ok(self.handle(stream, peer))
    }

    /// Serves connections until [`Receiver::stop`], each on its own thread, at most
    /// `max_transfers` at once, then waits for the transfers in flight to end. `report` is
    /// called with every outcome.
    pub fn serve(&self, report: &(dyn Fn(&TransferRecord) + Sync)) -> io::Result<()> {
        std::thread::scope(|s| loop {
            let (stream, peer) = match self.listener.accept() {
                Ok(c) => c,
                Err(_) if self.connections.stopped() => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    // Out of descriptors or memory: say so and give running transfers a
                    // moment to finish before accepting again.
                    log::warn!("accepting a connection: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let slot = match (self.slots.try_take(), self.slots.queue()) {
                (Some(slot), _) => Ok(slot),
                (None, Some(waiter)) => Err(waiter),
                (None, None) => {
                    self.refuse_busy(s, stream, peer, "too many senders are waiting");
                    continue;
                }
            };
            s.spawn(move || {
                let registered = self.connections.register(&stream);
                let slot = match slot {
                    Ok(slot) => slot,
                    Err(waiter) => {
                        log::info!(
                            "{peer}: waiting for a free slot ({} transfers running)",
                            self.slots.max()
                        );
                        let deadline = Instant::now() + self.config.slot_wait;
                        // The sender is kept told that it waits (protocol, section 2).
                        let tell = || (&stream).write_all(&KEEPALIVE).is_ok();
                        let stopped = || self.connections.stopped();
                        match waiter.wait(deadline, stopped, tell) {
                            Some(slot) => slot,
                            None if self.connections.stopped() || gone(&stream) => return,
                            None => {
                                drop(registered);
                                let why = format!(
                                    "no slot came free in {} s",
                                    self.config.slot_wait.as_secs()
                                );
                                return self.refuse_busy(s, stream, peer, &why);
                            }
                        }
                    }
                };
                let record = self.handle(stream, peer);
                drop(registered);
                drop(slot);
                report(&record);
            });
        })
    }

    /// Refuses a sender as busy, saying `why`, and lets it read the refusal.
    fn refuse_busy<'s>(
        &'s self,
        s: &'s std::thread::Scope<'s, '_>,
        stream: TcpStream,
        peer: SocketAddr,
        why: &str,
    ) {
        let max = self.slots.max();
        log::warn!("{peer}: refused: busy ({max} transfers running; {why})");
        if self.lingering.fetch_add(1, Ordering::AcqRel) >= MAX_LINGERING {
            self.lingering.fetch_sub(1, Ordering::AcqRel);
            return; // dropping the stream closes it
        }
        let msg = format!("busy: the receiver is serving {max} transfers ({why}); try again later");
        s.spawn(move || {
            refuse(&stream, RefuseCode::Busy, &msg);
            self.lingering.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// Runs one transfer from hello to verdict.
    fn handle(&self, stream: TcpStream, peer: SocketAddr) -> TransferRecord {
        let start = Instant::now();
        let mut record = TransferRecord::new(peer);
        record.result = self.transfer(&stream, &mut record);
        record.elapsed = start.elapsed();
        record
    }

    /// The dispatch: the handshake (hello and token), then a tree, or a single file (forwarded
    /// on along a chain when the hello names one).
    fn transfer(&self, stream: &TcpStream, record: &mut TransferRecord) -> Result<(), RecvError> {
        let timeout = Some(self.config.timeout);
        stream
            .set_read_timeout(timeout)
            .and_then(|()| stream.set_write_timeout(timeout))
            .map_err(|e| self.local("configuring the connection", e))?;
        // The whole handshake must finish within the timeout, however slowly bytes trickle in.
        let deadline = Instant::now() + self.config.timeout;
        let header = self.hello(stream, deadline)?;
        record.name = Some(header.name.clone());
        record.size = Some(header.size);
        // Before any filesystem call.
        let integrity = self.authenticate(stream, &header, deadline)?;
        stream
            .set_read_timeout(timeout)
            .map_err(|e| self.local("configuring the connection", e))?;

        if header.tree() {
            if self.config.to_stdout {
                let msg = "this receiver writes one file to standard output, not a tree";
                return Err(refused(stream, RefuseCode::BadHeader, msg.into()));
            }
            accept(stream, &header, Reply::Accept)?;
            return self.receive_tree(stream, &header, &integrity, record);
        }
        let Some(hops) = &header.chain else {
            return self.transfer_file(stream, &header, &integrity, record, None);
        };
        let mut forward = self.open_forward(stream, &header, hops)?;
        let result = self.transfer_file(stream, &header, &integrity, record, Some(&mut forward));
        // After our own verdict: the sender reads every host's.
        record.hops = forward.finish();
        let _ = (&*stream).write_all(&encode_hops(&chain::sealed(&record.hops, &integrity)));
        result
    }

    /// What a failed wait on our own work for the sender means for the transfer.
    pub(crate) fn gave_up(
        &self,
        stop: Stop,
        during: &'static str,
        received: u64,
        expected: u64,
    ) -> RecvError {
        let error = match stop {
            Stop::Gone => io::Error::new(io::ErrorKind::ConnectionAborted, "the sender went away"),
            Stop::Silent => io::ErrorKind::TimedOut.into(),
            Stop::Malformed => {
                return ProtocolError::Malformed("a keepalive with content".into()).into()
            }
            Stop::Io(e) => e,
        };
        RecvError::Network {
            during,
            received,
            expected,
            error,
        }
    }

    /// A description of the receive directory of the transfer's own, not the one every
    /// transfer shares: a sync reports a write-back error once per open description, and a
    /// shared one would let another transfer's sync take the report meant for this one.
    pub(crate) fn transfer_dir(&self) -> io::Result<OwnedFd> {
        let again = rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::DIRECTORY
            | rustix::fs::OFlags::CLOEXEC;
        Ok(rustix::fs::openat(
            &self.dir,
            c".",
            again,
            rustix::fs::Mode::empty(),
        )?)
    }

    fn local(&self, during: &str, error: io::Error) -> RecvError {
        RecvError::Local {
            during: during.to_owned(),
            dir: self.config.dir.clone(),
            error,
        }
    }
}
