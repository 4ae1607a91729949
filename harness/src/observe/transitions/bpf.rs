//! The few `bpf(2)` commands the transition tracer needs (what `bpftool map create`, `bpftool prog load` and a
//! raw tracepoint attach do), and the reader of a BPF ring buffer (`BPF_MAP_TYPE_RINGBUF`, Linux >= 5.8).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

const BPF_MAP_CREATE: libc::c_int = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_int = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
const BPF_MAP_DELETE_ELEM: libc::c_int = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_int = 4;
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_int = 15;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_int = 17;
#[cfg(any(test, feature = "bench"))]
const BPF_ENABLE_STATS: libc::c_int = 32;

pub const MAP_TYPE_HASH: u32 = 1;
pub const MAP_TYPE_ARRAY: u32 = 2;
pub const MAP_TYPE_RINGBUF: u32 = 27;
/// `BPF_F_NO_PREALLOC`: a hash map's entries are allocated as they are added, not all when it is made.
pub const NO_PREALLOC: u32 = 1;
/// `BPF_NOEXIST`: an update that adds the key only if it is not there (else `EEXIST`).
pub const NOEXIST: u64 = 1;
pub const PROG_TYPE_SOCKET_FILTER: u32 = 1;
pub const PROG_TYPE_SCHED_CLS: u32 = 3;
pub const PROG_TYPE_RAW_TRACEPOINT: u32 = 17;

/// `struct bpf_prog_info`: where its run statistics lie (Linux >= 5.1) and its count of runs the kernel skipped
/// (Linux >= 5.12), and how much of it is asked for.
#[cfg(any(test, feature = "bench"))]
const PROG_INFO_RUN_TIME_NS: usize = 192;
#[cfg(any(test, feature = "bench"))]
const PROG_INFO_RUN_CNT: usize = 200;
const PROG_INFO_RECURSION_MISSES: usize = 208;
const PROG_INFO_LEN: usize = 216;

/// `union bpf_attr` is larger than any command's part of it; the kernel checks that bytes it does not know are 0.
const ATTR_LEN: usize = 128;
/// Bytes of verifier log kept when a program is refused.
const LOG_LEN: usize = 64 * 1024;

/// `bpf(cmd, attr)`; the result is a descriptor for the commands that create one.
fn bpf(cmd: libc::c_int, attr: &mut [u8; ATTR_LEN]) -> io::Result<libc::c_long> {
    // SAFETY: the attribute buffer is valid for ATTR_LEN bytes; pointers inside it are valid for the call.
    let result = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), ATTR_LEN as libc::c_uint) };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

