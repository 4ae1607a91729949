//! Live capture of one host's interface into a pcap file (`tcpdump -i <if> -w <file>`), with a `Packet`
//! timeline event per IPv4 frame stamped with the kernel's receive time.
//!
//! The socket is AF_PACKET with a TPACKET_V3 ring (what libpcap uses): the kernel copies frames into blocks of
//! a shared mapping and hands over a block when it is full or `BLOCK_RETIRE_TIMEOUT_MS` after its first frame,
//! so a bulk transfer costs one wake-up per block instead of one system call per frame, and every frame
//! carries the realtime timestamp taken when the kernel queued it.

use std::ffi::c_int;
use std::fs::File;
use std::io::{self, BufWriter};
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
/// Blocks in the ring: what absorbs the capture thread falling behind (`tcpdump -B`, in blocks).
const BLOCK_COUNT: usize = 32;
/// TPACKET_V3 packs frames of any length into a block, but the kernel still checks a nominal frame size.
const NOMINAL_FRAME_SIZE: usize = 1 << 11;
/// How long the kernel lets a partly filled block wait before handing it over: the longest a lone packet
/// takes to reach the timeline (and the packet triggers that wait on it).
const BLOCK_RETIRE_TIMEOUT_MS: u32 = 4;
/// Longest sleep of an idle capture thread; kernel drop counters are read at least this often.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// After a stop request: keep taking blocks this long, so the partly filled block is retired and written.
const DRAIN_GRACE: Duration = Duration::from_millis(20);
/// `stop` gives up on a capture thread that has not finished by then (a stuck disk, not a slow network).
const STOP_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest frame written whole (tcpdump's default `-s`); with offloads off no frame comes close.
const SNAPLEN: u32 = 262_144;
const PCAP_BUFFER_SIZE: usize = 1 << 20;

/// What one capture saw, as tcpdump reports when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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
        let (ifname, socket, ring) = ns.run(|| {
            let ifname = nix::net::if_::if_indextoname(ifindex)
                .map_err(|e| {
                    Error::sys(format!("find interface {ifindex} of {host} to capture (ip link show)"), e)
                })?
                .to_string_lossy()
                .into_owned();
            let (socket, ring) = open_ring(ifindex, &ifname, host)?;
            Ok((ifname, socket, ring))
        })?;
        let command = format!("tcpdump -i {ifname} -w {} in {host}", pcap.display());

        let file = File::create(pcap).map_err(|e| Error::sys(format!("create {} ({command})", pcap.display()), e))?;
        let header = PcapHeader {
            snaplen: SNAPLEN,
            datalink: DataLink::ETHERNET,
            ts_resolution: TsResolution::NanoSecond,
            endianness: Endianness::native(),
            ..PcapHeader::default()
        };
        let writer = PcapWriter::with_header(BufWriter::with_capacity(PCAP_BUFFER_SIZE, file), header)
            .map_err(|e| Error::sys(format!("write pcap header ({command})"), io::Error::other(e)))?;

        let stop_signal = Arc::new(new_eventfd(&command)?);
        let (done, finished) = mpsc::sync_channel(1);
        let reader = RingReader {
            command: command.clone(),
            socket,
            ring,
            next_block: 0,
            stop_signal: Arc::clone(&stop_signal),
            pcap: writer,
            decoder: Decoder::new(),
            clock: sink.clock(),
            sink,
            host,
            stats: CaptureStats::default(),
        };
        thread::Builder::new()
            .name(format!("capture-{host}"))
            .spawn(move || {
                // The receiver is gone only if the Capture was dropped without stop(); nobody is waiting then.
                let _ = done.send(reader.run());
            })
            .map_err(|e| Error::sys(format!("spawn capture thread ({command})"), e))?;
        Ok(Capture { command, stop_signal, finished })
    }

    /// Stops the capture (`kill -INT` to tcpdump): takes what the kernel still holds for at most
    /// `DRAIN_GRACE`, flushes and closes the pcap, and returns the counts.
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

