//! The data path of UDP transports: datagrams read and sent in Rust for
//! `ferroloop._transport._DatagramTransport` (asyncio's
//! `_SelectorDatagramTransport`, whose Python code keeps everything else:
//! the send queue, flow control, `close`/`abort`, errors, `repr`).
//!
//! `_DatagramCore` serves AF_INET and AF_INET6 sockets (the Python side uses
//! asyncio's own reads and sends for other families):
//! - **Reads**: the fd is watched as a native transport
//!   (`FdWatch::Stream`, edge-aware: see `ferroloop_core::reactor`).
//!   A ready item receives up to [`READ_BATCH`] datagrams into the loop's
//!   reusable buffer (`recvmmsg`, several per call: one that returns fewer
//!   than it asked for says the queue is empty, so no `EAGAIN` read is
//!   made), each handed to `protocol.datagram_received(data, addr)` as one
//!   exact-size `bytes`; the next batch is queued for the next iteration
//!   when the batch is full. The address tuples of recent peers are kept
//!   ([`ADDR_CACHE`]): a sender's tuple is built once, and an echo's
//!   `sendto(data, addr)` finds the very same object by identity.
//! - **Sends**: `sendto` (bound into the transport's `__dict__`) sends at
//!   once when asyncio would: a non-empty `bytes`, nothing queued, not
//!   lost, the address an IP literal (`(host, port)`; IPv6 also with
//!   flowinfo and scope id) or none on a connected socket. Anything else,
//!   and a send that would block, goes to asyncio's own
//!   `_SelectorDatagramTransport.sendto`, so checks, messages and queueing
//!   are asyncio's.
//!
//! ## Invariants
//! - The core holds its transport (which owns the core: a cycle the GC
//!   collects, as for stream transports), and reads the transport's state
//!   from its `__dict__` (`_protocol`, `_conn_lost`) when it needs it:
//!   asyncio's code changes it there. The send queue (`_buffer`) and
//!   whether there is a fixed `_address` are read once: asyncio never
//!   replaces either.
//! - The fd is in the loop's table exactly while `reading`; removing it
//!   through the loop (asyncio's `close`/`pause_reading` call
//!   `loop._remove_reader(fd)`) clears `reading` (`crate::io::fd_watch`), so
//!   a queued read that finds it cleared does nothing (asyncio cancels the
//!   reader's handle then).
//! - No borrow of the state is held while Python code runs.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{BorrowedFd, RawFd};

use pyo3::exceptions::PyValueError;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyInt, PyString, PyTuple};
use pyo3::PyTraverseError;
use socket2::{SockAddr, SockAddrStorage};

use crate::aio::in_context;
use crate::errors::os_error;
use crate::gil::{GilCell, GilRefCell};
use crate::io::stream::retry_later;
use crate::loop_state::{FdWatch, Loop};

/// Datagrams read per ready item; the rest wait for the next iteration
/// (libuv reads as many per event).
const READ_BATCH: usize = 32;

/// Peers whose address tuple a transport keeps: a server answering up to
/// this many clients in turn builds each client's tuple once, and its
/// `sendto(data, addr)` finds the very tuple it was given by identity.
const ADDR_CACHE: usize = 64;

/// asyncio's `max_size` of a datagram read (`recvfrom(256 KiB)`).
const MAX_DATAGRAM: usize = 256 * 1024;

/// Datagrams per `recvmmsg`, each into its own slot of [`MMSG_SLOT`]
/// bytes (the largest UDP payload fits: no datagram is truncated).
/// Fewer than `MMSG_COUNT` back means the queue was empty: no `EAGAIN` read
/// is needed to find out.
const MMSG_COUNT: usize = 8;
const MMSG_SLOT: usize = 64 * 1024;

/// The read buffer: one 256 KiB datagram, or `MMSG_COUNT` slots.
static DGRAM_BUF: GilCell<Vec<MaybeUninit<u8>>> = GilCell::new(Vec::new());
const DGRAM_BUF_LEN: usize = if MAX_DATAGRAM > MMSG_COUNT * MMSG_SLOT {
    MAX_DATAGRAM
} else {
    MMSG_COUNT * MMSG_SLOT
};

