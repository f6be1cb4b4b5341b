//! The timer heap: a binary min-heap of `(deadline, sequence)` entries.
//!
//! - Ties on the deadline run in scheduling order (the sequence number), so
//!   two `call_at(t, ...)` run in the order they were made.
//! - Cancellation is lazy: the entry stays in the heap and its item reports
//!   [`Cancellable::is_cancelled`]; cancelled entries at the head are dropped
//!   when the loop looks at the heap, and when more than half of more than
//!   [`TimerHeap::MIN_TO_COMPACT`] entries are cancelled the heap is rebuilt
//!   without them (asyncio's exact policy), so memory stays bounded when a
//!   program schedules and cancels many timeouts.
//! - Deadlines compare with `f64::total_cmp` after mapping NaN to -inf: the
//!   order is total, `Ord` agrees with `Eq`, and a NaN deadline is due at
//!   once (as with asyncio, where `nan >= end_time` is false, so a NaN timer
//!   at the head of its heapq runs in the next iteration).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// What the heap needs to know about an item.
pub trait Cancellable {
    /// True once the timer was cancelled; the heap then drops it lazily.
    fn is_cancelled(&self) -> bool;
    /// Called when the item leaves the heap (due, or dropped as cancelled).
    fn unscheduled(&self) {}
}

struct Entry<T> {
    when: f64,
    seq: u64,
    item: T,
}

