//! Anonymous network namespaces (`ip netns add`, without a name under /run/netns) and threads that live in them.
//!
//! A namespace exists as long as a file descriptor or a thread refers to it; nothing is created in the host
//! namespace, so a killed run leaves nothing behind.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::thread;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};

use crate::error::{Context, Error, Result};
use crate::run::handoff;

/// A network namespace held by a descriptor of it (what `/proc/thread-self/ns/net` opens).
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
}

impl Netns {
    /// `unshare(CLONE_NEWNET)` on a short-lived thread; the new namespace is kept alive by its descriptor.
    pub fn new_anonymous() -> Result<Netns> {
        let worker = thread::Builder::new()
            .name("netns-create".into())
            .spawn(Netns::unshare_current_thread)
            .context(|| "spawn namespace thread".to_string())?;
        worker.join().map_err(|_| Error::Internal("namespace thread panicked".into()))?
    }

    /// `unshare(CLONE_NEWNET)` for the calling thread, which stays in the new namespace: call it on a thread
    /// of its own that sets the namespace up from inside and then ends.
    pub fn unshare_current_thread() -> Result<Netns> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| match e {
            nix::Error::EPERM => Error::Missing {
                what: "permission to create network namespaces".into(),
                hint: "run as root, or where unprivileged user namespaces are allowed \
                       (sysctl kernel.unprivileged_userns_clone=1)"
                    .into(),
            },
            other => Error::sys("unshare(CLONE_NEWNET) (ip netns add)", other),
        })?;
        Ok(Netns { fd: current_namespace().context(|| "open the new namespace (ioctl SIOCGSKNS)".to_string())? })
    }

    /// Whether the calling thread is inside this namespace (`ip netns identify` of the thread).
    fn holds_current_thread(&self) -> bool {
        match (identity(self.fd.as_fd()), current_namespace().and_then(|current| identity(current.as_fd()))) {
            (Ok(ours), Ok(current)) => ours == current,
            _ => false,
        }
    }

    /// `ip netns exec`: moves the calling thread into this namespace, for good.
    pub fn enter(&self) -> Result<()> {
        setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET).context(|| "setns(CLONE_NEWNET)".to_string())
    }

    /// Runs `f` on a new thread inside this namespace. Sockets it creates stay in the namespace.
    pub fn spawn<T, F>(&self, name: &str, f: F) -> Result<thread::JoinHandle<Result<T>>>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        let fd = self.fd.try_clone().context(|| "dup namespace fd".to_string())?;
        thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).context(|| "setns(CLONE_NEWNET)".to_string())?;
                drop(fd);
                f()
            })
            .context(|| format!("spawn thread {name}"))
    }

    /// Runs `f` inside this namespace and waits for it; `f` may borrow from the caller. On a thread already
    /// inside the namespace, `f` runs right there, without a thread of its own.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce() -> Result<T> + Send,
    {
        if self.holds_current_thread() {
            return f();
        }
        thread::scope(|scope| {
            let worker = thread::Builder::new()
                .name("netns-run".into())
                .spawn_scoped(scope, || {
                    setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET).context(|| "setns(CLONE_NEWNET)".to_string())?;
                    f()
                })
                .context(|| "spawn thread inside namespace".to_string())?;
            worker.join().map_err(|_| Error::Internal("thread inside namespace panicked".into()))?
        })
    }

    /// Another handle on the same namespace (`dup` of its descriptor).
    pub fn try_clone(&self) -> Result<Netns> {
        Ok(Netns { fd: self.fd.try_clone().context(|| "dup namespace fd".to_string())? })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

/// Size of the TCP hash table of every scenario namespace (`sysctl net.ipv4.tcp_child_ehash_entries`).
const SCENARIO_EHASH_ENTRIES: u32 = 1024;

/// Moves the calling thread, and every thread it spawns later, into a fresh namespace of its own that the
/// scenario namespaces are then created from.
///
/// Two reasons: a scenario process's threads never sit in the host's namespace, and `tcp_child_ehash_entries`
/// set there gives each scenario namespace a private TCP hash table, so a sock_diag dump walks 1024 buckets
/// instead of the host's shared table (measured: 17 µs instead of 163 µs per dump).
///
/// The runner makes one (when it may: as root, [`PendingParent`]) and hands it to every scenario process it
/// starts ([`hand_over`], [`ensure_private_parent`]): one namespace per run instead of one more per scenario,
/// whose creation the kernel serialises with every other namespace's.
pub fn enter_private_parent() -> Result<()> {
    unshare(CloneFlags::CLONE_NEWNET).context(|| "unshare(CLONE_NEWNET) for the runner (ip netns add)".to_string())?;
    // Older kernels (< 6.1) lack the sysctl: scenarios then share the global table, which is only slower.
    if std::path::Path::new(CHILD_EHASH_SYSCTL).exists() {
        std::fs::write(CHILD_EHASH_SYSCTL, format!("{SCENARIO_EHASH_ENTRIES}\n"))
            .context(|| format!("sysctl -w net.ipv4.tcp_child_ehash_entries={SCENARIO_EHASH_ENTRIES}"))?;
    }
    Ok(())
}

/// [`enter_private_parent`] done on a thread of its own while the caller goes on (making a namespace takes the
/// kernel 0.5 ms: a loopback device, the namespace's sysctls); [`PendingParent::wait`] then gives it.
pub struct PendingParent {
    made: handoff::Receiver<Result<Netns>>,
}

impl PendingParent {
    /// Starts making the private parent.
    pub fn start() -> Result<PendingParent> {
        let (done, made) = handoff::channel();
        let worker = thread::Builder::new()
            .name("netns-parent".into())
            .spawn(move || {
                let namespace = enter_private_parent().and_then(|()| {
                    current_namespace().context(|| "open the private parent (ioctl SIOCGSKNS)".to_string())
                });
                let _ = done.send(namespace.map(|fd| Netns { fd }));
            })
            .context(|| "spawn the thread making the private parent namespace".to_string())?;
        // Real-time from its first run: a scenario process waits for it, and an ordinary thread woken beside a
        // busy CPU's task waited 1.4-2.5 ms for it (ftrace, with another session's build running). It makes a
        // namespace and ends. Refused without CAP_SYS_NICE: it stays ordinary.
        let _ = crate::run::priority::raise_spawned(&worker);
        Ok(PendingParent { made })
    }

    /// The private parent once made, waiting at most `limit` for it; `None` if it could not be made in time.
    pub fn wait(self, limit: Duration) -> Option<Netns> {
        self.made.recv_timeout(limit).ok().and_then(Result::ok)
    }
}

/// Environment variable with which the runner tells a scenario process that it hands over the private parent
/// on its standard input ([`hand_over`]); its value is [`ON_STDIN`].
pub const PRIVATE_PARENT_ENV: &str = "NETFAULT_PRIVATE_NETNS";
/// See [`PRIVATE_PARENT_ENV`].
pub const ON_STDIN: &str = "stdin";

/// How long a scenario process waits on its standard input for the private parent: the runner sends it as soon
/// as it is made, within a millisecond of the process's start, or closes the socket if it cannot be made.
const HAND_OVER_WAIT: Duration = Duration::from_secs(10);

/// The two ends of the socket a private parent is handed over on (`socketpair(AF_UNIX, SOCK_SEQPACKET)`): the
/// runner's, and the scenario process's, to be its standard input.
pub fn hand_over_socket() -> Result<(OwnedFd, OwnedFd)> {
    socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .context(|| "socketpair(AF_UNIX, SOCK_SEQPACKET) to hand over the private parent".to_string())
}

/// Sends a descriptor of `namespace` to the process at the other end of `socket` (`SCM_RIGHTS`), then closes
/// the socket; with no namespace, only closes it (the process then makes its own).
pub fn hand_over(socket: OwnedFd, namespace: Option<&Netns>) {
    if let Some(namespace) = namespace {
        let fds = [namespace.raw_fd()];
        let message = [std::io::IoSlice::new(&[1])];
        // A failed send leaves the process to make its own namespace, as a closed socket does.
        let _ =
            sendmsg::<()>(socket.as_raw_fd(), &message, &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None);
    }
}

/// In a scenario process: moves the calling thread into the private parent the runner hands over on standard
/// input when [`PRIVATE_PARENT_ENV`] says so, else (or if none comes) into one of its own
/// ([`enter_private_parent`]). Takes the variable out of the environment, so the scenario's programs never see
/// it, and points standard input at /dev/null: call it while the process is single-threaded.
pub fn ensure_private_parent() -> Result<()> {
    let handed_over = std::env::var(PRIVATE_PARENT_ENV).is_ok_and(|value| value == ON_STDIN);
    std::env::remove_var(PRIVATE_PARENT_ENV);
    if handed_over {
        let received = receive_on_stdin(HAND_OVER_WAIT);
        let null = std::fs::File::open("/dev/null").context(|| "open /dev/null for standard input".to_string())?;
        dup2_stdin(null.as_fd())?;
        if let Some(namespace) = received {
            return namespace.enter();
        }
    }
    enter_private_parent()
}

/// The namespace the runner sent on standard input ([`hand_over`]), waiting at most `limit`; `None` if the
/// runner closed the socket without one or nothing came in time.
fn receive_on_stdin(limit: Duration) -> Option<Netns> {
    // SAFETY: standard input stays open for the call; the borrow does not outlive it.
    let stdin = unsafe { BorrowedFd::borrow_raw(libc::STDIN_FILENO) };
    let millis = u16::try_from(limit.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(stdin, PollFlags::POLLIN)];
    if poll(&mut fds, PollTimeout::from(millis)).ok()? == 0 {
        return None;
    }
    let mut byte = [0u8; 1];
    let mut buffer = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(RawFd);
    let message = recvmsg::<()>(libc::STDIN_FILENO, &mut buffer, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC).ok()?;
    let received = message.cmsgs().ok()?.find_map(|cmsg| match cmsg {
        ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
        _ => None,
    })?;
    // SAFETY: the kernel just installed this descriptor in this process for us (SCM_RIGHTS); nobody else owns it.
    Some(Netns { fd: unsafe { OwnedFd::from_raw_fd(received) } })
}

/// `dup2(fd, 0)`: the process's standard input becomes `fd`.
fn dup2_stdin(fd: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: plain system call on two descriptors this process owns.
    if unsafe { libc::dup2(fd.as_raw_fd(), libc::STDIN_FILENO) } < 0 {
        return Err(Error::last_os("dup2(/dev/null, 0) after the private parent's hand-over"));
    }
    Ok(())
}

/// The calling thread's network namespace (`/proc/thread-self/ns/net`), asked of a socket made in it
/// (`ioctl(SIOCGSKNS)`), never looked up in /proc: a thread that looks itself up there leaves entries in the
/// kernel's cache under `/proc/<pid>/task/<tid>`, which the kernel removes as the thread exits, and the one who
/// reaps the process walks the same tree and spins until a thread still exiting has removed its own. Measured:
/// reaping a process whose 8 threads had looked at /proc/thread-self and were still running at its exit took a
/// median 2.4-4.0 ms, 90th percentile 8-11 ms (the thread preempted mid-removal), against 0.04 ms without them;
/// a `netfault run` was reaped that slowly when its job thread had asked for the namespace's name.
fn current_namespace() -> std::io::Result<OwnedFd> {
    // SAFETY: plain system calls; a non-negative result is a new descriptor owned by nobody else.
    let socket = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if socket < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `socket` was just returned by socket(2).
    let socket = unsafe { OwnedFd::from_raw_fd(socket) };
    // SAFETY: SIOCGSKNS takes no argument and returns a new descriptor (close-on-exec) of the socket's namespace.
    let namespace = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGSKNS) };
    if namespace < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `namespace` was just returned by the ioctl.
    Ok(unsafe { OwnedFd::from_raw_fd(namespace) })
}

