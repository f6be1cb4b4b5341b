//! The data path of TLS connections: ciphertext between the socket
//! transport and the `ssl.MemoryBIO`s, plaintext between the `SSLObject` and
//! the application protocol, in Rust.
//!
//! `ferroloop._tls._SSLProtocol` is asyncio's `SSLProtocol` (its handshake,
//! shutdown, flow-control and error state machine, its messages) with the
//! methods of the connected state bound per instance to a `_TLSPump`:
//! `get_buffer`/`buffer_updated` (the socket transport's reads),
//! `_do_read`, `_do_read__copied`, `_process_outgoing`, and the application
//! transport's `write`. The user's `SSLContext` makes the `SSLObject`, so
//! its OpenSSL settings are the ones in force.
//!
//! What the pump does differently from asyncio's Python methods, with the
//! same observable behaviour:
//! - A read batch ends when the incoming BIO is empty (and the last read
//!   did not fill the room it was given), instead of at the
//!   `SSLWantReadError` a last `read` raises: OpenSSL takes its input
//!   record by record (Python never turns read-ahead on), so an empty BIO
//!   means nothing is left to decrypt. A BIO holding part of a record is
//!   still read once more, as asyncio does: that moves the partial record
//!   into OpenSSL's buffer (the read-buffer size and the flow-control marks
//!   then see what asyncio's see) and reports a bad header at once.
//! - Plaintext is decrypted straight into the `bytes` handed to
//!   `data_received` (`PyBytesWriter`), sized from what the BIOs hold: no
//!   256 KiB `bytes` per record and no join.
//! - Flow control is checked in Rust; asyncio's `_control_app_writing` /
//!   `_control_ssl_reading` run only when a water mark is crossed.
//!
//! ## Invariants
//! - The protocol's instance `__dict__` is the one source of truth for its
//!   state (`_state`, `_write_backlog`, the water marks, ...): the pump
//!   reads it on every call and never caches it, so asyncio's Python code
//!   and the pump can take turns.
//! - The writable `memoryview` over a `PyBytesWriter`'s buffer is released
//!   before the writer is finished or discarded; if anything kept an export
//!   of it, the writer is leaked rather than freed under it.
//! - The pump holds its protocol (the cycle through the protocol's
//!   `__dict__` is broken by its `connection_lost`, and is the GC's
//!   otherwise: `__traverse__`/`__clear__`), and the application transport
//!   weakly (that transport's `write` is the pump's).

use std::ffi::c_char;

use pyo3::exceptions::{PyException, PyRuntimeError, PyTypeError};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{
    PyByteArray, PyBytes, PyDict, PyMemoryView, PySlice, PyString, PyTuple, PyWeakrefReference,
};
use pyo3::{ffi, intern, PyTraverseError};

use crate::gil::{GilCell, GilRefCell};

/// The most plaintext one TLS record carries (2^14 bytes).
const MAX_RECORD_PLAINTEXT: usize = 1 << 14;

/// One read buffer for the ciphertext of every TLS connection (a
/// `memoryview` over a `bytearray` of asyncio's `SSLProtocol.max_size`),
/// instead of one per connection: between `get_buffer` and
/// `buffer_updated` only the socket read runs, and `buffer_updated` copies
/// the bytes into the connection's BIO at once, so one buffer serves all,
/// and it stays in the CPU's cache (ten connections' own 256 KiB buffers
/// do not).
static SHARED_READ: GilCell<Option<Py<PyAny>>> = GilCell::new(None);

