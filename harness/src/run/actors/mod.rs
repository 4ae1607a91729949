//! Actors: the socket program of one host, run step by step with real blocking Linux socket calls on a thread
//! inside the host's namespace, each step's actual outcome recorded as `StepStart` / `StepEnd` events.
//!
//! Sockets: a host holds the sockets it made, by name (`as:` on `socket` / `accept`). The *current* socket
//! is the one made last (by `socket`, `accept`, or implicitly by `bind` / `listen` / `connect` when there is
//! no open current socket); a step's `socket:` picks a named one instead without changing which is current.
//! A closed socket stays current: later calls on it are made on descriptor -1, so the kernel answers EBADF as
//! for the stale number (a real program's stale number may meanwhile name another thread's descriptor; -1
//! never does). `poll` on it gives `POLLNVAL`, as the kernel does for a closed descriptor.
//!
//! Outcomes: `getsockopt SO_ERROR` gives `ok` or the pending errno (detail `SO_ERROR 110`); any other option
//! gives `ok` with the value in the detail (`value 5`, `on, 3 s`). `send` counts the bytes the kernel took,
//! partial sends included. An `exec` whose output lacks a pattern lists it in the step end's `unmatched`.
//!
//! When the program ends, the sockets it still holds are closed, as a process's are when it exits (FIN, or
//! RST when unread data is left): a scenario keeps a connection open past its last call with a final `sleep`
//! or `wait`.
//!
//! Start: a `connect` to the other host first waits (before its `StepStart`) until the other host's `listen`
//! on that port has finished, when that listen is part of the other host's setup (validation links the two):
//! the two programs start together, and the connect must not race the listen.
//!
//! Time: the actor never waits past the scenario deadline by its own waits (`sleep`, `wait`, `poll`, `send
//! every`, exec timeouts); such a step cut by the deadline ends `Unfinished`. Blocking socket calls
//! (`connect`, `accept`, `recv`, `send` on a full buffer) may block past it; the runner ends the process
//! then, and the step's `StepStart` without a `StepEnd` shows it was in progress. Steps not started by the
//! deadline are not started at all.

pub mod board;
pub mod exec;
mod sockets;
pub mod sockopt;
pub mod trace;

use crate::scenario::plan::Family;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

pub use board::StepBoard;
pub use exec::ProcessRegistry;

use crate::error::{Context, Error, Result};
use crate::observe::sockets::{self as observe, DiagSocket};
use crate::run::clock::EventSink;
use crate::run::confine::Confinement;
use crate::run::switchboard::Switchboard;
use crate::scenario::plan::{
    Action, Errno, ExecPlan, HostId, HostPlan, MsgFlag, PollEvent, SendRepeat, SendUntil, SockOpt, SockOptName,
    SockOptValue, StepEdge, StepPlan, StepRef, TcpState,
};
use crate::timeline::{ErrnoEvent, Event, EventKind, Outcome};
use exec::BackgroundLauncher;
use sockets::{HostSockets, Lookup};

/// Everything an actor needs besides its program.
#[derive(Debug)]
pub struct ActorContext {
    /// The host whose program runs; must be the `HostPlan`'s id.
    pub host: HostId,
    /// The host's own address: `bind` / `listen` of an IPv4 socket bind to it (an IPv6 socket binds `[::]`).
    pub own_address: Ipv4Addr,
    pub board: Arc<StepBoard>,
    pub processes: Arc<ProcessRegistry>,
    pub sink: EventSink,
    /// The run's fault switches: a step's start and end switch the faults they trigger before the program goes
    /// on.
    pub switches: Arc<Switchboard>,
    /// The scenario deadline.
    pub deadline: Instant,
    /// A sock_diag socket in each host's namespace (by `HostId::index()`) for the `wait: { listening }` steps
    /// of the program; `None` for a host none of them names (see [`listening_hosts`]).
    pub sock_diag: [Option<DiagSocket>; 2],
    /// The scenario's report folder: the strace logs of exec steps with `trace: true` go there.
    pub report_dir: PathBuf,
    /// The namespaces and capabilities the host's `exec` programs run with; `None` for a program without
    /// `exec` steps.
    pub confinement: Option<Arc<Confinement>>,
}

