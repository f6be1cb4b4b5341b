//! Ping-pong echo load client for `bench/io/run.py`.
//!
//! ```text
//! echo-client --addr tcp:127.0.0.1:PORT|unix:/path|udp:...|tls:... [--conns 10] [--msg 1024]
//!             [--duration 3] [--warmup 0.5] [--max-messages 50000000]
//!             [--wait-stdin] [--no-verify]
//! ```
//!
//! Opens `conns` connections; on each, sends a `msg`-byte message and waits for
//! the whole echo (checked: see `Conn::echo_ok`) before sending the next. One thread,
//! one level-triggered epoll: per message the client makes one `write` and one
//! `read` (more only when the kernel splits a large message), so its CPU use
//! stays well below the Python server's.
//!
//! Output on stdout: a `GO` line when the warm-up ends and the measured window
//! starts (the parent reads the server's CPU time then), then, once the
//! window is over and every in-flight message has come back, one JSON line:
//! `{"messages", "bytes", "seconds", "msgs_per_sec", "p50_us", "p99_us",
//! "max_us", "client_cpu_s", "client_cpu_share", ...}`, all over the window only.
//! With `--wait-stdin` it then keeps its connections open until stdin has a
//! line or closes (at most 60 s), so the server's CPU can be read before the
//! connections are torn down.

