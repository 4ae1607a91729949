//! The programmable wire: two real-time threads in the wire's own namespace that forward every Ethernet frame
//! between the veth end facing the client and the one facing the server (AF_PACKET in, AF_PACKET out), and on
//! the way lose, corrupt, duplicate, queue, delay or hold back the packets the active faults select, and forge
//! segments into live connections.
//!
//! Both hosts' captures stay on their own veth ends, so each impairment happens between the two captures, as on
//! a real network: the sender's capture shows when a packet left, the receiver's when (and whether) it arrived.
//! A packet's time on the wire counts from the kernel's receive timestamp of it, so the wire thread's own
//! wake-up latency does not add to a delay.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime};

use super::frame::{self, TcpSegment, TCP_ACK, TCP_PSH, TCP_RST, TCP_SYN};
use super::identity::Identities;
use super::model::{Pipeline, WireFault};
use crate::error::{Error, Result};
use crate::observe::capture::{self, QueueSource};
use crate::observe::decode::Decoder;
use crate::record::WireStats;
use crate::run::clock::EventSink;
use crate::run::netns::Netns;
use crate::run::priority;
use crate::scenario::impairment::{Impairment, InjectedSegment, InjectedSeq, Injection};
use crate::scenario::plan::HostId;
use crate::timeline::{Decision, DecisionKind, EventKind, ImpairmentEvent, PacketEvent, PacketKey};

/// Kernel memory for frames waiting on a wire socket before its thread takes them: a bulk transfer's burst.
const RECEIVE_BUFFER: usize = 16 << 20;
/// Longest sleep of an idle wire thread (it also wakes on every frame and on commands).
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// Frames per `sendmmsg`.
const SEND_BATCH: usize = 64;
/// How long `stop` waits for the threads to end.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `start` waits for both threads to run (starting a thread took up to 0.7 s with 200 scenarios set
/// up at once on 2 cores).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The payload of a forged data segment, repeated to its length: easy to spot in a capture or a read.
const FORGED_PATTERN: &[u8] = b"netfault-forged ";

/// What a stopped wire did.
#[derive(Debug, Clone, Default)]
pub struct Stopped {
    /// Toward the client and toward the server.
    pub stats: [WireStats; 2],
    /// Packets each fault selected (forged, for an injection), by fault name.
    pub selected: Vec<(String, u64)>,
    /// What went wrong while it ran (an injection with no connection to go into).
    pub errors: Vec<String>,
}

/// What one direction's thread hands back.
type DirectionResult = Result<(WireStats, Vec<(String, u64)>)>;

/// A running wire between the two hosts.
pub struct Wire {
    shared: Arc<Shared>,
    /// The thread forwarding toward each host, by `HostId::index()`.
    threads: Vec<WireThread>,
}

/// One direction's thread, the eventfd that wakes it and what it is doing.
struct WireThread {
    toward: HostId,
    handle: JoinHandle<DirectionResult>,
    wake: Arc<OwnedFd>,
    doing: Arc<AtomicU8>,
}

/// What a wire thread is doing, for the message of a thread that does not stop: each is a place it can wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    Starting,
    /// In ppoll, until a frame is due, arrives, or a command comes.
    Waiting,
    /// Taking the frames that arrived and deciding their fate (the locks it shares with the other direction).
    Receiving,
    /// In sendmmsg, or waiting for room in the send socket's buffer (frames sent earlier not yet received).
    Sending,
    Forging,
    Ending,
}

impl Phase {
    const ALL: [Phase; 6] =
        [Phase::Starting, Phase::Waiting, Phase::Receiving, Phase::Sending, Phase::Forging, Phase::Ending];

    fn describe(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Waiting => "waiting in ppoll",
            Phase::Receiving => "taking the frames that arrived",
            Phase::Sending => "sending frames (sendmmsg, or waiting for room in its socket's send buffer)",
            Phase::Forging => "forging an injected segment",
            Phase::Ending => "counting its statistics",
        }
    }

    fn of(doing: &AtomicU8) -> Phase {
        let value = doing.load(Ordering::Relaxed);
        Phase::ALL.into_iter().find(|phase| *phase as u8 == value).unwrap_or(Phase::Starting)
    }
}

/// What the threads share: which faults are on, injections waiting, the connections seen.
struct Shared {
    faults: Vec<WireFault>,
    active: Vec<AtomicBool>,
    stop: AtomicBool,
    /// Injections waiting for the thread of their direction, by `HostId::index()` of the receiver.
    injections: [Mutex<Vec<usize>>; 2],
    connections: Mutex<Connections>,
    /// Names for the packets both ways, so that a decision is keyed by the packet rather than its arrival.
    identities: Mutex<Identities>,
    /// Failures that do not stop the wire (an injection that found no connection).
    errors: Mutex<Vec<String>>,
    /// Injections forged so far, by fault index.
    forged: Vec<std::sync::atomic::AtomicU64>,
    /// One decoder for both directions, so a decision's packet reads as the captures show it (relative numbers).
    decoder: Mutex<Decoder>,
    sink: Option<EventSink>,
}

