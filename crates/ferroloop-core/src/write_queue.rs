//! A stream transport's write side without the I/O: the queue of bytes not
//! yet accepted by the socket, and asyncio's flow-control state (the high
//! and low water marks of `_FlowControlMixin`).
//!
//! ## Invariants
//! - [`WriteQueue::len`] is the number of bytes queued and not yet sent:
//!   the sum of every chunk's length minus what was sent of the first one.
//! - No chunk in the queue is empty.
//! - Bytes leave in the order they were queued; [`WriteQueue::consume`]
//!   drops a chunk only once every byte of it was sent.
//! - A chunk is either a copy the queue owns ([`Chunk::Copied`]: small
//!   writes are appended to one buffer, so a burst of them leaves in one
//!   `writev` entry) or a caller's immutable buffer held as it is
//!   ([`Chunk::Held`]: no copy of a large `bytes`). Held buffers must not
//!   change while queued; the binding holds only immutable ones.

use std::collections::VecDeque;
use std::io::IoSlice;

/// Small writes are copied into a shared buffer up to this size; larger
/// immutable ones are worth holding as they are.
pub const COALESCE_LIMIT: usize = 16 * 1024;

/// At most this many buffers go to one `writev` (Linux's `IOV_MAX` is 1024;
/// more entries rarely make one call send more).
pub const MAX_IOVECS: usize = 64;

/// One queued buffer.
pub enum Chunk<H> {
    Copied(Vec<u8>),
    Held(H),
}

impl<H: AsRef<[u8]>> Chunk<H> {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Copied(v) => v,
            Chunk::Held(h) => h.as_ref(),
        }
    }
}

/// The bytes a transport still has to send.
pub struct WriteQueue<H> {
    chunks: VecDeque<Chunk<H>>,
    /// Bytes of `chunks[0]` already sent.
    head_sent: usize,
    len: usize,
}

impl<H: AsRef<[u8]>> Default for WriteQueue<H> {
    fn default() -> Self {
        Self::new()
    }
}

impl<H: AsRef<[u8]>> WriteQueue<H> {
    pub fn new() -> Self {
        Self {
            chunks: VecDeque::new(),
            head_sent: 0,
            len: 0,
        }
    }

    /// Bytes queued and not yet sent.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues a copy of `data`, appended to the last copied chunk when that
    /// one is still small.
    pub fn push_copy(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.len += data.len();
        if let Some(Chunk::Copied(last)) = self.chunks.back_mut() {
            if last.len() < COALESCE_LIMIT {
                last.extend_from_slice(data);
                return;
            }
        }
        self.chunks.push_back(Chunk::Copied(data.to_vec()));
    }

    /// Queues `held` as it is (it must not change while queued).
    pub fn push_held(&mut self, held: H) {
        let n = held.as_ref().len();
        if n == 0 {
            return;
        }
        self.len += n;
        self.chunks.push_back(Chunk::Held(held));
    }

    /// The unsent bytes as `writev` buffers, at most [`MAX_IOVECS`], in order.
    pub fn io_slices(&self) -> Vec<IoSlice<'_>> {
        let mut out = Vec::with_capacity(self.chunks.len().min(MAX_IOVECS));
        for (i, c) in self.chunks.iter().take(MAX_IOVECS).enumerate() {
            let b = c.bytes();
            out.push(IoSlice::new(if i == 0 { &b[self.head_sent..] } else { b }));
        }
        out
    }

    /// Marks the first `n` unsent bytes as sent; returns the chunks that were
    /// sent completely (the caller decides where they are dropped).
    ///
    /// # Panics
    /// If `n` exceeds [`WriteQueue::len`] (a caller bug: the OS cannot
    /// accept more bytes than it was given).
    pub fn consume(&mut self, mut n: usize) -> Vec<Chunk<H>> {
        assert!(n <= self.len, "consumed more than was queued");
        self.len -= n;
        let mut done = Vec::new();
        while n > 0 {
            let head_left = self.chunks[0].bytes().len() - self.head_sent;
            if n < head_left {
                self.head_sent += n;
                break;
            }
            n -= head_left;
            self.head_sent = 0;
            done.extend(self.chunks.pop_front());
        }
        done
    }

    /// Empties the queue (an abort), handing back what was queued.
    pub fn clear(&mut self) -> Vec<Chunk<H>> {
        self.len = 0;
        self.head_sent = 0;
        self.chunks.drain(..).collect()
    }
}

/// asyncio's write-buffer water marks and whether the protocol was told to
/// pause writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowControl {
    high: usize,
    low: usize,
    paused: bool,
}

