//! Native `sock_recv`, `sock_recv_into`, `sock_accept`, `sock_sendall`,
//! `sock_recvfrom`, `sock_recvfrom_into` and `sock_sendto`: asyncio's
//! semantics (try the socket at once, else wait for readiness; a second
//! operation of the same kind replaces the first, whose future then never
//! completes; errors are the socket's `OSError`s), without asyncio's
//! per-operation costs.
//!
//! asyncio adds a reader (`EPOLL_CTL_ADD`) when a `recv` would block and
//! removes it (`EPOLL_CTL_DEL`) when the future is done, and tries `recv`
//! first every time: a ping-pong `sock_recv`/`sock_sendall` echo makes six
//! syscalls per message where three do (and `recv(256 KiB)` allocates a
//! 256 KiB `bytes`, an `mmap`/`munmap` pair in some processes). Here:
//! - a socket's [`SockWatch`] stays registered, edge-triggered, between
//!   operations: no `epoll_ctl` per operation;
//! - the watch knows whether the socket may have data (`read_hint`): false
//!   after a `recv` would block, or after a short read of a TCP socket (its
//!   queue was drained: only the urgent mark of `MSG_OOB` data stops a TCP
//!   read short with more queued; an AF_UNIX read stops at ancillary data,
//!   so AF_UNIX and datagram sockets clear it only on `WouldBlock`), true
//!   again on its next readiness event. With
//!   no hint, `sock_recv` does not try `recv` and waits for the event;
//! - reads go through the loop's reusable buffer (`read_buf`) into one
//!   exact-size `bytes`;
//! - a ready operation completes from the ready queue (`Ready::Sock`), with
//!   no Handle and no Python callback.
//!
//! ## Invariants
//! - A watch is in the loop's fd table (`FdWatch::Sock`, reader side) from
//!   the first operation that waited until the loop closes or another
//!   watcher replaces it; it holds its socket weakly, and is reused only
//!   for the same, still-open socket object (a closed socket's fd number
//!   may come back with another socket: the reactor re-adds a forgotten fd,
//!   see `ferroloop_core::reactor`). A watch whose socket is gone or closed
//!   when its fd fires drops its operations and leaves the table: they
//!   never run on another socket that got the number.
//! - A read registers the reader side, a send the writer side only (as
//!   asyncio's `_add_reader`/`_add_writer`); the writer side is registered
//!   only while a send waits.
//! - `read_hint` is cleared only by this module's own reads, and set by
//!   every readable event while registered: an edge that arrives after a
//!   read found the socket empty is never lost. A peer that closed
//!   (`IoEvent::closed`) keeps the hint set: its EOF is always readable.
//! - The watch's state is borrowed only while no Python code runs.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};

use ferroloop_core::reactor::IoEvent;
use ferroloop_core::{IoOutcome, ReadyQueue};
use pyo3::exceptions::PyValueError;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyString, PyTuple, PyWeakrefReference};
use pyo3::{intern, PyTraverseError};

use crate::errors::os_error;
use crate::gil::GilRefCell;
use crate::io::buffer::BufView;
use crate::io::read_buf::{recv_bytes, recv_raw};
use crate::io::stream::{retry_later, sock_ref};
use crate::loop_state::{FdWatch, Loop, Ready};

enum ReadOp {
    Recv {
        fut: Py<PyAny>,
        n: usize,
    },
    RecvInto {
        fut: Py<PyAny>,
        buf: Py<PyAny>,
    },
    /// `sock.<method>(*args)` until it does not block (`accept`,
    /// `recvfrom`, `recvfrom_into`).
    Call {
        fut: Py<PyAny>,
        sock: Py<PyAny>,
        method: Py<PyString>,
        args: Py<PyTuple>,
    },
}

/// What one read attempt gave: `(got, asked, result)`, the OS error, or a
/// Python error (a bad buffer, an error of `socket.accept`).
type Attempt<'py> = PyResult<io::Result<(usize, usize, Bound<'py, PyAny>)>>;

impl ReadOp {
    fn fut(&self) -> &Py<PyAny> {
        match self {
            ReadOp::Recv { fut, .. } | ReadOp::RecvInto { fut, .. } | ReadOp::Call { fut, .. } => {
                fut
            }
        }
    }

