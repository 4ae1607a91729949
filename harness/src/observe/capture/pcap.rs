//! The pcap file of a capture and the chunks it travels in: the capture thread appends each frame as a pcap
//! record to a chunk and does nothing else with it; with live decoding a decoding thread turns the chunk's
//! records into timeline events; a writer thread puts the chunks on disk, as many as are waiting in one
//! `writev`, and with decoding after the stop reads the file back once it is complete and decodes it. A write
//! stalled on writeback, or decoding falling behind a bulk transfer, holds up neither the kernel's buffer nor
//! the capture.

use std::borrow::Cow;
use std::io::IoSlice;
use std::path::PathBuf;

use pcap_file::pcap::{PcapParser, RawPcapPacket};
use pcap_file::PcapError;

use crate::observe::decode::changes_tcp_state;
use crate::timeline::PacketEvent;

use super::*;

/// Bytes of a pcap record header: seconds, nanoseconds, captured length, length on the wire (u32 each).
pub(super) const RECORD_HEADER_LEN: usize = 16;

/// What the pcap says of itself (`tcpdump -s <snaplen> -w` with nanosecond stamps): Ethernet, the longest
/// part of a frame kept, this machine's byte order.
fn pcap_header(snaplen: u32) -> PcapHeader {
    PcapHeader {
        snaplen,
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::NanoSecond,
        endianness: Endianness::native(),
        ..PcapHeader::default()
    }
}

/// The pcap file header, as pcap-file writes it.
pub(super) fn file_header(command: &str, snaplen: u32) -> Result<Vec<u8>> {
    let writer = PcapWriter::with_header(Vec::with_capacity(24), pcap_header(snaplen))
        .map_err(|e| Error::sys(format!("write pcap header ({command})"), io::Error::other(e)))?;
    Ok(writer.into_writer())
}

/// One record of a pcap file as read back: its stamp, its length on the wire and the bytes captured of it.
#[derive(Debug)]
pub struct Record<'a> {
    pub timestamp: Duration,
    pub orig_len: u32,
    pub data: Cow<'a, [u8]>,
}

/// The next record of `reader` through pcap-file's own reader: the tests' reference for [`PcapRecords`].
#[cfg(test)]
pub(crate) fn next_record<R: io::Read>(reader: &mut PcapReader<R>) -> Option<std::result::Result<Record<'_>, String>> {
    let header = reader.header();
    Some(reader.next_raw_packet()?.map_err(|e| e.to_string()).and_then(|raw| checked(&header, raw)))
}

/// `raw` as a [`Record`], if it is one a file with `header` can hold. pcap-file's own `next_packet` refuses a
/// record longer on the wire than the file's snap length, which is every frame a snap length cut (in tcpdump's
/// files too), so the raw record is checked here: no more bytes captured than the file's snap length or than
/// the frame had, and a valid stamp.
fn checked<'a>(header: &PcapHeader, raw: RawPcapPacket<'a>) -> std::result::Result<Record<'a>, String> {
    let nanos = match header.ts_resolution {
        TsResolution::MicroSecond => raw.ts_frac.checked_mul(1000),
        TsResolution::NanoSecond => Some(raw.ts_frac),
    };
    match nanos {
        Some(nanos) if nanos < 1_000_000_000 => {
            if raw.incl_len > header.snaplen || raw.incl_len > raw.orig_len {
                Err(format!(
                    "record of {} bytes captured, {} on the wire, in a file of snap length {}",
                    raw.incl_len, raw.orig_len, header.snaplen
                ))
            } else {
                Ok(Record {
                    timestamp: Duration::new(u64::from(raw.ts_sec), nanos),
                    orig_len: raw.orig_len,
                    data: raw.data,
                })
            }
        }
        _ => Err(format!("record stamped {}.{} is no valid time", raw.ts_sec, raw.ts_frac)),
    }
}

/// A pcap file's records (`tcpdump -r`), each checked (see [`checked`]), read into a buffer no larger
/// than asked: pcap-file's `PcapReader` makes and zeroes one of 8 MB for every file, however short (0.3-0.5 ms
/// of CPU for each capture's stop when decoding after it, in the teardown).
pub struct PcapRecords<R> {
    reader: R,
    parser: PcapParser,
    /// The bytes read and not yet parsed are `buffer[start..end]`.
    buffer: Vec<u8>,
    start: usize,
    end: usize,
}

