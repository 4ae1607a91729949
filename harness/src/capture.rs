//! Live capture of one host's interface into a pcap file (`tcpdump -i <if> -w <file>`), with a `Packet`
//! timeline event per IPv4 frame stamped with the kernel's receive time.
//!
//! The socket is AF_PACKET with a TPACKET_V3 ring (what libpcap uses): the kernel copies frames into blocks of
//! a shared mapping and hands over a block when it is full or when its retire timer
//! (`BLOCK_RETIRE_TIMEOUT_MS`) fires, so a bulk transfer costs one wake-up per block instead of one system
//! call per frame, and every frame carries the realtime timestamp taken when the kernel queued it. A second thread writes the pcap, so a write
//! that stalls on page-cache writeback holds up neither the ring nor the timeline.

use std::ffi::c_int;
use std::fs::File;
use std::io::{self, Write};
use std::mem::{offset_of, size_of};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::{DataLink, Endianness, TsResolution};

use crate::clock::{Clock, EventSink};
use crate::decode::Decoder;
use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::scenario::plan::HostId;
use crate::timeline::EventKind;

/// Size of one ring block; any frame up to this size fits whole.
const BLOCK_SIZE: usize = 1 << 20;
/// Blocks in a scenario's ring (`tcpdump -B`, in blocks): what absorbs the capture thread falling behind.
/// Scenarios move kilobytes, and hundreds run at once, so the default is small (8 MiB per veth end).
pub const DEFAULT_RING_BLOCKS: usize = 8;
/// Blocks for a bulk transfer: measured on a loaded 2-core machine with 1 GiB over the veth and both ends
/// captured, 64 MiB dropped nothing, 32 MiB dropped up to a few thousand frames.
pub const BULK_RING_BLOCKS: usize = 64;
/// TPACKET_V3 packs frames of any length into a block, but the kernel still checks a nominal frame size.
const NOMINAL_FRAME_SIZE: usize = 1 << 11;
/// How long the kernel lets a partly filled block wait before handing it over: about the longest a lone
/// packet takes to reach the timeline and the packet triggers that wait on it (measured: median 0.9 ms).
const BLOCK_RETIRE_TIMEOUT_MS: u32 = 4;
/// Longest sleep of an idle capture thread; kernel drop counters are read at least this often.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// After a stop request, frames sent just before it may still be on their way through the kernel: keep
/// taking blocks at least this long.
const DRAIN_MIN: Duration = Duration::from_millis(2);
/// ... and at most this long, waiting for the kernel to retire the block it is filling (a few retire timeouts).
const DRAIN_MAX: Duration = Duration::from_millis(30);
/// `stop` gives up on a capture that has not finished by then: normally it takes milliseconds, but the pcap
/// writer first writes out what is queued (at most `MAX_QUEUED_CHUNKS`), which a slow disk may take a while for.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest frame written whole (tcpdump's default `-s`); with offloads off no frame comes close.
const SNAPLEN: u32 = 262_144;
/// The pcap travels to the writer thread in chunks of at least this many bytes.
const CHUNK_SIZE: usize = 1 << 20;
/// A chunk's allocation: room for one more record of the longest frame, so a chunk never reallocates.
const CHUNK_CAPACITY: usize = CHUNK_SIZE + SNAPLEN as usize + PCAP_RECORD_HEADER_LEN;
const PCAP_RECORD_HEADER_LEN: usize = 16;
/// Most chunks waiting for the disk: what absorbs a write() stalled on writeback (measured: up to 100 ms)
/// during a bulk transfer. Memory is taken only while the disk is behind.
const MAX_QUEUED_CHUNKS: usize = 256;
/// Written chunks kept for reuse instead of freed.
const SPARE_CHUNKS: usize = 4;

/// Nice level of the capture thread (`renice -n -10`): under CPU contention the capture wins over the traffic
/// it records, so a bulk transfer slows down instead of overflowing the ring.
const CAPTURE_NICE: c_int = -10;

/// What one capture saw, as tcpdump reports when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CaptureStats {
    /// Frames written to the pcap (`N packets captured`).
    pub packets: u64,
    /// Their length on the wire, summed.
    pub bytes: u64,
    /// Frames the kernel dropped because the ring was full (`N packets dropped by kernel`), summed over the
    /// run from PACKET_STATISTICS.
    pub kernel_drops: u64,
}

/// A running `tcpdump -i <ifname> -w <pcap>` on one interface of a host's namespace.
#[derive(Debug)]
pub struct Capture {
    /// `tcpdump -i <ifname> -w <pcap>` in `host`, for messages.
    command: String,
    stop_signal: Arc<OwnedFd>,
    finished: mpsc::Receiver<Result<CaptureStats>>,
}

impl Capture {
    /// `tcpdump -i <ifname> -w <pcap>` inside `ns`: opens an AF_PACKET ring socket on a thread inside `ns`, bound
    /// to `ifindex` before this returns (so nothing sent afterwards is missed), and starts a thread that
    /// writes every frame to `pcap` (Ethernet link type, nanosecond wall-clock timestamps) and emits
    /// [`EventKind::Packet`] for each IPv4 frame at the kernel's timestamp of it.
    pub fn start(ns: &Netns, host: HostId, ifindex: u32, pcap: &Path, sink: EventSink) -> Result<Capture> {
        Capture::start_with_ring(ns, host, ifindex, pcap, sink, DEFAULT_RING_BLOCKS)
    }

