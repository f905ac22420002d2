//! Shared-token authentication: each side proves it knows the token with an HMAC-SHA256 over
//! fresh nonces from both sides and the exact hello, so the token never crosses the wire and a
//! proof cannot be replayed into another connection or reflected back.

use std::fmt;
use std::io;
use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// Length of each side's nonce.
pub const NONCE_LEN: usize = 32;
/// Length of a proof (an HMAC-SHA256).
pub const PROOF_LEN: usize = 32;

/// The shared secret. Its Debug output never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Vec<u8>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(<{} bytes>)", self.0.len())
    }
}

impl Token {
    /// A token from its bytes; trailing whitespace (a final newline) is not part of it.
    pub fn new(bytes: &[u8]) -> io::Result<Token> {
        let end = bytes
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        if end == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the token is empty",
            ));
        }
        Ok(Token(bytes[..end].to_vec()))
    }

    /// Reads a token file.
    pub fn from_file(path: &Path) -> Result<Token, TokenFileError> {
        std::fs::read(path)
            .and_then(|bytes| Token::new(&bytes))
            .map_err(|error| TokenFileError {
                path: path.to_owned(),
                error,
            })
    }

    /// Reads the token file if one was given.
    pub fn from_optional_file(path: Option<&Path>) -> Result<Option<Token>, TokenFileError> {
        path.map(Token::from_file).transpose()
    }
}

/// A token file that could not be read, or held no token.
#[derive(Debug, thiserror::Error)]
#[error("reading the token file {}: {}", .path.display(), crate::units::os_reason(.error))]
pub struct TokenFileError {
    /// The file.
    pub path: std::path::PathBuf,
    /// Why.
    pub error: io::Error,
}

/// Which side a proof speaks for; the two are never interchangeable.
#[derive(Clone, Copy, Debug)]
pub enum Role {
    /// zsend's proof.
    Sender,
    /// zrecv's proof.
    Receiver,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Sender => b"zsend proof v2\0",
            Role::Receiver => b"zrecv proof v2\0",
        }
    }
}

/// A fresh random nonce from the kernel.
pub fn nonce() -> io::Result<[u8; NONCE_LEN]> {
    let mut n = [0u8; NONCE_LEN];
    let mut filled = 0;
    while filled < n.len() {
        filled += rustix::rand::getrandom(&mut n[filled..], rustix::rand::GetRandomFlags::empty())?;
    }
    Ok(n)
}

fn mac(token: &Token, role: Role, sender: &[u8], receiver: &[u8], hello: &[u8]) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&token.0).expect("HMAC takes any key");
    m.update(role.label());
    m.update(sender);
    m.update(receiver);
    m.update(hello);
    m
}

/// The proof `role` sends for this connection: HMAC-SHA256(token, role label, sender nonce,
/// receiver nonce, hello bytes).
pub fn proof(
    token: &Token,
    role: Role,
    sender_nonce: &[u8; NONCE_LEN],
    receiver_nonce: &[u8; NONCE_LEN],
    hello: &[u8],
) -> [u8; PROOF_LEN] {
    mac(token, role, sender_nonce, receiver_nonce, hello)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks a proof in constant time.
pub fn verify(
    token: &Token,
    role: Role,
    sender_nonce: &[u8; NONCE_LEN],
    receiver_nonce: &[u8; NONCE_LEN],
    hello: &[u8],
    proof: &[u8; PROOF_LEN],
) -> bool {
    mac(token, role, sender_nonce, receiver_nonce, hello)
        .verify_slice(proof)
        .is_ok()
}

/// What a seal covers; each use has its own label, so that no seal can stand in for another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seal {
    /// The sender's digest in a trailer.
    Trailer,
    /// The receiver's digest in a verdict (a single file's, or one file's of a tree).
    Verdict,
    /// A further host's digest in a chain's reports, as relayed by the host before it.
    Hop,
    /// A tree's manifest, whole (its SHA-256 as the digest).
    Manifest,
    /// The receiver's answers to a tree's manifest, whole (likewise).
    Answers,
}

impl Seal {
    fn label(self) -> &'static [u8] {
        match self {
            Seal::Trailer => b"zsend trailer v8\0",
            Seal::Verdict => b"zrecv verdict v8\0",
            Seal::Hop => b"zrecv hop v8\0",
            Seal::Manifest => b"zsend manifest v14\0",
            Seal::Answers => b"zrecv answers v14\0",
        }
    }
}

/// The key that seals a connection's digests when both sides hold a token, so that a man in
/// the middle cannot change the payload and its digest together, nor forge a verdict: derived
/// from the token, both nonces and the exact hello. Without a token there is nothing to seal
/// with, and seals are 32 zero bytes.
#[derive(Clone)]
pub struct Integrity(Option<[u8; 32]>);

