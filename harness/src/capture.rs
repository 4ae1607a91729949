//! Live capture of one host's interface into a pcap file (`tcpdump -i <if> -w <file>`), with a `Packet`
//! timeline event per IPv4 frame stamped with the kernel's time of it.
//!
//! The socket is AF_PACKET, in one of two arrangements ([`CaptureBuffer`]). By default the kernel queues
//! frames on the socket itself and the capture thread takes them a batch per `recvmmsg`, each with its
//! `SO_TIMESTAMPNS` stamp: the socket opens in microseconds and a lone packet reaches the timeline at once.
//! A TPACKET_V3 ring (what libpcap uses) costs one wake-up per block of frames instead, which a bulk transfer
//! needs, but setting it up waits for an RCU grace period (`setsockopt(PACKET_RX_RING)` calls
//! `synchronize_net()`, about 10 ms at HZ=250), which would otherwise be most of a scenario's set-up.
//!
//! A second thread writes the pcap, so a write that stalls on page-cache writeback holds up neither the
//! kernel's buffer nor the timeline. On stop, the capture reads the interface's own packet counters and takes
//! frames until it holds every frame they counted (or the kernel's count of those it dropped): it neither
//! waits longer than needed nor stops with a frame still on its way, and a frame it lost is counted.

use std::ffi::c_int;
use std::fs::File;
use std::io::{self, Write};
use std::mem::{offset_of, size_of};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::{DataLink, Endianness, TsResolution};

use crate::clock::{Clock, EventSink};
use crate::decode::Decoder;
use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::priority;
use crate::scenario::plan::HostId;
use crate::timeline::EventKind;

/// Where the kernel keeps the frames the capture thread has not taken yet (`tcpdump -B`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureBuffer {
    /// The packet socket's own receive queue, holding up to about `bytes` of frames (`SO_RCVBUF`).
    Queue { bytes: usize },
    /// A TPACKET_V3 ring of `blocks` blocks of [`RING_BLOCK_SIZE`] bytes.
    Ring { blocks: usize },
}

impl CaptureBuffer {
    /// What a scenario gets unless it asks for a ring. Scenarios move kilobytes (the suite's busiest capture
    /// holds 125 frames) and hundreds run at once, so a few MiB of queue is ample and costs nothing unused.
    pub const DEFAULT: CaptureBuffer = CaptureBuffer::Queue { bytes: 4 << 20 };

    /// A ring of at least `bytes` (`tcpdump -B <bytes / 1024>`).
    pub fn ring_of(bytes: u64) -> CaptureBuffer {
        let blocks = bytes.div_ceil(RING_BLOCK_SIZE as u64).max(1);
        CaptureBuffer::Ring { blocks: usize::try_from(blocks).unwrap_or(usize::MAX) }
    }
}

/// Size of one ring block; any frame up to this size fits whole.
pub const RING_BLOCK_SIZE: usize = 1 << 20;
/// TPACKET_V3 packs frames of any length into a block, but the kernel still checks a nominal frame size.
const NOMINAL_FRAME_SIZE: usize = 1 << 11;
/// How long the kernel lets a partly filled block wait before handing it over: about the longest a lone
/// packet takes to reach the timeline and the packet triggers that wait on it (measured: median 0.9 ms).
const BLOCK_RETIRE_TIMEOUT_MS: u32 = 4;
/// Frames taken per `recvmmsg` from a queue socket.
const BATCH: usize = 32;
/// Room for one frame taken from a queue socket beyond the link's MTU: an Ethernet header and a VLAN tag. With
/// offloads off no frame is longer; one that were would be written cut to this length, with its full length
/// on record, as a snap length cuts it.
const LINK_HEADER_ROOM: usize = 14 + 4;
/// Room for a frame's control messages: its SO_TIMESTAMPNS `timespec` (`CMSG_SPACE(16)` = 32 bytes), and spare.
const CONTROL_ROOM: usize = 64;
/// Longest sleep of an idle capture thread; kernel drop counters are read at least this often.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// On stop, how long the capture waits at most for frames the interface counted but the capture has not
/// seen: normally they arrive within microseconds (a ring holds them until its block retire timeout), but on a
/// machine running hundreds of scenarios the kernel's receive work can lag, and a frame given up on makes the
/// run a harness error. Only a frame really missing costs this wait.
const DRAIN_MAX: Duration = Duration::from_millis(500);
/// How often the counters are compared while frames are still missing on stop.
const DRAIN_POLL: Duration = Duration::from_millis(1);
/// `stop` gives up on a capture that has not finished by then: normally it takes well under a millisecond,
/// but the pcap writer first writes out what is queued (at most `MAX_QUEUED_CHUNKS`), which a slow disk may
/// take a while for.
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