use std::io::{self, ErrorKind, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use echo_client::{cpu_times, parse_args, stdin_ready, Addr, Epoll, Stream, IN, OUT};

/// Latency histogram: 1 µs buckets up to 100 ms, then one overflow bucket.
const HIST_US: usize = 100_000;
/// After the window ends, in-flight messages get this long to come back.
const DRAIN: Duration = Duration::from_secs(5);

struct Conn {
    s: Stream,
    send: Vec<u8>,
    recv: Vec<u8>,
    written: usize,
    received: usize,
    started: Instant,
    seq: u64,
    busy: bool,
    want_out: bool,
}

impl Conn {
    /// Writes as much of the current message as the socket takes, and asks
    /// for EPOLLOUT only while part of it is left.
    fn pump_write(&mut self, ep: &Epoll, token: u64) -> io::Result<()> {
        let mut flushed = self.s.flush()?; // TLS records left from before
                                           // Bounded: each pass writes >= 1 byte or leaves the loop.
        while self.written < self.send.len() {
            match self.s.write(&self.send[self.written..]) {
                Ok(0) => return Err(io::Error::new(ErrorKind::WriteZero, "write returned 0")),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.written == self.send.len() {
            flushed = self.s.flush()?;
        }
        let want = self.written < self.send.len() || !flushed;
        if want != self.want_out {
            ep.modify(self.s.fd(), if want { IN | OUT } else { IN }, token)?;
            self.want_out = want;
        }
        Ok(())
    }

    fn start(&mut self, ep: &Epoll, token: u64) -> io::Result<()> {
        self.seq += 1;
        // The sequence number leads each message, so a stale or repeated echo fails the check.
        let n = self.send.len().min(8);
        self.send[..n].copy_from_slice(&self.seq.to_le_bytes()[..n]);
        self.written = 0;
        self.received = 0;
        self.busy = true;
        self.started = Instant::now();
        self.pump_write(ep, token)
    }

    /// One read. Returns true when the message is complete (sent and fully echoed).
    fn on_readable(&mut self) -> io::Result<bool> {
        if self.received == self.recv.len() {
            return Err(io::Error::other(
                "server sent more bytes than were sent to it",
            ));
        }
        match self.s.read(&mut self.recv[self.received..]) {
            Ok(0) => return Err(io::Error::other("server closed the connection")),
            Ok(n) => self.received += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(e) => return Err(e),
        }
        if self.received > self.written {
            return Err(io::Error::other("server echoed bytes that were never sent"));
        }
        Ok(self.received == self.recv.len() && self.written == self.send.len())
    }
}

impl Conn {
    /// Whether the echo equals the message. Up to 16 KiB, and every 8th message
    /// of a connection, byte for byte; the other large ones are sampled (the
    /// leading sequence number, the last 64 bytes and 8 bytes in every KiB),
    /// which keeps the client's CPU per 100 KiB message ~13 % lower.
    fn echo_ok(&self) -> bool {
        let (r, s) = (&self.recv, &self.send);
        if s.len() <= FULL_CHECK || self.seq % 8 == 0 {
            return r == s;
        }
        let tail = s.len() - 64;
        r[..8] == s[..8]
            && r[tail..] == s[tail..]
            && (0..s.len() / 1024).all(|k| {
                let i = k * 1024 + 512;
                r[i..i + 8] == s[i..i + 8]
            })
    }
}

/// Messages up to this size are always checked byte for byte.
const FULL_CHECK: usize = 16 * 1024;

#[derive(PartialEq, Clone, Copy)]
enum Phase {
    Warm,
    Measure,
    Drain,
}

struct Opts {
    addr: Addr,
    conns: usize,
    msg: usize,
    duration: f64,
    warmup: f64,
    max_messages: u64,
    wait_stdin: bool,
    verify: bool,
}

fn opts() -> Result<Opts, String> {
    let mut o = Opts {
        addr: Addr::Tcp(String::new()),
        conns: 10,
        msg: 1024,
        duration: 3.0,
        warmup: 0.5,
        max_messages: 50_000_000,
        wait_stdin: false,
        verify: true,
    };
    let mut have_addr = false;
    let num = |k: &str, v: &str| -> Result<f64, String> {
        v.parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x >= 0.0)
            .ok_or_else(|| format!("--{k}: bad number {v:?}"))
    };
    for (k, v) in parse_args(std::env::args().skip(1), &["wait-stdin", "no-verify"])? {
        match k.as_str() {
            "addr" => {
                o.addr = Addr::parse(&v)?;
                have_addr = true;
            }
            "conns" => o.conns = num(&k, &v)? as usize,
            "msg" => o.msg = num(&k, &v)? as usize,
            "duration" => o.duration = num(&k, &v)?,
            "warmup" => o.warmup = num(&k, &v)?,
            "max-messages" => o.max_messages = num(&k, &v)? as u64,
            "wait-stdin" => o.wait_stdin = true,
            "no-verify" => o.verify = false,
            _ => return Err(format!("unknown option --{k}")),
        }
    }
    if !have_addr {
        return Err("--addr is required".into());
    }
    if !(1..=10_000).contains(&o.conns) || !(1..=64 << 20).contains(&o.msg) {
        return Err("--conns must be 1..10000 and --msg 1..64MiB".into());
    }
    if o.duration > 3600.0 || o.warmup > 3600.0 {
        return Err("--duration and --warmup are capped at 3600 s".into());
    }
    Ok(o)
}

fn percentile(hist: &[u64], total: u64, p: f64, max_us: u64) -> u64 {
    if total == 0 {
        return 0;
    }
    let want = ((total as f64) * p).ceil().max(1.0) as u64;
    let mut acc = 0;
    for (us, &c) in hist.iter().enumerate() {
        acc += c;
        if acc >= want {
            return if us == HIST_US { max_us } else { us as u64 };
        }
    }
    max_us
}

fn run(o: &Opts) -> io::Result<()> {
    let mut conns = Vec::with_capacity(o.conns);
    let ep_len = o.conns;
    let mut ep = Epoll::new(ep_len)?;
    for i in 0..o.conns {
        let s = o.addr.connect(Duration::from_secs(5))?;
        ep.add(s.fd(), IN, i as u64)?;
        let send: Vec<u8> = (0..o.msg).map(|j| (j * 7 + i * 13) as u8).collect();
        conns.push(Conn {
            s,
            recv: vec![0; o.msg],
            send,
            written: 0,
            received: 0,
            started: Instant::now(),
            seq: 0,
            busy: false,
            want_out: false,
        });
    }

    let mut hist = vec![0u64; HIST_US + 1];
    let (mut messages, mut warm_messages, mut max_us) = (0u64, 0u64, 0u64);
    let t_begin = Instant::now();
    let warm_end = t_begin + Duration::from_secs_f64(o.warmup);
    let mut t0 = t_begin;
    let mut deadline = warm_end + Duration::from_secs_f64(o.duration);
    let mut drain_deadline = deadline + DRAIN;
    let mut cpu0 = (0.0, 0.0);
    let mut last_done = t_begin;
    let mut phase = Phase::Warm;
    let mut in_flight = 0usize;
    let mut ready: Vec<(u64, u32)> = Vec::with_capacity(ep_len);
    let stdout = io::stdout();

    for (i, c) in conns.iter_mut().enumerate() {
        c.start(&ep, i as u64)?;
        in_flight += 1;
    }

    // Bounded in time: every pass checks the clock, and the drain phase ends by
    // `drain_deadline` at the latest (`max_messages` bounds the count).
    loop {
        let now = Instant::now();
        if phase == Phase::Warm && now >= warm_end {
            phase = Phase::Measure;
            t0 = now;
            deadline = t0 + Duration::from_secs_f64(o.duration);
            drain_deadline = deadline + DRAIN;
            cpu0 = cpu_times();
            let mut out = stdout.lock();
            writeln!(out, "GO")?;
            out.flush()?;
        }
        if phase == Phase::Measure && (now >= deadline || messages >= o.max_messages) {
            phase = Phase::Drain;
        }
        if phase == Phase::Drain && (in_flight == 0 || now >= drain_deadline) {
            break;
        }
        let until = match phase {
            Phase::Warm => warm_end,
            Phase::Measure => deadline,
            Phase::Drain => drain_deadline,
        };
        let ms = until
            .saturating_duration_since(now)
            .as_millis()
            .clamp(1, 100) as i32;
        ready.clear();
        ready.extend(ep.wait(ms)?);
        for &(token, ev) in &ready {
            let i = token as usize;
            let c = &mut conns[i];
            if !c.busy {
                continue;
            }
            let mut done = false;
            if ev & OUT != 0 {
                c.pump_write(&ep, token)?;
                done = c.written == c.send.len() && c.received == c.recv.len();
            }
            if !done && ev & !OUT != 0 {
                done = c.on_readable()?;
            }
            if !done {
                continue;
            }
            if o.verify && !c.echo_ok() {
                return Err(io::Error::other(format!(
                    "echo mismatch on connection {i}, message {}",
                    c.seq
                )));
            }
            c.busy = false;
            in_flight -= 1;
            if phase == Phase::Warm {
                warm_messages += 1;
            } else {
                let t = Instant::now();
                let us = t.duration_since(c.started).as_micros() as u64;
                hist[(us as usize).min(HIST_US)] += 1;
                max_us = max_us.max(us);
                messages += 1;
                last_done = t;
            }
            if phase != Phase::Drain && messages < o.max_messages {
                c.start(&ep, token)?;
                in_flight += 1;
            }
        }
    }
    if in_flight != 0 {
        return Err(io::Error::other(format!(
            "{in_flight} message(s) still unanswered {} s after the window",
            DRAIN.as_secs()
        )));
    }
    let cpu1 = cpu_times();
    let seconds = last_done.duration_since(t0).as_secs_f64().max(1e-9);
    let client_cpu = (cpu1.0 - cpu0.0) + (cpu1.1 - cpu0.1);
    let json = format!(
        concat!(
            "{{\"messages\": {}, \"bytes\": {}, \"seconds\": {:.6}, \"msgs_per_sec\": {:.1}, ",
            "\"p50_us\": {}, \"p99_us\": {}, \"max_us\": {}, \"client_cpu_s\": {:.6}, ",
            "\"client_user_s\": {:.6}, \"client_sys_s\": {:.6}, \"client_cpu_share\": {:.4}, ",
            "\"conns\": {}, \"msg\": {}, \"warmup_messages\": {}, \"verified\": {}}}"
        ),
        messages,
        messages * o.msg as u64,
        seconds,
        messages as f64 / seconds,
        percentile(&hist, messages, 0.50, max_us),
        percentile(&hist, messages, 0.99, max_us),
        max_us,
        client_cpu,
        cpu1.0 - cpu0.0,
        cpu1.1 - cpu0.1,
        client_cpu / seconds,
        o.conns,
        o.msg,
        warm_messages,
        o.verify,
    );
    let mut out = stdout.lock();
    writeln!(out, "{json}")?;
    out.flush()?;
    drop(out);
    if o.wait_stdin {
        // The connections stay open (and idle) until the parent has read the
        // server's CPU time: it then writes a line or closes our stdin.
        stdin_ready(60_000);
    }
    drop(conns);
    Ok(())
}

fn main() -> ExitCode {
    let o = match opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("echo-client: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo-client: {e}");
            ExitCode::FAILURE
        }
    }
}
