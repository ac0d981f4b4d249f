//! Where a pack writer's chunks go: one file at a time, and in a large file of a durable
//! restore (`sync`, as the agent's restores are), runs of contiguous chunks gathered in an
//! aligned buffer and written past the page cache (`O_DIRECT`).
//!
//! A cold restore of large files spent more system time copying restored bytes into the page
//! cache than decompressing them (`perf` of a 4 GiB restore: a fifth of all samples in
//! `copy_folio_from_iter_atomic`, and the page allocations and locks behind it). A restore
//! that waits for the device in the end gains nothing from that copy (measured on a 4 GiB
//! restore with `--sync`: 4–5 CPU-seconds less, and a second sooner). One that does not wait
//! (the CLI without `--sync`) keeps write-back, which lets it end before the disk has its data:
//! there the copy buys wall time, and direct writes would spend it on the device. Large files
//! are cut into aligned fixed-size blocks (`chunker`), so their chunks start on block
//! boundaries and a pack holds long runs of one file: each run is written as one direct write
//! of up to [`RUN`] bytes. The blocks a run shares with its neighbours (its first and last
//! partial blocks: a file's end, the edges of content-defined chunks) and small files go
//! through the page cache; a direct write covers only blocks whose every byte is its run's, so
//! no two writers ever meet in one block by different routes. A filesystem that
//! refuses direct I/O is written through the page cache from the first refusal on.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};

use super::writer::Restored;
use crate::storage::location::{
    AlignedBuf, DIRECT_ALIGN as ALIGN, DIRECT_BLOCK as RUN, DIRECT_MIN, refuses_direct,
};

/// Files at least this large are written past the page cache where they can be.
pub(super) const LARGE: u64 = DIRECT_MIN as u64;

/// What the writers share: the files, which of them are large enough, and whether the
/// filesystem takes direct writes.
pub(super) struct Files {
    pub(super) files: Vec<Restored>,
    /// By file: written past the page cache where it can be (set with the files' sizes).
    pub(super) large: Vec<bool>,
    /// Direct writes are wanted, and the filesystem has not refused one.
    pub(super) direct: AtomicBool,
}

impl Files {
    pub(super) fn new(files: Vec<Restored>, direct: bool) -> Self {
        Self {
            large: vec![false; files.len()],
            files,
            direct: AtomicBool::new(direct),
        }
    }
}

/// One writer's output, file by file; an error names the index of the file it concerns.
pub(super) struct Output<'a> {
    files: &'a Files,
    /// Kept from pack to pack; allocated at the first run.
    run: &'a mut Option<AlignedBuf>,
    current: Option<Current>,
}

struct Current {
    index: u32,
    file: File,
    /// Opened at the first direct write.
    direct: Option<File>,
    /// This file takes no direct writes.
    refused: bool,
    /// The run in the buffer: its offset in the file and length. It sits in the buffer at
    /// `start % ALIGN`, so that file blocks and buffer blocks line up.
    start: u64,
    len: usize,
}

type Failed = (u32, io::Error);

impl<'a> Output<'a> {
    pub(super) fn new(files: &'a Files, run: &'a mut Option<AlignedBuf>) -> Self {
        Self {
            files,
            run,
            current: None,
        }
    }

    /// Writes `data` at `offset` of file `index` (now, or with the run it continues).
    pub(super) fn write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), Failed> {
        if self.current.as_ref().is_none_or(|c| c.index != index) {
            self.finish()?;
            let file = self.files.files[index as usize]
                .open()
                .map_err(|e| (index, e))?;
            self.current = Some(Current {
                index,
                file,
                direct: None,
                refused: false,
                start: 0,
                len: 0,
            });
        }
        let c = self.current.as_mut().expect("opened above");
        if c.len > 0 && c.start + c.len as u64 == offset && c.len + data.len() <= RUN {
            let at = skew(c.start) + c.len;
            let buf = self.run.as_mut().expect("a run is buffered").as_mut_slice();
            buf[at..at + data.len()].copy_from_slice(data);
            c.len += data.len();
            return Ok(());
        }
        flush(self.files, self.run, c)?;
        let direct = self.files.large[index as usize]
            && !c.refused
            && self.files.direct.load(Ordering::Relaxed)
            && data.len() <= RUN;
        if !direct {
            return c.file.write_all_at(data, offset).map_err(|e| (index, e));
        }
        let at = skew(offset);
        let buf = self.run.get_or_insert_with(|| AlignedBuf::new(RUN + ALIGN));
        buf.as_mut_slice()[at..at + data.len()].copy_from_slice(data);
        c.start = offset;
        c.len = data.len();
        Ok(())
    }

    /// Writes what is buffered and closes the file.
    pub(super) fn finish(&mut self) -> Result<(), Failed> {
        match self.current.take() {
            Some(mut c) => flush(self.files, self.run, &mut c),
            None => Ok(()),
        }
    }
}

/// Where a run starting at file offset `start` sits in the buffer.
fn skew(start: u64) -> usize {
    (start % ALIGN as u64) as usize
}

/// Writes the buffered run: the whole blocks it covers directly, the partial blocks at either
/// end through the page cache.
fn flush(files: &Files, run: &Option<AlignedBuf>, c: &mut Current) -> Result<(), Failed> {
    if c.len == 0 {
        return Ok(());
    }
    let len = std::mem::take(&mut c.len);
    let skew = skew(c.start);
    let buf = &run.as_ref().expect("a run is buffered").as_slice()[skew..skew + len];
    // Bytes before the first whole block, then the whole blocks.
    let head = ((ALIGN - skew) % ALIGN).min(len);
    let aligned = (len - head) / ALIGN * ALIGN;
    let refused = |c: &mut Current| {
        c.refused = true;
        files.direct.store(false, Ordering::Relaxed);
    };
    let mut direct = false;
    if aligned > 0 && c.direct.is_none() && !c.refused {
        match files.files[c.index as usize].open_direct() {
            Ok(Some(f)) => c.direct = Some(f),
            Ok(None) => c.refused = true,
            Err(e) if refuses_direct(&e) => refused(c),
            Err(e) => return Err((c.index, e)),
        }
    }
    if aligned > 0
        && let Some(d) = &c.direct
    {
        match d.write_all_at(&buf[head..head + aligned], c.start + head as u64) {
            Ok(()) => direct = true,
            // The device wants a coarser alignment: what was written is written again below.
            Err(e) if refuses_direct(&e) => refused(c),
            Err(e) => return Err((c.index, e)),
        }
    }
    let buffered = |from: usize, to: usize| {
        c.file
            .write_all_at(&buf[from..to], c.start + from as u64)
            .map_err(|e| (c.index, e))
    };
    if direct {
        buffered(0, head)?;
        buffered(head + aligned, len)
    } else {
        buffered(0, len)
    }
}