    /// [`Capture::start`] with a ring of `ring_blocks` MiB (`tcpdump -B`), for bulk transfers.
    pub fn start_with_ring(
        ns: &Netns,
        host: HostId,
        ifindex: u32,
        pcap: &Path,
        sink: EventSink,
        ring_blocks: usize,
    ) -> Result<Capture> {
        let (ifname, socket, ring) = ns.run(|| {
            let ifname = interface_name(ifindex)
                .map_err(|e| Error::sys(format!("find interface {ifindex} of {host} to capture (ip link show)"), e))?;
            let (socket, ring) = open_ring(ifindex, &ifname, host, ring_blocks)?;
            Ok((ifname, socket, ring))
        })?;
        let command = format!("tcpdump -i {ifname} -w {} in {host}", pcap.display());

        let file = File::create(pcap).map_err(|e| Error::sys(format!("create {} ({command})", pcap.display()), e))?;
        let (to_disk, chunks) = mpsc::sync_channel(MAX_QUEUED_CHUNKS);
        let (spare_tx, spare) = mpsc::sync_channel(SPARE_CHUNKS);
        let (done, finished) = mpsc::sync_channel(1);
        let disk = DiskWriter { command: command.clone(), file, chunks, spare: spare_tx, done };
        thread::Builder::new()
            .name(format!("pcap-{host}"))
            .spawn(move || disk.run())
            .map_err(|e| Error::sys(format!("spawn pcap writer thread ({command})"), e))?;

        let header = PcapHeader {
            snaplen: SNAPLEN,
            datalink: DataLink::ETHERNET,
            ts_resolution: TsResolution::NanoSecond,
            endianness: Endianness::native(),
            ..PcapHeader::default()
        };
        let queue = ChunkQueue { current: Vec::with_capacity(CHUNK_CAPACITY), to_disk, spare };
        let writer = PcapWriter::with_header(queue, header)
            .map_err(|e| Error::sys(format!("write pcap header ({command})"), io::Error::other(e)))?;

        let stop_signal = Arc::new(new_eventfd(&command)?);
        let reader = RingReader {
            command: command.clone(),
            socket,
            ring,
            next_block: 0,
            stop_signal: Arc::clone(&stop_signal),
            pcap: writer,
            decoder: Decoder::new(),
            clock: sink.clock().clone(),
            sink,
            host,
            stats: CaptureStats::default(),
        };
        thread::Builder::new()
            .name(format!("capture-{host}"))
            .spawn(move || reader.run())
            .map_err(|e| Error::sys(format!("spawn capture thread ({command})"), e))?;
        Ok(Capture { command, stop_signal, finished })
    }

    /// Stops the capture (`kill -INT` to tcpdump): takes what the kernel still holds for at most
    /// `DRAIN_MAX`, writes out and closes the pcap, and returns the counts.
    pub fn stop(self) -> Result<CaptureStats> {
        signal(&self.stop_signal);
        match self.finished.recv_timeout(STOP_TIMEOUT) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(Error::Internal(format!("{}: capture did not stop within {STOP_TIMEOUT:?}", self.command)))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(Error::Internal(format!("{}: capture thread panicked", self.command)))
            }
        }
    }
}

impl Drop for Capture {
    /// A capture dropped without `stop` still ends its thread, which then closes the pcap.
    fn drop(&mut self) {
        signal(&self.stop_signal);
    }
}

/// `ip link show` name of `ifindex` in the calling thread's namespace.
fn interface_name(ifindex: u32) -> io::Result<String> {
    let mut name = [0u8; libc::IF_NAMESIZE];
    // SAFETY: name has the IF_NAMESIZE bytes if_indextoname may write.
    let found = unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr().cast()) };
    if found.is_null() {
        return Err(io::Error::last_os_error());
    }
    let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..len]).into_owned())
}

fn new_eventfd(command: &str) -> Result<OwnedFd> {
    // SAFETY: eventfd has no memory arguments; a non-negative result is a new descriptor we own.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::last_os(format!("create stop signal for {command}: eventfd")));
    }
    // SAFETY: fd was just returned by eventfd and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn signal(eventfd: &OwnedFd) {
    // Writing can only fail if the counter would overflow, which a few signals never do.
    // SAFETY: eventfd is a valid eventfd descriptor.
    unsafe { libc::eventfd_write(eventfd.as_raw_fd(), 1) };
}

/// `renice -n CAPTURE_NICE -p <this thread>`. Without CAP_SYS_NICE (an unprivileged user namespace) this fails
/// and the capture keeps the default priority: it still works, and `kernel_drops` says what that cost.
fn raise_priority() {
    // SAFETY: plain system calls without memory arguments.
    unsafe {
        let thread = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, thread as libc::id_t, CAPTURE_NICE);
    }
}

/// Opens the AF_PACKET socket, maps its TPACKET_V3 ring and binds it to `ifindex`: must run inside the
/// interface's namespace.
fn open_ring(ifindex: u32, ifname: &str, host: HostId, blocks: usize) -> Result<(OwnedFd, Ring)> {
    let command = format!("tcpdump -i {ifname} in {host}");
    // Protocol 0 until bind: the socket receives nothing before it is bound to the one interface.
    // SAFETY: plain system call without memory arguments.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EPERM) {
            return Err(Error::Missing {
                what: format!("CAP_NET_RAW to capture packets ({command})"),
                hint: "run as root, or inside a user namespace that owns the network namespace".into(),
            });
        }
        return Err(Error::sys(format!("open packet socket ({command}): socket(AF_PACKET, SOCK_RAW)"), err));
    }
    // SAFETY: fd was just returned by socket and is owned by nobody else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };

    let version = libc::tpacket_versions::TPACKET_V3 as c_int;
    set_packet_option(&socket, libc::PACKET_VERSION, &version)
        .map_err(|e| Error::sys(format!("select TPACKET_V3 ({command}): setsockopt(PACKET_VERSION)"), e))?;
    let request = libc::tpacket_req3 {
        tp_block_size: BLOCK_SIZE as u32,
        tp_block_nr: blocks as u32,
        tp_frame_size: NOMINAL_FRAME_SIZE as u32,
        tp_frame_nr: (BLOCK_SIZE / NOMINAL_FRAME_SIZE * blocks) as u32,
        tp_retire_blk_tov: BLOCK_RETIRE_TIMEOUT_MS,
        tp_sizeof_priv: 0,
        tp_feature_req_word: 0,
    };
    set_packet_option(&socket, libc::PACKET_RX_RING, &request).map_err(|e| {
        Error::sys(
            format!("allocate {blocks} x {BLOCK_SIZE} byte capture ring ({command}): setsockopt(PACKET_RX_RING)"),
            e,
        )
    })?;
    let ring = Ring::map(&socket, blocks).map_err(|e| Error::sys(format!("map capture ring ({command}): mmap"), e))?;

    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    address.sll_ifindex = ifindex as c_int;
    // SAFETY: address is a valid sockaddr_ll and the length passed is its size.
    let bound = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&address as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if bound < 0 {
        return Err(Error::last_os(format!("bind packet socket to {ifname} (index {ifindex}) ({command})")));
    }
    Ok((socket, ring))
}

