//! The scenario processes of `netfault run` forked from a copy of the runner, made while the runner was still
//! single-threaded and had loaded its scenarios (a fork server), instead of netfault executed again for each
//! (`netfault __run-one FILE`): no second `execve` and dynamic loader (1.1-1.5 ms of a process start on this
//! machine's VM, whose `cpuid` probes trap), no second parse of the scenario. One scenario process per
//! scenario stays, and it is pid 1 of a PID namespace of its own as before (`pidns`), forked straight into it
//! (`unshare(CLONE_NEWPID)`, `fork`, and `setns` back to the server's own): the relaying parent an executed
//! scenario process leaves outside its namespace is not needed, as the server reaps it and the runner takes
//! its result from its summary, not from its exit (which waits for its packet sockets' RCU grace periods).
//! Without the privilege for that (rootless) it is forked as it would have been executed, and makes its user
//! namespace and its relaying parent itself.
//!
//! `fork` copies only the calling thread: a process with other threads may hold locks (the allocator's, the
//! standard streams', any `Mutex`) in threads the child never gets. The server is forked only where
//! `/proc/self/status` says `Threads: 1` ([`start`] checks it, and fails loudly in a debug build), and it
//! starts no thread of its own, so each fork it makes is of a single-threaded process.
//!
//! The runner's job threads ask it over a `SOCK_SEQPACKET` socket pair: which plan of its table, the run's
//! repetition and seed, and the descriptors of the new process's stdout, stderr and of a socket for the answer
//! (`SCM_RIGHTS`). The server answers with the pid and a pidfd of the process (the runner signals and watches
//! it through that), reaps it when it exits and sends the wait status on the same socket. Test drivers
//! (`crate::testing`, the examples) still execute `__run-one`: libtest's threads exist before they could fork.

