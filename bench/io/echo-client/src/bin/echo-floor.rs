//! Floor echo server for `bench/io/run.py`: the cost of the syscalls alone.
//!
//! ```text
//! echo-floor --addr tcp:127.0.0.1:0|unix:/path|udp:127.0.0.1:0 [--max-seconds 600]
//!            [--tls CERT,KEY]
//! ```
//!
//! With `--tls` (TCP only) every connection is TLS 1.3 on the system's
//! OpenSSL over memory buffers (`echo_client::tls_floor`: one read, one
//! write per message, as the Python servers), and `READY` says
//! `tls:HOST:PORT`.
//!
//! For UDP: per readiness event, `recvfrom` until `EAGAIN`, each datagram
//! sent straight back with one `sendto` (a full send buffer drops it, as a
//! UDP server may; the client's ping-pong keeps that from happening).
//!
//! One thread, one level-triggered epoll, nonblocking sockets: per readiness
//! event one `read` into a 256 KiB buffer, then one `write` of what was read
//! (the rest, if the socket takes only part of it, goes out on EPOLLOUT while
//! reading pauses). Prints `READY <addr>` when listening (the port filled in),
//! runs until stdin closes (or `--max-seconds`), then prints one JSON line
//! with its own CPU time, the same form as bench/io/servers.py:
//! `{"utime": s, "stime": s, "cpu": s}`.