/// What one capture saw, as tcpdump reports when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CaptureStats {
    /// Frames written to the pcap (`N packets captured`).
    pub packets: u64,
    /// Their length on the wire, summed.
    pub bytes: u64,
    /// Frames the kernel dropped because the queue or ring was full (`N packets dropped by kernel`), summed
    /// over the run from PACKET_STATISTICS.
    pub kernel_drops: u64,
    /// Frames the interface itself counted from the start of the capture to the stop (rx + tx packets,
    /// `ip -s link show`): every one of them should be in the pcap.
    pub interface_frames: u64,
}

impl CaptureStats {
    /// Frames the interface counted that are not in the pcap: dropped by the kernel, or never seen.
    pub fn lost(&self) -> u64 {
        self.interface_frames.saturating_sub(self.packets).max(self.kernel_drops)
    }
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
    /// `tcpdump -i <ifname> -B <buffer> -w <pcap>` inside `ns`: opens an AF_PACKET socket on a thread inside
    /// `ns`, bound to `ifindex` before this returns (so nothing sent afterwards is missed), and starts a thread
    /// that writes every frame to `pcap` (Ethernet link type, nanosecond wall-clock timestamps) and emits
    /// [`EventKind::Packet`] for each IPv4 frame at the kernel's timestamp of it.
    pub fn start(
        ns: &Netns,
        host: HostId,
        ifindex: u32,
        pcap: &Path,
        sink: EventSink,
        buffer: CaptureBuffer,
    ) -> Result<Capture> {
        let (socket, source, counters) = ns.run(|| {
            let ifname = interface_name(ifindex)
                .map_err(|e| Error::sys(format!("find interface {ifindex} of {host} to capture (ip link show)"), e))?;
            let command = format!("tcpdump -i {ifname} in {host}");
            let socket = open_socket(&command)?;
            let source = match buffer {
                CaptureBuffer::Queue { bytes } => {
                    let mtu = interface_mtu(&socket, &ifname)
                        .map_err(|e| Error::sys(format!("read the MTU of {ifname} ({command}): SIOCGIFMTU"), e))?;
                    Source::Queue(QueueSource::new(&socket, bytes, mtu, &command)?)
                }
                CaptureBuffer::Ring { blocks } => Source::Ring(RingSource::new(&socket, blocks, &command)?),
            };
            bind(&socket, ifindex, &command)?;
            let counters = InterfaceCounters::open(ifname)
                .map_err(|e| Error::sys(format!("read packet counters ({command}): /proc/net/dev"), e))?;
            Ok((socket, source, counters))
        })?;
        let command = format!("tcpdump -i {} -w {} in {host}", counters.ifname, pcap.display());

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
        let reader = Reader {
            socket,
            source,
            counters,
            stop_signal: Arc::clone(&stop_signal),
            recorder: Recorder {
                command: command.clone(),
                pcap: writer,
                decoder: Decoder::new(),
                clock: sink.clock().clone(),
                sink,
                host,
                stats: CaptureStats::default(),
            },
        };
        thread::Builder::new()
            .name(format!("capture-{host}"))
            .spawn(move || reader.run())
            .map_err(|e| Error::sys(format!("spawn capture thread ({command})"), e))?;
        Ok(Capture { command, stop_signal, finished })
    }