/// The hosts whose ports `host`'s program waits for (`wait: { listening }`), by `HostId::index()`.
pub fn listening_hosts(host: &HostPlan) -> [bool; 2] {
    let mut named = [false, false];
    for step in &host.steps {
        if let Action::WaitListening { host, .. } = step.action {
            named[host.index()] = true;
        }
    }
    named
}

/// How often a `wait: { listening }` step dumps the host's sockets: a dump of a scenario's namespace takes tens
/// of microseconds, and a program that has just been started listens within milliseconds.
const LISTENING_POLL: Duration = Duration::from_millis(2);

/// Runs the host's program to its end on the calling thread, which must already be inside the host's
/// namespace (`ip netns exec <host> <program>`). Returns when the last step finished (or the deadline came),
/// having closed the sockets left open. Kernel errors are outcomes, never `Err`; `Err` is a harness failure
/// (a thread that cannot be started, a `wait` on a step that does not exist).
pub fn run_host(host: &HostPlan, ctx: ActorContext) -> Result<()> {
    if host.id != ctx.host {
        return Err(Error::Internal(format!("actor of {} given the program of {}", ctx.host, host.id)));
    }
    let mut actor = Actor { ctx, sockets: HostSockets::default(), launcher: None };
    for step in &host.steps {
        if let Action::Connect { after_listen: Some(listen), .. } = &step.action {
            actor.ctx.board.wait(listen.host, listen.index, StepEdge::Finished, actor.ctx.deadline);
        }
        if Instant::now() >= actor.ctx.deadline {
            break;
        }
        let label = step.label();
        actor.record(EventKind::StepStart { step: step.index, label: label.clone() })?;
        actor.ctx.board.mark(host.id, step.index, StepEdge::Started);
        crate::selftest::panic_if_chosen(host.id, step);
        let StepEnd { outcome, detail, unmatched } = actor.run_step(step)?;
        actor.record(EventKind::StepEnd { step: step.index, label, outcome, detail, unmatched })?;
        actor.ctx.board.mark(host.id, step.index, StepEdge::Finished);
    }
    drop(actor.sockets);
    Ok(())
}

type StepResult = (Outcome, Option<String>);

/// How a step ended: its outcome, the detail for the timeline, and (for `exec`) the output patterns that
/// matched nowhere.
#[derive(Debug, Clone, PartialEq)]
pub struct StepEnd {
    pub outcome: Outcome,
    pub detail: Option<String>,
    pub unmatched: Vec<String>,
}

impl From<StepResult> for StepEnd {
    fn from((outcome, detail): StepResult) -> StepEnd {
        StepEnd { outcome, detail, unmatched: Vec::new() }
    }
}

struct Actor {
    ctx: ActorContext,
    sockets: HostSockets,
    launcher: Option<BackgroundLauncher>,
}

/// The errno name of a failed call, e.g. `ECONNRESET`.
fn errno_name(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => Errno(n).name(),
        None => e.to_string(),
    }
}

fn failed(e: &io::Error, detail: impl Into<Option<String>>) -> StepResult {
    (Outcome::Error(errno_name(e)), detail.into())
}

