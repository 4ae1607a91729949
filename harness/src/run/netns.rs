//! Anonymous network namespaces (`ip netns add`, without a name under /run/netns) and threads that live in them.
//!
//! A namespace exists as long as a file descriptor or a thread refers to it; nothing is created in the host
//! namespace, so a killed run leaves nothing behind.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;
use std::thread;

use nix::sched::{setns, unshare, CloneFlags};

use crate::error::{Context, Error, Result};

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

    /// The namespace a descriptor refers to, taken as it is (one passed by `SCM_RIGHTS` or inherited).
    pub(crate) fn from_fd(fd: OwnedFd) -> Netns {
        Netns { fd }
    }

    /// The calling thread's namespace (`/proc/thread-self/ns/net`).
    pub(crate) fn current() -> Result<Netns> {
        Ok(Netns { fd: current_namespace().context(|| "open this thread's namespace (ioctl SIOCGSKNS)".to_string())? })
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
/// Two reasons: the runner's own threads never sit in the host's namespace, and `tcp_child_ehash_entries` set
/// there gives each scenario namespace a private TCP hash table, so a sock_diag dump walks 1024 buckets
/// instead of the host's shared table (measured: 17 µs instead of 163 µs per dump).
///
/// The runner enters one before it starts any scenario process (when it may: as root) and names it in their
/// environment ([`PRIVATE_PARENT_ENV`]); they inherit it and keep it ([`ensure_private_parent`]): one
/// namespace per run instead of one more per scenario, whose creation the kernel serialises with every other
/// namespace's.
pub fn enter_private_parent() -> Result<()> {
    unshare(CloneFlags::CLONE_NEWNET).context(|| "unshare(CLONE_NEWNET) for the runner (ip netns add)".to_string())?;
    // Older kernels (< 6.1) lack the sysctl: scenarios then share the global table, which is only slower.
    if std::path::Path::new(CHILD_EHASH_SYSCTL).exists() {
        std::fs::write(CHILD_EHASH_SYSCTL, format!("{SCENARIO_EHASH_ENTRIES}\n"))
            .context(|| format!("sysctl -w net.ipv4.tcp_child_ehash_entries={SCENARIO_EHASH_ENTRIES}"))?;
    }
    if let Ok(name) = current_name() {
        let _ = PRIVATE_PARENT.set(name);
    }
    Ok(())
}

/// [`enter_private_parent`] done on a thread of its own while the caller goes on (making a namespace takes the
/// kernel 0.5 ms: a loopback device, the namespace's sysctls); [`PendingParent::enter`] then moves the caller
/// into it.
pub struct PendingParent {
    worker: thread::JoinHandle<Result<Netns>>,
}

impl PendingParent {
    /// Starts making the private parent.
    pub fn start() -> Result<PendingParent> {
        let worker = thread::Builder::new()
            .name("netns-parent".into())
            .spawn(|| {
                enter_private_parent()?;
                Ok(Netns {
                    fd: current_namespace().context(|| "open the private parent (ioctl SIOCGSKNS)".to_string())?,
                })
            })
            .context(|| "spawn the thread making the private parent namespace".to_string())?;
        // Real-time from its first run: the runner waits for it, and an ordinary thread woken beside a busy
        // CPU's task waited 1.4-2.5 ms for it (ftrace, with another session's build running), longer than the
        // loading it overlaps. It makes a namespace and ends. Refused without CAP_SYS_NICE: it stays ordinary.
        let _ = crate::run::priority::raise_spawned(&worker);
        Ok(PendingParent { worker })
    }

    /// Waits for the private parent and moves the calling thread into it (`ip netns exec`), and with it every
    /// thread it spawns later.
    pub fn enter(self) -> Result<()> {
        let namespace =
            self.worker.join().map_err(|_| Error::Internal("the private parent's thread panicked".into()))??;
        namespace.enter()
    }
}

/// Environment variable with which the runner tells a scenario process the private parent namespace it
/// inherits (`net:[<inode>]`, as `readlink /proc/self/ns/net` says).
pub const PRIVATE_PARENT_ENV: &str = "NETFAULT_PRIVATE_NETNS";

/// The private parent this process entered, by name.
static PRIVATE_PARENT: OnceLock<String> = OnceLock::new();

/// The value of [`PRIVATE_PARENT_ENV`] for a process started from the calling thread: the private parent this
/// process entered, if the calling thread is in it.
pub fn private_parent_for_children() -> Option<&'static str> {
    let entered = PRIVATE_PARENT.get()?;
    current_name().is_ok_and(|current| &current == entered).then_some(entered.as_str())
}

/// [`enter_private_parent`], unless [`PRIVATE_PARENT_ENV`] names the namespace the calling thread is in (the
/// runner's, inherited). Takes the variable out of the environment, so the scenario's programs never see it:
/// call it while the process is single-threaded.
pub fn ensure_private_parent() -> Result<()> {
    let named = std::env::var(PRIVATE_PARENT_ENV).ok();
    std::env::remove_var(PRIVATE_PARENT_ENV);
    if named.is_some_and(|named| current_name().is_ok_and(|current| current == named)) {
        return Ok(());
    }
    enter_private_parent()
}

/// `readlink /proc/thread-self/ns/net`: `net:[<inode>]`, without /proc (see [`current_namespace`]).
fn current_name() -> std::io::Result<String> {
    let (_, inode) = identity(current_namespace()?.as_fd())?;
    Ok(format!("net:[{inode}]"))
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
