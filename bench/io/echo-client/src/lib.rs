//! Shared pieces of the I/O benchmark's compiled side (`bench/io/run.py`):
//! address parsing, a stream over TCP, a Unix socket, a connected UDP
//! socket (one datagram per message) or TLS over TCP (`tls`), a minimal epoll
//! wrapper and the process's own CPU time.
//!
//! Everything here is deliberately thin: the client and the floor server
//! must cost as few instructions per message as possible, so that what the
//! benchmark measures is the Python server on the other end.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

pub mod tls;
pub mod tls_floor;

/// `tcp:HOST:PORT`, `unix:/path`, `udp:HOST:PORT` or `tls:HOST:PORT`.
#[derive(Clone, Debug)]
pub enum Addr {
    Tcp(String),
    Unix(String),
    Udp(String),
    Tls(String),
}

impl Addr {
    pub fn parse(s: &str) -> Result<Addr, String> {
        if let Some(rest) = s.strip_prefix("tcp:") {
            Ok(Addr::Tcp(rest.to_string()))
        } else if let Some(rest) = s.strip_prefix("unix:") {
            Ok(Addr::Unix(rest.to_string()))
        } else if let Some(rest) = s.strip_prefix("udp:") {
            Ok(Addr::Udp(rest.to_string()))
        } else if let Some(rest) = s.strip_prefix("tls:") {
            Ok(Addr::Tls(rest.to_string()))
        } else {
            Err(format!(
                "address {s:?}: expected tcp:HOST:PORT, unix:/path, udp:HOST:PORT or tls:HOST:PORT"
            ))
        }
    }

    pub fn connect(&self, timeout: Duration) -> io::Result<Stream> {
        match self {
            Addr::Tcp(hp) => {
                let sa = resolve(hp)?;
                let s = TcpStream::connect_timeout(&sa, timeout)?;
                s.set_nodelay(true)?;
                s.set_nonblocking(true)?;
                Ok(Stream::Tcp(s))
            }
            Addr::Unix(p) => {
                let s = UnixStream::connect(p)?;
                s.set_nonblocking(true)?;
                Ok(Stream::Unix(s))
            }
            Addr::Tls(hp) => {
                let sa = resolve(hp)?;
                let s = TcpStream::connect_timeout(&sa, timeout)?;
                s.set_nodelay(true)?;
                Ok(Stream::Tls(Box::new(crate::tls::TlsStream::handshake(s)?)))
            }
            Addr::Udp(hp) => {
                let sa = resolve(hp)?;
                let local = if sa.is_ipv4() {
                    "127.0.0.1:0"
                } else {
                    "[::1]:0"
                };
                let s = UdpSocket::bind(local)?;
                s.connect(sa)?;
                s.set_nonblocking(true)?;
                Ok(Stream::Udp(s))
            }
        }
    }

    /// Binds a nonblocking listener; returns it with the address actually
    /// bound (`tcp:127.0.0.1:0` gets its port filled in).
    pub fn listen(&self) -> io::Result<(Listener, String)> {
        match self {
            Addr::Tcp(hp) => {
                let l = TcpListener::bind(hp.as_str())?;
                l.set_nonblocking(true)?;
                let bound = format!("tcp:{}", l.local_addr()?);
                Ok((Listener::Tcp(l), bound))
            }
            Addr::Unix(p) => {
                let _ = std::fs::remove_file(p); // a stale socket file from a killed run
                let l = UnixListener::bind(p)?;
                l.set_nonblocking(true)?;
                Ok((Listener::Unix(l), format!("unix:{p}")))
            }
            Addr::Tls(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no TLS floor server: the TLS floor is not built yet",
            )),
            Addr::Udp(hp) => {
                let s = UdpSocket::bind(hp.as_str())?;
                s.set_nonblocking(true)?;
                let bound = format!("udp:{}", s.local_addr()?);
                Ok((Listener::Udp(s), bound))
            }
        }
    }
}

fn resolve(host_port: &str) -> io::Result<std::net::SocketAddr> {
    host_port
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address resolved"))
}