impl Shared {
    fn is_active(&self, name: &str) -> bool {
        self.faults.iter().zip(&self.active).any(|(fault, active)| fault.name == name && active.load(Ordering::Relaxed))
    }

    fn record(&self, at: Duration, toward: HostId, (n, decision): (u64, Decision), packet: Option<PacketEvent>) {
        if let Some(sink) = &self.sink {
            let t = sink.clock().since_t0(SystemTime::UNIX_EPOCH + at);
            sink.emit_at(t, toward, EventKind::Impairment(ImpairmentEvent { toward, n, decision, packet }));
        }
    }

    fn decode(&self, frame: &[u8]) -> Option<PacketEvent> {
        // A poisoned decoder only means a panicking wire thread, which `stop` reports; decoding goes on.
        self.decoder.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).decode(frame, true)
    }
}

impl Wire {
    /// Starts forwarding between the wire's two veth ends: `facing[host.index()]` is the ifindex (in `ns`) of
    /// the end whose peer is that host's `nf0`. Every fault in `faults` starts off. Decisions go to `sink`
    /// as [`EventKind::Impairment`] events.
    pub fn start(
        ns: &Netns,
        facing: [u32; 2],
        faults: Vec<WireFault>,
        seed: u64,
        sink: Option<EventSink>,
    ) -> Result<Wire> {
        let sockets = ns.run(|| {
            HostId::ALL.map(|host| open_end(facing[host.index()], host)).into_iter().collect::<Result<Vec<_>>>()
        })?;
        let sockets: Vec<Arc<OwnedFd>> = sockets.into_iter().map(Arc::new).collect();
        let shared = Arc::new(Shared {
            active: faults.iter().map(|_| AtomicBool::new(false)).collect(),
            forged: faults.iter().map(|_| std::sync::atomic::AtomicU64::new(0)).collect(),
            errors: Mutex::new(Vec::new()),
            faults,
            stop: AtomicBool::new(false),
            injections: [Mutex::new(Vec::new()), Mutex::new(Vec::new())],
            connections: Mutex::new(Connections::default()),
            identities: Mutex::new(Identities::default()),
            decoder: Mutex::new(Decoder::new()),
            sink,
        });
        let mut threads = Vec::with_capacity(2);
        let (running, started) = crate::run::handoff::channel();
        for toward in HostId::ALL {
            let command = format!("wire toward {toward}");
            let wake = Arc::new(capture::new_eventfd(&command)?);
            let mtu = ns.run(|| {
                let ifname = capture::interface_name(facing[toward.index()])
                    .map_err(|e| Error::sys(format!("{command}: find the wire's veth end (ip link show)"), e))?;
                capture::interface_mtu(&sockets[toward.index()], &ifname)
                    .map_err(|e| Error::sys(format!("{command}: read the MTU of {ifname}: SIOCGIFMTU"), e))
            })?;
            let doing = Arc::new(AtomicU8::new(Phase::Starting as u8));
            let direction = Direction {
                toward,
                receive: Arc::clone(&sockets[toward.peer().index()]),
                send: Arc::clone(&sockets[toward.index()]),
                source: QueueSource::new(&sockets[toward.peer().index()], RECEIVE_BUFFER, mtu, None, &command)?,
                wake: Arc::clone(&wake),
                pipeline: Pipeline::new(seed, toward, &shared.faults),
                shared: Arc::clone(&shared),
                schedule: BinaryHeap::new(),
                held: Vec::new(),
                order: 0,
                stats: WireStats::default(),
                command: command.clone(),
                doing: Arc::clone(&doing),
            };
            let running = running.clone();
            let handle = thread::Builder::new()
                .name(format!("wire-{toward}"))
                .spawn(move || direction.run(running))
                .map_err(|e| Error::sys(format!("spawn {command} thread"), e))?;
            threads.push(WireThread { toward, handle, wake, doing });
        }
        drop(running);
        // Returns once both threads run at their priority: a thread not yet scheduled on a busy machine held
        // the first frames of a run (the ARP reply its connect waited for) for 30-100 ms.
        for _ in &threads {
            if started.recv_timeout(START_TIMEOUT).is_err() {
                let wire = Wire { shared, threads };
                let _ = wire.stop();
                return Err(Error::Internal(format!("the wire's threads did not start within {START_TIMEOUT:?}")));
            }
        }
        Ok(Wire { shared, threads })
    }

    /// Switches the fault named `fault` on or off. An injection forges its segment when switched on.
    pub fn switch(&self, fault: &str, on: bool) -> Result<()> {
        let index = self
            .shared
            .faults
            .iter()
            .position(|f| f.name == fault)
            .ok_or_else(|| Error::Internal(format!("the wire has no fault named {fault}")))?;
        self.shared.active[index].store(on, Ordering::Relaxed);
        let toward = self.shared.faults[index].toward;
        if on && matches!(self.shared.faults[index].impairment, Impairment::Inject(_)) {
            lock(&self.shared.injections[toward.index()]).push(index);
            if let Some(thread) = self.threads.iter().find(|thread| thread.toward == toward) {
                capture::signal(&thread.wake);
            }
        }
        Ok(())
    }

