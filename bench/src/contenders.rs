//! The contenders: how each moves the source file over loopback TCP into a durable file.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};

use crate::measure::{free_port, wait_listening, Timed, Usage};

/// One way of moving the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Contender {
    /// zsend -> zrecv, durable; SHA-256 on both ends unless `verify` is false. `build` names
    /// another build of zsend and zrecv (a directory) to compare against this one.
    Zsend {
        verify: bool,
        build: Option<(String, PathBuf)>,
    },
    /// nc -> nc, then `sync FILE`.
    Nc,
    /// nc with SHA-256 on both ends while streaming (tee into openssl), then `sync FILE`.
    NcSha,
    /// cp on the same disk, then `sync FILE`: the single-machine limit.
    Cp,
    /// zbare: sendfile -> socket -> splice -> file, fsync; no protocol, no hashing.
    Bare,
}

/// zsend -> zrecv, verified, from the build under test.
pub const ZSEND: Contender = Contender::Zsend {
    verify: true,
    build: None,
};
/// zsend --no-verify -> zrecv, from the build under test.
pub const ZSEND_NO_VERIFY: Contender = Contender::Zsend {
    verify: false,
    build: None,
};

/// Every standard contender, in report order.
pub fn all() -> Vec<Contender> {
    vec![
        ZSEND,
        ZSEND_NO_VERIFY,
        Contender::Nc,
        Contender::NcSha,
        Contender::Cp,
        Contender::Bare,
    ]
}

impl Contender {
    pub fn label(&self) -> String {
        match self {
            Contender::Zsend { verify, build } => {
                let who = match build {
                    Some((name, _)) => format!("zsend [{name}]"),
                    None => "zsend".into(),
                };
                if *verify {
                    format!("{who} -> zrecv (verified)")
                } else {
                    format!("{who} --no-verify -> zrecv")
                }
            }
            Contender::Nc => "nc -> nc, sync".into(),
            Contender::NcSha => "nc + sha256 both ends, sync".into(),
            Contender::Cp => "cp, sync (same disk)".into(),
            Contender::Bare => "bare sendfile/splice (ceiling)".into(),
        }
    }

    pub fn key(&self) -> &'static str {
        match self {
            Contender::Zsend { verify: true, .. } => "zsend",
            Contender::Zsend { verify: false, .. } => "zsend-no-verify",
            Contender::Nc => "nc",
            Contender::NcSha => "nc-sha256",
            Contender::Cp => "cp",
            Contender::Bare => "bare",
        }
    }

    pub fn from_key(key: &str) -> Option<Contender> {
        all().into_iter().find(|c| c.key() == key)
    }
}

/// Where things are.
pub struct Env {
    /// Directory holding zsend, zrecv and zbare.
    pub bin: PathBuf,
    /// The file to move.
    pub src: PathBuf,
    /// Where it lands (emptied after every trial).
    pub out: PathBuf,
    /// Usage files, fifos and captured output.
    pub scratch: PathBuf,
}

/// CPU per stage, from zsend's and zrecv's --json.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stages {
    pub sendfile: f64,
    pub send_hash: f64,
    pub splice_in: f64,
    pub splice_file: f64,
    pub recv_hash: f64,
    pub fsync: f64,
}

/// One measured trial.
#[derive(Clone, Copy, Debug)]
pub struct Trial {
    pub wall: f64,
    pub send: Usage,
    pub recv: Usage,
    pub stages: Option<Stages>,
}

fn s(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| p.to_string()).collect()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 paths")
}

impl Env {
    fn bin(&self, name: &str) -> String {
        path(&self.bin.join(name)).to_owned()
    }

    fn bin_in(dir: &Path, name: &str) -> String {
        path(&dir.join(name)).to_owned()
    }

    /// Runs one trial of `c` and checks that the whole file landed.
    pub fn run(&self, c: &Contender) -> anyhow::Result<Trial> {
        let out_file = self.out.join("out.bin");
        let trial = match c {
            Contender::Zsend { verify, build } => {
                let bin = build.as_ref().map_or(&self.bin, |(_, dir)| dir);
                self.zsend(bin, *verify)?
            }
            Contender::Nc => self.nc(&out_file)?,
            Contender::NcSha => self.nc_sha(&out_file)?,
            Contender::Cp => self.cp(&out_file)?,
            Contender::Bare => self.bare(&out_file)?,
        };
        let want = std::fs::metadata(&self.src)?.len();
        let got = std::fs::metadata(&out_file).map(|m| m.len()).unwrap_or(0);
        if got != want {
            bail!("{}: landed {got} of {want} bytes", c.label());
        }
        for e in std::fs::read_dir(&self.out)? {
            std::fs::remove_file(e?.path())?;
        }
        Ok(trial)
    }

    /// Starts a receiver, then times from the sender's start until both have exited.
    fn pair(
        &self,
        recv: Vec<String>,
        ready: Ready,
        send: impl FnOnce(&str) -> Vec<String>,
    ) -> anyhow::Result<(Trial, String, String)> {
        let mut rx = Timed::start(&recv, &self.scratch, "recv")?;
        let addr = match ready {
            Ready::Line => rx.listening_addr()?.to_string(),
            Ready::Port(p) => {
                wait_listening(p)?;
                format!("127.0.0.1:{p}")
            }
        };
        let start = Instant::now();
        let tx = Timed::start(&send(&addr), &self.scratch, "send")?;
        let (send_usage, send_out) = tx.finish()?;
        let (recv_usage, recv_out) = rx.finish()?;
        let trial = Trial {
            wall: start.elapsed().as_secs_f64(),
            send: send_usage,
            recv: recv_usage,
            stages: None,
        };
        Ok((trial, send_out, recv_out))
    }

