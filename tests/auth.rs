//! Tokens: both sides prove they hold the same secret, refusals are clear on both sides, and
//! the secret never crosses the wire.

use std::io::Write;

use zcommon::{RefuseCode, Reply};

use crate::hostile::{connect, header};
use crate::util::*;

const TOKEN: &str = "correct horse battery staple 7f3a";

fn token_file(dir: &std::path::Path, name: &str, token: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("{token}\n")).unwrap();
    p.to_str().unwrap().to_owned()
}

fn source(dir: &std::path::Path) -> String {
    let p = dir.join("a.img");
    random_file(&p, 3 << 20, 31);
    p.to_str().unwrap().to_owned()
}

#[test]
fn the_same_token_on_both_sides_lands_and_never_crosses_the_wire() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let tok = token_file(src.path(), "token", TOKEN);
    let file = source(src.path());
    let mut rx = Zrecv::start(dst.path(), &["--once", "--token-file", &tok]);
    let proxy = Proxy::start(rx.addr, Fault::None);
    let out = zsend(&[&proxy.addr(), &file, "--token-file", &tok]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(rx.wait().success(), "{}", rx.stderr());
    assert_eq!(
        sha256_file(&dst.path().join("a.img")),
        sha256_file(file.as_ref())
    );
    let wire = proxy.recorded();
    assert!(wire.len() >= 1 << 20, "the proxy saw the transfer");
    let needle = TOKEN.as_bytes();
    assert!(
        !wire.windows(needle.len()).any(|w| w == needle),
        "token on the wire"
    );
}

#[test]
fn the_token_file_can_come_from_the_environment() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let tok = token_file(src.path(), "token", TOKEN);
    let file = source(src.path());
    // Through env(1), so that no other test's processes see the variable.
    let var = format!("ZSEND_TOKEN_FILE={tok}");
    let env = ["env", var.as_str()];
    let mut rx = Zrecv::start_with(Some(&env), dst.path(), "127.0.0.1:0", &["--once"]);
    let out = zsend_with(Some(&env), &[&rx.addr(), &file]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(rx.wait().success(), "{}", rx.stderr());
    // And the receiver really demanded it: without, the same sender is refused.
    let mut rx = Zrecv::start_with(Some(&env), dst.path(), "127.0.0.1:0", &["--once"]);
    let out = zsend(&[&rx.addr(), &file, "--name", "b.img"]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr_of(&out));
    assert_eq!(rx.wait().code(), Some(8));
}

#[test]
fn a_missing_token_is_refused_before_the_destination_is_looked_at() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let tok = token_file(src.path(), "token", TOKEN);
    let file = source(src.path());
    // Without the token the answer is about the token, not about this existing file.
    std::fs::write(dst.path().join("a.img"), b"old").unwrap();
    let mut rx = Zrecv::start(dst.path(), &["--once", "--token-file", &tok]);
    let out = zsend(&[&rx.addr(), &file]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(8), "{err}");
    assert!(err.contains("requires a token"), "{err}");
    assert_eq!(rx.wait().code(), Some(8));
    assert!(
        rx.stderr().contains("authentication failed"),
        "{}",
        rx.stderr()
    );
    assert_eq!(entries(dst.path()), vec!["a.img"]);
    assert_eq!(std::fs::read(dst.path().join("a.img")).unwrap(), b"old");
}

#[test]
fn a_wrong_token_is_named_on_both_sides() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let good = token_file(src.path(), "good", TOKEN);
    let bad = token_file(src.path(), "bad", "not the token");
    let file = source(src.path());
    let mut rx = Zrecv::start(dst.path(), &["--once", "--token-file", &good]);
    let out = zsend(&[&rx.addr(), &file, "--token-file", &bad]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(8), "{err}");
    assert!(err.contains("authentication failed"), "{err}");
    assert_eq!(rx.wait().code(), Some(8));
    assert!(rx.stderr().contains("wrong token"), "{}", rx.stderr());
    assert!(entries(dst.path()).is_empty());
}

