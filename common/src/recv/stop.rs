//! Stopping a receiver: it accepts no more connections, and each transfer in flight ends as if
//! its sender had gone away, so it keeps its partial with the resume record.

use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::sync::Mutex;

use super::Receiver;

/// The connections a receiver is serving, so that stopping it can reach them.
#[derive(Default)]
pub(super) struct Connections {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    stopped: bool,
    next: u64,
    /// A clone of each connection being served.
    open: HashMap<u64, TcpStream>,
}

/// A connection registered while it is served; unregistered on drop.
pub(super) struct Registered<'a> {
    connections: &'a Connections,
    id: Option<u64>,
}

impl Connections {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `stream` for as long as it is served. Once the receiver is stopping, its read
    /// side is shut down at once instead: it was accepted as the receiver stopped.
    pub(super) fn register(&self, stream: &TcpStream) -> Registered<'_> {
        let mut state = self.state();
        if state.stopped {
            let _ = stream.shutdown(Shutdown::Read);
            return Registered {
                connections: self,
                id: None,
            };
        }
        let id = match stream.try_clone() {
            Ok(clone) => {
                let id = state.next;
                state.next += 1;
                state.open.insert(id, clone);
                Some(id)
            }
            Err(e) => {
                // Out of descriptors: served all the same, but a stop cannot interrupt it.
                log::warn!("a connection a stop cannot reach: {e}");
                None
            }
        };
        Registered {
            connections: self,
            id,
        }
    }

    /// Shuts down `how` every connection being served (marking the receiver stopped); returns
    /// how many there are.
    fn shut_down(&self, how: Shutdown) -> usize {
        let mut state = self.state();
        state.stopped = true;
        for stream in state.open.values() {
            // Fails only for a connection the peer already closed.
            let _ = stream.shutdown(how);
        }
        state.open.len()
    }

    pub(super) fn stopped(&self) -> bool {
        self.state().stopped
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.connections.state().open.remove(&id);
        }
    }
}

impl Receiver {
    /// Stops the receiver: it accepts no more connections (a blocked [`Receiver::serve`] or
    /// [`Receiver::serve_once`] returns once the transfers in flight have ended), and the read
    /// side of every connection being served is shut down. Each transfer then reads the end of
    /// its connection as soon as what already arrived is in: it ends as if its sender had gone
    /// away, keeping its partial with the resume record for the next send to resume, or lands
    /// if it had everything. Returns how many connections were being served.
    ///
    /// A sender that keeps the connection's receive queue full (a receiver slower than the
    /// network) keeps its transfer going: see [`Receiver::cut_off`].
    pub fn stop(&self) -> usize {
        let served = self.connections.shut_down(Shutdown::Read);
        // On Linux this makes a blocked accept(2) fail with EINVAL.
        if let Err(e) = rustix::net::shutdown(&self.listener, rustix::net::Shutdown::Read) {
            log::warn!("closing the listening socket: {e}");
        }
        served
    }

    /// After [`Receiver::stop`]: shuts down both directions of every connection still served.
    /// Whatever its sender still sends then resets the connection, so even a transfer whose
    /// sender kept data coming ends, as an interruption, keeping its partial; a transfer that
    /// had read everything lands, but its sender no longer hears the verdict. Returns how many
    /// connections were still served.
    pub fn cut_off(&self) -> usize {
        self.connections.shut_down(Shutdown::Both)
    }

    /// Whether [`Receiver::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.connections.stopped()
    }
}