impl<R: io::Read> PcapRecords<R> {
    /// Reads the file header; `capacity` is the most read at once, unless a record needs more.
    pub fn new(mut reader: R, capacity: usize) -> std::result::Result<PcapRecords<R>, String> {
        let mut buffer = vec![0; capacity.max(RECORD_HEADER_LEN + 24)];
        let mut end = 0;
        let (parser, start) = loop {
            match PcapParser::new(&buffer[..end]) {
                Ok((rest, parser)) => break (parser, end - rest.len()),
                Err(PcapError::IncompleteBuffer) => {}
                Err(e) => return Err(e.to_string()),
            }
            match reader.read(&mut buffer[end..]) {
                Ok(0) => return Err("the file ends inside the pcap header".into()),
                Ok(read) => end += read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        };
        Ok(PcapRecords { reader, parser, buffer, start, end })
    }

    /// The next record, or what is wrong with it; `None` at the end of the file.
    pub fn read_next(&mut self) -> Option<std::result::Result<Record<'_>, String>> {
        // Read until a whole record is buffered, then parse it again to hand it out.
        loop {
            match self.parser.next_raw_packet(&self.buffer[self.start..self.end]) {
                Ok(_) => break,
                Err(PcapError::IncompleteBuffer) => match self.fill() {
                    Ok(0) if self.start == self.end => return None,
                    Ok(0) => return Some(Err("the file ends inside a record".into())),
                    Ok(_) => {}
                    Err(e) => return Some(Err(e.to_string())),
                },
                Err(e) => return Some(Err(e.to_string())),
            }
        }
        let header = self.parser.header();
        let parsed = self.parser.next_raw_packet(&self.buffer[self.start..self.end]);
        let (rest, raw) = match parsed {
            Ok(parsed) => parsed,
            Err(e) => return Some(Err(e.to_string())),
        };
        self.start = self.end - rest.len();
        Some(checked(&header, raw))
    }