use std::io::{IoSlice, IoSliceMut, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use nix::unistd::{fork, pipe2, ForkResult, Pid};

use crate::error::{Context, Error, Result};
use crate::observe::sockets::SCENARIOS_AT_ONCE_ENV;
use crate::observe::transitions;
use crate::run::pool;
use crate::run::runner::{self, Job};
use crate::run::userns;
use crate::scenario::plan::Plan;

/// The runner's end of the request socket (`None` once [`stop`] closed it) and the server's pid, once [`start`]
/// has forked the server.
static SERVER: OnceLock<(Mutex<Option<OwnedFd>>, Pid)> = OnceLock::new();

/// How long the server, once the runner said it is done ([`release`]), waits for the processes it forked to
/// exit (each has reported by then, and only waits for the kernel's release of its sockets) before it exits,
/// which kills those left (`PR_SET_PDEATHSIG`).
const LAST_EXITS_WAIT: Duration = Duration::from_secs(10);

/// The runner's last request: it starts no more scenarios, and every one it started has reported.
const DONE: u8 = b'Q';

// Every send here is MSG_NOSIGNAL: the runner ends quietly on a closed pipe (SIGPIPE's default action) and the
// server inherits that, while a peer that is gone (a job thread that gave up, a server that died) is only an error.

/// How long a job thread waits for the server to say it forked: a fork takes well under a millisecond, but a
/// loaded machine may leave the server waiting for a CPU.
const ANSWER_WAIT: Duration = Duration::from_secs(30);

/// A request: plan index (u32), repetition (u64, `u64::MAX` for none), seed (u64), scenarios at once (u32).
const REQUEST_BYTES: usize = 24;

/// Tags of the server's answers: forked (then the pid, and 1 if it is its PID namespace's init, 0 if it makes
/// that namespace itself; the pidfd rides along), could not fork (then why, as text), reaped (then the raw wait
/// status).
const FORKED: u8 = b'P';
const FAILED: u8 = b'E';
const REAPED: u8 = b'S';

/// Forks the server, which keeps `table` (each job with its checked plan, as the runner loaded them; a job's
/// [`Job::forked_plan`] is its place here) and serves the runner's job threads until the runner closes its end
/// or dies. Call it once every thread the runner made so far has ended and before it starts any other;
/// refused (and the scenario processes are then executed as before) in a process with more than one thread.
pub fn start(table: Vec<(Job, Plan)>) -> Result<()> {
    if let Err(e) = single_threaded() {
        // A regression, not a condition of the machine: the runner started a thread too early.
        debug_assert!(false, "the fork server needs a single-threaded runner: {e}");
        return Err(e);
    }
    let (runner_end, server_end) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .context(|| "socketpair(AF_UNIX, SOCK_SEQPACKET) for the fork server".to_string())?;
    // What is buffered would otherwise be written twice, once by each process.
    let _ = std::io::stdout().flush();
    // SAFETY: the process is single-threaded (checked above): the child may run any code after the fork.
    match unsafe { fork() }.context(|| "fork() the fork server".to_string())? {
        ForkResult::Child => {
            drop(runner_end);
            serve(server_end, table)
        }
        ForkResult::Parent { child } => {
            drop(server_end);
            SERVER
                .set((Mutex::new(Some(runner_end)), child))
                .map_err(|_| Error::Internal("the fork server was started twice".into()))
        }
    }
}

/// [`userns::require_single_thread`], looking again for up to [`JOINED_EXIT_WAIT`]: a thread that was joined
/// has left user space, but the kernel counts it among the process's threads until the end of its exit, which a
/// busy machine may delay (nothing of it can then hold a lock the fork would copy).
fn single_threaded() -> Result<()> {
    let until = std::time::Instant::now() + JOINED_EXIT_WAIT;
    loop {
        match userns::require_single_thread() {
            Err(_) if std::time::Instant::now() < until => std::thread::sleep(Duration::from_micros(200)),
            checked => return checked,
        }
    }
}

/// How long [`single_threaded`] waits for joined threads to be gone.
const JOINED_EXIT_WAIT: Duration = Duration::from_millis(50);

/// Whether [`start`] forked a server in this process.
pub fn running() -> bool {
    SERVER.get().is_some()
}

/// Tells the server that every scenario process has reported and none will be asked for, and closes the
/// runner's end: the server exits once they have exited (at most [`LAST_EXITS_WAIT`]), with nobody waiting for
/// it. Without this word, the end of the socket (the runner died) makes the server kill them all and exit.
pub fn release() {
    let Some((requests, _)) = SERVER.get() else { return };
    if let Some(requests) = requests.lock().ok().and_then(|mut requests| requests.take()) {
        let _ = nix::sys::socket::send(requests.as_raw_fd(), &[DONE], MsgFlags::MSG_NOSIGNAL);
    }
}

/// [`release`], then waits for the server to exit, at most `limit` (SIGKILL past it): after a stop, the
/// runner's scenario processes have been killed and reaped, and nothing of the run outlives the runner.
pub fn stop(limit: Duration) {
    release();
    let Some((_, server)) = SERVER.get() else { return };
    let until = std::time::Instant::now() + limit;
    loop {
        match nix::sys::wait::waitpid(*server, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) if std::time::Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(nix::sys::wait::WaitStatus::StillAlive) => {
                let _ = nix::sys::signal::kill(*server, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(*server, None);
                return;
            }
            Err(Errno::EINTR) => {}
            _ => return,
        }
    }
}

/// A scenario process the server forked, as the runner's job thread sees it: not its child (the server is its
/// parent and reaps it), so watched and signalled through its pidfd, its status sent by the server.
pub struct Forked {
    pid: u32,
    /// Pid 1 of its own PID namespace, with no relaying parent.
    init: bool,
    pidfd: OwnedFd,
    answers: OwnedFd,
    status: Option<ExitStatus>,
}

/// The scenario process of `job` (whose [`Job::forked_plan`] is `plan`), forked by the server, with its
/// stdout and stderr: the read ends of its pipes.
pub fn spawn(job: &Job, plan: usize, at_once: usize) -> Result<(Forked, OwnedFd, OwnedFd)> {
    let (server, _) = SERVER.get().ok_or_else(|| Error::Internal("no fork server in this process".into()))?;
    let (stdout, child_stdout) =
        pipe2(nix::fcntl::OFlag::O_CLOEXEC).context(|| "pipe2() for a scenario's stdout".to_string())?;
    let (stderr, child_stderr) =
        pipe2(nix::fcntl::OFlag::O_CLOEXEC).context(|| "pipe2() for a scenario's stderr".to_string())?;
    let (answers, server_answers) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .context(|| "socketpair(AF_UNIX, SOCK_SEQPACKET) for the fork server's answer".to_string())?;
    let mut request = [0u8; REQUEST_BYTES];
    request[0..4].copy_from_slice(&u32::try_from(plan).unwrap_or(u32::MAX).to_le_bytes());
    request[4..12].copy_from_slice(&job.run.map_or(u64::MAX, |run| run as u64).to_le_bytes());
    request[12..20].copy_from_slice(&job.seed.to_le_bytes());
    request[20..24].copy_from_slice(&u32::try_from(at_once).unwrap_or(u32::MAX).to_le_bytes());
    let fds = [child_stdout.as_raw_fd(), child_stderr.as_raw_fd(), server_answers.as_raw_fd()];
    {
        let requests = server.lock().map_err(|_| Error::Internal("the fork server's socket lock".into()))?;
        let requests = requests.as_ref().ok_or_else(|| Error::Internal("the fork server was stopped".into()))?;
        sendmsg::<()>(
            requests.as_raw_fd(),
            &[IoSlice::new(&request)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .context(|| "ask the fork server for a scenario process (sendmsg)".to_string())?;
    }
    // The server and the process hold them now.
    drop((child_stdout, child_stderr, server_answers));
    if !readable(answers.as_fd(), ANSWER_WAIT) {
        return Err(Error::Internal(format!(
            "the fork server did not answer within {}s for {}",
            ANSWER_WAIT.as_secs(),
            job.name()
        )));
    }
    let mut bytes = [0u8; 4096];
    let (length, received) = receive(answers.as_raw_fd(), &mut bytes, MsgFlags::empty())
        .context(|| "read the fork server's answer (recvmsg)".to_string())?;
    match (bytes.first(), received.into_iter().next()) {
        (Some(&FORKED), Some(pidfd)) if length == 6 => {
            let pid = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
            Ok((Forked { pid, init: bytes[5] == 1, pidfd, answers, status: None }, stdout, stderr))
        }
        (Some(&FAILED), _) => Err(Error::Internal(format!(
            "the fork server could not start {}: {}",
            job.name(),
            String::from_utf8_lossy(&bytes[1..length])
        ))),
        _ if length == 0 => Err(Error::Internal("the fork server is gone".into())),
        _ => Err(Error::Internal(format!("the fork server answered {length} bytes that mean nothing"))),
    }
}

impl Forked {
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Its wait status once the server has reaped it; a server that is gone (it dies with the runner, and the
    /// process with it) counts as SIGKILL.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_some() {
            return Ok(self.status);
        }
        let mut bytes = [0u8; 8];
        match receive(self.answers.as_raw_fd(), &mut bytes, MsgFlags::MSG_DONTWAIT) {
            Ok((5, _)) if bytes[0] == REAPED => {
                let raw = i32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
                self.status = Some(ExitStatus::from_raw(raw));
            }
            Ok((0, _)) => self.status = Some(ExitStatus::from_raw(libc::SIGKILL)),
            Ok(_) | Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(e) => return Err(Error::sys("read the fork server's answer (recvmsg)", e)),
        }
        Ok(self.status)
    }

    /// Whether it has exited within `limit` (reaped or not).
    pub fn exited_within(&self, limit: Duration) -> bool {
        readable(self.pidfd.as_fd(), limit)
    }

    /// Readable once the server has sent its wait status ([`Forked::try_wait`]).
    pub fn status_signal(&self) -> BorrowedFd<'_> {
        self.answers.as_fd()
    }

    /// Whether its summary is the last the runner waits for: as its PID namespace's init it has ended every
    /// other process of the scenario before it printed it, and the server reaps it; a relaying parent (rootless)
    /// exits at once after it, and is waited for.
    pub fn is_init(&self) -> bool {
        self.init
    }

    /// `kill -SIGNAL PID`, through its pidfd (`pidfd_send_signal`): never another process that got its pid.
    /// A PID namespace's init takes from outside only the signals it handles and SIGKILL: SIGTERM, which a
    /// relaying parent turns into a SIGKILL of its child, is SIGKILL for it.
    pub fn signal(&self, signal: i32) {
        let signal = if self.init && signal == libc::SIGTERM { libc::SIGKILL } else { signal };
        // SAFETY: a descriptor this handle owns, a signal number, no siginfo, no flags.
        unsafe {
            libc::syscall(libc::SYS_pidfd_send_signal, self.pidfd.as_raw_fd(), signal, std::ptr::null::<u8>(), 0)
        };
    }
}

/// `recvmsg` of one message into `bytes`, with the descriptors it carried.
pub(crate) fn receive(socket: RawFd, bytes: &mut [u8], flags: MsgFlags) -> nix::Result<(usize, Vec<OwnedFd>)> {
    let mut space = nix::cmsg_space!([RawFd; 3]);
    let mut iov = [IoSliceMut::new(bytes)];
    let message = recvmsg::<()>(socket, &mut iov, Some(&mut space), flags | MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for control in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = control {
            // SAFETY: each descriptor was just installed in this process by recvmsg and belongs to nobody else.
            fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    Ok((message.bytes, fds))
}

/// Whether `fd` became readable within `limit` (an interrupted poll counts as time gone by, and looks again).
pub(crate) fn readable(fd: BorrowedFd<'_>, limit: Duration) -> bool {
    let until = std::time::Instant::now() + limit;
    loop {
        let left = until.saturating_duration_since(std::time::Instant::now());
        let millis = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(0) if left.is_zero() => return false,
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => return true,
            Err(_) => return false,
        }
    }
}

/// What the server's children inherit from it besides the runner's state.
struct Inherited {
    /// The server's own PID namespace (`/proc/self/ns/pid`), to return to after each `unshare(CLONE_NEWPID)`
    /// (the kernel takes one such unshare per namespace the caller is in; `setns` resets that).
    own_pid_namespace: Option<OwnedFd>,
    /// Read end of a pipe whose write end only the server holds: a child sees it closed once the server is gone.
    server_alive: OwnedFd,
    server_holds: OwnedFd,
    server_pid: u32,
}

/// A process the server forked and has not reaped yet.
struct Live {
    pid: Pid,
    pidfd: OwnedFd,
    answers: OwnedFd,
    /// The number its entries in the transition tracer's shared maps carry ([`transitions::set_owner`]).
    owner: u32,
}

/// The server: forks a scenario process for each request, reaps each as it exits, and exits once the runner
/// said it is done and they have exited ([`release`]), or at once when the runner's end closes without that word
/// (the runner died, however: the kernel closes its descriptors), which kills every process it forked
/// (`PR_SET_PDEATHSIG`: they die with it, their namespaces with them). Its waits are as long as the runner's
/// life, then at most [`LAST_EXITS_WAIT`].
fn serve(requests: OwnedFd, table: Vec<(Job, Plan)>) -> ! {
    // The runner's output is the runner's: a pipe reader (`netfault run | cat`) must see its end when the
    // runner exits, not when this process does. Every answer goes over the socket.
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        for stream in [libc::STDIN_FILENO, libc::STDOUT_FILENO, libc::STDERR_FILENO] {
            // SAFETY: plain system call on descriptors this process owns.
            unsafe { libc::dup2(null.as_raw_fd(), stream) };
        }
    }
    // What the runner gives an executed scenario process on its command line's environment, once for all.
    // Single-threaded (module docs): changing the environment races with no reader.
    for (name, value) in runner::scenario_environment() {
        std::env::set_var(name, value);
    }
    // Hosts made ahead for the scenarios that fit them, by a process forked now, while this one is as it was
    // forked (the maker must not hold the runner's socket).
    let mut stock = pool::Stock::start(table.iter().map(|(_, plan)| plan), &[requests.as_raw_fd()]);
    let Ok((server_alive, server_holds)) = pipe2(nix::fcntl::OFlag::O_CLOEXEC) else { std::process::exit(2) };
    let inherited = Inherited {
        own_pid_namespace: std::fs::File::open("/proc/self/ns/pid").ok().map(OwnedFd::from),
        server_alive,
        server_holds,
        server_pid: std::process::id(),
    };
    let mut live: Vec<Live> = Vec::new();
    // The number of the next process forked (0 is any process not forked here).
    let mut next_owner: u32 = 1;
    // Once the runner has closed its end: when the server stops waiting for the last exits.
    let mut closing: Option<std::time::Instant> = None;
    loop {
        let timeout = match closing {
            None => PollTimeout::NONE,
            Some(until) if live.is_empty() || std::time::Instant::now() >= until => std::process::exit(0),
            Some(until) => PollTimeout::from(
                u16::try_from(until.saturating_duration_since(std::time::Instant::now()).as_millis().max(1))
                    .unwrap_or(u16::MAX),
            ),
        };
        // The request socket is looked at (first) only until the runner closed it: a closed socket is always
        // ready.
        let mut fds = Vec::with_capacity(live.len() + 1);
        if closing.is_none() {
            fds.push(PollFd::new(requests.as_fd(), PollFlags::POLLIN));
        }
        let first = fds.len();
        fds.extend(live.iter().map(|process| PollFd::new(process.pidfd.as_fd(), PollFlags::POLLIN)));
        // Last: pairs the maker sent, taken in as they come.
        let awaited = stock.as_ref().and_then(pool::Stock::awaited);
        if let Some(fd) = awaited {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(_) => std::process::exit(2),
        }
        let ready: Vec<bool> = fds.iter().map(|fd| fd.any().unwrap_or(false)).collect();
        drop(fds);
        if let (Some(stock), Some(true)) = (&mut stock, ready.get(first + live.len())) {
            stock.receive();
        }
        let mut index = live.len();
        while index > 0 {
            index -= 1;
            if ready[first + index] {
                let process = live.swap_remove(index);
                reap(&process);
            }
        }
        if first == 1 && ready[0] {
            let mut bytes = [0u8; REQUEST_BYTES + 1];
            match receive(requests.as_raw_fd(), &mut bytes, MsgFlags::empty()) {
                Ok((0, _)) => std::process::exit(0),
                Ok((1, _)) if bytes[0] == DONE => closing = Some(std::time::Instant::now() + LAST_EXITS_WAIT),
                Ok((length, fds)) => {
                    let owner = next_owner;
                    next_owner = next_owner.wrapping_add(1).max(1);
                    let server = Server { table: &table, requests: &requests, live: &live, inherited: &inherited };
                    if let Some(process) = fork_scenario((&bytes[..length], fds, owner), &server, stock.as_mut()) {
                        live.push(process);
                    }
                }
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(_) => std::process::exit(2),
            }
        }
    }
}

/// Waits for a process whose pidfd said it exited, sends its raw wait status to the runner, and removes what it
/// left in the transition tracer's shared maps (a process killed before its teardown leaves its namespaces
/// there).
fn reap(process: &Live) {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: plain system call on our own child; `status` is a valid place for the kernel to write.
        let rc = unsafe { libc::waitpid(process.pid.as_raw(), &mut status, 0) };
        if rc >= 0 || Errno::last() != Errno::EINTR {
            break;
        }
    }
    let mut answer = [REAPED, 0, 0, 0, 0];
    answer[1..5].copy_from_slice(&status.to_le_bytes());
    // A runner thread that is gone has nobody to tell.
    let _ =
        nix::sys::socket::send(process.answers.as_raw_fd(), &answer, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL);
    transitions::forget_owner(process.owner);
}

