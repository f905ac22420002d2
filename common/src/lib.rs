//! zcommon: the protocol, zero-copy data path and transfer logic behind `zsend` and `zrecv`.
//!
//! The binaries are thin: they parse arguments, call [`send_file`] or [`Receiver`], and print.
//!
//! ```no_run
//! use std::time::Duration;
//! use zcommon::{Receiver, ReceiverConfig, send_file, SendOptions};
//!
//! let config = ReceiverConfig {
//!     dir: "/srv/incoming".into(),
//!     force: false,
//!     timeout: Duration::from_secs(60),
//!     max_transfers: 16,
//!     slot_wait: Duration::from_secs(30),
//!     to_stdout: false,
//!     token: None,
//!     allow_forward: Vec::new(),
//!     trust_links: false,
//!     preserve_privileged: false,
//!     rehash: false,
//! };
//! let receiver = Receiver::bind("127.0.0.1:0".parse()?, config)?;
//! let addr = receiver.local_addr()?.to_string();
//! std::thread::spawn(move || receiver.serve_once());
//! let report = send_file(&addr, "disk.img".as_ref(), &SendOptions::default(), &mut |_| {})?;
//! assert!(report.verified);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod auth;
mod client;
mod error;
mod exit;
mod hash;
mod links;
mod logging;
mod meta;
mod name;
mod recv;
mod roots;
mod send;
mod stages;
mod sys;
pub mod torrent;
mod units;
mod watch;
mod wire;

pub use crate::auth::{prefix_proof, Integrity, Seal, Token};
pub use crate::client::{connect, resolve, DEFAULT_PORT, FIRST_WORD};
pub use crate::error::{RecvError, SendError};
pub use crate::exit::ExitStatus;
pub use crate::hash::{
    layer_of_file, root_of as tree_root, root_of_file, set_threads as set_hash_threads, sha256_of,
    threads as hash_threads, Watermark, PIECE,
};
pub use crate::links::{LinkError, LinkJudge, Resolution, MAX_LINK_HOPS};
pub use crate::logging::init_logging;
pub use crate::name::{validate_name, Escaped, NameError, MAX_NAME_LEN, TEMP_PREFIX};
pub use crate::recv::{
    kept_partials, parse_age, remove_partial, sweep_interval, Age, KeptPartial, Swept,
};
pub use crate::recv::{
    parse_listen_addr, parse_network, Receiver, ReceiverConfig, TransferRecord, TreeCounts,
    UpdateCounts,
};
pub use crate::send::{
    hop_landed, send_file, send_stdin, send_tree, source_size, Keep, Phase, SendOptions,
    SendReport, Tick, TreeOptions, TreeReport, UpdateReport,
};
pub use crate::stages::StageTimes;
pub use crate::units::{os_reason, Bytes};
pub use crate::watch::KEEPALIVE_EVERY;
pub use crate::wire::{
    align_hops, check_chain, decode_everything, encode_hops, encode_proof, read_hello, read_hops,
    AfterTrailer, Header, HopReport, PrefixProof, Record, RefuseCode, Reply, Status, Trailer,
    Verdict, FLAG_AUTH, FLAG_CHAIN, FLAG_NO_VERIFY, FLAG_RESUME, FLAG_SPARSE, FLAG_STREAM,
    FLAG_TREE, HEADER_FIXED_LEN, KEEPALIVE, KEPT_MODE, MAX_HEADER_LEN, MAX_HOPS, PREAMBLE_LEN,
    RESTART, SOURCE_ID_LEN, TRAILER_LEN, VERSION,
};
pub use crate::wire::{
    encode_layer, encode_repair, pieces_of, read_layer, Needed, FLAG_INPLACE, FLAG_REPAIR,
    FLAG_UPDATE, MAX_REPAIR_ROUNDS,
};
pub use crate::wire::{
    Answer, Answers, Entry, FileStatus, Frame, Kind, Manifest, ProtocolError, Report, MAX_ENTRIES,
    MAX_HOP_LEN, MAX_MANIFEST_TEXT, MAX_MESSAGE_LEN, MAX_PATH_LEN,
};
pub use ipnet::IpNet;
