//! A multi-host test bed on one machine: network namespaces joined by veth pairs on a bridge
//! (in a namespace of its own), each host's link shaped with tc tbf. Removed on drop.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The hosts of a test bed, each a network namespace with one address on a shared bridge.
pub struct TestBed {
    tag: String,
    /// Namespace names, one per host.
    pub hosts: Vec<String>,
    /// Each host's address, in the same order.
    pub addrs: Vec<String>,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

impl TestBed {
    /// `n` hosts on 10.77.X.0/24 with links shaped to `rate` (a tc rate such as `1gbit`).
    /// `Err` with the reason where namespaces cannot be made (no root, no iproute2).
    pub fn new(n: usize, rate: &str) -> Result<TestBed, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("z{}{k}", std::process::id() % 100_000);
        let subnet = (std::process::id() % 200 + k * 7) % 250 + 1;
        let mut bed = TestBed {
            tag: tag.clone(),
            hosts: Vec::new(),
            addrs: Vec::new(),
        };
        let br = format!("{tag}-br");
        run(&["ip", "netns", "add", &br])?;
        run(&["ip", "-n", &br, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &br, "link", "set", "br0", "up"])?;
        for i in 0..n {
            let ns = format!("{tag}-h{i}");
            run(&["ip", "netns", "add", &ns])?;
            bed.hosts.push(ns.clone());
            let veth = format!("v{tag}{i}");
            run(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            run(&["ip", "link", "set", &veth, "netns", &br])?;
            run(&["ip", "-n", &br, "link", "set", &veth, "master", "br0", "up"])?;
            let addr = format!("10.77.{subnet}.{}", i + 1);
            run(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            run(&[
                "ip", "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf",
                "rate", rate, "burst", "1mb", "latency", "50ms",
            ])?;
            bed.addrs.push(addr);
        }
        Ok(bed)
    }

    /// The command prefix that runs a program in host `i`.
    pub fn exec(&self, i: usize) -> Vec<String> {
        ["ip", "netns", "exec", &self.hosts[i]]
            .map(String::from)
            .to_vec()
    }

    /// The subnet, for zrecv --allow-forward.
    pub fn network(&self) -> String {
        let (prefix, _) = self.addrs[0].rsplit_once('.').unwrap();
        format!("{prefix}.0/24")
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        // Deleting a namespace removes its end of each veth pair, and with it the other end.
        for ns in &self.hosts {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        let _ = run(&["ip", "netns", "del", &format!("{}-br", self.tag)]);
    }
}