    /// Stops both threads and returns what each direction did, what each fault selected and what failed.
    pub fn stop(self) -> Result<Stopped> {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Both are told before either is waited for: the waits overlap, [`STOP_TIMEOUT`] in all.
        self.threads.iter().for_each(|thread| capture::signal(&thread.wake));
        let started = std::time::Instant::now();
        let mut stopped = Stopped::default();
        for WireThread { toward, handle, doing, .. } in self.threads {
            while !handle.is_finished() {
                if started.elapsed() > STOP_TIMEOUT {
                    return Err(Error::Internal(format!(
                        "wire toward {toward} did not stop within {STOP_TIMEOUT:?}: it was {}",
                        Phase::of(&doing).describe()
                    )));
                }
                thread::sleep(Duration::from_millis(1));
            }
            let (stats, selected) =
                handle.join().map_err(|_| Error::Internal(format!("wire toward {toward}: thread panicked")))??;
            stopped.stats[toward.index()] = stats;
            stopped.selected.extend(selected);
        }
        for (fault, forged) in self.shared.faults.iter().zip(&self.shared.forged) {
            if matches!(fault.impairment, Impairment::Inject(_)) {
                stopped.selected.push((fault.name.clone(), forged.load(Ordering::Relaxed)));
            }
        }
        stopped.selected.sort();
        stopped.errors = std::mem::take(&mut *lock(&self.shared.errors));
        Ok(stopped)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A packet socket on one wire end, in the calling thread's namespace: receives what the host facing it sends
/// (not what the wire itself sends there), with kernel timestamps, and sends straight to the device.
fn open_end(ifindex: u32, facing: HostId) -> Result<OwnedFd> {
    let command = format!("wire end facing {facing}");
    let socket = capture::open_socket(&command)?;
    let on: libc::c_int = 1;
    capture::set_option(&socket, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &on)
        .map_err(|e| Error::sys(format!("{command}: setsockopt(PACKET_IGNORE_OUTGOING)"), e))?;
    capture::set_option(&socket, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &on)
        .map_err(|e| Error::sys(format!("{command}: setsockopt(PACKET_QDISC_BYPASS)"), e))?;
    capture::bind(&socket, ifindex, &command)?;
    Ok(socket)
}

/// The current wall-clock time, as frame timestamps count it.
fn wall_now() -> Duration {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default()
}

/// A frame waiting for its time.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    release: Duration,
    /// Arrival order: frames due at the same time leave in the order they came.
    order: u64,
    copies: u32,
    frame: Vec<u8>,
}

/// A frame held back until `remaining` later frames have gone, or `deadline`.
struct Held {
    remaining: u32,
    deadline: Duration,
    frame: Vec<u8>,
}

/// One direction of the wire: frames from the host opposite `toward`, to `toward`.
struct Direction {
    toward: HostId,
    receive: Arc<OwnedFd>,
    send: Arc<OwnedFd>,
    source: QueueSource,
    wake: Arc<OwnedFd>,
    pipeline: Pipeline,
    shared: Arc<Shared>,
    schedule: BinaryHeap<Reverse<Pending>>,
    held: Vec<Held>,
    order: u64,
    stats: WireStats,
    command: String,
    doing: Arc<AtomicU8>,
}

impl Direction {
    /// Forwards until told to stop; says on `running` when it has started.
    fn run(mut self, running: crate::run::handoff::Sender<()>) -> DirectionResult {
        // Refused only without CAP_SYS_NICE (rootless): delays are then as exact as an ordinary thread's sleep.
        let _ = priority::raise_wire_thread();
        // Not pinned to a CPU: pinned, a wire thread cannot leave a CPU that other wires keep busy for the idle
        // one (delay p99 6.0 ms against NFQUEUE's 1.9 ms under the suite's load), and its frames were no more in
        // order (0 of 115,231 left the wire out of order pinned, 0 of 128,511 unpinned; README, Performance).
        // `start` is gone only when it gave up waiting, and then stops this thread.
        let _ = running.send(());
        while !self.shared.stop.load(Ordering::Relaxed) {
            let now = wall_now();
            self.release_due(now, now)?;
            self.enter(Phase::Waiting);
            self.wait()?;
            self.enter(Phase::Forging);
            self.forge_requested()?;
            self.enter(Phase::Receiving);
            if self.take_arrivals()? > 0 {
                // A bulk transfer keeps a wire thread busy without ever blocking, and real-time threads of one
                // priority run until they block: the wires of other scenarios on the machine (a delay's timer
                // due) get their turn after each burst instead of after the whole transfer.
                // SAFETY: plain system call without arguments.
                unsafe { libc::sched_yield() };
            }
        }
        self.enter(Phase::Ending);
        // Its real-time CPU is counted for the run's report before the report can be made.
        priority::count_realtime_cpu();
        self.stats.held_at_stop += self.schedule.len() as u64 + self.held.len() as u64;
        self.stats.kernel_drops += capture::take_kernel_drops(&self.receive)
            .map_err(|e| Error::sys(format!("{}: getsockopt(PACKET_STATISTICS)", self.command), e))?;
        Ok((self.stats, self.pipeline.selected()))
    }

