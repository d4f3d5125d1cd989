//! Commit order across partitions.
//!
//! Every committed event gets a `seq`, and `seq` order must be commit
//! order: the sinks and the `next_event_seq` record rely on it (a sink's
//! cursor says "everything up to here is written", and a restart numbers
//! on from the last committed `seq`). Partitions prepare their batches
//! side by side — de-duplicate, read unit state, fold, encode — and only
//! then take a [`Ticket`]: a range of sequence numbers, handed out in
//! order. A ticket's holder writes when its turn comes, that is once
//! every earlier ticket is done, and the turn passes on when the ticket is
//! dropped, whatever happened (committed or refused), so a failed commit
//! never holds the others back.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// Hands out sequence numbers and the turns to commit them.
#[derive(Debug)]
pub struct Sequencer {
    state: Mutex<State>,
    turn: Condvar,
}

#[derive(Debug)]
struct State {
    /// The first number not handed out yet.
    next: u64,
    /// Tickets handed out so far: the place of the next one.
    issued: u64,
    /// The place whose turn it is.
    turn: u64,
}

impl Sequencer {
    /// Numbers from `next` on.
    pub fn new(next: u64) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                next,
                issued: 0,
                turn: 0,
            }),
            turn: Condvar::new(),
        })
    }

    /// The next `n` sequence numbers, and a place in the commit order.
    pub fn ticket(self: &Arc<Self>, n: u64) -> Ticket {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let start = state.next;
        state.next += n;
        let place = state.issued;
        state.issued += 1;
        Ticket {
            sequencer: Arc::clone(self),
            place,
            start,
            end: start + n,
        }
    }
}

/// A range of sequence numbers and a place in the commit order.
#[derive(Debug)]
pub struct Ticket {
    sequencer: Arc<Sequencer>,
    /// Place in the commit order (an empty range has one too).
    place: u64,
    start: u64,
    end: u64,
}

impl Ticket {
    /// The first number of the range.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The number after the range.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Waits until every earlier ticket is done.
    pub fn wait_turn(&self) {
        drop(self.turn());
    }

    /// The sequencer's state, once it is this ticket's turn.
    fn turn(&self) -> MutexGuard<'_, State> {
        let s = &self.sequencer;
        let state = s.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.turn
            .wait_while(state, |state| state.turn != self.place)
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Ticket {
    /// Passes the turn on. A ticket dropped before its turn (a refused
    /// batch) waits for it first, so turns pass strictly in order.
    fn drop(&mut self) {
        let mut state = self.turn();
        state.turn = self.place + 1;
        drop(state);
        self.sequencer.turn.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    #[test]
    fn tickets_number_in_order_and_commit_in_that_order_whoever_is_ready_first() {
        let sequencer = Sequencer::new(10);
        let first = sequencer.ticket(3);
        let empty = sequencer.ticket(0);
        let second = sequencer.ticket(2);
        assert_eq!((first.start(), first.end()), (10, 13));
        assert_eq!((empty.start(), empty.end()), (13, 13));
        assert_eq!((second.start(), second.end()), (13, 15));

        let order = Arc::new(Mutex::new(Vec::new()));
        let waiter = {
            let order = Arc::clone(&order);
            std::thread::spawn(move || {
                second.wait_turn();
                order.lock().unwrap().push("second");
            })
        };
        // The empty ticket is dropped (refused) before its turn: it waits
        // for it, then passes it on.
        let refused = std::thread::spawn(move || drop(empty));
        std::thread::sleep(Duration::from_millis(50));
        assert!(order.lock().unwrap().is_empty(), "second waits for first");
        first.wait_turn();
        order.lock().unwrap().push("first");
        drop(first);
        refused.join().unwrap();
        waiter.join().unwrap();
        assert_eq!(*order.lock().unwrap(), ["first", "second"]);
        let next = sequencer.ticket(1);
        next.wait_turn();
        assert_eq!(next.start(), 15);
    }
}