    fn attempt<'py>(&self, py: Python<'py>, fd: RawFd) -> Attempt<'py> {
        match self {
            ReadOp::Recv { n, .. } => try_recv(py, fd, *n),
            ReadOp::RecvInto { buf, .. } => try_recv_into(fd, buf.bind(py)),
            ReadOp::Call {
                sock, method, args, ..
            } => try_call(sock.bind(py), method.bind(py), args.bind(py)),
        }
    }
}

fn try_recv(py: Python<'_>, fd: RawFd, n: usize) -> Attempt<'_> {
    Ok(recv_bytes(py, fd, n, false).map(|(b, _)| (b.as_bytes().len(), n, b.into_any())))
}

fn try_recv_into<'py>(fd: RawFd, buf: &Bound<'py, PyAny>) -> Attempt<'py> {
    let mut view = BufView::get(buf, true)?;
    let asked = view.len();
    Ok(recv_into(fd, &mut view).map(|got| (got, asked, PyInt::new(buf.py(), got).into_any())))
}

/// `sock.<method>(*args)`: its result (the hint stays set: datagrams and
/// connections have no short reads), `WouldBlock` for the socket module's
/// `BlockingIOError`/`InterruptedError`, or its error.
fn try_call<'py>(
    sock: &Bound<'py, PyAny>,
    method: &Bound<'py, PyString>,
    args: &Bound<'py, PyTuple>,
) -> Attempt<'py> {
    let py = sock.py();
    match sock.call_method1(method, args) {
        Ok(v) => Ok(Ok((1, 1, v))),
        Err(e)
            if e.is_instance_of::<pyo3::exceptions::PyBlockingIOError>(py)
                || e.is_instance_of::<pyo3::exceptions::PyInterruptedError>(py) =>
        {
            Ok(Err(io::ErrorKind::WouldBlock.into()))
        }
        Err(e) => Err(e),
    }
}

enum WriteOp {
    /// `sock_sendall`: the data and how much of it was sent.
    SendAll {
        fut: Py<PyAny>,
        view: BufView,
        sent: usize,
    },
    /// `sock.<method>(*args)` until it does not block (`sendto`).
    Call {
        fut: Py<PyAny>,
        sock: Py<PyAny>,
        method: Py<PyString>,
        args: Py<PyTuple>,
    },
}

impl WriteOp {
    fn fut(&self) -> &Py<PyAny> {
        match self {
            WriteOp::SendAll { fut, .. } | WriteOp::Call { fut, .. } => fut,
        }
    }

    /// Sends what it can: the result when done, `None` when it would block.
    fn attempt<'py>(&mut self, py: Python<'py>, fd: RawFd) -> Option<PyResult<Bound<'py, PyAny>>> {
        match self {
            WriteOp::SendAll { view, sent, .. } => loop {
                match send_some(fd, &view.bytes()[*sent..]) {
                    Ok(n) => {
                        *sent += n;
                        if *sent == view.len() {
                            return Some(Ok(py.None().into_bound(py)));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                    Err(e) => return Some(Err(os_error(e))),
                }
            },
            WriteOp::Call {
                sock, method, args, ..
            } => match try_call(sock.bind(py), method.bind(py), args.bind(py)) {
                Ok(Ok((_, _, v))) => Some(Ok(v)),
                Ok(Err(_)) => None,
                Err(e) => Some(Err(e)),
            },
        }
    }
}

struct SockState {
    fd: RawFd,
    sock: Py<PyWeakrefReference>,
    /// SOCK_STREAM: a short read drained the queue.
    stream: bool,
    read_hint: bool,
    peer_closed: bool,
    read_op: Option<ReadOp>,
    write_op: Option<WriteOp>,
}

/// The `sock_*` state of one socket (see the module docs).
#[pyclass(frozen, module = "ferroloop._ferroloop", name = "_SockWatch")]
pub(crate) struct SockWatch {
    st: GilRefCell<SockState>,
}