struct DgramState {
    lp: Option<Py<Loop>>,
    /// The `_DatagramTransport`. Held strongly, as asyncio's reader Handle
    /// and a bound `sendto` hold theirs: a transport that is reading, or
    /// whose `sendto` someone kept, stays alive (the cycle through the
    /// transport, which owns this core, is the GC's: see `__traverse__`).
    transport: Option<Py<PyAny>>,
    sock: Option<Py<PyAny>>,
    fd: RawFd,
    /// `extra['peername']` was set: asyncio sends with `send(data)`.
    connected: bool,
    /// An AF_INET6 socket (else AF_INET).
    v6: bool,
    /// A `SOCK_DGRAM` socket: reads take several datagrams per `recvmmsg`
    /// (else one `recvfrom` each, e.g. a raw socket).
    multi: bool,
    /// Datagrams read but not delivered yet: a callback paused reading (or
    /// raised) in the middle of a `recvmmsg` batch. Delivered first when
    /// reading goes on; dropped with the transport.
    pending: VecDeque<(Py<PyAny>, Py<PyAny>)>,
    reading: bool,
    /// The context reads run in: a copy of the one reading started in (as
    /// asyncio's reader Handle).
    read_ctx: Option<Py<PyAny>>,
    /// asyncio's `_SelectorDatagramTransport.sendto`, for every send the
    /// fast path does not take.
    asyncio_sendto: Py<PyAny>,
    /// The transport's send queue (its `_buffer` deque: asyncio only
    /// appends to it and pops from it, never replaces it).
    queue: Py<PyAny>,
    /// The transport has a fixed remote `_address` (set once, by asyncio's
    /// `__init__`).
    has_address: bool,
    /// Recent peers: a socket address and its Python tuple (see
    /// [`ADDR_CACHE`]).
    addrs: Vec<(SockAddr, Py<PyAny>)>,
    /// The entry of `addrs` the next new peer replaces once it is full.
    addrs_next: usize,
}

/// See the module docs.
#[pyclass(module = "ferroloop._ferroloop", name = "_DatagramCore", frozen)]
pub(crate) struct DatagramCore {
    st: GilRefCell<DgramState>,
}

