//! Shared-token authentication: each side proves it knows the token with an HMAC-SHA256 over
//! fresh nonces from both sides and the exact hello, so the token never crosses the wire and a
//! proof cannot be replayed into another connection or reflected back.

use std::fmt;
use std::io;
use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

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
    fn tokens_ignore_the_final_newline_and_hide_in_debug() {
        assert_eq!(Token::new(b"abc\n").unwrap(), Token::new(b"abc").unwrap());
        assert!(Token::new(b" \n").is_err());
        assert!(!format!("{:?}", Token::new(b"abc").unwrap()).contains("abc"));
    }
}
