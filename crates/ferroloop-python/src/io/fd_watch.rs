//! File-descriptor watches: asyncio's `_add_reader`/`_add_writer` family on
//! the core's fd table (`ferroloop_core::io_table`), and the dispatch of a
//! ready fd to its handles.
//!
//! ## Invariants
//! - A watch is an asyncio `Handle` (`events.Handle(callback, args, loop,
//!   None)`: the current context copied when it is added), stored with the
//!   object it was added with ([`FdWatch`]); re-adding a side cancels the
//!   handle it replaces, removing cancels the removed one, as asyncio does.
//! - Delivery is level-triggered (the core re-arms each fired fd, see
//!   `ferroloop_core::reactor`): a ready fd's handle runs once per
//!   iteration while the fd stays ready. A cancelled handle is dropped from
//!   the table when its fd fires (asyncio's `_process_events`).
//! - The borrow of the loop is held only while the table changes; handles
//!   are cancelled (which may run `__del__` of their callbacks) after.

use std::os::fd::RawFd;

use ferroloop_core::io_table::Watcher;
use ferroloop_core::reactor::IoEvent;
use ferroloop_core::{IoOutcome, ReadyQueue};
use pyo3::exceptions::{PyAttributeError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyTuple};

use crate::errors::os_error;
use crate::handle::{self, Handle};
use crate::io::datagram::DatagramCore;
use crate::io::sock_ops;
use crate::loop_state::{FdWatch, Loop, Ready};

/// Queues the handles of a ready fd (the core's `on_io`, see
/// `ferroloop_core::LoopCore::collect`); reports the sides whose handle
/// was cancelled, for the core to unwatch. An fd whose fired sides are all
/// stream transports is not re-armed (they are edge-aware), unless the
/// event says the peer closed (see `ferroloop_core::reactor`).
pub(crate) fn on_ready(
    py: Python<'_>,
    w: &Watcher<FdWatch>,
    ev: &IoEvent,
    ready: &mut ReadyQueue<Ready>,
) -> IoOutcome {
    let mut out = IoOutcome {
        rearm: false,
        ..IoOutcome::LEVEL
    };
    for (fired, side, is_dead, write) in [
        (ev.readable, &w.reader, &mut out.reader_dead, false),
        (ev.writable, &w.writer, &mut out.writer_dead, true),
    ] {
        match (fired, side) {
            (true, Some(FdWatch::Callback { handle: h, .. })) => {
                out.rearm = true;
                if h.get().is_cancelled() {
                    *is_dead = true;
                } else {
                    handle::pin(h.bind(py).as_any());
                    ready.push(Ready::Handle(h.clone_ref(py)));
                }
            }
            (true, Some(FdWatch::Stream { stream, .. })) => {
                // Re-armed when the peer closed: its EOF must be reported
                // again after the data is read.
                out.rearm |= ev.closed;
                ready.push(Ready::Stream {
                    stream: stream.clone_ref(py),
                    write,
                });
            }
            // Never re-armed: a watch keeps a closed peer's EOF in its hint,
            // and re-arming a socket at EOF would report it forever.
            (true, Some(FdWatch::Sock { watch, .. })) => {
                sock_ops::on_event(py, watch, ev, !write, ready);
            }
            _ => {}
        }
    }
    out
}

/// `(fileobj, fd, events, reader, writer)`: see `_Loop._fd_key`.
pub(crate) type FdKey = (Py<PyAny>, RawFd, u8, Option<Py<Handle>>, Option<Py<Handle>>);

/// `selectors._fileobj_to_fd`: an int, or an object whose `fileno()` gives
/// one; asyncio's `ValueError`s otherwise.
fn fileobj_to_fd(obj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    let py = obj.py();
    let fd: i64 = if obj.is_instance_of::<PyInt>() {
        obj.extract()?
    } else {
        let as_int = obj
            .call_method0(intern!(py, "fileno"))
            .and_then(|f| py.get_type::<PyInt>().call1((f,)))
            .and_then(|i| i.extract::<i64>());
        match as_int {
            Ok(fd) => fd,
            Err(e)
                if e.is_instance_of::<PyAttributeError>(py)
                    || e.is_instance_of::<PyTypeError>(py)
                    || e.is_instance_of::<PyValueError>(py) =>
            {
                return Err(PyValueError::new_err(format!(
                    "Invalid file object: {}",
                    obj.repr()?
                )));
            }
            Err(e) => return Err(e),
        }
    };
    if fd < 0 {
        return Err(PyValueError::new_err(format!(
            "Invalid file descriptor: {fd}"
        )));
    }
    RawFd::try_from(fd).map_err(|_| PyValueError::new_err(format!("Invalid file descriptor: {fd}")))
}

