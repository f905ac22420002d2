//! The benchmark report: a Markdown table with ratios and targets, and an SVG bar chart.

use std::fmt::Write;

use crate::contenders::{Contender, Stages, Trial, ZSEND, ZSEND_NO_VERIFY};
use crate::measure::median;

/// What was run, for the report's header.
pub struct RunInfo {
    pub command: String,
    pub size: u64,
    pub runs: usize,
    pub sha_alone: f64,
    pub sha_both: f64,
}

const GIB: f64 = (1u64 << 30) as f64;

struct Row {
    c: Contender,
    wall: f64,
    cpu: f64,
    send_rss: u64,
    recv_rss: u64,
    stages: Option<Stages>,
}

fn rows(results: &[(Contender, Vec<Trial>)]) -> Vec<Row> {
    results
        .iter()
        .filter(|(_, t)| !t.is_empty())
        .map(|(c, trials)| {
            let col = |f: &dyn Fn(&Trial) -> f64| median(&trials.iter().map(f).collect::<Vec<_>>());
            let stages = trials[0].stages.map(|_| {
                let st =
                    |f: &dyn Fn(&Stages) -> f64| col(&|t: &Trial| t.stages.map_or(0.0, |s| f(&s)));
                Stages {
                    sendfile: st(&|s| s.sendfile),
                    send_hash: st(&|s| s.send_hash),
                    splice_in: st(&|s| s.splice_in),
                    splice_file: st(&|s| s.splice_file),
                    recv_hash: st(&|s| s.recv_hash),
                    fsync: st(&|s| s.fsync),
                }
            });
            Row {
                c: c.clone(),
                wall: col(&|t| t.wall),
                cpu: col(&|t| t.send.cpu + t.recv.cpu),
                send_rss: trials.iter().map(|t| t.send.rss_kib).max().unwrap_or(0),
                recv_rss: trials.iter().map(|t| t.recv.rss_kib).max().unwrap_or(0),
                stages,
            }
        })
        .collect()
}

fn find<'a>(rows: &'a [Row], c: &Contender) -> Option<&'a Row> {
    rows.iter().find(|r| &r.c == c)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? / b?)
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or("n/a".into(), |r| format!("{r:.2}x"))
}

