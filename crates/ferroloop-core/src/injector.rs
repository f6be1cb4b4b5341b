//! The cross-thread injector: how other threads hand work to the loop
//! (`call_soon_threadsafe`).
//!
//! Invariants:
//! - `push` may be called from any thread; `drain` only by the loop thread.
//! - Wake-ups are coalesced: only the push that flips `notified` from false
//!   to true writes to the waker, so a burst of N pushes costs one syscall.
//! - `drain` clears `notified` *before* taking the items, so an item pushed
//!   concurrently is either taken now or triggers a fresh wake-up: no item is
//!   ever left behind with the loop asleep.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mio::Waker;
use parking_lot::Mutex;

/// Multi-producer queue with a coalescing wake-up.
pub struct Injector<T> {
    items: Mutex<Vec<T>>,
    notified: AtomicBool,
    /// `None` once the loop is closed (its eventfd released).
    waker: Mutex<Option<Arc<Waker>>>,
}

impl<T> Injector<T> {
    pub fn new(waker: Arc<Waker>) -> Self {
        Self {
            items: Mutex::new(Vec::new()),
            notified: AtomicBool::new(false),
            waker: Mutex::new(Some(waker)),
        }
    }

    /// Queues `item` and wakes the loop if it may be sleeping.
    pub fn push(&self, item: T) -> io::Result<()> {
        self.items.lock().push(item);
        self.wake()
    }

    /// Wakes the loop without queueing anything (coalesced like `push`).
    pub fn wake(&self) -> io::Result<()> {
        if !self.notified.swap(true, Ordering::AcqRel) {
            if let Some(w) = self.waker.lock().as_ref() {
                w.wake()?;
            }
        }
        Ok(())
    }

    /// Releases the waker (the loop is closing): later wake-ups are no-ops.
    pub fn close(&self) {
        self.waker.lock().take();
    }

    /// True when a wake-up is pending (cheap: one atomic load).
    pub fn is_notified(&self) -> bool {
        self.notified.load(Ordering::Acquire)
    }

    /// Takes every queued item, oldest first.
    pub fn drain(&self) -> Vec<T> {
        self.notified.store(false, Ordering::Release);
        std::mem::take(&mut *self.items.lock())
    }

    /// [`Injector::drain`] when a wake-up is pending, else nothing without
    /// taking the lock (the loop's per-iteration path). An item pushed
    /// concurrently whose wake-up is not visible yet is not lost: its push
    /// flips `notified` and wakes the loop, and the next call takes it.
    pub fn drain_if_notified(&self) -> Vec<T> {
        if self.notified.load(Ordering::Acquire) {
            self.drain()
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::Reactor;
    use std::time::Duration;

    /// `threads` threads each pushing `(thread, 0..n)` in order.
    fn spawn_pushers(
        inj: &Arc<Injector<(usize, usize)>>,
        threads: usize,
        n: usize,
    ) -> Vec<std::thread::JoinHandle<()>> {
        (0..threads)
            .map(|t| {
                let inj = Arc::clone(inj);
                std::thread::spawn(move || {
                    for i in 0..n {
                        inj.push((t, i)).unwrap();
                    }
                })
            })
            .collect()
    }

    #[test]
    fn items_from_many_threads_arrive_in_per_thread_order() {
        let mut r = Reactor::new().unwrap();
        let inj = Arc::new(Injector::new(r.waker()));
        let threads = spawn_pushers(&inj, 4, 1000);
        let mut got = vec![];
        while got.len() < 4000 {
            r.poll(Some(Duration::from_millis(100)), |_| {}).unwrap();
            got.extend(inj.drain());
        }
        for th in threads {
            th.join().unwrap();
        }
        for t in 0..4 {
            let seq: Vec<_> = got.iter().filter(|x| x.0 == t).map(|x| x.1).collect();
            assert_eq!(seq, (0..1000).collect::<Vec<_>>());
        }
    }

    #[test]
    fn drain_if_notified_loses_nothing_under_concurrent_pushes() {
        // Every item must arrive even though the loop only looks at the
        // queue when a wake-up is visible (a lost item would hang here).
        let mut r = Reactor::new().unwrap();
        let inj = Arc::new(Injector::new(r.waker()));
        let threads = spawn_pushers(&inj, 4, 2000);
        let mut got = 0;
        while got < 8000 {
            r.poll(Some(Duration::from_secs(5)), |_| {}).unwrap();
            got += inj.drain_if_notified().len();
        }
        for th in threads {
            th.join().unwrap();
        }
        assert!(inj.drain_if_notified().is_empty());
    }

    #[test]
    fn wakeups_are_coalesced() {
        let mut r = Reactor::new().unwrap();
        let inj = Injector::new(r.waker());
        for i in 0..100 {
            inj.push(i).unwrap();
        }
        assert!(inj.is_notified());
        let p = r.poll(Some(Duration::from_millis(50)), |_| {}).unwrap();
        assert!(p.woken);
        assert_eq!(inj.drain().len(), 100);
        assert!(!inj.is_notified());
        // nothing pending: the next poll times out without a wake-up
        let p = r.poll(Some(Duration::from_millis(10)), |_| {}).unwrap();
        assert!(!p.woken);
    }
}
