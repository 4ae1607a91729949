//! How many scenario processes of this runner are running their programs right now: counted by the runner,
//! read by each of them through a memfd they inherit, so that their socket observers share the CPU budget of
//! periodic samples among the scenarios actually sampling, not among all those started at once.
//!
//! With 56 scenarios started at once on a slow machine, set-ups are staggered over tens of seconds (the kernel
//! makes network namespaces one at a time) and most scenarios end within seconds: paced for 56, an observer
//! went 6 s without a periodic sample (measured in the 6.12 TCG VM) while a dozen scenarios were running, and
//! a socket that vanishes without a packet (a request socket whose SYN-ACK timer gave up) was seen 2 s late.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The environment variable naming the descriptor (inherited by the scenario process) that holds the count.
pub const SAMPLING_FD_ENV: &str = "NETFAULT_SCENARIOS_SAMPLING_FD";

/// The runner's side: the count and the memfd its children read it from.
struct Shared {
    fd: OwnedFd,
    count: AtomicU32,
}

fn shared() -> Option<&'static Shared> {
    static SHARED: OnceLock<Option<Shared>> = OnceLock::new();
    SHARED.get_or_init(Shared::new).as_ref()
}

impl Shared {
    fn new() -> Option<Shared> {
        // No MFD_CLOEXEC: the scenario processes inherit it (each marks it close-on-exec for its own programs).
        // SAFETY: a NUL-terminated name and no flags; the result is a new descriptor or -1.
        let raw = unsafe { libc::memfd_create(c"netfault-sampling".as_ptr(), 0) };
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        (raw >= 0).then(|| Shared { fd: unsafe { OwnedFd::from_raw_fd(raw) }, count: AtomicU32::new(0) })
    }

    fn add(&self, delta: i32) {
        let count = if delta >= 0 {
            self.count.fetch_add(delta.unsigned_abs(), Ordering::SeqCst) + delta.unsigned_abs()
        } else {
            self.count.fetch_sub(delta.unsigned_abs(), Ordering::SeqCst) - delta.unsigned_abs()
        };
        // A 4-byte pwrite at offset 0 is not torn for a reader's 4-byte pread of the same page. A failed write
        // leaves the previous count, which only paces the samples by a stale figure.
        let _ = nix::sys::uio::pwrite(&self.fd, &count.to_ne_bytes(), 0);
    }
}

/// For the runner: the variable to give a scenario process, naming the inherited descriptor; `None` where no
/// memfd could be made (the scenario then paces by the number started at once).
pub fn child_env() -> Option<(&'static str, String)> {
    shared().map(|shared| (SAMPLING_FD_ENV, shared.fd.as_raw_fd().to_string()))
}

/// For the runner: one scenario process started its programs; it counts until the returned guard is dropped.
pub fn programs_started() -> Sampling {
    if let Some(shared) = shared() {
        shared.add(1);
    }
    Sampling(())
}

/// A scenario process counted as sampling, until dropped.
pub struct Sampling(());

impl Drop for Sampling {
    fn drop(&mut self) {
        if let Some(shared) = shared() {
            shared.add(-1);
        }
    }
}

/// For a scenario process: the count its runner shares, if it was given one.
#[derive(Debug, Clone, Copy)]
pub struct SamplingCount {
    fd: Option<RawFd>,
}

impl SamplingCount {
    /// The descriptor named by [`SAMPLING_FD_ENV`], marked close-on-exec so that the scenario's programs do not
    /// inherit it.
    pub fn inherited() -> SamplingCount {
        static FD: OnceLock<Option<RawFd>> = OnceLock::new();
        let fd = *FD.get_or_init(|| {
            let fd: RawFd = std::env::var(SAMPLING_FD_ENV).ok()?.parse().ok()?;
            // SAFETY: F_SETFD on a descriptor number; an invalid one gives -1 and is then not used.
            let marked = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            (marked == 0).then_some(fd)
        });
        SamplingCount { fd }
    }

    /// How many scenarios of the runner are running their programs now (at least 1: this one), or `None`
    /// without a shared count.
    pub fn read(&self) -> Option<usize> {
        let fd = self.fd?;
        let mut bytes = [0u8; 4];
        // SAFETY: the descriptor stays open for the life of the process (nothing here closes it).
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        match nix::sys::uio::pread(fd, &mut bytes, 0) {
            Ok(4) => Some((u32::from_ne_bytes(bytes) as usize).max(1)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_follows_the_scenarios_running_and_children_read_it() {
        let shared = Shared::new().expect("memfd");
        let reader = SamplingCount { fd: Some(shared.fd.as_raw_fd()) };
        assert_eq!(reader.read(), None, "nothing written yet");
        shared.add(1);
        shared.add(1);
        assert_eq!(reader.read(), Some(2));
        shared.add(-1);
        assert_eq!(reader.read(), Some(1));
        shared.add(-1);
        assert_eq!(reader.read(), Some(1), "never less than the reader itself");
        assert_eq!(SamplingCount { fd: None }.read(), None);
        assert_eq!(child_env().map(|(name, _)| name), Some(SAMPLING_FD_ENV));
    }
}
