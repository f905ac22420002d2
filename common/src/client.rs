//! The client side of a connection, used by the sender and by a receiver forwarding along a
//! chain alike: resolving and connecting to `HOST:PORT`, and the handshake (hello, reply, the
//! token proved both ways) that ends in the receiver's accept.

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::auth::{self, Integrity, Role, Token};
use crate::error::SendError;
use crate::watch::Patient;
use crate::wire::{encode_proof, Header, ProtocolError, Reply};

/// Port zrecv listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7350;

/// Longest a sender waits for the first word after its hello (and its proof): a zrecv answers
/// at once, or keeps it told with a keepalive every 0.4 s while it waits for a slot or a name.
/// A peer silent for this long is not a zrecv (an HTTP server waiting for its request, say).
pub const FIRST_WORD: Duration = Duration::from_secs(10);

/// Longest a sender waits for a reply while the receiver keeps it told that it waits: far more
/// than a receiver's `--slot-wait` (30 s by default), but not forever.
pub const MAX_REPLY_WAIT: Duration = Duration::from_secs(600);

/// Turns `HOST:PORT`, `[V6]:PORT`, `HOST` or a bare IP into socket addresses (the default port
/// where none is given).
pub fn resolve(addr: &str) -> Result<Vec<SocketAddr>, SendError> {
    let resolve_err = |reason: String| SendError::Resolve {
        addr: addr.to_owned(),
        reason,
    };
    if let Ok(ip) = addr.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, DEFAULT_PORT)]);
    }
    let bracketed = addr.starts_with('[') && addr.ends_with(']');
    let with_port = if bracketed || !addr.contains(':') {
        format!("{addr}:{DEFAULT_PORT}")
    } else {
        addr.to_owned()
    };
    let addrs: Vec<SocketAddr> = with_port
        .to_socket_addrs()
        .map_err(|e| resolve_err(crate::units::os_reason(&e)))?
        .collect();
    if addrs.is_empty() {
        return Err(resolve_err("no addresses found".into()));
    }
    Ok(addrs)
}

/// Connects to the first address that answers within `timeout`.
pub fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, SendError> {
    let mut last = None;
    for a in resolve(addr)? {
        let attempt = Socket::new(Domain::for_address(a), Type::STREAM, Some(Protocol::TCP))
            .and_then(|s| s.connect_timeout(&a.into(), timeout).map(|()| s));
        match attempt {
            Ok(s) => return Ok(s.into()),
            Err(e) => last = Some((a, e)),
        }
    }
    let (a, error) = last.expect("resolve returns at least one address");
    Err(SendError::Connect {
        addr: a.to_string(),
        error,
    })
}

/// What the receiver's accept brought: an offer to resume, and the key sealing digests.
pub struct Accepted {
    /// The receiver holds this many bytes of the file, and proofs are keyed with this nonce.
    pub resume: Option<(u64, [u8; 32])>,
    /// The receiver holds a file of this name and will take only the pieces that differ.
    pub update: bool,
    /// Seals this connection's digests (none without a token).
    pub integrity: Integrity,
}

/// Sends the hello and waits for the receiver's accept, proving the token both ways when there
/// is one.
pub fn handshake(
    mut stream: &TcpStream,
    header: &Header,
    token: Option<&Token>,
) -> Result<Accepted, SendError> {
    let hello = header.encode_hello();
    let accepted = |reply: Reply, integrity: Integrity| {
        match reply {
        Reply::Accept => Ok(Accepted {
            resume: None,
            update: false,
            integrity,
        }),
        Reply::Update if header.update() => Ok(Accepted {
            resume: None,
            update: true,
            integrity,
        }),
        Reply::Update => Err(SendError::from(ProtocolError::Malformed(
            "an update offer that was not asked for".into(),
        ))),
        Reply::Resume { offset, nonce }
            if header.resumable()
                && offset > 0
                && offset.is_multiple_of(crate::hash::PIECE)
                && offset <= header.size =>
        {
            Ok(Accepted {
                resume: Some((offset, nonce)),
                update: false,
                integrity,
            })
        }
        Reply::Resume { offset, .. } => Err(SendError::from(ProtocolError::Malformed(format!(
            "a resume offer at byte {offset} of {} that was not asked for (or not at a piece boundary)",
            header.size
        )))),
        Reply::Refuse(code, message) => Err(SendError::Refused {
            name: header.name.clone(),
            code,
            message,
        }),
        Reply::Challenge { .. } => {
            Err(ProtocolError::Malformed("a second challenge".into()).into())
        }
    }
    };
    stream
        .write_all(&hello)
        .map_err(net("sending the header"))?;
    let (nonce, proof) = match (read_reply(stream)?, token) {
        (r @ Reply::Refuse(..), _) => return accepted(r, Integrity::none()),
        (r @ (Reply::Accept | Reply::Resume { .. } | Reply::Update), None) => {
            return accepted(r, Integrity::none())
        }
        (Reply::Accept | Reply::Resume { .. } | Reply::Update, Some(_)) => {
            return Err(SendError::Auth(
                "the receiver does not use a token, so it could be anyone; \
                 start zrecv with --token-file too"
                    .into(),
            ))
        }
        (Reply::Challenge { .. }, None) => {
            return Err(SendError::Auth(
                "the receiver requires a token: use --token-file".into(),
            ))
        }
        (Reply::Challenge { nonce, proof }, Some(_)) => (nonce, proof),
    };
    let token = token.expect("matched Some above");
    let ours = header.auth_nonce.expect("a token implies a nonce");
    // Answer even if the receiver's proof is wrong, so that it can say "wrong token" too.
    let receiver_ok = auth::verify(token, Role::Receiver, &ours, &nonce, &hello, &proof);
    let mine = auth::proof(token, Role::Sender, &ours, &nonce, &hello);
    stream
        .write_all(&encode_proof(&mine))
        .map_err(net("sending the proof"))?;
    if !receiver_ok {
        return Err(SendError::Auth(
            "the receiver's proof does not match our token (the tokens differ)".into(),
        ));
    }
    let integrity = Integrity::derive(token, &ours, &nonce, &hello);
    accepted(read_reply(stream)?, integrity)
}

/// Reads the receiver's reply, after the keepalives of a receiver that makes it wait (for a
/// slot, or a name): never [`FIRST_WORD`] (or the connection's read timeout, if shorter)
/// without a byte, and at most [`MAX_REPLY_WAIT`] in all.
fn read_reply(stream: &TcpStream) -> Result<Reply, SendError> {
    let timeout = stream
        .read_timeout()
        .ok()
        .flatten()
        .unwrap_or(Duration::from_secs(60));
    let reply = Reply::read(&mut Patient::new(
        stream,
        MAX_REPLY_WAIT.max(timeout),
        FIRST_WORD.min(timeout),
    ));
    stream
        .set_read_timeout(Some(timeout))
        .map_err(net("configuring the socket"))?;
    Ok(reply?)
}

/// Maps an I/O error on the connection to the network error `during` a step.
pub(crate) fn net(during: &'static str) -> impl Fn(std::io::Error) -> SendError {
    move |error| SendError::Network {
        during: during.into(),
        error,
    }
}