fn set_packet_option<T>(socket: &OwnedFd, option: c_int, value: &T) -> io::Result<()> {
    // SAFETY: value points to a live T and the length passed is its size.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            option,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `PACKET_STATISTICS`: frames dropped since the previous call (the kernel resets the counters on read).
fn take_kernel_drops(socket: &OwnedFd) -> io::Result<u64> {
    // SAFETY: tpacket_stats_v3 is plain old data; all-zero is a valid value.
    let mut stats: libc::tpacket_stats_v3 = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
    // SAFETY: stats and len are live and len holds the size of stats.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut stats as *mut libc::tpacket_stats_v3).cast(),
            &mut len,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from(stats.tp_drops))
}

/// Where the fields the reader needs sit in a block descriptor and in a frame header.
const BLOCK_STATUS_OFFSET: usize =
    offset_of!(libc::tpacket_block_desc, hdr) + offset_of!(libc::tpacket_hdr_v1, block_status);
const BLOCK_NUM_PACKETS_OFFSET: usize =
    offset_of!(libc::tpacket_block_desc, hdr) + offset_of!(libc::tpacket_hdr_v1, num_pkts);
const BLOCK_FIRST_PACKET_OFFSET: usize =
    offset_of!(libc::tpacket_block_desc, hdr) + offset_of!(libc::tpacket_hdr_v1, offset_to_first_pkt);
const FRAME_HEADER_LEN: usize = size_of::<libc::tpacket3_hdr>();
/// The kernel puts a sockaddr_ll after the frame header, aligned as TPACKET_ALIGN does.
const FRAME_ADDRESS_OFFSET: usize = FRAME_HEADER_LEN.next_multiple_of(libc::TPACKET_ALIGNMENT);
const FRAME_PKTTYPE_OFFSET: usize = FRAME_ADDRESS_OFFSET + offset_of!(libc::sockaddr_ll, sll_pkttype);

/// The mapped TPACKET_V3 ring: `blocks` blocks that the kernel and this process hand back and forth
/// through each block's status word.
#[derive(Debug)]
struct Ring {
    base: NonNull<u8>,
    blocks: usize,
}

// SAFETY: the mapping is owned by the Ring and only the capture thread touches it.
unsafe impl Send for Ring {}

impl Ring {
    fn len(&self) -> usize {
        BLOCK_SIZE * self.blocks
    }

    fn map(socket: &OwnedFd, blocks: usize) -> io::Result<Ring> {
        // SAFETY: a fresh shared mapping of the socket's ring; the kernel checks the length against the ring.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                BLOCK_SIZE * blocks,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                socket.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(base.cast())
            .map(|base| Ring { base, blocks })
            .ok_or_else(|| io::Error::other("mmap returned null"))
    }

    fn block_status(&self, block: usize) -> &AtomicU32 {
        // SAFETY: the status word lies inside the mapping (block < blocks), is 4-byte aligned (blocks are
        // page aligned), and both sides access it as an atomic hand-over flag.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(block * BLOCK_SIZE + BLOCK_STATUS_OFFSET).cast()) }
    }

    /// The block's bytes if the kernel has handed it to us, else `None`.
    fn user_block(&self, block: usize) -> Option<&[u8]> {
        let status = self.block_status(block).load(Ordering::Acquire);
        if status & libc::TP_STATUS_USER == 0 {
            return None;
        }
        // SAFETY: the block lies inside the mapping, and the kernel does not write to it until we give it back
        // in `release`, which needs this borrow to have ended.
        Some(unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(block * BLOCK_SIZE), BLOCK_SIZE) })
    }

    /// Whether the kernel is still filling `block` and has put frames in it (which it hands over when the
    /// block retire timeout expires).
    fn open_block_has_frames(&self, block: usize) -> bool {
        if self.block_status(block).load(Ordering::Acquire) & libc::TP_STATUS_USER != 0 {
            return true;
        }
        // SAFETY: as for the status word; the kernel updates the count while it fills the block, so it is
        // only read atomically.
        let frames = unsafe {
            AtomicU32::from_ptr(self.base.as_ptr().add(block * BLOCK_SIZE + BLOCK_NUM_PACKETS_OFFSET).cast())
        };
        frames.load(Ordering::Relaxed) != 0
    }

    fn release(&self, block: usize) {
        self.block_status(block).store(libc::TP_STATUS_KERNEL, Ordering::Release);
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: base and LEN are exactly the mapping made in `map`, and no borrow of it outlives the Ring.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len()) };
    }
}

/// One frame as the ring describes it.
struct Frame<'a> {
    wall_time: Duration,
    wire_len: u32,
    outgoing: bool,
    data: &'a [u8],
}

