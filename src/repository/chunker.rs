//! Cutting file contents into chunks. Two cutters, chosen per file by size (see
//! docs/repository-format.md for the measurements behind the numbers):
//!
//! - **Fixed, aligned blocks** for large files and raw images. Databases and block images change
//!   in place, in page-sized writes: with aligned 16 KiB blocks one 4 KiB write costs one new
//!   16 KiB chunk, where content-defined chunks of restic's 1 MiB average cost a megabyte or more.
//!   All-zero blocks become holes, which keeps sparse files sparse.
//! - **Content-defined chunks** (FastCDC 2020, 4/16/64 KiB) for smaller files, where insertions
//!   shift content and a fixed grid would lose deduplication.

use std::io::Read;

use bytes::Bytes;

use super::format::Chunking;

/// Whether a buffer is all zeros (a hole), checked a word at a time.
pub fn is_zero(data: &[u8]) -> bool {
    let (head, words, tail) = unsafe { data.align_to::<u64>() };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// Reads a small file whole and cuts it by content; returns (offset, bytes) pieces.
pub fn cut_by_content(data: Bytes, c: &Chunking) -> Vec<(u64, Bytes)> {
    if data.is_empty() {
        return vec![];
    }
    fastcdc::v2020::FastCDC::new(
        &data,
        c.cdc_min as usize,
        c.cdc_avg as usize,
        c.cdc_max as usize,
    )
    .map(|ch| {
        (
            ch.offset as u64,
            data.slice(ch.offset..ch.offset + ch.length),
        )
    })
    .collect()
}

/// Reads up to `buf_len` bytes (a multiple of the block size) and cuts them into blocks.
pub fn read_blocks(
    reader: &mut impl Read,
    start: u64,
    buf_len: usize,
    block: usize,
) -> std::io::Result<Vec<(u64, Bytes)>> {
    let mut buf = vec![0u8; buf_len];
    let mut filled = 0;
    while filled < buf_len {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    let data = Bytes::from(buf);
    Ok((0..filled)
        .step_by(block)
        .map(|off| {
            (
                start + off as u64,
                data.slice(off..(off + block).min(filled)),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 16385]));
        let mut v = vec![0u8; 16384];
        v[16383] = 1;
        assert!(!is_zero(&v));
        assert!(is_zero(&[]));
    }

    #[test]
    fn content_cuts_cover_the_data_and_resync_after_an_insert() {
        let c = Chunking::default();
        let data: Vec<u8> = (0..400_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let pieces = cut_by_content(Bytes::from(data.clone()), &c);
        assert_eq!(
            pieces.iter().map(|(_, b)| b.len()).sum::<usize>(),
            data.len()
        );
        let mut shifted = b"inserted".to_vec();
        shifted.extend_from_slice(&data);
        let again = cut_by_content(Bytes::from(shifted), &c);
        let a: std::collections::HashSet<_> = pieces.iter().map(|(_, b)| b.clone()).collect();
        let shared = again.iter().filter(|(_, b)| a.contains(b)).count();
        assert!(
            shared + 2 >= pieces.len(),
            "only the first chunks change after an insert: {shared}/{}",
            pieces.len()
        );
    }

    #[test]
    fn blocks_are_aligned() {
        let data = vec![7u8; 40_000];
        let pieces = read_blocks(&mut &data[..], 1 << 20, 40_000, 16384).unwrap();
        let offsets: Vec<u64> = pieces.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, [1 << 20, (1 << 20) + 16384, (1 << 20) + 32768]);
        assert_eq!(pieces[2].1.len(), 40_000 - 32768);
    }
}