    fn enter(&self, phase: Phase) {
        self.doing.store(phase as u8, Ordering::Relaxed);
    }

    /// Sleeps until the next frame is due, a frame arrives or a command comes, with nanosecond precision (a
    /// real-time thread's timers have no slack).
    fn wait(&mut self) -> Result<()> {
        let now = wall_now();
        let next = self
            .schedule
            .peek()
            .map(|Reverse(pending)| pending.release)
            .into_iter()
            .chain(self.held.iter().map(|held| held.deadline))
            .min();
        let timeout = next.map_or(IDLE_WAIT, |due| due.saturating_sub(now).min(IDLE_WAIT));
        if timeout.is_zero() {
            return Ok(());
        }
        let mut fds = [
            libc::pollfd { fd: self.receive.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: self.wake.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        let timespec =
            libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos() as _ };
        // SAFETY: fds and timespec are live for the call; no signal mask is passed.
        let result = unsafe { libc::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, &timespec, std::ptr::null()) };
        if result < 0 {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(Error::sys(format!("{}: ppoll", self.command), error));
            }
        }
        if fds[1].revents & libc::POLLIN != 0 {
            let mut value: libc::eventfd_t = 0;
            // SAFETY: a valid eventfd and a live u64; resets the counter.
            unsafe { libc::eventfd_read(self.wake.as_raw_fd(), &mut value) };
        }
        Ok(())
    }

    /// Takes every frame that has arrived and decides its fate; returns how many there were.
    fn take_arrivals(&mut self) -> Result<usize> {
        let mut arrived: Vec<(Duration, Vec<u8>)> = Vec::new();
        self.source.take_ready(&self.receive, &mut |frame| {
            arrived.push((frame.wall_time, frame.data.to_vec()));
            Ok(())
        })?;
        let count = arrived.len();
        // The earliest arrival time among each frame and those after it: the socket's order is not always the
        // order of the kernel's timestamps (frames sent on two CPUs reach it through two CPUs' backlogs), and
        // the schedule puts such frames back in timestamp order only while they are in it together.
        let mut earliest_after: Vec<Duration> = arrived.iter().map(|(at, _)| *at).collect();
        for i in (1..earliest_after.len()).rev() {
            earliest_after[i - 1] = earliest_after[i - 1].min(earliest_after[i]);
        }
        let shared = Arc::clone(&self.shared);
        let active = |name: &str| shared.is_active(name);
        for ((at, mut frame), earliest) in arrived.into_iter().zip(earliest_after) {
            // Deciding a frame's fate costs a few µs here and about 0.6 ms of CPU in an emulated (TCG) VM, where
            // a burst of 40 frames arriving together kept the frames due meanwhile waiting 20-55 ms: those leave
            // between the arrivals instead, up to the earliest arrival still to be decided.
            let now = wall_now();
            self.release_due(now, now.min(earliest.saturating_sub(Duration::from_nanos(1))))?;
            self.stats.frames_in += 1;
            let segment = TcpSegment::parse(&frame);
            if let Some(segment) = &segment {
                lock(&shared.connections).saw(self.toward.peer(), segment);
            }
            // Decoding (what matching and the decision records need) is the costly part of a frame's way:
            // skipped while no fault of this direction is on, except for the SYNs that fix the relative
            // sequence numbers of later decisions.
            let identity = lock(&shared.identities).identify(self.toward.peer(), &frame);
            let syn = segment.is_some_and(|segment| segment.flags & TCP_SYN != 0);
            let packet = if syn || self.pipeline.any_active(&active) { shared.decode(&frame) } else { None };
            let fate = self.pipeline.decide(&mut frame, packet.as_ref().zip(identity.as_ref()), at, &active);
            for decision in fate.decisions {
                shared.record(at, self.toward, decision, packet.clone());
            }
            if fate.copies == 0 {
                self.stats.dropped += 1;
                continue;
            }
            match fate.hold {
                Some((remaining, deadline)) => self.held.push(Held { remaining, deadline, frame }),
                None => {
                    self.order += 1;
                    self.schedule.push(Reverse(Pending {
                        release: fate.release,
                        order: self.order,
                        copies: fate.copies,
                        frame,
                    }));
                }
            }
        }
        Ok(count)
    }

    /// Sends every frame due by `until` (at the latest `now`, the time it is), and the held frames whose turn or
    /// time has come.
    /// A burst (frames due together) goes out in one `sendmmsg`: per frame, the wire then costs about what the
    /// kernel's own bridge does.
    fn release_due(&mut self, now: Duration, until: Duration) -> Result<()> {
        let mut burst: Vec<Vec<u8>> = Vec::new();
        while self.schedule.peek().is_some_and(|Reverse(pending)| pending.release <= until) {
            let Some(Reverse(pending)) = self.schedule.pop() else { break };
            self.stats.count_lateness(now.saturating_sub(pending.release));
            for _ in 0..pending.copies {
                burst.push(pending.frame.clone());
                self.count_down_held(&mut burst);
            }
        }
        let (late, waiting): (Vec<Held>, Vec<Held>) = self.held.drain(..).partition(|held| held.deadline <= until);
        self.held = waiting;
        late.iter().for_each(|held| self.stats.count_lateness(now.saturating_sub(held.deadline)));
        burst.extend(late.into_iter().map(|held| held.frame));
        self.transmit(&burst)
    }