    /// Stops the capture (`kill -INT` to tcpdump): takes the frames the interface counted until then (waiting
    /// at most `DRAIN_MAX` for those still on their way), writes out and closes the pcap, and returns the
    /// counts.
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

/// Keeps the kernel stamping every frame as it passes, for as long as this process lives.
///
/// A queue capture's frames carry the time the kernel stamped them on the way in or out, but the kernel only
/// stamps while some socket wants stamps (its `netstamp_needed` static key), and it switches stamping on in
/// deferred work: a frame that passes before that is stamped when the capture reads it, late by however long
/// the capture thread took to run. Held once per process, the switch happens before any scenario starts, and
/// not once per scenario. The holder is an unbound UDP socket that never sends or receives.
pub fn keep_kernel_timestamps_on() -> Result<()> {
    static HOLDER: OnceLock<OwnedFd> = OnceLock::new();
    if HOLDER.get().is_some() {
        return Ok(());
    }
    // SAFETY: plain system call without memory arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::last_os("open a socket to keep kernel timestamps on: socket(AF_INET, SOCK_DGRAM)"));
    }
    // SAFETY: fd was just returned by socket and is owned by nobody else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    set_option(&socket, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, &(1 as c_int))
        .map_err(|e| Error::sys("keep kernel timestamps on: setsockopt(SO_TIMESTAMPNS)", e))?;
    // Another thread may have got there first; its socket does the same.
    let _ = HOLDER.set(socket);
    Ok(())
}

/// `ip link show` name of `ifindex` in the calling thread's namespace.
pub(crate) fn interface_name(ifindex: u32) -> io::Result<String> {
    let mut name = [0u8; libc::IF_NAMESIZE];
    // SAFETY: name has the IF_NAMESIZE bytes if_indextoname may write.
    let found = unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr().cast()) };
    if found.is_null() {
        return Err(io::Error::last_os_error());
    }
    let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..len]).into_owned())
}

/// `ip link show <ifname>`'s `mtu`, asked through any socket of the interface's namespace.
pub(crate) fn interface_mtu(socket: &OwnedFd, ifname: &str) -> io::Result<usize> {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(ifname.bytes().take(libc::IF_NAMESIZE - 1)) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: request is a live ifreq with a NUL-terminated name; SIOCGIFMTU writes only its ifru_mtu.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFMTU, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFMTU filled in ifru_mtu.
    let mtu = unsafe { request.ifr_ifru.ifru_mtu };
    usize::try_from(mtu).map_err(|_| io::Error::other(format!("negative MTU {mtu}")))
}

pub(crate) fn new_eventfd(command: &str) -> Result<OwnedFd> {
    // SAFETY: eventfd has no memory arguments; a non-negative result is a new descriptor we own.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::last_os(format!("create stop signal for {command}: eventfd")));
    }
    // SAFETY: fd was just returned by eventfd and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn signal(eventfd: &OwnedFd) {
    // Writing can only fail if the counter would overflow, which a few signals never do.
    // SAFETY: eventfd is a valid eventfd descriptor.
    unsafe { libc::eventfd_write(eventfd.as_raw_fd(), 1) };
}

/// An AF_PACKET socket that receives nothing yet: must run inside the interface's namespace.
pub(crate) fn open_socket(command: &str) -> Result<OwnedFd> {
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
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Binds the socket to every protocol on `ifindex`: from here on it receives the interface's frames.
pub(crate) fn bind(socket: &OwnedFd, ifindex: u32, command: &str) -> Result<()> {
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
        return Err(Error::last_os(format!("bind packet socket to interface index {ifindex} ({command})")));
    }
    Ok(())
}

pub(crate) fn set_option<T>(socket: &impl AsRawFd, level: c_int, option: c_int, value: &T) -> io::Result<()> {
    // SAFETY: value points to a live T and the length passed is its size.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
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
/// The ring's `tpacket_stats_v3` starts with the same two counters as a queue socket's `tpacket_stats`.
pub(crate) fn take_kernel_drops(socket: &OwnedFd) -> io::Result<u64> {
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

/// The interface's own frame counters (`ip -s link show <ifname>`), from a /proc/net/dev opened inside its
/// namespace: the file stays bound to that namespace, and each read from offset 0 is a fresh snapshot.
struct InterfaceCounters {
    file: File,
    ifname: String,
    at_start: u64,
}

impl InterfaceCounters {
    /// Must run inside the interface's namespace.
    fn open(ifname: String) -> io::Result<InterfaceCounters> {
        let file = File::open("/proc/thread-self/net/dev")?;
        let mut counters = InterfaceCounters { file, ifname, at_start: 0 };
        counters.at_start = counters.frames()?;
        Ok(counters)
    }

    /// rx + tx packets of the interface now.
    fn frames(&self) -> io::Result<u64> {
        let mut text = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        loop {
            let read = self.file.read_at(&mut chunk, text.len() as u64)?;
            if read == 0 {
                break;
            }
            text.extend_from_slice(&chunk[..read]);
        }
        let text = String::from_utf8_lossy(&text);
        rx_tx_packets(&text, &self.ifname).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("{} missing from /proc/net/dev", self.ifname))
        })
    }

    fn since_start(&self) -> io::Result<u64> {
        Ok(self.frames()?.saturating_sub(self.at_start))
    }
}

