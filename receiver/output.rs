//! What zrecv shows of its work: a log line per transfer (and per host it forwarded to), a
//! JSON line per transfer with `--json`, and what a sweep of stale partials removed.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use zcommon::{Age, Bytes, Escaped, Status, Swept, TransferRecord};

use crate::cli::Cli;
use crate::shared::{self, JSON_VERSION};

/// Says what a sweep of stale partials removed (failures were logged as they happened).
pub fn log_swept(swept: &Swept, max_age: Duration, dir: &Path) {
    if !swept.removed.is_empty() {
        log::info!(
            "removed {} stale temporary file(s) older than {} from {}: {}",
            swept.removed.len(),
            Age(max_age),
            dir.display(),
            some_of(&swept.removed)
        );
    }
    if !swept.forgotten.is_empty() {
        log::info!(
            "removed {} file(s) of roots or piece layers whose tree or file is gone from {}: {}",
            swept.forgotten.len(),
            dir.display(),
            some_of(&swept.forgotten)
        );
    }
}

/// The first few of `paths`, escaped, and how many more.
fn some_of(paths: &[std::path::PathBuf]) -> String {
    const SHOWN: usize = 8;
    let mut names: Vec<String> = (paths.iter().take(SHOWN))
        .map(|p| Escaped(p.as_os_str().as_encoded_bytes()).to_string())
        .collect();
    if paths.len() > SHOWN {
        names.push(format!("and {} more", paths.len() - SHOWN));
    }
    names.join(", ")
}