impl Loop {
    pub(crate) fn watch_fd(
        slf: &Bound<'_, Loop>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        read: bool,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let debug = {
            let s = slf.get().st();
            s.check_closed()?;
            s.debug
        };
        let fileobj = fd;
        let fd = fileobj_to_fd(fd)?;
        // asyncio: `events.Handle(callback, args, self, None)`.
        let h = Py::new(
            py,
            Handle::with_defaults(
                py,
                callback.clone().unbind(),
                args.clone().unbind(),
                slf.clone().into_any().unbind(),
                None,
                debug,
            )?,
        )?;
        let replaced = {
            let mut s = slf.get().st();
            let watch = FdWatch::Callback {
                handle: h.clone_ref(py),
                fileobj: fileobj.clone().unbind(),
            };
            if read {
                s.core.add_reader(fd, watch)
            } else {
                s.core.add_writer(fd, watch)
            }
        }
        .map_err(os_error)?;
        if let Some(FdWatch::Callback { handle: old, .. }) = replaced {
            old.get().do_cancel(py, old.bind(py).as_any())?;
        }
        Ok(h)
    }

    pub(crate) fn unwatch_fd(
        slf: &Bound<'_, Loop>,
        fd: &Bound<'_, PyAny>,
        read: bool,
    ) -> PyResult<bool> {
        let py = slf.py();
        if slf.get().st().closed {
            return Ok(false);
        }
        let fd = Loop::watched_fd(slf, fd)?;
        let removed = {
            let mut s = slf.get().st();
            if read {
                s.core.remove_reader(fd)
            } else {
                s.core.remove_writer(fd)
            }
        }
        .map_err(os_error)?;
        match removed {
            Some(FdWatch::Callback { handle: h, .. }) => {
                h.get().do_cancel(py, h.bind(py).as_any())?;
                Ok(true)
            }
            Some(FdWatch::Stream { stream, .. }) => {
                if let Ok(d) = stream.bind(py).cast::<DatagramCore>() {
                    d.get().reader_removed();
                }
                Ok(true)
            }
            // asyncio removes its reader when a sock_* operation ends:
            // nothing of it is left for remove_reader/remove_writer to find.
            Some(FdWatch::Sock { .. }) => Ok(false),
            None => Ok(false),
        }
    }

    /// The fd of `fileobj` as a selector finds it: its `fileno()`, or, when
    /// that fails (a closed socket's is -1), the fd it was watched under.
    fn watched_fd(slf: &Bound<'_, Loop>, fileobj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
        fileobj_to_fd(fileobj).or_else(|e| {
            let s = slf.get().st();
            let found = s
                .core
                .io
                .iter()
                .find(|w| {
                    [&w.reader, &w.writer]
                        .into_iter()
                        .flatten()
                        .any(|x| x.fileobj().bind(slf.py()).is(fileobj))
                })
                .map(|w| w.fd());
            found.ok_or(e)
        })
    }

    /// What a selector's `get_key(fileobj)` says of a watched fd (see
    /// `_Loop._fd_key`); None when it is not watched.
    pub(crate) fn fd_key(
        slf: &Bound<'_, Loop>,
        fileobj: &Bound<'_, PyAny>,
    ) -> PyResult<Option<FdKey>> {
        let py = slf.py();
        let Ok(fd) = Loop::watched_fd(slf, fileobj) else {
            return Ok(None);
        };
        let s = slf.get().st();
        Ok(s.core.io.get_fd(fd).map(|w| {
            let first = w
                .reader
                .as_ref()
                .or(w.writer.as_ref())
                .expect("a watched fd has a side");
            let handle =
                |x: &Option<FdWatch>| x.as_ref().and_then(|x| x.handle()).map(|h| h.clone_ref(py));
            (
                first.fileobj().clone_ref(py),
                fd,
                u8::from(w.wants_read()) | (u8::from(w.wants_write()) << 1),
                handle(&w.reader),
                handle(&w.writer),
            )
        }))
    }
}