impl DatagramCore {
    fn st(&self) -> std::cell::RefMut<'_, DgramState> {
        self.st.lock()
    }

    fn transport<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        Some(self.st().transport.as_ref()?.clone_ref(py).into_bound(py))
    }

    /// The loop removed the fd's reader (asyncio's `close`,
    /// `pause_reading`, `_force_close`): no read runs until reading starts
    /// again.
    pub(crate) fn reader_removed(&self) {
        let ctx = {
            let mut s = self.st();
            s.reading = false;
            s.read_ctx.take()
        };
        drop(ctx);
    }

    fn read_again(slf: &Bound<'_, DatagramCore>) {
        let py = slf.py();
        let lp = slf.get().st().lp.as_ref().map(|l| l.clone_ref(py));
        if let Some(lp) = lp {
            Loop::queue_read(lp.bind(py), slf.clone().into_any().unbind());
        }
    }

    /// The fd is readable: up to [`READ_BATCH`] datagrams to the protocol
    /// (those left over from an earlier batch first).
    fn read_ready(slf: &Bound<'_, DatagramCore>) -> PyResult<()> {
        let py = slf.py();
        let Some(transport) = slf.get().transport(py) else {
            return Ok(());
        };
        let tdict = crate::io::instance_dict(&transport)?;
        // asyncio's `_read_ready` does nothing once the connection is lost;
        // what loses it later (close, _force_close) removes the reader too,
        // which `reading` shows per datagram.
        match tdict.get_item(intern!(py, "_conn_lost"))? {
            Some(v) if !v.is_truthy()? => {}
            _ => return Ok(()),
        }
        // The batch's storage is the core's (kept, with its capacity).
        let mut batch = std::mem::take(&mut slf.get().st().pending);
        let r = Self::deliver(slf, &tdict, &mut batch);
        let mut s = slf.get().st();
        batch.append(&mut s.pending); // (empty unless a callback re-entered)
        s.pending = batch;
        r
    }

    /// [`DatagramCore::read_ready`]'s loop: `batch` holds what was read and
    /// not delivered yet when it returns.
    fn deliver(
        slf: &Bound<'_, DatagramCore>,
        tdict: &Bound<'_, PyDict>,
        batch: &mut VecDeque<(Py<PyAny>, Py<PyAny>)>,
    ) -> PyResult<()> {
        let py = slf.py();
        let protocol = || -> PyResult<Bound<'_, PyAny>> {
            Ok(tdict
                .get_item(intern!(py, "_protocol"))?
                .unwrap_or_else(|| py.None().into_bound(py)))
        };
        let mut delivered = 0;
        let mut drained = false;
        // Bounded: about READ_BATCH datagrams (whole recvmmsg batches), then
        // the next iteration goes on.
        while delivered < READ_BATCH {
            if batch.is_empty() {
                if drained {
                    return Ok(()); // a new datagram is a new edge
                }
                let (fd, multi) = {
                    let s = slf.get().st();
                    (s.fd, s.multi)
                };
                if fd < 0 {
                    return Ok(());
                }
                let received = Self::receive(slf, fd, multi, batch).inspect_err(|_| {
                    Self::read_again(slf); // the rest still waits: no new edge
                })?;
                match received {
                    Ok(d) => drained = d,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // An ICMP error of an earlier send, say: the protocol's.
                        let r =
                            protocol()?.call_method1(intern!(py, "error_received"), (os_error(e),));
                        if let Err(err) = r {
                            Self::read_again(slf);
                            return Err(err);
                        }
                        delivered += 1;
                        continue;
                    }
                }
            }
            // Deliver the batch; stop where reading stops (the rest waits
            // in the core until reading resumes).
            while let Some((data, addr)) = batch.pop_front() {
                if !slf.get().st().reading {
                    batch.push_front((data, addr));
                    return Ok(());
                }
                let r = protocol()?.call_method1(intern!(py, "datagram_received"), (data, addr));
                delivered += 1;
                if let Err(err) = r {
                    // Reported like asyncio's reader Handle; the datagrams
                    // left are delivered next iteration (the fd is
                    // edge-triggered: nothing else would bring them).
                    Self::read_again(slf);
                    return Err(err);
                }
            }
        }
        if !drained {
            Self::read_again(slf);
        }
        Ok(())
    }

    /// Reads what is queued into `batch`: one `recvmmsg` of up to
    /// [`MMSG_COUNT`] datagrams (`multi`), or one `recvfrom`. True when the
    /// queue was found empty afterwards (fewer datagrams than asked for);
    /// the socket's error inside, a Python error outside.
    fn receive(
        slf: &Bound<'_, DatagramCore>,
        fd: RawFd,
        multi: bool,
        batch: &mut VecDeque<(Py<PyAny>, Py<PyAny>)>,
    ) -> PyResult<io::Result<bool>> {
        let py = slf.py();
        let got = match recv_datagrams(py, fd, multi) {
            Ok(got) => got,
            Err(e) => return Ok(Err(e)),
        };
        let asked = if multi { MMSG_COUNT } else { 1 };
        let drained = got.len() < asked;
        for (data, raw) in got {
            // A Python error here (MemoryError) is the loop's, not the
            // socket's: it propagates instead of reaching error_received.
            let addr = Self::address_of(slf, raw)?;
            batch.push_back((data.into_any().unbind(), addr.unbind()));
        }
        Ok(Ok(drained))
    }

    /// The sender's address as the `socket` module gives it: a cached
    /// tuple when the peer is a recent one.
    fn address_of<'py>(
        slf: &Bound<'py, DatagramCore>,
        raw: SockAddr,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        if let Some((_, t)) = slf
            .get()
            .st()
            .addrs
            .iter()
            .find(|(a, _)| same_sockaddr(a, &raw))
        {
            return Ok(t.bind(py).clone());
        }
        let t = sockaddr_to_py(py, &raw)?;
        Self::remember(slf, raw, t.clone().unbind());
        Ok(t)
    }

    /// Adds a peer to the cache (replacing the oldest once it is full).
    fn remember(slf: &Bound<'_, DatagramCore>, raw: SockAddr, tuple: Py<PyAny>) {
        let old = {
            let mut s = slf.get().st();
            if s.addrs.len() < ADDR_CACHE {
                s.addrs.push((raw, tuple));
                None
            } else {
                let i = s.addrs_next;
                s.addrs_next = (i + 1) % ADDR_CACHE;
                Some(std::mem::replace(&mut s.addrs[i], (raw, tuple)))
            }
        };
        drop(old); // may free a tuple: after the borrow
    }

    /// The socket address of `addr`, when it is an IP literal the fast path
    /// takes: found by identity among the cached tuples, else parsed (and
    /// cached).
    fn dest_of(slf: &Bound<'_, DatagramCore>, addr: &Bound<'_, PyAny>) -> Option<SockAddr> {
        {
            let s = slf.get().st();
            if let Some((sa, _)) = s.addrs.iter().find(|(_, t)| t.as_ptr() == addr.as_ptr()) {
                return Some(sa.clone());
            }
        }
        let v6 = slf.get().st().v6;
        let sa = py_to_sockaddr(addr, v6)?;
        Self::remember(slf, sa.clone(), addr.clone().unbind());
        Some(sa)
    }

    /// `sendto(data, addr)`: see the module docs (the raw method of
    /// `crate::fastcall` calls it; Python sees `_DatagramCore.sendto`).
    pub(crate) fn sendto(
        slf: &Bound<'_, DatagramCore>,
        data: &Bound<'_, PyAny>,
        addr: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let Some(transport) = slf.get().transport(py) else {
            return Ok(()); // the transport is gone: nobody can call this
        };
        if Self::try_send(slf, &transport, data, addr)?.is_some() {
            return Ok(());
        }
        let f = slf.get().st().asyncio_sendto.clone_ref(py);
        let addr = match addr {
            Some(a) => a.clone(),
            None => py.None().into_bound(py),
        };
        f.bind(py).call1((transport, data, addr))?;
        Ok(())
    }

    /// asyncio's `sendto(*args, **kwargs)` on the transport: calls the raw
    /// method does not take (keywords, a wrong argument count).
    pub(crate) fn sendto_asyncio<'py>(
        slf: &Bound<'py, DatagramCore>,
        args: &Bound<'py, PyTuple>,
        kwargs: &Bound<'py, PyDict>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let transport = slf
            .get()
            .transport(py)
            .unwrap_or_else(|| py.None().into_bound(py));
        let mut all = vec![transport];
        all.extend(args.iter());
        let f = slf.get().st().asyncio_sendto.clone_ref(py);
        f.bind(py).call(PyTuple::new(py, all)?, Some(kwargs))
    }

    /// The fast send of `sendto` (see the module docs): `Some(result)` when
    /// taken, `None` for asyncio's `sendto` to handle.
    fn try_send(
        slf: &Bound<'_, DatagramCore>,
        transport: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
        addr: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<()>> {
        let py = slf.py();
        let Ok(bytes) = data.cast_exact::<PyBytes>() else {
            return Ok(None);
        };
        let payload = bytes.as_bytes();
        if payload.is_empty() {
            return Ok(None); // the rule changed across versions: asyncio's
        }
        let addr = addr.filter(|a| !a.is_none());
        let (fd, connected, queue) = {
            let s = slf.get().st();
            if s.has_address && addr.is_some() {
                return Ok(None); // compared (and maybe refused) by asyncio
            }
            (s.fd, s.connected, s.queue.clone_ref(py))
        };
        if fd < 0 || queue.bind(py).len()? != 0 {
            return Ok(None);
        }
        let tdict = crate::io::instance_dict(transport)?;
        match tdict.get_item(intern!(py, "_conn_lost"))? {
            Some(v) if !v.is_truthy()? => {}
            _ => return Ok(None),
        }
        // SAFETY: `fd` is the transport's socket, open while `fd >= 0` (it
        // is set to -1 before asyncio closes the socket).
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&borrowed);
        let sent = if connected {
            sock.send(payload)
        } else {
            let Some(dest) = addr.and_then(|a| Self::dest_of(slf, a)) else {
                return Ok(None);
            };
            sock.send_to(payload, &dest)
        };
        match sent {
            Ok(_) => Ok(Some(())),
            // asyncio tries again and queues the datagram.
            Err(e) if retry_later(&e) => Ok(None),
            Err(e) => {
                let protocol = tdict
                    .get_item(intern!(py, "_protocol"))?
                    .unwrap_or_else(|| py.None().into_bound(py));
                protocol.call_method1(intern!(py, "error_received"), (os_error(e),))?;
                Ok(Some(()))
            }
        }
    }
}

