//! Forwarding along a chain (`FLAG_CHAIN`): before accepting, connect to the next host and hand
//! it the rest of the chain; while receiving, tee every byte to it as it is spliced into our
//! file; pass the trailer on; and after our own verdict, collect the verdicts of the hosts after
//! us for the sender.

use std::fs::File;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};

use super::handshake::refused;
use super::payload::Sink;
use super::{Receiver, PIPE_SIZE};
use crate::auth::{Integrity, Seal};
use crate::client::{handshake, resolve};
use crate::error::RecvError;
use crate::hash::Watermark;
use crate::name::Escaped;
use crate::sys::{CopyError, Onward, Pipe, SpliceStats, SpliceTo};
use crate::watch;
use crate::wire::{
    align_hops, read_hops, Header, HopReport, RefuseCode, Status, Trailer, Verdict, KEEPALIVE,
};

/// The hosts after this one, and the connection to the next while it works.
pub(crate) struct Forward {
    /// The hosts after this one, next first.
    hops: Vec<String>,
    next: Option<(TcpStream, Pipe)>,
    /// The key sealing the digests on our connection to the next host.
    integrity: Integrity,
    /// Why the next host was lost, if it was.
    lost: Option<String>,
    /// Whether the whole payload and the trailer went on.
    complete: bool,
    /// The sender's digest, as passed on: a host that lands the file lands it with this one.
    root: Option<[u8; 32]>,
}

impl Receiver {
    /// For a hello naming further hosts: refuses unless this receiver may forward to the next
    /// one (`--allow-forward`), then connects to it and hands it the rest of the chain. A next
    /// host that cannot be reached is not a refusal: this host still takes its copy, and the
    /// sender hears which hosts failed.
    pub(super) fn open_forward(
        &self,
        stream: &TcpStream,
        header: &Header,
        hops: &[String],
    ) -> Result<Forward, RecvError> {
        let refuse = |msg: String| Err(refused(stream, RefuseCode::Forward, msg));
        if self.config.to_stdout {
            return refuse("this receiver writes to standard output and does not forward".into());
        }
        if self.config.allow_forward.is_empty() {
            return refuse(
                "this receiver does not forward; start it with --allow-forward CIDR".into(),
            );
        }
        let host = &hops[0];
        let mut forward = Forward {
            hops: hops.to_vec(),
            next: None,
            integrity: Integrity::none(),
            lost: None,
            complete: false,
            root: None,
        };
        // The sender waits for our reply meanwhile: it hears that we are still here (reaching
        // the next host may take our timeout, or longer while that host makes us wait).
        let nothing = Watermark::complete(u64::MAX);
        let tell = &mut || (&*stream).write_all(&KEEPALIVE);
        let (reached, _) = watch::telling(&nothing, || self.reach(host, header, hops), tell);
        match reached {
            Reach::Reached(next, integrity) => {
                let pipe = Pipe::new(PIPE_SIZE).map_err(|e| self.local("creating a pipe", e))?;
                forward.integrity = integrity;
                forward.next = Some((next, pipe));
            }
            Reach::Lost(why) => forward.lose(why),
            Reach::Forbidden => {
                return refuse(format!(
                    "forwarding to {} is not allowed here (see zrecv --allow-forward)",
                    Escaped(host)
                ))
            }
            Reach::Failed(e) => return Err(e),
        }
        Ok(forward)
    }