/// Walks the frames of a block handed over by the kernel; stops early on anything inconsistent.
fn block_frames(block: &[u8]) -> impl Iterator<Item = Frame<'_>> {
    let count = ne32(block, BLOCK_NUM_PACKETS_OFFSET).unwrap_or(0);
    let mut offset = ne32(block, BLOCK_FIRST_PACKET_OFFSET).map_or(usize::MAX, |o| o as usize);
    (0..count).map_while(move |_| {
        let header = block.get(offset..offset.checked_add(FRAME_ADDRESS_OFFSET + size_of::<libc::sockaddr_ll>())?)?;
        let seconds = ne32(header, offset_of!(libc::tpacket3_hdr, tp_sec))?;
        let nanos = ne32(header, offset_of!(libc::tpacket3_hdr, tp_nsec))?;
        let captured = ne32(header, offset_of!(libc::tpacket3_hdr, tp_snaplen))? as usize;
        let wire_len = ne32(header, offset_of!(libc::tpacket3_hdr, tp_len))?;
        let mac = ne16(header, offset_of!(libc::tpacket3_hdr, tp_mac))? as usize;
        let next = ne32(header, offset_of!(libc::tpacket3_hdr, tp_next_offset))? as usize;
        let data = block.get(offset + mac..(offset + mac).checked_add(captured)?)?;
        let frame = Frame {
            wall_time: Duration::new(u64::from(seconds), nanos),
            wire_len,
            outgoing: header[FRAME_PKTTYPE_OFFSET] == libc::PACKET_OUTGOING,
            data,
        };
        offset = offset.saturating_add(next);
        Some(frame)
    })
}

fn ne32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn ne16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

/// The capture thread's state: the ring, the pcap it writes and the decoder that turns frames into events.
struct RingReader {
    command: String,
    socket: OwnedFd,
    ring: Ring,
    next_block: usize,
    stop_signal: Arc<OwnedFd>,
    pcap: PcapWriter<ChunkQueue>,
    decoder: Decoder,
    clock: Clock,
    sink: EventSink,
    host: HostId,
    stats: CaptureStats,
}

impl RingReader {
    /// Captures until stopped, then hands the counts (or what failed) to the pcap writer, which reports them
    /// once the file is complete. The ring and socket are released only after that: closing a packet socket
    /// waits for an RCU grace period, which `stop` need not wait for.
    fn run(mut self) {
        raise_priority();
        let captured = self.capture_until_stopped().map(|()| self.stats);
        let RingReader { socket, ring, pcap, .. } = self;
        pcap.into_writer().finish(captured);
        drop(ring);
        drop(socket);
    }

    fn capture_until_stopped(&mut self) -> Result<()> {
        let mut stop_requested: Option<Instant> = None;
        let mut drops_read = Instant::now();
        loop {
            self.take_ready_blocks()?;
            if drops_read.elapsed() >= IDLE_POLL {
                self.read_kernel_drops()?;
                drops_read = Instant::now();
            }
            let timeout = match stop_requested {
                None => IDLE_POLL,
                Some(since) => {
                    let waited = since.elapsed();
                    let drained = waited >= DRAIN_MIN && !self.ring.open_block_has_frames(self.next_block);
                    if drained || waited >= DRAIN_MAX {
                        break;
                    }
                    DRAIN_MIN.saturating_sub(waited).max(Duration::from_millis(1))
                }
            };
            if self.wait(timeout, stop_requested.is_none())? {
                stop_requested = Some(Instant::now());
            }
        }
        self.take_ready_blocks()?;
        self.read_kernel_drops()
    }