fn fd_of(result: libc::c_long) -> io::Result<OwnedFd> {
    let fd = RawFd::try_from(result).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the bpf command just returned this new descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn put_u32(attr: &mut [u8; ATTR_LEN], at: usize, value: u32) {
    attr[at..at + 4].copy_from_slice(&value.to_ne_bytes());
}

fn put_u64(attr: &mut [u8; ATTR_LEN], at: usize, value: u64) {
    attr[at..at + 8].copy_from_slice(&value.to_ne_bytes());
}

/// A BPF map (`bpftool map create`).
#[derive(Debug)]
pub struct Map {
    fd: OwnedFd,
}

impl Map {
    /// `BPF_MAP_CREATE`.
    pub fn create(map_type: u32, key_size: u32, value_size: u32, max_entries: u32) -> io::Result<Map> {
        Map::create_with(map_type, [key_size, value_size, max_entries], 0)
    }

    /// `BPF_MAP_CREATE` with `map_flags`.
    pub fn create_with(map_type: u32, [key_size, value_size, max_entries]: [u32; 3], flags: u32) -> io::Result<Map> {
        let mut attr = [0u8; ATTR_LEN];
        put_u32(&mut attr, 0, map_type);
        put_u32(&mut attr, 4, key_size);
        put_u32(&mut attr, 8, value_size);
        put_u32(&mut attr, 12, max_entries);
        put_u32(&mut attr, 16, flags);
        Ok(Map { fd: fd_of(bpf(BPF_MAP_CREATE, &mut attr)?)? })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The same map under a new descriptor (`dup`).
    pub fn try_clone(&self) -> io::Result<Map> {
        Ok(Map { fd: self.fd.try_clone()? })
    }

    /// `BPF_MAP_LOOKUP_ELEM` into `value`.
    pub fn lookup(&self, key: &[u8], value: &mut [u8]) -> io::Result<()> {
        let mut attr = [0u8; ATTR_LEN];
        put_u32(&mut attr, 0, self.fd() as u32);
        put_u64(&mut attr, 8, key.as_ptr() as u64);
        put_u64(&mut attr, 16, value.as_mut_ptr() as u64);
        bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).map(drop)
    }

    /// `BPF_MAP_UPDATE_ELEM` (`BPF_ANY`: added or replaced).
    pub fn update(&self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.update_with(key, value, 0)
    }

    /// `BPF_MAP_UPDATE_ELEM` with `flags` ([`NOEXIST`]: added only if the key is not there).
    pub fn update_with(&self, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
        let mut attr = [0u8; ATTR_LEN];
        put_u32(&mut attr, 0, self.fd() as u32);
        put_u64(&mut attr, 8, key.as_ptr() as u64);
        put_u64(&mut attr, 16, value.as_ptr() as u64);
        put_u64(&mut attr, 24, flags);
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
    }

    /// `BPF_MAP_DELETE_ELEM`.
    pub fn delete(&self, key: &[u8]) -> io::Result<()> {
        let mut attr = [0u8; ATTR_LEN];
        put_u32(&mut attr, 0, self.fd() as u32);
        put_u64(&mut attr, 8, key.as_ptr() as u64);
        bpf(BPF_MAP_DELETE_ELEM, &mut attr).map(drop)
    }

    /// The keys of a hash map with 4-byte keys (`BPF_MAP_GET_NEXT_KEY` from none), at most `limit` (a key
    /// removed meanwhile by another process makes the kernel start again from the first).
    pub fn keys_u32(&self, limit: usize) -> io::Result<Vec<u32>> {
        let mut keys = Vec::new();
        let mut next = [0u8; 4];
        while keys.len() < limit {
            let mut attr = [0u8; ATTR_LEN];
            put_u32(&mut attr, 0, self.fd() as u32);
            let last = keys.last().map(|key: &u32| key.to_ne_bytes());
            put_u64(&mut attr, 8, last.as_ref().map_or(0, |key| key.as_ptr() as u64));
            put_u64(&mut attr, 16, next.as_mut_ptr() as u64);
            match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
                Ok(_) => keys.push(u32::from_ne_bytes(next)),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(keys),
                Err(e) => return Err(e),
            }
        }
        Ok(keys)
    }
}

/// A loaded BPF program.
#[derive(Debug)]
pub struct Program {
    fd: OwnedFd,
}

/// Why the kernel refused a program: its error, and what its verifier said.
#[derive(Debug)]
pub struct Refused {
    pub error: io::Error,
    pub log: String,
}

