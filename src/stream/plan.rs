//! Chunk planning for downloads, pure: sizes, offsets and indexes only.
//!
//! # Contract
//! * A file of `size` bytes is cut into `ceil(size / chunk_size)` chunks; chunk
//!   `i` covers `[i * chunk_size, min((i + 1) * chunk_size, size))`.
//! * A resume offset is rounded down to a chunk boundary, so a client that
//!   reconnects re-receives at most one partial chunk and chunk indexes stay
//!   absolute (the same index always means the same bytes).
//! * An offset past the end is an error; an offset equal to the size plans
//!   nothing to send.

use std::ops::Range;

/// Why a plan cannot be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// `chunk_size` is zero.
    #[error("chunk size must be greater than zero")]
    ZeroChunk,
    /// The resume offset is beyond the end of the file.
    #[error("offset {offset} is past the end of the file ({size} bytes)")]
    OffsetPastEnd {
        /// The requested offset.
        offset: u64,
        /// The file size.
        size: u64,
    },
}

/// The chunks of one download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// File size in bytes.
    pub size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u64,
    /// Total chunks in the file.
    pub chunks: u64,
    /// First chunk to send (after rounding the offset down).
    pub first: u64,
}

impl Plan {
    /// Plan a download of `size` bytes in `chunk_size` chunks from `offset`.
    pub fn new(size: u64, chunk_size: u64, offset: u64) -> Result<Plan, PlanError> {
        if chunk_size == 0 {
            return Err(PlanError::ZeroChunk);
        }
        if offset > size {
            return Err(PlanError::OffsetPastEnd { offset, size });
        }
        let chunks = size.div_ceil(chunk_size);
        let first = if offset == size {
            chunks
        } else {
            offset / chunk_size
        };
        Ok(Plan {
            size,
            chunk_size,
            chunks,
            first,
        })
    }

    /// The byte range of chunk `index`, if it exists.
    pub fn range(&self, index: u64) -> Option<Range<u64>> {
        if index >= self.chunks {
            return None;
        }
        let start = index * self.chunk_size;
        Some(start..(start + self.chunk_size).min(self.size))
    }

    /// The chunks still to send, in order.
    pub fn remaining(&self) -> impl Iterator<Item = (u64, Range<u64>)> + '_ {
        (self.first..self.chunks).filter_map(move |i| self.range(i).map(|r| (i, r)))
    }

    /// Bytes still to send.
    pub fn remaining_bytes(&self) -> u64 {
        self.size - (self.first * self.chunk_size).min(self.size)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_seed_example() {
        // 10 250 bytes in 10 KiB chunks: 10 240 + 10, as Phoenix's File.stream! did.
        let p = Plan::new(10_250, 10_240, 0).unwrap();
        assert_eq!(p.chunks, 2);
        assert_eq!(
            p.remaining().collect::<Vec<_>>(),
            vec![(0, 0..10_240), (1, 10_240..10_250)]
        );
    }

    #[test]
    fn resume_rounds_down_and_keeps_absolute_indexes() {
        let p = Plan::new(100, 30, 65).unwrap();
        assert_eq!(p.first, 2);
        assert_eq!(
            p.remaining().collect::<Vec<_>>(),
            vec![(2, 60..90), (3, 90..100)]
        );
        assert_eq!(p.remaining_bytes(), 40);
    }

    #[test]
    fn edges() {
        assert_eq!(Plan::new(0, 10, 0).unwrap().remaining().count(), 0);
        assert_eq!(Plan::new(100, 10, 100).unwrap().remaining().count(), 0);
        assert_eq!(Plan::new(100, 0, 0), Err(PlanError::ZeroChunk));
        assert_eq!(
            Plan::new(100, 10, 101),
            Err(PlanError::OffsetPastEnd {
                offset: 101,
                size: 100
            })
        );
    }

    proptest! {
        #[test]
        fn chunks_tile_the_rest_of_the_file(size in 0u64..1_000_000, chunk in 1u64..70_000, off in 0u64..1_000_000) {
            let off = off.min(size);
            let p = Plan::new(size, chunk, off).unwrap();
            // Resuming never skips a byte at or after the offset...
            let mut next = (p.first * chunk).min(size);
            prop_assert!(next <= off);
            // ...and re-sends less than one chunk before it.
            prop_assert!(off - next < chunk);
            for (i, r) in p.remaining() {
                prop_assert_eq!(r.start, next);
                prop_assert_eq!(r.start, i * chunk);
                prop_assert!(r.end > r.start && r.end - r.start <= chunk);
                next = r.end;
            }
            prop_assert_eq!(next, size, "the chunks reach the end of the file");
            prop_assert_eq!(p.remaining().map(|(_, r)| r.end - r.start).sum::<u64>(), p.remaining_bytes());
        }
    }
}
