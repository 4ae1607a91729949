//! Rootless mode: without root, the process becomes root of its own user namespace
//! (`unshare --user --map-root-user`), which is enough to create network namespaces, veth pairs, nftables
//! rules, AF_PACKET captures and per-namespace `net.ipv4.tcp_*` sysctls.

use std::fs;
use std::io;

use crate::error::{Error, Result};

/// How the process may create network namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// Effective uid 0 in the initial user namespace: nothing to do.
    Root,
    /// Root of a user namespace of its own, mapped to the caller's uid and gid.
    Rootless,
}

/// Makes sure the process may create network namespaces: as root, does nothing; otherwise
/// `unshare(CLONE_NEWUSER)`, `echo deny > /proc/self/setgroups`, `echo "0 <uid> 1" > /proc/self/uid_map`,
/// `echo "0 <gid> 1" > /proc/self/gid_map` (`unshare --user --map-root-user`).
///
/// The kernel moves only a single-threaded process into a new user namespace, so this must run first thing,
/// before any thread exists ([`crate::run::netns::Netns::new_anonymous`] spawns one); it checks
/// `/proc/self/status` and says so instead of failing with a bare EINVAL.
pub fn acquire() -> Result<Privilege> {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return Ok(Privilege::Root);
    }
    let gid = nix::unistd::getegid();
    require_single_thread()?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
        .map_err(|e| missing_privileges("unshare(CLONE_NEWUSER) (unshare --user)", io::Error::from(e)))?;
    write_proc_file("/proc/self/setgroups", "deny\n")?;
    write_proc_file("/proc/self/uid_map", &format!("0 {uid} 1\n"))?;
    write_proc_file("/proc/self/gid_map", &format!("0 {gid} 1\n"))?;
    Ok(Privilege::Rootless)
}

fn write_proc_file(path: &str, content: &str) -> Result<()> {
    fs::write(path, content).map_err(|e| missing_privileges(&format!("echo '{}' > {path}", content.trim_end()), e))
}

fn missing_privileges(step: &str, error: io::Error) -> Error {
    Error::Missing {
        what: "privileges for network namespaces".into(),
        hint: format!(
            "{step} failed: {error}; run as root (or with CAP_NET_ADMIN + CAP_SYS_ADMIN), or enable unprivileged \
             user namespaces: sysctl kernel.unprivileged_userns_clone=1 / \
             kernel.apparmor_restrict_unprivileged_userns=0"
        ),
    }
}

/// Fails unless `/proc/self/status` says `Threads: 1`.
pub fn require_single_thread() -> Result<()> {
    let status =
        fs::read_to_string("/proc/self/status").map_err(|e| Error::sys("read /proc/self/status (thread count)", e))?;
    match thread_count(&status) {
        Some(1) => Ok(()),
        Some(threads) => Err(Error::Internal(format!(
            "rootless mode must start while the process is single-threaded, but it has {threads} threads: \
             call userns::acquire() before any thread is spawned (unshare(CLONE_NEWUSER) fails with EINVAL \
             otherwise)"
        ))),
        None => Err(Error::Internal("/proc/self/status has no Threads: line".into())),
    }
}

/// The `Threads:` field of a `/proc/<pid>/status` text.
fn thread_count(status: &str) -> Option<usize> {
    status.lines().find_map(|line| line.strip_prefix("Threads:")).and_then(|count| count.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_count_reads_the_status_field() {
        let status = "Name:\tcargo\nUmask:\t0022\nThreads:\t17\nSigQ:\t0/63711\n";
        assert_eq!(thread_count(status), Some(17));
        assert_eq!(thread_count("Name:\tx\n"), None);
        assert_eq!(thread_count("Threads:\tmany\n"), None);
    }

    #[test]
    fn a_multithreaded_process_is_refused_with_the_reason() {
        // The test harness runs this test on a thread of its own: the process has at least two.
        let error = require_single_thread().unwrap_err().to_string();
        assert!(error.contains("single-threaded"), "{error}");
        assert!(error.contains("acquire()"), "{error}");
    }

    #[test]
    fn refused_user_namespaces_say_what_to_do() {
        let error =
            missing_privileges("unshare(CLONE_NEWUSER) (unshare --user)", io::Error::from_raw_os_error(libc::EPERM));
        let Error::Missing { what, hint } = &error else { panic!("{error}") };
        assert_eq!(what, "privileges for network namespaces");
        assert!(hint.starts_with("unshare(CLONE_NEWUSER) (unshare --user) failed: Operation not permitted"), "{hint}");
        assert!(hint.contains("run as root (or with CAP_NET_ADMIN + CAP_SYS_ADMIN)"), "{hint}");
        assert!(hint.contains("kernel.unprivileged_userns_clone=1"), "{hint}");
        assert!(hint.contains("kernel.apparmor_restrict_unprivileged_userns=0"), "{hint}");
    }

    #[test]
    fn root_needs_nothing() {
        assert!(nix::unistd::geteuid().is_root(), "kernel tests run as root");
        assert_eq!(acquire().unwrap(), Privilege::Root);
    }
}