/// A namespace descriptor's device and inode: two descriptors of one namespace have the same.
fn identity(fd: BorrowedFd<'_>) -> std::io::Result<(u64, u64)> {
    let stat = nix::sys::stat::fstat(fd)?;
    Ok((stat.st_dev, stat.st_ino))
}

const CHILD_EHASH_SYSCTL: &str = "/proc/sys/net/ipv4/tcp_child_ehash_entries";

#[cfg(test)]
mod tests {
    use super::*;

    /// `readlink /proc/thread-self/ns/net`, without /proc: `net:[<inode>]`.
    fn current_name() -> std::io::Result<String> {
        let (_, inode) = identity(current_namespace()?.as_fd())?;
        Ok(format!("net:[{inode}]"))
    }

    fn proc_name() -> String {
        std::fs::read_link("/proc/thread-self/ns/net").unwrap().to_string_lossy().into_owned()
    }

    #[test]
    fn a_threads_namespace_is_the_one_proc_names_and_run_inside_it_stays_on_the_thread() {
        assert_eq!(current_name().unwrap(), proc_name());
        let ns = Netns::new_anonymous().unwrap();
        assert!(!ns.holds_current_thread());
        let handle = ns.try_clone().unwrap();
        let (inside, by_proc, ran_here) = ns
            .spawn("netns-test", move || {
                let here = thread::current().id();
                let ran_on = handle.run(|| Ok(thread::current().id()))?;
                Ok((current_name().unwrap(), proc_name(), ran_on == here))
            })
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(inside, by_proc);
        assert_ne!(inside, current_name().unwrap(), "the new namespace is not the test's own");
        assert!(ran_here, "run() on a thread already inside the namespace runs on that thread");
    }
}
