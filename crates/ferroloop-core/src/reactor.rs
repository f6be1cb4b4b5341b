//! The reactor: an OS readiness poller (mio: epoll on Linux, kqueue on BSD
//! and macOS) with a reserved token for the cross-thread waker.
//!
//! Contract with the loop:
//! - [`Reactor::poll`] blocks for at most `timeout` (`None`: until an event
//!   or a wake-up) and returns the I/O events that became ready. A signal
//!   interrupting the wait (`EINTR`) is not an error: it returns no event, so
//!   the caller can run its signal handlers and iterate again.
//! - Wake-ups from [`Reactor::waker`] are absorbed here and only reported
//!   through [`Polled::woken`]; they never surface as I/O events.
//! - A source registered with a token keeps it until deregistered; the
//!   loop maps tokens to its own callbacks (the I/O issue builds on this).

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

/// Token reserved for the waker.
pub const WAKER_TOKEN: Token = Token(usize::MAX);

/// One I/O readiness event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoEvent {
    pub token: usize,
    pub readable: bool,
    pub writable: bool,
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
}

impl Reactor {
    pub fn new() -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER_TOKEN)?);
        Ok(Self {
            poll,
            events: Events::with_capacity(1024),
            waker,
            sources: 0,
        })
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

    /// Changes what `fd` is watched for.
    pub fn reregister(
        &mut self,
        fd: RawFd,
        token: usize,
        readable: bool,
        writable: bool,
    ) -> io::Result<()> {
        let interest = interest(readable, writable)?;
        self.poll
            .registry()
            .reregister(&mut SourceFd(&fd), Token(token), interest)
    }

    /// Stops watching `fd`.
    pub fn deregister(&mut self, fd: RawFd) -> io::Result<()> {
        self.poll.registry().deregister(&mut SourceFd(&fd))?;
        self.sources = self.sources.saturating_sub(1);
        Ok(())
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
            on_event(IoEvent {
                token: ev.token().0,
                readable: ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                writable: ev.is_writable() || ev.is_write_closed() || ev.is_error(),
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
}
