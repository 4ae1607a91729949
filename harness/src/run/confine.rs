//! Confinement of `exec` programs: each runs in its host's network namespace and, besides, in a mount, UTS and
//! IPC namespace of that host's own, with only the capabilities network tests need
//! (`unshare --mount --uts --ipc` + `mount -t proc` + `mount -t sysfs` + `setpriv --bounding-set`).
//!
//! What a program sees: the machine's files as they are (read and write, as root), except `/proc`, a proc of
//! the scenario's PID namespace (the scenario's processes only; `/proc/sys` read-only but for `/proc/sys/net`,
//! which is the host's namespace's), and `/sys`, a read-only sysfs of the host's network namespace
//! (`/sys/class/net` holds `lo` and `nf0`); the hostname is the host's name. What it keeps: CAP_NET_ADMIN,
//! CAP_NET_RAW, CAP_NET_BIND_SERVICE (its own namespace's interfaces, qdiscs, nftables, raw sockets, low
//! ports), the file capabilities root has over files, and CAP_SETUID / CAP_SETGID for programs that drop to
//! another user (tcpdump). Without CAP_SYS_ADMIN it can neither setns(2) nor mount, and without
//! CAP_SYS_PTRACE it cannot open the namespaces of the harness's own process (`/proc/1/ns/*`), so the
//! machine's namespaces, sysctls, nftables and processes are out of its reach.
//!
//! The namespaces are made once per host, before the scenario starts; a program enters them, and the host's
//! network namespace, between fork and exec ([`Confinement::enter`]): four setns(2) and the capability calls.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::error::{Context, Error, Result};
use crate::run::netns::Netns;

/// The capabilities a confined program keeps (`setpriv --bounding-set`), by their numbers in
/// linux/capability.h (the libc crate does not name them).
const KEPT_CAPABILITIES: [(u32, &str); 10] = [
    (0, "CAP_CHOWN"),
    (1, "CAP_DAC_OVERRIDE"),
    (2, "CAP_DAC_READ_SEARCH"),
    (3, "CAP_FOWNER"),
    (4, "CAP_FSETID"),
    (6, "CAP_SETGID"),
    (7, "CAP_SETUID"),
    (10, "CAP_NET_BIND_SERVICE"),
    (12, "CAP_NET_ADMIN"),
    (13, "CAP_NET_RAW"),
];

/// Whether a confined program keeps `capability`.
fn kept(capability: u32) -> bool {
    KEPT_CAPABILITIES.iter().any(|(number, _)| *number == capability)
}

/// `_LINUX_CAPABILITY_VERSION_3`: capability sets as two 32-bit words.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The namespaces one host's programs run in, held by their descriptors, and what entering them needs.
#[derive(Debug)]
pub struct Confinement {
    /// The host's network namespace: entered too, so that a program is in it whichever thread forked it.
    network: OwnedFd,
    mount: OwnedFd,
    uts: OwnedFd,
    ipc: OwnedFd,
    /// The harness's working directory: entering a mount namespace moves to its root, and programs are given
    /// relative paths as they would be from the harness.
    cwd: CString,
    /// The highest capability number the kernel knows (`/proc/sys/kernel/cap_last_cap`).
    last_capability: u32,
}

impl Confinement {
    /// Makes the namespaces for the programs of a host whose network namespace is `netns`, named `hostname`
    /// (`unshare --mount --uts --ipc`, `mount --make-rslave /`, `mount -t proc`, `mount -t sysfs -o ro`,
    /// `hostname`), on a thread of its own that then ends.
    pub fn new(netns: &Netns, hostname: &str) -> Result<Confinement> {
        let cwd = std::env::current_dir().context(|| "getcwd for exec programs".to_string())?;
        let cwd = CString::new(cwd.as_os_str().as_bytes())
            .map_err(|_| Error::Internal(format!("working directory {} holds a NUL byte", cwd.display())))?;
        let last_capability = read_last_capability()?;
        let hostname = hostname.to_string();
        let network = netns.fd().try_clone_to_owned().context(|| "dup the host's namespace descriptor".to_string())?;
        let maker = netns.spawn("exec-confinement", move || {
            let (mount, uts, ipc) = make_namespaces(&hostname)?;
            Ok(Confinement { network, mount, uts, ipc, cwd, last_capability })
        })?;
        maker.join().map_err(|_| Error::Internal("exec confinement thread panicked".into()))?
    }

