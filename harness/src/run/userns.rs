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
        let _ = ACQUIRED.set(Privilege::Root);
        return Ok(Privilege::Root);
    }
    let gid = nix::unistd::getegid();
    require_single_thread()?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
        .map_err(|e| missing_privileges("unshare(CLONE_NEWUSER) (unshare --user)", io::Error::from(e)))?;
    write_proc_file("/proc/self/setgroups", "deny\n")?;
    write_proc_file("/proc/self/uid_map", &format!("0 {uid} 1\n"))?;
    write_proc_file("/proc/self/gid_map", &format!("0 {gid} 1\n"))?;
    let _ = ACQUIRED.set(Privilege::Rootless);
    Ok(Privilege::Rootless)
}

/// What [`acquire`] found or made in this process.
static ACQUIRED: std::sync::OnceLock<Privilege> = std::sync::OnceLock::new();

/// What [`acquire`] found or made, once it has run in this process: root, or rootless (whose capabilities do
/// not count where the kernel asks the initial user namespace, e.g. for scheduling policies).
pub fn acquired() -> Option<Privilege> {
    ACQUIRED.get().copied()
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

/// How the library's own test binary may create namespaces. As `netfault` does at start, the test binary
/// enters a user namespace of its own when it is not root, before `main` (from `.init_array`), because the
/// kernel moves only a single-threaded process and the test harness starts its threads in `main`. Tests that
/// need namespaces then run as an ordinary user wherever user namespaces work; where they do not, those tests
/// fail with the reason (see [`test_privilege`]).
#[cfg(test)]
static TEST_PRIVILEGE: std::sync::OnceLock<std::result::Result<Privilege, String>> = std::sync::OnceLock::new();

#[cfg(test)]
#[used]
#[link_section = ".init_array"]
static ACQUIRE_BEFORE_THE_TEST_HARNESS: extern "C" fn() = {
    extern "C" fn acquire_for_tests() {
        let privilege = acquire().and_then(|privilege| {
            if privilege == Privilege::Rootless {
                become_init_with_own_proc()?;
            }
            Ok(privilege)
        });
        let _ = TEST_PRIVILEGE.set(privilege.map_err(|e| e.to_string()));
    }
    acquire_for_tests
};

/// Rootless, the test binary, like a scenario process, becomes init of a PID namespace of its own, and mounts a
/// proc of it over /proc in a mount namespace of its own (`unshare --pid --fork --mount --mount-proc`): the
/// kernel mounts a proc, as `exec` confinement does, only for a PID namespace the user namespace owns, and
/// /proc must give the pids the tests' children have there.
#[cfg(test)]
fn become_init_with_own_proc() -> Result<()> {
    use nix::mount::{mount, MsFlags};
    crate::run::pidns::become_init()?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| Error::sys("unshare(CLONE_NEWNS) for the test binary", e))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .map_err(|e| Error::sys("mount --make-rslave / for the test binary", e))?;
    let hidden = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("proc"), "/proc", Some("proc"), hidden, None::<&str>)
        .map_err(|e| Error::sys("mount -t proc proc /proc for the test binary", e))
}

/// What the test binary got before `main`: root, or rootless; panics with the reason when neither.
#[cfg(test)]
pub fn test_privilege() -> Privilege {
    match TEST_PRIVILEGE.get() {
        Some(Ok(privilege)) => *privilege,
        Some(Err(reason)) => panic!("this test needs network namespaces: {reason}"),
        None => panic!("the test binary did not run its user-namespace constructor"),
    }
}

/// `program` as a command that needs no privilege, run as an ordinary uid when the tests are rootless.
/// tcpdump, whenever its uid is 0, switches to its own user after opening its input, and a user namespace
/// with one uid mapped and `setgroups` denied cannot let it (`Couldn't change to 'tcpdump'`); reading a pcap
/// needs no privilege, so rootless tests run it as uid 1000 of a nested user namespace
/// (`unshare --user --map-user=1000 --map-group=1000`).
#[cfg(test)]
pub fn unprivileged_command(program: &str) -> std::process::Command {
    match test_privilege() {
        Privilege::Root => std::process::Command::new(program),
        Privilege::Rootless => {
            let mut command = std::process::Command::new("unshare");
            command.args(["--user", "--map-user=1000", "--map-group=1000", "--", program]);
            command
        }
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
    fn the_test_binary_is_root_or_rootless_before_its_threads_start() {
        let uid_map = fs::read_to_string("/proc/self/uid_map").unwrap();
        let first: Vec<&str> = uid_map.split_whitespace().take(3).collect();
        match test_privilege() {
            // The initial user namespace maps every uid to itself.
            Privilege::Root => assert_eq!(first, ["0", "0", "4294967295"], "{uid_map}"),
            Privilege::Rootless => {
                assert_eq!(&first[..1], ["0"], "{uid_map}");
                assert_eq!(first[2], "1", "one uid mapped: {uid_map}");
            }
        }
        // Root of its namespace either way: nothing more to do.
        assert!(nix::unistd::geteuid().is_root());
        assert_eq!(acquire().unwrap(), Privilege::Root);
    }
}
