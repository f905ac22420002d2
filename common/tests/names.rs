//! Property test against a real receiver on a real socket: whatever name a sender claims,
//! nothing is created outside the destination directory, and every accepted name lands as a
//! single file directly inside it.

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use sha2::{Digest, Sha256};
use zcommon::{validate_name, Header, Receiver, ReceiverConfig, Reply, Status, Trailer, Verdict};

/// Every path below `root`, relative to it.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
            out.push(rel);
        }
    }
    out.sort();
    out
}

/// Raw bytes as a name, for the hostile cases the type system would otherwise stop.
fn hello_with_raw_name(name: &[u8]) -> Vec<u8> {
    let mut bytes = Header::new("x", 3).encode_hello();
    let at = zcommon::PREAMBLE_LEN + zcommon::HEADER_FIXED_LEN;
    bytes.truncate(at);
    bytes.extend_from_slice(name);
    let body = (zcommon::HEADER_FIXED_LEN + name.len()) as u32;
    bytes[6..10].copy_from_slice(&body.to_be_bytes());
    bytes[at - 2..at].copy_from_slice(&(name.len() as u16).to_be_bytes());
    bytes
}

fn names() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Path-like pieces, dots and separators.
        proptest::collection::vec(
            prop_oneof![
                Just(b"..".to_vec()),
                Just(b".".to_vec()),
                Just(b"/".to_vec()),
                Just(b"a".to_vec()),
                Just(b"..cache".to_vec()),
                Just(b"etc".to_vec()),
                Just(vec![0u8]),
                Just(b"\x1b[2J".to_vec()),
                Just(b"\n".to_vec()),
                Just("é".as_bytes().to_vec()),
            ],
            1..8
        )
        .prop_map(|parts| parts.concat()),
        // Arbitrary bytes, including invalid UTF-8.
        proptest::collection::vec(any::<u8>(), 0..40),
        // Long names around the limit.
        (250usize..262).prop_map(|n| vec![b'L'; n]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn no_name_escapes_the_destination(raw in names()) {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("dest");
        std::fs::create_dir(&dir).unwrap();
        let config = ReceiverConfig {
            dir: dir.clone(),
            force: false,
            timeout: Duration::from_secs(10),
            max_transfers: 4,
            slot_wait: Duration::from_secs(10),
            to_stdout: false,
            token: None,
            allow_forward: Vec::new(),
            trust_links: false,
            preserve_privileged: false,
            rehash: false,
        };
        let receiver = Receiver::bind("127.0.0.1:0".parse().unwrap(), config).unwrap();
        let addr = receiver.local_addr().unwrap();
        let server = std::thread::spawn(move || receiver.serve_once().unwrap());

        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&hello_with_raw_name(&raw)).unwrap();
        let reply = Reply::read(&mut s).unwrap();
        let valid = std::str::from_utf8(&raw).ok().filter(|n| validate_name(n).is_ok());
        match (&reply, valid) {
            (Reply::Accept, Some(name)) => {
                s.write_all(b"abc").unwrap();
                let digest: [u8; 32] = Sha256::digest(b"abc").into();
                s.write_all(&Trailer::unsealed(Some(digest)).encode()).unwrap();
                let v = Verdict::read(&mut s).unwrap();
                prop_assert_eq!(v.status, Status::Landed);
                prop_assert_eq!(std::fs::read(dir.join(name)).unwrap(), b"abc");
                prop_assert_eq!(tree(root.path()), vec!["dest".to_owned(), format!("dest/{name}")]);
            }
            (Reply::Refuse(..), None) => {
                prop_assert_eq!(tree(root.path()), vec!["dest".to_owned()]);
            }
            (reply, valid) => prop_assert!(false, "{:?} for {:?} (valid: {:?})", reply, raw, valid),
        }
        drop(s);
        server.join().unwrap();
    }
}

#[test]
fn dotted_names_that_are_not_dot_dot_are_accepted() {
    for n in ["..cache", "a..b", ".hidden", "...", "x."] {
        assert_eq!(validate_name(n), Ok(()), "{n}");
    }
}