/// Sort key of a deadline: NaN counts as "already due".
fn key(when: f64) -> f64 {
    if when.is_nan() {
        f64::NEG_INFINITY
    } else {
        when
    }
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap and we want the earliest first.
        key(other.when)
            .total_cmp(&key(self.when))
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// Min-heap of timers with lazy cancellation and compaction.
pub struct TimerHeap<T> {
    heap: BinaryHeap<Entry<T>>,
    next_seq: u64,
    cancelled: usize,
}

impl<T: Cancellable> Default for TimerHeap<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Cancellable> TimerHeap<T> {
    /// Below this many entries the heap is never compacted (asyncio: 100).
    pub const MIN_TO_COMPACT: usize = 100;

    pub fn new() -> Self {
        Self {
            heap: BinaryHeap::new(),
            next_seq: 0,
            cancelled: 0,
        }
    }

    /// Schedules `item` at `when` (seconds on the loop clock).
    pub fn push(&mut self, when: f64, item: T) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Entry { when, seq, item });
    }

    /// Number of entries, cancelled ones included (asyncio's `len(_scheduled)`).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Records that one scheduled item was cancelled (it stays until dropped).
    pub fn note_cancelled(&mut self) {
        self.cancelled += 1;
    }

    /// Number of cancelled entries still in the heap.
    pub fn cancelled_count(&self) -> usize {
        self.cancelled
    }

    /// Step 1 of an iteration: compact when most entries are cancelled, else
    /// drop cancelled entries from the head. Removed items go to `removed`,
    /// so the caller decides where they are dropped (the Python binding drops
    /// them after releasing its borrow, as a drop may run arbitrary code).
    pub fn purge_cancelled(&mut self, mut removed: impl FnMut(T)) {
        let n = self.heap.len();
        if n > Self::MIN_TO_COMPACT && self.cancelled * 2 > n {
            let entries = std::mem::take(&mut self.heap).into_vec();
            let mut kept = Vec::with_capacity(n - self.cancelled);
            for e in entries {
                if e.item.is_cancelled() {
                    e.item.unscheduled();
                    removed(e.item);
                } else {
                    kept.push(e);
                }
            }
            self.heap = BinaryHeap::from(kept);
            self.cancelled = 0;
        } else {
            while let Some(top) = self.heap.peek() {
                if !top.item.is_cancelled() {
                    break;
                }
                let e = self.heap.pop().expect("peeked");
                e.item.unscheduled();
                self.cancelled = self.cancelled.saturating_sub(1);
                removed(e.item);
            }
        }
    }

    /// Deadline of the earliest entry (cancelled or not), if any.
    pub fn next_deadline(&self) -> Option<f64> {
        self.heap.peek().map(|e| e.when)
    }

    /// Step 4: hands every entry with `when < end_time` to `sink`, earliest
    /// first. Cancelled entries are handed over too (the run step skips
    /// them), exactly as asyncio moves them to its ready deque.
    pub fn pop_due(&mut self, end_time: f64, mut sink: impl FnMut(T)) {
        while let Some(top) = self.heap.peek() {
            // Written as asyncio's `when >= end_time` test, so NaN is due.
            if top.when >= end_time {
                break;
            }
            let e = self.heap.pop().expect("peeked");
            if e.item.is_cancelled() {
                self.cancelled = self.cancelled.saturating_sub(1);
            }
            e.item.unscheduled();
            sink(e.item);
        }
    }

    /// Removes every entry (used by `close()`).
    pub fn clear(&mut self) -> Vec<T> {
        self.cancelled = 0;
        std::mem::take(&mut self.heap)
            .into_vec()
            .into_iter()
            .map(|e| e.item)
            .collect()
    }

    /// Iterates over the items in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.heap.iter().map(|e| &e.item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[derive(Clone)]
    struct T(u32, Rc<Cell<bool>>);
    impl Cancellable for T {
        fn is_cancelled(&self) -> bool {
            self.1.get()
        }
    }
    fn t(v: u32) -> T {
        T(v, Rc::new(Cell::new(false)))
    }

    fn due(h: &mut TimerHeap<T>, end: f64) -> Vec<u32> {
        let mut out = vec![];
        h.pop_due(end, |x| out.push(x.0));
        out
    }

    #[test]
    fn orders_by_deadline_then_sequence() {
        let mut h = TimerHeap::new();
        h.push(2.0, t(1));
        h.push(1.0, t(2));
        h.push(1.0, t(3));
        h.push(0.5, t(4));
        assert_eq!(h.next_deadline(), Some(0.5));
        assert_eq!(due(&mut h, 10.0), vec![4, 2, 3, 1]);
    }

    #[test]
    fn end_time_is_exclusive() {
        let mut h = TimerHeap::new();
        h.push(1.0, t(1));
        assert!(due(&mut h, 1.0).is_empty());
        assert_eq!(due(&mut h, 1.0 + 1e-9), vec![1]);
    }

    #[test]
    fn nan_is_due_at_once() {
        let mut h = TimerHeap::new();
        h.push(5.0, t(2));
        h.push(f64::NAN, t(1));
        assert!(h.next_deadline().unwrap().is_nan());
        assert_eq!(due(&mut h, 0.0), vec![1]);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn lazy_head_purge() {
        let mut h = TimerHeap::new();
        let a = t(1);
        h.push(1.0, a.clone());
        h.push(2.0, t(2));
        a.1.set(true);
        h.note_cancelled();
        h.purge_cancelled(drop);
        assert_eq!(h.len(), 1);
        assert_eq!(h.cancelled_count(), 0);
        assert_eq!(h.next_deadline(), Some(2.0));
    }

    #[test]
    fn compacts_when_most_are_cancelled() {
        let mut h = TimerHeap::new();
        let items: Vec<T> = (0..300).map(t).collect();
        for (i, it) in items.iter().enumerate() {
            h.push(1000.0 - i as f64, it.clone());
        }
        // cancel 200 entries that are not at the head
        for it in items.iter().take(200) {
            it.1.set(true);
            h.note_cancelled();
        }
        h.purge_cancelled(drop);
        assert_eq!(h.len(), 100);
        assert_eq!(h.cancelled_count(), 0);
        let out = due(&mut h, f64::INFINITY);
        assert_eq!(out.len(), 100);
        assert!(out.windows(2).all(|w| w[0] > w[1]), "earliest first");
    }

    #[test]
    fn cancelled_due_entries_are_handed_over_and_uncounted() {
        let mut h = TimerHeap::new();
        let a = t(1);
        h.push(1.0, a.clone());
        a.1.set(true);
        h.note_cancelled();
        assert_eq!(due(&mut h, 2.0), vec![1]);
        assert_eq!(h.cancelled_count(), 0);
    }
}