#[test]
fn a_sender_with_a_token_will_not_talk_to_a_receiver_without_one() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let tok = token_file(src.path(), "token", TOKEN);
    let file = source(src.path());
    let mut rx = Zrecv::start(dst.path(), &["--once"]);
    let out = zsend(&[&rx.addr(), &file, "--token-file", &tok]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(8), "{err}");
    assert!(err.contains("does not use a token"), "{err}");
    assert_ne!(rx.wait().code(), Some(0));
    assert!(entries(dst.path()).is_empty());
}

#[test]
fn a_forged_proof_is_refused() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let tok = token_file(src.path(), "token", TOKEN);
    let rx = Zrecv::start(dst.path(), &["--token-file", &tok]);
    let mut h = header("forged.bin", 10);
    h.auth_nonce = Some([7; 32]);
    let mut s = connect(&rx);
    s.write_all(&h.encode_hello()).unwrap();
    assert!(matches!(
        Reply::read(&mut s).unwrap(),
        Reply::Challenge { .. }
    ));
    s.write_all(&zcommon::encode_proof(&[0; 32])).unwrap();
    match Reply::read(&mut s).unwrap() {
        Reply::Refuse(RefuseCode::Auth, msg) => assert!(msg.contains("wrong token"), "{msg}"),
        other => panic!("{other:?}"),
    }
    rx.wait_for_line("authentication failed");
    assert!(entries(dst.path()).is_empty());
}

