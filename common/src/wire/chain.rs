//! Section 7 of docs/PROTOCOL.md: the hosts a chain names in the hello, and the per-host reports
//! that come back after the verdict.

use std::io::Read;

use super::codec::{clip, read_exact, read_message, Cursor};
use super::error::ProtocolError;
use super::limits::{MAX_HOPS, MAX_HOP_LEN};
use super::trailer::Verdict;

/// First bytes of the per-host reports that follow a chained transfer's verdict.
pub const HOPS_MAGIC: [u8; 4] = *b"ZHOP";

/// Reads a chain's hosts: a count of 1 to [`MAX_HOPS`], then each as a u16 length and UTF-8.
pub(super) fn read_chain(r: &mut Cursor) -> Result<Vec<String>, ProtocolError> {
    let count = r.array::<1>()?[0] as usize;
    if count == 0 || count > MAX_HOPS {
        return Err(ProtocolError::Malformed(format!(
            "a chain of {count} hosts (1 to {MAX_HOPS})"
        )));
    }
    let mut hops = Vec::with_capacity(count);
    for _ in 0..count {
        let len = r.u16()? as usize;
        if len == 0 || len > MAX_HOP_LEN {
            return Err(ProtocolError::Malformed(format!("a host of {len} bytes")));
        }
        let hop = std::str::from_utf8(r.take(len)?)
            .map_err(|_| ProtocolError::Malformed("a host that is not UTF-8".into()))?;
        check_hop(hop).map_err(ProtocolError::Malformed)?;
        hops.push(hop.to_owned());
    }
    Ok(hops)
}

/// Checks the hosts a chain may name after the first receiver: 1 to [`MAX_HOPS`] of them, each
/// 1 to [`MAX_HOP_LEN`] bytes without control characters. Senders check before connecting, so
/// that nothing they send could be cut or wrapped.
pub fn check_chain(hops: &[String]) -> Result<(), String> {
    if hops.len() > MAX_HOPS {
        return Err(format!(
            "a chain reaches at most {} hosts (the first and {MAX_HOPS} after it); {} were given",
            MAX_HOPS + 1,
            hops.len() + 1
        ));
    }
    hops.iter().try_for_each(|h| check_hop(h))
}

fn check_hop(hop: &str) -> Result<(), String> {
    if hop.is_empty() || hop.len() > MAX_HOP_LEN {
        return Err(format!(
            "a host of {} bytes (1 to {MAX_HOP_LEN})",
            hop.len()
        ));
    }
    if hop.chars().any(char::is_control) {
        return Err(format!(
            "the host {} has a control character",
            crate::name::Escaped(hop)
        ));
    }
    Ok(())
}

/// What became of the file on one host of a chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HopReport {
    /// The host as the chain named it.
    pub host: String,
    /// Its verdict; `Failed` with a reason when it was not reached or did not report.
    pub verdict: Verdict,
}

impl HopReport {
    /// The report of a host that did not land the file, for `why`.
    pub fn failed(host: &str, why: &str) -> HopReport {
        HopReport {
            host: host.to_owned(),
            verdict: Verdict::failed(why),
        }
    }
}

/// Encodes the reports of the hosts after this one, in chain order.
pub fn encode_hops(hops: &[HopReport]) -> Vec<u8> {
    debug_assert!(
        hops.len() <= MAX_HOPS,
        "a chain is checked before it starts"
    );
    let mut out = HOPS_MAGIC.to_vec();
    out.push(hops.len().min(MAX_HOPS) as u8);
    for h in hops.iter().take(MAX_HOPS) {
        let host = clip(&h.host);
        out.extend_from_slice(&(host.len() as u16).to_be_bytes());
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(&h.verdict.encode());
    }
    out
}