#[pymethods]
impl DatagramCore {
    /// `_DatagramCore(loop, transport, sock, connected, asyncio_sendto)`.
    #[new]
    fn py_new(
        lp: &Bound<'_, Loop>,
        transport: &Bound<'_, PyAny>,
        sock: &Bound<'_, PyAny>,
        connected: bool,
        asyncio_sendto: Py<PyAny>,
    ) -> PyResult<Self> {
        let py = sock.py();
        let fd: RawFd = sock.call_method0(intern!(py, "fileno"))?.extract()?;
        if fd < 0 {
            return Err(PyValueError::new_err("the socket is closed"));
        }
        let family: i32 = sock.getattr(intern!(py, "family"))?.extract()?;
        let multi = sock.getattr(intern!(py, "type"))?.extract::<i32>()? == libc::SOCK_DGRAM;
        let v6 = match family {
            libc::AF_INET => false,
            libc::AF_INET6 => true,
            _ => {
                return Err(PyValueError::new_err(
                    "an AF_INET or AF_INET6 socket is needed",
                ))
            }
        };
        let tdict = crate::io::instance_dict(transport)?;
        let field = |name: &str| -> PyResult<Bound<'_, PyAny>> {
            tdict
                .get_item(name)?
                .ok_or_else(|| PyValueError::new_err(format!("the transport has no {name}")))
        };
        let queue = field("_buffer")?.unbind();
        let has_address = field("_address")?.is_truthy()?;
        Ok(DatagramCore {
            st: GilRefCell::new(DgramState {
                lp: Some(lp.clone().unbind()),
                transport: Some(transport.clone().unbind()),
                sock: Some(sock.clone().unbind()),
                fd,
                connected,
                v6,
                multi,
                pending: VecDeque::new(),
                reading: false,
                read_ctx: None,
                asyncio_sendto,
                queue,
                has_address,
                addrs: Vec::new(),
                addrs_next: 0,
            }),
        })
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Some(s) = self.st.try_lock() else {
            return Ok(());
        };
        for o in [&s.transport, &s.sock, &s.read_ctx].into_iter().flatten() {
            visit.call(o)?;
        }
        visit.call(&s.asyncio_sendto)?;
        visit.call(&s.queue)?;
        if let Some(l) = &s.lp {
            visit.call(l)?;
        }
        for (data, addr) in &s.pending {
            visit.call(data)?;
            visit.call(addr)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        let taken = self.st.try_lock().map(|mut s| {
            s.fd = -1;
            s.reading = false;
            (
                s.transport.take(),
                s.sock.take(),
                s.read_ctx.take(),
                s.lp.take(),
                std::mem::take(&mut s.pending),
                std::mem::take(&mut s.addrs),
            )
        });
        drop(taken);
    }