/// rx packets + tx packets of `ifname` in a /proc/net/dev text.
pub(crate) fn rx_tx_packets(text: &str, ifname: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.trim_start().starts_with(&format!("{ifname}:")))?;
    let fields: Vec<u64> = line.split_once(':')?.1.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    Some(fields.get(1)? + fields.get(9)?)
}

/// One frame as the kernel describes it.
pub(crate) struct Frame<'a> {
    pub wall_time: Duration,
    pub wire_len: u32,
    pub outgoing: bool,
    pub data: &'a [u8],
}

/// Where the capture thread takes frames from.
enum Source {
    Queue(QueueSource),
    Ring(RingSource),
}

impl Source {
    /// Hands every frame the kernel has ready to `each`, oldest first, without blocking.
    fn take_ready(&mut self, socket: &OwnedFd, each: &mut dyn FnMut(Frame<'_>) -> Result<()>) -> Result<()> {
        match self {
            Source::Queue(queue) => queue.take_ready(socket, each),
            Source::Ring(ring) => ring.take_ready(each),
        }
    }

    /// Whether frames sit in a ring block the kernel is still filling (it hands the block over when its
    /// retire timeout expires); a queue hands over each frame at once.
    fn holds_unretired_frames(&self) -> bool {
        match self {
            Source::Queue(_) => false,
            Source::Ring(ring) => ring.open_block_has_frames(),
        }
    }
}

/// The frames of a queue socket, taken `BATCH` at a time into buffers reused for the whole capture.
pub(crate) struct QueueSource {
    /// Bytes per frame in `frames`.
    frame_room: usize,
    frames: Vec<u8>,
    addresses: Vec<libc::sockaddr_ll>,
    /// u64 words, so that control messages are aligned as `CMSG_FIRSTHDR` expects.
    controls: Vec<[u64; CONTROL_ROOM / 8]>,
}

impl QueueSource {
    /// Sizes the socket's receive queue and asks for the kernel's timestamp of every frame.
    pub(crate) fn new(socket: &OwnedFd, bytes: usize, mtu: usize, command: &str) -> Result<QueueSource> {
        let bytes = c_int::try_from(bytes).unwrap_or(c_int::MAX);
        // SO_RCVBUFFORCE goes past net.core.rmem_max, a machine-wide setting this never changes; in a user
        // namespace it is refused and SO_RCVBUF gives what rmem_max allows (drops are then counted).
        set_option(socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &bytes)
            .or_else(|_| set_option(socket, libc::SOL_SOCKET, libc::SO_RCVBUF, &bytes))
            .map_err(|e| Error::sys(format!("size the capture queue ({command}): setsockopt(SO_RCVBUF)"), e))?;
        set_option(socket, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, &(1 as c_int))
            .map_err(|e| Error::sys(format!("ask for frame timestamps ({command}): setsockopt(SO_TIMESTAMPNS)"), e))?;
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let no_address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        Ok(QueueSource {
            frame_room: mtu + LINK_HEADER_ROOM,
            frames: vec![0; BATCH * (mtu + LINK_HEADER_ROOM)],
            addresses: vec![no_address; BATCH],
            controls: vec![[0; CONTROL_ROOM / 8]; BATCH],
        })
    }