/// Reads the reports of a chain's further hosts: at most [`MAX_HOPS`].
pub fn read_hops(r: &mut impl Read) -> Result<Vec<HopReport>, ProtocolError> {
    let mut head = [0u8; 5];
    read_exact(r, &mut head, "chain reports")?;
    if head[..4] != HOPS_MAGIC {
        return Err(ProtocolError::Malformed(
            "chain reports magic missing".into(),
        ));
    }
    let count = head[4] as usize;
    if count > MAX_HOPS {
        return Err(ProtocolError::Malformed(format!("{count} chain reports")));
    }
    let mut hops = Vec::with_capacity(count);
    for _ in 0..count {
        let mut len = [0u8; 2];
        read_exact(r, &mut len, "chain report")?;
        let host = read_message(r, u16::from_be_bytes(len), "chain report")?;
        hops.push(HopReport {
            host,
            verdict: Verdict::read(r)?,
        });
    }
    Ok(hops)
}

/// Matches the reports a chain sent back with the hosts that were asked for, in order: host
/// `k` gets report `k` only if that report names it. A host without its report (fewer came
/// back, or another name stands in its place) gets a failure; reports beyond the hosts asked
/// for are dropped. Returns the reports, one per host asked for, and how many did not match.
pub fn align_hops(asked: &[String], got: Vec<HopReport>) -> (Vec<HopReport>, usize) {
    let mut got = got.into_iter();
    let mut unmatched = 0;
    let aligned = asked
        .iter()
        .map(|host| match got.next() {
            Some(r) if r.host == *host => r,
            Some(r) => {
                unmatched += 1;
                let why = format!(
                    "did not report (the chain reported {} in its place)",
                    crate::name::Escaped(&r.host)
                );
                HopReport::failed(host, &why)
            }
            None => {
                unmatched += 1;
                HopReport::failed(host, "did not report (the chain's reports end before it)")
            }
        })
        .collect();
    (aligned, unmatched + got.count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Status;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn aligned_reports_name_exactly_the_hosts_asked_for(
            asked in proptest::collection::vec("[a-c]:[1-3]", 0..5),
            got in proptest::collection::vec("[a-c]:[1-3]", 0..8),
        ) {
            let reports: Vec<HopReport> = got
                .iter()
                .map(|h| HopReport { host: h.clone(), verdict: Verdict { status: Status::Landed, root: Some([1; 32]), seal: [0; 32], message: String::new() } })
                .collect();
            let (aligned, unmatched) = align_hops(&asked, reports);
            prop_assert_eq!(aligned.len(), asked.len());
            for (k, (r, host)) in aligned.iter().zip(&asked).enumerate() {
                prop_assert_eq!(&r.host, host);
                let reported = got.get(k) == Some(host);
                prop_assert_eq!(r.verdict.status == Status::Landed, reported);
            }
            let matched = aligned.iter().filter(|r| r.verdict.status == Status::Landed).count();
            prop_assert_eq!(unmatched, asked.len() - matched + got.len().saturating_sub(asked.len()));
        }
    }

    #[test]
    fn a_chain_longer_than_the_limit_is_refused_before_anything_is_sent() {
        let hops: Vec<String> = (0..MAX_HOPS).map(|i| format!("10.0.0.{i}:7350")).collect();
        assert!(check_chain(&hops).is_ok());
        let mut too_many = hops.clone();
        too_many.push("10.0.0.99:7350".into());
        let err = check_chain(&too_many).unwrap_err();
        assert!(err.contains("at most 17 hosts"), "{err}");
        assert!(check_chain(&["h\u{1b}[2J:1".to_owned()]).is_err());
        assert!(check_chain(&["x".repeat(256)]).is_err());
        assert!(check_chain(&[String::new()]).is_err());
    }

    #[test]
    fn reports_beyond_the_limit_are_refused() {
        let mut wire = HOPS_MAGIC.to_vec();
        wire.push(MAX_HOPS as u8 + 1);
        assert!(matches!(
            read_hops(&mut &wire[..]),
            Err(ProtocolError::Malformed(_))
        ));
    }
}