/// Opens the AF_PACKET socket, maps its TPACKET_V3 ring and binds it to `ifindex`: must run inside the
/// interface's namespace.
fn open_ring(ifindex: u32, ifname: &str, host: HostId) -> Result<(OwnedFd, Ring)> {
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
        tp_block_nr: BLOCK_COUNT as u32,
        tp_frame_size: NOMINAL_FRAME_SIZE as u32,
        tp_frame_nr: (BLOCK_SIZE / NOMINAL_FRAME_SIZE * BLOCK_COUNT) as u32,
        tp_retire_blk_tov: BLOCK_RETIRE_TIMEOUT_MS,
        tp_sizeof_priv: 0,
        tp_feature_req_word: 0,
    };
    set_packet_option(&socket, libc::PACKET_RX_RING, &request).map_err(|e| {
        Error::sys(
            format!("allocate {BLOCK_COUNT} x {BLOCK_SIZE} byte capture ring ({command}): setsockopt(PACKET_RX_RING)"),
            e,
        )
    })?;
    let ring = Ring::map(&socket).map_err(|e| Error::sys(format!("map capture ring ({command}): mmap"), e))?;

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

/// The mapped TPACKET_V3 ring: `BLOCK_COUNT` blocks that the kernel and this process hand back and forth
/// through each block's status word.
#[derive(Debug)]
struct Ring {
    base: NonNull<u8>,
}

// SAFETY: the mapping is owned by the Ring and only the capture thread touches it.
unsafe impl Send for Ring {}

impl Ring {
    const LEN: usize = BLOCK_SIZE * BLOCK_COUNT;

    fn map(socket: &OwnedFd) -> io::Result<Ring> {
        // SAFETY: a fresh shared mapping of the socket's ring; the kernel checks the length against the ring.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Ring::LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                socket.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(base.cast()).map(|base| Ring { base }).ok_or_else(|| io::Error::other("mmap returned null"))
    }

    fn block_status(&self, block: usize) -> &AtomicU32 {
        // SAFETY: the status word lies inside the mapping (block < BLOCK_COUNT), is 4-byte aligned (blocks are
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

    fn release(&self, block: usize) {
        self.block_status(block).store(libc::TP_STATUS_KERNEL, Ordering::Release);
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: base and LEN are exactly the mapping made in `map`, and no borrow of it outlives the Ring.
        unsafe { libc::munmap(self.base.as_ptr().cast(), Ring::LEN) };
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
    pcap: PcapWriter<BufWriter<File>>,
    decoder: Decoder,
    clock: Clock,
    sink: EventSink,
    host: HostId,
    stats: CaptureStats,
}

impl RingReader {
    fn run(mut self) -> Result<CaptureStats> {
        let mut stop_requested: Option<Instant> = None;
        let mut drops_read = Instant::now();
        loop {
            self.take_ready_blocks()?;
            if drops_read.elapsed() >= IDLE_POLL {
                self.read_kernel_drops()?;
                drops_read = Instant::now();
            }
            let timeout = match stop_requested {
                Some(since) if since.elapsed() >= DRAIN_GRACE => break,
                Some(since) => DRAIN_GRACE - since.elapsed(),
                None => IDLE_POLL,
            };
            if self.wait(timeout, stop_requested.is_none())? {
                stop_requested = Some(Instant::now());
            }
        }
        self.take_ready_blocks()?;
        self.read_kernel_drops()?;
        let RingReader { command, socket, ring, pcap, stats, .. } = self;
        drop(ring);
        drop(socket);
        pcap.into_writer().into_inner().map_err(|e| Error::sys(format!("flush pcap ({command})"), e.into_error()))?;
        Ok(stats)
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
                self.pcap.write_packet(&packet).map_err(|e| {
                    Error::sys(format!("write packet to pcap ({})", self.command), io::Error::other(e))
                })?;
                if let Some(event) = self.decoder.decode(frame.data, frame.outgoing) {
                    let t = self.clock.since_t0(SystemTime::UNIX_EPOCH + frame.wall_time);
                    self.sink.emit_at(t, self.host, EventKind::Packet(event));
                }
            }
            self.ring.release(block);
            self.next_block = (block + 1) % BLOCK_COUNT;
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
