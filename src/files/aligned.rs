//! A byte buffer whose start is aligned to [`ALIGN`] (4096) bytes, for
//! `O_DIRECT` writes (the buffer address, the length and the file offset of
//! a direct write must all be multiples of the device's logical block size;
//! 4096 covers the usual 512 and 4096).
//!
//! # Contract
//! * The memory is an anonymous private mapping ([`memmap2::MmapMut::map_anon`],
//!   a safe API: nothing else can alias an anonymous mapping), so no
//!   `unsafe` is needed here. [`AlignedBuf::new`] checks that the mapping
//!   starts on an [`ALIGN`] boundary (Linux maps on page boundaries, and
//!   every Linux page size is a multiple of 4096) and refuses otherwise.
//! * The capacity is fixed at construction and rounded up to a multiple of
//!   [`ALIGN`]; pages are only backed by memory once they are first
//!   written. The mapping is unmapped on drop.
//! * [`AlignedBuf::as_slice`] / [`AlignedBuf::as_mut_slice`] cover the
//!   filled bytes `[0, len)`, so `as_slice().as_ptr()` is always aligned.

use std::io;

use memmap2::MmapMut;

/// Alignment of the buffer's start, in bytes.
pub const ALIGN: usize = 4096;

/// A fixed-capacity byte buffer starting on an [`ALIGN`] boundary.
pub struct AlignedBuf {
    map: MmapMut,
    len: usize,
}

// === impl AlignedBuf ===

impl AlignedBuf {
    /// An empty buffer of at least `capacity` bytes (rounded up to a multiple
    /// of [`ALIGN`]; at least [`ALIGN`]).
    pub fn new(capacity: usize) -> io::Result<AlignedBuf> {
        let capacity = capacity
            .max(1)
            .checked_next_multiple_of(ALIGN)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "capacity too large"))?;
        let map = MmapMut::map_anon(capacity)?;
        if map.as_ptr().align_offset(ALIGN) != 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "anonymous mapping is not 4096-aligned",
            ));
        }
        Ok(AlignedBuf { map, len: 0 })
    }

    /// Filled bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no byte is filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Total bytes the buffer holds (a multiple of [`ALIGN`]).
    pub fn capacity(&self) -> usize {
        self.map.len()
    }

    /// Bytes that can still be appended.
    pub fn spare(&self) -> usize {
        self.capacity() - self.len
    }

    /// The filled bytes; starts on an [`ALIGN`] boundary.
    pub fn as_slice(&self) -> &[u8] {
        &self.map[..self.len]
    }

    /// The filled bytes, mutable; starts on an [`ALIGN`] boundary.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.map[..self.len]
    }

    /// Append as much of `data` as fits; returns how many bytes were taken.
    pub fn extend_from_slice(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.spare());
        self.map[self.len..self.len + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }

    /// Drop the first `n` filled bytes (all of them when `n >= len`) and
    /// move the rest to the start.
    pub fn consume_front(&mut self, n: usize) {
        let n = n.min(self.len);
        self.map.copy_within(n..self.len, 0);
        self.len -= n;
    }

    /// Drop every filled byte.
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_rounded_and_the_start_aligned() {
        for (want, cap) in [
            (0, ALIGN),
            (1, ALIGN),
            (ALIGN, ALIGN),
            (ALIGN + 1, 2 * ALIGN),
            (1 << 20, 1 << 20),
        ] {
            let mut buf = AlignedBuf::new(want).unwrap();
            assert_eq!(buf.capacity(), cap, "{want}");
            assert_eq!((buf.len(), buf.spare()), (0, cap));
            assert!(buf.is_empty());
            assert_eq!(buf.as_slice().as_ptr().align_offset(ALIGN), 0);
            assert_eq!(buf.as_mut_slice().as_mut_ptr().align_offset(ALIGN), 0);
        }
        assert!(AlignedBuf::new(usize::MAX).is_err());
    }

    #[test]
    fn extend_takes_what_fits() {
        let mut buf = AlignedBuf::new(ALIGN).unwrap();
        assert_eq!(buf.extend_from_slice(b"abc"), 3);
        assert_eq!(buf.as_slice(), b"abc");
        let big = vec![7u8; ALIGN];
        assert_eq!(buf.extend_from_slice(&big), ALIGN - 3);
        assert_eq!((buf.len(), buf.spare()), (ALIGN, 0));
        assert_eq!(buf.extend_from_slice(b"x"), 0);
        assert_eq!(&buf.as_slice()[..4], b"abc\x07");
        buf.as_mut_slice()[0] = b'z';
        assert_eq!(buf.as_slice()[0], b'z');
        buf.clear();
        assert!(buf.is_empty());
        assert_eq!(buf.spare(), ALIGN);
    }

    #[test]
    fn consume_front_keeps_the_rest_at_the_start() {
        let mut buf = AlignedBuf::new(3 * ALIGN).unwrap();
        let data: Vec<u8> = (0..2 * ALIGN + 10).map(|i| (i % 251) as u8).collect();
        assert_eq!(buf.extend_from_slice(&data), data.len());
        buf.consume_front(2 * ALIGN);
        assert_eq!(buf.as_slice(), &data[2 * ALIGN..]);
        assert_eq!(buf.as_slice().as_ptr().align_offset(ALIGN), 0);
        buf.consume_front(0);
        assert_eq!(buf.len(), 10);
        buf.consume_front(100);
        assert!(buf.is_empty());
    }
}