    /// Moves the calling process into the host's network namespace and the confinement's, and drops every capability but [`KEPT_CAPABILITIES`],
    /// from the bounding set too, so that exec(2) of any program, set-uid ones included, gives back no more.
    ///
    /// Runs in the forked child before exec: system calls only, no allocation.
    pub fn enter(&self) -> io::Result<()> {
        for (fd, kind) in [
            (&self.network, libc::CLONE_NEWNET),
            (&self.mount, libc::CLONE_NEWNS),
            (&self.uts, libc::CLONE_NEWUTS),
            (&self.ipc, libc::CLONE_NEWIPC),
        ] {
            // SAFETY: plain system call on a descriptor this struct owns.
            check(unsafe { libc::setns(fd.as_raw_fd(), kind) })?;
        }
        // SAFETY: the path is a NUL-terminated string owned by this struct.
        check(unsafe { libc::chdir(self.cwd.as_ptr()) })?;
        for capability in 0..=self.last_capability {
            if !kept(capability) {
                // SAFETY: plain system call with integer arguments.
                check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, capability as libc::c_ulong, 0, 0, 0) })?;
            }
        }
        // SAFETY: plain system call with integer arguments.
        check(unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0) })?;
        let mut header = CapHeader { version: CAPABILITY_VERSION_3, pid: 0 };
        let data = kept_capability_sets();
        // SAFETY: capset(2) reads the header and two data words, which live until it returns.
        check(unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) } as libc::c_int)
    }
}

/// Effective and permitted: the kept capabilities; inheritable: none (an inheritable capability would survive
/// exec(2) whatever the bounding set says).
fn kept_capability_sets() -> [CapData; 2] {
    let mut words = [0u32; 2];
    for (capability, _) in KEPT_CAPABILITIES {
        words[(capability / 32) as usize] |= 1 << (capability % 32);
    }
    words.map(|word| CapData { effective: word, permitted: word, inheritable: 0 })
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn read_last_capability() -> Result<u32> {
    let path = "/proc/sys/kernel/cap_last_cap";
    let text = fs::read_to_string(path).context(|| format!("read {path}"))?;
    text.trim().parse().map_err(|_| Error::Internal(format!("{path} holds {text:?}, not a number")))
}

/// On the calling thread, which ends afterwards: new mount, UTS and IPC namespaces set up for programs, held
/// by their descriptors (mount, uts, ipc).
fn make_namespaces(hostname: &str) -> Result<(OwnedFd, OwnedFd, OwnedFd)> {
    // CLONE_FS: the thread's root and working directory become its own, as a mount namespace needs.
    unshare(CloneFlags::CLONE_FS | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC)
        .context(|| "unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC) (unshare --mount --uts --ipc)".to_string())?;
    // Mounts made here must never reach the machine's mount namespace.
    remount("/", MsFlags::MS_REC | MsFlags::MS_SLAVE, "mount --make-rslave /")?;
    let hidden = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("proc"), "/proc", Some("proc"), hidden, None::<&str>)
        .context(|| "mount -t proc proc /proc (a proc of the scenario's PID namespace)".to_string())?;
    // Sysctls outside /proc/sys/net are the machine's; sysrq-trigger (absent without CONFIG_MAGIC_SYSRQ)
    // reboots it.
    bind("/proc/sys", true)?;
    if Path::new("/proc/sysrq-trigger").exists() {
        bind("/proc/sysrq-trigger", true)?;
    }
    bind("/proc/sys/net", false)?;
    mount(Some("sysfs"), "/sys", Some("sysfs"), hidden | MsFlags::MS_RDONLY, None::<&str>)
        .context(|| "mount -t sysfs -o ro sysfs /sys (the sysfs of the host's network namespace)".to_string())?;
    // SAFETY: the pointer and length describe the bytes of a live string.
    let rc = unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) };
    if rc != 0 {
        return Err(Error::last_os(format!("hostname {hostname}")));
    }
    let open = |kind: &str| -> Result<OwnedFd> {
        let path = format!("/proc/thread-self/ns/{kind}");
        Ok(OwnedFd::from(fs::File::open(&path).context(|| format!("open {path}"))?))
    };
    Ok((open("mnt")?, open("uts")?, open("ipc")?))
}