    /// One more frame went past the held ones: those whose gap is now closed go right after it.
    fn count_down_held(&mut self, burst: &mut Vec<Vec<u8>>) {
        for held in &mut self.held {
            held.remaining = held.remaining.saturating_sub(1);
        }
        let (ready, waiting): (Vec<Held>, Vec<Held>) = self.held.drain(..).partition(|held| held.remaining == 0);
        self.held = waiting;
        burst.extend(ready.into_iter().map(|held| held.frame));
    }

    /// Sends `frames` in order (`sendmmsg`, up to [`SEND_BATCH`] per call). A frame the kernel refuses (its
    /// device's queue full) is counted and skipped. While the socket's send buffer is full (the frames sent
    /// before are still on their way into the host), it waits for room, and gives up the rest when told to
    /// stop: a blocking send would hold the thread for as long as the receiving CPU leaves them there.
    fn transmit(&mut self, frames: &[Vec<u8>]) -> Result<()> {
        if frames.is_empty() {
            return Ok(());
        }
        self.enter(Phase::Sending);
        let mut next = 0;
        while next < frames.len() {
            let chunk = &frames[next..(next + SEND_BATCH).min(frames.len())];
            let mut iovecs: Vec<libc::iovec> = chunk
                .iter()
                .map(|frame| libc::iovec { iov_base: frame.as_ptr().cast_mut().cast(), iov_len: frame.len() })
                .collect();
            // SAFETY: mmsghdr is plain old data; all-zero (no name, no control data) is a valid value.
            let mut headers: Vec<libc::mmsghdr> = iovecs
                .iter_mut()
                .map(|iovec| {
                    let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    header.msg_hdr.msg_iov = iovec;
                    header.msg_hdr.msg_iovlen = 1;
                    header
                })
                .collect();
            // SAFETY: every header points at one live iovec of a live frame; the socket is bound to the device.
            let sent = unsafe {
                libc::sendmmsg(self.send.as_raw_fd(), headers.as_mut_ptr(), headers.len() as _, libc::MSG_DONTWAIT)
            };
            if sent < 0 {
                let error = io::Error::last_os_error();
                match error.raw_os_error() {
                    Some(libc::EAGAIN) => {
                        if !self.wait_for_send_room()? {
                            self.stats.held_at_stop += (frames.len() - next) as u64;
                            return Ok(());
                        }
                    }
                    // The first frame was refused: count it and go on with the next.
                    Some(libc::ENOBUFS) => {
                        self.stats.send_errors += 1;
                        next += 1;
                    }
                    Some(libc::EINTR) => {}
                    _ => return Err(Error::sys(format!("{}: send frames (AF_PACKET sendmmsg)", self.command), error)),
                }
                continue;
            }
            self.stats.frames_out += sent as u64;
            next += sent as usize;
        }
        Ok(())
    }

    /// Waits until the send socket has room again (POLLOUT) or the wire is told to stop; returns whether there
    /// is room.
    fn wait_for_send_room(&mut self) -> Result<bool> {
        loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                return Ok(false);
            }
            let mut fds = [
                libc::pollfd { fd: self.send.as_raw_fd(), events: libc::POLLOUT, revents: 0 },
                libc::pollfd { fd: self.wake.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            ];
            let millis = IDLE_WAIT.as_millis() as libc::c_int;
            // SAFETY: two valid pollfds, live for the call.
            if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) } < 0 {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(Error::sys(format!("{}: poll for room to send", self.command), error));
                }
            }
            if fds[0].revents & libc::POLLOUT != 0 {
                return Ok(true);
            }
            if fds[1].revents & libc::POLLIN != 0 {
                // A stop (seen above) or an injection (forged once the burst is out).
                let mut value: libc::eventfd_t = 0;
                // SAFETY: a valid eventfd and a live u64; resets the counter.
                unsafe { libc::eventfd_read(self.wake.as_raw_fd(), &mut value) };
            }
        }
    }

    /// Forges the segments of the injections switched on since the last look.
    fn forge_requested(&mut self) -> Result<()> {
        let requested: Vec<usize> = std::mem::take(&mut *lock(&self.shared.injections[self.toward.index()]));
        for index in requested {
            let fault = self.shared.faults[index].clone();
            let Impairment::Inject(injection) = fault.impairment else { continue };
            let forged = lock(&self.shared.connections).forge(self.toward, injection, &|frame| {
                self.shared
                    .decode_peek(frame)
                    .is_some_and(|packet| crate::run::firewall::selects(&fault.matcher, &packet))
            });
            let Some(forged) = forged else {
                lock(&self.shared.errors).push(format!(
                    "inject {}: no TCP connection toward {} matching its `match` had been seen on the wire when it \
                     switched on; trigger the injection after the connection is established",
                    fault.name, self.toward
                ));
                continue;
            };
            let number = self.shared.forged[index].fetch_add(1, Ordering::Relaxed) + 1;
            let at = wall_now();
            let packet = self.shared.decode(&forged);
            self.transmit(std::slice::from_ref(&forged))?;
            let decision = Decision {
                fault: fault.name.clone(),
                key: PacketKey::Forged { number },
                kind: DecisionKind::Injected { segment: injection.segment, seq: injection.seq },
            };
            self.shared.record(at, self.toward, (number, decision), packet);
        }
        Ok(())
    }
}