/// A connected, nonblocking stream (for UDP: one datagram per read/write).
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Udp(UdpSocket),
    Tls(Box<crate::tls::TlsStream>),
}

impl Stream {
    #[inline]
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
            Stream::Udp(s) => s.recv(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }

    #[inline]
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
            Stream::Udp(s) => s.send(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    pub fn fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Udp(s) => s.as_raw_fd(),
            Stream::Tls(s) => s.fd(),
        }
    }

    /// Sends what a TLS stream has encrypted but not sent yet; false while
    /// some is left (the caller waits for EPOLLOUT). Plain streams have none.
    pub fn flush(&mut self) -> io::Result<bool> {
        match self {
            Stream::Tls(s) => s.flush_records(),
            _ => Ok(true),
        }
    }
}

/// A nonblocking listening socket (for UDP: the bound socket itself, which
/// has no connections to accept).
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
    Udp(UdpSocket),
}

impl Listener {
    /// One nonblocking accept; `Ok(None)` when no connection is pending.
    pub fn accept(&self) -> io::Result<Option<Stream>> {
        let r = match self {
            Listener::Tcp(l) => l.accept().and_then(|(s, _)| {
                s.set_nodelay(true)?;
                s.set_nonblocking(true)?;
                Ok(Stream::Tcp(s))
            }),
            Listener::Unix(l) => l.accept().and_then(|(s, _)| {
                s.set_nonblocking(true)?;
                Ok(Stream::Unix(s))
            }),
            Listener::Udp(_) => return Ok(None),
        };
        match r {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn fd(&self) -> RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l) => l.as_raw_fd(),
            Listener::Udp(l) => l.as_raw_fd(),
        }
    }
}

pub const IN: u32 = libc::EPOLLIN as u32;
pub const OUT: u32 = libc::EPOLLOUT as u32;
pub const HUP: u32 = (libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLRDHUP) as u32;

/// Level-triggered epoll; tokens are `u64`s chosen by the caller.
pub struct Epoll {
    fd: RawFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    pub fn new(capacity: usize) -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers; a negative result is checked below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let events = vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)];
        Ok(Epoll { fd, events })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `self.fd` is our open epoll fd; `ev` is a valid epoll_event that
        // outlives the call (the kernel copies it).
        let r = unsafe { libc::epoll_ctl(self.fd, op, fd, &mut ev) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    pub fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    pub fn modify(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits up to `timeout_ms`; returns the ready `(token, events)` pairs.
    /// EINTR counts as "nothing ready".
    pub fn wait(&mut self, timeout_ms: i32) -> io::Result<impl Iterator<Item = (u64, u32)> + '_> {
        let cap = libc::c_int::try_from(self.events.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `events` is a live buffer of `cap` epoll_event slots, which is
        // all the kernel writes to.
        let n = unsafe { libc::epoll_wait(self.fd, self.events.as_mut_ptr(), cap, timeout_ms) };
        let n = if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
            0
        } else {
            n as usize
        };
        Ok(self.events[..n].iter().map(|e| (e.u64, e.events)))
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: we own `self.fd` and close it exactly once.
        unsafe {
            libc::close(self.fd);
        }
    }
}

/// This process's (user, system) CPU seconds, all threads (`getrusage(RUSAGE_SELF)`).
pub fn cpu_times() -> (f64, f64) {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage; RUSAGE_SELF is always accepted.
    unsafe {
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// Waits until stdin has data or is closed, at most `timeout_ms`; true if readable/closed.
pub fn stdin_ready(timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd for the duration of the call.
    let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    r > 0
}

/// Parses `--name value` pairs; flags listed in `switches` take no value.
pub fn parse_args(
    args: impl Iterator<Item = String>,
    switches: &[&str],
) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut it = args;
    while let Some(a) = it.next() {
        let Some(name) = a.strip_prefix("--") else {
            return Err(format!("unexpected argument {a:?}"));
        };
        if switches.contains(&name) {
            out.push((name.to_string(), String::new()));
        } else {
            let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
            out.push((name.to_string(), v));
        }
    }
    Ok(out)
}