/// `mount --make-... <path>`.
fn remount(path: &str, flags: MsFlags, shown: &str) -> Result<()> {
    mount(None::<&str>, path, None::<&str>, flags, None::<&str>).context(|| shown.to_string())
}

/// `mount --bind <path> <path>`, then `mount -o remount,bind,ro` or `rw`: a bind inherits its source mount's
/// read-only flag, so a writable one under a read-only one needs the remount too.
fn bind(path: &str, read_only: bool) -> Result<()> {
    mount(Some(path), path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .context(|| format!("mount --bind {path} {path}"))?;
    let mode = if read_only { MsFlags::MS_RDONLY } else { MsFlags::empty() };
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let shown = if read_only { "ro" } else { "rw" };
    remount(path, flags | mode, &format!("mount -o remount,bind,{shown} {path}"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    use super::*;

    /// `sh -c script` entering `confinement` before exec, as an `exec` step's program does; its stdout.
    fn confined_output(confinement: Confinement, script: &str) -> String {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        // SAFETY: `enter` makes system calls only and allocates nothing.
        unsafe {
            command.pre_exec(move || confinement.enter());
        }
        let output = command.output().expect("sh runs");
        assert!(output.status.success(), "{script}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    }

    #[test]
    fn kept_sets_have_one_bit_per_kept_capability() {
        let [low, high] = kept_capability_sets();
        assert_eq!(
            low.permitted, 0b11_0100_1101_1111,
            "CHOWN..FSETID, SETGID, SETUID, NET_BIND_SERVICE, NET_ADMIN, RAW"
        );
        assert_eq!(low.effective, low.permitted);
        assert_eq!((low.inheritable, high.effective, high.permitted, high.inheritable), (0, 0, 0, 0));
    }

    #[test]
    fn a_program_keeps_only_the_kept_capabilities_and_sees_its_host() {
        let netns = Netns::new_anonymous().expect("new namespace: these tests must run as root");
        let confinement = Confinement::new(&netns, "server").unwrap();
        let status = confined_output(confinement, "grep ^Cap /proc/self/status; hostname; pwd; ls /sys/class/net");
        let field = |name: &str| -> u64 {
            let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} in {status}"));
            u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
        };
        let kept: u64 = KEPT_CAPABILITIES.iter().map(|(number, _)| 1u64 << number).sum();
        let names: Vec<&str> = KEPT_CAPABILITIES.iter().map(|(_, name)| *name).collect();
        for set in ["CapBnd:", "CapPrm:", "CapEff:"] {
            assert_eq!(field(set), kept, "{set} must be {names:?}: {status}");
        }
        assert_eq!(field("CapInh:"), 0, "{status}");
        assert_eq!(field("CapAmb:"), 0, "{status}");
        let rest: Vec<&str> = status.lines().filter(|l| !l.starts_with("Cap")).collect();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(rest, ["server", cwd.to_str().unwrap(), "lo"], "hostname, working directory, interfaces");
    }

    #[test]
    fn machine_sysctls_are_read_only_and_the_namespace_ones_writable() {
        let netns = Netns::new_anonymous().expect("new namespace: these tests must run as root");
        let confinement = Confinement::new(&netns, "client").unwrap();
        let script = "echo 33 > /proc/sys/net/ipv4/tcp_fin_timeout && cat /proc/sys/net/ipv4/tcp_fin_timeout; \
                      v=$(cat /proc/sys/vm/swappiness); (echo $v > /proc/sys/vm/swappiness) 2>&1; true";
        let output = confined_output(confinement, script);
        let mut lines = output.lines();
        assert_eq!(lines.next(), Some("33"), "{output}");
        assert!(lines.next().is_some_and(|l| l.ends_with("Read-only file system")), "{output}");
        let machine = fs::read_to_string("/proc/sys/net/ipv4/tcp_fin_timeout").unwrap();
        assert_ne!(machine.trim(), "33", "the write reached the machine's namespace");
    }
}
