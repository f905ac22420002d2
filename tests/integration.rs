//! Integration tests: the real zsend and zrecv binaries over real loopback sockets.

mod auth;
mod beneath;
mod chain;
mod digest;
mod disk;
mod display;
mod docs;
mod exit_codes;
mod faults;
mod fidelity;
mod hostile;
mod hostile_receiver;
mod layers;
mod newcomer;
mod resume;
mod service;
mod signals;
mod sparse;
mod stream;
mod sweep;
mod timeouts;
mod transfer;
mod tree;
mod update;
mod util;
mod zero_copy;