impl Default for FlowControl {
    fn default() -> Self {
        Self {
            high: 64 * 1024,
            low: 16 * 1024,
            paused: false,
        }
    }
}

/// The limits asked for were refused (asyncio's `ValueError`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadLimits {
    pub high: i128,
    pub low: i128,
}

impl FlowControl {
    /// `(low, high)`, as asyncio's `get_write_buffer_limits`.
    pub fn limits(&self) -> (usize, usize) {
        (self.low, self.high)
    }

    /// asyncio's defaults: `high` 64 KiB, or four times `low` when only that
    /// is given; `low` a quarter of `high`; `high >= low >= 0` required.
    pub fn set_limits(&mut self, high: Option<i128>, low: Option<i128>) -> Result<(), BadLimits> {
        let high = match (high, low) {
            (Some(h), _) => h,
            (None, Some(l)) => l.saturating_mul(4),
            (None, None) => 64 * 1024,
        };
        let low = low.unwrap_or(high.div_euclid(4));
        if !(high >= low && low >= 0) {
            return Err(BadLimits { high, low });
        }
        self.high = usize::try_from(high).unwrap_or(usize::MAX);
        self.low = usize::try_from(low).unwrap_or(usize::MAX);
        Ok(())
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// With `buffered` bytes queued: true when the protocol must now be told
    /// to pause writing (above the high mark, not told yet).
    pub fn should_pause(&mut self, buffered: usize) -> bool {
        if buffered <= self.high || self.paused {
            return false;
        }
        self.paused = true;
        true
    }

    /// With `buffered` bytes queued: true when the protocol must now be told
    /// to resume writing (told to pause, now at or below the low mark).
    pub fn should_resume(&mut self, buffered: usize) -> bool {
        if !self.paused || buffered > self.low {
            return false;
        }
        self.paused = false;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(q: &WriteQueue<Vec<u8>>) -> Vec<u8> {
        q.io_slices().iter().flat_map(|s| s.to_vec()).collect()
    }

    #[test]
    fn coalesces_small_copies_and_holds_large_buffers() {
        let mut q: WriteQueue<Vec<u8>> = WriteQueue::new();
        q.push_copy(b"ab");
        q.push_copy(b"");
        q.push_copy(b"cd");
        q.push_held(vec![b'e'; 3]);
        q.push_copy(b"f");
        assert_eq!(q.len(), 8);
        assert_eq!(q.io_slices().len(), 3);
        assert_eq!(sent(&q), b"abcdeeef");
    }

    #[test]
    fn consume_keeps_order_across_partial_sends() {
        let mut q: WriteQueue<Vec<u8>> = WriteQueue::new();
        q.push_held(b"hello".to_vec());
        q.push_held(b" world".to_vec());
        assert!(q.consume(3).is_empty());
        assert_eq!(sent(&q), b"lo world");
        assert_eq!(q.consume(4).len(), 1);
        assert_eq!(sent(&q), b"orld");
        assert_eq!(q.consume(4).len(), 1);
        assert!(q.is_empty() && q.io_slices().is_empty());
    }

    #[test]
    #[should_panic(expected = "consumed more")]
    fn consuming_more_than_queued_is_a_bug() {
        let mut q: WriteQueue<Vec<u8>> = WriteQueue::new();
        q.push_copy(b"x");
        q.consume(2);
    }

    #[test]
    fn at_most_max_iovecs_per_call() {
        let mut q: WriteQueue<Vec<u8>> = WriteQueue::new();
        for _ in 0..MAX_IOVECS + 5 {
            q.push_held(vec![1; 10]);
        }
        assert_eq!(q.io_slices().len(), MAX_IOVECS);
        q.clear();
        assert!(q.is_empty());
    }

    #[test]
    fn flow_control_follows_asyncio() {
        let mut f = FlowControl::default();
        assert_eq!(f.limits(), (16384, 65536));
        f.set_limits(None, Some(10)).unwrap();
        assert_eq!(f.limits(), (10, 40));
        f.set_limits(Some(8), None).unwrap();
        assert_eq!(f.limits(), (2, 8));
        assert_eq!(
            f.set_limits(Some(1), Some(2)),
            Err(BadLimits { high: 1, low: 2 })
        );
        assert_eq!(f.set_limits(Some(-4), None).unwrap_err().low, -1);
        f.set_limits(Some(8), Some(2)).unwrap();
        assert!(!f.should_pause(8));
        assert!(f.should_pause(9));
        assert!(!f.should_pause(100));
        assert!(!f.should_resume(3));
        assert!(f.should_resume(2));
        assert!(!f.is_paused());
    }
}