/// What the server holds that a request is served from.
struct Server<'s> {
    table: &'s [(Job, Plan)],
    requests: &'s OwnedFd,
    live: &'s [Live],
    inherited: &'s Inherited,
}

/// Serves one request: forks the scenario process it asks for and answers with its pid and pidfd (or why not).
/// A plan that fits the pool takes a pair of its stock if one is ready (none is waited for), which the scenario
/// process inherits and the server then closes: each pair serves exactly one scenario.
fn fork_scenario(
    (request, fds, owner): (&[u8], Vec<OwnedFd>, u32),
    server: &Server<'_>,
    stock: Option<&mut pool::Stock>,
) -> Option<Live> {
    let Server { table, requests, live, inherited } = *server;
    let mut fds = fds.into_iter();
    let (Some(stdout), Some(stderr), Some(answers), None) = (fds.next(), fds.next(), fds.next(), fds.next()) else {
        return None;
    };
    let failed = |why: String| {
        let mut answer = vec![FAILED];
        answer.extend_from_slice(why.as_bytes());
        let _ = nix::sys::socket::send(answers.as_raw_fd(), &answer, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL);
        None
    };
    if request.len() != REQUEST_BYTES {
        return failed(format!("a request of {} bytes instead of {REQUEST_BYTES}", request.len()));
    }
    let word = |range: std::ops::Range<usize>| {
        let mut bytes = [0u8; 8];
        bytes[..range.len()].copy_from_slice(&request[range]);
        u64::from_le_bytes(bytes)
    };
    let plan = word(0..4) as usize;
    let Some((template, plan)) = table.get(plan) else {
        return failed(format!("no plan {plan} among {}", table.len()));
    };
    let run = match word(4..12) {
        u64::MAX => None,
        run => Some(run as usize),
    };
    let job = Job { run, seed: word(12..20), about: None, ..template.clone() };
    let at_once = word(20..24);
    // Pooled hosts only for a scenario process forked as its PID namespace's init: as root, as the maker.
    let privileged = inherited.own_pid_namespace.is_some();
    let (pooled, stock_fds) = match stock {
        Some(stock) if privileged => {
            let pooled = stock.take(plan);
            (pooled, stock.raw_fds())
        }
        Some(stock) => (None, stock.raw_fds()),
        None => (None, Vec::new()),
    };
    // Its next child is pid 1 of a new PID namespace, where the privilege allows it.
    let init = inherited.own_pid_namespace.is_some() && nix::sched::unshare(CloneFlags::CLONE_NEWPID).is_ok();
    // SAFETY: this process never starts a thread (module docs): the child may run any code after the fork.
    let forked = unsafe { fork() };
    if let (true, Some(own)) = (init, &inherited.own_pid_namespace) {
        if matches!(forked, Ok(ForkResult::Parent { .. }) | Err(_)) {
            if let Err(e) = nix::sched::setns(own, CloneFlags::CLONE_NEWPID) {
                // Its next children would all be in this child's namespace: none can be made any more.
                let _ = failed(format!("setns back to the fork server's PID namespace: {e}"));
                std::process::exit(2);
            }
        }
    }
    match forked {
        Ok(ForkResult::Child) => {
            // Only its own descriptors: the server's sockets and the other processes' pidfds are not its.
            for fd in [requests.as_raw_fd(), answers.as_raw_fd(), inherited.server_holds.as_raw_fd()]
                .into_iter()
                .chain(live.iter().flat_map(|process| [process.pidfd.as_raw_fd(), process.answers.as_raw_fd()]))
                .chain(inherited.own_pid_namespace.as_ref().map(AsRawFd::as_raw_fd))
                .chain(stock_fds.iter().copied())
            {
                // SAFETY: closing descriptors of this (forked) process that nothing in it uses from here on;
                // their owners are never dropped, since this branch ends in `exit`.
                unsafe { libc::close(fd) };
            }
            transitions::set_owner(owner);
            let shape = match init {
                true => Shape::Init(inherited.server_alive.as_raw_fd()),
                false => Shape::Relayed(inherited.server_pid),
            };
            if let Some(hosts) = pooled {
                pool::hand_over(hosts);
            }
            become_scenario(job, plan.clone(), stdout, stderr, at_once, shape)
        }
        Ok(ForkResult::Parent { child }) => {
            // The scenario process holds the pair now; the server's copies go.
            drop(pooled);
            // SAFETY: pidfd_open takes a pid and flags; our unreaped child's pid cannot have been reused.
            let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, child.as_raw(), 0) };
            if raw < 0 {
                // Without a pidfd the runner could neither watch nor stop it.
                // SAFETY: plain system call on our own unreaped child.
                unsafe { libc::kill(child.as_raw(), libc::SIGKILL) };
                let _ = nix::sys::wait::waitpid(child, None);
                return failed(format!("pidfd_open: {}", std::io::Error::last_os_error()));
            }
            // SAFETY: raw was just returned by pidfd_open and is owned by nobody else.
            let pidfd = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
            let mut answer = [FORKED, 0, 0, 0, 0, u8::from(init)];
            answer[1..5].copy_from_slice(&child.as_raw().to_le_bytes());
            let sent = sendmsg::<()>(
                answers.as_raw_fd(),
                &[IoSlice::new(&answer)],
                &[ControlMessage::ScmRights(&[pidfd.as_raw_fd()])],
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                None,
            );
            if sent.is_err() {
                // Nobody waits for it: the runner's thread is gone.
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            }
            Some(Live { pid: child, pidfd, answers, owner })
        }
        Err(e) => failed(format!("fork: {e}")),
    }
}