    /// Resolves, connects to and greets the next host, `hops[0]`, handing it the rest of the
    /// chain.
    fn reach(&self, host: &str, header: &Header, hops: &[String]) -> Reach {
        let addrs = match resolve(host) {
            Ok(a) => a,
            Err(e) => return Reach::Lost(e.to_string()),
        };
        let allowed: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| {
                self.config
                    .allow_forward
                    .iter()
                    .any(|n| n.contains(&a.ip()))
            })
            .collect();
        if allowed.is_empty() {
            return Reach::Forbidden;
        }
        // A chain back to this very receiver would take one of its slots per hop, for as long
        // as the hops wait for slots, on one hello of a sender that may already be gone.
        if self.is_self(&allowed[0]) {
            return Reach::Lost("that is this receiver itself".into());
        }
        let next = match TcpStream::connect_timeout(&allowed[0], self.config.timeout) {
            Ok(s) => s,
            Err(e) => return Reach::Lost(format!("unreachable: {}", crate::units::os_reason(&e))),
        };
        let _ = next.set_read_timeout(Some(self.config.timeout));
        let _ = next.set_write_timeout(Some(self.config.timeout));
        let onward = Header {
            chain: (hops.len() > 1).then(|| hops[1..].to_vec()),
            auth_nonce: match &self.config.token {
                Some(_) => match crate::auth::nonce() {
                    Ok(nonce) => Some(nonce),
                    Err(e) => return Reach::Failed(self.local("drawing a nonce", e)),
                },
                None => None,
            },
            ..header.clone()
        };
        match handshake(&next, &onward, self.config.token.as_ref()) {
            Ok(accepted) => Reach::Reached(next, accepted.integrity),
            Err(e) => Reach::Lost(e.to_string()),
        }
    }

    /// Whether `next` is this receiver: its listening port on its listening address, or on any
    /// address of this machine (of the listener's family, for one listening on IPv4) when it
    /// listens on all of them.
    fn is_self(&self, next: &SocketAddr) -> bool {
        let Ok(ours) = self.listener.local_addr() else {
            return false;
        };
        let same_family = ours.is_ipv6() || next.is_ipv4();
        next.port() == ours.port()
            && match ours.ip().is_unspecified() {
                true => same_family && is_local(next.ip()),
                false => next.ip() == ours.ip(),
            }
    }
}

/// Whether `ip` is an address of this machine: a loopback one, or one that the kernel routes
/// to itself (a datagram socket connected to it takes it as its own address). Binding to it
/// would not tell: with `ip_nonlocal_bind` any address binds.
fn is_local(ip: std::net::IpAddr) -> bool {
    if ip.is_loopback() {
        return true;
    }
    let any = match ip {
        std::net::IpAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        std::net::IpAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    };
    std::net::UdpSocket::bind(any)
        .and_then(|s| {
            s.connect(SocketAddr::new(ip, 9))
                .and_then(|()| s.local_addr())
        })
        .is_ok_and(|own| own.ip() == ip)
}

/// How reaching the next host went.
enum Reach {
    /// Greeted and accepted: the connection and its key.
    Reached(TcpStream, Integrity),
    /// Not resolved, not reached, or refused, for this reason: we still take our copy.
    Lost(String),
    /// None of its addresses is in `--allow-forward`: the transfer is refused.
    Forbidden,
    /// A failure of our own.
    Failed(RecvError),
}

impl Forward {
    /// Stops forwarding: the next host is lost, for `why`.
    fn lose(&mut self, why: String) {
        log::warn!("forwarding to {}: {why}", Escaped(&self.hops[0]));
        if let Some((next, _)) = self.next.take() {
            let _ = next.shutdown(std::net::Shutdown::Both);
        }
        self.lost.get_or_insert(why);
    }

    /// Passes the trailer on, the sender's digest sealed with our key for the next host, which
    /// completes what it needs.
    pub(super) fn pass_trailer(&mut self, root: Option<[u8; 32]>) {
        let trailer = Trailer::sealed(root, &self.integrity, 0);
        self.root = root;
        self.send_on(&trailer.encode(), "sending the trailer");
        if self.next.is_some() {
            self.complete = true;
        }
    }

    /// Tells the next host to discard what it got: the sender abandoned the file, or its
    /// trailer could not be trusted.
    pub(super) fn pass_abandoned(&mut self) {
        self.send_on(&Trailer::abandoned(), "abandoning the file");
    }

    /// Passes a sender's keepalive on: the next host is hashing too, and waits for word.
    pub(super) fn keepalive(&mut self) {
        self.send_on(&KEEPALIVE, "passing a keepalive on");
    }

    fn send_on(&mut self, bytes: &[u8], during: &str) {
        let Some((next, _)) = &self.next else { return };
        if let Err(e) = (&*next).write_all(bytes) {
            self.lose(format!("{during}: {e}"));
        }
    }