    pub(crate) fn take_ready(&mut self, socket: &OwnedFd, each: &mut dyn FnMut(Frame<'_>) -> Result<()>) -> Result<()> {
        loop {
            let received = self.receive_batch(socket)?;
            for (index, &(wire_len, wall_time)) in received.iter().enumerate() {
                let captured = (wire_len as usize).min(self.frame_room);
                each(Frame {
                    wall_time,
                    wire_len,
                    outgoing: self.addresses[index].sll_pkttype == libc::PACKET_OUTGOING,
                    data: &self.frames[index * self.frame_room..][..captured],
                })?;
            }
            if received.len() < BATCH {
                return Ok(());
            }
        }
    }

    /// One `recvmmsg` without waiting: each frame's length on the wire and kernel timestamp, its bytes in
    /// `frames` and its address in `addresses` at the same index.
    fn receive_batch(&mut self, socket: &OwnedFd) -> Result<Vec<(u32, Duration)>> {
        let (frames, frame_room) = (self.frames.as_mut_ptr(), self.frame_room);
        // SAFETY: iovec is plain old data; all-zero is a valid value.
        let mut iovecs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: mmsghdr is plain old data; all-zero (no name, no buffers) is a valid value.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (index, (iovec, header)) in iovecs.iter_mut().zip(headers.iter_mut()).enumerate() {
            // SAFETY: (index + 1) * frame_room <= frames.len(), so the pointer stays inside the buffer.
            iovec.iov_base = unsafe { frames.add(index * frame_room) }.cast();
            iovec.iov_len = frame_room;
            header.msg_hdr.msg_name = (&mut self.addresses[index] as *mut libc::sockaddr_ll).cast();
            header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            header.msg_hdr.msg_iov = iovec;
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_control = self.controls[index].as_mut_ptr().cast();
            header.msg_hdr.msg_controllen = CONTROL_ROOM;
        }
        let received = loop {
            // SAFETY: every header points at live buffers of the lengths it gives, owned by self and iovecs,
            // which outlive the call; MSG_TRUNC makes msg_len the frame's full length even if it was cut.
            let count = unsafe {
                libc::recvmmsg(
                    socket.as_raw_fd(),
                    headers.as_mut_ptr(),
                    BATCH as libc::c_uint,
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                    std::ptr::null_mut(),
                )
            };
            if count >= 0 {
                break count as usize;
            }
            let error = io::Error::last_os_error();
            match error.kind() {
                io::ErrorKind::WouldBlock => return Ok(Vec::new()),
                io::ErrorKind::Interrupted => continue,
                _ => return Err(Error::sys("take frames from the capture socket: recvmmsg", error)),
            }
        };
        Ok(headers[..received].iter().map(|header| (header.msg_len, frame_timestamp(&header.msg_hdr))).collect())
    }
}

/// The SO_TIMESTAMPNS stamp of a received frame; the time of reading if the kernel gave none.
fn frame_timestamp(header: &libc::msghdr) -> Duration {
    // SAFETY: header's control buffer and length are the ones recvmmsg filled in; CMSG_* walk only inside it.
    unsafe {
        let mut message = libc::CMSG_FIRSTHDR(header);
        while !message.is_null() {
            if (*message).cmsg_level == libc::SOL_SOCKET && (*message).cmsg_type == libc::SCM_TIMESTAMPNS {
                let stamp: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(message).cast());
                return Duration::new(stamp.tv_sec as u64, stamp.tv_nsec as u32);
            }
            message = libc::CMSG_NXTHDR(header, message);
        }
    }
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default()
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
/// through each block's status word, read in order from `next_block`.
#[derive(Debug)]
struct RingSource {
    base: NonNull<u8>,
    blocks: usize,
    next_block: usize,
}

// SAFETY: the mapping is owned by the RingSource and only the capture thread touches it.
unsafe impl Send for RingSource {}

impl RingSource {
    /// Switches the socket to TPACKET_V3 and maps a ring of `blocks` blocks: one RCU grace period.
    fn new(socket: &OwnedFd, blocks: usize, command: &str) -> Result<RingSource> {
        let version = libc::tpacket_versions::TPACKET_V3 as c_int;
        set_option(socket, libc::SOL_PACKET, libc::PACKET_VERSION, &version)
            .map_err(|e| Error::sys(format!("select TPACKET_V3 ({command}): setsockopt(PACKET_VERSION)"), e))?;
        let too_large = || {
            Error::sys(
                format!("ring of {blocks} blocks ({command})"),
                io::Error::new(io::ErrorKind::InvalidInput, "too many blocks"),
            )
        };
        let request = libc::tpacket_req3 {
            tp_block_size: RING_BLOCK_SIZE as u32,
            tp_block_nr: u32::try_from(blocks).map_err(|_| too_large())?,
            tp_frame_size: NOMINAL_FRAME_SIZE as u32,
            tp_frame_nr: u32::try_from(RING_BLOCK_SIZE / NOMINAL_FRAME_SIZE * blocks).map_err(|_| too_large())?,
            tp_retire_blk_tov: BLOCK_RETIRE_TIMEOUT_MS,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        set_option(socket, libc::SOL_PACKET, libc::PACKET_RX_RING, &request).map_err(|e| {
            Error::sys(
                format!(
                    "allocate {blocks} x {RING_BLOCK_SIZE} byte capture ring ({command}): setsockopt(PACKET_RX_RING)"
                ),
                e,
            )
        })?;
        // SAFETY: a fresh shared mapping of the socket's ring; the kernel checks the length against the ring.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                RING_BLOCK_SIZE * blocks,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                socket.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Error::last_os(format!("map capture ring ({command}): mmap")));
        }
        let base = NonNull::new(base.cast())
            .ok_or_else(|| Error::sys(format!("map capture ring ({command})"), io::Error::other("mmap gave null")))?;
        Ok(RingSource { base, blocks, next_block: 0 })
    }

