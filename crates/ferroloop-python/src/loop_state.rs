//! The state of `_Loop`, the native half of `ferroloop.Loop`: the [`Loop`]
//! struct with its queues and flags, the [`Ready`] work items its ready
//! queue holds, and what needs only that state (queueing internal work,
//! the closed check, the debug flag). The Python methods and the driver
//! that runs the queues are in `crate::event_loop`.
//!
//! ## Invariants
//! - The PyO3 borrow of the loop is held only for queue/heap manipulation,
//!   never while Python code runs.
//! - In debug mode every scheduled item is a real `Handle` (source
//!   tracebacks, slow-callback warnings name it); otherwise futures and
//!   tasks schedule lightweight [`Ready`] items without allocating Handles.
//!   [`Loop::push_ready`] therefore hands an item back in debug mode, for
//!   the future module to wrap.
//! - `Ready::Step` and `Ready::Wakeup` hold their task as `Py<PyAny>` (this
//!   module sits below the future module): only the future module queues
//!   them, always with a native task (a `crate::future::Future` whose task
//!   state is set), so their users may cast it unchecked.

use std::cell::RefMut;
use std::sync::atomic::{AtomicBool, Ordering};

use ferroloop_core::LoopCore;
use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;

use crate::errors::closed_error;
use crate::gc::Adopted;
use crate::gil::GilRefCell;
use crate::handle::{self, Handle, LoopHooks, TimerEntry};

/// A unit of work in the ready queue.
pub enum Ready {
    /// A `Handle` from `call_soon` / a due timer.
    Handle(Py<Handle>),
    /// A future's done callback `func(fut)` in `ctx`.
    FutCallback {
        func: Py<PyAny>,
        fut: Py<PyAny>,
        ctx: Adopted,
    },
    /// `task.__step(exc)` in the task's context. `task` is a native task
    /// (see the module docs).
    Step {
        task: Py<PyAny>,
        exc: Option<Py<PyAny>>,
    },
    /// `task.__wakeup(fut)` in the task's context. `task` is a native task
    /// (see the module docs).
    Wakeup { task: Py<PyAny>, fut: Py<PyAny> },
    /// A native transport's fd is ready: `stream` (a `crate::io::stream`
    /// transport or a `crate::io::datagram` core, held as `Py<PyAny>`: those
    /// modules sit above this one) reads (`write == false`) or flushes its
    /// write queue.
    Stream { stream: Py<PyAny>, write: bool },
    /// A pending `sock_*` operation's fd is ready: `watch` (a
    /// `crate::io::sock_ops` watch, held as `Py<PyAny>` like `stream`)
    /// retries its read (`write == false`) or its send.
    Sock { watch: Py<PyAny>, write: bool },
}

/// One side (reader or writer) of a watched fd.
pub enum FdWatch {
    /// What `_add_reader`/`_add_writer` returned and the object it was
    /// given (an int or anything with `fileno()`; a closed socket is still
    /// found by identity, as a selector finds it).
    Callback {
        handle: Py<Handle>,
        fileobj: Py<PyAny>,
    },
    /// A native transport owning the fd (`crate::io::stream`, or the
    /// reader of a `crate::io::datagram` core), and its socket object.
    /// Edge-aware: see `ferroloop_core::reactor`.
    Stream {
        stream: Py<PyAny>,
        fileobj: Py<PyAny>,
    },
    /// The `sock_*` operations of a socket (`crate::io::sock_ops`), and
    /// the fd as an int. Edge-aware, and left registered between
    /// operations.
    Sock {
        watch: Py<PyAny>,
        fileobj: Py<PyAny>,
    },
}

impl FdWatch {
    /// The object the fd was watched with.
    pub fn fileobj(&self) -> &Py<PyAny> {
        match self {
            FdWatch::Callback { fileobj, .. }
            | FdWatch::Stream { fileobj, .. }
            | FdWatch::Sock { fileobj, .. } => fileobj,
        }
    }

    /// The handle of an `add_reader`/`add_writer` watch.
    pub fn handle(&self) -> Option<&Py<Handle>> {
        match self {
            FdWatch::Callback { handle, .. } => Some(handle),
            FdWatch::Stream { .. } | FdWatch::Sock { .. } => None,
        }
    }
}