impl fmt::Debug for Integrity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(_) => f.write_str("Integrity(keyed)"),
            None => f.write_str("Integrity(none)"),
        }
    }
}

impl Integrity {
    /// No token: digests travel unsealed.
    pub fn none() -> Integrity {
        Integrity(None)
    }

    /// The key of a connection authenticated with `token`: HMAC-SHA256(token,
    /// `"zsend integrity v8\0"` || sender nonce || receiver nonce || hello).
    pub fn derive(
        token: &Token,
        sender_nonce: &[u8; NONCE_LEN],
        receiver_nonce: &[u8; NONCE_LEN],
        hello: &[u8],
    ) -> Integrity {
        let mut m =
            <Hmac<Sha256> as KeyInit>::new_from_slice(&token.0).expect("HMAC takes any key");
        m.update(b"zsend integrity v8\0");
        m.update(sender_nonce);
        m.update(receiver_nonce);
        m.update(hello);
        Integrity(Some(m.finalize().into_bytes().into()))
    }

    /// Whether digests are sealed.
    pub fn keyed(&self) -> bool {
        self.0.is_some()
    }

    fn mac(key: &[u8; 32], what: Seal, index: u32, status: u8, digest: &[u8; 32]) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key");
        m.update(what.label());
        m.update(&index.to_be_bytes());
        m.update(&[status]);
        m.update(digest);
        m
    }

    /// The seal of `digest` used as `what` for entry `index` (0 for a single file; the entry
    /// of a tree; the host's position in a chain's reports) with `status` (the status byte of
    /// a verdict as on the wire; a trailer's kind): HMAC-SHA256(key, label || index || status
    /// || digest), or zeros without a key. Sealing the status too means that no one on the way
    /// can turn a failure into a success while keeping its digest.
    pub fn seal(&self, what: Seal, index: u32, status: u8, digest: &[u8; 32]) -> [u8; 32] {
        match &self.0 {
            Some(key) => Integrity::mac(key, what, index, status, digest)
                .finalize()
                .into_bytes()
                .into(),
            None => [0; 32],
        }
    }

    /// The seal of a whole message, `bytes` as encoded on the wire, as `what`: the seal of
    /// its SHA-256 for index 0 with status 0.
    pub fn seal_message(&self, what: Seal, bytes: &[u8]) -> [u8; 32] {
        self.seal(what, 0, 0, &Sha256::digest(bytes).into())
    }

    /// Whether `seal` is [`seal_message`](Self::seal_message) of the message whose bytes, as
    /// they arrived, have the SHA-256 `digest` (see [`Hashing`]).
    pub fn opens_message(&self, what: Seal, digest: &[u8; 32], seal: &[u8; 32]) -> bool {
        self.opens(what, 0, 0, digest, seal)
    }

    /// Whether `seal` is the seal of `status` and `digest` as `what` for `index` (compared in
    /// constant time); without a key, whether it is all zeros.
    pub fn opens(
        &self,
        what: Seal,
        index: u32,
        status: u8,
        digest: &[u8; 32],
        seal: &[u8; 32],
    ) -> bool {
        match &self.0 {
            Some(key) => Integrity::mac(key, what, index, status, digest)
                .verify_slice(seal)
                .is_ok(),
            None => *seal == [0; 32],
        }
    }
}

/// A reader that keeps the SHA-256 of the bytes read through it: a sealed message is checked
/// over the very bytes that arrived, not over an encoding of what they were read as (a message
/// that is not UTF-8, read lossily, would encode to other bytes).
pub struct Hashing<R> {
    inner: R,
    sha: Sha256,
}

impl<R: io::Read> Hashing<R> {
    pub fn new(inner: R) -> Hashing<R> {
        Hashing {
            inner,
            sha: Sha256::new(),
        }
    }

    /// The SHA-256 of what was read so far.
    pub fn digest(&self) -> [u8; 32] {
        self.sha.clone().finalize().into()
    }
}

impl<R: io::Read> io::Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }
}

/// The proof that a sender holds the first `offset` bytes of a file whose tree root (those
/// bytes taken as a file of their own) is `root`: HMAC-SHA256(receiver's nonce,
/// `"zsend prefix v10\0"` || offset || root). The receiver computes the same over its partial
/// and compares; neither root crosses the wire.
pub fn prefix_proof(nonce: &[u8; NONCE_LEN], offset: u64, root: &[u8; 32]) -> [u8; PROOF_LEN] {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(nonce).expect("HMAC takes any key");
    m.update(b"zsend prefix v10\0");
    m.update(&offset.to_be_bytes());
    m.update(root);
    m.finalize().into_bytes().into()
}

