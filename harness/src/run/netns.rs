//! Anonymous network namespaces (`ip netns add`, without a name under /run/netns) and threads that live in them.
//!
//! A namespace exists as long as a file descriptor or a thread refers to it; nothing is created in the host
//! namespace, so a killed run leaves nothing behind.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::thread;

use nix::sched::{setns, unshare, CloneFlags};

use crate::error::{Context, Error, Result};

/// A network namespace held by its `/proc/thread-self/ns/net` descriptor.
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
        let file = File::open("/proc/thread-self/ns/net").context(|| "open /proc/thread-self/ns/net".to_string())?;
        Ok(Netns { fd: OwnedFd::from(file) })
    }

    /// Whether the calling thread is inside this namespace (`ip netns identify` of the thread).
    fn holds_current_thread(&self) -> bool {
        let inode = |stat: nix::sys::stat::FileStat| (stat.st_dev, stat.st_ino);
        match (nix::sys::stat::fstat(self.fd.as_fd()), nix::sys::stat::stat("/proc/thread-self/ns/net")) {
            (Ok(ours), Ok(current)) => inode(ours) == inode(current),
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
pub fn enter_private_parent() -> Result<()> {
    unshare(CloneFlags::CLONE_NEWNET).context(|| "unshare(CLONE_NEWNET) for the runner (ip netns add)".to_string())?;
    let path = "/proc/sys/net/ipv4/tcp_child_ehash_entries";
    // Older kernels (< 6.1) lack the sysctl: scenarios then share the global table, which is only slower.
    if std::path::Path::new(path).exists() {
        std::fs::write(path, format!("{SCENARIO_EHASH_ENTRIES}\n"))
            .context(|| format!("sysctl -w net.ipv4.tcp_child_ehash_entries={SCENARIO_EHASH_ENTRIES}"))?;
    }
    Ok(())
}