impl Program {
    /// `BPF_PROG_LOAD` of a program of type `prog_type` (`insns` in the kernel's 8-byte instruction format).
    pub fn load(prog_type: u32, name: &str, insns: &[u64], license: &std::ffi::CStr) -> Result<Program, Refused> {
        let mut log = vec![0u8; LOG_LEN];
        let mut attr = [0u8; ATTR_LEN];
        put_u32(&mut attr, 0, prog_type);
        put_u32(&mut attr, 4, insns.len() as u32);
        put_u64(&mut attr, 8, insns.as_ptr() as u64);
        put_u64(&mut attr, 16, license.as_ptr() as u64);
        let load = |attr: &mut [u8; ATTR_LEN]| bpf(BPF_PROG_LOAD, attr).and_then(fd_of);
        let mut named = attr;
        // prog_name (offset 48, 16 bytes with the NUL); kernels before 4.15 do not know it.
        let bytes = name.as_bytes();
        named[48..48 + bytes.len().min(15)].copy_from_slice(&bytes[..bytes.len().min(15)]);
        match load(&mut named) {
            Ok(fd) => Ok(Program { fd }),
            Err(_) => {
                // Again with the verifier's log, which says why.
                put_u32(&mut attr, 24, 1);
                put_u32(&mut attr, 28, LOG_LEN as u32);
                put_u64(&mut attr, 32, log.as_mut_ptr() as u64);
                match load(&mut attr) {
                    Ok(fd) => Ok(Program { fd }),
                    Err(error) => {
                        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                        Err(Refused { error, log: String::from_utf8_lossy(&log[..end]).into_owned() })
                    }
                }
            }
        }
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// `BPF_PROG_TEST_RUN` of a `tc` program on one packet `data` whose `struct __sk_buff` is `context`: what the
    /// program returns.
    #[cfg(test)]
    pub fn test_run(&self, data: &[u8], context: &[u8]) -> io::Result<u32> {
        const BPF_PROG_TEST_RUN: libc::c_int = 10;
        let mut attr = [0u8; ATTR_LEN];
        put_u32(&mut attr, 0, self.fd() as u32);
        put_u32(&mut attr, 8, data.len() as u32);
        put_u64(&mut attr, 16, data.as_ptr() as u64);
        put_u32(&mut attr, 32, 1);
        put_u32(&mut attr, 40, context.len() as u32);
        put_u64(&mut attr, 48, context.as_ptr() as u64);
        bpf(BPF_PROG_TEST_RUN, &mut attr)?;
        Ok(u32::from_ne_bytes(attr[4..8].try_into().unwrap_or_default()))
    }

    /// `BPF_RAW_TRACEPOINT_OPEN`: runs the program at every hit of the tracepoint until the link is dropped.
    pub fn attach_raw_tracepoint(&self, tracepoint: &std::ffi::CStr) -> io::Result<OwnedFd> {
        let mut attr = [0u8; ATTR_LEN];
        put_u64(&mut attr, 0, tracepoint.as_ptr() as u64);
        put_u32(&mut attr, 8, self.fd.as_raw_fd() as u32);
        fd_of(bpf(BPF_RAW_TRACEPOINT_OPEN, &mut attr)?)
    }

    /// The kernel's count of runs and their total time (`bpftool prog show` run_time_ns / run_cnt), kept while
    /// a [`run_time_stats`] descriptor is held.
    #[cfg(any(test, feature = "bench"))]
    pub fn run_stats(&self) -> io::Result<(u64, Duration)> {
        let info = self.info()?;
        Ok((info_word(&info, PROG_INFO_RUN_CNT), Duration::from_nanos(info_word(&info, PROG_INFO_RUN_TIME_NS))))
    }

    /// How many times the kernel skipped the program because it was already running on the same CPU (`bpftool
    /// prog show`'s recursion_misses): a hook hit in an interrupt that came while the program ran.
    pub fn recursion_misses(&self) -> io::Result<u64> {
        Ok(info_word(&self.info()?, PROG_INFO_RECURSION_MISSES))
    }

    /// `BPF_OBJ_GET_INFO_BY_FD`: `struct bpf_prog_info` up to its recursion misses.
    fn info(&self) -> io::Result<[u8; PROG_INFO_LEN]> {
        let mut info = [0u8; PROG_INFO_LEN];
        let mut attr = [0u8; ATTR_LEN];
        put_u32(&mut attr, 0, self.fd.as_raw_fd() as u32);
        put_u32(&mut attr, 4, info.len() as u32);
        put_u64(&mut attr, 8, info.as_mut_ptr() as u64);
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
        Ok(info)
    }
}

/// The u64 at `at` in a `struct bpf_prog_info`.
fn info_word(info: &[u8; PROG_INFO_LEN], at: usize) -> u64 {
    info.get(at..at + 8).and_then(|bytes| bytes.try_into().ok()).map_or(0, u64::from_ne_bytes)
}

#[cfg(any(test, feature = "bench"))]
/// `BPF_ENABLE_STATS(BPF_STATS_RUN_TIME)`: the kernel times every BPF program run while the descriptor is open
/// (`sysctl kernel.bpf_stats_enabled=1` for this process only).
pub fn run_time_stats() -> io::Result<OwnedFd> {
    let mut attr = [0u8; ATTR_LEN];
    fd_of(bpf(BPF_ENABLE_STATS, &mut attr)?)
}

/// The consumer side of a `BPF_MAP_TYPE_RINGBUF`: the consumer position page (ours to write), and the producer
/// position page followed by the data, mapped twice in a row so that a record never wraps.
pub struct RingReader {
    map: Map,
    consumer: NonNull<libc::c_void>,
    producer: NonNull<libc::c_void>,
    page: usize,
    size: usize,
}

// SAFETY: the mappings belong to this reader alone; positions are read and written through atomics.
unsafe impl Send for RingReader {}

/// A record's length word: bit 31 says the producer has not committed it yet, bit 30 that it was discarded.
const BUSY: u32 = 1 << 31;
const DISCARDED: u32 = 1 << 30;
const RECORD_HEADER: usize = 8;

impl RingReader {
    /// Maps the ring buffer `map` of `size` bytes (a power of two, a multiple of the page size).
    pub fn new(map: Map, size: usize) -> io::Result<RingReader> {
        // SAFETY: sysconf has no memory effects.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let map_region = |length: usize, protection: libc::c_int, offset: usize| {
            // SAFETY: a fresh shared mapping of the map's descriptor; the kernel checks length and offset.
            let address = unsafe {
                libc::mmap(std::ptr::null_mut(), length, protection, libc::MAP_SHARED, map.fd(), offset as libc::off_t)
            };
            if address == libc::MAP_FAILED {
                Err(io::Error::last_os_error())
            } else {
                NonNull::new(address).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
            }
        };
        let consumer = map_region(page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = match map_region(page + 2 * size, libc::PROT_READ, page) {
            Ok(producer) => producer,
            Err(e) => {
                // SAFETY: unmapping the region mapped just above.
                unsafe { libc::munmap(consumer.as_ptr(), page) };
                return Err(e);
            }
        };
        Ok(RingReader { map, consumer, producer, page, size })
    }

