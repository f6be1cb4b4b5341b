//! The reactor: an OS readiness poller (mio: epoll on Linux, kqueue on BSD
//! and macOS) with a reserved token for the cross-thread waker.
//!
//! Contract with the loop:
//! - [`Reactor::poll`] blocks for at most `timeout` (`None`: until an event
//!   or a wake-up) and returns the I/O events that became ready. A signal
//!   interrupting the wait (`EINTR`) is not an error: it returns no event, so
//!   the caller can run its signal handlers and iterate again.
//! - Wake-ups from [`Reactor::waker`] are absorbed here and only reported
//!   through [`Polled::woken`]; they never surface as I/O events. Bytes on
//!   the signal wake-up pipe ([`Reactor::signal_wake_fd`]) are drained here
//!   and reported as [`Polled::interrupted`], like an `EINTR`.
//! - A source registered with a token keeps it until deregistered; the
//!   loop maps tokens to its watchers ([`crate::io_table`]).
//! - [`Reactor::deregister`] cleans up first and reports after: the source
//!   count goes down even when the OS refuses (`EBADF`: the fd was closed
//!   before it was unwatched), so the idle-poll skip keeps working.
//!
//! ## Edge-triggered epoll, level-triggered asyncio: the bridge
//! mio registers every source edge-triggered (`EPOLLET`): after an event,
//! no further event comes for that fd until its readiness changes, so its
//! owner must read or write until `WouldBlock`. asyncio's `add_reader` /
//! `add_writer` are level-triggered: the callback runs in every iteration
//! while the fd is ready, whether or not it drained it. The rule, kept in
//! one place ([`crate::LoopCore::collect`]):
//! - after the loop dispatches an event of a watched fd, it re-arms the fd
//!   with [`Reactor::reregister`] (`EPOLL_CTL_MOD` with the same interest). The
//!   kernel re-checks readiness on every `MOD` and queues a new event if the
//!   fd is still ready, so the next poll reports it again: level-triggered
//!   delivery, one event per ready fd per iteration (asyncio's fairness);
//! - an fd that became not-ready stays silent until its next edge;
//! - the exception, chosen by the driver per event
//!   ([`crate::loop_core::IoOutcome::rearm`]): an *edge-aware* watcher (the
//!   binding's stream transports) is not re-armed, saving a syscall per
//!   event. It must then never stop while the fd may still be ready without
//!   arranging its own next turn: it writes until `WouldBlock` (or until
//!   its queue is empty), and after a read that filled its whole buffer it
//!   queues another read for the next iteration (one read per ready fd per
//!   iteration still). An event saying the peer closed or the fd failed
//!   ([`IoEvent::closed`]) is re-armed all the same: data and the FIN
//!   that arrive together make one edge, and after the data is read the
//!   pending EOF would otherwise never be reported. Any change of interest (`register`/`reregister`)
//!   re-checks readiness, so pausing and resuming lose no event.
//!
//! Facts about epoll this relies on: readiness belongs to the open file
//! description, not the fd number, so a `dup` of a watched fd keeps the
//! registration alive after the original is closed (asyncio has the same
//! trap); closing the last descriptor of a file removes it from the epoll
//! set silently, which is why deregistering a closed fd fails with `EBADF`
//! and must still clean up; a forked child shares the parent's epoll
//! instance, so a loop must not be used across `fork()`.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::signal_wake::SignalWake;

/// Token reserved for the waker.
pub const WAKER_TOKEN: Token = Token(usize::MAX);
/// Token reserved for the signal wake-up pipe (`crate::signal_wake`).
pub const SIGNAL_TOKEN: Token = Token(usize::MAX - 1);

/// One I/O readiness event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoEvent {
    pub token: usize,
    pub readable: bool,
    pub writable: bool,
    /// The peer closed its side or the fd has an error: the fd stays
    /// readable (EOF, the error) after any data is read, and no new edge
    /// will say so. An edge-aware watcher re-arms on such an event.
    pub closed: bool,
}

