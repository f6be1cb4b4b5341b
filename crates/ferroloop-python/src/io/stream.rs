//! Native stream transports: the state and data path of asyncio's
//! `_SelectorSocketTransport` (TCP and Unix stream sockets), in Rust.
//!
//! `_StreamCore` holds the state; the Python class
//! `ferroloop._SocketTransport` (an `asyncio.Transport`, which a native
//! class cannot subclass: `BaseTransport`'s `__slots__` fix its layout) owns
//! one and binds the hot methods (`write`, `is_closing`, ...) straight to it,
//! so no Python frame runs between a protocol and the socket. Behaviour,
//! messages and the order of protocol callbacks are asyncio 3.11's.
//!
//! ## Data path
//! - Reads: the fd's readiness queues a `Ready::Stream` item (no Handle);
//!   running it reads once into the loop's reusable buffer (`read_buf`) and
//!   hands the protocol one `bytes` of the exact size, or reads into the
//!   buffer a `BufferedProtocol` lends.
//! - Writes: `write()` tries the socket at once and queues only what it did
//!   not take (`ferroloop_core::write_queue`: small writes copied and
//!   coalesced, large `bytes` held without a copy); the queue is flushed
//!   with `writev` when the fd becomes writable.
//!
//! ## Invariants
//! - The state is borrowed only while no Python code runs: every method
//!   copies out what it needs, releases the borrow, then calls the
//!   protocol, the logger or the loop (which may re-enter the transport).
//!   Objects that may run Python code when dropped are dropped after.
//! - The fd is in the loop's fd table as `FdWatch::Stream` on the reader
//!   side exactly while `reading`, on the writer side exactly while
//!   `writing`; asyncio's `_add_reader`/`_remove_reader` moments are kept
//!   (`reading` is also what a queued read checks before it reads).
//! - Edge-aware (`ferroloop_core::reactor`): the fd is not re-armed after an
//!   event. A read that filled the whole buffer queues the next read itself
//!   (next iteration: one read per ready transport per iteration, asyncio's
//!   fairness); a flush writes until `WouldBlock` or an empty queue. TCP
//!   reads are short only when the queue is drained (or at the urgent mark
//!   of `MSG_OOB` data, which then waits for the peer's next bytes); an
//!   AF_UNIX read that stopped at ancillary data with more queued says so
//!   (`read_buf::recv_raw`) and queues the next read too.
//! - After `connection_lost` the transport holds no Python object but its
//!   shell: socket closed, protocol, loop and server released.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};

use ferroloop_core::write_queue::{Chunk, FlowControl, WriteQueue, COALESCE_LIMIT};
use pyo3::exceptions::{PyConnectionError, PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView};
use pyo3::{ffi, intern, PyTraverseError};

use crate::aio::{imports, in_context};
use crate::errors::{is_exit_exception, os_error};
use crate::gil::GilRefCell;
use crate::io::buffer::BufView;
use crate::io::read_buf::{recv_bytes, recv_raw};
use crate::loop_state::{FdWatch, Loop};

/// asyncio's `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

/// A caller's `bytes` (immutable: it cannot change while queued), from
/// `ptr` for `len` bytes.
pub(crate) struct HeldBytes {
    _obj: Py<PyAny>,
    ptr: *const u8,
    len: usize,
}

// SAFETY: the pointer points into the `bytes` object `_obj` keeps alive, and
// every access holds the GIL (transports are used only by their loop).
unsafe impl Send for HeldBytes {}