/// The shared read buffer, made on first use with `size` bytes.
fn shared_read_buffer(py: Python<'_>, size: usize) -> PyResult<Bound<'_, PyAny>> {
    // SAFETY: GIL held; the closure only clones a reference (no Python code).
    let have = unsafe { SHARED_READ.with(|v| v.as_ref().map(|v| v.clone_ref(py))) };
    if let Some(v) = have {
        return Ok(v.into_bound(py));
    }
    let view = PyMemoryView::from(&PyByteArray::new(py, &vec![0u8; size]))?.into_any();
    let keep = view.clone().unbind();
    // SAFETY: as above; the slot is empty (nothing ran since the check).
    unsafe { SHARED_READ.with(|v| *v = Some(keep)) };
    Ok(view)
}

struct PumpState {
    protocol: Option<Py<PyAny>>,
    /// The protocol's instance `__dict__`.
    pdict: Option<Py<PyDict>>,
    /// A weak reference to the application transport.
    app_transport: Option<Py<PyAny>>,
    /// The last `get_buffer` lent the shared read buffer (else the
    /// protocol's own, which asyncio's `get_buffer` may have regrown).
    lent_shared: bool,
}

/// See the module docs.
#[pyclass(frozen, module = "ferroloop._ferroloop", name = "_TLSPump")]
pub(crate) struct TlsPump {
    st: GilRefCell<PumpState>,
    incoming: Py<PyAny>,
    outgoing: Py<PyAny>,
    /// The `_ssl._SSLObject` under a stdlib `ssl.SSLObject`; `None` when the
    /// context's `sslobject_class` is the user's (then its Python methods
    /// run, through asyncio's own reading code).
    raw: Option<Py<PyAny>>,
    /// The protocol's `SSLObject`.
    sslobj: Py<PyAny>,
    /// asyncio's `SSLAgainErrors`.
    again: Py<PyAny>,
    wrapped: Py<PyAny>,
    flushing: Py<PyAny>,
    handshaking: Py<PyAny>,
    shutting_down: Py<PyAny>,
    /// asyncio's `SSLProtocol` class, whose methods are the fallbacks.
    base: Py<PyAny>,
    max_size: isize,
}

type Peers<'py> = (Bound<'py, PyAny>, Bound<'py, PyDict>);

/// `d[name]`, else the attribute (a class default).
fn field<'py>(
    p: &Bound<'py, PyAny>,
    d: &Bound<'py, PyDict>,
    name: &Bound<'py, PyString>,
) -> PyResult<Bound<'py, PyAny>> {
    match d.get_item(name)? {
        Some(v) => Ok(v),
        None => p.getattr(name),
    }
}

fn flag(p: &Bound<'_, PyAny>, d: &Bound<'_, PyDict>, name: &Bound<'_, PyString>) -> PyResult<bool> {
    field(p, d, name)?.is_truthy()
}

fn int(p: &Bound<'_, PyAny>, d: &Bound<'_, PyDict>, name: &Bound<'_, PyString>) -> Option<i64> {
    field(p, d, name).ok()?.extract().ok()
}

/// Whether asyncio's flow-control step for a buffer of `size` bytes would
/// act: over the high mark and not paused, or under the low one and paused.
/// `[paused, high, low]` name the protocol's fields; anything unreadable
/// answers true (asyncio's method then runs and decides).
fn mark_crossed(
    p: &Bound<'_, PyAny>,
    d: &Bound<'_, PyDict>,
    size: Option<i64>,
    [paused, high, low]: [&Bound<'_, PyString>; 3],
) -> bool {
    let crossed = || {
        let size = size?;
        let paused = flag(p, d, paused).ok()?;
        let (high, low) = (int(p, d, high)?, int(p, d, low)?);
        Some((size >= high && !paused) || (size <= low && paused))
    };
    crossed() != Some(false)
}

/// Plaintext decrypted into one growing `bytes` (see the module docs).
struct PlainWriter {
    writer: *mut ffi::compat::PyBytesWriter,
    cap: usize,
    len: usize,
}

impl PlainWriter {
    fn new(py: Python<'_>, cap: usize) -> PyResult<Self> {
        let size = isize::try_from(cap).map_err(|_| PyRuntimeError::new_err("read too large"))?;
        // SAFETY: GIL held; returns a writer or NULL with an exception set.
        let writer = unsafe { ffi::compat::PyBytesWriter_Create(size) };
        if writer.is_null() {
            return Err(PyErr::fetch(py));
        }
        Ok(PlainWriter {
            writer,
            cap,
            len: 0,
        })
    }

    fn room(&self) -> usize {
        self.cap - self.len
    }

    /// Makes room for `more` bytes after what was read.
    fn grow(&mut self, py: Python<'_>, more: usize) -> PyResult<()> {
        let cap = self.len + more;
        let size = isize::try_from(cap).map_err(|_| PyRuntimeError::new_err("read too large"))?;
        // SAFETY: a live writer (not finished: `self` owns it); GIL held.
        if unsafe { ffi::compat::PyBytesWriter_Resize(self.writer, size) } < 0 {
            return Err(PyErr::fetch(py));
        }
        self.cap = cap;
        Ok(())
    }

    /// `read(n, buffer)` of the `SSLObject` into the free part; the count.
    fn read_into(&mut self, py: Python<'_>, read: &Bound<'_, PyAny>) -> PyResult<usize> {
        let room = self.room();
        // SAFETY: the writer's buffer holds `cap` bytes (GetData is valid
        // until the next resize, which cannot happen during this call); the
        // view covers the free part, written only.
        let view = unsafe {
            let data = ffi::compat::PyBytesWriter_GetData(self.writer)
                .cast::<c_char>()
                .add(self.len);
            Bound::from_owned_ptr_or_err(
                py,
                ffi::PyMemoryView_FromMemory(data, room as isize, ffi::PyBUF_WRITE),
            )?
        };
        let got = read.call1((room, &view));
        if view.call_method0(intern!(py, "release")).is_err() {
            // Someone kept an export of the buffer: never free it.
            self.writer = std::ptr::null_mut();
            return Err(PyRuntimeError::new_err(
                "SSLObject.read() kept the buffer it was given",
            ));
        }
        let n: usize = got?.extract()?;
        self.len += n.min(room);
        Ok(n)
    }

    /// The `bytes` read, or `None` when nothing was.
    fn finish(mut self, py: Python<'_>) -> PyResult<Option<Bound<'_, PyBytes>>> {
        if self.len == 0 {
            return Ok(None);
        }
        let writer = std::mem::replace(&mut self.writer, std::ptr::null_mut());
        // SAFETY: a live writer, consumed here (FinishWithSize frees it, also
        // on failure); `len` <= its size.
        let obj = unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                ffi::compat::PyBytesWriter_FinishWithSize(writer, self.len as isize),
            )?
        };
        Ok(Some(obj.cast_into::<PyBytes>()?))
    }
}

