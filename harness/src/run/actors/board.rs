//! The step board: which steps of which host have started or finished, shared by both hosts' actors so a
//! `wait` step on one host can block until a step of the other host reaches an edge.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crate::scenario::plan::{HostId, StepEdge};

/// Which steps of which host have started / finished (the shell equivalent: one process waiting for a file
/// another touches, here a `Mutex` + `Condvar`).
#[derive(Debug, Default)]
pub struct StepBoard {
    state: Mutex<BoardState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct BoardState {
    /// Indexed by `HostId::index()`, then by step index: `[started, finished]`.
    reached: [Vec<[bool; 2]>; 2],
    closed: bool,
}

impl BoardState {
    fn reached(&self, host: HostId, step: usize, edge: StepEdge) -> bool {
        let Some([started, finished]) = self.reached[host.index()].get(step) else {
            return false;
        };
        match edge {
            // A finished step has also started, even if its start was never marked.
            StepEdge::Started => *started || *finished,
            StepEdge::Finished => *finished,
        }
    }
}

impl StepBoard {
    pub fn new() -> Arc<StepBoard> {
        Arc::new(StepBoard::default())
    }

    fn lock(&self) -> MutexGuard<'_, BoardState> {
        // A panicking holder leaves the flags consistent (each update is a single store), so keep going.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that `host`'s step `step` reached `edge`, and wakes every waiter.
    pub fn mark(&self, host: HostId, step: usize, edge: StepEdge) {
        let mut state = self.lock();
        let steps = &mut state.reached[host.index()];
        if steps.len() <= step {
            steps.resize(step + 1, [false, false]);
        }
        let slot = match edge {
            StepEdge::Started => 0,
            StepEdge::Finished => 1,
        };
        steps[step][slot] = true;
        drop(state);
        self.changed.notify_all();
    }

    /// Whether `host`'s step `step` has reached `edge` already.
    #[cfg(test)]
    pub fn has_reached(&self, host: HostId, step: usize, edge: StepEdge) -> bool {
        self.lock().reached(host, step, edge)
    }

    /// Blocks until `host`'s step `step` reached `edge`, or `deadline`, or `close`; returns false unless the
    /// edge was reached.
    pub fn wait(&self, host: HostId, step: usize, edge: StepEdge, deadline: Instant) -> bool {
        let mut state = self.lock();
        loop {
            if state.reached(host, step, edge) {
                return true;
            }
            if state.closed {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self.changed.wait_timeout(state, deadline - now).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// Wakes every waiter for good (used at the end of the run): edges not reached by then never will be.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::thread;
    use std::time::Duration;

    use super::*;

    #[test]
    fn finished_implies_started_and_unmarked_steps_are_not_reached() {
        let board = StepBoard::new();
        board.mark(HostId::Server, 3, StepEdge::Finished);
        assert!(board.has_reached(HostId::Server, 3, StepEdge::Started));
        assert!(board.has_reached(HostId::Server, 3, StepEdge::Finished));
        assert!(!board.has_reached(HostId::Server, 2, StepEdge::Finished));
        assert!(!board.has_reached(HostId::Client, 3, StepEdge::Started));
        board.mark(HostId::Client, 0, StepEdge::Started);
        assert!(board.has_reached(HostId::Client, 0, StepEdge::Started));
        assert!(!board.has_reached(HostId::Client, 0, StepEdge::Finished));
    }

    #[test]
    fn wait_returns_when_another_thread_marks_the_edge() {
        let board = StepBoard::new();
        let marker = {
            let board = Arc::clone(&board);
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(50));
                board.mark(HostId::Client, 1, StepEdge::Finished);
            })
        };
        let start = Instant::now();
        assert!(board.wait(HostId::Client, 1, StepEdge::Finished, start + Duration::from_secs(5)));
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(45), "woke after {waited:?}, before the mark");
        assert!(waited < Duration::from_secs(2), "woke after {waited:?}");
        marker.join().unwrap();
    }

    #[test]
    fn wait_gives_up_at_the_deadline() {
        let board = StepBoard::new();
        let start = Instant::now();
        assert!(!board.wait(HostId::Server, 0, StepEdge::Started, start + Duration::from_millis(60)));
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(60) && waited < Duration::from_secs(2), "waited {waited:?}");
    }

    #[test]
    fn close_wakes_waiters_without_reaching_the_edge() {
        let board = StepBoard::new();
        let closer = {
            let board = Arc::clone(&board);
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(30));
                board.close();
            })
        };
        let start = Instant::now();
        assert!(!board.wait(HostId::Server, 0, StepEdge::Finished, start + Duration::from_secs(5)));
        assert!(start.elapsed() < Duration::from_secs(2));
        closer.join().unwrap();
        board.mark(HostId::Server, 0, StepEdge::Finished);
        assert!(board.wait(HostId::Server, 0, StepEdge::Finished, Instant::now()));
    }
}