impl SockWatch {
    fn st(&self) -> std::cell::RefMut<'_, SockState> {
        self.st.lock()
    }

    fn is_for(&self, sock: &Bound<'_, PyAny>) -> bool {
        let s = self.st();
        s.sock.bind(sock.py()).upgrade().is_some_and(|o| o.is(sock))
    }

    /// After a read of `got` bytes out of `asked` (`None`: it would block).
    fn note_read(&self, got: Option<usize>, asked: usize) {
        let mut s = self.st();
        s.read_hint = match got {
            None => false,
            Some(n) => s.peer_closed || !s.stream || n >= asked,
        };
    }
}

#[pymethods]
impl SockWatch {
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Some(s) = self.st.try_lock() else {
            return Ok(());
        };
        visit.call(&s.sock)?;
        if let Some(op) = &s.read_op {
            visit.call(op.fut())?;
            match op {
                ReadOp::RecvInto { buf, .. } => visit.call(buf)?,
                ReadOp::Call { sock, args, .. } => {
                    visit.call(sock)?;
                    visit.call(args)?;
                }
                ReadOp::Recv { .. } => {}
            }
        }
        if let Some(op) = &s.write_op {
            visit.call(op.fut())?;
            if let WriteOp::Call { sock, args, .. } = op {
                visit.call(sock)?;
                visit.call(args)?;
            }
        }
        Ok(())
    }

    /// Retries the waiting read (`write == false`) or send, as its ready
    /// item does (debug mode runs items through Handles).
    fn _retry(slf: &Bound<'_, Self>, lp: &Bound<'_, Loop>, write: bool) -> PyResult<()> {
        run_ready(slf.as_any(), lp, write)
    }

    fn __clear__(&self) {
        let taken = self
            .st
            .try_lock()
            .map(|mut s| (s.read_op.take(), s.write_op.take()));
        drop(taken);
    }
}

/// The reactor reported `ev` for a watch (the core's `on_io`, from
/// `crate::io::fd_watch`): notes the readiness, queues a waiting operation.
pub(crate) fn on_event(
    py: Python<'_>,
    watch: &Py<PyAny>,
    ev: &IoEvent,
    read_side: bool,
    ready: &mut ReadyQueue<Ready>,
) -> IoOutcome {
    // SAFETY: FdWatch::Sock holds SockWatch objects only (this module).
    let w = unsafe { watch.bind(py).cast_unchecked::<SockWatch>() };
    let mut s = w.get().st();
    let mut queue = |write| {
        ready.push(Ready::Sock {
            watch: watch.clone_ref(py),
            write,
        })
    };
    if read_side && ev.readable {
        s.read_hint = true;
        s.peer_closed |= ev.closed;
        if s.read_op.is_some() {
            queue(false);
        }
    }
    if !read_side && ev.writable && s.write_op.is_some() {
        queue(true);
    }
    IoOutcome {
        rearm: false,
        ..IoOutcome::LEVEL
    }
}

/// The watch of `sock` (fd `fd`) in the loop's table, if it is this
/// socket's.
/// The watch of `sock` (fd `fd`) in the loop's table, if it is this
/// socket's: on the reader side, or for a send (`read == false`) also on
/// the writer side.
fn find(
    lp: &Bound<'_, Loop>,
    sock: &Bound<'_, PyAny>,
    fd: RawFd,
    read: bool,
) -> Option<Py<SockWatch>> {
    let py = lp.py();
    let found = {
        let s = lp.get().st();
        let w = s.core.io.get_fd(fd)?;
        match (&w.reader, &w.writer) {
            (Some(FdWatch::Sock { watch, .. }), _) => watch.clone_ref(py),
            (_, Some(FdWatch::Sock { watch, .. })) if !read => watch.clone_ref(py),
            _ => return None,
        }
    };
    // SAFETY: FdWatch::Sock holds SockWatch objects only.
    let w = unsafe { found.into_bound(py).cast_into_unchecked::<SockWatch>() };
    w.get().is_for(sock).then(|| w.unbind())
}

