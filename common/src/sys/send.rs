//! Into a socket: the sendfile(2) loop, and the read/write fallback for sources it cannot take.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use rustix::io::Errno;

use super::stall::{Call, Stall, Watch};
use super::{is_unsupported, CopyError};

/// Most bytes one sendfile(2) call moves (see sendfile(2) NOTES).
pub const MAX_SENDFILE: usize = 0x7fff_f000;

/// Buffer size of the read/write fallbacks.
pub(super) const FALLBACK_BUF: usize = 256 * 1024;

/// Sends `len` bytes of `file` starting at `*offset` into `sock` with sendfile(2), `chunk` bytes
/// a call at most. Returns the bytes sent, fewer than `len` only if the file ended early.
/// Fails with a timeout once the socket has taken nothing for its send timeout ([`Stall`]).
pub fn sendfile_all(
    sock: impl AsFd,
    file: impl AsFd,
    offset: &mut u64,
    len: u64,
    chunk: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, CopyError> {
    let chunk = chunk.clamp(1, MAX_SENDFILE);
    let mut watch = Watch::new(sock.as_fd(), len > chunk as u64);
    let mut sent = 0u64;
    while sent < len {
        let want = (len - sent).min(chunk as u64) as usize;
        let call = match rustix::fs::sendfile(&sock, &file, Some(offset), want) {
            Ok(0) => break,
            Ok(n) => {
                sent += n as u64;
                progress(n as u64);
                match n < want {
                    true => Call::Short,
                    false => Call::Full,
                }
            }
            Err(Errno::INTR) => continue,
            Err(e) if sent == 0 && is_unsupported(e) => return Err(CopyError::Unsupported),
            Err(Errno::AGAIN) => Call::Empty,
            // sendfile reports errors of both sides; a socket error is the common one.
            Err(e) => return Err(CopyError::Write(e.into())),
        };
        watch.after(call).map_err(CopyError::Write)?;
    }
    Ok(sent)
}

/// Fallback for sources sendfile cannot read: pread into a buffer, write to the socket.
/// Fails with a timeout once the socket has taken nothing for its send timeout ([`Stall`]).
pub fn read_write_all(
    mut sock: impl Write + AsFd,
    file: &File,
    offset: &mut u64,
    len: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; FALLBACK_BUF];
    let mut stall = Stall::of(&sock);
    let mut sent = 0u64;
    while sent < len {
        let want = (len - sent).min(buf.len() as u64) as usize;
        let n = match file.read_at(&mut buf[..want], *offset) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        let written = match stall.as_mut() {
            Some(stall) => stall.send_all(&sock, &buf[..n]),
            None => sock.write_all(&buf[..n]),
        };
        written.map_err(CopyError::Write)?;
        *offset += n as u64;
        sent += n as u64;
        progress(n as u64);
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::tests::pattern;
    use std::io::Read;
    use std::net::TcpStream;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    #[test]
    fn sendfile_from_a_pipe_is_unsupported_and_read_write_takes_over() {
        // procfs seq files cannot feed sendfile at an offset: the kernel says EINVAL.
        let status = File::open("/proc/self/status").unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        let mut off = 0;
        let got = sendfile_all(&a, &status, &mut off, 10, 4, &mut |_| {});
        assert!(matches!(got, Err(CopyError::Unsupported)), "{got:?}");

        let data = pattern(700_000);
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&data).unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        let reader = std::thread::spawn(move || {
            let mut v = Vec::new();
            b.read_to_end(&mut v).unwrap();
            v
        });
        let mut off = 0;
        let mut seen = 0;
        let sent = read_write_all(&a, &f, &mut off, data.len() as u64, &mut |n| seen += n).unwrap();
        drop(a);
        assert_eq!(sent, data.len() as u64);
        assert_eq!(seen, sent);
        assert_eq!(reader.join().unwrap(), data);
    }

    /// Sends a 256 MiB file into a loopback connection with a send timeout of `limit`, whose
    /// reading end takes 64 KiB every 300 ms for `slow` rounds (a slow peer), then stops
    /// reading but stays open. `copy` must fail with a timeout, and not before the peer
    /// stopped; returns how long after it stopped.
    fn give_up_time(
        limit: Duration,
        slow: usize,
        copy: impl FnOnce(&TcpStream, &File) -> Result<u64, CopyError>,
    ) -> Duration {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let writer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut reader, _) = listener.accept().unwrap();
        writer.set_write_timeout(Some(limit)).unwrap();
        let file = tempfile::tempfile().unwrap();
        file.set_len(256 << 20).unwrap();
        let (stopped_tx, stopped) = std::sync::mpsc::channel();
        let (done, wait_done) = std::sync::mpsc::channel::<()>();
        let peer = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            for _ in 0..slow {
                reader.read_exact(&mut buf).unwrap();
                // Pacing the slow peer, not synchronisation.
                std::thread::sleep(Duration::from_millis(300));
            }
            stopped_tx.send(Instant::now()).unwrap();
            // Open until the copy gave up.
            let _ = wait_done.recv_timeout(Duration::from_secs(60));
        });
        let got = copy(&writer, &file);
        let gave_up = Instant::now();
        drop(done);
        peer.join().unwrap();
        let stopped = stopped
            .try_recv()
            .expect("gave up while the peer was still reading");
        match got {
            Err(CopyError::Write(e)) => {
                assert_eq!(
                    crate::units::os_reason(&e),
                    "timed out waiting for the peer"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(writer.write_timeout().unwrap(), Some(limit), "restored");
        gave_up - stopped
    }

    // The send timeout is the longest a copy waits with nothing moving: a correctness bound,
    // not a performance threshold. Before, a stopped peer held these copies three to four
    // times the timeout.
    #[test]
    fn sendfile_waits_for_a_slow_peer_and_gives_up_on_a_stopped_one() {
        let limit = Duration::from_secs(1);
        let send = |sock: &TcpStream, file: &File| {
            sendfile_all(sock, file, &mut 0, 256 << 20, 4 << 20, &mut |_| {})
        };
        let took = give_up_time(limit, 6, send);
        assert!(took < limit * 2, "took {took:?}");
        // One call, as for a file of one chunk: the timeout is sliced only once a call comes
        // back short or empty, and that one may have waited up to twice the timeout.
        let send_one = |sock: &TcpStream, file: &File| {
            sendfile_all(sock, file, &mut 0, 64 << 20, 64 << 20, &mut |_| {})
        };
        let took = give_up_time(limit, 6, send_one);
        assert!(took < limit * 4, "took {took:?}");
    }

    #[test]
    fn read_write_waits_for_a_slow_peer_and_gives_up_on_a_stopped_one() {
        let limit = Duration::from_secs(1);
        let send = |sock: &TcpStream, file: &File| {
            read_write_all(sock, file, &mut 0, 256 << 20, &mut |_| {})
        };
        let took = give_up_time(limit, 6, send);
        assert!(took < limit * 2, "took {took:?}");
        let took = give_up_time(limit, 0, send);
        assert!(took < limit * 2, "took {took:?}");
    }

    #[test]
    fn sendfile_stops_at_the_end_of_a_short_file() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&pattern(1000)).unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut off = 0;
        let sent = sendfile_all(&a, &f, &mut off, 5000, 300, &mut |_| {}).unwrap();
        drop(a);
        assert_eq!(sent, 1000);
        let mut v = Vec::new();
        b.read_to_end(&mut v).unwrap();
        assert_eq!(v, pattern(1000));
    }
}
