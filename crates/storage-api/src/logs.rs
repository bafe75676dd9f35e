//! The log seam: where step output lives, apart from where runs live. A log is named by
//! the reference its run records (a step's `stdout`/`stderr`); what the reference means
//! is the implementation's business — a path for local files, a key for an object store.
//! Everything that reads or relays logs (the API, the live stream, `trellis logs`, the
//! coordinator receiving a shared-nothing worker's output) goes through [`LogStore`].

use std::io;
use std::path::PathBuf;

/// Step output, written with byte offsets and read by range.
pub trait LogStore: Send + Sync + std::fmt::Debug {
    /// Appends `data` at the end of `log` (created if absent); the log's new length.
    fn append(&self, log: &str, data: &[u8]) -> io::Result<u64>;
    /// Writes `data`, which starts at byte `offset` of the stream: bytes already held are
    /// skipped (a resend after a lost acknowledgement), a gap is refused with
    /// `InvalidInput`. The number of new bytes written.
    fn append_at(&self, log: &str, offset: u64, data: &[u8]) -> io::Result<u64>;
    /// The log's length; `None` when it does not exist (yet).
    fn len(&self, log: &str) -> io::Result<Option<u64>>;
    /// Up to `max` bytes from `offset` (fewer at the end; none past it).
    fn read(&self, log: &str, offset: u64, max: usize) -> io::Result<Vec<u8>>;
    /// Every log under `prefix` (a run attempt's log directory, or a deeper one), sorted.
    fn list(&self, prefix: &str) -> io::Result<Vec<String>>;
    /// Deletes every log under `prefix` (or the one log it names).
    fn delete(&self, prefix: &str) -> io::Result<()>;
    /// A local file a step's process can write the log to directly, for a store that keeps
    /// logs in local files (then a step streams its output with no copy).
    fn local_file(&self, log: &str) -> Option<PathBuf>;
}

/// Where the last `lines` lines of a log of `size` bytes start, reading backwards in
/// blocks.
pub fn tail_start(logs: &dyn LogStore, log: &str, size: u64, lines: usize) -> io::Result<u64> {
    const BLOCK: u64 = 64 * 1024;
    if lines == 0 {
        return Ok(size);
    }
    let mut end = size;
    // A final newline ends the last line rather than starting an empty one.
    let mut seen = 0usize;
    let mut skip_last = true;
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let buf = logs.read(log, start, (end - start) as usize)?;
        for (i, byte) in buf.iter().enumerate().rev() {
            let at = start + i as u64;
            if *byte != b'\n' {
                skip_last = false;
                continue;
            }
            if skip_last && at + 1 == size {
                skip_last = false;
                continue;
            }
            seen += 1;
            if seen == lines {
                return Ok(at + 1);
            }
        }
        end = start;
    }
    Ok(0)
}

/// The length of `buf` without an incomplete UTF-8 sequence at its end, so that chunks
/// read one after another join into whole characters.
pub fn complete_utf8_len(buf: &[u8]) -> usize {
    for back in 1..=buf.len().min(4) {
        let byte = buf[buf.len() - back];
        if byte & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back for the lead byte
        }
        let need = match byte {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        return if need > back {
            buf.len() - back
        } else {
            buf.len()
        };
    }
    buf.len()
}