/// Drops the watch `w` of `fd` from the loop's table (both sides where it
/// is), with its operations: its socket is gone or closed, and the fd
/// number may name another socket now.
fn forget(lp: &Bound<'_, Loop>, w: &Bound<'_, SockWatch>, fd: RawFd) {
    let ops = {
        let mut s = w.get().st();
        (s.read_op.take(), s.write_op.take())
    };
    drop(ops);
    let removed = {
        let mut ls = lp.get().st();
        let mut removed = Vec::new();
        for read in [true, false] {
            let ours = ls.core.io.get_fd(fd).is_some_and(|x| {
                let side = if read { &x.reader } else { &x.writer };
                matches!(side, Some(FdWatch::Sock { watch, .. }) if watch.as_ptr() == w.as_ptr())
            });
            if ours {
                let r = if read {
                    ls.core.remove_reader(fd)
                } else {
                    ls.core.remove_writer(fd)
                };
                removed.push(r);
            }
        }
        removed
    };
    drop(removed);
}

/// Registers `watch` on one side of `fd` (replacing what was there, as
/// asyncio's `_add_reader`/`_add_writer` do) or clears the writer side.
fn set_side(
    lp: &Bound<'_, Loop>,
    fd: RawFd,
    watch: Option<&Py<SockWatch>>,
    read: bool,
) -> PyResult<()> {
    let py = lp.py();
    let old = {
        let mut s = lp.get().st();
        s.check_closed()?;
        let r = match watch {
            Some(w) => {
                let fw = FdWatch::Sock {
                    watch: w.clone_ref(py).into_any(),
                    fileobj: PyInt::new(py, fd).into_any().unbind(),
                };
                if read {
                    s.core.add_reader(fd, fw)
                } else {
                    s.core.add_writer(fd, fw)
                }
            }
            None => s.core.remove_writer(fd),
        };
        r.map_err(os_error)?
    };
    if let Some(FdWatch::Callback { handle, .. }) = &old {
        handle.get().do_cancel(py, handle.bind(py).as_any())?;
    }
    drop(old);
    Ok(())
}

/// The slow path's common start: asyncio's transport check, then this
/// socket's watch, made and registered (reader side) when missing.
fn waiting_watch<'py>(
    lp: &Bound<'py, Loop>,
    sock: &Bound<'py, PyAny>,
    fd: RawFd,
    existing: Option<Py<SockWatch>>,
    read: bool,
) -> PyResult<(Py<SockWatch>, Bound<'py, PyAny>)> {
    let py = lp.py();
    lp.call_method1(intern!(py, "_ensure_fd_no_transport"), (fd,))?;
    let w = match existing {
        Some(w) => w,
        None => {
            // Not an int (a stand-in object): treated as a datagram socket,
            // whose hint only a read that would block clears.
            let sock_type: i32 = sock
                .getattr(intern!(py, "type"))
                .and_then(|t| t.extract())
                .unwrap_or(0);
            // AF_UNIX reads stop short at ancillary data with more queued:
            // there, as for datagrams, only a read that would block clears
            // the hint.
            let family: i32 = sock
                .getattr(intern!(py, "family"))
                .and_then(|t| t.extract())
                .unwrap_or(0);
            let w = Py::new(
                py,
                SockWatch {
                    st: GilRefCell::new(SockState {
                        fd,
                        sock: PyWeakrefReference::new(sock)?.unbind(),
                        stream: sock_type == i32::from(socket2::Type::STREAM)
                            && family != i32::from(socket2::Domain::UNIX),
                        read_hint: false,
                        peer_closed: false,
                        read_op: None,
                        write_op: None,
                    }),
                },
            )?;
            if read {
                set_side(lp, fd, Some(&w), true)?;
            }
            w
        }
    };
    let fut = lp.call_method0(intern!(py, "create_future"))?;
    Ok((w, fut))
}

fn sock_fd(sock: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    sock.call_method0(intern!(sock.py(), "fileno"))?.extract()
}

/// `sock_recv`'s native part: the bytes when they can be read now, else a
/// future completed when they arrive.
#[pyfunction]
pub(crate) fn _sock_recv<'py>(
    lp: &Bound<'py, Loop>,
    sock: &Bound<'py, PyAny>,
    n: isize,
) -> PyResult<Bound<'py, PyAny>> {
    let py = lp.py();
    let n = usize::try_from(n).map_err(|_| PyValueError::new_err("negative buffersize in recv"))?;
    let fd = sock_fd(sock)?;
    if n == 0 {
        // As CPython's socket.recv(0): no syscall.
        return Ok(pyo3::types::PyBytes::new(py, b"").into_any());
    }
    read_now_or_wait(
        lp,
        sock,
        fd,
        || try_recv(py, fd, n),
        |fut| ReadOp::Recv { fut, n },
    )
}