/// One log line per transfer, and a JSON line with `--json`. `stopping`: the receiver is
/// stopping, so a transfer that broke off was interrupted by the stop.
pub fn report(cli: &Cli, r: &TransferRecord, stopping: bool) {
    log_transfer(r, stopping);
    if cli.json {
        let line = json(r);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// The log lines of a transfer: how it went, how each host it forwarded to did, and (at debug
/// level) the CPU it took.
fn log_transfer(r: &TransferRecord, stopping: bool) {
    let name = r.name.as_deref().map(Escaped);
    let what = match &name {
        Some(n) => format!("{n} from {}", r.peer),
        None => format!("connection from {}", r.peer),
    };
    match (&r.result, &r.tree) {
        (Ok(()), Some(t)) => {
            let secs = shared::seconds(r.elapsed);
            log::info!(
                "received tree {what}: {} files ({} landed, {} already here{}, {} failed), \
                 {} directories, {} links, {} hard links, {} special files{}, {} in {secs:.2} s, \
                 {}/s",
                t.files,
                t.landed,
                t.unchanged,
                match t.remembered {
                    0 => String::new(),
                    n => format!(" ({n} by the roots remembered for them)"),
                },
                t.failed,
                t.dirs,
                t.links,
                t.hard_links,
                t.specials,
                match t.unkept {
                    0 => String::new(),
                    n => format!(", {n} without their owners or privileged attributes"),
                },
                Bytes(r.received),
                shared::rate(r.received, secs)
            );
        }
        (Ok(()), None) => {
            let secs = shared::seconds(r.elapsed);
            let check = match r.root {
                Some(d) => format!("root {} verified", hex::encode(d)),
                None => "not verified (sender used --no-verify)".into(),
            };
            let moved = r.received - r.resumed_from;
            let mut resumed = match (r.resumed_from, r.update) {
                (_, Some(u)) => format!(
                    " ({} of {} pieces differed{})",
                    u.received,
                    u.pieces,
                    if u.inplace { ", updated in place" } else { "" }
                ),
                (0, None) => String::new(),
                (n, None) => format!(" (resumed after {})", Bytes(n)),
            };
            if r.repaired > 0 {
                resumed += &format!(" (repaired: {} of its pieces taken again)", r.repaired);
            }
            log::info!(
                "received {what}: {} in {secs:.2} s, {}/s{resumed}, {check}",
                Bytes(moved),
                shared::rate(moved, secs)
            );
        }
        (Err(e), _) if stopping && e.is_interruption() => {
            let of = r
                .size
                .map(|n| format!(" of {}", Bytes(n)))
                .unwrap_or_default();
            log::warn!(
                "{what}: interrupted by the stop after {}{of}",
                Bytes(r.received)
            );
        }
        (Err(e), _) => log::error!("{what}: {e:#}"),
    }
    for h in &r.hops {
        match h.verdict.status {
            Status::Landed => log::info!("forwarded to {}: landed", Escaped(&h.host)),
            _ => log::warn!(
                "forwarded to {}: not landed: {}",
                Escaped(&h.host),
                Escaped(&h.verdict.message)
            ),
        }
    }
    let st = &r.stages;
    log::debug!(
        "cpu: splice in {:.2} s, splice to file {:.2} s, tree root {:.2} s; fsync {:.2} s",
        st.network_cpu.as_secs_f64(),
        st.file_cpu.as_secs_f64(),
        st.hash_cpu.as_secs_f64(),
        st.fsync.as_secs_f64()
    );
}

/// The JSON line of a transfer (docs/JSON.md).
fn json(r: &TransferRecord) -> serde_json::Value {
    serde_json::json!({
        "version": JSON_VERSION,
        "ok": r.result.is_ok(),
        "peer": r.peer.to_string(),
        "name": r.name,
        "bytes": r.size,
        "bytes_received": r.received.saturating_sub(r.resumed_from),
        "resumed_from": r.resumed_from,
        "update": r.update.map(|u| serde_json::json!({
            "mode": if u.inplace { "inplace" } else { "atomic" },
            "pieces": u.pieces,
            "received": u.received,
        })),
        "repaired_pieces": r.repaired,
        "seconds": r.elapsed.as_secs_f64(),
        "root": r.root.map(hex::encode),
        "verified": r.verified,
        "zero_copy": r.zero_copy,
        // All but the plain SHA-256, which only a sender computes.
        "stages": shared::stages_json(&r.stages, |name| name != "sha256_cpu_s"),
        "error": r.result.as_ref().err().map(|e| Escaped(&format!("{e:#}")).to_string()),
        "forwarded": r.hops.iter().map(|h| serde_json::json!({
            "host": h.host,
            "ok": h.verdict.status == Status::Landed,
            "root": h.verdict.root.map(hex::encode),
            "error": (h.verdict.status != Status::Landed)
                .then(|| Escaped(&h.verdict.message).to_string()),
        })).collect::<Vec<_>>(),
        "tree": r.tree.as_ref().map(|t| serde_json::json!({
            "files": t.files,
            "landed": t.landed,
            "unchanged": t.unchanged,
            "remembered": t.remembered,
            "quick_checked": t.quick,
            "failed": t.failed,
            "dirs": t.dirs,
            "links": t.links,
            "hard_links": t.hard_links,
            "specials": t.specials,
            "unkept": t.unkept,
        })),
    })
}

/// The name a kept partial belongs to, escaped: it came from a sender.
pub fn shown(k: &zcommon::KeptPartial) -> String {
    Escaped(k.name.as_os_str().as_encoded_bytes()).to_string()
}

/// How much a kept partial holds: `2.1 GiB of 4.0 GiB`, or `? of 4.0 GiB` when its record has
/// no count (a transfer in flight, or one whose receiver was killed).
fn held(k: &zcommon::KeptPartial) -> String {
    match k.held {
        Some(h) => format!("{} of {}", Bytes(h), Bytes(k.size)),
        None if k.in_flight => format!("in flight, of {}", Bytes(k.size)),
        None => format!("? of {}", Bytes(k.size)),
    }
}

/// `--list-partials`: a line per kept partial on stdout (a JSON line each with `--json`).
pub fn list_partials(kept: &[zcommon::KeptPartial], json: bool) {
    let mut out = std::io::stdout().lock();
    if json {
        for k in kept {
            let line = serde_json::json!({
                "version": JSON_VERSION,
                "name": k.name.to_string_lossy(),
                "size": k.size,
                "held": k.held,
                "on_disk": k.on_disk,
                "age_s": k.age.as_secs(),
                "in_flight": k.in_flight,
            });
            let _ = writeln!(out, "{line}");
        }
        return;
    }
    if kept.is_empty() {
        eprintln!("zrecv: no partials kept");
        return;
    }
    let width = kept
        .iter()
        .map(|k| shown(k).chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        out,
        "{:<width$}  {:>24}  {:>10}  {:>6}",
        "NAME", "HELD", "ON DISK", "AGE"
    );
    for k in kept {
        let _ = writeln!(
            out,
            "{:<width$}  {:>24}  {:>10}  {:>6}",
            shown(k),
            held(k),
            Bytes(k.on_disk).to_string(),
            zcommon::Age(k.age).to_string()
        );
    }
    if kept.iter().any(|k| k.held.is_none()) {
        eprintln!(
            "zrecv: ? : a transfer in flight, or one whose receiver was killed (the next attempt \
             takes up what the file holds)"
        );
    }
}

/// `--remove-partials` removed one.
pub fn partial_removed(k: &zcommon::KeptPartial) {
    log::info!("removed the partial of {} ({})", shown(k), held(k));
}

/// `--remove-partials` left one that a running transfer holds.
pub fn partial_left(k: &zcommon::KeptPartial) {
    log::warn!(
        "left the partial of {}: a transfer in flight holds it",
        shown(k)
    );
}