    /// Moves what is left to the front and reads more after it (into a larger buffer if a record fills it);
    /// how many bytes were read, 0 at the end of the file.
    fn fill(&mut self) -> io::Result<usize> {
        self.buffer.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        if self.end == self.buffer.len() {
            self.buffer.resize(self.buffer.len() * 2, 0);
        }
        loop {
            match self.reader.read(&mut self.buffer[self.end..]) {
                Ok(read) => {
                    self.end += read;
                    return Ok(read);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// A run of consecutive pcap records (the file's bytes after its header), and for each record whether the
/// host sent the frame, which a pcap record has no room for.
#[derive(Debug, Default)]
pub(super) struct Chunk {
    pub(super) records: Vec<u8>,
    pub(super) outgoing: Vec<bool>,
}

impl Chunk {
    pub(super) fn with_capacity() -> Chunk {
        Chunk { records: Vec::with_capacity(CHUNK_CAPACITY), outgoing: Vec::with_capacity(CHUNK_SIZE / 64) }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.outgoing.is_empty()
    }

    fn clear(&mut self) {
        self.records.clear();
        self.outgoing.clear();
    }

    /// Appends `frame` as one record, cut to [`SNAPLEN`] with its full length on record: byte for byte what
    /// pcap-file's `PcapWriter::write_packet` writes.
    pub(super) fn push(&mut self, frame: &Frame<'_>) -> io::Result<()> {
        let seconds = u32::try_from(frame.wall_time.as_secs()).map_err(|_| {
            io::Error::other(format!("frame stamped {:?} after the epoch: past pcap's u32", frame.wall_time))
        })?;
        let captured = &frame.data[..frame.data.len().min(SNAPLEN as usize)];
        // A frame is at most SNAPLEN here, so its length fits a u32.
        let captured_len = captured.len() as u32;
        for word in [seconds, frame.wall_time.subsec_nanos(), captured_len, frame.wire_len.max(captured_len)] {
            self.records.extend_from_slice(&word.to_ne_bytes());
        }
        self.records.extend_from_slice(captured);
        self.outgoing.push(frame.outgoing);
        Ok(())
    }

    /// Each record's wall-clock stamp, captured bytes and direction, in order.
    pub(super) fn frames(&self) -> impl Iterator<Item = Frame<'_>> {
        let mut offset = 0;
        self.outgoing.iter().map_while(move |&outgoing| {
            let header = self.records.get(offset..offset + RECORD_HEADER_LEN)?;
            let word = |index: usize| ring::ne32(header, index * 4);
            let (seconds, nanos, captured, wire_len) = (word(0)?, word(1)?, word(2)? as usize, word(3)?);
            let start = offset + RECORD_HEADER_LEN;
            let data = self.records.get(start..start + captured)?;
            offset = start + captured;
            Some(Frame { wall_time: Duration::new(u64::from(seconds), nanos), wire_len, outgoing, data })
        })
    }
}

/// What travels from the capture thread (through the decoding thread, when decoding live) to the pcap writer
/// thread.
pub(super) enum ToDisk {
    Chunk(Chunk),
    /// The capture is over with this result: close the file, then report.
    Finished(Result<CaptureStats>),
}

/// The chunk the capture thread is filling, and where full ones go.
pub(super) struct ChunkQueue {
    pub(super) current: Chunk,
    /// The decoding thread, or with decoding after the stop the pcap writer.
    pub(super) to_decoder: handoff::SyncSender<ToDisk>,
    pub(super) spare: handoff::Receiver<Chunk>,
}

impl ChunkQueue {
    /// Appends `frame`; hands the chunk on once it holds [`CHUNK_SIZE`] bytes, waiting for room if the
    /// decoding thread is [`MAX_QUEUED_CHUNKS`] behind.
    pub(super) fn push(&mut self, frame: &Frame<'_>) -> io::Result<()> {
        self.current.push(frame)?;
        if self.current.records.len() >= CHUNK_SIZE {
            let full = std::mem::take(&mut self.current);
            self.send(full)?;
            self.current = self.fresh_chunk();
        }
        Ok(())
    }

    /// Hands on what the chunk holds, if anything and if the decoding thread has room: called whenever the
    /// capture thread has taken every frame the kernel had ready, so that a lone packet reaches the timeline
    /// at once. Without room the frames stay and more join them: bounding the queue by chunks, a chunk per
    /// lone packet made the capture thread wait on a decoder or writer held up for a few ms (a writeback
    /// stall), while the kernel's buffer overflowed at 1,300 frames a second.
    pub(super) fn hand_over(&mut self) -> io::Result<()> {
        if self.current.is_empty() {
            return Ok(());
        }
        match self.to_decoder.try_send(ToDisk::Chunk(std::mem::take(&mut self.current))) {
            Ok(()) => {
                self.current = self.fresh_chunk();
                Ok(())
            }
            Err(handoff::TrySendError::Full(ToDisk::Chunk(kept))) => {
                self.current = kept;
                Ok(())
            }
            Err(_) => Err(decoder_gone()),
        }
    }

    pub(super) fn finish(mut self, result: Result<CaptureStats>) {
        // Either fails only if the decoding thread is gone, and then `stop` reports that.
        if !self.current.is_empty() {
            let last = std::mem::take(&mut self.current);
            let _ = self.send(last);
        }
        let _ = self.to_decoder.send(ToDisk::Finished(result));
    }

    /// Blocks only while [`MAX_QUEUED_CHUNKS`] wait; the decoding thread lives until `Finished`.
    fn send(&self, chunk: Chunk) -> io::Result<()> {
        self.to_decoder.send(ToDisk::Chunk(chunk)).map_err(|_| decoder_gone())
    }

    fn fresh_chunk(&self) -> Chunk {
        self.spare.try_recv().unwrap_or_else(|_| Chunk::with_capacity())
    }
}

fn decoder_gone() -> io::Error {
    io::Error::other("pcap decoding or writer thread is gone")
}

/// The decoding thread: one [`EventKind::Packet`] per IPv4 record, at the kernel's stamp of it, then the chunk
/// goes on to the pcap writer.
pub(super) struct ChunkDecoder {
    pub(super) chunks: handoff::Receiver<ToDisk>,
    pub(super) to_disk: handoff::SyncSender<ToDisk>,
    pub(super) decoder: Decoder,
    pub(super) clock: Clock,
    pub(super) sink: EventSink,
    pub(super) host: HostId,
    /// The events of the chunk being decoded, its allocation kept from chunk to chunk.
    pub(super) batch: Vec<Event>,
    /// Counts each chunk decoded, as the capture thread counts frames.
    pub(super) progress: Arc<AtomicU64>,
}

impl ChunkDecoder {
    /// Real-time as the capture thread is, from its start: a packet trigger waits on these events.
    pub(super) fn run(mut self) {
        // Ends with `Finished`, or when the capture thread is gone without it (it panicked): dropping `to_disk`
        // then ends the writer, which drops `done` and so tells `stop`.
        for message in self.chunks.iter() {
            let finished = matches!(message, ToDisk::Finished(_));
            if finished {
                // Its real-time CPU is counted for the run's report before the report can be made.
                priority::count_realtime_cpu();
            }
            if let ToDisk::Chunk(chunk) = &message {
                // A chunk's events go to the run's event hub in one hand-over: one lock and at most one
                // wake-up of the hub per chunk rather than per frame (a bulk transfer's chunk holds thousands).
                let events = chunk.frames().filter_map(|frame| {
                    let event = self.decoder.decode(frame.data, frame.outgoing)?;
                    Some(packet_event(&self.clock, self.host, frame.wall_time, event))
                });
                self.batch.extend(events);
                self.sink.emit_all(self.batch.drain(..));
                self.progress.fetch_add(1, Ordering::Relaxed);
            }
            if self.to_disk.send(message).is_err() || finished {
                return;
            }
        }
    }
}

/// The pcap writer thread: writes the file header, then the chunks in order, every chunk waiting at that
/// moment in one `writev`; then closes the file and reports the capture's result.
pub(super) struct DiskWriter {
    pub(super) command: String,
    pub(super) file: File,
    pub(super) header: Vec<u8>,
    pub(super) chunks: handoff::Receiver<ToDisk>,
    pub(super) spare: handoff::SyncSender<Chunk>,
    pub(super) done: handoff::SyncSender<Result<CaptureStats>>,
    /// Counts each chunk written, as the capture thread counts frames.
    pub(super) progress: Arc<AtomicU64>,
    /// With decoding after the stop: what decodes the file once it is complete.
    pub(super) after_stop: Option<AfterStop>,
}

impl DiskWriter {
    /// Real-time as the capture thread is, from its start: an ordinary writer falls behind a bulk transfer's own threads (it
    /// did on this machine: 170,000 of 1.5 M frames lost when its queue filled), while a real-time one
    /// slows the transfer down instead. Writing mostly copies into the page cache; waiting on writeback sleeps.
    pub(super) fn run(self) {
        let DiskWriter { command, mut file, header, chunks, spare, done, progress, mut after_stop } = self;
        let mut failure = file.write_all(&header).err().map(|e| Error::sys(format!("write pcap ({command})"), e));
        let mut waiting: Vec<Chunk> = Vec::new();
        loop {
            let Ok(first) = chunks.recv() else { return };
            let mut finished = None;
            let mut next = Some(first);
            while let Some(message) = next.take() {
                match message {
                    ToDisk::Chunk(chunk) => waiting.push(chunk),
                    ToDisk::Finished(result) => {
                        finished = Some(result);
                        break;
                    }
                }
                if waiting.len() < MAX_CHUNKS_PER_WRITE {
                    next = chunks.try_recv().ok();
                }
            }
            if let Some(after_stop) = &mut after_stop {
                waiting.iter().for_each(|chunk| after_stop.note(chunk));
            }
            if failure.is_none() {
                if let Err(e) = write_all_chunks(&mut file, &waiting) {
                    failure = Some(Error::sys(format!("write pcap ({command})"), e));
                }
            }
            progress.fetch_add(waiting.len() as u64, Ordering::Relaxed);
            for mut chunk in waiting.drain(..) {
                chunk.clear();
                // Full means enough spares are kept already.
                let _ = spare.try_send(chunk);
            }
            if let Some(result) = finished {
                priority::count_realtime_cpu();
                drop(file);
                if let (Some(after_stop), None) = (after_stop, &failure) {
                    // Decoding is no longer in a race with the kernel's buffer: it runs at the ordinary
                    // priority, beside whatever else the machine runs.
                    let _ = priority::lower_current_thread();
                    failure =
                        after_stop.decode(&progress).err().map(|e| Error::sys(format!("decode pcap ({command})"), e));
                }
                // The receiver is gone only if the Capture was dropped without stop(): nobody is waiting.
                let _ = done.send(failure.map_or(result, Err));
                return;
            }
        }
    }
}

/// Decoding after the stop ([`Decoding::AfterStop`]). During the run the writer notes, as each chunk passes
/// on its way to disk, each record's direction (a pcap record has no room for it), and announces a few packets
/// to the run at once: every one that changes a TCP state (SYN, FIN, RST) and the first of each chunk, so that
/// what the run does on packets (the socket observer samples on them) still happens when they pass. Decoding
/// every SYN as it passes, the announcing decoder also tells the run's other decoders (the drop tracer's) each
/// connection's initial sequence numbers, as the decoding thread does. Once the file is complete it reads it
/// back and emits the other events. Each event is the one the decoding thread would have emitted, with the
/// same stamp: the announcing decoder sees every SYN of the capture, in order, and a decoder's numbering
/// depends on nothing else.
pub(super) struct AfterStop {
    pub(super) pcap: PathBuf,
    /// Decodes the packets announced during the run.
    pub(super) announcer: Decoder,
    /// Decodes the file after the stop.
    pub(super) decoder: Decoder,
    pub(super) clock: Clock,
    pub(super) sink: EventSink,
    pub(super) host: HostId,
    /// Each record of the file, in order: whether the host sent it, and whether its event was announced.
    pub(super) records: Vec<Noted>,
    /// The events of the packets being announced, their allocation kept from chunk to chunk.
    pub(super) batch: Vec<Event>,
}

/// What the writer notes of each record when decoding after the stop.
#[derive(Debug, Clone, Copy)]
pub(super) struct Noted {
    pub(super) outgoing: bool,
    pub(super) announced: bool,
}

/// Events handed to the run's event hub at once when decoding after the stop.
const EVENTS_PER_HAND_OVER: usize = 4096;
/// Bytes read from the pcap at once when decoding after the stop (fewer for a shorter file).
pub const READ_BLOCK: usize = 1 << 20;

impl AfterStop {
    /// A chunk on its way to disk: its records' directions and SYNs, and the packets it announces.
    pub(super) fn note(&mut self, chunk: &Chunk) {
        let mut announced_one = false;
        for frame in chunk.frames() {
            let mut noted = Noted { outgoing: frame.outgoing, announced: false };
            if !announced_one || changes_tcp_state(frame.data) {
                if let Some(event) = self.announcer.decode(frame.data, frame.outgoing) {
                    self.batch.push(packet_event(&self.clock, self.host, frame.wall_time, event));
                    (noted.announced, announced_one) = (true, true);
                }
            }
            self.records.push(noted);
        }
        self.sink.emit_all(self.batch.drain(..));
    }

    /// Reads the complete pcap back (`tcpdump -r`) and emits one [`EventKind::Packet`] per IPv4 record, at
    /// the kernel's stamp of it, a batch at a time; counts each batch in `progress`.
    pub(super) fn decode(mut self, progress: &AtomicU64) -> io::Result<()> {
        let file = File::open(&self.pcap)?;
        let bytes = file.metadata()?.len();
        let mut reader = PcapRecords::new(file, READ_BLOCK.min(bytes as usize)).map_err(io::Error::other)?;
        let mut batch = Vec::with_capacity(EVENTS_PER_HAND_OVER);
        let mut noted = self.records.iter();
        while let Some(record) = reader.read_next() {
            let record = record.map_err(io::Error::other)?;
            let Noted { outgoing, announced } =
                *noted.next().ok_or_else(|| io::Error::other("the pcap holds more records than the capture wrote"))?;
            // An announced packet is decoded again all the same: the decoder learns from every SYN in order.
            let event = self.decoder.decode(&record.data, outgoing);
            if let (Some(event), false) = (event, announced) {
                batch.push(packet_event(&self.clock, self.host, record.timestamp, event));
            }
            if batch.len() == EVENTS_PER_HAND_OVER {
                self.sink.emit_all(batch.drain(..));
                progress.fetch_add(1, Ordering::Relaxed);
            }
        }
        if noted.next().is_some() {
            return Err(io::Error::other("the pcap holds fewer records than the capture wrote"));
        }
        self.sink.emit_all(batch);
        Ok(())
    }
}

/// The timeline event of a packet `host`'s capture decoded, at the kernel's stamp of it (`wall_time` since the
/// epoch): live, announced during the run or decoded after the stop alike.
fn packet_event(clock: &Clock, host: HostId, wall_time: Duration, packet: PacketEvent) -> Event {
    let t = clock.since_t0(SystemTime::UNIX_EPOCH + wall_time);
    Event { t, host, kind: EventKind::Packet(packet) }
}

/// Most chunks gathered into one `writev` (the kernel takes at most IOV_MAX = 1024 slices).
const MAX_CHUNKS_PER_WRITE: usize = 64;

/// `writev` of every chunk's records, again from where a short write stopped.
fn write_all_chunks(file: &mut File, chunks: &[Chunk]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = chunks.iter().map(|chunk| IoSlice::new(&chunk.records)).collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0")),
            Ok(written) => IoSlice::advance_slices(&mut slices, written),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use pcap_file::pcap::PcapPacket;

    use super::*;

    fn frame(seconds: u64, nanos: u32, wire_len: u32, outgoing: bool, data: &[u8]) -> Frame<'_> {
        Frame { wall_time: Duration::new(seconds, nanos), wire_len, outgoing, data }
    }

    /// The records a chunk holds are byte for byte what pcap-file writes for the same frames, header first:
    /// a whole frame, one cut by nothing but longer on the wire, an empty one, one cut at the snap length.
    #[test]
    fn chunk_records_are_what_pcap_file_writes() {
        let long = vec![0xabu8; SNAPLEN as usize + 100];
        let frames = [
            frame(1_764_900_000, 123_456_789, 60, true, &[1u8; 60]),
            frame(1_764_900_001, 999_999_999, 1514, false, &[2u8; 100]),
            frame(1_764_900_002, 0, 0, false, &[]),
            frame(1_764_900_003, 5, long.len() as u32, true, &long),
        ];
        let mut chunk = Chunk::with_capacity();
        for f in &frames {
            chunk.push(f).unwrap();
        }
        let mut ours = file_header("test", SNAPLEN).unwrap();
        ours.extend_from_slice(&chunk.records);

        let mut theirs = PcapWriter::with_header(Vec::new(), pcap_header(SNAPLEN)).unwrap();
        for f in &frames {
            let captured = &f.data[..f.data.len().min(SNAPLEN as usize)];
            theirs
                .write_packet(&PcapPacket::new(f.wall_time, f.wire_len.max(captured.len() as u32), captured))
                .unwrap();
        }
        assert_eq!(ours, theirs.into_writer());

        let back: Vec<_> = chunk.frames().map(|f| (f.wall_time, f.wire_len, f.outgoing, f.data.to_vec())).collect();
        let expected: Vec<_> = frames
            .iter()
            .map(|f| (f.wall_time, f.wire_len, f.outgoing, f.data[..f.data.len().min(SNAPLEN as usize)].to_vec()))
            .collect();
        assert_eq!(back, expected);
    }

    /// Every record as `PcapReader` and [`next_record`] read it, whatever the buffer: one smaller than a record
    /// (it grows), one a few records long (refilled between them), one larger than the file; and a file cut
    /// inside a record or a header is an error, not a shorter list.
    #[test]
    fn pcap_records_reads_what_pcap_reader_reads_with_any_buffer() {
        let long = vec![0xabu8; 3000];
        let mut chunk = Chunk::with_capacity();
        for i in 0..50u32 {
            let data = &long[..(i as usize * 61) % long.len()];
            chunk.push(&frame(1_764_900_000 + u64::from(i), i * 7, 3000, i % 2 == 0, data)).unwrap();
        }
        let mut file = file_header("test", SNAPLEN).unwrap();
        file.extend_from_slice(&chunk.records);
        let mut reader = PcapReader::new(file.as_slice()).unwrap();
        let mut expected = Vec::new();
        while let Some(record) = next_record(&mut reader) {
            let record = record.unwrap();
            expected.push((record.timestamp, record.orig_len, record.data.to_vec()));
        }
        assert_eq!(expected.len(), 50);
        for capacity in [1, 100, 5000, file.len() * 2] {
            let mut records = PcapRecords::new(file.as_slice(), capacity).unwrap();
            let mut read = Vec::new();
            while let Some(record) = records.read_next() {
                let record = record.unwrap();
                read.push((record.timestamp, record.orig_len, record.data.to_vec()));
            }
            assert_eq!(read, expected, "capacity {capacity}");
        }
        let cut = &file[..file.len() - 1];
        let mut records = PcapRecords::new(cut, 100).unwrap();
        for _ in 0..49 {
            assert!(records.read_next().is_some_and(|record| record.is_ok()));
        }
        assert_eq!(records.read_next().map(|r| r.map(|_| ())), Some(Err("the file ends inside a record".into())));
        assert_eq!(PcapRecords::new(&file[..20], 100).err(), Some("the file ends inside the pcap header".into()));
    }

    #[test]
    fn a_stamp_past_u32_seconds_is_refused() {
        let mut chunk = Chunk::with_capacity();
        let err = chunk.push(&frame(u64::from(u32::MAX) + 1, 0, 1, false, &[0])).unwrap_err();
        assert!(err.to_string().contains("past pcap's u32"), "{err}");
        assert!(chunk.is_empty());
    }

    /// A decoding thread that takes nothing (stalled, or starved of CPU) never holds up the capture thread on a
    /// lone packet: once it is MAX_QUEUED_CHUNKS behind, the packets handed over join the chunk being filled
    /// instead of waiting for room, and nothing is lost.
    #[test]
    fn a_stalled_decoder_never_blocks_the_capture_thread() {
        let (to_decoder, stalled) = handoff::sync_channel(MAX_QUEUED_CHUNKS);
        let (_spare_tx, spare) = handoff::sync_channel(SPARE_CHUNKS);
        let (done_tx, done) = handoff::channel();
        let lone_packets = MAX_QUEUED_CHUNKS * 4;
        std::thread::spawn(move || {
            let mut queue = ChunkQueue { current: Chunk::with_capacity(), to_decoder, spare };
            let data = [0x45u8; 60];
            for i in 0..lone_packets {
                queue.push(&frame(1_764_900_000, i as u32, 60, false, &data)).unwrap();
                queue.hand_over().unwrap();
            }
            let _ = done_tx.send(queue.current.outgoing.len());
        });
        let waiting = done.recv_timeout(Duration::from_secs(10)).expect("the capture thread blocked on the decoder");
        let handed_on: Vec<usize> = stalled
            .try_iter()
            .map(|message| match message {
                ToDisk::Chunk(chunk) => chunk.outgoing.len(),
                ToDisk::Finished(_) => panic!("no capture finished"),
            })
            .collect();
        assert_eq!(handed_on, vec![1; MAX_QUEUED_CHUNKS], "one chunk per lone packet while there was room");
        assert_eq!(waiting, lone_packets - MAX_QUEUED_CHUNKS, "the rest wait in the chunk being filled");
    }

    /// Chunks gathered into one `writev` land in order and whole.
    #[test]
    fn chunks_are_written_in_order() {
        let path = std::env::temp_dir().join(format!("netfault-chunks-{}.bin", std::process::id()));
        let mut file = File::create(&path).unwrap();
        let chunks: Vec<Chunk> =
            (0..5u8).map(|i| Chunk { records: vec![i; 1000 + usize::from(i) * 4097], outgoing: vec![false] }).collect();
        write_all_chunks(&mut file, &chunks).unwrap();
        drop(file);
        let written = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let expected: Vec<u8> = chunks.iter().flat_map(|c| c.records.iter().copied()).collect();
        assert_eq!(written, expected);
    }
}