    /// Starts watching the fd for reading (asyncio's `_add_reader(fd,
    /// self._read_ready)`), in a copy of the current context.
    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (lp, fd, sock) = {
            let s = slf.get().st();
            let (Some(lp), Some(sock)) = (&s.lp, &s.sock) else {
                return Ok(());
            };
            if s.reading || s.fd < 0 {
                return Ok(());
            }
            (lp.clone_ref(py), s.fd, sock.clone_ref(py))
        };
        let ctx = crate::aio::copy_context(py)?.unbind();
        let old = {
            let mut ls = lp.bind(py).get().st();
            ls.check_closed()?;
            let w = FdWatch::Stream {
                stream: slf.clone().into_any().unbind(),
                fileobj: sock,
            };
            ls.core.add_reader(fd, w).map_err(os_error)?
        };
        let (old_ctx, pending) = {
            let mut s = slf.get().st();
            s.reading = true;
            (s.read_ctx.replace(ctx), !s.pending.is_empty())
        };
        drop(old_ctx);
        if pending {
            Self::read_again(slf); // what a paused batch left over
        }
        if let Some(FdWatch::Callback { handle, .. }) = &old {
            handle.get().do_cancel(py, handle.bind(py).as_any())?;
        }
        drop(old);
        Ok(())
    }

    /// The transport lost its connection (its socket is about to close):
    /// the core lets go of the loop and the socket.
    fn _detach(&self) {
        let taken = {
            let mut s = self.st();
            s.fd = -1;
            s.reading = false;
            (
                s.lp.take(),
                s.sock.take(),
                s.read_ctx.take(),
                std::mem::take(&mut s.addrs),
                std::mem::take(&mut s.pending),
            )
        };
        drop(taken);
    }

    /// One read batch, as a ready item runs it (debug mode runs it as a
    /// Handle's callback).
    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::read_ready(slf)
    }

    /// The context reads run in (`write` is never true: sends are
    /// synchronous).
    fn _context(&self, py: Python<'_>, write: bool) -> Option<Py<PyAny>> {
        if write {
            return None;
        }
        self.st().read_ctx.as_ref().map(|c| c.clone_ref(py))
    }
}

