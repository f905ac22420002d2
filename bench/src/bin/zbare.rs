//! zbare: the zero-copy ceiling. sendfile into a socket, splice from the socket through a pipe
//! into a file, fsync; no protocol, no hashing, nothing else.
//!
//! `zbare recv ADDR FILE` prints `listening on ADDR` on stderr, takes one connection and
//! writes until EOF; `zbare send ADDR FILE` sends the whole file and closes.

use std::fs::File;
use std::net::{TcpListener, TcpStream};

use anyhow::{bail, Context};
use rustix::pipe::{self, PipeFlags, SpliceFlags};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1..) {
        Some([mode, addr, file]) if mode == "send" => send(addr, file),
        Some([mode, addr, file]) if mode == "recv" => recv(addr, file),
        _ => bail!("usage: zbare send|recv ADDR FILE"),
    }
}

fn send(addr: &str, path: &str) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| path.to_owned())?;
    let len = file.metadata()?.len();
    let sock = TcpStream::connect(addr).with_context(|| addr.to_owned())?;
    let mut off = 0u64;
    while off < len {
        let want = (len - off).min(1 << 30) as usize;
        let n = rustix::fs::sendfile(&sock, &file, Some(&mut off), want)?;
        if n == 0 {
            bail!("file shrank");
        }
    }
    Ok(())
}

fn recv(addr: &str, path: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)?;
    eprintln!("listening on {}", listener.local_addr()?);
    let (sock, _) = listener.accept()?;
    let file = File::create(path).with_context(|| path.to_owned())?;
    let (r, w) = pipe::pipe_with(PipeFlags::CLOEXEC)?;
    let cap = pipe::fcntl_setpipe_size(&w, 1 << 20).unwrap_or(1 << 16);
    let mut off = 0u64;
    loop {
        let n = pipe::splice(&sock, None, &w, None, cap, SpliceFlags::MORE)?;
        if n == 0 {
            break;
        }
        let mut left = n;
        while left > 0 {
            left -= pipe::splice(&r, None, &file, Some(&mut off), left, SpliceFlags::empty())?;
        }
    }
    file.sync_all()?;
    Ok(())
}
