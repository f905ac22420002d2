//! `zbench --delta`: updating an image the receiver already holds. A 2 GiB image and a second
//! version of it with 64 random 4 KiB blocks rewritten go back and forth between zsend (atomic,
//! in place, and to a receiver that must hash its old file) and an rsync daemon (its default
//! delta into a temporary file, and `--inplace`); then the same image is sent again unchanged,
//! against `rsync --checksum` and rsync's quick check. Contenders alternate, as in `compare`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use crate::measure::{alternate, free_port, median};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The image, before `--delta-scale` divides it.
const IMAGE: u64 = 2 * GIB;
/// Version B: this many blocks of `BLOCK` bytes, at distinct `BLOCK`-aligned offsets, rewritten.
const BLOCKS: u64 = 64;
const BLOCK: u64 = 4096;
/// zsend's piece: what crosses the wire for a changed block.
const PIECE: u64 = MIB;
/// The name both versions have, and the one they land under.
const NAME: &str = "image.bin";
/// The two versions' modification times (2026-01-01 00:00 UTC, and an hour later): they differ,
/// so that rsync's quick check sends every update; each destination keeps the version's own.
const MTIMES: [u64; 2] = [1_767_225_600, 1_767_229_200];
/// The pause before every timed send, at scale 1 (see `settle`).
const SETTLE: Duration = Duration::from_secs(5);
/// How long a receiver may take to exit after its sender did, and an rsync daemon to listen.
const EXIT_WAIT: Duration = Duration::from_secs(60);

/// What `--delta` needs from the command line.
pub struct Opts {
    /// How to run it again, for the report.
    pub command: String,
    pub runs: usize,
    pub work: PathBuf,
    /// The build under test (zsend, zrecv).
    pub bin: PathBuf,
    /// Other builds, as NAME=DIR.
    pub also: Vec<(String, PathBuf)>,
    pub out: PathBuf,
    /// Divides the image size and the pause before each send (1 for the real measurement).
    pub scale: u64,
}

