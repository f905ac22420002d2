//! The transfers a receiver serves at once (`--max-transfers`), and the senders that wait for a
//! free slot: each at most `--slot-wait`, at most [`MAX_WAITING`] at once, so a burst of senders
//! is served in turn instead of being turned away.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::watch::KEEPALIVE_EVERY;

/// Most senders waiting for a slot at once; more are refused as busy at once.
pub(super) const MAX_WAITING: usize = 256;

/// How often a waiting sender looks whether the receiver is stopping.
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// The slots, and the senders waiting for one.
pub(super) struct Slots {
    max: usize,
    state: Mutex<State>,
    freed: Condvar,
}

#[derive(Default)]
struct State {
    active: usize,
    waiting: usize,
}

/// A slot held by a transfer; freed on drop.
pub(super) struct Slot<'a> {
    slots: &'a Slots,
}

/// A sender's place in the queue for a slot; leaves it on drop.
pub(super) struct Waiter<'a> {
    slots: &'a Slots,
}

impl Slots {
    pub(super) fn new(max: usize) -> Slots {
        Slots {
            max: max.max(1),
            state: Mutex::new(State::default()),
            freed: Condvar::new(),
        }
    }

    /// The most transfers served at once.
    pub(super) fn max(&self) -> usize {
        self.max
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A free slot now, if there is one (and nobody is waiting for it already).
    pub(super) fn try_take(&self) -> Option<Slot<'_>> {
        let mut state = self.lock();
        if state.active >= self.max || state.waiting > 0 {
            return None;
        }
        state.active += 1;
        Some(Slot { slots: self })
    }

    /// A place in the queue, unless [`MAX_WAITING`] senders wait already.
    pub(super) fn queue(&self) -> Option<Waiter<'_>> {
        let mut state = self.lock();
        if state.waiting >= MAX_WAITING {
            return None;
        }
        state.waiting += 1;
        Some(Waiter { slots: self })
    }
}

impl<'a> Waiter<'a> {
    /// Waits for a slot until `deadline`, or until `stopped` says the receiver is stopping;
    /// calls `tell` every [`KEEPALIVE_EVERY`] meanwhile (the sender is told it is still
    /// waited for), and gives up when it says the sender is gone.
    pub(super) fn wait(
        self,
        deadline: Instant,
        stopped: impl Fn() -> bool,
        mut tell: impl FnMut() -> bool,
    ) -> Option<Slot<'a>> {
        let slots = self.slots;
        let mut state = slots.lock();
        let mut told = Instant::now();
        loop {
            if state.active < slots.max {
                state.active += 1;
                return Some(Slot { slots });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || stopped() {
                return None;
            }
            if told.elapsed() >= KEEPALIVE_EVERY {
                told = Instant::now();
                if !tell() {
                    return None;
                }
            }
            state = slots
                .freed
                .wait_timeout(state, left.min(LOOK_EVERY))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.slots.lock().waiting -= 1;
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.slots.lock().active -= 1;
        self.slots.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiter_gets_the_slot_freed_and_none_past_its_deadline() {
        let slots = Slots::new(1);
        let held = slots.try_take().unwrap();
        assert!(slots.try_take().is_none());
        let soon = Instant::now();
        assert!(slots
            .queue()
            .unwrap()
            .wait(soon, || false, || true)
            .is_none());
        std::thread::scope(|s| {
            let waiter = slots.queue().unwrap();
            let got = s.spawn(move || {
                waiter
                    .wait(Instant::now() + Duration::from_secs(60), || false, || true)
                    .is_some()
            });
            drop(held);
            assert!(got.join().unwrap());
        });
        // Everything was given back.
        assert!(slots.try_take().is_some());
    }

    #[test]
    fn a_stop_ends_the_wait() {
        let slots = Slots::new(1);
        let _held = slots.try_take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        assert!(slots
            .queue()
            .unwrap()
            .wait(deadline, || true, || true)
            .is_none());
    }

    #[test]
    fn the_queue_is_bounded() {
        let slots = Slots::new(1);
        let waiters: Vec<_> = (0..MAX_WAITING).map(|_| slots.queue().unwrap()).collect();
        assert!(slots.queue().is_none());
        drop(waiters);
        assert!(slots.queue().is_some());
    }
}