    fn len(&self) -> usize {
        RING_BLOCK_SIZE * self.blocks
    }

    fn block_status(&self, block: usize) -> &AtomicU32 {
        // SAFETY: the status word lies inside the mapping (block < blocks), is 4-byte aligned (blocks are
        // page aligned), and both sides access it as an atomic hand-over flag.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(block * RING_BLOCK_SIZE + BLOCK_STATUS_OFFSET).cast()) }
    }

    /// The block's bytes if the kernel has handed it to us, else `None`.
    fn user_block(&self, block: usize) -> Option<&[u8]> {
        let status = self.block_status(block).load(Ordering::Acquire);
        if status & libc::TP_STATUS_USER == 0 {
            return None;
        }
        // SAFETY: the block lies inside the mapping, and the kernel does not write to it until we give it back
        // in `release`, which needs this borrow to have ended.
        Some(unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(block * RING_BLOCK_SIZE), RING_BLOCK_SIZE) })
    }

    /// Whether the kernel has put frames in the block it is filling and not handed it over yet.
    fn open_block_has_frames(&self) -> bool {
        let block = self.next_block;
        if self.block_status(block).load(Ordering::Acquire) & libc::TP_STATUS_USER != 0 {
            return true;
        }
        // SAFETY: as for the status word; the kernel updates the count while it fills the block, so it is
        // only read atomically.
        let frames = unsafe {
            AtomicU32::from_ptr(self.base.as_ptr().add(block * RING_BLOCK_SIZE + BLOCK_NUM_PACKETS_OFFSET).cast())
        };
        frames.load(Ordering::Relaxed) != 0
    }

    fn release(&self, block: usize) {
        self.block_status(block).store(libc::TP_STATUS_KERNEL, Ordering::Release);
    }

    fn take_ready(&mut self, each: &mut dyn FnMut(Frame<'_>) -> Result<()>) -> Result<()> {
        loop {
            let block = self.next_block;
            let Some(bytes) = self.user_block(block) else {
                return Ok(());
            };
            block_frames(bytes).try_for_each(&mut *each)?;
            self.release(block);
            self.next_block = (block + 1) % self.blocks;
        }
    }
}

impl Drop for RingSource {
    fn drop(&mut self) {
        // SAFETY: base and len are exactly the mapping made in `new`, and no borrow of it outlives the ring.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len()) };
    }
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

/// What becomes of each frame: a pcap record, and an event on the timeline if it is IPv4.
struct Recorder {
    command: String,
    pcap: PcapWriter<ChunkQueue>,
    decoder: Decoder,
    clock: Clock,
    sink: EventSink,
    host: HostId,
    stats: CaptureStats,
}

impl Recorder {
    fn record(&mut self, frame: Frame<'_>) -> Result<()> {
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
        Ok(())
    }
}

/// The capture thread's state: the socket and what it reads frames from, and what records them.
struct Reader {
    socket: OwnedFd,
    source: Source,
    counters: InterfaceCounters,
    stop_signal: Arc<OwnedFd>,
    recorder: Recorder,
}

impl Reader {
    /// Captures until stopped, then hands the counts (or what failed) to the pcap writer, which reports them
    /// once the file is complete. The socket is closed only after that: closing a packet socket waits for an
    /// RCU grace period, which `stop` need not wait for.
    ///
    /// The thread is real-time, as the observer is: a packet trigger waits on this thread's events, and
    /// under a bulk transfer the capture must win over the traffic it records, so the transfer slows down
    /// instead of overflowing the kernel's buffer.
    fn run(mut self) {
        // Refused only without CAP_SYS_NICE (rootless): the capture then runs at the ordinary priority and
        // `kernel_drops` says what that cost.
        let _ = priority::raise_current_thread();
        let captured = self.capture_until_stopped().map(|()| self.recorder.stats);
        let Reader { socket, source, recorder, .. } = self;
        recorder.pcap.into_writer().finish(captured);
        drop(source);
        drop(socket);
    }

