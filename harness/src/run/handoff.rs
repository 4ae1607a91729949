//! Channels between a scenario's threads that never busy-wait: every wait sleeps on a futex, so a real-time
//! thread waiting on one gives its CPU to the thread it waits for.
//!
//! `std::sync::mpsc` cannot be used between threads of which any is real-time. Its lock-free queues make a
//! sender or receiver that meets another thread's half-done operation (a block of the queue being installed, a
//! slot being written) spin, yielding with `sched_yield`, until that thread finishes. `sched_yield` gives the
//! CPU only to threads of the same real-time priority or higher, so a real-time thread spinning there starves
//! the very thread it waits for whenever that thread is queued on its CPU at a lower priority. It happened in
//! CI: the wire thread (FIFO 2) and a capture's decoding thread (FIFO 1) spun 47 s each on the event sink, the
//! other threads runnable and never run, until the runner killed the scenario. The same pattern, one FIFO 1
//! sender and one FIFO 2 sender pinned to one CPU, locks `std::sync::mpsc` up within seconds (the test below
//! runs it against this channel; with `std::sync::mpsc` in its place it fails).
//!
//! Here the queue is a `VecDeque` under a `Mutex`: its lock spins briefly and then sleeps, and waits for
//! items or room sleep on a `Condvar`. The API and error types are `std::sync::mpsc`'s.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use std::sync::mpsc::{RecvError, RecvTimeoutError, SendError, TryRecvError, TrySendError};

struct State<T> {
    items: VecDeque<T>,
    senders: usize,
    receiver_alive: bool,
    /// How many sleep for an item (the receiver: 0 or 1) and for room: a notification costs a system call,
    /// which a bulk capture's hundreds of thousands of sends should not pay while nobody sleeps.
    receivers_waiting: usize,
    senders_waiting: usize,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// At most this many items wait (a `sync_channel`); `None` for no bound.
    bound: Option<usize>,
    readable: Condvar,
    writable: Condvar,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A thread that panicked holding the lock left the queue consistent: every change is one call.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, mut state: MutexGuard<'_, State<T>>, item: T) {
        state.items.push_back(item);
        let wake = state.receivers_waiting > 0;
        drop(state);
        if wake {
            self.readable.notify_one();
        }
    }

    /// Sleeps on `condvar` (at most `timeout`), counted in `waiting` meanwhile.
    fn sleep<'a>(
        &self,
        condvar: &Condvar,
        mut state: MutexGuard<'a, State<T>>,
        waiting: fn(&mut State<T>) -> &mut usize,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, State<T>> {
        *waiting(&mut state) += 1;
        let mut state = match timeout {
            None => condvar.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner()),
            Some(timeout) => condvar.wait_timeout(state, timeout).unwrap_or_else(|poisoned| poisoned.into_inner()).0,
        };
        *waiting(&mut state) -= 1;
        state
    }

    fn add_sender(self: &Arc<Self>) -> Arc<Self> {
        self.lock().senders += 1;
        Arc::clone(self)
    }

    fn drop_sender(&self) {
        let mut state = self.lock();
        state.senders -= 1;
        if state.senders == 0 {
            drop(state);
            self.readable.notify_all();
        }
    }
}

fn new_shared<T>(bound: Option<usize>) -> Arc<Shared<T>> {
    Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            senders: 1,
            receiver_alive: true,
            receivers_waiting: 0,
            senders_waiting: 0,
        }),
        bound,
        readable: Condvar::new(),
        writable: Condvar::new(),
    })
}

/// An unbounded channel, as `std::sync::mpsc::channel`.
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let shared = new_shared(None);
    (Sender { shared: Arc::clone(&shared) }, Receiver { shared })
}

/// A channel holding at most `bound` items (at least one), whose `send` waits for room, as
/// `std::sync::mpsc::sync_channel` with a bound above zero.
pub fn sync_channel<T>(bound: usize) -> (SyncSender<T>, Receiver<T>) {
    let shared = new_shared(Some(bound.max(1)));
    (SyncSender { shared: Arc::clone(&shared) }, Receiver { shared })
}

macro_rules! opaque_debug {
    ($($name:ident),*) => {$(
        impl<T> std::fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($name), " { .. }"))
            }
        }
    )*};
}

opaque_debug!(Sender, SyncSender, Receiver);

/// A sender's copies are counted: the receiver sees the end once the last one is dropped.
macro_rules! counted_sender {
    ($($name:ident),*) => {$(
        impl<T> Clone for $name<T> {
            fn clone(&self) -> Self {
                $name { shared: self.shared.add_sender() }
            }
        }

        impl<T> Drop for $name<T> {
            fn drop(&mut self) {
                self.shared.drop_sender();
            }
        }
    )*};
}

