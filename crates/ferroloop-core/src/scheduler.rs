//! [`Scheduler`]: the parts of the core composed into a complete loop for
//! Rust callers (callbacks are boxed closures). The Python binding composes
//! the same parts itself, because it must release the GIL around the poll
//! and must not hold a borrow of its state while Python code runs; the
//! iteration it performs is the one implemented here.

use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::{clock, Cancellable, Injector, Reactor, ReadyQueue, TimerHeap, MAXIMUM_POLL_TIMEOUT};

/// A callback run by the [`Scheduler`].
pub type Callback = Box<dyn FnOnce(&mut Scheduler) + Send>;

/// Cancels a timer scheduled with [`Scheduler::call_at`].
#[derive(Clone, Debug)]
pub struct TimerHandle(Rc<Cell<bool>>);

impl TimerHandle {
    pub fn cancel(&self) {
        self.0.set(true);
    }
}

struct Timer {
    cancelled: Rc<Cell<bool>>,
    callback: Callback,
}

impl Cancellable for Timer {
    fn is_cancelled(&self) -> bool {
        self.cancelled.get()
    }
}

/// Computes the poll timeout of one iteration (asyncio's rule).
pub fn poll_timeout(
    ready_or_stopping: bool,
    next_deadline: Option<f64>,
    now: f64,
) -> Option<Duration> {
    if ready_or_stopping {
        return Some(Duration::ZERO);
    }
    next_deadline.map(|when| {
        let secs = (when - now).clamp(0.0, MAXIMUM_POLL_TIMEOUT);
        // A NaN deadline is due now (asyncio: max(0, nan) == 0).
        Duration::from_secs_f64(if secs.is_nan() { 0.0 } else { secs })
    })
}

/// A single-threaded event loop for Rust callbacks.
pub struct Scheduler {
    ready: ReadyQueue<Callback>,
    timers: TimerHeap<Timer>,
    reactor: Reactor,
    injector: Arc<Injector<Callback>>,
    stopping: bool,
    resolution: f64,
}

impl Scheduler {
    pub fn new() -> io::Result<Self> {
        let reactor = Reactor::new()?;
        let injector = Arc::new(Injector::new(reactor.waker()));
        Ok(Self {
            ready: ReadyQueue::new(),
            timers: TimerHeap::new(),
            reactor,
            injector,
            stopping: false,
            resolution: clock::resolution(),
        })
    }

    pub fn time(&self) -> f64 {
        clock::monotonic()
    }

    pub fn call_soon(&mut self, cb: impl FnOnce(&mut Scheduler) + Send + 'static) {
        self.ready.push(Box::new(cb));
    }

    pub fn call_at(
        &mut self,
        when: f64,
        cb: impl FnOnce(&mut Scheduler) + Send + 'static,
    ) -> TimerHandle {
        let cancelled = Rc::new(Cell::new(false));
        self.timers.push(
            when,
            Timer {
                cancelled: Rc::clone(&cancelled),
                callback: Box::new(cb),
            },
        );
        TimerHandle(cancelled)
    }

    /// A handle other threads use to schedule callbacks (thread-safe).
    pub fn injector(&self) -> Arc<Injector<Callback>> {
        Arc::clone(&self.injector)
    }

    /// Makes `run_forever` return after the current iteration.
    pub fn stop(&mut self) {
        self.stopping = true;
    }

    /// One iteration; see the crate docs for the exact steps.
    pub fn run_once(&mut self) -> io::Result<()> {
        self.timers.purge_cancelled(drop);
        let timeout = poll_timeout(
            !self.ready.is_empty() || self.stopping,
            self.timers.next_deadline(),
            self.time(),
        );
        let skip_poll = timeout == Some(Duration::ZERO)
            && self.reactor.source_count() == 0
            && !self.injector.is_notified();
        if !skip_poll {
            self.reactor.poll(timeout, |_| {})?;
        }
        for cb in self.injector.drain() {
            self.ready.push(cb);
        }
        let end = self.time() + self.resolution;
        let ready = &mut self.ready;
        self.timers.pop_due(end, |t| {
            if !t.cancelled.get() {
                ready.push(t.callback);
            }
        });
        for _ in 0..self.ready.begin_batch() {
            let Some(cb) = self.ready.pop() else { break };
            cb(self);
        }
        Ok(())
    }

    /// Runs iterations until [`Scheduler::stop`] is called.
    pub fn run_forever(&mut self) -> io::Result<()> {
        loop {
            self.run_once()?;
            if self.stopping {
                self.stopping = false;
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn callbacks_then_timers_in_order() {
        let mut s = Scheduler::new().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let now = s.time();
        for (i, d) in [(1, 0.02), (2, 0.01), (3, 0.01)] {
            let log = Arc::clone(&log);
            s.call_at(now + d, move |_| log.lock().unwrap().push(i));
        }
        let l = Arc::clone(&log);
        s.call_soon(move |_| l.lock().unwrap().push(0));
        s.call_at(now + 0.03, |s| s.stop());
        s.run_forever().unwrap();
        assert_eq!(*log.lock().unwrap(), vec![0, 2, 3, 1]);
        assert!(s.time() >= now + 0.03);
    }

    #[test]
    fn nested_call_soon_runs_next_iteration() {
        let mut s = Scheduler::new().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = Arc::clone(&log);
        s.call_soon(move |s| {
            l.lock().unwrap().push("a");
            let l2 = Arc::clone(&l);
            s.call_soon(move |_| l2.lock().unwrap().push("c"));
        });
        let l = Arc::clone(&log);
        s.call_soon(move |_| l.lock().unwrap().push("b"));
        s.run_once().unwrap();
        assert_eq!(*log.lock().unwrap(), vec!["a", "b"]);
        s.run_once().unwrap();
        assert_eq!(*log.lock().unwrap(), vec!["a", "b", "c"]);
    }

    #[test]
    fn cancelled_timer_does_not_run() {
        let mut s = Scheduler::new().unwrap();
        let now = s.time();
        let h = s.call_at(now, |_| panic!("cancelled"));
        h.cancel();
        s.call_at(now + 0.005, |s| s.stop());
        s.run_forever().unwrap();
    }

    #[test]
    fn threadsafe_injection_wakes_a_sleeping_loop() {
        let mut s = Scheduler::new().unwrap();
        let inj = s.injector();
        let th = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            inj.push(Box::new(|s: &mut Scheduler| s.stop())).unwrap();
        });
        // a far timer so the poll would otherwise block for a long time
        let now = s.time();
        s.call_at(now + 30.0, |_| panic!("should not be reached"));
        s.run_forever().unwrap();
        assert!(s.time() - now < 10.0);
        th.join().unwrap();
    }

    #[test]
    fn poll_timeout_rules() {
        assert_eq!(poll_timeout(true, Some(5.0), 0.0), Some(Duration::ZERO));
        assert_eq!(poll_timeout(false, None, 0.0), None);
        assert_eq!(poll_timeout(false, Some(-1.0), 0.0), Some(Duration::ZERO));
        assert_eq!(
            poll_timeout(false, Some(1e12), 0.0),
            Some(Duration::from_secs_f64(MAXIMUM_POLL_TIMEOUT))
        );
    }
}