impl Shared {
    /// Decodes without remembering anything (a candidate forgery that may not be sent).
    fn decode_peek(&self, frame: &[u8]) -> Option<PacketEvent> {
        Decoder::new().decode(frame, true)
    }
}

/// One TCP connection as the wire saw it: the last segment each side sent.
#[derive(Debug, Default, Clone)]
struct Connection {
    /// By the sender's `HostId::index()`.
    last: [Option<TcpSegment>; 2],
    /// Window scale each side announced in its SYN.
    window_scale: [Option<u8>; 2],
    /// When it was last active (frame count), to pick the most recent.
    seen: u64,
}

/// Connections by (client address, client port, server address, server port).
#[derive(Debug, Default)]
struct Connections {
    by_ends: HashMap<(Ipv4Addr, u16, Ipv4Addr, u16), Connection>,
    frames: u64,
}

impl Connections {
    fn saw(&mut self, sender: HostId, segment: &TcpSegment) {
        // The wire joins client and server (validation refuses impairments with a router): the other sender is
        // the server.
        let key = if sender == HostId::Client {
            (segment.src, segment.sport, segment.dst, segment.dport)
        } else {
            (segment.dst, segment.dport, segment.src, segment.sport)
        };
        self.frames += 1;
        let connection = self.by_ends.entry(key).or_default();
        if segment.flags & TCP_SYN != 0 {
            // A new handshake on the same ports starts over.
            if segment.flags & TCP_ACK == 0 {
                *connection = Connection::default();
            }
            connection.window_scale[sender.index()] = segment.window_scale;
        }
        connection.last[sender.index()] = Some(*segment);
        connection.seen = self.frames;
    }

    /// The frame of `injection` into the most recently active connection toward `receiver` that `selects`
    /// accepts, forged as sent by the other host.
    fn forge(&self, receiver: HostId, injection: Injection, selects: &dyn Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
        let mut candidates: Vec<&Connection> = self.by_ends.values().collect();
        candidates.sort_by_key(|connection| Reverse(connection.seen));
        candidates.into_iter().find_map(|connection| {
            let frame = forged_frame(connection, receiver, injection)?;
            selects(&frame).then_some(frame)
        })
    }
}