    fn capture_until_stopped(&mut self) -> Result<()> {
        let mut drops_read = Instant::now();
        loop {
            self.take_ready()?;
            if drops_read.elapsed() >= IDLE_POLL {
                self.read_kernel_drops()?;
                drops_read = Instant::now();
            }
            if self.wait(IDLE_POLL, true)? {
                return self.drain();
            }
        }
    }

    /// After a stop request: takes frames until every frame the interface has counted is either in the pcap
    /// or counted as dropped by the kernel, for at most `DRAIN_MAX`.
    fn drain(&mut self) -> Result<()> {
        let command = &self.recorder.command;
        let counted = self
            .counters
            .since_start()
            .map_err(|e| Error::sys(format!("read packet counters ({command}): /proc/net/dev"), e))?;
        let since = Instant::now();
        loop {
            self.take_ready()?;
            self.read_kernel_drops()?;
            let stats = &self.recorder.stats;
            let accounted = stats.packets + stats.kernel_drops >= counted;
            if (accounted && !self.source.holds_unretired_frames()) || since.elapsed() >= DRAIN_MAX {
                break;
            }
            self.wait(DRAIN_POLL, false)?;
        }
        self.recorder.stats.interface_frames = counted;
        Ok(())
    }

    fn take_ready(&mut self) -> Result<()> {
        let recorder = &mut self.recorder;
        self.source.take_ready(&self.socket, &mut |frame| recorder.record(frame))
    }

    /// Sleeps until frames are ready or `timeout` passes; with `watch_stop`, also wakes on a stop request
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
            Err(e) => return Err(Error::sys(format!("wait for packets ({}): poll", self.recorder.command), e)),
        }
        Ok(watch_stop && fds[1].any().unwrap_or(false))
    }

    fn read_kernel_drops(&mut self) -> Result<()> {
        let drops = take_kernel_drops(&self.socket).map_err(|e| {
            Error::sys(format!("read drop counter ({}): getsockopt(PACKET_STATISTICS)", self.recorder.command), e)
        })?;
        self.recorder.stats.kernel_drops += drops;
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
        let client_capture = Capture::start(
            &pair.client,
            HostId::Client,
            pair.client_ifindex,
            &client_pcap,
            sink.clone(),
            CaptureBuffer::DEFAULT,
        )
        .unwrap();
        let server_capture = Capture::start(
            &pair.server,
            HostId::Server,
            pair.server_ifindex,
            &server_pcap,
            sink.clone(),
            CaptureBuffer::DEFAULT,
        )
        .unwrap();
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
        let capture =
            Capture::start(&pair.client, HostId::Client, pair.client_ifindex, &pcap, sink, CaptureBuffer::DEFAULT)
                .unwrap();
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
        let capture =
            Capture::start(&pair.server, HostId::Server, pair.server_ifindex, &pcap, sink, CaptureBuffer::DEFAULT)
                .unwrap();
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
        let err =
            Capture::start(&ns, HostId::Client, 4242, &dir.file("x.pcap"), sink, CaptureBuffer::DEFAULT).unwrap_err();
        assert!(err.to_string().contains("interface 4242 of client"), "{err}");
        assert!(!dir.file("x.pcap").exists());
    }