counted_sender!(Sender, SyncSender);

/// The sending half of [`channel`].
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Sender<T> {
    /// Queues `item`; fails (giving it back) only when the receiver is gone.
    pub fn send(&self, item: T) -> Result<(), SendError<T>> {
        let state = self.shared.lock();
        if !state.receiver_alive {
            return Err(SendError(item));
        }
        self.shared.push(state, item);
        Ok(())
    }

    /// Queues every item of `items` in order under one lock, waking the receiver at most once: what a
    /// producer of many items at a time pays once instead of per item. Fails only when the receiver is gone.
    pub fn send_all(&self, items: impl IntoIterator<Item = T>) -> Result<(), SendError<()>> {
        let mut state = self.shared.lock();
        if !state.receiver_alive {
            return Err(SendError(()));
        }
        let before = state.items.len();
        state.items.extend(items);
        let wake = state.receivers_waiting > 0 && state.items.len() > before;
        drop(state);
        if wake {
            self.shared.readable.notify_one();
        }
        Ok(())
    }
}

/// The sending half of [`sync_channel`].
pub struct SyncSender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> SyncSender<T> {
    /// Queues `item`, sleeping while the channel is full; fails only when the receiver is gone.
    pub fn send(&self, item: T) -> Result<(), SendError<T>> {
        let bound = self.shared.bound.unwrap_or(usize::MAX);
        let mut state = self.shared.lock();
        loop {
            if !state.receiver_alive {
                return Err(SendError(item));
            }
            if state.items.len() < bound {
                self.shared.push(state, item);
                return Ok(());
            }
            state = self.shared.sleep(&self.shared.writable, state, |state| &mut state.senders_waiting, None);
        }
    }

    /// Queues `item` if there is room now.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let state = self.shared.lock();
        if !state.receiver_alive {
            return Err(TrySendError::Disconnected(item));
        }
        if state.items.len() >= self.shared.bound.unwrap_or(usize::MAX) {
            return Err(TrySendError::Full(item));
        }
        self.shared.push(state, item);
        Ok(())
    }
}

