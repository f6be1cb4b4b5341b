//! [`Scheduler`]: a complete loop for Rust callers (callbacks are boxed
//! closures), one of the two drivers of [`LoopCore`] (the Python binding's
//! `_Loop` is the other). It runs the core's one iteration with no lock to
//! release around the poll.

use std::cell::Cell;
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;

use crate::loop_core::{IoOutcome, LoopCore, PollPlan};
use crate::{clock, Cancellable, Injector};

pub use crate::loop_core::poll_timeout;

/// A callback run by the [`Scheduler`].
pub type Callback = Box<dyn FnOnce(&mut Scheduler) + Send>;

/// A callback run each iteration while its fd is ready (`add_reader`).
pub type IoCallback = Arc<dyn Fn(&mut Scheduler) + Send + Sync>;

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

/// A single-threaded event loop for Rust callbacks.
pub struct Scheduler {
    core: LoopCore<Callback, Timer, IoCallback>,
}

impl Scheduler {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            core: LoopCore::new()?,
        })
    }

    pub fn time(&self) -> f64 {
        clock::monotonic()
    }

    pub fn call_soon(&mut self, cb: impl FnOnce(&mut Scheduler) + Send + 'static) {
        self.core.ready.push(Box::new(cb));
    }

    pub fn call_at(
        &mut self,
        when: f64,
        cb: impl FnOnce(&mut Scheduler) + Send + 'static,
    ) -> TimerHandle {
        let cancelled = Rc::new(Cell::new(false));
        self.core.timers.push(
            when,
            Timer {
                cancelled: Rc::clone(&cancelled),
                callback: Box::new(cb),
            },
        );
        TimerHandle(cancelled)
    }

    /// Runs `cb` in every iteration while `fd` is readable (level-triggered,
    /// as asyncio's `add_reader`); replaces an earlier reader of `fd`.
    pub fn add_reader(
        &mut self,
        fd: RawFd,
        cb: impl Fn(&mut Scheduler) + Send + Sync + 'static,
    ) -> io::Result<()> {
        self.core.add_reader(fd, Arc::new(cb)).map(drop)
    }

    /// Stops watching `fd` for reading; whether a reader was removed.
    pub fn remove_reader(&mut self, fd: RawFd) -> bool {
        matches!(self.core.remove_reader(fd), Ok(Some(_)))
    }

    /// Runs `cb` in every iteration while `fd` is writable.
    pub fn add_writer(
        &mut self,
        fd: RawFd,
        cb: impl Fn(&mut Scheduler) + Send + Sync + 'static,
    ) -> io::Result<()> {
        self.core.add_writer(fd, Arc::new(cb)).map(drop)
    }

    /// Stops watching `fd` for writing; whether a writer was removed.
    pub fn remove_writer(&mut self, fd: RawFd) -> bool {
        matches!(self.core.remove_writer(fd), Ok(Some(_)))
    }

    /// A handle other threads use to schedule callbacks (thread-safe).
    pub fn injector(&self) -> Arc<Injector<Callback>> {
        Arc::clone(self.core.injector())
    }

    /// Makes `run_forever` return after the current iteration.
    pub fn stop(&mut self) {
        self.core.stopping = true;
    }

    /// One iteration; see [`crate::loop_core`] for the phases.
    pub fn run_once(&mut self) -> io::Result<()> {
        let core = &mut self.core;
        let plan = core.prepare(drop);
        if let PollPlan::Now | PollPlan::Block(_) = plan {
            let timeout = match plan {
                PollPlan::Block(t) => t,
                _ => Some(std::time::Duration::ZERO),
            };
            let mut poller = core.take_poller();
            poller.poll(timeout);
            core.put_poller(poller)?;
        }
        let ntodo = core.collect(
            |w, ev, ready| {
                for (ok, cb) in [(ev.readable, &w.reader), (ev.writable, &w.writer)] {
                    if let (true, Some(cb)) = (ok, cb) {
                        let cb = Arc::clone(cb);
                        ready.push(Box::new(move |s: &mut Scheduler| cb(s)));
                    }
                }
                IoOutcome::LEVEL
            },
            |t| (!t.cancelled.get()).then_some(t.callback),
        );
        drop(core.take_unwatched());
        for _ in 0..ntodo {
            let Some(cb) = self.core.ready.pop() else {
                break;
            };
            cb(self);
        }
        Ok(())
    }

    /// Runs iterations until [`Scheduler::stop`] is called.
    pub fn run_forever(&mut self) -> io::Result<()> {
        loop {
            self.run_once()?;
            if self.core.stopping {
                self.core.stopping = false;
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MAXIMUM_POLL_TIMEOUT;
    use std::sync::Mutex;
    use std::time::Duration;

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
    fn add_reader_is_level_triggered_until_removed() {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        use std::os::unix::net::UnixStream;
        use std::sync::atomic::{AtomicUsize, Ordering};

        let mut s = Scheduler::new().unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.write_all(b"xy").unwrap();
        let fd = a.as_raw_fd();
        let calls = Arc::new(AtomicUsize::new(0));
        let a = Arc::new(Mutex::new(a));
        let (c, sock) = (Arc::clone(&calls), Arc::clone(&a));
        s.add_reader(fd, move |s| {
            // reads one byte per call: the fd stays ready after the first
            let mut one = [0u8; 1];
            let n = sock.lock().unwrap().read(&mut one).unwrap_or(0);
            if c.fetch_add(1, Ordering::SeqCst) == 1 {
                assert_eq!(n, 1);
                assert!(s.remove_reader(fd));
                s.stop();
            }
        })
        .unwrap();
        s.run_forever().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(!s.remove_reader(fd));
        drop(a);
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