/// The callable a ready item of the native transport `obj` stands for, as
/// asyncio would name it in a Handle: a datagram transport's
/// `_read_ready` (the Python method, which runs the core's), a stream
/// transport's `_read_ready`/`_write_ready`.
pub(crate) fn ready_callback<'py>(
    obj: &Bound<'py, PyAny>,
    write: bool,
) -> PyResult<Bound<'py, PyAny>> {
    if let Ok(d) = obj.cast::<DatagramCore>() {
        if let Some(t) = d.get().transport(obj.py()) {
            return t.getattr(intern!(obj.py(), "_read_ready"));
        }
    }
    obj.getattr(if write { "_write_ready" } else { "_read_ready" })
}

/// Runs a ready read of a datagram transport (`crate::event_loop` through
/// `stream::run_ready`). A Rust panic becomes a Python exception for the
/// caller to report, never an abort.
pub(crate) fn run_ready(core: &Bound<'_, DatagramCore>) -> PyResult<()> {
    let py = core.py();
    let Some(ctx) = core.get().st().read_ctx.as_ref().map(|c| c.clone_ref(py)) else {
        return Ok(()); // not reading any more
    };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        in_context(ctx.bind(py), || DatagramCore::read_ready(core))
    }));
    r.unwrap_or_else(|panic| {
        Err(crate::errors::panic_error(
            panic,
            "panic in a datagram transport",
        ))
    })
}

/// Datagrams of one read, with their senders (inline: no allocation).
type Received<'py> = smallvec::SmallVec<[(Bound<'py, PyBytes>, SockAddr); MMSG_COUNT]>;

/// What is queued on the open socket `fd`: up to [`MMSG_COUNT`] datagrams
/// with one `recvmmsg` (`multi`), or one with `recvfrom(256 KiB)`; each as
/// `bytes`, with its sender. `WouldBlock` when nothing is queued.
fn recv_datagrams(py: Python<'_>, fd: RawFd, multi: bool) -> io::Result<Received<'_>> {
    // SAFETY: the GIL is held (we have `py`) and the closure runs no Python
    // code (nothing re-enters the buffer); `fd` stays open for the call (the
    // transport owns the socket).
    unsafe {
        DGRAM_BUF.with(|buf| {
            if buf.len() < DGRAM_BUF_LEN {
                buf.resize(DGRAM_BUF_LEN, MaybeUninit::uninit());
            }
            if !multi {
                let borrowed = BorrowedFd::borrow_raw(fd);
                let (n, from) =
                    socket2::SockRef::from(&borrowed).recv_from(&mut buf[..MAX_DATAGRAM])?;
                // recvfrom initialized the first n bytes.
                let got = std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n);
                return Ok(smallvec::smallvec![(PyBytes::new(py, got), from)]);
            }
            let mut names: [SockAddrStorage; MMSG_COUNT] =
                std::array::from_fn(|_| SockAddrStorage::zeroed());
            let mut iovs: [libc::iovec; MMSG_COUNT] = std::array::from_fn(|i| libc::iovec {
                iov_base: buf.as_mut_ptr().add(i * MMSG_SLOT).cast(),
                iov_len: MMSG_SLOT,
            });
            // An all-zero mmsghdr is valid (no name, no iov, no control).
            let mut hdrs: [libc::mmsghdr; MMSG_COUNT] = std::mem::zeroed();
            for (i, h) in hdrs.iter_mut().enumerate() {
                h.msg_hdr.msg_name = (&mut names[i] as *mut SockAddrStorage).cast();
                h.msg_hdr.msg_namelen = names[i].size_of();
                h.msg_hdr.msg_iov = &mut iovs[i];
                h.msg_hdr.msg_iovlen = 1;
            }
            // hdrs[i] points at names[i] and iovs[i] (slot i of `buf`), all
            // alive for the call; the kernel writes at most msg_namelen /
            // iov_len bytes there.
            let n = libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                MMSG_COUNT as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            );
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut out = Received::new();
            for (i, (h, name)) in hdrs.iter().zip(names).enumerate().take(n as usize) {
                let len = (h.msg_len as usize).min(MMSG_SLOT);
                // recvmmsg initialized the first msg_len bytes of slot i.
                let got =
                    std::slice::from_raw_parts(buf.as_ptr().add(i * MMSG_SLOT).cast::<u8>(), len);
                // The kernel filled `name` and set its length.
                let from = SockAddr::new(name, h.msg_hdr.msg_namelen);
                out.push((PyBytes::new(py, got), from));
            }
            Ok(out)
        })
    }
}