    /// Sends `bytes` from client to server over one TCP connection.
    fn transfer(pair: &VethPair, port: u16, bytes: usize) {
        let listener = pair.server.run(|| Ok(TcpListener::bind((SERVER_ADDR, port)).unwrap())).unwrap();
        let mut client = pair
            .client
            .run(|| Ok(TcpStream::connect_timeout(&(SERVER_ADDR, port).into(), IO_TIMEOUT).unwrap()))
            .unwrap();
        let (mut server, _) = listener.accept().unwrap();
        server.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let reader = thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0;
            loop {
                match server.read(&mut buf).unwrap() {
                    0 => return total,
                    n => total += n,
                }
            }
        });
        let chunk = vec![0x5au8; 1 << 16];
        for _ in 0..bytes / chunk.len() {
            client.write_all(&chunk).unwrap();
        }
        drop(client);
        assert_eq!(reader.join().unwrap(), bytes);
    }

    /// Both buffer arrangements, one per end of the same transfer: each pcap holds exactly the frames its
    /// interface counted, the stop waits for none longer than needed, and the counts agree with tcpdump's.
    #[test]
    fn queue_and_ring_capture_every_frame_the_interface_counts() {
        let pair = veth_pair();
        let dir = TestDir::new("buffers");
        let (client_pcap, server_pcap) = (dir.file("client.pcap"), dir.file("server.pcap"));
        let (sink, events) = EventSink::new(Clock::started());
        let ring = CaptureBuffer::ring_of(8 << 20);
        let client =
            Capture::start(&pair.client, HostId::Client, pair.client_ifindex, &client_pcap, sink.clone(), ring)
                .unwrap();
        let server = Capture::start(
            &pair.server,
            HostId::Server,
            pair.server_ifindex,
            &server_pcap,
            sink,
            CaptureBuffer::DEFAULT,
        )
        .unwrap();
        let counting = thread::spawn(move || events.iter().count());
        transfer(&pair, 9300, 16 << 20);
        let stopping = Instant::now();
        let (client_stats, server_stats) = (client.stop().unwrap(), server.stop().unwrap());
        let stop_took = stopping.elapsed();
        let mut ipv4_frames = 0;
        for (stats, pcap) in [(client_stats, &client_pcap), (server_stats, &server_pcap)] {
            // 16 MiB in 1448-byte segments is over 11,000 data frames alone.
            assert!(stats.interface_frames > 11_000, "{stats:?}");
            assert_eq!(stats.lost(), 0, "{stats:?}");
            assert_eq!(stats.kernel_drops, 0, "{stats:?}");
            assert_eq!(stats.packets, stats.interface_frames, "{stats:?}");
            assert_eq!(tcpdump_read(pcap, &["-q"]).len() as u64, stats.packets);
            ipv4_frames += tcpdump_read(pcap, &["-q", "ip"]).len();
        }
        // One event per IPv4 frame; the ARP exchange is in the pcaps only.
        assert_eq!(counting.join().unwrap(), ipv4_frames);
        // The ring hands over its last block within a retire timeout (4 ms): stopping never waits out DRAIN_MAX.
        assert!(stop_took < DRAIN_MAX, "stopping took {stop_took:?}");
    }

    /// A queue far too small for a bulk transfer drops frames: the kernel counts them, `lost` reports them, and
    /// frames taken plus frames dropped are exactly what the interface counted.
    #[test]
    fn frames_a_full_queue_drops_are_counted_as_lost() {
        let pair = veth_pair();
        let dir = TestDir::new("overflow");
        let pcap = dir.file("server.pcap");
        let (sink, events) = EventSink::new(Clock::started());
        let tiny = CaptureBuffer::Queue { bytes: 1 };
        let capture = Capture::start(&pair.server, HostId::Server, pair.server_ifindex, &pcap, sink, tiny).unwrap();
        let counting = thread::spawn(move || events.iter().count());
        transfer(&pair, 9301, 16 << 20);
        let stats = capture.stop().unwrap();
        counting.join().unwrap();
        assert!(stats.kernel_drops > 0, "a queue of one frame kept up with 16 MiB: {stats:?}");
        assert_eq!(stats.packets + stats.kernel_drops, stats.interface_frames, "{stats:?}");
        assert_eq!(stats.lost(), stats.kernel_drops, "{stats:?}");
        assert_eq!(tcpdump_read(&pcap, &["-q"]).len() as u64, stats.packets);
    }
}