/// The Markdown report.
pub fn markdown(
    info: &RunInfo,
    results: &[(Contender, Vec<Trial>)],
    scaling: &[(u64, Vec<Trial>)],
) -> String {
    let rows = rows(results);
    let gib = info.size as f64 / GIB;
    let wall = |c: &Contender| find(&rows, c).map(|r| r.wall);
    let nc = wall(&Contender::Nc);
    let bare = wall(&Contender::Bare);
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmark results\n");
    let _ = writeln!(
        md,
        "Measured with `{}`: a {:.2} GiB file of random data, in the page cache, moved over \
         loopback TCP into a file on the same ext4 disk and made durable (fsync or `sync FILE`) \
         by every contender. One warm-up round, then {} rounds with the contenders' order \
         rotated each round. Medians; CPU is user+sys of sender and receiver (GNU time, \
         children included); RSS is the peak over all rounds. Machine: {}.\n",
        info.command,
        gib,
        info.runs,
        machine()
    );
    let _ = writeln!(
        md,
        "| contender | median wall (s) | vs nc | vs ceiling | CPU send+recv (s) | CPU s/GiB | peak RSS send / recv (MiB) |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let _ = writeln!(
            md,
            "| {} | {:.2} | {} | {} | {:.2} | {:.2} | {} / {:.1} |",
            r.c.label(),
            r.wall,
            fmt_ratio(ratio(Some(r.wall), nc)),
            fmt_ratio(ratio(Some(r.wall), bare)),
            r.cpu,
            r.cpu / gib,
            if r.c == Contender::Cp {
                "-".to_owned()
            } else {
                format!("{:.1}", r.send_rss as f64 / 1024.0)
            },
            r.recv_rss as f64 / 1024.0
        );
    }

    let _ = writeln!(md, "\n## Targets\n");
    let _ = writeln!(md, "| target | measured | met |");
    let _ = writeln!(md, "|---|---:|:---:|");
    let mut target = |name: &str, measured: Option<f64>, limit: f64, unit: &str, at_least: bool| {
        let (text, met) = match measured {
            Some(m) => (
                format!("{m:.2}{unit}"),
                if (at_least && m >= limit) || (!at_least && m <= limit) {
                    "yes"
                } else {
                    "**no**"
                },
            ),
            None => ("n/a".into(), "n/a"),
        };
        let _ = writeln!(md, "| {name} | {text} | {met} |");
    };
    let nv = wall(&ZSEND_NO_VERIFY);
    let v = wall(&ZSEND);
    target(
        "`--no-verify` wall ≤ 1.05x bare ceiling",
        ratio(nv, bare),
        1.05,
        "x",
        false,
    );
    target(
        "`--no-verify` wall ≤ 0.75x nc",
        ratio(nv, nc),
        0.75,
        "x",
        false,
    );
    target("verified wall ≤ 1.0x nc", ratio(v, nc), 1.0, "x", false);
    target(
        "verified wall ≤ 0.5x nc + sha256",
        ratio(v, wall(&Contender::NcSha)),
        0.5,
        "x",
        false,
    );
    let cpu = |c: &Contender| find(&rows, c).map(|r| r.cpu);
    target(
        "`--no-verify` CPU per GiB ≤ 0.7x nc's",
        ratio(cpu(&ZSEND_NO_VERIFY), cpu(&Contender::Nc)),
        0.7,
        "x",
        false,
    );
    target(
        "SHA-256 ≥ 1.8 GB/s per core (one core alone)",
        Some(info.sha_alone),
        1.8,
        " GB/s",
        true,
    );
    let zsend_rss = rows
        .iter()
        .filter(|r| r.c == ZSEND || r.c == ZSEND_NO_VERIFY)
        .flat_map(|r| [r.send_rss, r.recv_rss])
        .chain(
            scaling
                .iter()
                .flat_map(|(_, ts)| ts.iter().flat_map(|t| [t.send.rss_kib, t.recv.rss_kib])),
        )
        .max()
        .map(|k| k as f64 / 1024.0);
    target(
        "peak RSS per process ≤ 16 MiB (all sizes)",
        zsend_rss,
        16.0,
        " MiB",
        false,
    );
    let per_gib: Vec<(u64, f64)> = scaling
        .iter()
        .map(|(size, ts)| {
            (
                *size,
                median(&ts.iter().map(|t| t.wall).collect::<Vec<_>>()) / (*size as f64 / GIB),
            )
        })
        .collect();
    let big: Vec<f64> = per_gib
        .iter()
        .filter(|(s, _)| *s >= 1 << 30)
        .map(|(_, p)| *p)
        .collect();
    let spread = (big.len() >= 2).then(|| {
        big.iter().cloned().fold(f64::MIN, f64::max) / big.iter().cloned().fold(f64::MAX, f64::min)
    });
    target(
        "linear: s/GiB spread across sizes ≥ 1 GiB ≤ 1.3x",
        spread,
        1.3,
        "x",
        false,
    );
    let _ = writeln!(
        md,
        "\nSHA-256 (sha2 crate): {:.2} GB/s on one core alone, {:.2} GB/s per core while both \
         cores hash at once (both ends of a loopback transfer hash on the same two cores).",
        info.sha_alone, info.sha_both
    );

    let _ = writeln!(
        md,
        "\n## CPU per stage (zsend/zrecv's own accounting, median, s/GiB)\n"
    );
    let _ = writeln!(md, "| stage | verified | --no-verify |");
    let _ = writeln!(md, "|---|---:|---:|");
    let sv = find(&rows, &ZSEND).and_then(|r| r.stages);
    let snv = find(&rows, &ZSEND_NO_VERIFY).and_then(|r| r.stages);
    type StageField = fn(&Stages) -> f64;
    let stage_rows: [(&str, StageField); 6] = [
        ("sender: sendfile", |s| s.sendfile),
        ("sender: SHA-256 (pread + hash)", |s| s.send_hash),
        ("receiver: splice socket -> pipe", |s| s.splice_in),
        ("receiver: splice pipe -> file", |s| s.splice_file),
        ("receiver: SHA-256 (pread + hash)", |s| s.recv_hash),
        ("receiver: fsync (wall, not CPU)", |s| s.fsync),
    ];
    for (name, f) in stage_rows {
        let cell = |s: Option<Stages>| s.map_or("n/a".into(), |s| format!("{:.3}", f(&s) / gib));
        let _ = writeln!(md, "| {name} | {} | {} |", cell(sv), cell(snv));
    }

    if !scaling.is_empty() {
        let _ = writeln!(md, "\n## Scaling (zsend verified)\n");
        let _ = writeln!(
            md,
            "| size | median wall (s) | s/GiB | peak RSS send / recv (MiB) |"
        );
        let _ = writeln!(md, "|---:|---:|---:|---:|");
        for ((size, trials), (_, pg)) in scaling.iter().zip(&per_gib) {
            let w = median(&trials.iter().map(|t| t.wall).collect::<Vec<_>>());
            let srss = trials.iter().map(|t| t.send.rss_kib).max().unwrap_or(0);
            let rrss = trials.iter().map(|t| t.recv.rss_kib).max().unwrap_or(0);
            let _ = writeln!(
                md,
                "| {} MiB | {w:.2} | {pg:.2} | {:.1} / {:.1} |",
                size >> 20,
                srss as f64 / 1024.0,
                rrss as f64 / 1024.0
            );
        }
    }
    md
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores ({cpu}), Linux {}", kernel.trim())
}

/// A horizontal bar chart of median wall time per contender, as SVG.
pub fn svg(info: &RunInfo, results: &[(Contender, Vec<Trial>)]) -> String {
    let rows = rows(results);
    let max = rows.iter().map(|r| r.wall).fold(0.0, f64::max).max(1e-9);
    let (left, width, bar_h, gap, top) = (260.0, 420.0, 26.0, 10.0, 50.0);
    let height = top + rows.len() as f64 * (bar_h + gap) + 30.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="13">"#,
        w = left + width + 90.0
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="24" font-size="15" font-weight="bold">Median wall time, {:.1} GiB over loopback to durable disk (lower is better)</text>"#,
        info.size as f64 / GIB
    );
    for (i, r) in rows.iter().enumerate() {
        let y = top + i as f64 * (bar_h + gap);
        let w = width * r.wall / max;
        let colour = match r.c {
            Contender::Zsend { .. } => "#2b7bb9",
            Contender::Bare | Contender::Cp => "#999999",
            _ => "#d9822b",
        };
        let _ = writeln!(
            s,
            r#"<text x="{tx}" y="{ty}" text-anchor="end">{label}</text><rect x="{left}" y="{y}" width="{w:.1}" height="{bar_h}" fill="{colour}"/><text x="{vx:.1}" y="{ty}">{wall:.2} s</text>"#,
            tx = left - 8.0,
            ty = y + bar_h * 0.7,
            label = r.c.label().replace('>', "&gt;"),
            vx = left + w + 6.0,
            wall = r.wall
        );
    }
    let _ = writeln!(s, "</svg>");
    s
}
