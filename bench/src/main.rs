//! zbench: moves one file over loopback TCP to disk with zsend/zrecv, nc, an nc + sha256
//! pipeline, cp and the bare zero-copy ceiling, alternating the contenders run by run after a
//! warm-up, and writes a Markdown report and an SVG chart. See docs/BENCHMARKS.md.

mod contenders;
mod delta;
mod digest;
mod measure;
mod report;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use sha2::{Digest, Sha256};

use crate::contenders::{all, Contender, Env, Trial, ZSEND};

/// Benchmark zsend/zrecv against nc, nc + sha256, cp and the bare zero-copy ceiling.
#[derive(Parser, Debug)]
struct Cli {
    /// Size of the file to move (K, M, G suffixes are powers of 1024).
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    size: u64,

    /// Measured runs per contender, after one warm-up round.
    #[arg(long, default_value_t = 5)]
    runs: usize,

    /// Contenders to run (default: all): zsend, zsend-no-verify, nc, nc-sha256, cp, bare.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,

    /// Sizes for the scaling table (zsend verified).
    #[arg(long, value_delimiter = ',', value_parser = parse_size, default_value = "256M,1G,4G")]
    scaling: Vec<u64>,

    /// Also run zsend and zrecv from another build, as NAME=DIR (repeatable), verified and
    /// with --no-verify, alternating with the rest: how levers are compared.
    #[arg(long = "also", value_name = "NAME=DIR", value_parser = parse_build)]
    also: Vec<(String, PathBuf)>,

    /// Skip the scaling table.
    #[arg(long)]
    no_scaling: bool,

    /// Add 8 GiB and 16 GiB to the scaling table.
    #[arg(long)]
    huge: bool,

    /// Runs per size in the scaling table.
    #[arg(long, default_value_t = 3)]
    scaling_runs: usize,

    /// Work directory for the source and destination files (same disk for every contender).
    #[arg(long, default_value = "/var/tmp/zbench")]
    work: PathBuf,

    /// Where zsend, zrecv and zbare are.
    #[arg(long, default_value = "target/release")]
    bin: PathBuf,

    /// Where the report (results.md) and chart (chart.svg) go.
    #[arg(long, default_value = "docs/bench")]
    out: PathBuf,

    /// Instead of the comparison: hashing alone (tree root on 1 and 2 threads, plain SHA-256;
    /// a page-cached file of --size), a sparse 8 GiB file against its 192 MiB of data sent
    /// dense, and resuming a cut 2 GiB transfer; --also builds join the last two. Writes
    /// digest.md to --out.
    #[arg(long)]
    digest: bool,

    /// With --digest, divide the sparse and resume sizes by this (for a quick smoke test).
    #[arg(long, default_value_t = 1, hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    digest_scale: u64,

    /// Instead of the comparison: updating a 2 GiB image the receiver already holds (64
    /// random 4 KiB blocks rewritten), zsend (atomic, --inplace, cold receiver) against an
    /// rsync daemon (default delta, --inplace), then the image sent again unchanged against
    /// rsync --checksum; --also builds join the zsend contenders. Writes delta.md to --out.
    #[arg(long, conflicts_with = "digest")]
    delta: bool,

    /// With --delta, divide the image size and the pause before each send by this (for a quick
    /// smoke test).
    #[arg(long, default_value_t = 1, hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    delta_scale: u64,
}