/// The frame of the segment `injection` asks for, as if sent by the host opposite `receiver` on `connection`:
/// its addresses, ports, acknowledgement and window as that host last sent them, IP id 0.
fn forged_frame(connection: &Connection, receiver: HostId, injection: Injection) -> Option<Vec<u8>> {
    let sender = receiver.peer();
    let from = connection.last[sender.index()]?;
    let to = connection.last[receiver.index()];
    // What the receiver expects next: what it acknowledged last, or the sender's next byte before it has
    // acknowledged anything.
    let rcv_nxt = match to {
        Some(to) if to.flags & TCP_ACK != 0 => to.ack,
        _ => from.end_seq(),
    };
    let receive_window = to.map_or(0, |to| {
        let scaled = match connection.window_scale {
            [Some(_), Some(_)] if to.flags & TCP_SYN == 0 => connection.window_scale[receiver.index()].unwrap_or(0),
            _ => 0,
        };
        u32::from(to.window) << scaled.min(14)
    });
    let seq = match injection.seq {
        InjectedSeq::Exact => rcv_nxt,
        InjectedSeq::InWindow => rcv_nxt.wrapping_add((receive_window / 2).max(1)),
        InjectedSeq::OutOfWindow => rcv_nxt.wrapping_add(1 << 31),
    };
    let (flags, payload, timestamps) = match injection.segment {
        InjectedSegment::Rst => (TCP_RST | TCP_ACK, Vec::new(), None),
        InjectedSegment::Data { bytes } => {
            let payload: Vec<u8> = FORGED_PATTERN.iter().copied().cycle().take(bytes as usize).collect();
            (TCP_PSH | TCP_ACK, payload, from.timestamps)
        }
    };
    Some(frame::forge(&TcpSegment { seq, flags, timestamps, ..from }, 0, &payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(sender: HostId, seq: u32, ack: u32, flags: u8, window: u16, len: u32) -> TcpSegment {
        let (client, server) = ((Ipv4Addr::new(10, 0, 0, 1), 40000), (Ipv4Addr::new(10, 0, 0, 2), 9000));
        let ((src, sport), (dst, dport)) = if sender == HostId::Client { (client, server) } else { (server, client) };
        TcpSegment {
            src_mac: [2, 0, 0, 0, 0, sender.index() as u8 + 1],
            dst_mac: [2, 0, 0, 0, 0, sender.peer().index() as u8 + 1],
            src,
            dst,
            sport,
            dport,
            seq,
            ack,
            flags,
            window,
            payload_len: len,
            window_scale: (flags & TCP_SYN != 0).then_some(7),
            mss: None,
            timestamps: Some((1000, 2000)),
        }
    }

    fn established() -> Connections {
        let mut connections = Connections::default();
        connections.saw(HostId::Client, &segment(HostId::Client, 100, 0, TCP_SYN, 64240, 0));
        connections.saw(HostId::Server, &segment(HostId::Server, 5000, 101, TCP_SYN | TCP_ACK, 65160, 0));
        connections.saw(HostId::Client, &segment(HostId::Client, 101, 5001, TCP_ACK, 502, 0));
        connections.saw(HostId::Client, &segment(HostId::Client, 101, 5001, TCP_ACK | TCP_PSH, 502, 10));
        connections.saw(HostId::Server, &segment(HostId::Server, 5001, 111, TCP_ACK, 509, 0));
        connections
    }

    fn forged(receiver: HostId, segment: InjectedSegment, seq: InjectedSeq) -> TcpSegment {
        let frame = established().forge(receiver, Injection { segment, seq }, &|_| true).unwrap();
        assert!(frame::tcp_checksum_holds(&frame));
        TcpSegment::parse(&frame).unwrap()
    }

    #[test]
    fn an_exact_rst_toward_the_server_carries_what_the_server_acknowledged_last() {
        let rst = forged(HostId::Server, InjectedSegment::Rst, InjectedSeq::Exact);
        assert_eq!((rst.src, rst.sport, rst.dport), (Ipv4Addr::new(10, 0, 0, 1), 40000, 9000));
        assert_eq!((rst.seq, rst.ack, rst.flags), (111, 5001, TCP_RST | TCP_ACK));
        assert_eq!(rst.src_mac, [2, 0, 0, 0, 0, 1]);
        assert_eq!(rst.timestamps, None);
    }

    #[test]
    fn in_window_lands_half_a_scaled_window_ahead_and_out_of_window_half_the_space_away() {
        // The server's window 509 scaled by its wscale 7: 65152 bytes; half of it ahead of 111.
        let inside = forged(HostId::Server, InjectedSegment::Rst, InjectedSeq::InWindow);
        assert_eq!(inside.seq, 111 + (509 << 7) / 2);
        let outside = forged(HostId::Server, InjectedSegment::Rst, InjectedSeq::OutOfWindow);
        assert_eq!(outside.seq, 111u32.wrapping_add(1 << 31));
    }

    #[test]
    fn forged_data_toward_the_client_comes_from_the_server_with_its_timestamps() {
        let data = forged(HostId::Client, InjectedSegment::Data { bytes: 20 }, InjectedSeq::Exact);
        assert_eq!((data.src, data.sport, data.dport), (Ipv4Addr::new(10, 0, 0, 2), 9000, 40000));
        // The client acknowledged 5001 last; the server acknowledged 111 last.
        assert_eq!((data.seq, data.ack, data.flags, data.payload_len), (5001, 111, TCP_PSH | TCP_ACK, 20));
        assert_eq!(data.timestamps, Some((1000, 2000)));
    }

    /// A numbered frame of an IEEE local experimental EtherType, broadcast: the wire forwards it like any other.
    const ORDER_ETHERTYPE: u16 = 0x88b5;
    const ORDER_FRAMES: u64 = 60_000;

    /// Real-time threads one priority above the wire's, one per CPU, each busy 2 ms of every 5 (staggered):
    /// whenever one runs, the wire thread on its CPU is preempted; an unpinned one is pushed to another CPU
    /// (the scheduler's real-time push), a pinned one waits.
    fn preempting_load(stop: &Arc<AtomicBool>) -> Vec<JoinHandle<()>> {
        let cpus = thread::available_parallelism().map_or(1, usize::from);
        (0..cpus)
            .map(|cpu| {
                let stop = Arc::clone(stop);
                thread::spawn(move || {
                    // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
                    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
                    // SAFETY: `cpu` is below the CPU count, far below CPU_SETSIZE.
                    unsafe { libc::CPU_SET(cpu, &mut set) };
                    // SAFETY: pid 0 is the calling thread; `set` lives across the call.
                    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
                    let param = libc::sched_param { sched_priority: 3 };
                    // SAFETY: pid 0 is the calling thread; `param` lives across the call. Refused rootless: the
                    // load is then ordinary and preempts nothing, and the test checks the order alone.
                    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param) };
                    thread::sleep(Duration::from_millis(cpu as u64 * 2 + 1));
                    while !stop.load(Ordering::Relaxed) {
                        let busy = std::time::Instant::now();
                        while busy.elapsed() < Duration::from_millis(2) {
                            std::hint::spin_loop();
                        }
                        thread::sleep(Duration::from_millis(3));
                    }
                })
            })
            .collect()
    }

    /// Sends `ORDER_FRAMES` numbered frames from the client's end in bursts, from one CPU so that they reach the
    /// wire in order.
    fn send_numbered(ifindex: u32) -> Result<()> {
        let _ = priority::pin_current_thread();
        let socket = capture::open_socket("order sender")?;
        capture::bind(&socket, ifindex, "order sender")?;
        let mut frame = [0u8; 128];
        frame[..6].copy_from_slice(&[0xff; 6]);
        frame[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0x7e]);
        frame[12..14].copy_from_slice(&ORDER_ETHERTYPE.to_be_bytes());
        for number in 0..ORDER_FRAMES {
            frame[14..22].copy_from_slice(&number.to_be_bytes());
            loop {
                // SAFETY: `frame` is live for the call and its length is passed.
                let sent = unsafe { libc::send(socket.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
                if sent >= 0 {
                    break;
                }
                let error = io::Error::last_os_error();
                if error.raw_os_error() != Some(libc::ENOBUFS) {
                    return Err(Error::sys("order sender: send", error));
                }
                thread::sleep(Duration::from_micros(100));
            }
            if number % 200 == 199 {
                thread::sleep(Duration::from_micros(500));
            }
        }
        Ok(())
    }

    /// The numbers of the frames arriving at the server's end, in arrival order, until none came for 1 s.
    fn receive_numbered(ifindex: u32) -> Result<Vec<u64>> {
        let _ = priority::raise_current_thread();
        let socket = capture::open_socket("order receiver")?;
        let buffer: libc::c_int = 64 << 20;
        capture::set_option(&socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &buffer)
            .map_err(|e| Error::sys("order receiver: SO_RCVBUFFORCE", e))?;
        let timeout = libc::timeval { tv_sec: 1, tv_usec: 0 };
        capture::set_option(&socket, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout)
            .map_err(|e| Error::sys("order receiver: SO_RCVTIMEO", e))?;
        capture::bind(&socket, ifindex, "order receiver")?;
        let mut numbers = Vec::new();
        let mut frame = [0u8; 256];
        loop {
            // SAFETY: `frame` is live for the call and its length is passed.
            let got = unsafe { libc::recv(socket.as_raw_fd(), frame.as_mut_ptr().cast(), frame.len(), 0) };
            if got < 0 {
                break;
            }
            if got >= 22 && frame[12..14] == ORDER_ETHERTYPE.to_be_bytes() {
                numbers.push(u64::from_be_bytes(frame[14..22].try_into().unwrap()));
            }
        }
        Ok(numbers)
    }

    /// Frames leave the wire in the order it released them while its CPU is taken from it again and again (and
    /// the scheduler moves it to the other CPU).
    #[test]
    fn frames_leave_in_order_while_the_wire_is_preempted() {
        let description = "description: wire order\nserver:\n  - listen: { port: 9000 }\nclient:\n  - connect: { to: server, port: 9000 }\n";
        let mut plan =
            crate::scenario::parse("wire-order", std::path::Path::new("wire-order.yaml"), description).unwrap();
        plan.links.iter_mut().for_each(|link| link.wire = true);
        let hosts = [Netns::new_anonymous().unwrap(), Netns::new_anonymous().unwrap()];
        let middle = crate::run::topology::wire_namespace().unwrap();
        let topology = crate::run::topology::build(&plan, &[&hosts[0], &hosts[1]], Some(&middle)).unwrap();
        let facing = crate::run::topology::wire_ends(&middle).unwrap();
        let ifindex = |host: HostId| topology.link(host).unwrap().ifindex;
        let wire = Wire::start(&middle, facing, Vec::new(), 15, None).unwrap();
        let receiver = hosts[HostId::Server.index()].spawn("order-receiver", {
            let server = ifindex(HostId::Server);
            move || receive_numbered(server)
        });
        let stop = Arc::new(AtomicBool::new(false));
        let load = preempting_load(&stop);
        let client = ifindex(HostId::Client);
        let sent = hosts[HostId::Client.index()].spawn("order-sender", move || send_numbered(client));
        sent.unwrap().join().unwrap().unwrap();
        stop.store(true, Ordering::Relaxed);
        load.into_iter().for_each(|busy| busy.join().unwrap());
        let numbers = receiver.unwrap().join().unwrap().unwrap();
        let stopped = wire.stop().unwrap();
        let toward_server = &stopped.stats[HostId::Server.index()];
        // Frames a full socket buffer dropped are missing, not out of order; nearly all must have come through
        // for the order to say anything.
        assert!(
            numbers.len() as u64 >= ORDER_FRAMES * 9 / 10,
            "{} of {ORDER_FRAMES} arrived; wire: {toward_server:?}",
            numbers.len()
        );
        let overtaken: Vec<(u64, u64)> =
            numbers.windows(2).filter(|pair| pair[1] < pair[0]).map(|pair| (pair[0], pair[1])).collect();
        assert!(
            overtaken.is_empty(),
            "{} frames arrived behind a later one: {:?}",
            overtaken.len(),
            &overtaken[..overtaken.len().min(10)]
        );
    }

    #[test]
    fn nothing_is_forged_without_a_connection_or_when_the_match_refuses() {
        let injection = Injection { segment: InjectedSegment::Rst, seq: InjectedSeq::Exact };
        assert!(Connections::default().forge(HostId::Server, injection, &|_| true).is_none());
        assert!(established().forge(HostId::Server, injection, &|_| false).is_none());
    }
}
