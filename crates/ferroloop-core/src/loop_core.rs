//! [`LoopCore`]: the state every driver of a loop shares, and the one
//! iteration (asyncio's `_run_once`), written once.
//!
//! Two drivers use it: the Rust [`crate::Scheduler`] (boxed closures) and the
//! Python binding's `_Loop` (Python callables). An iteration is split into
//! phases so that a driver can release its own locks (and the GIL) around the
//! blocking poll and run callbacks without holding a borrow of the core:
//!
//! 1. [`LoopCore::prepare`]: drop cancelled timers (lazily from the head, or
//!    by a compaction when most are cancelled; each is handed to the driver),
//!    and compute the poll timeout: zero when callbacks are ready or the loop
//!    is stopping, else the time to the earliest timer, else "block". Says
//!    whether the poll can be skipped (zero timeout, no I/O source, no
//!    pending wake-up).
//! 2. [`LoopCore::take_poller`] → [`Poller::poll`] → [`LoopCore::put_poller`]:
//!    the reactor leaves the core only for the poll itself. The driver does
//!    everything fallible (running signal handlers) before taking it or after
//!    putting it back, so the core never loses its reactor.
//! 3. [`LoopCore::collect`]: items injected by other threads, then readiness
//!    events (each turned into a ready item by the driver's `on_io`), then
//!    every timer due by `now + clock_resolution`, in `(deadline, sequence)`
//!    order, go to the ready queue. Returns how many items this iteration
//!    runs: exactly those ready now; what they schedule waits for the next
//!    iteration.
//! 4. The driver pops and runs that many items.
//!
//! ## Invariants
//! - Everything but the injector belongs to the thread running the loop.
//! - `reactor` is `None` only between `take_poller` and `put_poller`, and
//!   after [`LoopCore::close`].
//! - The fd table ([`crate::io_table::IoTable`]) and the reactor change
//!   together: a watcher is in the table exactly while its fd is registered.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use crate::io_table::{IoTable, Watcher};
use crate::reactor::{IoEvent, Polled};
use crate::{clock, Cancellable, Injector, Reactor, ReadyQueue, TimerHeap, MAXIMUM_POLL_TIMEOUT};

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

/// What a driver's `on_io` decided about one ready fd
/// ([`LoopCore::collect`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoOutcome {
    /// The reader is dead (a cancelled handle): unwatch that side.
    pub reader_dead: bool,
    /// The writer is dead: unwatch that side.
    pub writer_dead: bool,
    /// Re-arm the fd (level-triggered delivery, see `crate::reactor`).
    /// False when every watcher that fired is edge-aware: it reads or
    /// writes until `WouldBlock`, or re-queues itself when it stopped
    /// before, and saves the `EPOLL_CTL_MOD` of a re-arm.
    pub rearm: bool,
}

impl IoOutcome {
    /// Level-triggered delivery, nothing dead.
    pub const LEVEL: IoOutcome = IoOutcome {
        reader_dead: false,
        writer_dead: false,
        rearm: true,
    };
}

/// What [`LoopCore::prepare`] decided about this iteration's poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollPlan {
    /// Nothing can be ready in the reactor: go straight to collecting.
    Skip,
    /// Poll without blocking.
    Now,
    /// Poll, blocking for at most the duration (`None`: until an event).
    Block(Option<Duration>),
}

/// The reactor, out of the core for one poll (see the module docs).
pub struct Poller {
    reactor: Reactor,
    events: Vec<IoEvent>,
    result: io::Result<Polled>,
}

impl Poller {
    /// Polls the reactor; the driver may call this without any lock held.
    pub fn poll(&mut self, timeout: Option<Duration>) {
        let events = &mut self.events;
        self.result = self.reactor.poll(timeout, |e| events.push(e));
    }
}

/// Loop state shared by every driver: `T` is a ready item, `E` a timer
/// entry, `W` what an fd watcher holds.
pub struct LoopCore<T, E, W> {
    pub ready: ReadyQueue<T>,
    pub timers: TimerHeap<E>,
    pub io: IoTable<W>,
    reactor: Option<Reactor>,
    events: Vec<IoEvent>,
    /// Watchers `collect` unwatched (dead when their fd fired), for the
    /// driver to drop outside its own locks ([`LoopCore::take_unwatched`]).
    unwatched: Vec<W>,
    injector: Arc<Injector<T>>,
    pub stopping: bool,
    resolution: f64,
}