    /// The consumer's position (ours to advance).
    fn consumer_position(&self) -> &AtomicU64 {
        // SAFETY: the first u64 of a page-aligned mapping that lives as long as `self`.
        unsafe { &*(self.consumer.as_ptr() as *const AtomicU64) }
    }

    /// The producer's position (the kernel's).
    fn producer_position(&self) -> &AtomicU64 {
        // SAFETY: the first u64 of a page-aligned mapping that lives as long as `self`.
        unsafe { &*(self.producer.as_ptr() as *const AtomicU64) }
    }

    /// Waits up to `timeout` for records (`poll` on the map) or for `wake` to become readable, then hands each
    /// committed record to `consume`; returns how many it handed over.
    pub fn read(&mut self, timeout: Duration, wake: RawFd, mut consume: impl FnMut(&[u8])) -> io::Result<usize> {
        if !self.has_records() {
            let mut poll = [
                libc::pollfd { fd: self.map.fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: wake, events: libc::POLLIN, revents: 0 },
            ];
            let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
            // SAFETY: two valid pollfds.
            if unsafe { libc::poll(poll.as_mut_ptr(), 2, millis) } < 0 {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
        let (consumer, producer) = (self.consumer_position(), self.producer_position());
        let data = self.producer.as_ptr() as *const u8;
        let mut count = 0;
        let mut at = consumer.load(Ordering::Acquire);
        loop {
            let end = producer.load(Ordering::Acquire);
            if at >= end {
                break;
            }
            let offset = self.page + (at as usize & (self.size - 1));
            // SAFETY: the header lies inside the data area (offset < page + size); the kernel writes it atomically.
            let header = unsafe { &*(data.add(offset) as *const AtomicU32) }.load(Ordering::Acquire);
            if header & BUSY != 0 {
                break;
            }
            let len = (header & !(BUSY | DISCARDED)) as usize;
            if header & DISCARDED == 0 {
                // SAFETY: the record follows its header; the double mapping keeps it contiguous.
                let record = unsafe { std::slice::from_raw_parts(data.add(offset + RECORD_HEADER), len) };
                consume(record);
                count += 1;
            }
            at += ((RECORD_HEADER + len + 7) & !7) as u64;
            consumer.store(at, Ordering::Release);
        }
        Ok(count)
    }

    /// Skips every record written so far (the consumer's position set to the producer's): another reader's.
    pub fn skip_all(&self) {
        let end = self.producer_position().load(Ordering::Acquire);
        self.consumer_position().store(end, Ordering::Release);
    }

    fn has_records(&self) -> bool {
        self.consumer_position().load(Ordering::Acquire) < self.producer_position().load(Ordering::Acquire)
    }
}

impl Drop for RingReader {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the two regions `new` mapped.
        unsafe {
            libc::munmap(self.consumer.as_ptr(), self.page);
            libc::munmap(self.producer.as_ptr(), self.page + 2 * self.size);
        }
    }
}

/// `eventfd(0, EFD_CLOEXEC)`: what the tracer's `stop` writes to wake its reader at once.
pub fn wake_event() -> io::Result<OwnedFd> {
    // SAFETY: plain system call; a non-negative result is a new descriptor owned by nobody else.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just returned by eventfd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes an eventfd readable (`eventfd_write(fd, 1)`).
pub fn signal(event: &OwnedFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a valid buffer; a full counter only means it is readable already.
    let _ = unsafe { libc::write(event.as_raw_fd(), one.as_ptr().cast(), one.len()) };
}