impl Drop for PlainWriter {
    fn drop(&mut self) {
        if !self.writer.is_null() {
            // SAFETY: an unfinished writer this owns; dropped with the GIL
            // held (only created and used inside pump methods).
            unsafe { ffi::compat::PyBytesWriter_Discard(self.writer) }
        }
    }
}

impl TlsPump {
    fn peers<'py>(&self, py: Python<'py>) -> PyResult<Peers<'py>> {
        let s = self.st.lock();
        match (&s.protocol, &s.pdict) {
            (Some(p), Some(d)) => Ok((p.bind(py).clone(), d.bind(py).clone())),
            _ => Err(PyRuntimeError::new_err("the TLS pump was cleared")),
        }
    }

    fn fallback<'py>(
        &self,
        py: Python<'py>,
        name: &Bound<'py, PyString>,
        p: &Bound<'py, PyAny>,
        args: impl IntoIterator<Item = Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut all = vec![p.clone()];
        all.extend(args);
        self.base
            .bind(py)
            .getattr(name)?
            .call1(PyTuple::new(py, all)?)
    }

    /// asyncio's `except Exception as ex: self._fatal_error(ex, message)`;
    /// `ex` is the handled exception meanwhile, as in that `except` block
    /// (`_fatal_error` logs with `exc_info=True`).
    fn fatal_on_error(py: Python<'_>, p: &Bound<'_, PyAny>, r: PyResult<()>) -> PyResult<()> {
        match r {
            Err(e) if e.is_instance_of::<PyException>(py) => {
                let exc = e.value(py);
                // SAFETY: GIL held; Get returns a new reference (or NULL),
                // Set takes none of its argument's; the previous one is
                // restored below and released by `prev`.
                let prev = unsafe {
                    let prev =
                        Bound::<PyAny>::from_owned_ptr_or_opt(py, ffi::PyErr_GetHandledException());
                    ffi::PyErr_SetHandledException(exc.as_ptr());
                    prev
                };
                let r = p.call_method1(
                    intern!(py, "_fatal_error"),
                    (exc, "Fatal error on SSL protocol"),
                );
                // SAFETY: as above.
                unsafe {
                    ffi::PyErr_SetHandledException(
                        prev.as_ref().map_or(std::ptr::null_mut(), |o| o.as_ptr()),
                    );
                }
                r.map(drop)
            }
            r => r,
        }
    }

    fn incoming_pending(&self, py: Python<'_>) -> PyResult<usize> {
        self.incoming
            .bind(py)
            .getattr(intern!(py, "pending"))?
            .extract()
    }

    /// asyncio's `_do_read`.
    fn do_read_impl(
        &self,
        py: Python<'_>,
        p: &Bound<'_, PyAny>,
        d: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        let state = field(p, d, intern!(py, "_state"))?;
        if !state.is(&self.wrapped) && !state.is(&self.flushing) {
            return Ok(());
        }
        let r = (|| {
            if !flag(p, d, intern!(py, "_app_reading_paused"))? {
                if flag(p, d, intern!(py, "_app_protocol_is_buffer"))? {
                    p.call_method0(intern!(py, "_do_read__buffered"))?;
                } else {
                    self.read_copied_impl(py, p, d)?;
                }
                if flag(p, d, intern!(py, "_write_backlog"))? {
                    p.call_method0(intern!(py, "_do_write"))?;
                } else {
                    self.process_outgoing_impl(py, p, d)?;
                }
            }
            self.control_ssl_reading(py, p, d)
        })();
        Self::fatal_on_error(py, p, r)
    }

    /// asyncio's `_do_read__copied`: every whole record's plaintext to one
    /// `data_received`, then `eof_received` and shutdown on `close_notify`.
    fn read_copied_impl(
        &self,
        py: Python<'_>,
        p: &Bound<'_, PyAny>,
        d: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        let Some(raw) = &self.raw else {
            self.fallback(py, intern!(py, "_do_read__copied"), p, [])?;
            return Ok(());
        };
        let raw = raw.bind(py);
        let held = self.incoming_pending(py)?;
        let decrypted: usize = raw.call_method0(intern!(py, "pending"))?.extract()?;
        if held == 0 && decrypted == 0 {
            // Nothing the library could return (it holds at most a partial
            // record: no read-ahead); asyncio's read would raise WantRead.
            return Ok(());
        }
        let read = raw.getattr(intern!(py, "read"))?;
        let again = self.again.bind(py);
        // Plaintext never exceeds its ciphertext: what the BIO holds, what
        // was decrypted and not returned, and one partial record the library
        // took earlier.
        let mut out = PlainWriter::new(py, held + decrypted + MAX_RECORD_PLAINTEXT)?;
        let mut eof = false;
        // Read at least once; again while the BIO holds bytes, or while a
        // read filled the room given (more of its record may be waiting).
        let mut first = true;
        let mut filled = false;
        loop {
            if !first && !filled && self.incoming_pending(py)? == 0 {
                break; // a read would only raise WantRead
            }
            first = false;
            if out.room() == 0 {
                out.grow(py, self.incoming_pending(py)? + MAX_RECORD_PLAINTEXT)?;
            }
            let room = out.room();
            match out.read_into(py, &read) {
                Ok(0) => {
                    eof = true; // close_notify
                    break;
                }
                Ok(n) => filled = n >= room,
                Err(e) if e.is_instance(py, again) => break,
                Err(e) => return Err(e),
            }
        }
        if let Some(data) = out.finish(py)? {
            field(p, d, intern!(py, "_app_protocol"))?
                .call_method1(intern!(py, "data_received"), (data,))?;
        }
        if eof {
            p.call_method0(intern!(py, "_call_eof_received"))?;
            p.call_method0(intern!(py, "_start_shutdown"))?;
        }
        Ok(())
    }

    /// asyncio's `_process_outgoing`.
    fn process_outgoing_impl(
        &self,
        py: Python<'_>,
        p: &Bound<'_, PyAny>,
        d: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        if !flag(p, d, intern!(py, "_ssl_writing_paused"))? {
            let data = self.outgoing.bind(py).call_method0(intern!(py, "read"))?;
            if data.len()? > 0 {
                field(p, d, intern!(py, "_transport"))?
                    .call_method1(intern!(py, "write"), (data,))?;
            }
        }
        self.control_app_writing(py, p, d)
    }

    /// asyncio's `_control_app_writing`, called only when a mark is crossed.
    fn control_app_writing(
        &self,
        py: Python<'_>,
        p: &Bound<'_, PyAny>,
        d: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        let held = self.outgoing.bind(py).getattr(intern!(py, "pending"));
        let size = held
            .ok()
            .and_then(|h| h.extract::<i64>().ok())
            .and_then(|h| h.checked_add(int(p, d, intern!(py, "_write_buffer_size"))?));
        let marks = [
            intern!(py, "_app_writing_paused"),
            intern!(py, "_outgoing_high_water"),
            intern!(py, "_outgoing_low_water"),
        ];
        if mark_crossed(p, d, size, marks) {
            p.call_method0(intern!(py, "_control_app_writing"))?;
        }
        Ok(())
    }

    /// asyncio's `_control_ssl_reading`, called only when a mark is crossed.
    fn control_ssl_reading(
        &self,
        py: Python<'_>,
        p: &Bound<'_, PyAny>,
        d: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        let size = self
            .incoming_pending(py)
            .ok()
            .and_then(|n| i64::try_from(n).ok());
        let marks = [
            intern!(py, "_ssl_reading_paused"),
            intern!(py, "_incoming_high_water"),
            intern!(py, "_incoming_low_water"),
        ];
        if mark_crossed(p, d, size, marks) {
            p.call_method0(intern!(py, "_control_ssl_reading"))?;
        }
        Ok(())
    }

    /// The fast path of asyncio's `_write_appdata((data,))` in the
    /// connected state with nothing queued.
    fn write_now(
        &self,
        py: Python<'_>,
        p: &Bound<'_, PyAny>,
        d: &Bound<'_, PyDict>,
        data: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let writer = match &self.raw {
            Some(raw) => raw.bind(py).clone(),
            None => self.sslobj.bind(py).clone(),
        };
        let count: usize = match writer.call_method1(intern!(py, "write"), (data,)) {
            Ok(c) => c.extract()?,
            Err(e) if e.is_instance(py, self.again.bind(py)) => {
                // Renegotiating: asyncio queues it and retries.
                p.call_method1(intern!(py, "_write_appdata"), ((data,),))?;
                return Ok(());
            }
            Err(e) => {
                // asyncio queued the data before the write failed: its
                // write-buffer size counts it from then on.
                field(p, d, intern!(py, "_write_backlog"))?
                    .call_method1(intern!(py, "append"), (data,))?;
                let size = field(p, d, intern!(py, "_write_buffer_size"))?.add(data.len()?)?;
                d.set_item(intern!(py, "_write_buffer_size"), size)?;
                return Err(e);
            }
        };
        let len = data.len()?;
        if count < len {
            let rest = data.get_item(PySlice::new(py, count as isize, len as isize, 1))?;
            p.call_method1(intern!(py, "_write_appdata"), ((rest,),))?;
            return Ok(());
        }
        self.process_outgoing_impl(py, p, d)
    }
}

