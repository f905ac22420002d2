//! `zbench --digest`: what the BEP 52 tree root costs and buys: hashing on one and two threads
//! against the plain SHA-256, a sparse file against a dense one holding the same data, and how
//! soon a resumed transfer sends its first new byte. Contenders alternate, as in `compare`.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{bail, Context};
use rustix::time::{clock_gettime, ClockId};

use crate::contenders::{Contender, Env, Trial};
use crate::measure::{alternate, median, Timed};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The sparse file: this size, holding `EXTENTS` extents of `EXTENT` bytes of data.
const SPARSE_SIZE: u64 = 8 * GIB;
const EXTENTS: u64 = 96;
const EXTENT: u64 = 2 * MIB;
/// Where each extent starts past its even share of the file: off any 1 MiB boundary.
const MISALIGN: u64 = 300 * 1024;

/// The resumed file, and how much of its sending stream the relay forwards before it cuts.
const RESUME_SIZE: u64 = 2 * GIB;
const CUT: u64 = 1_288_490_189 + 512;

/// What `--digest` needs from the command line.
pub struct Opts {
    pub command: String,
    /// Size of the page-cached file hashed alone.
    pub size: u64,
    pub runs: usize,
    pub work: PathBuf,
    /// The build under test (zsend, zrecv).
    pub bin: PathBuf,
    /// Other builds, as NAME=DIR.
    pub also: Vec<(String, PathBuf)>,
    pub out: PathBuf,
    /// Divides the sparse and resume sizes (1 for the real measurement; more for a smoke test).
    pub scale: u64,
}