    fn zsend(&self, bin: &Path, verify: bool) -> anyhow::Result<Trial> {
        let recv = vec![
            Env::bin_in(bin, "zrecv"),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--dir".into(),
            path(&self.out).into(),
            "--once".into(),
            "--json".into(),
        ];
        let (mut trial, send_out, recv_out) = self.pair(recv, Ready::Line, |addr| {
            let mut v = vec![
                Env::bin_in(bin, "zsend"),
                addr.to_owned(),
                path(&self.src).into(),
                "--name".into(),
                "out.bin".into(),
                "--json".into(),
                "-q".into(),
            ];
            if !verify {
                v.push("--no-verify".into());
            }
            v
        })?;
        let sj: serde_json::Value =
            serde_json::from_str(send_out.trim()).context("zsend --json")?;
        let rj: serde_json::Value =
            serde_json::from_str(recv_out.trim()).context("zrecv --json")?;
        if sj["ok"] != true || rj["ok"] != true || (verify && sj["verified"] != true) {
            bail!("zsend did not land verified: {sj} {rj}");
        }
        let f = |v: &serde_json::Value, k: &str| v["stages"][k].as_f64().unwrap_or(0.0);
        trial.stages = Some(Stages {
            sendfile: f(&sj, "network_cpu_s"),
            send_hash: f(&sj, "hash_cpu_s"),
            splice_in: f(&rj, "network_cpu_s"),
            splice_file: f(&rj, "file_cpu_s"),
            recv_hash: f(&rj, "hash_cpu_s"),
            fsync: f(&rj, "fsync_s"),
        });
        Ok(trial)
    }

    fn nc(&self, out: &Path) -> anyhow::Result<Trial> {
        let port = free_port()?;
        let recv = s(&[
            "sh",
            "-c",
            &format!(
                "nc -l 127.0.0.1 {port} > '{o}' && sync '{o}'",
                o = path(out)
            ),
        ]);
        let src = path(&self.src).to_owned();
        let (trial, ..) = self.pair(recv, Ready::Port(port), |_| {
            s(&["sh", "-c", &format!("nc -N 127.0.0.1 {port} < '{src}'")])
        })?;
        Ok(trial)
    }

    /// The best equal-guarantee pipeline from stock tools: both ends hash while streaming.
    fn nc_sha(&self, out: &Path) -> anyhow::Result<Trial> {
        let port = free_port()?;
        let o = path(out);
        let sums = path(&self.scratch);
        let recv = s(&[
            "bash",
            "-c",
            &format!(
                "set -o pipefail; nc -l 127.0.0.1 {port} | tee '{o}' | openssl dgst -sha256 -r \
                 > '{sums}/recv.sha' && sync '{o}'"
            ),
        ]);
        let src = path(&self.src).to_owned();
        let fifo = self.scratch.join("sha.fifo");
        let _ = std::fs::remove_file(&fifo);
        let fifo = path(&fifo).to_owned();
        let (trial, ..) = self.pair(recv, Ready::Port(port), |_| {
            s(&[
                "bash",
                "-c",
                &format!(
                    "set -o pipefail; mkfifo '{fifo}'; \
                     openssl dgst -sha256 -r < '{fifo}' > '{sums}/send.sha' & \
                     tee '{fifo}' < '{src}' | nc -N 127.0.0.1 {port}; rc=$?; wait; exit $rc"
                ),
            ])
        })?;
        let a = std::fs::read_to_string(self.scratch.join("send.sha"))?;
        let b = std::fs::read_to_string(self.scratch.join("recv.sha"))?;
        let digest = |t: &str| t.split_whitespace().next().unwrap_or("").to_owned();
        if digest(&a).is_empty() || digest(&a) != digest(&b) {
            bail!("nc + sha256: digests differ: {a:?} {b:?}");
        }
        Ok(trial)
    }

    fn cp(&self, out: &Path) -> anyhow::Result<Trial> {
        let argv = s(&[
            "sh",
            "-c",
            &format!(
                "cp '{}' '{o}' && sync '{o}'",
                path(&self.src),
                o = path(out)
            ),
        ]);
        let start = Instant::now();
        let (usage, _) = Timed::start(&argv, &self.scratch, "cp")?.finish()?;
        Ok(Trial {
            wall: start.elapsed().as_secs_f64(),
            send: Usage::default(),
            recv: usage,
            stages: None,
        })
    }

    fn bare(&self, out: &Path) -> anyhow::Result<Trial> {
        let recv = vec![
            self.bin("zbare"),
            "recv".into(),
            "127.0.0.1:0".into(),
            path(out).into(),
        ];
        let (trial, ..) = self.pair(recv, Ready::Line, |addr| {
            vec![
                self.bin("zbare"),
                "send".into(),
                addr.into(),
                path(&self.src).into(),
            ]
        })?;
        Ok(trial)
    }
}

/// How to know a receiver is ready.
enum Ready {
    /// It prints `listening on ADDR`.
    Line,
    /// It listens on this port and says nothing.
    Port(u16),
}
