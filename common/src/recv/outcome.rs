//! The outcome of one connection, for zrecv's log line and `--json`.

use std::net::SocketAddr;
use std::time::Duration;

use super::tree::TreeCounts;
use super::update::UpdateCounts;
use crate::error::RecvError;
use crate::exit::ExitStatus;
use crate::stages::StageTimes;
use crate::wire::HopReport;

/// The outcome of one connection, for the log line and `--json`.
#[derive(Debug)]
pub struct TransferRecord {
    /// The sender's address.
    pub peer: SocketAddr,
    /// The announced name, if a header was read.
    pub name: Option<String>,
    /// The announced size, if a header was read.
    pub size: Option<u64>,
    /// Bytes of the file now held, from its start (a resumed prefix included).
    pub received: u64,
    /// Bytes kept from an interrupted transfer that this one resumed from (0: none).
    pub resumed_from: u64,
    /// From accept to verdict.
    pub elapsed: Duration,
    /// Our tree root of what we wrote, if hashed.
    pub root: Option<[u8; 32]>,
    /// Whether both digests were computed and matched.
    pub verified: bool,
    /// Whether the payload went through splice (false: the read/write fallback).
    pub zero_copy: bool,
    /// CPU of each stage, and the fsync wall time.
    pub stages: StageTimes,
    /// For a tree: what happened to its entries.
    pub tree: Option<TreeCounts>,
    /// For a chain: the verdicts of the hosts after this one.
    pub hops: Vec<HopReport>,
    /// When only the pieces that differed came: how many.
    pub update: Option<UpdateCounts>,
    /// Pieces taken again in repair rounds.
    pub repaired: u64,
    /// Landed, or why not.
    pub result: Result<(), RecvError>,
}

impl TransferRecord {
    /// A record of nothing yet from `peer`.
    pub fn new(peer: SocketAddr) -> TransferRecord {
        TransferRecord {
            peer,
            name: None,
            size: None,
            received: 0,
            resumed_from: 0,
            elapsed: Duration::ZERO,
            root: None,
            verified: false,
            zero_copy: true,
            stages: StageTimes::default(),
            tree: None,
            hops: Vec::new(),
            update: None,
            repaired: 0,
            result: Ok(()),
        }
    }

    /// How `zrecv --once` ends after this transfer: its error's status, or
    /// [`ExitStatus::Partial`] for a tree some of whose entries did not land or lost metadata
    /// they were sent with (as zsend ends).
    pub fn exit_status(&self) -> ExitStatus {
        match (&self.result, &self.tree) {
            (Err(e), _) => e.exit_status(),
            (Ok(()), Some(t)) if t.failed > 0 || t.unkept > 0 => ExitStatus::Partial,
            (Ok(()), _) => ExitStatus::Success,
        }
    }
}