/// What one poll observed.
#[derive(Debug, Default)]
pub struct Polled {
    /// The waker was triggered (another thread injected work).
    pub woken: bool,
    /// The wait was interrupted by a signal.
    pub interrupted: bool,
}

/// OS poller plus waker; owned by whoever runs the loop.
pub struct Reactor {
    poll: Poll,
    events: Events,
    waker: Arc<Waker>,
    sources: usize,
    signal_wake: SignalWake,
}

impl Reactor {
    pub fn new() -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER_TOKEN)?);
        let signal_wake = SignalWake::new()?;
        poll.registry().register(
            &mut SourceFd(&signal_wake.read_fd()),
            SIGNAL_TOKEN,
            Interest::READABLE,
        )?;
        Ok(Self {
            poll,
            events: Events::with_capacity(1024),
            waker,
            sources: 0,
            signal_wake,
        })
    }

    /// The write end of the signal wake-up pipe: see `crate::signal_wake`.
    /// Made with the reactor (as asyncio's loop makes its self-pipe), so a
    /// loop's fds do not change once it runs.
    pub fn signal_wake_fd(&self) -> RawFd {
        self.signal_wake.write_fd()
    }

    /// A handle other threads use to interrupt [`Reactor::poll`].
    pub fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    /// Number of registered I/O sources (the waker excluded). With none, a
    /// zero-timeout poll can be skipped: nothing but the waker could be ready.
    pub fn source_count(&self) -> usize {
        self.sources
    }

    /// Watches `fd` for the given readiness under `token`.
    pub fn register(
        &mut self,
        fd: RawFd,
        token: usize,
        readable: bool,
        writable: bool,
    ) -> io::Result<()> {
        let interest = interest(readable, writable)?;
        self.poll
            .registry()
            .register(&mut SourceFd(&fd), Token(token), interest)?;
        self.sources += 1;
        Ok(())
    }

    /// Changes what `fd` is watched for. With the same interest, it re-arms
    /// the edge-triggered registration: a still-ready fd is reported again
    /// by the next poll (the level-trigger bridge above).
    ///
    /// If the OS forgot `fd` (`ENOENT`: its file was closed, which removes
    /// it from the epoll set, and the number now names another file), `fd`
    /// is registered again: the caller still counts it as registered.
    pub fn reregister(
        &mut self,
        fd: RawFd,
        token: usize,
        readable: bool,
        writable: bool,
    ) -> io::Result<()> {
        let interest = interest(readable, writable)?;
        let registry = self.poll.registry();
        match registry.reregister(&mut SourceFd(&fd), Token(token), interest) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                registry.register(&mut SourceFd(&fd), Token(token), interest)
            }
            r => r,
        }
    }

    /// Stops watching `fd`. The count goes down whatever the OS says: an
    /// fd closed before this call (`EBADF`) is no longer watched either.
    pub fn deregister(&mut self, fd: RawFd) -> io::Result<()> {
        self.sources = self.sources.saturating_sub(1);
        self.poll.registry().deregister(&mut SourceFd(&fd))
    }

    /// Waits for readiness; I/O events are passed to `on_event`.
    pub fn poll(
        &mut self,
        timeout: Option<Duration>,
        mut on_event: impl FnMut(IoEvent),
    ) -> io::Result<Polled> {
        let mut polled = Polled::default();
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                polled.interrupted = true;
                return Ok(polled);
            }
            Err(e) => return Err(e),
        }
        for ev in self.events.iter() {
            if ev.token() == WAKER_TOKEN {
                polled.woken = true;
                continue;
            }
            if ev.token() == SIGNAL_TOKEN {
                self.signal_wake.drain();
                polled.interrupted = true;
                continue;
            }
            on_event(IoEvent {
                token: ev.token().0,
                readable: ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                writable: ev.is_writable() || ev.is_write_closed() || ev.is_error(),
                closed: ev.is_read_closed() || ev.is_error(),
            });
        }
        Ok(polled)
    }
}