    /// The verdict of every host after this one, one per host asked for, in order: read from
    /// the next host when it got everything (its own verdict, then those it collected, each
    /// checked against our key with it), or the reason it did not.
    pub(super) fn finish(mut self) -> Vec<HopReport> {
        let reached = self.next.take().filter(|_| self.complete);
        let first = self.hops[0].clone();
        let Some((next, _)) = reached else {
            let why = self
                .lost
                .clone()
                .unwrap_or_else(|| "the transfer stopped before the end".into());
            return after_failure(&self.hops, &why);
        };
        let verdict = match Verdict::read(&mut &next) {
            Ok(v) => v,
            Err(e) => return after_failure(&self.hops, &format!("did not report: {e}")),
        };
        let mut reports = vec![HopReport {
            host: first.clone(),
            verdict: verdict.opened(&self.integrity, Seal::Verdict, 0),
        }];
        // The last host of a chain sends no reports of its own.
        let reports_after = match self.hops.len() {
            1 => Ok(Vec::new()),
            _ => read_hops(&mut &next),
        };
        let rest = match reports_after {
            Ok(rest) => rest
                .into_iter()
                .enumerate()
                .map(|(k, r)| HopReport {
                    verdict: r.verdict.opened(&self.integrity, Seal::Hop, k as u32),
                    host: r.host,
                })
                .collect(),
            Err(e) => {
                log::warn!("{}: its reports: {e}", Escaped(&first));
                Vec::new()
            }
        };
        let (rest, unmatched) = align_hops(&self.hops[1..], rest);
        if unmatched > 0 {
            log::warn!(
                "{}: its reports did not name the hosts after it as asked",
                Escaped(&first)
            );
        }
        reports.extend(rest);
        // "Landed" with another digest, or none, is not the sender's file landed, and is not
        // logged or passed on as if it were.
        for r in &mut reports {
            if r.verdict.status == Status::Landed && r.verdict.root != self.root {
                let theirs = r.verdict.root.map_or("no checksum".into(), hex::encode);
                let why = format!("landed with another checksum ({theirs})");
                r.verdict = Verdict::failed(&why);
            }
        }
        reports
    }
}

/// The reports when the next host failed for `why`: it, and every host after it.
fn after_failure(hops: &[String], why: &str) -> Vec<HopReport> {
    let mut reports = vec![HopReport::failed(&hops[0], why)];
    let later = format!("not landed: {} failed before it", hops[0]);
    reports.extend(hops[1..].iter().map(|h| HopReport::failed(h, &later)));
    reports
}

/// The reports of the hosts after this one as this host sends them to the host before it:
/// each digest sealed with our key with that host, at its position.
pub(super) fn sealed(reports: &[HopReport], integrity: &Integrity) -> Vec<HopReport> {
    reports
        .iter()
        .enumerate()
        .map(|(k, r)| HopReport {
            host: r.host.clone(),
            verdict: r.verdict.clone().sealed(integrity, Seal::Hop, k as u32),
        })
        .collect()
}

/// Into the temporary file and on to the next host: socket -> pipe, tee to the onward pipe,
/// splice to the file and to the next host.
pub(super) struct ForwardSink<'a> {
    pub(super) pipe: &'a Pipe,
    pub(super) file: &'a File,
    pub(super) stats: &'a mut SpliceStats,
    pub(super) forward: &'a mut Forward,
}

impl Sink for ForwardSink<'_> {
    fn data(
        &mut self,
        stream: &TcpStream,
        offset: u64,
        len: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, CopyError> {
        let onward = self.forward.next.as_ref().map(|(sock, pipe)| Onward {
            sock,
            pipe,
            failed: None,
        });
        let mut to = SpliceTo {
            pipe: self.pipe,
            file: self.file,
            stats: self.stats,
            onward,
        };
        let moved = to.take_from(stream, offset, len, progress);
        if let Some(e) = to.onward.and_then(|o| o.failed) {
            let why = format!("connection lost: {}", crate::units::os_reason(&e));
            self.forward.lose(why);
        }
        moved
    }

    fn hole(&mut self, _: &TcpStream, _offset: u64, _len: u64) -> Result<(), CopyError> {
        // A chain's payload is dense: the header decoder refuses SPARSE with CHAIN.
        Err(CopyError::Write(std::io::Error::other(
            "a hole in a chained payload",
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loopback addresses are this machine's, and so is the address it sends from; a
    /// documentation address (RFC 5737) is not, whether or not there is a route to it.
    #[test]
    fn local_addresses_are_told_from_others() {
        assert!(is_local("127.0.0.1".parse().unwrap()));
        assert!(is_local("127.0.0.2".parse().unwrap()));
        assert!(is_local("::1".parse().unwrap()));
        let far: std::net::IpAddr = "203.0.113.7".parse().unwrap();
        assert!(!is_local(far));
        let from = std::net::UdpSocket::bind("0.0.0.0:0")
            .and_then(|s| s.connect((far, 9)).and_then(|()| s.local_addr()));
        if let Ok(own) = from {
            assert!(is_local(own.ip()), "{own}");
        }
    }
}