    /// Sleeps until a block is ready or `timeout` passes; with `watch_stop`, also wakes on a stop request
    /// and says whether one came.
    fn wait(&self, timeout: Duration, watch_stop: bool) -> Result<bool> {
        let millis = timeout.as_micros().div_ceil(1000).min(u128::from(u16::MAX)) as u16;
        let mut fds = vec![PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
        if watch_stop {
            fds.push(PollFd::new(self.stop_signal.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(false),
            Err(e) => return Err(Error::sys(format!("wait for packets ({}): poll", self.command), e)),
        }
        Ok(watch_stop && fds[1].any().unwrap_or(false))
    }

    fn take_ready_blocks(&mut self) -> Result<()> {
        loop {
            let block = self.next_block;
            let Some(bytes) = self.ring.user_block(block) else {
                return Ok(());
            };
            for frame in block_frames(bytes) {
                self.stats.packets += 1;
                self.stats.bytes += u64::from(frame.wire_len);
                let captured = &frame.data[..frame.data.len().min(SNAPLEN as usize)];
                let packet = PcapPacket::new(frame.wall_time, frame.wire_len.max(captured.len() as u32), captured);
                self.pcap
                    .write_packet(&packet)
                    .map_err(|e| Error::sys(format!("write packet to pcap ({})", self.command), io::Error::other(e)))?;
                if let Some(event) = self.decoder.decode(frame.data, frame.outgoing) {
                    let t = self.clock.since_t0(SystemTime::UNIX_EPOCH + frame.wall_time);
                    self.sink.emit_at(t, self.host, EventKind::Packet(event));
                }
            }
            self.ring.release(block);
            self.next_block = (block + 1) % self.ring.blocks;
        }
    }

    fn read_kernel_drops(&mut self) -> Result<()> {
        let drops = take_kernel_drops(&self.socket).map_err(|e| {
            Error::sys(format!("read drop counter ({}): getsockopt(PACKET_STATISTICS)", self.command), e)
        })?;
        self.stats.kernel_drops += drops;
        Ok(())
    }
}

/// What the capture thread sends to the pcap writer thread.
enum ToDisk {
    Chunk(Vec<u8>),
    /// The capture is over with this result: close the file, then report.
    Finished(Result<CaptureStats>),
}

/// The pcap's bytes on the capture thread, gathered into chunks for the writer thread.
struct ChunkQueue {
    current: Vec<u8>,
    to_disk: mpsc::SyncSender<ToDisk>,
    spare: mpsc::Receiver<Vec<u8>>,
}

impl ChunkQueue {
    fn hand_over(&mut self) -> io::Result<()> {
        let fresh = self.spare.try_recv().unwrap_or_else(|_| Vec::with_capacity(CHUNK_CAPACITY));
        let full = std::mem::replace(&mut self.current, fresh);
        // Blocks only while MAX_QUEUED_CHUNKS wait for the disk; the writer thread lives until `Finished`.
        self.to_disk.send(ToDisk::Chunk(full)).map_err(|_| io::Error::other("pcap writer thread is gone"))
    }

    fn finish(mut self, result: Result<CaptureStats>) {
        // Either fails only if the writer thread is gone, and then `stop` reports that.
        let _ = self.flush();
        let _ = self.to_disk.send(ToDisk::Finished(result));
    }
}

impl Write for ChunkQueue {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.current.extend_from_slice(bytes);
        if self.current.len() >= CHUNK_SIZE {
            self.hand_over()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.current.is_empty() {
            return Ok(());
        }
        self.hand_over()
    }
}

/// The pcap writer thread: puts chunks on disk in order, then closes the file and reports the capture's result.
struct DiskWriter {
    command: String,
    file: File,
    chunks: mpsc::Receiver<ToDisk>,
    spare: mpsc::SyncSender<Vec<u8>>,
    done: mpsc::SyncSender<Result<CaptureStats>>,
}

impl DiskWriter {
    fn run(self) {
        let DiskWriter { command, mut file, chunks, spare, done } = self;
        let mut failure = None;
        // Ends with `Finished`, or when the capture thread is gone without it (it panicked), which drops `done`
        // and so tells `stop`.
        for message in chunks.iter() {
            match message {
                ToDisk::Chunk(mut bytes) => {
                    if failure.is_none() {
                        if let Err(e) = file.write_all(&bytes) {
                            failure = Some(Error::sys(format!("write pcap ({command})"), e));
                        }
                    }
                    bytes.clear();
                    // Full means enough spares are kept already.
                    let _ = spare.try_send(bytes);
                }
                ToDisk::Finished(result) => {
                    drop(file);
                    // The receiver is gone only if the Capture was dropped without stop(): nobody is waiting.
                    let _ = done.send(failure.map_or(result, Err));
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
    use std::path::PathBuf;
    use std::process::Command;

    use pcap_file::pcap::PcapReader;

    use super::*;
    use crate::timeline::{format_tcp_flags, Event, PacketDirection, PacketEvent};

    const CLIENT_IF: &str = "nfc";
    const SERVER_IF: &str = "nfs";
    const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const IO_TIMEOUT: Duration = Duration::from_secs(5);

    /// Two namespaces joined by a veth pair with offloads and IPv6 off, set up with `ip` and `ethtool`
    /// run from threads inside the namespaces (children inherit the thread's namespace).
    struct VethPair {
        client: Netns,
        server: Netns,
        client_ifindex: u32,
        server_ifindex: u32,
    }

    fn run_command(args: &[&str]) -> String {
        let output = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert!(output.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn veth_pair() -> VethPair {
        let client = Netns::new_anonymous().unwrap();
        let server = Netns::new_anonymous().unwrap();
        let server_ns = format!("/proc/{}/fd/{}", std::process::id(), server.raw_fd());
        client
            .run(|| {
                run_command(&[
                    "ip", "link", "add", CLIENT_IF, "type", "veth", "peer", "name", SERVER_IF, "netns", &server_ns,
                ]);
                Ok(())
            })
            .unwrap();
        let client_ifindex = configure(&client, CLIENT_IF, CLIENT_ADDR);
        let server_ifindex = configure(&server, SERVER_IF, SERVER_ADDR);
        VethPair { client, server, client_ifindex, server_ifindex }
    }

    fn configure(ns: &Netns, ifname: &str, address: Ipv4Addr) -> u32 {
        ns.run(|| {
            let here = fs::read_link("/proc/thread-self/ns/net").unwrap();
            let host = fs::read_link("/proc/self/ns/net").unwrap();
            assert_ne!(here, host, "refusing to configure the host's namespace");
            run_command(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
            run_command(&["ethtool", "-K", ifname, "tx", "off", "tso", "off", "gso", "off", "gro", "off"]);
            run_command(&["ip", "addr", "add", &format!("{address}/24"), "dev", ifname]);
            run_command(&["ip", "link", "set", ifname, "up"]);
            run_command(&["ip", "link", "set", "lo", "up"]);
            Ok(nix::net::if_::if_nametoindex(ifname)?)
        })
        .unwrap()
    }

    struct TestDir(PathBuf);

    impl TestDir {
        fn new(name: &str) -> TestDir {
            let dir = std::env::temp_dir().join(format!("netfault-capture-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TestDir(dir)
        }

        fn file(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn packets_of(events: &[Event], host: HostId) -> Vec<(Duration, PacketEvent)> {
        events
            .iter()
            .filter(|e| e.host == host)
            .filter_map(|e| match &e.kind {
                EventKind::Packet(p) => Some((e.t, p.clone())),
                _ => None,
            })
            .collect()
    }

    /// `tcpdump -n -r <pcap> [filter]`, one line per packet.
    fn tcpdump_read(pcap: &Path, extra: &[&str]) -> Vec<String> {
        let pcap = pcap.to_str().unwrap();
        let mut args = vec!["tcpdump", "-n", "-r", pcap];
        args.extend_from_slice(extra);
        run_command(&args).lines().map(str::to_string).collect()
    }

    /// Frame count, summed wire lengths and timestamps, read back with pcap-file.
    fn read_pcap(pcap: &Path) -> (u64, u64, Vec<Duration>) {
        let mut reader = PcapReader::new(File::open(pcap).unwrap()).unwrap();
        assert_eq!(reader.header().datalink, DataLink::ETHERNET);
        let (mut count, mut bytes, mut times) = (0, 0, Vec::new());
        while let Some(packet) = reader.next_packet() {
            let packet = packet.unwrap();
            count += 1;
            bytes += u64::from(packet.orig_len);
            times.push(packet.timestamp);
        }
        (count, bytes, times)
    }

    fn summary(p: &PacketEvent) -> (PacketDirection, String, u32, u32, u32) {
        (p.direction, format_tcp_flags(p.flags), p.seq, p.ack, p.len)
    }

    #[test]
    fn captures_a_tcp_exchange_on_both_veth_ends() {
        let pair = veth_pair();
        let dir = TestDir::new("exchange");
        let (client_pcap, server_pcap) = (dir.file("client.pcap"), dir.file("server.pcap"));
        let clock = Clock::started();
        let (sink, events) = EventSink::new(clock.clone());
        let listener = pair.server.run(|| Ok(TcpListener::bind((SERVER_ADDR, 9000)).unwrap())).unwrap();
        let client_capture =
            Capture::start(&pair.client, HostId::Client, pair.client_ifindex, &client_pcap, sink.clone()).unwrap();
        let server_capture =
            Capture::start(&pair.server, HostId::Server, pair.server_ifindex, &server_pcap, sink.clone()).unwrap();
        drop(sink);

        let before_connect = clock.now();
        let mut client = pair
            .client
            .run(|| Ok(TcpStream::connect_timeout(&(SERVER_ADDR, 9000).into(), IO_TIMEOUT).unwrap()))
            .unwrap();
        let after_connect = clock.now();
        // Events arrive while the capture runs, within a block retire timeout or so.
        let first = events.recv_timeout(Duration::from_millis(500)).expect("no live packet event");
        let (mut server, _) = listener.accept().unwrap(); // already in the backlog: connect returned
        for stream in [&client, &server] {
            stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        }
        client.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        server.read_exact(&mut buf).unwrap();
        server.write_all(b"world").unwrap();
        client.read_exact(&mut buf).unwrap();
        drop(client);
        assert_eq!(server.read(&mut buf).unwrap(), 0, "server sees the client's FIN");
        drop(server);

        let stopping = Instant::now();
        let client_stats = client_capture.stop().unwrap();
        let client_stop = stopping.elapsed();
        let server_stats = server_capture.stop().unwrap();
        let both_stopped = stopping.elapsed();
        assert!(client_stop < Duration::from_millis(150), "client capture took {client_stop:?} to stop");
        assert!(both_stopped < Duration::from_millis(300), "both captures took {both_stopped:?} to stop");

        let events: Vec<Event> = std::iter::once(first).chain(events.try_iter()).collect();
        let client_packets = packets_of(&events, HostId::Client);
        let server_packets = packets_of(&events, HostId::Server);
        use PacketDirection::{In, Out};
        let handshake = |packets: &[(Duration, PacketEvent)]| -> Vec<_> {
            packets.iter().take(3).map(|(_, p)| summary(p)).collect()
        };
        assert_eq!(
            handshake(&client_packets),
            [(Out, "S".into(), 0, 0, 0), (In, "S.".into(), 0, 1, 0), (Out, ".".into(), 1, 1, 0)]
        );
        assert_eq!(
            handshake(&server_packets),
            [(In, "S".into(), 0, 0, 0), (Out, "S.".into(), 0, 1, 0), (In, ".".into(), 1, 1, 0)]
        );
        let syn = &client_packets[0].1;
        assert_eq!((syn.src, syn.dst, syn.dport, syn.protocol.as_str()), (CLIENT_ADDR, SERVER_ADDR, 9000, "tcp"));
        assert!(syn.options.starts_with("mss 1460,sackOK,TS val "), "SYN options: {}", syn.options);
        assert!(syn.options.contains(" ecr 0,nop,wscale "), "SYN options: {}", syn.options);

        // Event times are the kernel's: the SYN and SYN-ACK fall inside connect(), not when the thread read them.
        let slack = Duration::from_millis(1);
        for (t, p) in &client_packets[..2] {
            assert!(
                *t + slack >= before_connect && *t <= after_connect + slack,
                "{p:?} at {t:?}, connect ran {before_connect:?}..{after_connect:?}"
            );
        }

        let client_lines: Vec<_> = client_packets.iter().map(|(_, p)| summary(p)).collect();
        for expected in [
            (Out, "P.".to_string(), 1, 1, 5),
            (In, "P.".to_string(), 1, 6, 5),
            (Out, "F.".to_string(), 6, 6, 0),
            (In, "F.".to_string(), 6, 7, 0),
            (Out, ".".to_string(), 7, 7, 0),
        ] {
            assert!(client_lines.contains(&expected), "{expected:?} missing from {client_lines:#?}");
        }

        // Both ends saw the same packets, byte for byte in what the timeline shows.
        let wire = |packets: &[(Duration, PacketEvent)]| {
            let mut counts = BTreeMap::new();
            for (_, p) in packets {
                let key = format!(
                    "{} > {} {} {} {} {} {} {}",
                    p.src, p.dst, p.ip_id, p.flags, p.seq, p.ack, p.len, p.options
                );
                *counts.entry(key).or_insert(0) += 1;
            }
            counts
        };
        assert_eq!(wire(&client_packets), wire(&server_packets));

        for (pcap, stats, packets) in
            [(&client_pcap, client_stats, &client_packets), (&server_pcap, server_stats, &server_packets)]
        {
            assert_eq!(stats.kernel_drops, 0);
            let (count, bytes, times) = read_pcap(pcap);
            assert_eq!((count, bytes), (stats.packets, stats.bytes), "{}", pcap.display());
            assert_eq!(tcpdump_read(pcap, &[]).len() as u64, stats.packets, "tcpdump -r {}", pcap.display());
            assert_eq!(tcpdump_read(pcap, &["ip"]).len(), packets.len(), "IPv4 frames vs events");
            // The pcap keeps real time; the event is the same instant on the run's clock.
            let ipv4_times: Vec<Duration> = times.iter().rev().take(packets.len()).rev().copied().collect();
            let event_times: Vec<Duration> = packets.iter().map(|(t, _)| *t).collect();
            let pcap_times: Vec<Duration> =
                ipv4_times.iter().map(|ts| clock.since_t0(SystemTime::UNIX_EPOCH + *ts)).collect();
            assert_eq!(pcap_times, event_times);

            let verbose = tcpdump_read(pcap, &["-v", "tcp"]).join("\n");
            assert!(verbose.contains("(correct)"), "{verbose}");
            assert!(!verbose.contains("incorrect"), "{verbose}");
        }
    }

    #[test]
    fn kernel_icmp_port_unreachable_is_decoded() {
        let pair = veth_pair();
        let dir = TestDir::new("icmp");
        let (sink, events) = EventSink::new(Clock::started());
        let pcap = dir.file("client.pcap");
        let capture = Capture::start(&pair.client, HostId::Client, pair.client_ifindex, &pcap, sink).unwrap();
        let socket = pair.client.run(|| Ok(UdpSocket::bind((CLIENT_ADDR, 5000)).unwrap())).unwrap();
        socket.send_to(b"anyone?", (SERVER_ADDR, 9999)).unwrap();
        socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        socket.connect((SERVER_ADDR, 9999)).unwrap();
        socket.send(b"anyone?").unwrap();
        let refused = socket.recv(&mut [0u8; 16]).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        let stats = capture.stop().unwrap();

        let events: Vec<Event> = events.try_iter().collect();
        let packets: Vec<PacketEvent> = packets_of(&events, HostId::Client).into_iter().map(|(_, p)| p).collect();
        let udp = packets.iter().find(|p| p.protocol == "udp").expect("UDP datagram");
        assert_eq!((udp.direction, udp.sport, udp.dport, udp.len), (PacketDirection::Out, 5000, 9999, 7));
        let icmp = packets.iter().find(|p| p.protocol == "icmp").expect("ICMP reply");
        assert_eq!((icmp.direction, icmp.src, icmp.dst), (PacketDirection::In, SERVER_ADDR, CLIENT_ADDR));
        assert_eq!(icmp.options, "10.0.0.2 udp port 9999 unreachable");
        assert_eq!(tcpdump_read(&pcap, &[]).len() as u64, stats.packets);
    }

    #[test]
    fn an_idle_capture_stops_promptly_with_an_empty_readable_pcap() {
        let pair = veth_pair();
        let dir = TestDir::new("idle");
        let (sink, _events) = EventSink::new(Clock::started());
        let pcap = dir.file("server.pcap");
        let capture = Capture::start(&pair.server, HostId::Server, pair.server_ifindex, &pcap, sink).unwrap();
        thread::sleep(Duration::from_millis(150));
        let stopping = Instant::now();
        let stats = capture.stop().unwrap();
        let took = stopping.elapsed();
        assert!(took < Duration::from_millis(100), "stop took {took:?}");
        assert_eq!(stats, CaptureStats::default());
        assert!(tcpdump_read(&pcap, &[]).is_empty());
    }

    #[test]
    fn start_fails_on_a_missing_interface_and_says_which() {
        let ns = Netns::new_anonymous().unwrap();
        let dir = TestDir::new("missing");
        let (sink, _events) = EventSink::new(Clock::started());
        let err = Capture::start(&ns, HostId::Client, 4242, &dir.file("x.pcap"), sink).unwrap_err();
        assert!(err.to_string().contains("interface 4242 of client"), "{err}");
        assert!(!dir.file("x.pcap").exists());
    }

    const BULK_BYTES: usize = 1 << 30;

    /// Sends `BULK_BYTES` from client to server over one TCP connection; returns how long it took.
    fn bulk_transfer(pair: &VethPair, port: u16) -> Duration {
        let listener = pair.server.run(|| Ok(TcpListener::bind((SERVER_ADDR, port)).unwrap())).unwrap();
        let mut client = pair
            .client
            .run(|| Ok(TcpStream::connect_timeout(&(SERVER_ADDR, port).into(), IO_TIMEOUT).unwrap()))
            .unwrap();
        let (mut server, _) = listener.accept().unwrap();
        server.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let started = Instant::now();
        let reader = thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0;
            loop {
                match server.read(&mut buf).unwrap() {
                    0 => return total,
                    n => total += n,
                }
            }
        });
        let chunk = vec![0x5au8; 1 << 20];
        for _ in 0..BULK_BYTES / chunk.len() {
            client.write_all(&chunk).unwrap();
        }
        drop(client);
        assert_eq!(reader.join().unwrap(), BULK_BYTES);
        started.elapsed()
    }

    fn throughput(elapsed: Duration) -> String {
        format!("{:.0} MB/s in {:.2} s", BULK_BYTES as f64 / elapsed.as_secs_f64() / 1e6, elapsed.as_secs_f64())
    }

    /// Counts the events of a run as a consumer would, until every sink is gone.
    fn drain_events(events: mpsc::Receiver<Event>) -> thread::JoinHandle<u64> {
        thread::spawn(move || {
            let mut count = 0;
            while events.recv_timeout(Duration::from_secs(10)).is_ok() {
                count += 1;
            }
            count
        })
    }

    /// `tcpdump -i <ifname> -w <pcap>` started from a thread inside `ns`, once it says it is listening.
    fn start_tcpdump(ns: &Netns, ifname: &str, pcap: &Path) -> (std::process::Child, mpsc::Receiver<String>) {
        let pcap = pcap.to_str().unwrap().to_string();
        let ifname = ifname.to_string();
        let mut child = ns
            .run(|| {
                Ok(Command::new("tcpdump")
                    .args(["-i", &ifname, "-w", &pcap, "-Z", "root", "-n"])
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap())
            })
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (lines_tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in io::BufRead::lines(io::BufReader::new(stderr)) {
                let _ = lines_tx.send(line.unwrap());
            }
        });
        let first = lines.recv_timeout(IO_TIMEOUT).unwrap();
        assert!(first.contains("listening on"), "tcpdump: {first}");
        (child, lines)
    }

    /// Stops tcpdump as Ctrl-C would and returns its closing report (`N packets captured` ...).
    fn stop_tcpdump(mut child: std::process::Child, lines: mpsc::Receiver<String>) -> String {
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let deadline = Instant::now() + IO_TIMEOUT;
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "tcpdump did not exit after SIGINT");
            thread::sleep(Duration::from_millis(10));
        }
        let mut report = Vec::new();
        while let Ok(line) = lines.recv_timeout(Duration::from_secs(1)) {
            report.push(line);
        }
        report.join(", ")
    }

    /// Packet count of a pcap as `tcpdump -r` reads it (counted, not printed: files are large here).
    fn tcpdump_count(pcap: &Path) -> u64 {
        let output = Command::new("tcpdump").args(["-n", "-q", "-r", pcap.to_str().unwrap()]).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        output.stdout.iter().filter(|&&b| b == b'\n').count() as u64
    }

    /// `cargo test --release --lib capture::tests::bulk_transfer_benchmark -- --ignored --nocapture`
    #[test]
    #[ignore = "benchmark: pushes 1 GiB through a veth pair several times"]
    fn bulk_transfer_benchmark() {
        let pair = veth_pair();
        let dir = TestDir::new("bench");
        let (client_pcap, server_pcap, tcpdump_pcap) =
            (dir.file("client.pcap"), dir.file("server.pcap"), dir.file("tcpdump.pcap"));

        let baseline = bulk_transfer(&pair, 9100);
        eprintln!("no capture:                    {}", throughput(baseline));

        let (sink, events) = EventSink::new(Clock::started());
        let counted = drain_events(events);
        let client = Capture::start_with_ring(
            &pair.client,
            HostId::Client,
            pair.client_ifindex,
            &client_pcap,
            sink.clone(),
            BULK_RING_BLOCKS,
        )
        .unwrap();
        let server = Capture::start_with_ring(
            &pair.server,
            HostId::Server,
            pair.server_ifindex,
            &server_pcap,
            sink,
            BULK_RING_BLOCKS,
        )
        .unwrap();
        let elapsed = bulk_transfer(&pair, 9101);
        let (client_stats, server_stats) = (client.stop().unwrap(), server.stop().unwrap());
        eprintln!("netfault capture, both ends:   {}", throughput(elapsed));
        eprintln!("  client {client_stats:?}, tcpdump -r counts {}", tcpdump_count(&client_pcap));
        eprintln!("  server {server_stats:?}, tcpdump -r counts {}", tcpdump_count(&server_pcap));
        eprintln!("  events emitted: {}", counted.join().unwrap());
        assert_eq!(client_stats.packets, tcpdump_count(&client_pcap));

        let (tcpdump, lines) = start_tcpdump(&pair.client, CLIENT_IF, &tcpdump_pcap);
        let elapsed = bulk_transfer(&pair, 9102);
        let tcpdump_report = stop_tcpdump(tcpdump, lines);
        eprintln!("tcpdump -w alone, client end:  {}", throughput(elapsed));
        eprintln!("  tcpdump: {tcpdump_report}");

        let (sink, events) = EventSink::new(Clock::started());
        let counted = drain_events(events);
        let (tcpdump, lines) = start_tcpdump(&pair.client, CLIENT_IF, &tcpdump_pcap);
        let client = Capture::start(&pair.client, HostId::Client, pair.client_ifindex, &client_pcap, sink).unwrap();
        let elapsed = bulk_transfer(&pair, 9103);
        let client_stats = client.stop().unwrap();
        let tcpdump_report = stop_tcpdump(tcpdump, lines);
        eprintln!("netfault and tcpdump -w on the client end, same run: {}", throughput(elapsed));
        eprintln!("  netfault {client_stats:?}, tcpdump -r counts {}", tcpdump_count(&client_pcap));
        eprintln!("  tcpdump: {tcpdump_report}, tcpdump -r counts {}", tcpdump_count(&tcpdump_pcap));
        eprintln!("  events emitted: {}", counted.join().unwrap());

        // How long a lone packet takes to reach the timeline (what a packet trigger waits).
        let (sink, events) = EventSink::new(Clock::started());
        let client = Capture::start(&pair.client, HostId::Client, pair.client_ifindex, &client_pcap, sink).unwrap();
        let socket = pair.client.run(|| Ok(UdpSocket::bind((CLIENT_ADDR, 5000)).unwrap())).unwrap();
        let mut delays: Vec<Duration> = (0..50)
            .map(|_| {
                thread::sleep(Duration::from_millis(7));
                let sent = Instant::now();
                socket.send_to(b"ping", (SERVER_ADDR, 7)).unwrap();
                loop {
                    let event = events.recv_timeout(IO_TIMEOUT).unwrap();
                    if matches!(&event.kind, EventKind::Packet(p) if p.protocol == "udp") {
                        return sent.elapsed();
                    }
                }
            })
            .collect();
        client.stop().unwrap();
        delays.sort();
        eprintln!(
            "lone packet to event delay over {} packets: min {:?}, median {:?}, max {:?}",
            delays.len(),
            delays[0],
            delays[delays.len() / 2],
            delays[delays.len() - 1]
        );
    }
}