#[test]
fn an_open_receiver_on_a_public_address_warns() {
    let dst = tempfile::tempdir().unwrap();
    // Even with -q.
    let open = Zrecv::start_with(None, dst.path(), "0.0.0.0:0", &["-q"]);
    open.wait_for_line("anyone who can reach");

    let src = tempfile::tempdir().unwrap();
    let tok = token_file(src.path(), "token", TOKEN);
    let mut guarded = Zrecv::start_with(
        None,
        dst.path(),
        "0.0.0.0:0",
        &["--once", "--token-file", &tok],
    );
    let mut loopback = Zrecv::start(dst.path(), &["--once"]);
    // Make each print its line for a transfer, then check nothing came before it.
    let file = source(src.path());
    let out = zsend(&[
        &guarded.addr(),
        &file,
        "--token-file",
        &tok,
        "--name",
        "g.img",
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let out = zsend(&[&loopback.addr(), &file, "--name", "l.img"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    guarded.wait();
    loopback.wait();
    assert!(
        !guarded.stderr().contains("anyone who can reach"),
        "{}",
        guarded.stderr()
    );
    assert!(
        !loopback.stderr().contains("anyone who can reach"),
        "{}",
        loopback.stderr()
    );
}

/// A man in the middle who changes a payload byte and rewrites the trailer's tree root to match
/// lands his file on a receiver without a token (the digest guards against accidents, not
/// attacks); with a token the digest is sealed with a key only the two ends hold, and the
/// receiver discards the file.
#[test]
fn with_a_token_a_man_in_the_middle_cannot_change_payload_and_digest_together() {
    let src = tempfile::tempdir().unwrap();
    let tok = token_file(src.path(), "token", TOKEN);
    let path = src.path().join("m.bin");
    // Small enough to be hashed at once: no keepalive comes before the trailer.
    let size = 512 * 1024u64;
    random_file(&path, size, 33);
    let mut content = std::fs::read(&path).unwrap();
    let at = 1000u64;
    content[at as usize] ^= 1;
    let forged = zcommon::tree_root(&content);
    for token in [false, true] {
        let dst = tempfile::tempdir().unwrap();
        let with: &[&str] = if token { &["--token-file", &tok] } else { &[] };
        let mut rx = Zrecv::start(dst.path(), &[&["--once"], with].concat());
        // Where the payload starts: the hello (with a nonce when there is a token), then the
        // sender's proof.
        let start = payload_offset("m.bin", 0) + if token { 32 + 36 } else { 0 };
        let digest_at = start + size + 5;
        let mut edits = vec![(start + at, content[at as usize])];
        edits.extend((0..32).map(|k| (digest_at + k, forged[k as usize])));
        let proxy = Proxy::start(rx.addr, Fault::Rewrite(edits));
        let out = zsend(&[&[&proxy.addr(), path.to_str().unwrap()], with].concat());
        let err = stderr_of(&out);
        let landed = dst.path().join("m.bin");
        if token {
            assert_eq!(out.status.code(), Some(5), "{err}");
            assert_eq!(rx.wait().code(), Some(5));
            assert!(
                rx.stderr().contains("seal does not match"),
                "{}",
                rx.stderr()
            );
            assert!(entries(dst.path()).is_empty(), "{:?}", entries(dst.path()));
        } else {
            // The attack itself works: the receiver kept the forged content (the sender, whose
            // digest differs from the verdict's, still says it failed).
            assert_eq!(out.status.code(), Some(5), "{err}");
            assert!(rx.wait().success(), "{}", rx.stderr());
            assert_eq!(std::fs::read(&landed).unwrap(), content);
        }
    }
}

/// A man in the middle who swaps two names in a tree's manifest makes each file's content land
/// under the other's name on a receiver without a token (the files' digests say nothing of
/// their names); with a token the manifest is sealed, the receiver refuses it before it makes
/// anything, and nothing lands.
#[test]
fn with_a_token_a_man_in_the_middle_cannot_rewrite_a_trees_manifest() {
    let src = tempfile::tempdir().unwrap();
    let tok = token_file(src.path(), "token", TOKEN);
    let top = src.path().join("top");
    std::fs::create_dir(&top).unwrap();
    std::fs::write(top.join("a.sh"), b"echo harmless\n").unwrap();
    std::fs::write(top.join("b.sh"), b"echo dangerous\n").unwrap();
    for token in [false, true] {
        let with: &[&str] = if token { &["--token-file", &tok] } else { &[] };
        let send = |fault: Fault| {
            let dst = tempfile::tempdir().unwrap();
            let rx = Zrecv::start(dst.path(), &[&["--once"], with].concat());
            let proxy = Proxy::start(rx.addr, fault);
            let out = zsend(&[&[&proxy.addr(), top.to_str().unwrap()], with].concat());
            (dst, rx, proxy, out)
        };
        // Where the two names are on the wire: the manifest follows the hello (with a nonce
        // when there is a token, then the sender's proof), and its encoding is the same in
        // every run; the recording interleaves both ways, so places are taken from its magic.
        let (_, _, proxy, out) = send(Fault::None);
        assert!(out.status.success(), "{}", stderr_of(&out));
        let wire = proxy.recorded();
        let find = |what: &[u8]| wire.windows(what.len()).position(|w| w == what).unwrap();
        let manifest = (zcommon::PREAMBLE_LEN + zcommon::HEADER_FIXED_LEN + "top".len()) as u64
            + if token { 32 + 36 } else { 0 };
        let at = |name: &[u8]| manifest + (find(name) - find(b"ZMAN") + name.len() - 4) as u64;
        let edits = vec![(at(b"top/a.sh"), b'b'), (at(b"top/b.sh"), b'a')];
        let (dst, mut rx, _proxy, out) = send(Fault::Rewrite(edits));
        let err = stderr_of(&out);
        if token {
            assert!(!out.status.success(), "{err}");
            assert!(err.contains("seal does not match"), "{err}");
            assert!(!rx.wait().success());
            assert!(entries(dst.path()).is_empty(), "{:?}", entries(dst.path()));
        } else {
            // The attack itself works.
            assert!(rx.wait().success(), "{}", rx.stderr());
            let a = std::fs::read(dst.path().join("top/a.sh")).unwrap();
            assert_eq!(a, b"echo dangerous\n");
        }
    }
}