#[pymethods]
impl TlsPump {
    /// `_TLSPump(protocol, raw_sslobj, again_errors, (WRAPPED, FLUSHING,
    /// DO_HANDSHAKE, SHUTDOWN), SSLProtocol)`.
    #[new]
    fn py_new(
        protocol: &Bound<'_, PyAny>,
        raw: Option<Py<PyAny>>,
        again: Py<PyAny>,
        states: (Py<PyAny>, Py<PyAny>, Py<PyAny>, Py<PyAny>),
        base: Py<PyAny>,
    ) -> PyResult<Self> {
        let py = protocol.py();
        let pdict = crate::io::instance_dict(protocol)?;
        let incoming = field(protocol, &pdict, intern!(py, "_incoming"))?.unbind();
        let outgoing = field(protocol, &pdict, intern!(py, "_outgoing"))?.unbind();
        let sslobj = field(protocol, &pdict, intern!(py, "_sslobj"))?.unbind();
        let max_size: isize = protocol.getattr(intern!(py, "max_size"))?.extract()?;
        let app_transport = match field(protocol, &pdict, intern!(py, "_app_transport"))? {
            t if t.is_none() => None,
            t => Some(PyWeakrefReference::new(&t)?.into_any().unbind()),
        };
        let (wrapped, flushing, handshaking, shutting_down) = states;
        Ok(TlsPump {
            st: GilRefCell::new(PumpState {
                protocol: Some(protocol.clone().unbind()),
                pdict: Some(pdict.unbind()),
                app_transport,
                lent_shared: false,
            }),
            incoming,
            outgoing,
            raw,
            sslobj,
            again,
            wrapped,
            flushing,
            handshaking,
            shutting_down,
            base,
            max_size,
        })
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(s) = self.st.try_lock() {
            if let Some(p) = &s.protocol {
                visit.call(p)?;
            }
            if let Some(d) = &s.pdict {
                visit.call(d)?;
            }
            if let Some(t) = &s.app_transport {
                visit.call(t)?;
            }
        }
        for o in [
            &self.incoming,
            &self.outgoing,
            &self.sslobj,
            &self.again,
            &self.wrapped,
            &self.flushing,
            &self.handshaking,
            &self.shutting_down,
            &self.base,
        ] {
            visit.call(o)?;
        }
        if let Some(r) = &self.raw {
            visit.call(r)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        let taken = self
            .st
            .try_lock()
            .map(|mut s| (s.protocol.take(), s.pdict.take(), s.app_transport.take()));
        drop(taken);
    }

    /// `BufferedProtocol.get_buffer`: the shared read buffer (asyncio's
    /// `SSLProtocol` lends its own, of `max_size` bytes: the same size).
    fn get_buffer<'py>(&self, py: Python<'py>, n: isize) -> PyResult<Bound<'py, PyAny>> {
        let (p, _) = self.peers(py)?;
        let want = if n <= 0 || n > self.max_size {
            self.max_size
        } else {
            n
        };
        if let Ok(size) = usize::try_from(self.max_size) {
            let view = shared_read_buffer(py, size)?;
            if view.len()? as isize >= want {
                self.st.lock().lent_shared = true;
                return Ok(view);
            }
        }
        // asyncio's own: it lends the protocol's buffer, grown if needed
        // (`_SSLProtocol` dropped the one asyncio made).
        self.st.lock().lent_shared = false;
        self.fallback(
            py,
            intern!(py, "get_buffer"),
            &p,
            [n.into_pyobject(py)?.into_any()],
        )
    }

    /// `BufferedProtocol.buffer_updated`: `nbytes` of ciphertext arrived in
    /// the read buffer.
    fn buffer_updated(&self, py: Python<'_>, nbytes: isize) -> PyResult<()> {
        let (p, d) = self.peers(py)?;
        let shared = std::mem::take(&mut self.st.lock().lent_shared);
        let view = match usize::try_from(self.max_size) {
            Ok(size) if shared => shared_read_buffer(py, size)?,
            _ => field(&p, &d, intern!(py, "_ssl_buffer_view"))?,
        };
        let chunk = view.get_item(PySlice::new(py, 0, nbytes, 1))?;
        self.incoming
            .bind(py)
            .call_method1(intern!(py, "write"), (chunk,))?;
        let state = field(&p, &d, intern!(py, "_state"))?;
        if state.is(&self.wrapped) {
            self.do_read_impl(py, &p, &d)
        } else if state.is(&self.handshaking) {
            p.call_method0(intern!(py, "_do_handshake")).map(drop)
        } else if state.is(&self.flushing) {
            p.call_method0(intern!(py, "_do_flush")).map(drop)
        } else if state.is(&self.shutting_down) {
            p.call_method0(intern!(py, "_do_shutdown")).map(drop)
        } else {
            Ok(())
        }
    }

    /// `SSLProtocol._do_read`.
    fn _do_read(&self, py: Python<'_>) -> PyResult<()> {
        let (p, d) = self.peers(py)?;
        self.do_read_impl(py, &p, &d)
    }

    /// `SSLProtocol._do_read__copied`.
    fn _do_read__copied(&self, py: Python<'_>) -> PyResult<()> {
        let (p, d) = self.peers(py)?;
        self.read_copied_impl(py, &p, &d)
    }

    /// `SSLProtocol._process_outgoing`.
    fn _process_outgoing(&self, py: Python<'_>) -> PyResult<()> {
        let (p, d) = self.peers(py)?;
        self.process_outgoing_impl(py, &p, &d)
    }

    /// `_SSLProtocolTransport.write`.
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        if !(data.is_instance_of::<PyBytes>()
            || data.is_instance_of::<PyByteArray>()
            || data.is_instance_of::<PyMemoryView>())
        {
            return Err(PyTypeError::new_err(format!(
                "data: expecting a bytes-like instance, got {}",
                data.get_type().name()?
            )));
        }
        if !data.is_truthy()? {
            return Ok(());
        }
        // asyncio's `self._ssl_protocol._write_appdata(...)`: a second
        // close() of the transport dropped `_ssl_protocol`.
        let weak = self
            .st
            .lock()
            .app_transport
            .as_ref()
            .map(|w| w.clone_ref(py));
        if let Some(t) = weak.and_then(|w| w.bind(py).call0().ok()) {
            if !t.is_none() && t.getattr(intern!(py, "_ssl_protocol"))?.is_none() {
                py.None().bind(py).getattr(intern!(py, "_write_appdata"))?;
            }
        }
        let (p, d) = self.peers(py)?;
        let state = field(&p, &d, intern!(py, "_state"))?;
        if !state.is(&self.wrapped) || flag(&p, &d, intern!(py, "_write_backlog"))? {
            p.call_method1(intern!(py, "_write_appdata"), ((data,),))?;
            return Ok(());
        }
        let r = self.write_now(py, &p, &d, data);
        Self::fatal_on_error(py, &p, r)
    }
}