impl AsRef<[u8]> for HeldBytes {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` lies inside the immutable buffer of `_obj`,
        // alive as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

pub(crate) fn sock_ref<'a>(fd: &'a BorrowedFd<'_>) -> socket2::SockRef<'a> {
    socket2::SockRef::from(fd)
}

pub(crate) fn retry_later(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

struct StreamState {
    lp: Option<Py<Loop>>,
    /// The Python `_SocketTransport` this is the core of (what protocols,
    /// the exception handler and log lines see).
    transport: Option<Py<PyAny>>,
    sock: Option<Py<PyAny>>,
    fd: RawFd,
    protocol: Option<Py<PyAny>>,
    buffered: bool,
    protocol_connected: bool,
    server: Option<Py<PyAny>>,
    queue: WriteQueue<HeldBytes>,
    flow: FlowControl,
    /// Set when `connection_lost` is scheduled; counts writes after it.
    conn_lost: u32,
    closing: bool,
    paused: bool,
    eof: bool,
    reading: bool,
    writing: bool,
    /// The contexts reads and flushes run in: copies of the context current
    /// when the reader or writer was added, as the Handle asyncio's
    /// `_add_reader`/`_add_writer` makes would hold.
    read_ctx: Option<Py<PyAny>>,
    write_ctx: Option<Py<PyAny>>,
    empty_waiter: Option<Py<PyAny>>,
    max_size: usize,
    /// An AF_UNIX socket: read with `recvmsg` (`read_buf::recv_raw`).
    unix: bool,
}

/// The native core of a stream transport (see the module docs).
#[pyclass(frozen, module = "ferroloop._ferroloop", name = "_StreamCore")]
pub(crate) struct StreamCore {
    st: GilRefCell<StreamState>,
}

/// What the core needs to call back into Python without its borrow.
struct Peers {
    lp: Py<Loop>,
    transport: Py<PyAny>,
    protocol: Option<Py<PyAny>>,
}

impl StreamCore {
    fn st(&self) -> std::cell::RefMut<'_, StreamState> {
        self.st.lock()
    }

    fn peers(&self, py: Python<'_>) -> Option<Peers> {
        let s = self.st();
        Some(Peers {
            lp: s.lp.as_ref()?.clone_ref(py),
            transport: s.transport.as_ref()?.clone_ref(py),
            protocol: s.protocol.as_ref().map(|p| p.clone_ref(py)),
        })
    }

    /// Adds or removes the reader (`read`) or writer side of the fd in the
    /// loop's table, as asyncio's `_add_reader`/`_remove_reader` (adding on a
    /// closed loop raises; removing from one does nothing).
    fn watch(slf: &Bound<'_, StreamCore>, read: bool, on: bool) -> PyResult<()> {
        let py = slf.py();
        let (lp, fd, sock) = {
            let s = slf.get().st();
            let now = if read { s.reading } else { s.writing };
            let (Some(lp), Some(sock)) = (&s.lp, &s.sock) else {
                return Ok(());
            };
            if now == on {
                return Ok(());
            }
            (lp.clone_ref(py), s.fd, sock.clone_ref(py))
        };
        let ctx = if on {
            Some(crate::aio::copy_context(py)?.unbind())
        } else {
            None
        };
        let lp = lp.bind(py).get();
        let old = {
            let mut ls = lp.st();
            if ls.closed {
                if on {
                    return Err(crate::errors::closed_error());
                }
                return Ok(());
            }
            let r = match (on, read) {
                (true, _) => {
                    let w = FdWatch::Stream {
                        stream: slf.clone().into_any().unbind(),
                        fileobj: sock,
                    };
                    if read {
                        ls.core.add_reader(fd, w)
                    } else {
                        ls.core.add_writer(fd, w)
                    }
                }
                (false, true) => ls.core.remove_reader(fd),
                (false, false) => ls.core.remove_writer(fd),
            };
            r.map_err(os_error)?
        };
        let old_ctx = {
            let mut s = slf.get().st();
            if read {
                s.reading = on;
                if on {
                    std::mem::replace(&mut s.read_ctx, ctx)
                } else {
                    None
                }
            } else {
                s.writing = on;
                if on {
                    std::mem::replace(&mut s.write_ctx, ctx)
                } else {
                    None
                }
            }
        };
        drop(old_ctx);
        if let Some(FdWatch::Callback { handle, .. }) = &old {
            handle.get().do_cancel(py, handle.bind(py).as_any())?;
        }
        drop(old);
        Ok(())
    }

    fn log<'py>(
        py: Python<'py>,
        level: &str,
        args: impl pyo3::call::PyCallArgs<'py>,
    ) -> PyResult<()> {
        imports(py)?.logger.bind(py).call_method1(level, args)?;
        Ok(())
    }

    fn debug(slf: &Bound<'_, StreamCore>) -> bool {
        let s = slf.get().st();
        s.lp.as_ref().is_some_and(|l| l.get().st().debug)
    }

    /// `loop.call_exception_handler` with asyncio's transport context.
    fn report(
        py: Python<'_>,
        peers: &Peers,
        message: &str,
        exc: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let ctx = PyDict::new(py);
        ctx.set_item("message", message)?;
        ctx.set_item("exception", exc)?;
        ctx.set_item("transport", &peers.transport)?;
        ctx.set_item(
            "protocol",
            peers
                .protocol
                .as_ref()
                .map_or_else(|| py.None(), |p| p.clone_ref(py)),
        )?;
        peers
            .lp
            .bind(py)
            .call_method1(intern!(py, "call_exception_handler"), (ctx,))?;
        Ok(())
    }

    /// asyncio's `_fatal_error`: an `OSError` is logged in debug mode only,
    /// anything else goes to the exception handler; then `_force_close`.
    fn fatal_error(
        slf: &Bound<'_, StreamCore>,
        exc: &Bound<'_, PyAny>,
        message: &str,
    ) -> PyResult<()> {
        let py = slf.py();
        if let Some(peers) = slf.get().peers(py) {
            if exc.is_instance_of::<PyOSError>() {
                if Self::debug(slf) {
                    let kw = PyDict::new(py);
                    kw.set_item("exc_info", exc)?;
                    imports(py)?.logger.bind(py).call_method(
                        intern!(py, "debug"),
                        ("%r: %s", &peers.transport, message),
                        Some(&kw),
                    )?;
                }
            } else {
                Self::report(py, &peers, message, exc)?;
            }
        }
        Self::force_close(slf, Some(exc))
    }

    /// Routes an error of a protocol callback: exit exceptions propagate,
    /// anything else is fatal for the transport.
    fn protocol_failed(slf: &Bound<'_, StreamCore>, e: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        if is_exit_exception(py, &e) {
            return Err(e);
        }
        Self::fatal_error(slf, e.value(py).as_any(), message)
    }

    fn force_close(slf: &Bound<'_, StreamCore>, exc: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let (had_queue, was_closing, dropped) = {
            let mut s = slf.get().st();
            if s.conn_lost > 0 {
                return Ok(());
            }
            let had_queue = !s.queue.is_empty();
            let dropped = s.queue.clear();
            let was_closing = s.closing;
            s.closing = true;
            s.conn_lost += 1;
            (had_queue, was_closing, dropped)
        };
        drop(dropped);
        if had_queue {
            Self::watch(slf, false, false)?;
        }
        if !was_closing {
            Self::watch(slf, true, false)?;
        }
        Self::schedule_connection_lost(slf, exc)
    }

    fn schedule_connection_lost(
        slf: &Bound<'_, StreamCore>,
        exc: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let Some(lp) = slf.get().st().lp.as_ref().map(|l| l.clone_ref(py)) else {
            return Ok(());
        };
        let cb = slf.getattr(intern!(py, "_call_connection_lost"))?;
        lp.bind(py).call_method1(
            intern!(py, "call_soon"),
            (cb, exc.map_or_else(|| py.None(), |e| e.clone().unbind())),
        )?;
        Ok(())
    }

    /// Queues another read of this transport for the next iteration (the
    /// last read filled the buffer: more may be waiting, and no new edge
    /// will report it).
    fn read_again(slf: &Bound<'_, StreamCore>) {
        let py = slf.py();
        let lp = slf.get().st().lp.as_ref().map(|l| l.clone_ref(py));
        if let Some(lp) = lp {
            Loop::queue_read(lp.bind(py), slf.clone().into_any().unbind());
        }
    }

    /// The fd is readable (asyncio's `_read_ready`).
    pub(crate) fn read_ready(slf: &Bound<'_, StreamCore>) -> PyResult<()> {
        let py = slf.py();
        let (fd, buffered, protocol, max, unix) = {
            let s = slf.get().st();
            let Some(p) = &s.protocol else { return Ok(()) };
            if s.conn_lost > 0 || !s.reading {
                return Ok(());
            }
            (s.fd, s.buffered, p.clone_ref(py), s.max_size, s.unix)
        };
        let protocol = protocol.bind(py);
        if buffered {
            return Self::read_into_protocol_buffer(slf, fd, protocol, unix);
        }
        let (data, more) = match recv_bytes(py, fd, max, unix) {
            Ok(d) => d,
            Err(e) => return Self::read_failed(slf, e),
        };
        let n = data.as_bytes().len();
        Self::after_read(
            slf,
            protocol,
            n,
            more || n == max,
            "Fatal error: protocol.data_received() call failed.",
            || protocol.call_method1(intern!(py, "data_received"), (data,)),
        )
    }

    /// A read failed: later if it would block, else fatal for the transport.
    fn read_failed(slf: &Bound<'_, StreamCore>, e: io::Error) -> PyResult<()> {
        if retry_later(&e) {
            return Ok(());
        }
        let e = os_error(e);
        Self::fatal_error(
            slf,
            e.value(slf.py()).as_any(),
            "Fatal read error on socket transport",
        )
    }

    /// After a read of `n` bytes: EOF, or the protocol's callback
    /// (`deliver`), then another read if more may be queued (`more`: the
    /// buffer filled up, or the read stopped at ancillary data).
    fn after_read<'py>(
        slf: &Bound<'py, StreamCore>,
        protocol: &Bound<'py, PyAny>,
        n: usize,
        more: bool,
        message: &str,
        deliver: impl FnOnce() -> PyResult<Bound<'py, PyAny>>,
    ) -> PyResult<()> {
        if n == 0 {
            return Self::on_eof(slf, protocol);
        }
        if let Err(e) = deliver() {
            return Self::protocol_failed(slf, e, message);
        }
        if more {
            Self::read_again(slf);
        }
        Ok(())
    }

    fn read_into_protocol_buffer(
        slf: &Bound<'_, StreamCore>,
        fd: RawFd,
        protocol: &Bound<'_, PyAny>,
        unix: bool,
    ) -> PyResult<()> {
        let py = slf.py();
        let buf = protocol
            .call_method1(intern!(py, "get_buffer"), (-1,))
            .and_then(|b| {
                if b.len()? == 0 {
                    Err(PyRuntimeError::new_err(
                        "get_buffer() returned an empty buffer",
                    ))
                } else {
                    Ok(b)
                }
            });
        let buf = match buf {
            Ok(b) => b,
            Err(e) => {
                return Self::protocol_failed(
                    slf,
                    e,
                    "Fatal error: protocol.get_buffer() call failed.",
                )
            }
        };
        let got = BufView::get(&buf, true).map(|mut view| {
            let size = view.len();
            // The fd is open: the transport owns the socket until
            // connection_lost, and reads stop before that.
            (recv_raw(fd, view.bytes_mut(), unix), size)
        });
        let (n, more) = match got {
            Ok((Ok((n, more)), size)) => (n, more || n == size),
            Ok((Err(e), _)) => return Self::read_failed(slf, e),
            Err(e) => return Self::protocol_failed(slf, e, "Fatal read error on socket transport"),
        };
        Self::after_read(
            slf,
            protocol,
            n,
            more,
            "Fatal error: protocol.buffer_updated() call failed.",
            || protocol.call_method1(intern!(py, "buffer_updated"), (n,)),
        )
    }

    fn on_eof(slf: &Bound<'_, StreamCore>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        if Self::debug(slf) {
            if let Some(p) = slf.get().peers(py) {
                Self::log(py, "debug", ("%r received EOF", p.transport))?;
            }
        }
        let keep_open = match protocol.call_method0(intern!(py, "eof_received")) {
            Ok(k) => k.is_truthy(),
            Err(e) => Err(e),
        };
        match keep_open {
            Ok(true) => Self::watch(slf, true, false),
            Ok(false) => Self::close_impl(slf),
            Err(e) => {
                Self::protocol_failed(slf, e, "Fatal error: protocol.eof_received() call failed.")
            }
        }
    }

    /// The fd is writable: flush the queue (asyncio's `_write_ready`).
    pub(crate) fn write_ready(slf: &Bound<'_, StreamCore>) -> PyResult<()> {
        let py = slf.py();
        loop {
            let (blocked, sent) = match Self::flush(slf) {
                Ok(x) => x,
                Err(e) => {
                    Self::watch(slf, false, false)?;
                    let dropped = slf.get().st().queue.clear();
                    drop(dropped);
                    let exc = os_error(e);
                    let exc = exc.value(py).as_any();
                    Self::fatal_error(slf, exc, "Fatal write error on socket transport")?;
                    return Self::settle_empty_waiter(slf, Some(exc));
                }
            };
            drop(sent);
            if slf.get().st().conn_lost > 0 {
                return Ok(());
            }
            Self::flow_check(slf, false)?;
            let (empty, closing, eof) = {
                let s = slf.get().st();
                (s.queue.is_empty(), s.closing, s.eof)
            };
            if !empty {
                if blocked {
                    return Ok(()); // the next edge reports the space
                }
                continue; // resume_writing() queued more and the socket may take it
            }
            Self::watch(slf, false, false)?;
            Self::settle_empty_waiter(slf, None)?;
            if closing {
                return Self::call_connection_lost_impl(slf, None);
            } else if eof {
                Self::shutdown_write(slf)?;
            }
            return Ok(());
        }
    }

    /// Writes the queue until it is empty or the socket would block
    /// (`Ok((true, _))`); hands back the chunks sent, to drop unborrowed.
    #[allow(clippy::type_complexity)]
    fn flush(slf: &Bound<'_, StreamCore>) -> io::Result<(bool, Vec<Chunk<HeldBytes>>)> {
        let mut s = slf.get().st();
        let mut sent = Vec::new();
        if s.conn_lost > 0 || s.sock.is_none() {
            return Ok((false, sent));
        }
        // SAFETY: the socket is open while `sock` is set.
        let fd = unsafe { BorrowedFd::borrow_raw(s.fd) };
        while !s.queue.is_empty() {
            let r = {
                let slices = s.queue.io_slices();
                sock_ref(&fd).send_vectored(&slices)
            };
            match r {
                Ok(n) => sent.extend(s.queue.consume(n)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((true, sent)),
                Err(e) => {
                    drop(s);
                    drop(sent);
                    return Err(e);
                }
            }
        }
        Ok((false, sent))
    }

    fn shutdown_write(slf: &Bound<'_, StreamCore>) -> PyResult<()> {
        let s = slf.get().st();
        if s.sock.is_none() {
            return Ok(());
        }
        // SAFETY: the socket is open while `sock` is set.
        let fd = unsafe { BorrowedFd::borrow_raw(s.fd) };
        sock_ref(&fd)
            .shutdown(std::net::Shutdown::Write)
            .map_err(os_error)
    }

    /// asyncio's `_maybe_pause_protocol` (`pause == true`) and
    /// `_maybe_resume_protocol`: tells the protocol when the queue crossed
    /// a water mark.
    fn flow_check(slf: &Bound<'_, StreamCore>, pause: bool) -> PyResult<()> {
        let py = slf.py();
        let tell = {
            let mut s = slf.get().st();
            let n = s.queue.len();
            if pause {
                s.flow.should_pause(n)
            } else {
                s.flow.should_resume(n)
            }
        };
        match (tell, pause) {
            (false, _) => Ok(()),
            (true, true) => Self::tell_protocol(
                slf,
                intern!(py, "pause_writing"),
                "protocol.pause_writing() failed",
            ),
            (true, false) => Self::tell_protocol(
                slf,
                intern!(py, "resume_writing"),
                "protocol.resume_writing() failed",
            ),
        }
    }

    fn tell_protocol(
        slf: &Bound<'_, StreamCore>,
        method: &Bound<'_, pyo3::types::PyString>,
        message: &str,
    ) -> PyResult<()> {
        let py = slf.py();
        let Some(peers) = slf.get().peers(py) else {
            return Ok(());
        };
        let Some(p) = &peers.protocol else {
            return Ok(());
        };
        match p.bind(py).call_method0(method) {
            Ok(_) => Ok(()),
            Err(e) if is_exit_exception(py, &e) => Err(e),
            Err(e) => Self::report(py, &peers, message, e.value(py).as_any()),
        }
    }

    /// `pause_reading` (`paused == true`) / `resume_reading`: nothing when
    /// closing or already in that state; else the reader goes or comes back.
    fn set_paused(slf: &Bound<'_, StreamCore>, paused: bool) -> PyResult<()> {
        let py = slf.py();
        {
            let mut s = slf.get().st();
            if s.closing || s.paused == paused {
                return Ok(());
            }
            s.paused = paused;
        }
        Self::watch(slf, true, !paused)?;
        if Self::debug(slf) {
            if let Some(p) = slf.get().peers(py) {
                let what = if paused {
                    "%r pauses reading"
                } else {
                    "%r resumes reading"
                };
                Self::log(py, "debug", (what, p.transport))?;
            }
        }
        Ok(())
    }

    /// Completes `sendfile`'s empty-waiter, if one waits: with `exc`, or
    /// with `None` (the queue is empty).
    fn settle_empty_waiter(
        slf: &Bound<'_, StreamCore>,
        exc: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let waiter = slf
            .get()
            .st()
            .empty_waiter
            .as_ref()
            .map(|w| w.clone_ref(py));
        let Some(w) = waiter else { return Ok(()) };
        match exc {
            Some(e) => w
                .bind(py)
                .call_method1(intern!(py, "set_exception"), (e,))?,
            None => w
                .bind(py)
                .call_method1(intern!(py, "set_result"), (py.None(),))?,
        };
        Ok(())
    }

    /// `transport.write(data)` (asyncio's checks and messages, in its
    /// order): sends at once when nothing is queued, queues the rest.
    /// `crate::fastcall` calls it without PyO3's argument parsing.
    pub(crate) fn write_data(slf: &Bound<'_, StreamCore>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        // SAFETY: type checks only read the object's type.
        let exact_bytes = unsafe { ffi::PyBytes_CheckExact(data.as_ptr()) } != 0;
        // SAFETY: as above.
        let any_bytes = exact_bytes || unsafe { ffi::PyBytes_Check(data.as_ptr()) } != 0;
        if !any_bytes
            && !data.is_instance_of::<PyByteArray>()
            && !data.is_instance_of::<PyMemoryView>()
        {
            return Err(PyTypeError::new_err(format!(
                "data argument must be a bytes-like object, not '{}'",
                data.get_type().name()?
            )));
        }
        let view;
        let bytes = if exact_bytes {
            // SAFETY: checked to be exactly `bytes` above.
            unsafe { data.cast_unchecked::<PyBytes>() }.as_bytes()
        } else {
            view = BufView::get(data, false)?;
            view.bytes()
        };
        let fd = {
            let mut s = slf.get().st();
            if s.eof {
                return Err(PyRuntimeError::new_err(
                    "Cannot call write() after write_eof()",
                ));
            }
            if s.empty_waiter.is_some() {
                return Err(PyRuntimeError::new_err(
                    "unable to write; sendfile is in progress",
                ));
            }
            if bytes.is_empty() {
                return Ok(());
            }
            if s.conn_lost > 0 || s.sock.is_none() {
                // (No socket but no loss counted: connection_lost ran after
                // a flush that followed close(); its fd may be reused.)
                s.conn_lost = s.conn_lost.max(1);
                let warn = s.conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES;
                s.conn_lost += 1;
                drop(s);
                if warn {
                    Self::log(py, "warning", ("socket.send() raised exception.",))?;
                }
                return Ok(());
            }
            s.queue.is_empty().then_some(s.fd)
        };
        let mut start = 0;
        if let Some(fd) = fd {
            // SAFETY: conn_lost is 0, so the socket is still open.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            match sock_ref(&fd).send(bytes) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(n) => start = n,
                Err(e) if retry_later(&e) => {}
                Err(e) => {
                    let e = os_error(e);
                    return Self::fatal_error(
                        slf,
                        e.value(py).as_any(),
                        "Fatal write error on socket transport",
                    );
                }
            }
            Self::watch(slf, false, true)?;
        }
        {
            let rest = &bytes[start..];
            let mut s = slf.get().st();
            if exact_bytes && rest.len() >= COALESCE_LIMIT {
                s.queue.push_held(HeldBytes {
                    _obj: data.clone().unbind(),
                    ptr: rest.as_ptr(),
                    len: rest.len(),
                });
            } else {
                s.queue.push_copy(rest);
            }
        }
        Self::flow_check(slf, true)
    }

    fn close_impl(slf: &Bound<'_, StreamCore>) -> PyResult<()> {
        let empty = {
            let mut s = slf.get().st();
            if s.closing {
                return Ok(());
            }
            s.closing = true;
            s.queue.is_empty()
        };
        Self::watch(slf, true, false)?;
        if empty {
            slf.get().st().conn_lost += 1;
            Self::watch(slf, false, false)?;
            Self::schedule_connection_lost(slf, None)?;
        }
        Ok(())
    }

    fn call_connection_lost_impl(
        slf: &Bound<'_, StreamCore>,
        exc: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        // Nothing may stay watched once the socket is closed.
        Self::watch(slf, true, false)?;
        Self::watch(slf, false, false)?;
        let (protocol, connected) = {
            let s = slf.get().st();
            (
                s.protocol.as_ref().map(|p| p.clone_ref(py)),
                s.protocol_connected,
            )
        };
        let r = match (&protocol, connected) {
            (Some(p), true) => p
                .bind(py)
                .call_method1(
                    intern!(py, "connection_lost"),
                    (exc.map_or_else(|| py.None(), |e| e.clone().unbind()),),
                )
                .map(|_| ()),
            _ => Ok(()),
        };
        let (sock, proto, lp, server, transport) = {
            let mut s = slf.get().st();
            (
                s.sock.take(),
                s.protocol.take(),
                s.lp.take(),
                s.server.take(),
                s.transport.as_ref().map(|t| t.clone_ref(py)),
            )
        };
        let closed = sock.map_or(Ok(()), |so| {
            so.bind(py).call_method0(intern!(py, "close")).map(|_| ())
        });
        drop((proto, lp));
        let detached = match server {
            Some(server) => {
                let server = server.bind(py);
                if py.version_info() >= (3, 12) {
                    server
                        .call_method1(intern!(py, "_detach"), (transport,))
                        .map(|_| ())
                } else {
                    server.call_method0(intern!(py, "_detach")).map(|_| ())
                }
            }
            None => Ok(()),
        };
        r?;
        closed?;
        detached?;
        let err = PyConnectionError::new_err("Connection is closed by peer");
        Self::settle_empty_waiter(slf, Some(err.value(py).as_any()))
    }
}

#[pymethods]
impl StreamCore {
    /// `_StreamCore(loop, transport, sock, protocol, server, max_size)`.
    #[new]
    fn py_new(
        lp: &Bound<'_, Loop>,
        transport: Py<PyAny>,
        sock: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        server: Option<Py<PyAny>>,
        max_size: usize,
    ) -> PyResult<Self> {
        let py = sock.py();
        let fd: RawFd = sock.call_method0(intern!(py, "fileno"))?.extract()?;
        if max_size == 0 {
            return Err(PyValueError::new_err("max_size must be positive"));
        }
        let buffered = protocol.is_instance(imports(py)?.buffered_protocol.bind(py))?;
        let family: i32 = sock
            .getattr(intern!(py, "family"))
            .and_then(|f| f.extract())
            .unwrap_or(0);
        let unix = family == i32::from(socket2::Domain::UNIX);
        Ok(StreamCore {
            st: GilRefCell::new(StreamState {
                lp: Some(lp.clone().unbind()),
                transport: Some(transport),
                sock: Some(sock.clone().unbind()),
                fd,
                protocol: Some(protocol.clone().unbind()),
                buffered,
                protocol_connected: true,
                server,
                queue: WriteQueue::new(),
                flow: FlowControl::default(),
                conn_lost: 0,
                closing: false,
                paused: false,
                eof: false,
                reading: false,
                writing: false,
                read_ctx: None,
                write_ctx: None,
                empty_waiter: None,
                max_size,
                unix,
            }),
        })
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Some(s) = self.st.try_lock() else {
            return Ok(());
        };
        for o in [
            &s.transport,
            &s.sock,
            &s.protocol,
            &s.server,
            &s.empty_waiter,
            &s.read_ctx,
            &s.write_ctx,
        ]
        .into_iter()
        .flatten()
        {
            visit.call(o)?;
        }
        if let Some(l) = &s.lp {
            visit.call(l)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        let taken = self.st.try_lock().map(|mut s| {
            (
                s.transport.take(),
                s.sock.take(),
                s.protocol.take(),
                s.server.take(),
                s.empty_waiter.take(),
                s.lp.take(),
                s.read_ctx.take(),
                s.write_ctx.take(),
            )
        });
        drop(taken);
    }

    /// Starts reading (scheduled after `connection_made`, as asyncio's
    /// `call_soon(self._add_reader, ...)`); nothing if closing or paused.
    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        {
            let s = slf.get().st();
            if s.closing || s.paused {
                return Ok(());
            }
        }
        Self::watch(slf, true, true)
    }

    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::read_ready(slf)
    }

    fn _write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::write_ready(slf)
    }

    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::write_data(slf, data)
    }

    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let joined = PyBytes::new(py, b"").call_method1(intern!(py, "join"), (list_of_data,))?;
        Self::write(slf, &joined)
    }

    fn write_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let empty = {
            let mut s = slf.get().st();
            if s.closing || s.eof {
                return Ok(());
            }
            s.eof = true;
            s.queue.is_empty()
        };
        if empty {
            Self::shutdown_write(slf)?;
        }
        Ok(())
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::close_impl(slf)
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::force_close(slf, None)
    }

    #[pyo3(signature = (exc, message = "Fatal error on transport"))]
    fn _fatal_error(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>, message: &str) -> PyResult<()> {
        Self::fatal_error(slf, exc, message)
    }

    fn _force_close(slf: &Bound<'_, Self>, exc: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        Self::force_close(slf, exc)
    }

    fn _call_connection_lost(
        slf: &Bound<'_, Self>,
        exc: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        Self::call_connection_lost_impl(slf, exc)
    }

    fn is_closing(&self) -> bool {
        self.st().closing
    }

    fn is_reading(&self) -> bool {
        let s = self.st();
        !s.closing && !s.paused
    }

    fn pause_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::set_paused(slf, true)
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::set_paused(slf, false)
    }

    fn set_protocol(&self, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = protocol.py();
        let buffered = protocol.is_instance(imports(py)?.buffered_protocol.bind(py))?;
        let old = {
            let mut s = self.st();
            s.buffered = buffered;
            s.protocol_connected = true;
            s.protocol.replace(protocol.clone().unbind())
        };
        drop(old);
        Ok(())
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st().protocol.as_ref().map(|p| p.clone_ref(py))
    }

    fn get_write_buffer_size(&self) -> usize {
        self.st().queue.len()
    }

    fn get_write_buffer_limits(&self) -> (usize, usize) {
        self.st().flow.limits()
    }

    #[pyo3(signature = (high = None, low = None))]
    fn set_write_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<i128>,
        low: Option<i128>,
    ) -> PyResult<()> {
        let r = slf.get().st().flow.set_limits(high, low);
        if let Err(bad) = r {
            return Err(PyValueError::new_err(format!(
                "high ({}) must be >= low ({}) must be >= 0",
                bad.high, bad.low
            )));
        }
        Self::flow_check(slf, true)
    }

    fn _make_empty_waiter(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let (lp, empty) = {
            let s = slf.get().st();
            if s.empty_waiter.is_some() {
                return Err(PyRuntimeError::new_err("Empty waiter is already set"));
            }
            let lp =
                s.lp.as_ref()
                    .map(|l| l.clone_ref(py))
                    .ok_or_else(|| PyRuntimeError::new_err("the transport is closed"))?;
            (lp, s.queue.is_empty())
        };
        let w = lp.bind(py).call_method0(intern!(py, "create_future"))?;
        slf.get().st().empty_waiter = Some(w.clone().unbind());
        if empty {
            w.call_method1(intern!(py, "set_result"), (py.None(),))?;
        }
        Ok(w.unbind())
    }

    fn _reset_empty_waiter(&self) {
        let old = self.st().empty_waiter.take();
        drop(old);
    }

    /// The context reads (`write == false`) or flushes run in (debug mode
    /// runs them through Handles, `crate::future::step`).
    fn _context(&self, py: Python<'_>, write: bool) -> Option<Py<PyAny>> {
        let s = self.st();
        let ctx = if write { &s.write_ctx } else { &s.read_ctx };
        ctx.as_ref().map(|c| c.clone_ref(py))
    }

    /// `(reading, writing)`: is the fd watched for each (for the repr).
    fn _polling(&self) -> (bool, bool) {
        let s = self.st();
        (s.reading, s.writing)
    }

    #[getter]
    fn _sock(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st().sock.as_ref().map(|s| s.clone_ref(py))
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st().lp.as_ref().map(|l| l.clone_ref(py).into_any())
    }

    #[getter]
    fn _paused(&self) -> bool {
        self.st().paused
    }

    #[getter]
    fn _closing(&self) -> bool {
        self.st().closing
    }

    #[getter]
    fn _conn_lost(&self) -> u32 {
        self.st().conn_lost
    }

    #[getter]
    fn _protocol_paused(&self) -> bool {
        self.st().flow.is_paused()
    }
}

/// Runs a ready item of a native transport (`crate::event_loop`): a read
/// or a flush of a stream, a read batch of a datagram transport
/// (`crate::io::datagram`). A Rust panic becomes a Python exception for
/// the caller to report, never an abort.
pub(crate) fn run_ready(stream: &Bound<'_, PyAny>, write: bool) -> PyResult<()> {
    let py = stream.py();
    let stream = match stream.cast::<StreamCore>() {
        Ok(s) => s,
        Err(e) => match stream.cast::<crate::io::datagram::DatagramCore>() {
            Ok(d) => return crate::io::datagram::run_ready(d),
            Err(_) => return Err(e.into()),
        },
    };
    let ctx = {
        let s = stream.get().st();
        let ctx = if write { &s.write_ctx } else { &s.read_ctx };
        match ctx {
            Some(c) => c.clone_ref(py),
            None => return Ok(()), // never watched, or cleared by the GC
        }
    };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        in_context(ctx.bind(py), || {
            if write {
                StreamCore::write_ready(stream)
            } else {
                StreamCore::read_ready(stream)
            }
        })
    }));
    r.unwrap_or_else(|panic| {
        Err(crate::errors::panic_error(
            panic,
            "panic in a stream transport",
        ))
    })
}