/// The shape of `sock_recv` and `sock_recv_into`: when the socket may have
/// data, `read` (giving `(got, asked, result)`); else, or if it would
/// block, a future for `make_op`'s operation, which the watch completes.
fn read_now_or_wait<'py>(
    lp: &Bound<'py, Loop>,
    sock: &Bound<'py, PyAny>,
    fd: RawFd,
    read: impl FnOnce() -> PyResult<io::Result<(usize, usize, Bound<'py, PyAny>)>>,
    make_op: impl FnOnce(Py<PyAny>) -> ReadOp,
) -> PyResult<Bound<'py, PyAny>> {
    let existing = find(lp, sock, fd, true);
    let hint = existing.as_ref().map_or(true, |w| w.get().st().read_hint);
    if hint {
        match read()? {
            Ok((got, asked, result)) => {
                if let Some(w) = &existing {
                    w.get().note_read(Some(got), asked);
                }
                return Ok(result);
            }
            Err(e) if retry_later(&e) => {}
            Err(e) => return Err(os_error(e)),
        }
    }
    let (w, fut) = waiting_watch(lp, sock, fd, existing, true)?;
    let old = {
        let mut s = w.get().st();
        s.read_hint = false;
        s.read_op.replace(make_op(fut.clone().unbind()))
    };
    drop(old);
    Ok(fut)
}

/// `sock_recv_into`'s native part: the byte count when data can be read
/// now, else a future.
#[pyfunction]
pub(crate) fn _sock_recv_into<'py>(
    lp: &Bound<'py, Loop>,
    sock: &Bound<'py, PyAny>,
    buf: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let fd = sock_fd(sock)?;
    read_now_or_wait(
        lp,
        sock,
        fd,
        || try_recv_into(fd, buf),
        |fut| ReadOp::RecvInto {
            fut,
            buf: buf.clone().unbind(),
        },
    )
}

/// `sock_accept`/`sock_recvfrom`/`sock_recvfrom_into`'s native part: the result of
/// `sock.<method>(*args)` when it does not block, else a future.
#[pyfunction]
pub(crate) fn _sock_read_call<'py>(
    lp: &Bound<'py, Loop>,
    sock: &Bound<'py, PyAny>,
    method: &Bound<'py, PyString>,
    args: &Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyAny>> {
    let fd = sock_fd(sock)?;
    read_now_or_wait(
        lp,
        sock,
        fd,
        || try_call(sock, method, args),
        |fut| ReadOp::Call {
            fut,
            sock: sock.clone().unbind(),
            method: method.clone().unbind(),
            args: args.clone().unbind(),
        },
    )
}

/// `sock_sendto`'s native part: the result of `sock.<method>(*args)` when
/// it does not block, else a future; `retry_args` are used when it blocked
/// (asyncio retries `sendto(data, 0, address)`).
#[pyfunction]
pub(crate) fn _sock_write_call<'py>(
    lp: &Bound<'py, Loop>,
    sock: &Bound<'py, PyAny>,
    method: &Bound<'py, PyString>,
    args: &Bound<'py, PyTuple>,
    retry_args: &Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyAny>> {
    let fd = sock_fd(sock)?;
    if let Ok((_, _, v)) = try_call(sock, method, args)? {
        return Ok(v);
    }
    wait_to_send(lp, sock, fd, |fut| WriteOp::Call {
        fut,
        sock: sock.clone().unbind(),
        method: method.clone().unbind(),
        args: retry_args.clone().unbind(),
    })
}

fn recv_into(fd: RawFd, view: &mut BufView) -> io::Result<usize> {
    // The caller's socket is open for the call (its fileno() was just read,
    // or its watch was found alive).
    recv_raw(fd, view.bytes_mut(), false).map(|(n, _)| n)
}

fn send_some(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: as in `recv_into`.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    sock_ref(&fd).send(bytes)
}