/// Joins the parts of a detail that are present with `; `.
fn join_detail(parts: impl IntoIterator<Item = Option<String>>) -> Option<String> {
    let parts: Vec<String> = parts.into_iter().flatten().collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Why a step's socket is descriptor -1, if it is.
fn socket_note(lookup: Lookup, name: Option<&str>) -> Option<String> {
    match (lookup, name) {
        (Lookup::Open(_), _) => None,
        (Lookup::Closed, Some(name)) => Some(format!("socket {name} was closed")),
        (Lookup::Closed, None) => Some("the current socket was closed".into()),
        (Lookup::Missing, Some(name)) => Some(format!("no socket named {name}")),
        (Lookup::Missing, None) => Some("no socket yet".into()),
    }
}

/// The names of the events set in `revents`, in `PollEvent::ALL` order, then `POLLNVAL`.
fn poll_event_names(revents: i16) -> Vec<String> {
    let mut names: Vec<String> =
        PollEvent::ALL.into_iter().filter(|e| revents & e.bits() != 0).map(|e| e.name().to_string()).collect();
    if revents & libc::POLLNVAL != 0 {
        names.push("POLLNVAL".into());
    }
    names
}

/// The bytes every `send` step sends: `abc...xyzabc...`, so a capture shows where each chunk starts.
fn send_pattern(len: usize) -> Vec<u8> {
    (b'a'..=b'z').cycle().take(len).collect()
}

/// Sleeps for `duration` or until `deadline`, whichever is first; true if the whole duration passed.
fn sleep_bounded(duration: Duration, deadline: Instant) -> bool {
    let now = Instant::now();
    let left = deadline.saturating_duration_since(now);
    if duration <= left {
        thread::sleep(duration);
        true
    } else {
        thread::sleep(left);
        false
    }
}

impl Actor {
    /// Records a step's start or end now, after switching the faults it triggers: a fault a step's end turns on
    /// is in force before the next step starts, one its start turns on before its call is made.
    fn record(&self, kind: EventKind) -> Result<()> {
        let event = Event { t: self.ctx.sink.clock().now(), host: self.ctx.host, kind };
        self.ctx.switches.observe(&event)?;
        self.ctx.sink.emit_at(event.t, event.host, event.kind);
        Ok(())
    }

    fn run_step(&mut self, step: &StepPlan) -> Result<StepEnd> {
        let named = step.socket.as_deref();
        let result = match &step.action {
            Action::Exec(plan) if plan.background => return self.launcher()?.launch(plan),
            Action::Exec(plan) if plan.trace => return self.run_traced(step.index, plan),
            Action::Exec(plan) => {
                return exec::run_foreground(plan, self.confinement()?, &self.ctx.processes, self.ctx.deadline, None)
            }
            Action::Socket { name, family, options, nonblocking } => {
                self.socket(name.clone(), *family, options, *nonblocking)
            }
            Action::SetOpt { options } => self.set_options(named, options),
            Action::Bind { port, family } => self.bind(named, *family, *port),
            Action::Listen { port, backlog, family } => self.listen(named, *family, *port, *backlog),
            Action::Accept { name, nonblocking } => self.accept(named, name.clone(), *nonblocking),
            Action::Connect { address, port, nonblocking, .. } => self.connect(named, *address, *port, *nonblocking),
            Action::Poll { events, timeout } => self.poll(named, events, *timeout),
            Action::Send { bytes, repeat, every, until, flags } => {
                self.send(named, *bytes, *repeat, *every, *until, MsgFlag::bits(flags))
            }
            Action::Recv { max, until_eof, nonblocking, flags } => {
                self.recv(named, *max, *until_eof, *nonblocking, MsgFlag::bits(flags))
            }
            Action::Shutdown { how } => {
                let lookup = self.sockets.lookup(named);
                match sockets::shutdown(lookup.fd(), *how) {
                    Ok(()) => (Outcome::Ok, None),
                    Err(e) => failed(&e, socket_note(lookup, named)),
                }
            }
            Action::Close => self.close(named),
            Action::Sleep { duration } => {
                if sleep_bounded(*duration, self.ctx.deadline) {
                    (Outcome::Ok, None)
                } else {
                    (Outcome::Unfinished, Some("the scenario deadline came first".into()))
                }
            }
            Action::GetOpt { option } => self.get_option(named, *option),
            Action::GetTcpInfo => {
                let lookup = self.sockets.lookup(named);
                match sockopt::get_tcp_info(lookup.fd()) {
                    Ok(read) => (Outcome::TcpInfo(read), None),
                    Err(e) => failed(&e, socket_note(lookup, named)),
                }
            }
            Action::Wait { step, edge } => self.wait(step, *edge),
            Action::WaitListening { host, port } => self.wait_listening(*host, *port)?,
        };
        Ok(result.into())
    }

    /// The keeper thread of background programs, started at the first one.
    fn launcher(&mut self) -> Result<&BackgroundLauncher> {
        let confinement = Arc::clone(self.confinement()?);
        Ok(match &mut self.launcher {
            Some(launcher) => launcher,
            empty => {
                let registry = Arc::clone(&self.ctx.processes);
                empty.insert(BackgroundLauncher::start(registry, confinement, self.ctx.deadline)?)
            }
        })
    }

    /// What `exec` programs run in; the engine makes it for every program with `exec` steps.
    fn confinement(&self) -> Result<&Arc<Confinement>> {
        self.ctx.confinement.as_ref().ok_or_else(|| {
            Error::Internal(format!("the {} program runs an exec step but was given no confinement", self.ctx.host))
        })
    }

    /// The step's socket; when the step names none and there is no open current socket, a new one of `family`
    /// (`socket(AF_INET or AF_INET6, SOCK_STREAM)`) becomes current. `Err` is the outcome of a failed creation.
    fn socket_or_create(&mut self, named: Option<&str>, family: Family) -> Result<Lookup, StepResult> {
        let lookup = self.sockets.lookup(named);
        if named.is_some() || matches!(lookup, Lookup::Open(_)) {
            return Ok(lookup);
        }
        match sockets::tcp_socket(family, false) {
            Ok(fd) => Ok(Lookup::Open(self.sockets.add(None, fd))),
            Err(e) => Err(failed(&e, Some(socket_call(family)))),
        }
    }

    fn socket(&mut self, name: Option<String>, family: Family, options: &[SockOpt], nonblocking: bool) -> StepResult {
        match sockets::tcp_socket(family, nonblocking) {
            Ok(fd) => {
                let fd = self.sockets.add(name, fd);
                apply_options(fd, options, None)
            }
            Err(e) => failed(&e, Some(socket_call(family))),
        }
    }

    /// Where `bind` and `listen` bind a socket: the host's address for IPv4, the wildcard `[::]` for IPv6 (so
    /// that a dual-stack listener takes IPv4 peers too). The socket's own family decides (`SO_DOMAIN`), not
    /// the step's: a step acting on an existing socket binds it as what it is.
    fn bind_address(&self, fd: RawFd, port: u16) -> SocketAddr {
        match sockets::family(fd) {
            Ok(Family::Ipv6) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
            _ => SocketAddr::V4(SocketAddrV4::new(self.ctx.own_address, port)),
        }
    }

    fn set_options(&self, named: Option<&str>, options: &[SockOpt]) -> StepResult {
        let lookup = self.sockets.lookup(named);
        apply_options(lookup.fd(), options, socket_note(lookup, named))
    }

    fn get_option(&self, named: Option<&str>, option: SockOptName) -> StepResult {
        let lookup = self.sockets.lookup(named);
        match sockopt::get(lookup.fd(), option) {
            Err(e) => failed(&e, socket_note(lookup, named)),
            Ok(SockOptValue::Int(0)) if option == SockOptName::SO_ERROR => (Outcome::Ok, None),
            Ok(SockOptValue::Int(errno)) if option == SockOptName::SO_ERROR => {
                (Outcome::Error(Errno(errno).name()), Some(format!("SO_ERROR {errno}")))
            }
            Ok(value) => (Outcome::Value(value.to_string()), None),
        }
    }

    fn bind(&mut self, named: Option<&str>, family: Family, port: u16) -> StepResult {
        let lookup = match self.socket_or_create(named, family) {
            Ok(lookup) => lookup,
            Err(result) => return result,
        };
        let addr = self.bind_address(lookup.fd(), port);
        match sockets::bind(lookup.fd(), addr) {
            Ok(()) => (Outcome::Ok, Some(format!("bound to {addr}"))),
            Err(e) => failed(&e, join_detail([Some(format!("bind {addr}")), socket_note(lookup, named)])),
        }
    }

    /// With a port: `SO_REUSEADDR` then `bind` to it first, so a scenario can listen again on a port whose
    /// earlier connection is in TIME-WAIT.
    fn listen(&mut self, named: Option<&str>, family: Family, port: Option<u16>, backlog: u32) -> StepResult {
        let lookup = match self.socket_or_create(named, family) {
            Ok(lookup) => lookup,
            Err(result) => return result,
        };
        let fd = lookup.fd();
        let note = socket_note(lookup, named);
        if let Some(port) = port {
            let reuse = SockOpt { name: SockOptName::SO_REUSEADDR, value: SockOptValue::Int(1) };
            if let Err(e) = sockopt::set(fd, &reuse) {
                return failed(&e, join_detail([Some(format!("setsockopt {}", sockopt::describe(&reuse))), note]));
            }
            let addr = self.bind_address(fd, port);
            if let Err(e) = sockets::bind(fd, addr) {
                return failed(&e, join_detail([Some(format!("bind {addr}")), note]));
            }
        }
        match sockets::listen(fd, backlog) {
            Ok(()) => {
                let local = sockets::local_addr(fd).map(|a| format!("listening on {a}")).ok();
                (Outcome::Ok, local)
            }
            Err(e) => failed(&e, join_detail([Some(format!("listen backlog {backlog}")), note])),
        }
    }

    fn accept(&mut self, named: Option<&str>, name: Option<String>, nonblocking: bool) -> StepResult {
        let lookup = self.sockets.lookup(named);
        match sockets::accept(lookup.fd(), nonblocking) {
            Ok((fd, peer)) => {
                self.sockets.add(name, fd);
                (Outcome::Ok, Some(format!("from {peer}")))
            }
            Err(e) => failed(&e, socket_note(lookup, named)),
        }
    }

    fn connect(&mut self, named: Option<&str>, address: IpAddr, port: u16, nonblocking: bool) -> StepResult {
        let lookup = match self.socket_or_create(named, Family::of(address)) {
            Ok(lookup) => lookup,
            Err(result) => return result,
        };
        let target = SocketAddr::new(address, port);
        let result = sockets::connect(lookup.fd(), target, nonblocking);
        let route = match sockets::local_addr(lookup.fd()) {
            Ok(local) if local.port() != 0 => format!("{local} -> {target}"),
            _ => format!("-> {target}"),
        };
        match result {
            Ok(()) => (Outcome::Ok, Some(route)),
            Err(e) => failed(&e, join_detail([Some(route), socket_note(lookup, named)])),
        }
    }

    fn poll(&self, named: Option<&str>, events: &[PollEvent], timeout: Duration) -> StepResult {
        let lookup = self.sockets.lookup(named);
        let Lookup::Open(fd) = lookup else {
            return (Outcome::Events(vec!["POLLNVAL".into()]), socket_note(lookup, named));
        };
        let bits = events.iter().fold(0, |acc, e| acc | e.bits());
        let left = self.ctx.deadline.saturating_duration_since(Instant::now());
        let cut = left < timeout;
        match sockets::poll(fd, bits, timeout.min(left)) {
            Ok(Some(revents)) => (Outcome::Events(poll_event_names(revents)), None),
            Ok(None) if cut => (Outcome::Unfinished, Some("the scenario deadline came first".into())),
            Ok(None) => (Outcome::Timeout, None),
            Err(e) => failed(&e, None),
        }
    }

    /// `send` of the pattern, `repeat` times, `every` apart; see [`Action::Send`]. Partial sends count.
    fn send(
        &self,
        named: Option<&str>,
        bytes: usize,
        repeat: SendRepeat,
        every: Option<Duration>,
        until: Option<SendUntil>,
        asked_flags: libc::c_int,
    ) -> StepResult {
        let lookup = self.sockets.lookup(named);
        let fd = lookup.fd();
        let chunk = send_pattern(bytes);
        let would_block_ends = until == Some(SendUntil::WouldBlock);
        let flags = asked_flags | libc::MSG_NOSIGNAL | if would_block_ends { libc::MSG_DONTWAIT } else { 0 };
        let mut total: u64 = 0;
        let mut sends: u32 = 0;
        loop {
            if let SendRepeat::Times(n) = repeat {
                if sends >= n {
                    return (Outcome::Bytes(total), None);
                }
            }
            if sends > 0 {
                if let Some(every) = every {
                    if !sleep_bounded(every, self.ctx.deadline) {
                        return deadline_during_sends(sends, total);
                    }
                }
            }
            if Instant::now() >= self.ctx.deadline {
                return deadline_during_sends(sends, total);
            }
            match send_all(fd, &chunk, flags, &mut total) {
                Ok(()) => sends += 1,
                Err(e) if would_block_ends && e.raw_os_error() == Some(libc::EAGAIN) => {
                    return (Outcome::Bytes(total), Some(format!("would block after {sends} full sends")));
                }
                Err(e) => {
                    let before = Some(format!("{sends} sends ok before ({total} bytes)"));
                    return failed(&e, join_detail([before, socket_note(lookup, named)]));
                }
            }
        }
    }

    fn recv(
        &self,
        named: Option<&str>,
        max: usize,
        until_eof: bool,
        nonblocking: bool,
        flags: libc::c_int,
    ) -> StepResult {
        let lookup = self.sockets.lookup(named);
        let fd = lookup.fd();
        let mut buf = vec![0u8; max];
        if !until_eof {
            let flags = flags | if nonblocking { libc::MSG_DONTWAIT } else { 0 };
            return match sockets::recv(fd, &mut buf, flags) {
                Ok(0) => (Outcome::Eof, None),
                Ok(n) => (Outcome::Bytes(n as u64), None),
                Err(e) => failed(&e, socket_note(lookup, named)),
            };
        }
        let mut total: u64 = 0;
        loop {
            if Instant::now() >= self.ctx.deadline {
                return (Outcome::Unfinished, Some(format!("{total} bytes before the scenario deadline")));
            }
            match sockets::recv(fd, &mut buf, flags) {
                Ok(0) => return (Outcome::Eof, Some(format!("{total} bytes before EOF"))),
                Ok(n) => total += n as u64,
                Err(e) => {
                    let before = Some(format!("{total} bytes before"));
                    return failed(&e, join_detail([before, socket_note(lookup, named)]));
                }
            }
        }
    }

    fn close(&mut self, named: Option<&str>) -> StepResult {
        let lookup = self.sockets.lookup(named);
        let result = match self.sockets.take(named) {
            Some(fd) => sockets::close(fd),
            None => sockets::close_no_socket(),
        };
        match result {
            Ok(()) => (Outcome::Ok, None),
            Err(e) => failed(&e, socket_note(lookup, named)),
        }
    }

    fn wait(&self, step: &StepRef, edge: StepEdge) -> StepResult {
        if self.ctx.board.wait(step.host, step.index, edge, self.ctx.deadline) {
            (Outcome::Ok, None)
        } else {
            let edge = match edge {
                StepEdge::Started => "started",
                StepEdge::Finished => "finished",
            };
            (Outcome::Unfinished, Some(format!("{step} had not {edge} by the end of the run")))
        }
    }

    /// Runs the program under strace, then puts the errno events of its trace on the timeline, at the times the
    /// calls returned; the detail says where the trace is and how many events it gave.
    fn run_traced(&self, index: usize, plan: &ExecPlan) -> Result<StepEnd> {
        let name = format!("{}-{}.strace", self.ctx.host, index + 1);
        let log = self.ctx.report_dir.join(&name);
        let mut end =
            exec::run_foreground(plan, self.confinement()?, &self.ctx.processes, self.ctx.deadline, Some(&log))?;
        let text = std::fs::read_to_string(&log).context(|| format!("read the trace {} (strace -o)", log.display()))?;
        let (events, more) = trace::parse(&text);
        let clock = self.ctx.sink.clock();
        for event in &events {
            let local = event.local.unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
            let remote = event.remote.unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
            let kind = EventKind::Errno(ErrnoEvent {
                step: index,
                pid: event.pid,
                call: event.call.clone(),
                errno: event.errno.clone(),
                socket: format!("{local} -> {remote}"),
                local_port: local.port(),
                remote_port: remote.port(),
                took: event.took,
            });
            self.ctx.sink.emit_at(clock.since_t0(event.returned), self.ctx.host, kind);
        }
        let kept = if more > 0 { format!(" ({more} more not kept)") } else { String::new() };
        let traced = format!("trace {name}: {} errno event(s){kept}", events.len());
        end.detail = join_detail([end.detail.take(), Some(traced)]);
        Ok(end)
    }

    /// Dumps `host`'s sockets (`ss -Htln`) every [`LISTENING_POLL`] until one listens on `port`, or the deadline.
    fn wait_listening(&mut self, host: HostId, port: u16) -> Result<StepResult> {
        let deadline = self.ctx.deadline;
        let socket = self.ctx.sock_diag[host.index()].as_mut().ok_or_else(|| {
            Error::Internal(format!("wait for a listener on {host}: no sock_diag socket in {host}'s namespace"))
        })?;
        let mut samples = Vec::new();
        loop {
            observe::dump_into(socket, &mut samples)?;
            let listener = samples.iter().find(|s| s.state == TcpState::Listen && s.local.port() == port);
            if let Some(listener) = listener {
                return Ok((Outcome::Ok, Some(format!("{host} listening on {}", listener.local))));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok((
                    Outcome::Unfinished,
                    Some(format!("nothing listened on port {port} of {host} by the end of the run")),
                ));
            }
            thread::sleep(LISTENING_POLL.min(deadline - now));
        }
    }
}

fn deadline_during_sends(sends: u32, total: u64) -> StepResult {
    (Outcome::Unfinished, Some(format!("{sends} sends ok ({total} bytes) when the scenario deadline came")))
}

/// Sends all of `chunk`, adding what the kernel took to `total` even when a later part fails.
fn send_all(fd: RawFd, chunk: &[u8], flags: libc::c_int, total: &mut u64) -> io::Result<()> {
    let mut offset = 0;
    loop {
        let sent = sockets::send(fd, &chunk[offset..], flags)?;
        if sent == 0 && offset < chunk.len() {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        offset += sent;
        *total += sent as u64;
        if offset >= chunk.len() {
            return Ok(());
        }
    }
}

/// `setsockopt` for each option in order; the first refusal is the step's outcome.
fn apply_options(fd: RawFd, options: &[SockOpt], note: Option<String>) -> StepResult {
    for option in options {
        if let Err(e) = sockopt::set(fd, option) {
            return failed(&e, join_detail([Some(format!("setsockopt {}", sockopt::describe(option))), note]));
        }
    }
    (Outcome::Ok, note)
}

#[cfg(test)]
mod tests;

/// The `socket` call a step makes, for its detail when it fails.
fn socket_call(family: Family) -> String {
    match family {
        Family::Ipv4 => "socket(AF_INET, SOCK_STREAM)".into(),
        Family::Ipv6 => "socket(AF_INET6, SOCK_STREAM)".into(),
    }
}