use std::io::{self, ErrorKind, Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use echo_client::tls_floor::{self, Next, TlsConn};
use echo_client::{cpu_times, parse_args, Addr, Epoll, Listener, Stream, IN, OUT};

const BUF: usize = 256 * 1024;
const LISTEN: u64 = u64::MAX;
const STDIN: u64 = u64::MAX - 1;
/// Connections accepted per listener event (the rest on the next event).
const ACCEPT_BATCH: usize = 256;

struct Conn {
    s: Stream,
    buf: Vec<u8>,
    /// Bytes `buf[start..end]` read but not yet written back.
    start: usize,
    end: usize,
}

enum Step {
    Keep,
    Close,
}

/// A connection: plain echo, or TLS echo (`--tls`; with whether the fd is
/// watched for writable instead of readable).
enum AnyConn {
    Plain(Conn),
    Tls(TlsConn, bool),
}

impl AnyConn {
    fn fd(&self) -> std::os::fd::RawFd {
        match self {
            AnyConn::Plain(c) => c.s.fd(),
            AnyConn::Tls(c, _) => c.fd(),
        }
    }

    fn on_event(&mut self, ep: &Epoll, token: u64, ev: u32) -> io::Result<Step> {
        match self {
            AnyConn::Plain(c) => c.on_event(ep, token, ev),
            AnyConn::Tls(c, writing) => {
                let want_write = match c.on_event() {
                    Next::Read => false,
                    Next::Write => true,
                    Next::Close => return Ok(Step::Close),
                };
                if want_write != *writing {
                    *writing = want_write;
                    ep.modify(c.fd(), if want_write { OUT } else { IN }, token)?;
                }
                Ok(Step::Keep)
            }
        }
    }
}

impl Conn {
    /// Writes out the pending bytes; true when none are left.
    fn flush(&mut self) -> io::Result<bool> {
        // Bounded: each pass writes >= 1 byte or leaves.
        while self.start < self.end {
            match self.s.write(&self.buf[self.start..self.end]) {
                Ok(0) => return Err(io::Error::new(ErrorKind::WriteZero, "write returned 0")),
                Ok(n) => self.start += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.start = 0;
        self.end = 0;
        Ok(true)
    }

    fn on_event(&mut self, ep: &Epoll, token: u64, ev: u32) -> io::Result<Step> {
        if self.end > self.start {
            // Waiting to write the rest: reading stays off until it is out.
            if ev & OUT != 0 && self.flush()? {
                ep.modify(self.s.fd(), IN, token)?;
            }
            return Ok(Step::Keep);
        }
        let n = match self.s.read(&mut self.buf) {
            Ok(0) => return Ok(Step::Close),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                return Ok(Step::Keep)
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(Step::Close),
            Err(e) => return Err(e),
        };
        self.start = 0;
        self.end = n;
        if !self.flush()? {
            ep.modify(self.s.fd(), OUT, token)?;
        }
        Ok(Step::Keep)
    }
}

fn run() -> Result<(), String> {
    let mut addr = None;
    let mut max_seconds = 600.0f64;
    let mut tls = None;
    for (k, v) in parse_args(std::env::args().skip(1), &[])? {
        match k.as_str() {
            "addr" => addr = Some(Addr::parse(&v)?),
            "tls" => {
                let (cert, key) = v.split_once(',').ok_or("--tls: expected CERT,KEY")?;
                tls = Some(tls_floor::server_context(cert, key)?);
            }
            "max-seconds" => {
                max_seconds = v
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x > 0.0 && *x <= 86_400.0)
                    .ok_or_else(|| format!("--max-seconds: bad value {v:?}"))?
            }
            _ => return Err(format!("unknown option --{k}")),
        }
    }
    let addr = addr.ok_or("--addr is required")?;
    if tls.is_some() && !matches!(addr, Addr::Tcp(_)) {
        return Err("--tls needs a tcp: address".into());
    }
    let err = |e: io::Error| e.to_string();
    let (listener, bound) = addr.listen().map_err(err)?;
    let mut ep = Epoll::new(1024).map_err(err)?;
    ep.add(listener.fd(), IN, LISTEN).map_err(err)?;
    ep.add(0, IN, STDIN).map_err(err)?;
    let mut conns: Vec<Option<AnyConn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    {
        let mut out = io::stdout().lock();
        if tls.is_some() {
            let hp = bound.strip_prefix("tcp:").unwrap_or(&bound);
            writeln!(out, "READY tls:{hp}").map_err(err)?;
        } else {
            writeln!(out, "READY {bound}").map_err(err)?;
        }
        out.flush().map_err(err)?;
    }

    let end = Instant::now() + Duration::from_secs_f64(max_seconds);
    let mut ready: Vec<(u64, u32)> = Vec::with_capacity(1024);
    let mut stop = false;
    let mut udp_buf = vec![0u8; 65_536];
    // Bounded in time by `end` (each wait is at most 100 ms).
    while !stop && Instant::now() < end {
        ready.clear();
        ready.extend(ep.wait(100).map_err(err)?);
        for &(token, ev) in &ready {
            match token {
                STDIN => {
                    let mut b = [0u8; 256];
                    match io::stdin().lock().read(&mut b) {
                        Ok(0) | Err(_) => stop = true, // closed: the run is over
                        Ok(_) => {}                    // anything written is ignored
                    }
                }
                LISTEN if matches!(listener, Listener::Udp(_)) => {
                    let Listener::Udp(u) = &listener else {
                        unreachable!()
                    };
                    echo_datagrams(u, &mut udp_buf).map_err(err)?;
                }
                LISTEN => {
                    for _ in 0..ACCEPT_BATCH {
                        let Some(s) = listener.accept().map_err(err)? else {
                            break;
                        };
                        let i = free.pop().unwrap_or_else(|| {
                            conns.push(None);
                            conns.len() - 1
                        });
                        ep.add(s.fd(), IN, i as u64).map_err(err)?;
                        conns[i] = match (&tls, s) {
                            (Some(ctx), Stream::Tcp(t)) => match TlsConn::accept(ctx, t, BUF) {
                                Ok(c) => Some(AnyConn::Tls(c, false)),
                                Err(_) => None, // closed: the client sees the failure
                            },
                            (_, s) => Some(AnyConn::Plain(Conn {
                                s,
                                buf: vec![0; BUF],
                                start: 0,
                                end: 0,
                            })),
                        };
                        // The client's hello is likely queued already: read
                        // it now rather than on the next wait.
                        let first = match &mut conns[i] {
                            Some(c @ AnyConn::Tls(..)) => c.on_event(&ep, i as u64, IN),
                            _ => Ok(Step::Keep),
                        };
                        if conns[i].is_none() || !matches!(first, Ok(Step::Keep)) {
                            conns[i] = None;
                            free.push(i);
                        }
                    }
                }
                t => {
                    let i = t as usize;
                    let Some(c) = conns.get_mut(i).and_then(Option::as_mut) else {
                        continue;
                    };
                    let step = c.on_event(&ep, t, ev).unwrap_or(Step::Close);
                    if let Step::Close = step {
                        let _ = ep.delete(c.fd());
                        conns[i] = None; // closes the socket
                        free.push(i);
                    }
                }
            }
        }
    }
    drop(conns);
    if let Addr::Unix(p) = &addr {
        let _ = std::fs::remove_file(p);
    }
    let (u, s) = cpu_times();
    println!(
        "{{\"utime\": {u:.6}, \"stime\": {s:.6}, \"cpu\": {:.6}}}",
        u + s
    );
    Ok(())
}

/// Echoes every datagram queued on `sock` (until `EAGAIN`).
fn echo_datagrams(sock: &std::net::UdpSocket, buf: &mut [u8]) -> io::Result<()> {
    // Bounded by the socket's receive queue: each pass consumes a datagram.
    loop {
        match sock.recv_from(buf) {
            Ok((n, peer)) => match sock.send_to(&buf[..n], peer) {
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(e) => return Err(e),
            },
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // An ICMP error queued for an earlier send: reported by this read.
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
            Err(e) => return Err(e),
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo-floor: {e}");
            ExitCode::FAILURE
        }
    }
}