fn interest(readable: bool, writable: bool) -> io::Result<Interest> {
    match (readable, writable) {
        (true, true) => Ok(Interest::READABLE | Interest::WRITABLE),
        (true, false) => Ok(Interest::READABLE),
        (false, true) => Ok(Interest::WRITABLE),
        (false, false) => Err(io::Error::new(io::ErrorKind::InvalidInput, "no interest")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

    #[test]
    fn times_out_without_events() {
        let mut r = Reactor::new().unwrap();
        let t0 = Instant::now();
        let p = r
            .poll(Some(Duration::from_millis(20)), |_| panic!("no event"))
            .unwrap();
        assert!(!p.woken);
        assert!(t0.elapsed() >= Duration::from_millis(15));
    }

    #[test]
    fn waker_interrupts_a_blocking_poll() {
        let mut r = Reactor::new().unwrap();
        let w = r.waker();
        let th = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            w.wake().unwrap();
        });
        let p = r.poll(None, |_| panic!("no io event")).unwrap();
        assert!(p.woken);
        th.join().unwrap();
    }

    #[test]
    fn reports_readable_fd() {
        let mut r = Reactor::new().unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        r.register(a.as_raw_fd(), 7, true, false).unwrap();
        assert_eq!(r.source_count(), 1);
        b.write_all(b"x").unwrap();
        let mut seen = vec![];
        r.poll(Some(Duration::from_secs(1)), |e| seen.push(e))
            .unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].token, 7);
        assert!(seen[0].readable);
        r.deregister(a.as_raw_fd()).unwrap();
        assert_eq!(r.source_count(), 0);
    }

    #[test]
    fn deregister_of_a_closed_fd_still_counts_down() {
        let mut r = Reactor::new().unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        r.register(fd, 1, true, false).unwrap();
        drop(a); // closed before it is unwatched: a common asyncio pattern
                 // EBADF, or ENOENT if a parallel test reused the number meanwhile
        let err = r.deregister(fd).unwrap_err();
        assert!(matches!(
            err.raw_os_error(),
            Some(libc::EBADF | libc::ENOENT)
        ));
        assert_eq!(r.source_count(), 0);
    }

    #[test]
    fn reregister_of_a_forgotten_fd_registers_it_again() {
        let mut r = Reactor::new().unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        r.register(fd, 4, true, false).unwrap();
        drop(a); // the epoll set forgets the file
        let (c, mut d) = UnixStream::pair().unwrap();
        // The lowest free number is the one `a` had, unless a test running
        // in parallel took it meanwhile (then there is nothing to check).
        if c.as_raw_fd() != fd {
            return;
        }
        c.set_nonblocking(true).unwrap();
        r.reregister(fd, 4, true, false).unwrap();
        assert_eq!(r.source_count(), 1);
        d.write_all(b"x").unwrap();
        let mut seen = vec![];
        r.poll(Some(Duration::from_secs(1)), |e| seen.push(e.token))
            .unwrap();
        assert_eq!(seen, vec![4]);
    }

    #[test]
    fn rearm_reports_a_still_ready_fd_again() {
        let mut r = Reactor::new().unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        r.register(a.as_raw_fd(), 3, true, false).unwrap();
        b.write_all(b"x").unwrap();
        let mut n = 0;
        let short = Some(Duration::from_millis(50));
        r.poll(short, |_| n += 1).unwrap();
        assert_eq!(n, 1);
        // edge-triggered: not reported again while nothing changes...
        r.poll(Some(Duration::ZERO), |_| n += 1).unwrap();
        assert_eq!(n, 1);
        // ...until re-armed, while the byte is still unread
        r.reregister(a.as_raw_fd(), 3, true, false).unwrap();
        r.poll(short, |_| n += 1).unwrap();
        assert_eq!(n, 2);
    }
}