/// Compares two proofs in constant time.
pub fn same_proof(a: &[u8; PROOF_LEN], b: &[u8; PROOF_LEN]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_only_with_the_same_token_role_nonces_and_hello() {
        let t = Token::new(b"s3cret\n").unwrap();
        let (ns, nr) = (nonce().unwrap(), nonce().unwrap());
        assert_ne!(ns, nr);
        let p = proof(&t, Role::Sender, &ns, &nr, b"hello");
        assert!(verify(&t, Role::Sender, &ns, &nr, b"hello", &p));
        let other = Token::new(b"s3cret!").unwrap();
        assert!(!verify(&other, Role::Sender, &ns, &nr, b"hello", &p));
        assert!(
            !verify(&t, Role::Receiver, &ns, &nr, b"hello", &p),
            "no reflection"
        );
        assert!(!verify(&t, Role::Sender, &nr, &ns, b"hello", &p));
        assert!(!verify(&t, Role::Sender, &ns, &nr, b"hellp", &p));
    }

    #[test]
    fn seals_bind_the_key_the_use_the_index_and_the_digest() {
        let t = Token::new(b"s3cret").unwrap();
        let (ns, nr) = (nonce().unwrap(), nonce().unwrap());
        let k = Integrity::derive(&t, &ns, &nr, b"hello");
        let d = [7u8; 32];
        let s = k.seal(Seal::Trailer, 3, 1, &d);
        assert!(k.opens(Seal::Trailer, 3, 1, &d, &s));
        assert!(
            !k.opens(Seal::Trailer, 3, 0, &d, &s),
            "nor another status's"
        );
        assert!(
            !k.opens(Seal::Verdict, 3, 1, &d, &s),
            "a trailer seal is not a verdict's"
        );
        assert!(!k.opens(Seal::Trailer, 4, 1, &d, &s), "nor another entry's");
        assert!(
            !k.opens(Seal::Trailer, 3, 1, &[8; 32], &s),
            "nor another digest's"
        );
        let other = Integrity::derive(&t, &nr, &ns, b"hello");
        assert!(
            !other.opens(Seal::Trailer, 3, 1, &d, &s),
            "nor another connection's"
        );
        assert_eq!(Integrity::none().seal(Seal::Trailer, 3, 1, &d), [0; 32]);
        assert!(Integrity::none().opens(Seal::Trailer, 3, 1, &d, &[0; 32]));
        assert!(!Integrity::none().opens(Seal::Trailer, 3, 1, &d, &s));
    }

    #[test]
    fn prefix_proofs_need_the_nonce_the_offset_and_the_digest() {
        let (n1, n2) = (nonce().unwrap(), nonce().unwrap());
        let p = prefix_proof(&n1, 10, &[1; 32]);
        assert!(same_proof(&p, &prefix_proof(&n1, 10, &[1; 32])));
        assert!(!same_proof(&p, &prefix_proof(&n2, 10, &[1; 32])));
        assert!(!same_proof(&p, &prefix_proof(&n1, 11, &[1; 32])));
        assert!(!same_proof(&p, &prefix_proof(&n1, 10, &[2; 32])));
    }

    #[test]
    fn tokens_ignore_the_final_newline_and_hide_in_debug() {
        assert_eq!(Token::new(b"abc\n").unwrap(), Token::new(b"abc").unwrap());
        assert!(Token::new(b" \n").is_err());
        assert!(!format!("{:?}", Token::new(b"abc").unwrap()).contains("abc"));
    }

    /// A sealed message is checked over the bytes that arrived: answers whose refusal message
    /// is not UTF-8 are read lossily, and their encoding again would not be what was sealed.
    #[test]
    fn a_message_is_sealed_over_the_bytes_as_they_arrived() {
        use crate::wire::Answers;
        let token = Token::new(b"secret").unwrap();
        let key = Integrity::derive(&token, &[1; 32], &[2; 32], b"hello");
        // ZANS, status 0, one answer: 4 (refused) with the message ff fe 58; unkept 0.
        let mut wire = b"ZANS\0\0\0\0\x01\x04\0\x03\xff\xfeX".to_vec();
        wire.extend_from_slice(&[0; 4]);
        let seal = key.seal_message(Seal::Answers, &wire);
        let mut read = Hashing::new(&wire[..]);
        let answers = Answers::read(&mut read, 1).unwrap();
        assert_ne!(answers.encode(), wire, "read lossily");
        assert!(key.opens_message(Seal::Answers, &read.digest(), &seal));
    }
}