/// `sock_sendall`'s native part: None when everything was sent now, else a
/// future completed when the rest is.
#[pyfunction]
pub(crate) fn _sock_sendall<'py>(
    lp: &Bound<'py, Loop>,
    sock: &Bound<'py, PyAny>,
    data: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = lp.py();
    let view = BufView::get(data, false)?;
    let fd = sock_fd(sock)?;
    let sent = match send_some(fd, view.bytes()) {
        Ok(n) => n,
        Err(e) if retry_later(&e) => 0,
        Err(e) => return Err(os_error(e)),
    };
    if sent == view.len() {
        return Ok(py.None().into_bound(py));
    }
    wait_to_send(lp, sock, fd, |fut| WriteOp::SendAll { fut, view, sent })
}

/// A send that would block: `make_op`'s operation waits on the socket's
/// watch, whose writer side is registered until it completes.
fn wait_to_send<'py>(
    lp: &Bound<'py, Loop>,
    sock: &Bound<'py, PyAny>,
    fd: RawFd,
    make_op: impl FnOnce(Py<PyAny>) -> WriteOp,
) -> PyResult<Bound<'py, PyAny>> {
    let existing = find(lp, sock, fd, false);
    let (w, fut) = waiting_watch(lp, sock, fd, existing, false)?;
    let old = w.get().st().write_op.replace(make_op(fut.clone().unbind()));
    drop(old);
    set_side(lp, fd, Some(&w), false)?;
    Ok(fut)
}

fn settle(fut: &Bound<'_, PyAny>, r: PyResult<Bound<'_, PyAny>>) -> PyResult<()> {
    let py = fut.py();
    match r {
        Ok(v) => fut.call_method1(intern!(py, "set_result"), (v,))?,
        Err(e) => fut.call_method1(intern!(py, "set_exception"), (e.into_value(py),))?,
    };
    Ok(())
}

fn is_done(fut: &Bound<'_, PyAny>) -> PyResult<bool> {
    fut.call_method0(intern!(fut.py(), "done"))?.is_truthy()
}

/// Runs a ready item of a watch (`crate::event_loop`): retries its waiting
/// read (`write == false`) or send.
pub(crate) fn run_ready(
    watch: &Bound<'_, PyAny>,
    lp: &Bound<'_, Loop>,
    write: bool,
) -> PyResult<()> {
    let py = watch.py();
    let w = watch.cast::<SockWatch>()?;
    let (fd, sock) = {
        let s = w.get().st();
        (s.fd, s.sock.clone_ref(py))
    };
    let open_fd = match sock.bind(py).upgrade() {
        Some(so) => so
            .call_method0(intern!(py, "fileno"))
            .and_then(|f| f.extract::<RawFd>())
            .ok(),
        None => None,
    };
    if open_fd != Some(fd) {
        forget(lp, w, fd);
        return Ok(());
    }
    if write {
        let Some(mut op) = w.get().st().write_op.take() else {
            return Ok(());
        };
        let fd = w.get().st().fd;
        let fut = op.fut().clone_ref(py).into_bound(py);
        let outcome = if is_done(&fut)? {
            None
        } else {
            match op.attempt(py, fd) {
                Some(r) => Some(r),
                None => {
                    w.get().st().write_op = Some(op);
                    return Ok(()); // the next edge reports the space
                }
            }
        };
        drop(op);
        set_side(lp, fd, None, false)?;
        return match outcome {
            Some(r) => settle(&fut, r),
            None => Ok(()),
        };
    }
    let Some(op) = w.get().st().read_op.take() else {
        return Ok(());
    };
    let fd = w.get().st().fd;
    let fut = op.fut().clone_ref(py).into_bound(py);
    if is_done(&fut)? {
        return Ok(());
    }
    match op.attempt(py, fd) {
        Err(e) => settle(&fut, Err(e)),
        Ok(Ok((got, asked, v))) => {
            w.get().note_read(Some(got), asked);
            settle(&fut, Ok(v))
        }
        Ok(Err(e)) if retry_later(&e) => {
            w.get().note_read(None, 0);
            let mut s = w.get().st();
            if s.read_op.is_none() {
                s.read_op = Some(op);
            }
            Ok(())
        }
        Ok(Err(e)) => settle(&fut, Err(os_error(e))),
    }
}
