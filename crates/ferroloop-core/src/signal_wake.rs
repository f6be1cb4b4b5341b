//! The signal wake-up pipe: lets a signal end a blocking poll even when it
//! arrives just *before* the poll starts.
//!
//! A signal that interrupts `epoll_wait` makes it fail with `EINTR`, and the
//! driver then runs the signal handlers. But a signal delivered after the
//! driver last checked for signals and before `epoll_wait` began interrupts
//! nothing: the poll sleeps until its timeout (forever, with no timer), and
//! Ctrl-C seems ignored. asyncio has the same window unless a signal handler
//! is installed (its self-pipe). The cure is the one CPython offers:
//! `signal.set_wakeup_fd(fd)` makes the C-level signal handler write a byte
//! to `fd`; with the pipe's read end in the poll set, that byte ends the
//! poll whenever the signal came.
//!
//! ## Invariants
//! - Both ends are nonblocking and close-on-exec; the reactor makes the pipe
//!   with itself and it is closed with its [`SignalWake`].
//! - The read end is registered by the reactor under its own reserved token
//!   and is not counted as an I/O source: the loop may still skip a
//!   zero-timeout poll (signal handlers run between Python callbacks
//!   anyway; the pipe only matters to a blocking poll).
//! - [`SignalWake::drain`] reads until `WouldBlock` (the registration is
//!   edge-triggered): the bytes themselves carry nothing the loop needs.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A nonblocking pipe whose write end is handed to `signal.set_wakeup_fd`.
#[derive(Debug)]
pub struct SignalWake {
    read: OwnedFd,
    write: OwnedFd,
}

impl SignalWake {
    pub fn new() -> io::Result<Self> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded: both are new descriptors nobody else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Self { read, write })
    }

    /// The end the signal handler writes to.
    pub fn write_fd(&self) -> RawFd {
        self.write.as_raw_fd()
    }

    /// The end the reactor watches.
    pub fn read_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// Empties the pipe; returns whether anything was in it.
    pub fn drain(&self) -> bool {
        let mut buf = [0u8; 256];
        let mut any = false;
        // Bounded: the pipe holds at most its capacity; each pass reads >= 1 byte.
        loop {
            // SAFETY: `buf` is writable for its length; the fd is ours and open.
            let n =
                unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                any = true;
                continue;
            }
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return any; // 0 (cannot happen: we hold the write end) or WouldBlock
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_reports_and_empties() {
        let w = SignalWake::new().unwrap();
        assert!(!w.drain());
        for _ in 0..3 {
            // SAFETY: one byte from a live buffer to our open write end.
            let n = unsafe { libc::write(w.write_fd(), [2u8].as_ptr().cast(), 1) };
            assert_eq!(n, 1);
        }
        assert!(w.drain());
        assert!(!w.drain());
    }
}