/// Runs both measurements and writes `<out>/delta.md`.
pub fn run(o: &Opts) -> anyhow::Result<()> {
    let mut builds = vec![Build::new("this", &o.bin)?];
    for (name, dir) in &o.also {
        builds.push(Build::new(name, dir)?);
    }
    let root = o.work.join("delta");
    let scratch = root.join("scratch");
    let dst = root.join("dst");
    std::fs::create_dir_all(&scratch)?;
    fresh_dir(&dst)?;
    let images = Images::make(&root, IMAGE / o.scale)?;
    let rsyncd = Rsyncd::start(&dst, &scratch)?;
    let ctx = Ctx {
        builds: &builds,
        images: &images,
        port: rsyncd.port,
        pause: SETTLE / o.scale as u32,
    };
    let rsync_version = rsync_version()?;

    eprintln!("== 1. a changed image");
    let mut dests = part1_dests(&builds, &dst);
    for d in &mut dests {
        ctx.place(d)?;
    }
    let changed = alternate(
        &dests.iter().map(|d| d.label.clone()).collect::<Vec<_>>(),
        o.runs,
        |i| {
            let d = &mut dests[i];
            let r = ctx.trial(d, 1 - d.holds)?;
            if d.who != Who::Floor {
                d.holds = 1 - d.holds;
            }
            Ok(r)
        },
        show,
    )?;

    eprintln!("== 2. an unchanged image");
    let mut same = part2_dests(&builds, dests);
    let unchanged = alternate(
        &same.iter().map(|d| d.label.clone()).collect::<Vec<_>>(),
        o.runs,
        |i| {
            let d = &mut same[i];
            ctx.trial(d, d.holds)
        },
        show,
    )?;
    drop(rsyncd);

    let part1 = Part {
        rows: part1_rows(&builds),
        results: changed,
    };
    let part2 = Part {
        rows: part2_rows(&builds),
        results: unchanged,
    };
    let md = report(o, &builds, &images, &rsync_version, &part1, &part2);
    std::fs::create_dir_all(&o.out)?;
    let path = o.out.join("delta.md");
    std::fs::write(&path, &md)?;
    std::fs::remove_dir_all(&dst)?;
    std::fs::remove_file(&images.path[1])?;
    println!("{md}");
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// A build of zsend and zrecv.
struct Build {
    name: String,
    dir: PathBuf,
    /// Whether its zsend knows `--inplace` (builds from before the feature do not).
    inplace: bool,
}

impl Build {
    fn new(name: &str, dir: &Path) -> anyhow::Result<Build> {
        let b = Build {
            name: name.into(),
            dir: dir.to_owned(),
            inplace: false,
        };
        for tool in ["zsend", "zrecv"] {
            if !dir.join(tool).exists() {
                bail!("{} missing", dir.join(tool).display());
            }
        }
        let help = Command::new(b.tool("zsend")).arg("--help").output()?;
        let inplace = String::from_utf8_lossy(&help.stdout).contains("--inplace");
        if !inplace {
            eprintln!("note: {name}'s zsend has no --inplace: its in-place contender is left out");
        }
        Ok(Build { inplace, ..b })
    }

    fn tool(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn who(&self) -> String {
        match self.name.as_str() {
            "this" => "zsend".into(),
            n => format!("zsend [{n}]"),
        }
    }
}

// ---- The two versions -------------------------------------------------------------------

struct Images {
    size: u64,
    /// Version A and version B, both named `NAME`, in directories of their own.
    path: [PathBuf; 2],
    /// SHA-256 of each, to check every destination against.
    sha: [[u8; 32]; 2],
    /// The distinct pieces the rewritten blocks fall in.
    changed: u64,
}

impl Images {
    fn make(root: &Path, size: u64) -> anyhow::Result<Images> {
        if size < BLOCKS * BLOCK * 4 {
            bail!("a {size}-byte image is too small for {BLOCKS} blocks of {BLOCK} bytes");
        }
        let path = [root.join("a").join(NAME), root.join("b").join(NAME)];
        for p in &path {
            std::fs::create_dir_all(p.parent().expect("a directory"))?;
        }
        crate::make_source(&path[0], size)?;
        eprintln!(
            "writing version B: {BLOCKS} blocks of {BLOCK} bytes rewritten, to {}",
            path[1].display()
        );
        std::fs::copy(&path[0], &path[1])?;
        let f = std::fs::OpenOptions::new().write(true).open(&path[1])?;
        let mut pick = 0x5851_F42D_4C95_7F2Du64;
        let mut fill = 0xD1B5_4A32_D192_ED03u64;
        let mut blocks = BTreeSet::new();
        while (blocks.len() as u64) < BLOCKS {
            blocks.insert(xorshift(&mut pick) % (size / BLOCK));
        }
        let mut buf = vec![0u8; BLOCK as usize];
        for &b in &blocks {
            for chunk in buf.chunks_mut(8) {
                chunk.copy_from_slice(&xorshift(&mut fill).to_le_bytes()[..chunk.len()]);
            }
            f.write_all_at(&buf, b * BLOCK)?;
        }
        f.sync_all()?;
        drop(f);
        let changed = blocks
            .iter()
            .map(|b| b * BLOCK / PIECE)
            .collect::<BTreeSet<_>>()
            .len() as u64;
        for (p, t) in path.iter().zip(MTIMES) {
            set_mtime(p, t)?;
        }
        let sha = [sha256(&path[0], false)?, sha256(&path[1], false)?];
        if sha[0] == sha[1] {
            bail!("version B came out equal to version A");
        }
        Ok(Images {
            size,
            path,
            sha,
            changed,
        })
    }
}

/// xorshift64, seeded: fast, and nothing compresses or dedupes it.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn set_mtime(path: &Path, secs: u64) -> anyhow::Result<()> {
    let f = File::options().write(true).open(path)?;
    f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))?;
    Ok(())
}

/// SHA-256 of a file; with `drop`, the file leaves the page cache afterwards (it is durable by
/// then: clean pages go).
fn sha256(path: &Path, drop: bool) -> anyhow::Result<[u8; 32]> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    if drop {
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed)?;
    }
    Ok(h.finalize().into())
}

/// Reads a file through, so that it is in the page cache.
fn warm(path: &Path) -> anyhow::Result<()> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; MIB as usize];
    while f.read(&mut buf)? > 0 {}
    Ok(())
}