fn same_sockaddr(a: &SockAddr, b: &SockAddr) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let n = a.len() as usize;
    // SAFETY: both point at `len()` initialized bytes of their storage.
    unsafe {
        std::slice::from_raw_parts(a.as_ptr().cast::<u8>(), n)
            == std::slice::from_raw_parts(b.as_ptr().cast::<u8>(), n)
    }
}

/// What `socket.recvfrom` gives as the address: `(host, port)` for IPv4,
/// `(host, port, flowinfo, scope_id)` for IPv6, the host as `inet_ntop`
/// writes it (as CPython's `makesockaddr`).
fn sockaddr_to_py<'py>(py: Python<'py>, a: &SockAddr) -> PyResult<Bound<'py, PyAny>> {
    if let Some(v4) = a.as_socket_ipv4() {
        let host = v4.ip().to_string(); // dotted decimal: inet_ntop's form
        return Ok(PyTuple::new(
            py,
            [
                PyString::new(py, &host).into_any(),
                PyInt::new(py, v4.port()).into_any(),
            ],
        )?
        .into_any());
    }
    if let Some(v6) = a.as_socket_ipv6() {
        let host = inet_ntop6(v6.ip())?;
        return Ok(PyTuple::new(
            py,
            [
                PyString::new(py, &host).into_any(),
                PyInt::new(py, v6.port()).into_any(),
                PyInt::new(py, v6.flowinfo()).into_any(),
                PyInt::new(py, v6.scope_id()).into_any(),
            ],
        )?
        .into_any());
    }
    Err(PyValueError::new_err("unexpected address family"))
}

/// glibc's `inet_ntop` text of an IPv6 address: Rust's `Display` (RFC
/// 5952, as glibc) except for IPv4-compatible addresses (96 zero bits, then
/// a non-zero seventh group), which glibc writes as `::a.b.c.d`.
fn inet_ntop6(ip: &Ipv6Addr) -> PyResult<String> {
    let o = ip.octets();
    if o[..12].iter().all(|&b| b == 0) && (o[12] != 0 || o[13] != 0) {
        return Ok(format!("::{}.{}.{}.{}", o[12], o[13], o[14], o[15]));
    }
    Ok(ip.to_string())
}

/// The socket address of an IP-literal destination for a socket of the
/// family `v6` says: an exact tuple of an exact `str` and exact `int`s in
/// range (IPv4 `(host, port)`, IPv6 `(host, port[, flowinfo[, scope_id]])`). Anything else (host names,
/// `''`, `'<broadcast>'`, a scope in the host, bad values) is `None`: the
/// `socket` module resolves or refuses it.
fn py_to_sockaddr(addr: &Bound<'_, PyAny>, v6: bool) -> Option<SockAddr> {
    let t = addr.cast_exact::<PyTuple>().ok()?;
    let n = t.len();
    if !(2..=4).contains(&n) {
        return None;
    }
    let host = t.get_item(0).ok()?;
    let host = host.cast_exact::<PyString>().ok()?.to_str().ok()?;
    let int = |i: usize| -> Option<u64> {
        let v = t.get_item(i).ok()?;
        v.cast_exact::<PyInt>().ok()?.extract::<u64>().ok()
    };
    let port = u16::try_from(int(1)?).ok()?;
    if !v6 {
        let ip = host.parse::<Ipv4Addr>().ok().filter(|_| n == 2)?;
        return Some(SockAddr::from(SocketAddrV4::new(ip, port)));
    }
    let ip = host.parse::<Ipv6Addr>().ok()?;
    let flowinfo = if n > 2 { int(2)? } else { 0 };
    let scope_id = if n > 3 { int(3)? } else { 0 };
    if flowinfo > 0xfffff {
        return None;
    }
    let scope_id = u32::try_from(scope_id).ok()?;
    Some(SockAddr::from(SocketAddrV6::new(
        ip,
        port,
        flowinfo as u32,
        scope_id,
    )))
}