/// Runs the three measurements and writes `<out>/digest.md`.
pub fn run(o: &Opts) -> anyhow::Result<()> {
    let builds: Vec<Build> = std::iter::once(Build {
        name: "this".into(),
        dir: o.bin.clone(),
        other: None,
    })
    .chain(o.also.iter().map(|(name, dir)| Build {
        name: name.clone(),
        dir: dir.clone(),
        other: Some((name.clone(), dir.clone())),
    }))
    .collect();
    let scratch = o.work.join("scratch");
    std::fs::create_dir_all(&scratch)?;

    eprintln!("== 1. hashing alone");
    let hashing = hashing(o)?;
    eprintln!("== 2. sparse against dense");
    let sparse = sparse(o, &builds, &scratch)?;
    eprintln!("== 3. resume");
    let resume = resume(o, &builds, &scratch)?;

    let md = report(o, &hashing, &sparse, &resume);
    let path = o.out.join("digest.md");
    std::fs::write(&path, &md)?;
    println!("{md}");
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// A build of zsend and zrecv.
#[derive(Clone)]
struct Build {
    name: String,
    dir: PathBuf,
    /// As `Contender::Zsend` names it: None for the build under test.
    other: Option<(String, PathBuf)>,
}

impl Build {
    fn tool(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

fn med(v: impl Iterator<Item = f64>) -> Option<f64> {
    let v: Vec<f64> = v.collect();
    (!v.is_empty()).then(|| median(&v))
}

// ---- 1. Hashing alone -------------------------------------------------------------------

/// How a file is hashed.
#[derive(Clone, Copy)]
enum Hashing {
    /// The tree root on this many threads.
    Root(usize),
    /// The plain sequential SHA-256.
    Plain,
}

impl Hashing {
    fn label(self) -> String {
        match self {
            Hashing::Root(n) => format!("tree root, {n} thread{}", if n == 1 { "" } else { "s" }),
            Hashing::Plain => "plain SHA-256, 1 thread".into(),
        }
    }

    fn threads(self) -> usize {
        match self {
            Hashing::Root(n) => n,
            Hashing::Plain => 1,
        }
    }
}

struct HashTrial {
    wall: f64,
    /// CPU seconds of the whole process (every hashing thread).
    cpu: f64,
    digest: [u8; 32],
}

const HASHINGS: [Hashing; 3] = [Hashing::Root(1), Hashing::Root(2), Hashing::Plain];

fn hashing(o: &Opts) -> anyhow::Result<Vec<Vec<HashTrial>>> {
    let src = o.work.join("source.bin");
    crate::make_source(&src, o.size)?;
    let labels: Vec<String> = HASHINGS.iter().map(|h| h.label()).collect();
    let size = o.size;
    let results = alternate(
        &labels,
        o.runs,
        |i| hash_once(&src, HASHINGS[i]),
        |t| {
            format!(
                "{:>7.2} s  {:>5.2} GB/s  cpu {:>5.2} s",
                t.wall,
                size as f64 / t.wall / 1e9,
                t.cpu
            )
        },
    );
    zcommon::set_hash_threads(0);
    let results = results?;
    if results[0][0].digest != results[1][0].digest {
        bail!("the tree root on 1 thread differs from the one on 2 threads");
    }
    Ok(results)
}

fn process_cpu() -> f64 {
    let t = clock_gettime(ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

fn hash_once(path: &Path, how: Hashing) -> anyhow::Result<HashTrial> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    zcommon::set_hash_threads(how.threads());
    let (cpu0, start) = (process_cpu(), Instant::now());
    let digest = match how {
        Hashing::Root(_) => zcommon::root_of_file(&file, false)?.0,
        Hashing::Plain => {
            let mark = zcommon::Watermark::complete(len);
            zcommon::sha256_of(&file, len, &mark, false)?.context("sha256_of aborted")?
        }
    };
    Ok(HashTrial {
        wall: start.elapsed().as_secs_f64(),
        cpu: process_cpu() - cpu0,
        digest,
    })
}

// ---- 2. Sparse against dense ------------------------------------------------------------

/// The sparse file's size, its extents' size, and the data they hold in all.
fn sparse_shape(scale: u64) -> (u64, u64, u64) {
    let extent = EXTENT / scale;
    (SPARSE_SIZE / scale, extent, EXTENTS * extent)
}

fn sparse(o: &Opts, builds: &[Build], scratch: &Path) -> anyhow::Result<Vec<Vec<Trial>>> {
    let (size, extent, data) = sparse_shape(o.scale);
    let sparse_src = o.work.join("digest-sparse.bin");
    let dense_src = o.work.join("digest-dense.bin");
    make_sparse(&sparse_src, size, extent)?;
    crate::make_source(&dense_src, data)?;
    let env = |src: &Path| Env {
        bin: o.bin.clone(),
        src: src.to_owned(),
        out: o.work.join("out"),
        scratch: scratch.to_owned(),
    };
    std::fs::create_dir_all(o.work.join("out"))?;
    let envs = [env(&sparse_src), env(&dense_src)];
    let cases: Vec<(usize, Contender)> = builds
        .iter()
        .flat_map(|b| {
            let c = Contender::Zsend {
                verify: true,
                build: b.other.clone(),
            };
            [(0, c.clone()), (1, c)]
        })
        .collect();
    let labels: Vec<String> = cases
        .iter()
        .map(|(e, c)| format!("{}, {}", c.label(), ["sparse", "dense"][*e]))
        .collect();
    let results = alternate(
        &labels,
        o.runs,
        |i| envs[cases[i].0].run(&cases[i].1),
        |t| {
            format!(
                "{:>7.2} s  cpu {:>5.2}+{:<5.2} s",
                t.wall, t.send.cpu, t.recv.cpu
            )
        },
    )?;
    std::fs::remove_file(&sparse_src)?;
    Ok(results)
}

/// A file of `size` bytes with `EXTENTS` extents of `extent` bytes of random data, evenly spread
/// and off the 1 MiB boundaries, holes elsewhere; durable and in the page cache.
fn make_sparse(path: &Path, size: u64, extent: u64) -> anyhow::Result<()> {
    eprintln!(
        "writing a {} MiB sparse file with {} MiB of data to {}",
        size / MIB,
        EXTENTS * extent / MIB,
        path.display()
    );
    let f = File::create(path)?;
    f.set_len(size)?;
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut buf = vec![0u8; extent as usize];
    for i in 0..EXTENTS {
        fill_random(&mut buf, &mut state);
        let at = i * (size / EXTENTS) / 4096 * 4096 + MISALIGN / 4096 * 4096;
        f.write_all_at(&buf, at)?;
    }
    f.sync_all()?;
    Ok(())
}

/// xorshift64: fast, and nothing compresses or dedupes it.
fn fill_random(buf: &mut [u8], state: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
}

// ---- 3. Resume --------------------------------------------------------------------------

/// What one zsend run says about itself.
struct Sent {
    kind: Kind,
    /// "connecting and waiting for the receiver" plus "checking the kept prefix" (older builds).
    first_byte: f64,
    /// The "checking the kept prefix" part alone.
    checking: f64,
    /// zsend's own `seconds`.
    seconds: f64,
    resumed_from: u64,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Cut through the relay, then sent again: it resumes.
    Resumed,
    /// Sent whole to an empty directory.
    Fresh,
}

fn resume(o: &Opts, builds: &[Build], scratch: &Path) -> anyhow::Result<Vec<Vec<Sent>>> {
    let size = RESUME_SIZE / o.scale;
    let cut = CUT / o.scale;
    let src = o.work.join("digest-resume.bin");
    crate::make_source(&src, size)?;
    let dir = o.work.join("digest-resume-out");
    let cases: Vec<(&Build, Kind)> = builds
        .iter()
        .flat_map(|b| [(b, Kind::Resumed), (b, Kind::Fresh)])
        .collect();
    let labels: Vec<String> = cases
        .iter()
        .map(|(b, k)| match k {
            Kind::Resumed => format!("zsend [{}] resumed after a cut", b.name),
            Kind::Fresh => format!("zsend [{}] fresh", b.name),
        })
        .collect();
    let results = alternate(
        &labels,
        o.runs,
        |i| {
            let (b, kind) = cases[i];
            fresh_dir(&dir)?;
            if kind == Kind::Resumed {
                cut_off(b, &src, &dir, scratch, cut)?;
            }
            settle()?;
            send_direct(b, &src, &dir, scratch, kind)
        },
        |s| {
            format!(
                "{:>7.3} s to the first new byte  total {:>6.2} s  resumed from {:.1} MiB{}",
                s.first_byte,
                s.seconds,
                s.resumed_from as f64 / MIB as f64,
                match (s.kind, s.resumed_from) {
                    (Kind::Resumed, 0) => "  FAILED: nothing resumed",
                    _ => "",
                }
            )
        },
    )?;
    std::fs::remove_dir_all(&dir)?;
    Ok(results)
}

/// Lets the disk settle before a timed send: writing the cut-off partial (made durable as it is
/// kept) and removing the last trial's file leave the virtual disk slower for seconds after,
/// which measured a resumed send at 3.6 s right after its cut and at 1.7 s eight seconds later.
/// Every timed send, fresh or resumed, gets the same pause.
fn settle() -> anyhow::Result<()> {
    Command::new("sync").status()?;
    std::thread::sleep(std::time::Duration::from_secs(5));
    Ok(())
}

fn fresh_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    std::fs::create_dir_all(dir)?;
    Ok(())
}

/// Starts `b`'s zrecv for one transfer into `dir`; returns it and where it listens.
fn start_zrecv(b: &Build, dir: &Path, scratch: &Path) -> anyhow::Result<(Timed, SocketAddr)> {
    let argv = [
        b.tool("zrecv"),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--dir".into(),
        dir.display().to_string(),
        "--once".into(),
    ];
    let mut rx = Timed::start(&argv, scratch, "digest-recv")?;
    let addr = rx.listening_addr()?;
    Ok((rx, addr))
}

/// Sends `src` through a relay that cuts the connection after `cut` bytes, so that the receiver
/// keeps a partial to resume from.
fn cut_off(b: &Build, src: &Path, dir: &Path, scratch: &Path, cut: u64) -> anyhow::Result<()> {
    let (rx, addr) = start_zrecv(b, dir, scratch)?;
    let relay = Relay::start(addr, cut)?;
    let out = Command::new(b.tool("zsend"))
        .arg(relay.addr.to_string())
        .arg(src)
        .arg("-q")
        .output()?;
    let forwarded = relay.finish()?;
    // The receiver fails this transfer: what counts is the partial it leaves.
    let _ = rx.finish();
    if out.status.success() {
        bail!("zsend landed the file whole: the relay forwarded {forwarded} bytes without a cut");
    }
    Ok(())
}

/// Sends `src` straight to a new receiver into `dir`, with `-v --json`.
fn send_direct(
    b: &Build,
    src: &Path,
    dir: &Path,
    scratch: &Path,
    kind: Kind,
) -> anyhow::Result<Sent> {
    let (rx, addr) = start_zrecv(b, dir, scratch)?;
    let out = Command::new(b.tool("zsend"))
        .args(["-v", "--json", &addr.to_string()])
        .arg(src)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    rx.finish()?;
    if !out.status.success() {
        bail!("zsend failed ({}): {stderr}", out.status);
    }
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).context("zsend --json")?;
    if j["ok"] != true || j["verified"] != true {
        bail!("zsend did not land verified: {j}");
    }
    let phase = |what: &str| phase_seconds(&stderr, what);
    let connecting = phase("connecting and waiting for the receiver")
        .with_context(|| format!("no time line in zsend -v's output: {stderr}"))?;
    let checking = phase("checking the kept prefix").unwrap_or(0.0);
    Ok(Sent {
        kind,
        first_byte: connecting + checking,
        checking,
        seconds: j["seconds"]
            .as_f64()
            .context("no seconds in zsend --json")?,
        resumed_from: j["resumed_from"].as_u64().unwrap_or(0),
    })
}

/// The seconds of phase `what` in zsend -v's `time: PHASE N s, PHASE N s, ...` line.
fn phase_seconds(stderr: &str, what: &str) -> Option<f64> {
    let line = stderr.lines().find_map(|l| l.split_once("time: "))?.1;
    line.split(", ").find_map(|part| {
        let secs = part.strip_prefix(what)?.trim().strip_suffix(" s")?;
        secs.parse().ok()
    })
}

/// Forwards one connection to a receiver, both ways, and closes both ends once `cut` bytes
/// went from the sender to the receiver.
struct Relay {
    addr: SocketAddr,
    thread: JoinHandle<io::Result<u64>>,
}

impl Relay {
    fn start(target: SocketAddr, cut: u64) -> anyhow::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let thread = std::thread::spawn(move || {
            let (sender, _) = listener.accept()?;
            let receiver = TcpStream::connect(target)?;
            let (mut from, mut to) = (receiver.try_clone()?, sender.try_clone()?);
            let back = std::thread::spawn(move || io::copy(&mut from, &mut to));
            let forwarded = copy_up_to(&sender, &receiver, cut);
            let _ = sender.shutdown(Shutdown::Both);
            let _ = receiver.shutdown(Shutdown::Both);
            let _ = back.join();
            forwarded
        });
        Ok(Relay { addr, thread })
    }

    /// Waits for the relay to end; returns the bytes it forwarded to the receiver.
    fn finish(self) -> anyhow::Result<u64> {
        match self.thread.join() {
            Ok(r) => Ok(r.context("relay")?),
            Err(_) => bail!("the relay thread panicked"),
        }
    }
}

/// Copies from `from` to `to` until `limit` bytes went or `from` ends; returns how many went.
fn copy_up_to(mut from: &TcpStream, mut to: &TcpStream, limit: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 << 10];
    let mut done = 0;
    while done < limit {
        let want = (limit - done).min(buf.len() as u64) as usize;
        let n = from.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        to.write_all(&buf[..n])?;
        done += n as u64;
    }
    Ok(done)
}

