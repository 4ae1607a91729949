//! The pcap file of a capture: the capture thread gathers records into chunks, a writer thread of its own
//! puts them on disk, so a write stalled on writeback holds up neither the kernel's buffer nor the timeline.

use super::*;

/// What the capture thread sends to the pcap writer thread.
pub(super) enum ToDisk {
    Chunk(Vec<u8>),
    /// The capture is over with this result: close the file, then report.
    Finished(Result<CaptureStats>),
}

/// The pcap's bytes on the capture thread, gathered into chunks for the writer thread.
pub(super) struct ChunkQueue {
    pub(super) current: Vec<u8>,
    pub(super) to_disk: mpsc::SyncSender<ToDisk>,
    pub(super) spare: mpsc::Receiver<Vec<u8>>,
}

impl ChunkQueue {
    pub(super) fn hand_over(&mut self) -> io::Result<()> {
        let fresh = self.spare.try_recv().unwrap_or_else(|_| Vec::with_capacity(CHUNK_CAPACITY));
        let full = std::mem::replace(&mut self.current, fresh);
        // Blocks only while MAX_QUEUED_CHUNKS wait for the disk; the writer thread lives until `Finished`.
        self.to_disk.send(ToDisk::Chunk(full)).map_err(|_| io::Error::other("pcap writer thread is gone"))
    }

    pub(super) fn finish(mut self, result: Result<CaptureStats>) {
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
pub(super) struct DiskWriter {
    pub(super) command: String,
    pub(super) file: File,
    pub(super) chunks: mpsc::Receiver<ToDisk>,
    pub(super) spare: mpsc::SyncSender<Vec<u8>>,
    pub(super) done: mpsc::SyncSender<Result<CaptureStats>>,
    /// Counts each chunk written, as [`Recorder`] counts frames.
    pub(super) progress: Arc<AtomicU64>,
}

impl DiskWriter {
    pub(super) fn run(self) {
        let DiskWriter { command, mut file, chunks, spare, done, progress } = self;
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
                    progress.fetch_add(1, Ordering::Relaxed);
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
