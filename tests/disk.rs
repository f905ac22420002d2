//! Full disks: refused up front when the file cannot fit, and handled when the disk fills in
//! the middle. These tests mount a small tmpfs and a small ext2 image (root is required: CI
//! runs as root) and unmount them when done.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::util::*;

fn run(cmd: &[&str]) {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_root() {
    assert!(
        is_root(),
        "these tests mount filesystems and need root (CI runs as root)"
    );
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|v| v.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A mounted filesystem, unmounted on drop.
struct Mount {
    point: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mount {
    fn tmpfs(size: &str) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let point = dir.path().join("mnt");
        std::fs::create_dir(&point).unwrap();
        run(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            point.to_str().unwrap(),
        ]);
        Mount { point, _dir: dir }
    }

    /// An ext2 filesystem (no fallocate, so a full disk shows up in the middle of a write).
    fn ext2(mib: u64) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        run(&["mkfs.ext2", "-q", "-F", img.to_str().unwrap()]);
        let point = dir.path().join("mnt");
        std::fs::create_dir(&point).unwrap();
        run(&[
            "mount",
            "-o",
            "loop",
            img.to_str().unwrap(),
            point.to_str().unwrap(),
        ]);
        Mount { point, _dir: dir }
    }

    /// An ext4 file system of 256 MiB whose disk is a file on `backing` MiB of tmpfs: once
    /// that fills, writing back fails, as on a failing disk. Without a journal, a failed write
    /// does not turn it read-only: it goes on once there is room again.
    fn ext4_on_small_disk(backing: u64, journal: bool) -> OnSmallDisk {
        let disk = Mount::tmpfs(&format!("{backing}m"));
        let img = disk.point.join("fs.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(256 << 20)
            .unwrap();
        let lazy = "lazy_itable_init=1,lazy_journal_init=1";
        let features = if journal {
            "has_journal"
        } else {
            "^has_journal"
        };
        let img = img.to_str().unwrap();
        run(&["mkfs.ext4", "-q", "-F", "-O", features, "-E", lazy, img]);
        let dir = tempfile::tempdir().unwrap();
        let point = dir.path().join("mnt");
        std::fs::create_dir(&point).unwrap();
        // noinit_itable: nothing zeroes the inode tables behind the test's back.
        let at = point.to_str().unwrap();
        run(&["mount", "-o", "loop,noinit_itable,errors=continue", img, at]);
        OnSmallDisk {
            fs: Mount { point, _dir: dir },
            disk,
        }
    }

    fn files(&self) -> Vec<String> {
        entries(&self.point)
            .into_iter()
            .filter(|e| e != "lost+found")
            .collect()
    }
}

impl Drop for Mount {
    /// Unmounts; a tmpfs holding a loop device's file stays busy until the kernel has let go
    /// of the device (after the unmount above it, asynchronously): tried again for a while,
    /// then detached lazily.
    fn drop(&mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let umount = |lazy: bool| {
            let mut cmd = Command::new("umount");
            if lazy {
                cmd.arg("-l");
            }
            cmd.arg(&self.point).stderr(Stdio::null()).status()
        };
        while !umount(false).is_ok_and(|s| s.success()) {
            if std::time::Instant::now() > deadline {
                let _ = umount(true);
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

fn fill(dir: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let block = vec![0u8; 1 << 20];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
}

#[test]
fn a_file_that_cannot_fit_is_refused_before_any_data_moves() {
    assert_root();
    let mnt = Mount::tmpfs("4m");
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("big.img");
    random_file(&path, 8 << 20, 81);
    let mut rx = Zrecv::start(&mnt.point, &["--once"]);
    let out = zsend(&[&rx.addr(), path.to_str().unwrap(), "--json"]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    let want = format!(
        "not enough space on {}: need 8.0 MiB, have 4.0 MiB",
        mnt.point.display()
    );
    assert!(err.contains(&want), "{err}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ok"], false);
    assert_eq!(rx.wait().code(), Some(4));
    assert!(mnt.files().is_empty(), "{:?}", mnt.files());
}

/// Sends `path` to `rx` through a proxy that pauses once `at` bytes have crossed; while it is
/// paused (the space check has passed), someone else fills the disk. Returns zsend's output.
fn fill_while_sending(mnt: &Mount, rx: &Zrecv, path: &Path, at: u64) -> std::process::Output {
    let proxy = Proxy::start(rx.addr, Fault::PauseAt(at));
    let sender = Command::new(zsend_bin())
        .args([&proxy.addr(), path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    proxy.stalled.recv_timeout(PROCESS_TIMEOUT).unwrap();
    fill(&mnt.point);
    proxy.release();
    wait_output(sender)
}

#[test]
fn a_disk_that_fills_mid_transfer_fails_cleanly_on_both_sides() {
    assert_root();
    let mnt = Mount::ext2(32);
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("big.img");
    random_file(&path, 16 << 20, 82);
    let mut rx = Zrecv::start(&mnt.point, &["--once"]);
    let out = fill_while_sending(&mnt, &rx, &path, payload_offset("big.img", 1 << 20));
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(err.contains("no space left on device"), "{err}");
    // Both ends say the same: the file could not land.
    assert_eq!(rx.wait().code(), Some(7), "{}", rx.stderr());
    assert!(
        rx.stderr().contains("no space left on device"),
        "{}",
        rx.stderr()
    );
    assert_eq!(
        mnt.files(),
        vec!["filler"],
        "the temporary file was removed"
    );
}

#[test]
fn a_disk_that_fills_during_a_tree_ends_it_and_the_sender_says_why() {
    assert_root();
    let mnt = Mount::ext2(32);
    let src = tempfile::tempdir().unwrap();
    let top = src.path().join("tree");
    std::fs::create_dir(&top).unwrap();
    for i in 0..8 {
        random_file(&top.join(format!("f{i}")), 1 << 20, 90 + i);
    }
    let mut rx = Zrecv::start(&mnt.point, &["--once"]);
    // Inside the third file: the manifest is a few hundred bytes.
    let out = fill_while_sending(&mnt, &rx, &top, (2 << 20) + (1 << 19));
    let err = stderr_of(&out);
    // As for a single file: the receiver failed to land it, and why.
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(err.contains("receiver failed to land tree/f"), "{err}");
    assert!(err.contains("no space left on device"), "{err}");
    // Both ends say the same: the file could not land.
    assert_eq!(rx.wait().code(), Some(7), "{}", rx.stderr());
    // The tree is not published; what landed stays hidden, for the same tree sent again, and
    // the file that failed left nothing.
    assert!(!mnt.point.join("tree").exists());
    let left: Vec<String> = entries(&stage_dir(&mnt.point))
        .into_iter()
        .filter(|n| n.starts_with(".zrecv"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

/// The same with large files: the receiver fails while a file's payload is still arriving, and
/// its verdict for that file, which comes before the file's last byte went out, is still read
/// as the reason the tree ended (it was once refused as a verdict too early, leaving only
/// "broken pipe").
#[test]
fn a_disk_that_fills_before_a_large_file_of_a_tree_says_why() {
    assert_root();
    let mnt = Mount::ext2(64);
    let src = tempfile::tempdir().unwrap();
    let top = src.path().join("tree");
    std::fs::create_dir(&top).unwrap();
    random_file(&top.join("f0"), 8 << 20, 95);
    random_file(&top.join("f1"), 40 << 20, 96);
    let mut rx = Zrecv::start(&mnt.point, &["--once"]);
    // A MiB into the second file, which is far larger than what the sockets hold: the
    // receiver fails while the sender is still sending it.
    let out = fill_while_sending(&mnt, &rx, &top, 9 << 20);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(err.contains("receiver failed to land tree/f"), "{err}");
    assert!(err.contains("no space left on device"), "{err}");
    // Both ends say the same: the file could not land.
    assert_eq!(rx.wait().code(), Some(7), "{}", rx.stderr());
}

/// A file system and the tmpfs its disk image is on: unmounted in that order (fields drop in
/// the order they are declared).
struct OnSmallDisk {
    fs: Mount,
    disk: Mount,
}

/// A loop device attached to an image, detached on drop.
struct Loop {
    dev: String,
}

impl Loop {
    fn attach(image: &Path) -> Loop {
        let out = Command::new("losetup")
            .args(["--find", "--show", "--read-only"])
            .arg(image)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop {
            dev: String::from_utf8(out.stdout).unwrap().trim().to_owned(),
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

#[test]
fn a_block_device_is_sent_with_its_full_size() {
    assert_root();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let image = src.path().join("disk.raw");
    random_file(&image, (20 << 20) + 4096, 83);
    let dev = Loop::attach(&image);
    let base = Path::new(&dev.dev)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();

    let mut rx = Zrecv::start(dst.path(), &["--once"]);
    let out = zsend(&[&rx.addr(), &dev.dev, "--json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(rx.wait().success(), "{}", rx.stderr());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["bytes"], (20 << 20) + 4096);
    assert_eq!(json["zero_copy"], true, "sendfile reads block devices");
    assert_eq!(sha256_file(&dst.path().join(&base)), sha256_file(&image));

    let mut rx = Zrecv::start(dst.path(), &["--once"]);
    let out = zsend(&[&rx.addr(), &dev.dev, "--name", "vm-disk.img"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(rx.wait().success());
    assert_eq!(
        sha256_file(&dst.path().join("vm-disk.img")),
        sha256_file(&image)
    );
}

/// tests/helpers/failfs.py mounted over a directory: a FUSE pass-through whose fsync fails.
struct FailingSyncFs {
    child: std::process::Child,
    point: PathBuf,
    _dir: tempfile::TempDir,
}

impl FailingSyncFs {
    fn mount() -> FailingSyncFs {
        let dir = tempfile::tempdir().unwrap();
        let (root, point) = (dir.path().join("root"), dir.path().join("mnt"));
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir(&point).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helpers/failfs.py");
        let child = Command::new("/usr/bin/python3")
            .arg(script)
            .args([&root, &point])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("Debian's python3 with python3-fusepy (scripts/test installs it)");
        let mut fs = FailingSyncFs {
            child,
            point,
            _dir: dir,
        };
        // Wait for the mount to appear (bounded), or for the helper to fail.
        let needle = format!(" {} fuse", fs.point.display());
        let deadline = std::time::Instant::now() + PROCESS_TIMEOUT;
        while !std::fs::read_to_string("/proc/mounts")
            .unwrap()
            .contains(&needle)
        {
            if fs.child.try_wait().unwrap().is_some() {
                let mut err = String::new();
                let _ = std::io::Read::read_to_string(fs.child.stderr.as_mut().unwrap(), &mut err);
                panic!("failfs exited: {err}");
            }
            assert!(std::time::Instant::now() < deadline, "failfs never mounted");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        fs
    }
}

impl Drop for FailingSyncFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.point).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_fsync_error_is_reported_and_nothing_is_published() {
    assert_root();
    let fs = FailingSyncFs::mount();
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("sync.img");
    random_file(&path, 3 << 20, 84);
    let mut rx = Zrecv::start(&fs.point, &["--once"]);
    let out = zsend(&[&rx.addr(), path.to_str().unwrap()]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(
        err.contains("receiver failed to land sync.img: syncing the data"),
        "{err}"
    );
    assert!(err.contains("input/output error"), "{err}");
    // Both ends say the same: the file could not land.
    assert_eq!(rx.wait().code(), Some(7), "{}", rx.stderr());
    assert!(entries(&fs.point).is_empty(), "{:?}", entries(&fs.point));
}

/// A write-back error (ext4 on a disk that runs out under it) reaches the syncfs that makes a
/// tree durable: no file of it is said to have landed, the tree is not published, and both
/// ends exit 9 with the reason.
#[test]
fn a_tree_whose_data_cannot_be_written_back_is_not_published() {
    assert_root();
    let disk = Mount::ext4_on_small_disk(16, true);
    let fs = &disk.fs;
    let src = tempfile::tempdir().unwrap();
    let top = src.path().join("t");
    std::fs::create_dir(&top).unwrap();
    for i in 0..12 {
        random_file(&top.join(format!("f{i:02}")), 4 << 20, 90 + i);
    }
    let mut rx = Zrecv::start(&fs.point, &["--once"]);
    let out = zsend(&[&rx.addr(), top.to_str().unwrap(), "--json"]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(9), "{err}");
    // The kernel reports the loop device's failed writes as EIO or ENOSPC.
    assert!(err.contains("syncing the received files"), "{err}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["landed"], 0, "{json}");
    // Every file; and the directory too when the journal gave up before its mtime was set.
    let failed: Vec<&str> = json["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        failed.iter().filter(|p| p.starts_with("t/")).count(),
        12,
        "{json}"
    );
    assert!(
        failed.iter().all(|p| p.starts_with("t/") || *p == "t"),
        "{json}"
    );
    assert_eq!(rx.wait().code(), Some(9), "{}", rx.stderr());
    assert!(!fs.point.join("t").exists(), "{:?}", fs.files());
}

/// A disk that is nearly full under an ext4 without a journal (`taken` of its 96 MiB filled),
/// and a 64 MiB file of random bytes to send to it.
struct NearlyFull {
    small: OnSmallDisk,
    filler: PathBuf,
    _src: tempfile::TempDir,
    big: PathBuf,
}

impl NearlyFull {
    fn new(taken_mib: usize, seed: u64) -> NearlyFull {
        let small = Mount::ext4_on_small_disk(96, false);
        let filler = small.disk.point.join("filler");
        std::fs::write(&filler, vec![1u8; taken_mib << 20]).unwrap();
        let src = tempfile::tempdir().unwrap();
        let big = src.path().join("big.img");
        random_file(&big, 64 << 20, seed);
        NearlyFull {
            small,
            filler,
            _src: src,
            big,
        }
    }

    /// Starts sending the file to `rx` through a proxy that pauses at byte `at` of the
    /// stream, and returns once it has.
    fn send_paused(&self, rx: &Zrecv, at: u64) -> (Proxy, std::process::Child) {
        let proxy = Proxy::start(rx.addr, Fault::PauseAt(at));
        let sender = Command::new(zsend_bin())
            .args([&proxy.addr(), self.big.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        proxy.stalled.recv_timeout(PROCESS_TIMEOUT).unwrap();
        (proxy, sender)
    }
}

/// A write-back error that a wait along a large file's way took the report of fails the file:
/// the kernel reports it once per open file, so the final fsync would pass it. The disk runs
/// out under the first windows written back, then has room again (the filler removed) for the
/// last ones, which reach it; the failed pages stay readable in the page cache, so the
/// digests still agree.
#[test]
fn a_large_file_whose_early_write_back_failed_is_not_published() {
    assert_root();
    // 88 of the tmpfs's 96 MiB taken: the image's first writes fill the rest.
    let disk = NearlyFull::new(88, 86);
    let mut rx = Zrecv::start(&disk.small.fs.point, &["--once"]);
    // Past the wait for the first two windows of 16 MiB, which comes as the fourth starts.
    let (proxy, sender) = disk.send_paused(&rx, 52 << 20);
    std::fs::remove_file(&disk.filler).unwrap();
    proxy.release();
    let out = wait_output(sender);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(err.contains("writing the data back"), "{err}");
    assert_eq!(rx.wait().code(), Some(7), "{}", rx.stderr());
    let files = disk.small.fs.files();
    assert!(files.is_empty(), "{files:?}");
}

/// A transfer interrupted while its partial could not be written back keeps no partial: the
/// sync that records the partial takes the kernel's one report of the failure, and the bytes
/// may be in the page cache only, where a resume's proof would find them. The interruption
/// comes before any wait along the way could take the report (the first is at 32 MiB).
#[test]
fn an_interrupted_transfer_whose_write_back_failed_keeps_no_partial() {
    assert_root();
    // 90 of the tmpfs's 96 MiB taken: the first 16 MiB written back cannot all reach it.
    let disk = NearlyFull::new(90, 87);
    let rx = Zrecv::start(&disk.small.fs.point, &[]);
    let (proxy, mut sender) = disk.send_paused(&rx, payload_offset("big.img", 24 << 20));
    sender.kill().unwrap();
    sender.wait().unwrap();
    proxy.release();
    drop(proxy);
    let line = rx.wait_for_line("big.img from");
    assert!(line.contains("sender closed after"), "{line}");
    assert!(
        rx.stderr().contains("keeping the partial big.img: "),
        "{}",
        rx.stderr()
    );
    let files = disk.small.fs.files();
    assert!(files.is_empty(), "{files:?}");
}

/// A mount point inside a tree merged into one here: a batch's syncfs reaches only the receive
/// directory's file system, so each file landing beyond it is fsynced on its own, and its
/// directory after the rename (strace counts the fsyncs: none before).
#[test]
fn files_landing_beyond_a_mount_point_in_the_tree_are_synced_on_their_own() {
    assert_root();
    let dst = tempfile::tempdir().unwrap();
    let media = dst.path().join("site/media");
    std::fs::create_dir_all(&media).unwrap();
    run(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "size=8m",
        "tmpfs",
        media.to_str().unwrap(),
    ]);
    let _mounted = Unmount(media.clone());
    let src = tempfile::tempdir().unwrap();
    let top = src.path().join("site");
    std::fs::create_dir_all(top.join("media")).unwrap();
    let names = ["a.jpg", "b.jpg", "c.jpg"];
    for n in names {
        std::fs::write(top.join("media").join(n), n).unwrap();
    }
    std::fs::write(top.join("index.html"), b"<html>").unwrap();
    let trace = src.path().join("fsyncs");
    let wrapper = [
        "strace",
        "-f",
        "-qq",
        "-e",
        "trace=fsync",
        "-o",
        trace.to_str().unwrap(),
    ];
    let mut rx = Zrecv::start_with(Some(&wrapper), dst.path(), "127.0.0.1:0", &["--once"]);
    let out = zsend(&[&rx.addr(), top.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(rx.wait().success(), "{}", rx.stderr());
    for n in names {
        assert_eq!(std::fs::read(media.join(n)).unwrap(), n.as_bytes());
    }
    let trace = std::fs::read_to_string(&trace).unwrap();
    let fsyncs = trace.lines().filter(|l| l.contains("fsync(")).count();
    assert!(fsyncs > names.len(), "{trace}");
}

/// Unmounts a path on drop.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A tree refused for space leaves nothing behind: not its directories (made before the space
/// was counted), nor the links made in them; so a later send of the tree lands as its source
/// is, not into leftovers closed to everyone but root.
#[test]
fn a_tree_refused_for_space_leaves_nothing_behind() {
    use std::os::unix::fs::PermissionsExt;
    assert_root();
    let mnt = Mount::tmpfs("4m");
    let src = tempfile::tempdir().unwrap();
    let top = src.path().join("site");
    std::fs::create_dir_all(top.join("assets/img")).unwrap();
    std::os::unix::fs::symlink("img", top.join("assets/pictures")).unwrap();
    random_file(&top.join("assets/img/huge.bin"), 8 << 20, 85);
    std::fs::write(top.join("index.html"), b"<html>").unwrap();
    for d in [&top, &top.join("assets"), &top.join("assets/img")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut rx = Zrecv::start(&mnt.point, &[]);
    let out = zsend(&[&rx.addr(), top.to_str().unwrap(), "--links"]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("not enough space"), "{err}");
    assert!(mnt.files().is_empty(), "{:?}", mnt.files());

    std::fs::remove_file(top.join("assets/img/huge.bin")).unwrap();
    let out = zsend(&[&rx.addr(), top.to_str().unwrap(), "--links"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    for d in ["site", "site/assets", "site/assets/img"] {
        let mode = std::fs::metadata(mnt.point.join(d))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755, "{d}");
    }
    rx.child.kill().unwrap();
    let _ = rx.wait();
}

/// A directory that would not take its attributes (an ext2 whose blocks cannot hold a 16 KiB
/// one) used to be logged on the receiver alone while both ends said all was well: it is now
/// failed, named on both ends, and both exit 9; the file in it lands.
#[test]
fn a_directory_that_will_not_take_its_attributes_fails_aloud() {
    assert_root();
    let src = Mount::tmpfs("8m");
    let top = src.point.join("top");
    std::fs::create_dir_all(top.join("sub")).unwrap();
    std::fs::write(top.join("sub/f"), b"lands all the same").unwrap();
    let big = vec![b'x'; 16_000];
    let flags = rustix::fs::XattrFlags::empty();
    rustix::fs::setxattr(top.join("sub"), "user.big", &big, flags).unwrap();
    let dst = Mount::ext2(16);
    let mut rx = Zrecv::start(&dst.point, &["--once"]);
    let out = zsend(&[&rx.addr(), top.to_str().unwrap(), "-X", "--json"]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(9), "{err}");
    assert!(
        err.contains("top/sub: setting the directory's metadata: setting user.big"),
        "{err}"
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (json["landed"].as_u64(), json["failed"].as_u64()),
        (Some(1), Some(1)),
        "{json}"
    );
    assert_eq!(rx.wait().code(), Some(9), "{}", rx.stderr());
    let landed = std::fs::read(dst.point.join("top/sub/f")).unwrap();
    assert_eq!(landed, b"lands all the same");
}

/// Each single-file transfer makes its rename durable through a description of the receive
/// directory it opened itself, never the one every transfer shares: a sync reports a
/// write-back error once per open description, so another transfer's sync could have taken
/// the report meant for this one (strace: the fsync after each rename is of a directory
/// opened after that transfer's connection was accepted).
#[test]
fn a_single_file_syncs_its_directory_through_a_description_of_its_own() {
    let dst = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let trace = src.path().join("trace");
    let wrapper = [
        "strace",
        "-f",
        "-qq",
        "-e",
        "trace=accept4,openat,renameat,renameat2,fsync",
        "-o",
        trace.to_str().unwrap(),
    ];
    let rx = Zrecv::start_with(Some(&wrapper), dst.path(), "127.0.0.1:0", &[]);
    for (name, seed) in [("one.bin", 1), ("two.bin", 2)] {
        random_file(&src.path().join(name), 100_000, seed);
        let out = zsend(&[&rx.addr(), src.path().join(name).to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr_of(&out));
    }
    // Ends zrecv, then strace.
    drop(rx);
    let trace = std::fs::read_to_string(&trace).unwrap();
    // The number a call returned, and its first argument.
    let returned = |l: &str| {
        l.rsplit_once(" = ")
            .and_then(|(_, r)| r.trim().parse::<i32>().ok())
    };
    let first_arg = |l: &str| {
        let args = l.split_once('(')?.1;
        args.split([',', ')']).next()?.trim().parse::<i32>().ok()
    };
    let (mut own, mut after_rename, mut checked) = (Vec::new(), false, 0);
    for l in trace.lines() {
        if l.contains("accept4(") {
            own.clear();
        } else if l.contains("openat(") && l.contains(", \".\", ") && l.contains("O_DIRECTORY") {
            own.extend(returned(l));
        } else if l.contains("renameat")
            && returned(l) == Some(0)
            && (l.contains("one.bin") || l.contains("two.bin"))
        {
            after_rename = true;
        } else if l.contains("fsync(") && after_rename {
            let fd = first_arg(l).unwrap();
            assert!(
                own.contains(&fd),
                "fsync({fd}) of a shared description:\n{trace}"
            );
            (after_rename, checked) = (false, checked + 1);
        }
    }
    assert_eq!(checked, 2, "{trace}");
}
