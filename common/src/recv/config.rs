//! How a receiver is set up: its configuration, and parsing the addresses and networks zrecv's
//! options name.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::Token;

/// How the receiver behaves.
#[derive(Clone, Debug)]
pub struct ReceiverConfig {
    /// Where files land.
    pub dir: PathBuf,
    /// Replace existing files.
    pub force: bool,
    /// Longest wait for the peer at any step; a stalled transfer is dropped after it.
    pub timeout: Duration,
    /// Most transfers served at once; the next senders wait for a slot.
    pub max_transfers: usize,
    /// Longest a sender waits for a slot before it is refused as busy.
    pub slot_wait: Duration,
    /// Deliver payloads to standard output instead of files (one transfer at a time).
    pub to_stdout: bool,
    /// Shared secret; with one, every sender must prove it holds it before anything else.
    pub token: Option<Token>,
    /// Networks this receiver may forward a chain to; empty: it never forwards.
    pub allow_forward: Vec<ipnet::IpNet>,
    /// Make every symbolic link of a tree as sent (absolute, dangling, leading out of the
    /// tree), even from a sender without a token (`--trust-links`). A sender that proved the
    /// token is trusted so without it.
    pub trust_links: bool,
    /// Keep owners, setuid and setgid bits, privileged attributes and device files from a
    /// sender that proved the token, when running as root (`--preserve-privileged`).
    pub preserve_privileged: bool,
    /// Hash every file a tree's sender checks, rather than take the root remembered for a file
    /// unchanged since it landed or was hashed here (`--rehash`).
    pub rehash: bool,
}

/// Parses zrecv's `--listen` value: `IP:PORT`, `[V6]:PORT`, a bare IP (default port) or a bare
/// port (all IPv4 addresses).
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, crate::client::DEFAULT_PORT));
    }
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    Err(format!("{s:?} is not IP:PORT, an IP or a port"))
}

/// Parses one network of zrecv's `--allow-forward`: `CIDR` (`10.0.0.0/8`, `fd00::/8`) or a bare
/// address (that host alone).
pub fn parse_network(s: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        return Ok(net);
    }
    s.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| format!("{s:?} is not a network (CIDR such as 10.0.0.0/8) or an address"))
}
