//! Group commit: many threads ask for durability, one sync round serves
//! every request made before the round began.

use crate::error::Result;
use parking_lot::{Condvar, Mutex};

#[derive(Default)]
struct RoundState {
    /// Tickets handed out so far.
    requested: u64,
    /// Every ticket up to this one is durable.
    completed: u64,
    /// A round is running.
    running: bool,
}

/// Coordinates sync rounds. See the module documentation.
#[derive(Default)]
pub(crate) struct GroupCommit {
    state: Mutex<RoundState>,
    finished: Condvar,
}

impl GroupCommit {
    /// Returns once everything the caller did before calling is durable.
    /// `sync` makes everything written so far durable; it runs on the thread
    /// of whichever waiter starts the round.
    pub(crate) fn commit(&self, sync: impl Fn() -> Result<()>) -> Result<()> {
        let mut state = self.state.lock();
        state.requested += 1;
        let ticket = state.requested;
        loop {
            if state.completed >= ticket {
                return Ok(());
            }
            if !state.running {
                state.running = true;
                let covers = state.requested;
                drop(state);
                let outcome = sync();
                state = self.state.lock();
                state.running = false;
                if outcome.is_ok() {
                    state.completed = state.completed.max(covers);
                }
                self.finished.notify_all();
                outcome?;
                continue;
            }
            self.finished.wait(&mut state);
        }
    }
}