impl<T, E: Cancellable, W> LoopCore<T, E, W> {
    pub fn new() -> io::Result<Self> {
        let reactor = Reactor::new()?;
        let injector = Arc::new(Injector::new(reactor.waker()));
        Ok(Self {
            ready: ReadyQueue::new(),
            timers: TimerHeap::new(),
            io: IoTable::new(),
            reactor: Some(reactor),
            events: Vec::new(),
            unwatched: Vec::new(),
            injector,
            stopping: false,
            resolution: clock::resolution(),
        })
    }

    /// The clock resolution used to decide which timers are due.
    pub fn resolution(&self) -> f64 {
        self.resolution
    }

    /// The cross-thread queue (thread-safe handle).
    pub fn injector(&self) -> &Arc<Injector<T>> {
        &self.injector
    }

    /// Phase 1: purge cancelled timers (handed to `on_purged`) and plan the poll.
    pub fn prepare(&mut self, on_purged: impl FnMut(E)) -> PollPlan {
        self.timers.purge_cancelled(on_purged);
        let busy = !self.ready.is_empty() || self.stopping;
        let deadline = self.timers.next_deadline();
        // Read the clock only when the timeout depends on it.
        let now = if busy || deadline.is_none() {
            0.0
        } else {
            clock::monotonic()
        };
        match poll_timeout(busy, deadline, now) {
            Some(Duration::ZERO) => {
                let idle = self.io.is_empty()
                    && self.reactor.as_ref().is_some_and(|r| r.source_count() == 0)
                    && !self.injector.is_notified();
                if idle {
                    PollPlan::Skip
                } else {
                    PollPlan::Now
                }
            }
            t => PollPlan::Block(t),
        }
    }

    /// Phase 2a: the reactor leaves the core for one poll.
    ///
    /// # Panics
    /// If a poller is already out (a driver bug: polls do not nest).
    pub fn take_poller(&mut self) -> Poller {
        let reactor = self
            .reactor
            .take()
            .expect("poll is not re-entrant, and a closed core does not poll");
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        Poller {
            reactor,
            events,
            result: Ok(Polled::default()),
        }
    }

    /// Phase 2b: the reactor comes back; the poll's outcome is returned.
    pub fn put_poller(&mut self, poller: Poller) -> io::Result<Polled> {
        self.reactor = Some(poller.reactor);
        self.events = poller.events;
        poller.result
    }

    /// Phase 3: injected items, I/O readiness, then due timers; returns the
    /// number of items this iteration runs.
    ///
    /// For each ready fd, `on_io(watcher, event, ready)` queues
    /// what should run and returns an [`IoOutcome`]: the sides whose watcher
    /// is dead (asyncio drops a cancelled reader or writer when its fd
    /// fires) are unwatched; otherwise the fd is re-armed (the level-trigger
    /// bridge, see `crate::reactor`) unless its watchers are edge-aware. `on_due` turns a due timer entry into a ready item
    /// (`None` drops it). Unwatched watchers wait in
    /// [`LoopCore::take_unwatched`].
    pub fn collect(
        &mut self,
        mut on_io: impl FnMut(&Watcher<W>, &IoEvent, &mut ReadyQueue<T>) -> IoOutcome,
        mut on_due: impl FnMut(E) -> Option<T>,
    ) -> usize {
        for item in self.injector.drain_if_notified() {
            self.ready.push(item);
        }
        if !self.events.is_empty() {
            let mut events = std::mem::take(&mut self.events);
            for ev in events.drain(..) {
                let Some(w) = self.io.get(ev.token) else {
                    continue;
                };
                let (fd, read, write) = (w.fd(), w.wants_read(), w.wants_write());
                let out = on_io(w, &ev, &mut self.ready);
                for (is_dead, read) in [(out.reader_dead, true), (out.writer_dead, false)] {
                    if is_dead {
                        if let Ok(Some(w)) = self.set_watcher(fd, None, read) {
                            self.unwatched.push(w);
                        }
                    }
                }
                if out.rearm && !(out.reader_dead || out.writer_dead) {
                    if let Some(r) = self.reactor.as_mut() {
                        // A failure here means the fd was closed under its
                        // watcher: nothing more can be reported for it.
                        let _ = r.reregister(fd, ev.token, read, write);
                    }
                }
            }
            self.events = events;
        }
        if !self.timers.is_empty() {
            let end = clock::monotonic() + self.resolution;
            let ready = &mut self.ready;
            self.timers.pop_due(end, |e| {
                if let Some(item) = on_due(e) {
                    ready.push(item);
                }
            });
        }
        self.ready.begin_batch()
    }