// ---- Contenders -------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    /// zsend's default: the new version built beside the old one and renamed.
    Atomic,
    /// `zsend --inplace`.
    Inplace,
    /// The default, with the receiver's sidecars deleted before each send.
    Cold,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Rsync {
    /// Delta into a temporary file, renamed.
    Default,
    Inplace,
    /// `--checksum`: both ends read the whole file.
    Checksum,
    /// The default again, on an unchanged file: size and mtime only.
    Quick,
}

impl Rsync {
    fn label(self) -> &'static str {
        match self {
            Rsync::Default => "rsync (delta, temporary file), sync",
            Rsync::Inplace => "rsync --inplace, sync",
            Rsync::Checksum => "rsync --checksum, sync",
            Rsync::Quick => "rsync quick check (size, mtime), sync",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Who {
    Zsend {
        build: usize,
        mode: Mode,
    },
    Rsync(Rsync),
    /// No transfer: the destination's own file copied beside it (`cp --reflink=auto`), the copy
    /// fsynced and renamed over it. The least any update that builds a new file pays on this
    /// filesystem.
    Floor,
}

/// A contender and the destination directory it alone writes to.
struct Dest {
    label: String,
    who: Who,
    /// The directory, under the rsync module's path.
    dir: PathBuf,
    /// Its path inside the module.
    rel: String,
    /// Which version (0: A, 1: B) it holds now.
    holds: usize,
}

/// A table's rows: each contender, and the rsync contender it is compared with.
struct Row {
    who: Who,
    against: Rsync,
}

fn part1_whos(builds: &[Build]) -> Vec<Who> {
    let mut w = Vec::new();
    for (i, b) in builds.iter().enumerate() {
        for mode in [Mode::Atomic, Mode::Inplace, Mode::Cold] {
            if mode != Mode::Inplace || b.inplace {
                w.push(Who::Zsend { build: i, mode });
            }
        }
    }
    w.extend([
        Who::Rsync(Rsync::Default),
        Who::Rsync(Rsync::Inplace),
        Who::Floor,
    ]);
    w
}

fn part1_rows(builds: &[Build]) -> Vec<Row> {
    part1_whos(builds)
        .into_iter()
        .map(|who| Row {
            who,
            against: match who {
                Who::Zsend {
                    mode: Mode::Inplace,
                    ..
                }
                | Who::Rsync(Rsync::Inplace) => Rsync::Inplace,
                _ => Rsync::Default,
            },
        })
        .collect()
}

fn label(builds: &[Build], who: Who) -> String {
    match who {
        Who::Zsend { build, mode } => {
            let z = builds[build].who();
            match mode {
                Mode::Atomic => format!("{z} -> zrecv --force"),
                Mode::Inplace => format!("{z} --inplace -> zrecv --force"),
                Mode::Cold => format!("{z} -> zrecv --force, cold receiver"),
            }
        }
        Who::Rsync(r) => r.label().into(),
        Who::Floor => "cp --reflink=auto of the old file, fsync, rename (no transfer)".into(),
    }
}

fn part1_dests(builds: &[Build], dst: &Path) -> Vec<Dest> {
    part1_whos(builds)
        .into_iter()
        .enumerate()
        .map(|(i, who)| {
            let rel = format!("c{i}");
            Dest {
                label: label(builds, who),
                who,
                dir: dst.join(&rel),
                rel,
                holds: 0,
            }
        })
        .collect()
}

/// Part 2 reuses part 1's directories, each holding the version last sent to it: each build's
/// atomic one (its receiver is warm) for zsend, rsync's default one for `--checksum`, rsync's
/// in-place one for the quick check.
fn part2_dests(builds: &[Build], part1: Vec<Dest>) -> Vec<Dest> {
    let mut out = Vec::new();
    for mut d in part1 {
        d.who = match d.who {
            Who::Zsend {
                mode: Mode::Atomic,
                build,
            } => Who::Zsend {
                build,
                mode: Mode::Atomic,
            },
            Who::Rsync(Rsync::Default) => Who::Rsync(Rsync::Checksum),
            Who::Rsync(Rsync::Inplace) => Who::Rsync(Rsync::Quick),
            _ => continue,
        };
        d.label = label(builds, d.who);
        out.push(d);
    }
    out
}

fn part2_rows(builds: &[Build]) -> Vec<Row> {
    (0..builds.len())
        .map(|build| Who::Zsend {
            build,
            mode: Mode::Atomic,
        })
        .chain([Who::Rsync(Rsync::Checksum), Who::Rsync(Rsync::Quick)])
        .map(|who| Row {
            who,
            against: Rsync::Checksum,
        })
        .collect()
}

/// One timed send.
struct Res {
    wall: f64,
    /// lo's transmitted bytes over the send: both directions, headers included.
    wire: u64,
    /// zsend's `update` (None: the whole file went), or None for rsync.
    update: Option<Update>,
    /// rsync's literal data (bytes it sent as such rather than as matches).
    literal: Option<u64>,
}

#[derive(Clone)]
struct Update {
    mode: String,
    pieces: u64,
    sent: u64,
}

fn show(r: &Res) -> String {
    let what = match (&r.update, r.literal) {
        (_, Some(l)) => format!("literal data {:.2} MiB", l as f64 / MIB as f64),
        (Some(u), _) => format!("{}: {} of {} pieces", u.mode, u.sent, u.pieces),
        (None, None) => "whole file".into(),
    };
    format!(
        "{:>7.2} s  {:>9.2} MiB on the wire  {what}",
        r.wall,
        r.wire as f64 / MIB as f64
    )
}

struct Ctx<'a> {
    builds: &'a [Build],
    images: &'a Images,
    port: u16,
    pause: Duration,
}

impl Ctx<'_> {
    /// Puts version A in `d`'s empty directory: landed by the build's own zsend (so that the
    /// receiver has its sidecar), or copied with A's mtime and synced for rsync.
    fn place(&self, d: &mut Dest) -> anyhow::Result<()> {
        fresh_dir(&d.dir)?;
        let a = &self.images.path[0];
        match d.who {
            Who::Zsend { build, .. } => {
                let b = &self.builds[build];
                let mut rx = Proc::zrecv(b, &d.dir)?;
                let addr = rx.listening()?;
                let out = Command::new(b.tool("zsend"))
                    .arg("-q")
                    .arg(addr.to_string())
                    .arg(a)
                    .stdin(Stdio::null())
                    .output()?;
                if !out.status.success() {
                    bail!(
                        "placing A in {} with {}: zsend failed ({}): {}",
                        d.dir.display(),
                        b.who(),
                        out.status,
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                rx.finish()?;
            }
            Who::Rsync(_) | Who::Floor => {
                let to = d.dir.join(NAME);
                std::fs::copy(a, &to)?;
                set_mtime(&to, MTIMES[0])?;
                File::open(&to)?.sync_all()?;
            }
        }
        self.check(d, 0)?;
        d.holds = 0;
        Ok(())
    }

    /// Fails unless `d` holds version `v`; then drops it from the page cache, so that every
    /// send finds its destination on disk.
    fn check(&self, d: &Dest, v: usize) -> anyhow::Result<()> {
        let got = sha256(&d.dir.join(NAME), true)?;
        if got != self.images.sha[v] {
            bail!(
                "{}: {} does not hold version {} after the send",
                d.label,
                d.dir.join(NAME).display(),
                ["A", "B"][v]
            );
        }
        Ok(())
    }

    /// Sends version `v` to `d` and checks that it landed.
    fn trial(&self, d: &Dest, v: usize) -> anyhow::Result<Res> {
        let src = &self.images.path[v];
        warm(src)?;
        if let Who::Zsend {
            mode: Mode::Cold, ..
        } = d.who
        {
            remove_sidecars(&d.dir)?;
        }
        settle(self.pause)?;
        let r = match d.who {
            Who::Zsend { build, mode } => self.zsend(&self.builds[build], mode, d, src)?,
            Who::Rsync(how) => self.rsync(how, d, src)?,
            Who::Floor => self.floor(d)?,
        };
        // The floor copies what the directory holds: it keeps its version.
        self.check(d, if d.who == Who::Floor { d.holds } else { v })?;
        Ok(r)
    }

    /// The floor: the destination's own file copied beside it, made durable, renamed over it.
    fn floor(&self, d: &Dest) -> anyhow::Result<Res> {
        let file = d.dir.join(NAME);
        let copy = d.dir.join(".floor.tmp");
        let before = lo_bytes()?;
        let start = Instant::now();
        let status = Command::new("cp")
            .args(["--reflink=auto", "--preserve=timestamps"])
            .arg(&file)
            .arg(&copy)
            .status()?;
        if !status.success() {
            bail!("cp {} failed ({status})", file.display());
        }
        File::open(&copy)?.sync_all()?;
        std::fs::rename(&copy, &file)?;
        File::open(&d.dir)?.sync_all()?;
        let wall = start.elapsed().as_secs_f64();
        Ok(Res {
            wall,
            wire: lo_bytes()? - before,
            update: None,
            literal: None,
        })
    }

    fn zsend(&self, b: &Build, mode: Mode, d: &Dest, src: &Path) -> anyhow::Result<Res> {
        let mut rx = Proc::zrecv(b, &d.dir)?;
        let addr = rx.listening()?;
        let mut cmd = Command::new(b.tool("zsend"));
        cmd.arg("--json");
        if mode == Mode::Inplace {
            cmd.arg("--inplace");
        }
        cmd.arg(addr.to_string()).arg(src).stdin(Stdio::null());
        let before = lo_bytes()?;
        let start = Instant::now();
        let out = cmd.output()?;
        let wall = start.elapsed().as_secs_f64();
        if !out.status.success() {
            rx.seen.extend(rx.lines.try_iter());
            bail!(
                "zsend failed ({}): {}\nzrecv said: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                rx.seen.join("\n")
            );
        }
        rx.finish()?;
        let wire = lo_bytes()? - before;
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).context("zsend --json")?;
        if j["ok"] != true {
            bail!("zsend did not land: {j}");
        }
        let update = match j.get("update") {
            None | Some(serde_json::Value::Null) => None,
            Some(u) => Some(Update {
                mode: u["mode"].as_str().unwrap_or("?").into(),
                pieces: u["pieces"].as_u64().context("update.pieces")?,
                sent: u["sent"].as_u64().context("update.sent")?,
            }),
        };
        Ok(Res {
            wall,
            wire,
            update,
            literal: None,
        })
    }

    fn rsync(&self, how: Rsync, d: &Dest, src: &Path) -> anyhow::Result<Res> {
        let mut cmd = Command::new("rsync");
        cmd.args(["--times", "--stats", "--timeout=600"]);
        match how {
            Rsync::Inplace => {
                cmd.arg("--inplace");
            }
            Rsync::Checksum => {
                cmd.arg("--checksum");
            }
            Rsync::Default | Rsync::Quick => {}
        }
        cmd.arg(src)
            .arg(format!(
                "rsync://127.0.0.1:{}/delta/{}/{NAME}",
                self.port, d.rel
            ))
            .stdin(Stdio::null());
        let dest = d.dir.join(NAME);
        let before = lo_bytes()?;
        let start = Instant::now();
        let out = cmd.output()?;
        let synced = Command::new("sync").arg(&dest).status()?;
        let wall = start.elapsed().as_secs_f64();
        let wire = lo_bytes()? - before;
        if !out.status.success() {
            bail!(
                "rsync failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if !synced.success() {
            bail!("sync {} failed ({synced})", dest.display());
        }
        let stats = String::from_utf8_lossy(&out.stdout);
        let literal = stats
            .lines()
            .find_map(|l| l.strip_prefix("Literal data: "))
            .and_then(|v| v.trim_end_matches(" bytes").replace(',', "").parse().ok())
            .with_context(|| format!("no literal data in rsync --stats: {stats}"))?;
        Ok(Res {
            wall,
            wire,
            update: None,
            literal: Some(literal),
        })
    }
}

/// Makes the receiver in `dir` cold: without its sidecars it must hash its old file.
fn remove_sidecars(dir: &Path) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".zrecv-") && name.ends_with(".pieces") {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

/// Lets the disk settle before a timed send, as `--digest` does: every send writes (up to a
/// whole new image) and the virtual disk stays slower for seconds after.
fn settle(pause: Duration) -> anyhow::Result<()> {
    if !Command::new("sync").status()?.success() {
        bail!("sync failed");
    }
    std::thread::sleep(pause);
    Ok(())
}

fn fresh_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    std::fs::create_dir_all(dir)?;
    Ok(())
}

/// Bytes the loopback interface has transmitted: on `lo` every byte either end sends is
/// transmitted once, so this counts both directions, headers included.
fn lo_bytes() -> anyhow::Result<u64> {
    let t = std::fs::read_to_string("/proc/net/dev")?;
    for line in t.lines() {
        if let Some((name, rest)) = line.split_once(':') {
            if name.trim() == "lo" {
                let tx = rest.split_whitespace().nth(8).context("/proc/net/dev")?;
                return Ok(tx.parse()?);
            }
        }
    }
    bail!("no lo in /proc/net/dev")
}

fn rsync_version() -> anyhow::Result<String> {
    let out = Command::new("rsync")
        .arg("--version")
        .output()
        .context("rsync missing (apt-get install rsync)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or("rsync");
    Ok(first.split_whitespace().collect::<Vec<_>>().join(" "))
}

// ---- Processes --------------------------------------------------------------------------

/// A background process (zrecv, the rsync daemon), killed when dropped if it still runs.
struct Proc {
    child: Child,
    what: String,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> anyhow::Result<Proc> {
        let what = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let stderr = child.stderr.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Ok(Proc {
            child,
            what,
            lines,
            seen: Vec::new(),
        })
    }

    /// `b`'s zrecv for one transfer into `dir`, replacing what is there.
    fn zrecv(b: &Build, dir: &Path) -> anyhow::Result<Proc> {
        Proc::spawn(
            Command::new(b.tool("zrecv"))
                .args(["--listen", "127.0.0.1:0", "--dir"])
                .arg(dir)
                .args(["--once", "--force"]),
        )
    }

    /// Waits for the `listening on ADDR` line and returns ADDR.
    fn listening(&mut self) -> anyhow::Result<SocketAddr> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).with_context(|| {
                format!(
                    "{} never said where it listens: {}",
                    self.what,
                    self.seen.join("\n")
                )
            })?;
            if let Some(addr) = line.strip_prefix("listening on ") {
                return Ok(addr.parse()?);
            }
            self.seen.push(line);
        }
    }

    /// Waits (at most `EXIT_WAIT`) for the process to exit; fails if it failed.
    fn finish(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + EXIT_WAIT;
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                bail!("{} did not exit after its transfer", self.what);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if !status.success() {
            self.seen.extend(self.lines.try_iter());
            bail!("{} failed ({status}): {}", self.what, self.seen.join("\n"));
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// An rsync daemon on loopback whose module `delta` is `path`, writing as root.
struct Rsyncd {
    port: u16,
    _proc: Proc,
}

impl Rsyncd {
    fn start(path: &Path, scratch: &Path) -> anyhow::Result<Rsyncd> {
        let conf = scratch.join("rsyncd.conf");
        let log = scratch.join("rsyncd.log");
        std::fs::write(
            &conf,
            format!(
                "log file = {}\n[delta]\npath = {}\nuse chroot = no\nread only = no\n\
                 uid = root\ngid = root\n",
                log.display(),
                path.display()
            ),
        )?;
        let port = free_port()?;
        let mut proc = Proc::spawn(
            Command::new("rsync")
                .args(["--daemon", "--no-detach", "--address=127.0.0.1"])
                .arg(format!("--config={}", conf.display()))
                .arg(format!("--port={port}")),
        )?;
        // Listening, as /proc/net/tcp shows it: 127.0.0.1:port, state LISTEN.
        let needle = format!("0100007F:{port:04X} 00000000:0000 0A");
        let deadline = Instant::now() + EXIT_WAIT;
        loop {
            if let Some(s) = proc.child.try_wait()? {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("the rsync daemon exited ({s}): {log}");
            }
            let table = std::fs::read_to_string("/proc/net/tcp")?;
            if table.lines().any(|l| l.contains(&needle)) {
                break;
            }
            if Instant::now() > deadline {
                bail!("the rsync daemon did not listen on port {port}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(Rsyncd { port, _proc: proc })
    }
}

// ---- The report -------------------------------------------------------------------------

struct Part {
    rows: Vec<Row>,
    results: Vec<Vec<Res>>,
}

impl Part {
    fn wall(&self, who: Who) -> Option<f64> {
        let i = self.rows.iter().position(|r| r.who == who)?;
        Some(median(
            &self.results[i].iter().map(|r| r.wall).collect::<Vec<_>>(),
        ))
    }

    fn wire(&self, who: Who) -> Option<f64> {
        let i = self.rows.iter().position(|r| r.who == who)?;
        Some(median(
            &self.results[i]
                .iter()
                .map(|r| r.wire as f64)
                .collect::<Vec<_>>(),
        ))
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "yes"
    } else {
        "**no**"
    }
}

fn mib(bytes: f64) -> String {
    let m = bytes / MIB as f64;
    if m < 10.0 {
        format!("{m:.3}")
    } else {
        format!("{m:.1}")
    }
}

/// What a contender's sends were: zsend's `update` or rsync's literal data, over the runs.
fn sent(results: &[Res]) -> String {
    if let Some(lit) = results
        .iter()
        .map(|r| r.literal)
        .collect::<Option<Vec<u64>>>()
    {
        let lit: Vec<f64> = lit.iter().map(|&l| l as f64).collect();
        return format!("literal data {} MiB", mib(median(&lit)));
    }
    let ups: Vec<&Update> = results.iter().filter_map(|r| r.update.as_ref()).collect();
    if ups.is_empty() {
        return "whole file (no `update`)".into();
    }
    let modes: BTreeSet<&str> = ups.iter().map(|u| u.mode.as_str()).collect();
    let sent: Vec<f64> = ups.iter().map(|u| u.sent as f64).collect();
    let whole = results.len() - ups.len();
    format!(
        "{} of {} pieces ({}){}",
        median(&sent),
        ups[0].pieces,
        modes.into_iter().collect::<Vec<_>>().join(", "),
        match whole {
            0 => String::new(),
            n => format!("; whole file in {n} runs"),
        }
    )
}

fn table(md: &mut String, builds: &[Build], part: &Part) {
    let _ = writeln!(
        md,
        "| contender | median wall (s) | ratio to rsync | compared with | MiB on the wire | sent |"
    );
    let _ = writeln!(md, "|---|---:|---:|---|---:|---|");
    for (row, results) in part.rows.iter().zip(&part.results) {
        let wall = part.wall(row.who).expect("a row");
        let base = part.wall(Who::Rsync(row.against)).expect("rsync row");
        let _ = writeln!(
            md,
            "| {} | {wall:.2} | {:.2}x | {} | {} | {} |",
            label(builds, row.who),
            wall / base,
            row.against.label(),
            mib(part.wire(row.who).expect("a row")),
            sent(results)
        );
    }
    let _ = writeln!(md);
}

fn report(
    o: &Opts,
    builds: &[Build],
    images: &Images,
    rsync_version: &str,
    part1: &Part,
    part2: &Part,
) -> String {
    let mut md = String::new();
    let size = images.size;
    let _ = writeln!(md, "# Delta benchmark\n");
    let _ = writeln!(
        md,
        "Measured with `{}`: one warm-up round, then {} rounds with the contenders of each \
         table alternating (order rotated every round, reversed every other round). Medians. \
         Machine: {}. {rsync_version}.\n",
        o.command,
        o.runs,
        crate::report::machine()
    );
    let _ = writeln!(
        md,
        "Everything goes over loopback to the same disk. Each timed send is preceded by a \
         `sync` and a {:.2} s pause, with the file to send read into the page cache; after it, \
         outside the timing, the destination is hashed (SHA-256) and must equal the version \
         sent, then dropped from the page cache (`POSIX_FADV_DONTNEED`), so that every send \
         finds its old file on disk. zsend's wall time runs from its start to its exit (zrecv, \
         already listening, makes the file durable before that); rsync's from the client's \
         start to the end of `sync FILE` after it, against an rsync daemon already running \
         (`use chroot = no`, root). MiB on the wire: the loopback interface's transmitted \
         bytes over the send (/proc/net/dev; both directions, headers included; anything else \
         on loopback at that moment counts too). zsend's `sent` is its own `--json` `update`; \
         rsync's is its `--stats` literal data.\n",
        SETTLE.as_secs_f64() / o.scale as f64
    );
    for b in builds.iter().filter(|b| !b.inplace) {
        let _ = writeln!(
            md,
            "{} has no `--inplace`: its in-place row is missing.\n",
            b.who()
        );
    }
    let names: Vec<String> = builds
        .iter()
        .map(|b| format!("{} ({})", b.who(), b.dir.display()))
        .collect();
    let _ = writeln!(md, "Builds: {}.\n", names.join(", "));

    let _ = writeln!(
        md,
        "## 1. A changed image\n\nA {} MiB image of random data (version A) and version B: \
         {BLOCKS} random {} KiB blocks, {} KiB-aligned, rewritten with random data; they fall \
         in {} distinct 1 MiB pieces. Each contender has a directory of its own, holding A at \
         first (landed by that build's zsend, so that its receiver has its sidecar; copied \
         with A's mtime and synced for rsync), and sends B, then A, then B...: every send \
         rewrites the same {BLOCKS} blocks. The cold receiver's sidecars (`.zrecv-*.pieces`) \
         are deleted before each of its sends. rsync runs `rsync --times --stats [--inplace] \
         SRC rsync://127.0.0.1:PORT/delta/DIR/{NAME}` then `sync DIR/{NAME}`. The last row \
         transfers nothing: it copies its directory's file beside itself with `cp \
         --reflink=auto`, fsyncs the copy and renames it over the file, which is the least \
         any update that builds a new file (zsend's default, rsync's) pays on this \
         filesystem.\n",
        size / MIB,
        BLOCK / 1024,
        BLOCK / 1024,
        images.changed
    );
    table(&mut md, builds, part1);
    let limit = 2 * images.changed * PIECE;
    let _ = writeln!(md, "Targets (issue 17), build under test:\n");
    let _ = writeln!(md, "| target | measured | met |");
    let _ = writeln!(md, "|---|---:|:---:|");
    let ratio =
        |who: Who, r: Rsync| -> Option<f64> { Some(part1.wall(who)? / part1.wall(Who::Rsync(r))?) };
    for (mode, r, what) in [
        (
            Mode::Atomic,
            Rsync::Default,
            "zsend wall ≤ 0.5x rsync default",
        ),
        (
            Mode::Inplace,
            Rsync::Inplace,
            "zsend --inplace wall ≤ 0.5x rsync --inplace",
        ),
    ] {
        match ratio(Who::Zsend { build: 0, mode }, r) {
            Some(x) => {
                let _ = writeln!(md, "| {what} | {x:.2}x | {} |", verdict(x <= 0.5));
            }
            None => {
                let _ = writeln!(md, "| {what} | n/a | n/a |");
            }
        }
    }
    for mode in [Mode::Atomic, Mode::Inplace, Mode::Cold] {
        if let Some(w) = part1.wire(Who::Zsend { build: 0, mode }) {
            let _ = writeln!(
                md,
                "| {} on the wire ≤ 2 x {} changed pieces x 1 MiB = {} MiB | {} MiB | {} |",
                label(builds, Who::Zsend { build: 0, mode }),
                images.changed,
                limit / MIB,
                mib(w),
                verdict(w <= limit as f64)
            );
        }
    }
    let _ = writeln!(md);
    for r in [Rsync::Default, Rsync::Inplace] {
        let i = part1
            .rows
            .iter()
            .position(|row| row.who == Who::Rsync(r))
            .expect("rsync row");
        let least = part1.results[i]
            .iter()
            .filter_map(|x| x.literal)
            .min()
            .unwrap_or(u64::MAX);
        let _ = writeln!(
            md,
            "- {}: the delta was used ({} MiB of literal data at least, of {} MiB): {}",
            r.label(),
            mib(least as f64),
            size / MIB,
            verdict(least < size / 4)
        );
    }
    let _ = writeln!(md);

    let _ = writeln!(
        md,
        "## 2. An unchanged image\n\nThe same directories again, each holding the version last \
         sent to it, which is sent again: zsend to each build's warm receiver (part 1's atomic \
         directory); `rsync --times --checksum` (both ends read the whole file; part 1's \
         rsync default directory, whose mtime equals the source's, so the checksums alone \
         decide); rsync's quick check, size and mtime only, beside it (part 1's rsync \
         --inplace directory).\n"
    );
    table(&mut md, builds, part2);
    let _ = writeln!(md, "| target | measured | met |");
    let _ = writeln!(md, "|---|---:|:---:|");
    let zsend = part2.wall(Who::Zsend {
        build: 0,
        mode: Mode::Atomic,
    });
    let checksum = part2.wall(Who::Rsync(Rsync::Checksum));
    if let (Some(z), Some(c)) = (zsend, checksum) {
        let _ = writeln!(
            md,
            "| zsend wall ≤ 1.0x rsync --checksum | {:.2}x | {} |",
            z / c,
            verdict(z / c <= 1.0)
        );
    }
    let _ = writeln!(md);
    md
}
