//! The default capture source: frames the kernel queues on the packet socket itself, taken a batch per
//! `recvmmsg` with their `SO_TIMESTAMPNS` stamps (and, when the kernel cuts them to a snap length, each one's
//! full length from its `PACKET_AUXDATA`).

use super::*;

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
    /// Sizes the socket's receive queue and asks for the kernel's timestamp of every frame; with a snap length
    /// (a filter on the socket cuts the frames), for each frame's full length too, and takes no more than
    /// `snaplen` bytes of each.
    pub(crate) fn new(
        socket: &OwnedFd,
        bytes: usize,
        mtu: usize,
        snaplen: Option<u32>,
        command: &str,
    ) -> Result<QueueSource> {
        let bytes = c_int::try_from(bytes).unwrap_or(c_int::MAX);
        // SO_RCVBUFFORCE goes past net.core.rmem_max, a machine-wide setting this never changes; in a user
        // namespace it is refused and SO_RCVBUF gives what rmem_max allows (drops are then counted).
        set_option(socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &bytes)
            .or_else(|_| set_option(socket, libc::SOL_SOCKET, libc::SO_RCVBUF, &bytes))
            .map_err(|e| Error::sys(format!("size the capture queue ({command}): setsockopt(SO_RCVBUF)"), e))?;
        set_option(socket, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, &(1 as c_int))
            .map_err(|e| Error::sys(format!("ask for frame timestamps ({command}): setsockopt(SO_TIMESTAMPNS)"), e))?;
        // A frame the filter cut reports its cut length to recvmmsg, even with MSG_TRUNC: only the auxiliary
        // data says how long it was on the wire.
        if snaplen.is_some() {
            set_option(socket, libc::SOL_PACKET, libc::PACKET_AUXDATA, &(1 as c_int))
                .map_err(|e| Error::sys(format!("ask for frame lengths ({command}): setsockopt(PACKET_AUXDATA)"), e))?;
        }
        let frame_room = snaplen.map_or(usize::MAX, |s| s as usize).min(mtu + LINK_HEADER_ROOM);
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let no_address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        Ok(QueueSource {
            frame_room,
            frames: vec![0; BATCH * frame_room],
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
    /// `frames` (at most `frame_room` of them) and its address in `addresses` at the same index.
    pub(super) fn receive_batch(&mut self, socket: &OwnedFd) -> Result<Vec<(u32, Duration)>> {
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
        Ok(headers[..received]
            .iter()
            .map(|header| {
                let (stamp, wire_len) = frame_controls(&header.msg_hdr);
                (wire_len.unwrap_or(header.msg_len), stamp)
            })
            .collect())
    }
}

/// The SO_TIMESTAMPNS stamp of a received frame (the time of reading if the kernel gave none), and its length
/// on the wire from its PACKET_AUXDATA, if asked for.
pub(super) fn frame_controls(header: &libc::msghdr) -> (Duration, Option<u32>) {
    let (mut stamp, mut wire_len) = (None, None);
    // SAFETY: header's control buffer and length are the ones recvmmsg filled in; CMSG_* walk only inside it,
    // and each message's data is as long as its type says.
    unsafe {
        let mut message = libc::CMSG_FIRSTHDR(header);
        while !message.is_null() {
            let (level, kind) = ((*message).cmsg_level, (*message).cmsg_type);
            if level == libc::SOL_SOCKET && kind == libc::SCM_TIMESTAMPNS {
                let time: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(message).cast());
                stamp = Some(Duration::new(time.tv_sec as u64, time.tv_nsec as u32));
            } else if level == libc::SOL_PACKET && kind == libc::PACKET_AUXDATA {
                let aux: libc::tpacket_auxdata = std::ptr::read_unaligned(libc::CMSG_DATA(message).cast());
                wire_len = Some(aux.tp_len);
            }
            message = libc::CMSG_NXTHDR(header, message);
        }
    }
    let stamp = stamp.unwrap_or_else(|| SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default());
    (stamp, wire_len)
}
