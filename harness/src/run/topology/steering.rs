//! Receive steering: every frame a link end receives is queued on one CPU's backlog, so that frames reach the
//! receiving host in the order they were sent (`echo <mask> > /sys/class/net/<if>/queues/rx-<n>/rps_cpus`).
//!
//! A veth end hands a received frame to the backlog of the CPU that sent it. A TCP sender sends from the CPU
//! of its program and from whichever CPU handles the ACKs, and the impairment wire's thread moves between
//! CPUs: each CPU's backlog is processed on its own, so on a busy machine a burst queued on one CPU waited
//! while later frames queued on another went ahead. Under the suite's load, capture/bulk-ring's server saw
//! 20-292 segments out of order in 8 of 10 runs, with SACK recovery and up to 155 spurious retransmissions,
//! and impair/duplicate (which asserts no recovery) failed. A link never reorders frames; with one CPU's
//! backlog for every frame of an end, neither does this one.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::{Error, Result};

/// `FSCONFIG_CMD_CREATE` (linux/mount.h): make the superblock of the file system `fsopen` opened.
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
/// `FSOPEN_CLOEXEC` and `FSMOUNT_CLOEXEC` (linux/mount.h).
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;

/// A sysfs of one network namespace, mounted nowhere (`fsopen("sysfs")` + `fsmount`): its `class/net` holds
/// that namespace's interfaces, whichever thread opens files under it, and no mount namespace sees it.
pub struct Sysfs {
    root: OwnedFd,
}

impl Sysfs {
    /// The sysfs of the calling thread's network namespace; `None` where the kernel refuses it a mount (no
    /// CAP_SYS_ADMIN over the mount namespace: rootless mode).
    pub fn of_current_namespace() -> Result<Option<Sysfs>> {
        // SAFETY: plain system call with a NUL-terminated name.
        let context = unsafe { libc::syscall(libc::SYS_fsopen, c"sysfs".as_ptr(), FSOPEN_CLOEXEC) };
        if context < 0 {
            return refused_or("fsopen(\"sysfs\") (mount -t sysfs)");
        }
        // SAFETY: fsopen returned a new descriptor owned by nobody else.
        let context = unsafe { OwnedFd::from_raw_fd(context as libc::c_int) };
        // SAFETY: plain system calls on a descriptor owned here, with null key and value as the command wants.
        let created = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                context.as_raw_fd(),
                FSCONFIG_CMD_CREATE,
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_void>(),
                0,
            )
        };
        if created < 0 {
            return refused_or("fsconfig(FSCONFIG_CMD_CREATE) of a sysfs (mount -t sysfs)");
        }
        // SAFETY: as above; fsmount returns a new descriptor of the detached mount.
        let root = unsafe { libc::syscall(libc::SYS_fsmount, context.as_raw_fd(), FSMOUNT_CLOEXEC, 0) };
        if root < 0 {
            return refused_or("fsmount of a sysfs (mount -t sysfs)");
        }
        // SAFETY: fsmount returned a new descriptor owned by nobody else.
        Ok(Some(Sysfs { root: unsafe { OwnedFd::from_raw_fd(root as libc::c_int) } }))
    }

    /// Queues every frame `ifname` receives on one CPU's backlog, on each of its receive queues
    /// (`echo <mask> > /sys/class/net/<ifname>/queues/rx-*/rps_cpus`): the calling thread's CPU, which
    /// spreads the links of scenarios set up at once over the machine's CPUs. Nothing is steered where the
    /// kernel refuses it without CAP_NET_ADMIN in the machine's user namespace (rootless mode), nor on a kernel
    /// without receive packet steering (CONFIG_RPS), which has no `rps_cpus` files.
    pub fn steer_to_one_cpu(&self, ifname: &str) -> Result<()> {
        // SAFETY: plain system call without arguments.
        let cpu = unsafe { libc::sched_getcpu() };
        let cpu = usize::try_from(cpu).map_err(|_| Error::last_os("sched_getcpu"))?;
        let mask = cpu_mask(cpu);
        for queue in 0.. {
            let path = format!("class/net/{ifname}/queues/rx-{queue}/rps_cpus");
            let mut file = match self.open_for_writing(&path) {
                Ok(file) => file,
                Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::PermissionDenied => return Ok(()),
                Err(error) => return Err(Error::sys(format!("open /sys/{path}"), error)),
            };
            match file.write_all(mask.as_bytes()) {
                Ok(()) => {}
                Err(error) if error.raw_os_error() == Some(libc::EPERM) => return Ok(()),
                Err(error) => return Err(Error::sys(format!("echo {mask} > /sys/{path}"), error)),
            }
        }
        Ok(())
    }

    #[cfg(test)]
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.root.as_raw_fd()
    }

    fn open_for_writing(&self, path: &str) -> io::Result<File> {
        let name = CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a NUL-terminated path relative to a descriptor owned here.
        let fd = unsafe { libc::openat(self.root.as_raw_fd(), name.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: openat returned a new descriptor owned by nobody else.
        Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

/// `Ok(None)` when the last system call failed for lack of privilege, else its error named by `what`.
fn refused_or<T>(what: &str) -> Result<Option<T>> {
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EPERM) {
        return Ok(None);
    }
    Err(Error::sys(what.to_string(), error))
}

/// The mask of one CPU as `rps_cpus` reads it: hexadecimal, in comma-separated groups of 32 CPUs, the
/// highest first (`100,00000000` is CPU 40).
fn cpu_mask(cpu: usize) -> String {
    let groups = cpu / 32 + 1;
    (0..groups)
        .rev()
        .map(|group| {
            let word: u32 = if group == cpu / 32 { 1 << (cpu % 32) } else { 0 };
            if group == groups - 1 {
                format!("{word:x}")
            } else {
                format!("{word:08x}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_mask_is_hexadecimal_in_groups_of_32_cpus() {
        assert_eq!(cpu_mask(0), "1");
        assert_eq!(cpu_mask(1), "2");
        assert_eq!(cpu_mask(31), "80000000");
        assert_eq!(cpu_mask(32), "1,00000000");
        assert_eq!(cpu_mask(40), "100,00000000");
        assert_eq!(cpu_mask(64), "1,00000000,00000000");
    }
}
