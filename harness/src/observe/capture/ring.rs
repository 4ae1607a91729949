//! The bulk capture source: a mapped TPACKET_V3 ring (`tcpdump -B`), blocks of frames handed back and forth
//! between the kernel and the capture thread through each block's status word.

use super::*;

/// Where the fields the reader needs sit in a block descriptor and in a frame header.
pub(super) const BLOCK_STATUS_OFFSET: usize =
    offset_of!(libc::tpacket_block_desc, hdr) + offset_of!(libc::tpacket_hdr_v1, block_status);
pub(super) const BLOCK_NUM_PACKETS_OFFSET: usize =
    offset_of!(libc::tpacket_block_desc, hdr) + offset_of!(libc::tpacket_hdr_v1, num_pkts);
pub(super) const BLOCK_FIRST_PACKET_OFFSET: usize =
    offset_of!(libc::tpacket_block_desc, hdr) + offset_of!(libc::tpacket_hdr_v1, offset_to_first_pkt);
pub(super) const FRAME_HEADER_LEN: usize = size_of::<libc::tpacket3_hdr>();
/// The kernel puts a sockaddr_ll after the frame header, aligned as TPACKET_ALIGN does.
pub(super) const FRAME_ADDRESS_OFFSET: usize = FRAME_HEADER_LEN.next_multiple_of(libc::TPACKET_ALIGNMENT);
pub(super) const FRAME_PKTTYPE_OFFSET: usize = FRAME_ADDRESS_OFFSET + offset_of!(libc::sockaddr_ll, sll_pkttype);

/// The mapped TPACKET_V3 ring: `blocks` blocks that the kernel and this process hand back and forth
/// through each block's status word, read in order from `next_block`.
#[derive(Debug)]
pub(super) struct RingSource {
    base: NonNull<u8>,
    blocks: usize,
    next_block: usize,
}

// SAFETY: the mapping is owned by the RingSource and only the capture thread touches it.
unsafe impl Send for RingSource {}

impl RingSource {
    /// Switches the socket to TPACKET_V3 and maps a ring of `blocks` blocks: one RCU grace period.
    pub(super) fn new(socket: &OwnedFd, blocks: usize, command: &str) -> Result<RingSource> {
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

    pub(super) fn len(&self) -> usize {
        RING_BLOCK_SIZE * self.blocks
    }

    pub(super) fn block_status(&self, block: usize) -> &AtomicU32 {
        // SAFETY: the status word lies inside the mapping (block < blocks), is 4-byte aligned (blocks are
        // page aligned), and both sides access it as an atomic hand-over flag.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(block * RING_BLOCK_SIZE + BLOCK_STATUS_OFFSET).cast()) }
    }

    /// The block's bytes if the kernel has handed it to us, else `None`.
    pub(super) fn user_block(&self, block: usize) -> Option<&[u8]> {
        let status = self.block_status(block).load(Ordering::Acquire);
        if status & libc::TP_STATUS_USER == 0 {
            return None;
        }
        // SAFETY: the block lies inside the mapping, and the kernel does not write to it until we give it back
        // in `release`, which needs this borrow to have ended.
        Some(unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(block * RING_BLOCK_SIZE), RING_BLOCK_SIZE) })
    }

    /// Whether the kernel has put frames in the block it is filling and not handed it over yet.
    pub(super) fn open_block_has_frames(&self) -> bool {
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

    pub(super) fn release(&self, block: usize) {
        self.block_status(block).store(libc::TP_STATUS_KERNEL, Ordering::Release);
    }

    pub(super) fn take_ready(&mut self, each: &mut dyn FnMut(Frame<'_>) -> Result<()>) -> Result<()> {
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
pub(super) fn block_frames(block: &[u8]) -> impl Iterator<Item = Frame<'_>> {
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

pub(super) fn ne32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

pub(super) fn ne16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}