// ---- The report -------------------------------------------------------------------------

fn verdict(met: bool) -> &'static str {
    if met {
        "yes"
    } else {
        "**no**"
    }
}

fn report(
    o: &Opts,
    hashing: &[Vec<HashTrial>],
    sparse: &[Vec<Trial>],
    resume: &[Vec<Sent>],
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Digest benchmark\n");
    let _ = writeln!(
        md,
        "Measured with `{}`: one warm-up round, then {} rounds with the contenders of each \
         table alternating (order rotated every round, reversed every other round). Medians. \
         Machine: {}.\n",
        o.command,
        o.runs,
        crate::report::machine()
    );
    report_hashing(&mut md, o.size, hashing);
    report_sparse(&mut md, o, sparse);
    report_resume(&mut md, o, resume);
    md
}

fn report_hashing(md: &mut String, size: u64, results: &[Vec<HashTrial>]) {
    let gb = size as f64 / 1e9;
    let _ = writeln!(
        md,
        "## 1. Hashing alone\n\nA {:.2} GiB file of random data in the page cache, hashed \
         in-process (`zcommon::root_of_file` with `set_hash_threads`, and `sha256_of`). GB/s is \
         the file size over the wall time; CPU is the whole process's (all hashing threads).\n",
        size as f64 / GIB as f64
    );
    let _ = writeln!(
        md,
        "| digest | median wall (s) | GB/s | GB/s per thread | CPU (s) | GB per CPU second |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
    let mut speed = Vec::new();
    for (h, trials) in HASHINGS.iter().zip(results) {
        let wall = median(&trials.iter().map(|t| t.wall).collect::<Vec<_>>());
        let cpu = median(&trials.iter().map(|t| t.cpu).collect::<Vec<_>>());
        let _ = writeln!(
            md,
            "| {} | {wall:.2} | {:.2} | {:.2} | {cpu:.2} | {:.2} |",
            h.label(),
            gb / wall,
            gb / wall / h.threads() as f64,
            gb / cpu
        );
        speed.push(gb / wall);
    }
    let two_one = speed[1] / speed[0];
    let _ = writeln!(
        md,
        "\n- tree root, 2 threads / 1 thread: **{two_one:.2}x** (target ≥ 1.8x: {})",
        verdict(two_one >= 1.8)
    );
    let _ = writeln!(
        md,
        "- tree root, 1 thread / plain SHA-256: {:.2}x the speed\n",
        speed[0] / speed[2]
    );
}

fn report_sparse(md: &mut String, o: &Opts, results: &[Vec<Trial>]) {
    let (size, extent, data) = sparse_shape(o.scale);
    let _ = writeln!(
        md,
        "## 2. Sparse against dense\n\nzsend → zrecv over loopback, verified: a {} MiB file \
         holding {} MiB of random data ({EXTENTS} extents of {} KiB, evenly spread, off the \
         1 MiB boundaries; holes elsewhere) against a dense {} MiB file of random data.\n",
        size / MIB,
        data / MIB,
        extent / 1024,
        data / MIB
    );
    let _ = writeln!(
        md,
        "| build | sparse wall (s) | dense wall (s) | sparse / dense | target ≤ 1.5x | sparse CPU send+recv (s) | dense CPU send+recv (s) |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|:---:|---:|---:|");
    let names = build_names(o);
    for (name, pair) in names.iter().zip(results.chunks(2)) {
        let wall = |t: &[Trial]| median(&t.iter().map(|t| t.wall).collect::<Vec<_>>());
        let cpu = |t: &[Trial]| {
            median(
                &t.iter()
                    .map(|t| t.send.cpu + t.recv.cpu)
                    .collect::<Vec<_>>(),
            )
        };
        let (s, d) = (wall(&pair[0]), wall(&pair[1]));
        let _ = writeln!(
            md,
            "| {name} | {s:.2} | {d:.2} | {:.2}x | {} | {:.2} | {:.2} |",
            s / d,
            verdict(s / d <= 1.5),
            cpu(&pair[0]),
            cpu(&pair[1])
        );
    }
    let _ = writeln!(md);
}

fn build_names(o: &Opts) -> Vec<String> {
    std::iter::once(format!("this ({})", o.bin.display()))
        .chain(o.also.iter().map(|(n, d)| format!("{n} ({})", d.display())))
        .collect()
}

fn report_resume(md: &mut String, o: &Opts, results: &[Vec<Sent>]) {
    let size = RESUME_SIZE / o.scale;
    let cut = CUT / o.scale;
    let _ = writeln!(
        md,
        "## 3. Resume\n\nA {} MiB file of random data. Each resumed trial: an empty directory, \
         that build's zrecv, its zsend through a relay in zbench that closes both connections \
         after forwarding {cut} bytes of the sender's stream, then the same zsend again \
         straight to a new zrecv on that directory (`zsend -v --json`). The first new byte \
         comes after zsend's \"connecting and waiting for the receiver\" phase plus, in older \
         builds, its \"checking the kept prefix\" phase. Fresh: the same file to an empty \
         directory. Totals are zsend's own `seconds`. A resumed trial whose `resumed_from` is 0 \
         failed and is left out of the medians.\n",
        size / MIB
    );
    let _ = writeln!(
        md,
        "| build | first new byte, resumed (s) | target ≤ 0.1 s | of which checking the prefix (s) | resumed from (MiB) | resumed total (s) | fresh total (s) | resumed / fresh | first byte, fresh (s) | failed trials |"
    );
    let _ = writeln!(md, "|---|---:|:---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, pair) in build_names(o).iter().zip(results.chunks(2)) {
        let ok: Vec<&Sent> = pair[0].iter().filter(|s| s.resumed_from > 0).collect();
        let failed = pair[0].len() - ok.len();
        let fresh_total = med(pair[1].iter().map(|s| s.seconds));
        let fresh_first = med(pair[1].iter().map(|s| s.first_byte));
        let first = med(ok.iter().map(|s| s.first_byte));
        let total = med(ok.iter().map(|s| s.seconds));
        let f = |v: Option<f64>, p: usize| v.map_or("n/a".into(), |v| format!("{v:.p$}"));
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {failed} of {} |",
            f(first, 3),
            first.map_or("n/a", |v| verdict(v <= 0.1)),
            f(med(ok.iter().map(|s| s.checking)), 3),
            f(
                med(ok.iter().map(|s| s.resumed_from as f64 / MIB as f64)),
                1
            ),
            f(total, 2),
            f(fresh_total, 2),
            match (total, fresh_total) {
                (Some(t), Some(r)) => format!("{:.2}x", t / r),
                _ => "n/a".into(),
            },
            f(fresh_first, 3),
            pair[0].len()
        );
    }
    let _ = writeln!(md);
}
