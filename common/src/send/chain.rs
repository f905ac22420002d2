//! A chain: the receiver forwards the file host to host, and each host's verdict comes back to
//! the sender, sealed with its key.

use std::net::TcpStream;

use super::SendReport;
use crate::auth::{Integrity, Seal};
use crate::wire::{align_hops, read_hops, HopReport, Status, Verdict};

/// Whether a host of a chain landed the file with our digest.
pub fn hop_landed(hop: &HopReport, digest: Option<[u8; 32]>) -> bool {
    hop.verdict.status == Status::Landed && hop.verdict.root == digest
}

/// Every host's verdict: the first receiver's, then those it collected down the chain, each
/// digest sealed by it with our key. Fills the report's hosts; the file is verified only if
/// every host landed it with our digest.
pub(super) fn read_hosts(
    mut stream: &TcpStream,
    chain: &[String],
    verdict: Verdict,
    digest: Option<[u8; 32]>,
    integrity: &Integrity,
    report: &mut SendReport,
) {
    let rest = read_hops(&mut stream)
        .map(|hops| {
            hops.into_iter()
                .enumerate()
                .map(|(k, mut h)| {
                    h.verdict = h.verdict.opened(integrity, Seal::Hop, k as u32);
                    h
                })
                .collect()
        })
        .unwrap_or_else(|e| {
            log::warn!("reading the chain's reports: {e}");
            Vec::new()
        });
    let (rest, unmatched) = align_hops(chain, rest);
    if unmatched > 0 {
        log::warn!(
            "the chain's reports do not name the hosts asked for: {unmatched} did not match"
        );
    }
    report.root = digest;
    report.hosts = std::iter::once(HopReport {
        host: report.peer.to_string(),
        verdict: verdict.opened(integrity, Seal::Verdict, 0),
    })
    .chain(rest)
    .collect();
    report.verified = digest.is_some() && report.hosts.iter().all(|h| hop_landed(h, digest));
}