/// The receiving half of [`channel`] and [`sync_channel`].
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Receiver<T> {
    /// Takes the oldest item, sleeping until there is one; fails once the channel is empty and every sender is
    /// gone.
    pub fn recv(&self) -> Result<T, RecvError> {
        let mut state = self.shared.lock();
        loop {
            if let Some(item) = self.take(&mut state) {
                return Ok(item);
            }
            if state.senders == 0 {
                return Err(RecvError);
            }
            state = self.shared.sleep(&self.shared.readable, state, |state| &mut state.receivers_waiting, None);
        }
    }

    /// Takes the oldest item if there is one now.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        let mut state = self.shared.lock();
        match self.take(&mut state) {
            Some(item) => Ok(item),
            None if state.senders == 0 => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// As [`Receiver::recv`], for at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if let Some(item) = self.take(&mut state) {
                return Ok(item);
            }
            if state.senders == 0 {
                return Err(RecvTimeoutError::Disconnected);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RecvTimeoutError::Timeout);
            }
            state = self.shared.sleep(&self.shared.readable, state, |state| &mut state.receivers_waiting, Some(left));
        }
    }

    /// Every item until every sender is gone.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(|| self.recv().ok())
    }

    /// Every item queued now, without waiting.
    pub fn try_iter(&self) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(|| self.try_recv().ok())
    }

    fn take(&self, state: &mut State<T>) -> Option<T> {
        let item = state.items.pop_front()?;
        if state.senders_waiting > 0 {
            self.shared.writable.notify_one();
        }
        Some(item)
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.shared.lock().receiver_alive = false;
        self.shared.writable.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::thread;

    use super::*;

    #[test]
    fn items_arrive_in_order_and_the_end_is_seen_once_every_sender_is_gone() {
        let (tx, rx) = channel();
        let second = tx.clone();
        tx.send(1).expect("receiver alive");
        second.send(2).expect("receiver alive");
        drop(tx);
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(rx.recv_timeout(Duration::from_millis(10)), Ok(2));
        assert_eq!(rx.recv_timeout(Duration::from_millis(10)), Err(RecvTimeoutError::Timeout));
        drop(second);
        assert_eq!(rx.recv(), Err(RecvError));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[test]
    fn a_bounded_channel_refuses_when_full_and_a_waiting_send_goes_through_once_there_is_room() {
        let (tx, rx) = sync_channel(2);
        tx.try_send('a').expect("room");
        tx.send('b').expect("room");
        assert_eq!(tx.try_send('c'), Err(TrySendError::Full('c')));
        let sender = thread::spawn(move || tx.send('c'));
        thread::sleep(Duration::from_millis(20));
        assert!(!sender.is_finished(), "a send into a full channel waits");
        assert_eq!(rx.recv(), Ok('a'));
        assert_eq!(sender.join().expect("sender thread"), Ok(()));
        assert_eq!(rx.iter().collect::<String>(), "bc");
    }

    #[test]
    fn sending_to_a_channel_whose_receiver_is_gone_gives_the_item_back() {
        let (tx, rx) = channel();
        let (bounded, bounded_rx) = sync_channel(1);
        drop((rx, bounded_rx));
        assert_eq!(tx.send(7), Err(SendError(7)));
        assert_eq!(bounded.send(8), Err(SendError(8)));
        assert_eq!(bounded.try_send(9), Err(TrySendError::Disconnected(9)));
    }

    /// `send_all` queues a batch in order behind what was queued before, wakes a receiver asleep on an empty
    /// channel, and fails once the receiver is gone.
    #[test]
    fn a_batch_arrives_in_order_and_wakes_a_sleeping_receiver() {
        let (tx, rx) = channel();
        tx.send(0).expect("receiver alive");
        tx.send_all([1, 2]).expect("receiver alive");
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), [0, 1, 2]);
        let receiver = thread::spawn(move || (rx.recv(), rx.recv(), rx.recv()));
        thread::sleep(Duration::from_millis(20));
        assert!(!receiver.is_finished(), "the receiver waits on an empty channel");
        tx.send_all([3, 4, 5]).expect("receiver alive");
        assert_eq!(receiver.join().expect("receiver thread"), (Ok(3), Ok(4), Ok(5)));
        assert_eq!(tx.send_all([6]), Err(SendError(())));
    }

    fn pin_to_cpu0_at_fifo(priority: libc::c_int) {
        // SAFETY: a zeroed cpu_set_t and sched_param are valid; both calls act on the calling thread.
        unsafe {
            let mut cpus: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut cpus);
            assert_eq!(libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &cpus), 0, "pin to CPU 0");
            let param = libc::sched_param { sched_priority: priority };
            assert_eq!(libc::sched_setscheduler(0, libc::SCHED_FIFO, &param), 0, "SCHED_FIFO (needs root)");
        }
    }

    /// A FIFO 1 thread sending bursts of 8 with 50 µs pauses and a FIFO 2 thread waking every 37 µs to send,
    /// both on CPU 0, into one channel: the FIFO 2 thread often wakes while the other is inside a send.
    /// `std::sync::mpsc` in its place stopped both for good within 0.6-2.9 s in 4 of 4 tries; this channel must
    /// keep both going for 4 s, never pausing for a whole second. The pauses leave CPU 0 mostly idle, so the
    /// tests running beside this one keep both CPUs.
    #[test]
    fn a_real_time_sender_never_starves_a_lower_priority_sender_it_waits_for() {
        let (tx, rx) = channel::<u8>();
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let senders: Vec<_> = [(1, None), (2, Some(Duration::from_micros(37)))]
            .into_iter()
            .map(|(priority, pause)| {
                let (tx, stop, sent) = (tx.clone(), Arc::clone(&stop), Arc::clone(&sent));
                thread::spawn(move || {
                    pin_to_cpu0_at_fifo(priority);
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(pause) = pause {
                            thread::sleep(pause);
                        }
                        let _ = tx.send(priority as u8);
                        let count = sent.fetch_add(1, Ordering::Relaxed) + 1;
                        if pause.is_none() && count % 8 == 0 {
                            thread::sleep(Duration::from_micros(50));
                        }
                    }
                })
            })
            .collect();
        drop(tx);
        let receiver = thread::spawn(move || rx.iter().count());
        let started = Instant::now();
        let (mut last, mut last_change, mut longest_pause) = (0, Instant::now(), Duration::ZERO);
        while started.elapsed() < Duration::from_secs(4) {
            thread::sleep(Duration::from_millis(50));
            let now = sent.load(Ordering::Relaxed);
            if now != last {
                (last, last_change) = (now, Instant::now());
            }
            longest_pause = longest_pause.max(last_change.elapsed());
            assert!(
                longest_pause < Duration::from_secs(1),
                "no item sent for {longest_pause:?} after {:?} ({now} sent): the senders are stuck",
                started.elapsed()
            );
        }
        stop.store(true, Ordering::Relaxed);
        senders.into_iter().for_each(|sender| sender.join().expect("sender thread"));
        let received = receiver.join().expect("receiver thread");
        assert_eq!(received as u64, sent.load(Ordering::Relaxed), "every item sent arrived");
    }
}