    fn reactor_mut(&mut self) -> io::Result<&mut Reactor> {
        self.reactor
            .as_mut()
            .ok_or_else(|| io::Error::other("the reactor is polling"))
    }

    /// Watches `fd` for reading with `w`; returns the watcher it replaces.
    pub fn add_reader(&mut self, fd: RawFd, w: W) -> io::Result<Option<W>> {
        self.set_watcher(fd, Some(w), true)
    }

    /// Watches `fd` for writing with `w`; returns the watcher it replaces.
    pub fn add_writer(&mut self, fd: RawFd, w: W) -> io::Result<Option<W>> {
        self.set_watcher(fd, Some(w), false)
    }

    /// Stops watching `fd` for reading; returns the watcher removed.
    pub fn remove_reader(&mut self, fd: RawFd) -> io::Result<Option<W>> {
        self.set_watcher(fd, None, true)
    }

    /// Stops watching `fd` for writing; returns the watcher removed.
    pub fn remove_writer(&mut self, fd: RawFd) -> io::Result<Option<W>> {
        self.set_watcher(fd, None, false)
    }

    /// Unwatches every fd (the loop's `close()`), handing back the watchers.
    pub fn unwatch_all(&mut self) -> Vec<Watcher<W>> {
        let all = self.io.drain();
        if let Some(r) = self.reactor.as_mut() {
            for w in &all {
                // Clean up first, ignore the OS's answer: see `set_watcher`.
                let _ = r.deregister(w.fd());
            }
        }
        all
    }

    /// Releases the OS resources (the poller and the waker's eventfd), as
    /// asyncio's `close()` closes its selector: unwatches every fd first and
    /// hands back the watchers. The core cannot poll afterwards.
    pub fn close(&mut self) -> Vec<Watcher<W>> {
        let watched = self.unwatch_all();
        self.reactor = None;
        self.injector.close();
        watched
    }

    /// The watchers the last `collect` unwatched. A driver whose watchers
    /// run code when dropped (Python objects) drops them after releasing
    /// its hold on the core.
    pub fn take_unwatched(&mut self) -> Vec<W> {
        std::mem::take(&mut self.unwatched)
    }

    /// The write end of the reactor's signal wake-up pipe, for
    /// `signal.set_wakeup_fd` (see [`crate::signal_wake`]).
    pub fn signal_wake_fd(&self) -> io::Result<RawFd> {
        match self.reactor.as_ref() {
            Some(r) => Ok(r.signal_wake_fd()),
            None => Err(io::Error::other("the loop is closed or polling")),
        }
    }

    /// Number of I/O sources registered with the reactor.
    pub fn source_count(&self) -> usize {
        self.reactor.as_ref().map_or(0, Reactor::source_count)
    }

    /// The table changes first and the reactor follows. A removal always
    /// succeeds: when the reactor refuses it (the fd was closed already:
    /// `EBADF`, a common asyncio pattern), the table and the reactor's
    /// source count are cleaned up all the same, as asyncio's selector
    /// ignores that error. An addition the reactor refuses is undone and
    /// reported.
    fn set_watcher(&mut self, fd: RawFd, w: Option<W>, read: bool) -> io::Result<Option<W>> {
        let adding = w.is_some();
        let Some(change) = self.io.set(fd, w, read) else {
            return Ok(None); // removing what was not watched
        };
        let reactor = self.reactor_mut()?;
        let r = match (change.was_registered, change.interest()) {
            (false, Some((r, w))) => reactor.register(fd, change.token, r, w),
            (true, Some((r, w))) => reactor.reregister(fd, change.token, r, w),
            (true, None) => reactor.deregister(fd),
            (false, None) => Ok(()),
        };
        if change.interest().is_none() {
            self.io.release(change.token);
        }
        match r {
            Err(e) if adding => {
                self.io.undo(fd, change, read);
                Err(e)
            }
            _ => Ok(change.replaced),
        }
    }
}