/// In the forked process: the standard streams and the state an executed `__run-one` would start from, then
/// the scenario.
fn become_scenario(job: Job, plan: Plan, stdout: OwnedFd, stderr: OwnedFd, at_once: u64, shape: Shape) -> ! {
    if let Ok(null) = std::fs::File::open("/dev/null") {
        // SAFETY: plain system call on descriptors this process owns.
        unsafe { libc::dup2(null.as_raw_fd(), libc::STDIN_FILENO) };
    }
    // SAFETY: plain system calls on descriptors this process owns.
    unsafe {
        libc::dup2(stdout.as_raw_fd(), libc::STDOUT_FILENO);
        libc::dup2(stderr.as_raw_fd(), libc::STDERR_FILENO);
    }
    drop((stdout, stderr));
    // As the Rust runtime leaves it at a program's start, and as a scenario's socket programs need it (a write
    // to a reset socket gives EPIPE): `netfault run` itself ends quietly on a closed pipe (SIG_DFL).
    // SAFETY: sets the action of one signal in a single-threaded process.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // The runner's hook turns a failed print into exit 2; a scenario process reports panics as any program.
    drop(std::panic::take_hook());
    // Single-threaded (module docs): changing the environment races with no reader.
    std::env::set_var(SCENARIOS_AT_ONCE_ENV, at_once.to_string());
    runner::forked_child_main(&job, plan, shape)
}

/// How a forked scenario process stands to the server.
pub(crate) enum Shape {
    /// Pid 1 of its PID namespace; the descriptor is the read end of the server's pipe that closes when the
    /// server is gone.
    Init(RawFd),
    /// In the server's PID namespace, a child of this pid: it makes its own namespace and relaying parent.
    Relayed(u32),
}