fn parse_build(s: &str) -> Result<(String, PathBuf), String> {
    let (name, dir) = s.split_once('=').ok_or("expected NAME=DIR")?;
    Ok((name.to_owned(), PathBuf::from(dir)))
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|e| format!("{s:?}: {e}"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut contenders: Vec<Contender> = if cli.only.is_empty() {
        all()
    } else {
        cli.only
            .iter()
            .map(|k| Contender::from_key(k).with_context(|| format!("unknown contender {k}")))
            .collect::<anyhow::Result<_>>()?
    };
    for (name, dir) in &cli.also {
        for verify in [true, false] {
            let build = Some((name.clone(), dir.clone()));
            contenders.push(Contender::Zsend { verify, build });
        }
    }
    if cli.runs == 0 {
        bail!("--runs must be at least 1");
    }
    for tool in ["zsend", "zrecv", "zbare"] {
        let p = cli.bin.join(tool);
        if !p.exists() {
            bail!(
                "{} missing: build with cargo build --release --workspace",
                p.display()
            );
        }
    }
    std::fs::create_dir_all(&cli.work)?;
    std::fs::create_dir_all(&cli.out)?;
    let env = Env {
        bin: cli.bin.clone(),
        src: cli.work.join("source.bin"),
        out: cli.work.join("out"),
        scratch: cli.work.join("scratch"),
    };
    std::fs::create_dir_all(&env.out)?;
    std::fs::create_dir_all(&env.scratch)?;
    if cli.digest {
        return digest::run(&digest::Opts {
            command: std::env::args().collect::<Vec<_>>().join(" "),
            size: cli.size,
            runs: cli.runs,
            work: cli.work.clone(),
            bin: cli.bin.clone(),
            also: cli.also.clone(),
            out: cli.out.clone(),
            scale: cli.digest_scale,
        });
    }

    if cli.delta {
        let args: Vec<String> = std::env::args().skip(1).collect();
        return delta::run(&delta::Opts {
            command: format!("bench/run {}", args.join(" ")),
            runs: cli.runs,
            work: cli.work.clone(),
            bin: cli.bin.clone(),
            also: cli.also.clone(),
            out: cli.out.clone(),
            scale: cli.delta_scale,
        });
    }

    let sha = sha_speed();
    eprintln!(
        "sha256: {:.2} GB/s on one core alone, {:.2} GB/s per core with both busy",
        sha.0, sha.1
    );

    make_source(&env.src, cli.size)?;
    let results = compare(&env, &contenders, cli.runs)?;

    let mut sizes = if cli.no_scaling {
        Vec::new()
    } else {
        cli.scaling.clone()
    };
    if cli.huge {
        sizes.extend([8 << 30, 16 << 30]);
    }
    let scaling = scale(&env, &cli.work, &sizes, cli.scaling_runs)?;

    let info = report::RunInfo {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        size: cli.size,
        runs: cli.runs,
        sha_alone: sha.0,
        sha_both: sha.1,
    };
    let md = report::markdown(&info, &results, &scaling);
    std::fs::write(cli.out.join("results.md"), &md)?;
    std::fs::write(cli.out.join("chart.svg"), report::svg(&info, &results))?;
    println!("{md}");
    eprintln!(
        "wrote {} and {}",
        cli.out.join("results.md").display(),
        cli.out.join("chart.svg").display()
    );
    Ok(())
}

/// Runs one warm-up round, then `runs` rounds, each round in an order rotated by one and, every
/// other round, reversed: rotating alone keeps each contender behind the same one in every round
/// (the order is a cycle), and what the one before leaves (a file being freed, writeback) cost
/// one binary 7 % against an identical copy of itself.
fn compare(
    env: &Env,
    contenders: &[Contender],
    runs: usize,
) -> anyhow::Result<Vec<(Contender, Vec<Trial>)>> {
    let mut results: Vec<(Contender, Vec<Trial>)> =
        contenders.iter().map(|c| (c.clone(), Vec::new())).collect();
    for round in 0..=runs {
        for i in 0..contenders.len() {
            let k = match round % 2 {
                0 => i,
                _ => contenders.len() - 1 - i,
            };
            let idx = (k + round) % contenders.len();
            let c = &contenders[idx];
            let t = env
                .run(c)
                .with_context(|| format!("round {round}: {}", c.label()))?;
            eprintln!(
                "{} {:<44} {:>7.2} s  cpu {:>5.2}+{:<5.2} s  rss {}+{} KiB",
                if round == 0 { "warm-up" } else { "run    " },
                c.label(),
                t.wall,
                t.send.cpu,
                t.recv.cpu,
                t.send.rss_kib,
                t.recv.rss_kib
            );
            if round > 0 {
                results[idx].1.push(t);
            }
        }
    }
    Ok(results)
}

/// zsend verified at several sizes: seconds per GiB and peak RSS should not depend on size.
fn scale(
    env: &Env,
    work: &Path,
    sizes: &[u64],
    runs: usize,
) -> anyhow::Result<Vec<(u64, Vec<Trial>)>> {
    let mut out = Vec::new();
    for &size in sizes {
        let src = work.join(format!("scale-{size}.bin"));
        make_source(&src, size)?;
        let e = Env {
            bin: env.bin.clone(),
            src: src.clone(),
            out: env.out.clone(),
            scratch: env.scratch.clone(),
        };
        let mut trials = Vec::new();
        for _ in 0..runs.max(1) {
            let t = e.run(&ZSEND)?;
            eprintln!("scaling {:>6} MiB {:>7.2} s", size >> 20, t.wall);
            trials.push(t);
        }
        std::fs::remove_file(&src)?;
        out.push((size, trials));
    }
    Ok(out)
}

/// Writes `size` bytes of pseudo-random data (unless a file of that size is there), makes it
/// durable and reads it once so that it is in the page cache.
fn make_source(path: &Path, size: u64) -> anyhow::Result<()> {
    if std::fs::metadata(path).map(|m| m.len()).ok() != Some(size) {
        eprintln!(
            "writing {} MiB of random data to {}",
            size >> 20,
            path.display()
        );
        let mut f = std::fs::File::create(path)?;
        let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ size;
        let mut buf = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            for chunk in buf.chunks_exact_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                chunk.copy_from_slice(&state.to_le_bytes());
            }
            let n = left.min(buf.len() as u64) as usize;
            f.write_all(&buf[..n])?;
            left -= n as u64;
        }
        f.sync_all()?;
    }
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf)? > 0 {}
    Ok(())
}

/// SHA-256 throughput of the sha2 crate in GB/s: one thread alone, and per thread with two
/// threads hashing at once (as on loopback, where both ends hash on the same two cores).
fn sha_speed() -> (f64, f64) {
    fn run(bytes: usize) -> f64 {
        // The size zcommon reads and hashes at a time, so the data comes from the L2 cache.
        let buf = vec![0x5au8; 256 << 10];
        let start = Instant::now();
        let mut h = Sha256::new();
        for _ in 0..bytes / buf.len() {
            h.update(&buf);
        }
        std::hint::black_box(h.finalize());
        bytes as f64 / start.elapsed().as_secs_f64() / 1e9
    }
    // Best of three: a busy neighbour on a shared machine only ever slows a run down.
    let alone = (0..3).map(|_| run(1 << 30)).fold(0.0, f64::max);
    let both = (0..3)
        .map(|_| {
            std::thread::scope(|s| {
                let a = s.spawn(|| run(1 << 30));
                let b = s.spawn(|| run(1 << 30));
                (a.join().unwrap() + b.join().unwrap()) / 2.0
            })
        })
        .fold(0.0, f64::max);
    (alone, both)
}
