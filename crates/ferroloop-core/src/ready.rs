//! The ready queue: a FIFO of callbacks with asyncio's batch semantics.
//!
//! A loop iteration runs only the callbacks present when it starts
//! ([`ReadyQueue::begin_batch`] returns that count); callbacks scheduled by
//! those callbacks run in the next iteration, after the next I/O poll. This
//! is observable (and relied upon) by asyncio programs.

use std::collections::VecDeque;

/// FIFO of ready callbacks.
#[derive(Debug)]
pub struct ReadyQueue<T> {
    queue: VecDeque<T>,
}

impl<T> Default for ReadyQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> ReadyQueue<T> {
    pub fn new() -> Self {
        Self {
            queue: VecDeque::with_capacity(64),
        }
    }

    /// Appends a callback; it runs after every callback already queued.
    #[inline]
    pub fn push(&mut self, item: T) {
        self.queue.push_back(item);
    }

    /// Removes the oldest callback.
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        self.queue.pop_front()
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Number of callbacks the iteration starting now must run (no more).
    #[inline]
    pub fn begin_batch(&self) -> usize {
        self.queue.len()
    }

    /// Empties the queue, handing back what it held (used by `close()`).
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.queue.drain(..)
    }

    /// Iterates without consuming (used to count or inspect pending work).
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.queue.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_and_batch() {
        let mut q = ReadyQueue::new();
        q.push(1);
        q.push(2);
        let n = q.begin_batch();
        assert_eq!(n, 2);
        let mut ran = vec![];
        for _ in 0..n {
            let v = q.pop().unwrap();
            ran.push(v);
            q.push(v + 10); // scheduled by a callback: next batch
        }
        assert_eq!(ran, vec![1, 2]);
        assert_eq!(q.begin_batch(), 2);
        assert_eq!(q.pop(), Some(11));
    }
}