/// `_Loop`: a frozen pyclass whose mutable state is a [`LoopState`] behind
/// a GIL-guarded cell (`crate::gil`): PyO3's borrow flag of a non-frozen
/// class is an atomic read-modify-write per borrow, and the iteration and
/// `call_soon` borrow several times per callback.
#[pyclass(
    module = "ferroloop._ferroloop",
    name = "_Loop",
    subclass,
    weakref,
    frozen
)]
pub struct Loop {
    state: GilRefCell<LoopState>,
}

impl Loop {
    pub(crate) fn new(state: LoopState) -> Self {
        Loop {
            state: GilRefCell::new(state),
        }
    }

    /// The loop's state, borrowed (never across Python code: see the
    /// module invariants).
    #[inline]
    pub(crate) fn st(&self) -> RefMut<'_, LoopState> {
        self.state.lock()
    }

    /// [`Loop::st`], or a RuntimeError if it is borrowed already.
    #[inline]
    pub(crate) fn try_st(&self) -> PyResult<RefMut<'_, LoopState>> {
        self.state
            .try_lock()
            .ok_or_else(|| PyRuntimeError::new_err("Already borrowed"))
    }
}

/// The state of a `_Loop`.
pub struct LoopState {
    /// The state the iteration runs on (ready queue, timer heap, reactor,
    /// injector, the fd table of `add_reader`/`add_writer` handles): the
    /// one iteration is `ferroloop_core::LoopCore`'s, driven by
    /// `crate::event_loop`.
    pub(crate) core: LoopCore<Ready, TimerEntry, FdWatch>,
    pub(crate) closed: bool,
    pub(crate) running: bool,
    pub(crate) debug: bool,
    pub(crate) slow_callback_duration: f64,
    pub(crate) task_factory: Option<Py<PyAny>>,
    pub(crate) native_tasks: bool,
}

impl Loop {
    /// Queues `item` (the loop's `call_soon` for internal work), calling
    /// `on_queued` (which must run no Python code) just before. In debug
    /// mode nothing is queued: the item comes back, for the caller to wrap
    /// into a `Handle` and queue that (`crate::future::step::push_ready`).
    pub(crate) fn push_ready(
        slf: &Bound<'_, Loop>,
        item: Ready,
        on_queued: impl FnOnce(),
    ) -> PyResult<Option<Ready>> {
        let mut s = slf.get().try_st()?;
        if s.closed {
            return Err(closed_error());
        }
        if !s.debug {
            on_queued();
            s.core.ready.push(item);
            return Ok(None);
        }
        Ok(Some(item))
    }
}

impl Loop {
    /// Queues another read of the native transport `transport` (a stream
    /// transport or a datagram core) for the next iteration, unless the
    /// loop is closed: what an edge-aware reader does when more may be
    /// waiting and no new edge will report it.
    pub(crate) fn queue_read(lp: &Bound<'_, Loop>, transport: Py<PyAny>) {
        let mut ls = lp.get().st();
        if !ls.closed {
            ls.core.ready.push(Ready::Stream {
                stream: transport,
                write: false,
            });
        }
    }
}

impl LoopState {
    pub(crate) fn check_closed(&self) -> PyResult<()> {
        if self.closed {
            Err(closed_error())
        } else {
            Ok(())
        }
    }
}

/// `loop.get_debug()`, without a Python call for ferroloop's own loop.
pub(crate) fn loop_debug(lp: &Bound<'_, PyAny>) -> PyResult<bool> {
    if let Ok(l) = lp.cast::<Loop>() {
        return Ok(l.get().st().debug);
    }
    lp.call_method0(intern!(lp.py(), "get_debug"))?.is_truthy()
}

/// [`LoopHooks::timer_cancelled`]: a timer of ferroloop's loop `lp` was
/// cancelled; the heap counts it if it is still `scheduled` there.
fn timer_cancelled(lp: &Bound<'_, PyAny>, scheduled: &AtomicBool) -> bool {
    let Ok(l) = lp.cast::<Loop>() else {
        return false;
    };
    if scheduled.load(Ordering::Relaxed) {
        l.get().st().core.timers.note_cancelled();
    }
    true
}

/// Module init: gives handles direct access to ferroloop's loop
/// (see [`LoopHooks`]).
pub(crate) fn install() {
    handle::set_loop_hooks(LoopHooks {
        debug: loop_debug,
        timer_cancelled,
    });
}
