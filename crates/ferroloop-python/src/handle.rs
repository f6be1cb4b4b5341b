//! `Handle` and `TimerHandle`: what `call_soon`/`call_later` return.
//!
//! Both are frozen pyclasses (no PyO3 borrow flag): the flags are atomics and
//! the callback lives behind a mutex, so the timer heap can ask "cancelled?"
//! without the GIL and another thread may `cancel()` safely.
//! They report asyncio's classes through `__class__`, so
//! `isinstance(h, asyncio.TimerHandle)` holds, and their reprs are asyncio's
//! (asyncio's own `_repr_info` runs on them).
//!
//! ## Invariants
//! - Outside debug mode, a handle the loop queues is pinned (out of the
//!   collector's lists, see `crate::gc`) until it leaves the queues
//!   ([`pin`], [`unpin`]).
//! - The loop's queues hold handles, so `crate::loop_state` sits above this
//!   module, and the future module above both. What handles need from them
//!   comes through hooks registered once at module init, before any handle
//!   exists: [`LoopHooks`] (ferroloop's loop: its debug flag, its timer
//!   heap's cancelled count) and [`DirectCall`] (`fut.set_result(v)` done
//!   without a call). Both are plain function pointers: one indirect call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{intern, PyTypeInfo};

use crate::aio::{call_tuple, copy_context, extract_stack, imports, in_context};
use crate::errors::is_exit_exception;
use crate::gc::{self, Adopted};
use crate::gil::{GilPy, GilRefCell};

/// What handles need from ferroloop's own loop (`crate::loop_state`, which
/// registers it with [`set_loop_hooks`] at module init). Unregistered, every
/// loop is treated as a foreign one: correct, only slower.
pub(crate) struct LoopHooks {
    /// `loop.get_debug()`, without a Python call for ferroloop's own loop.
    pub debug: fn(&Bound<'_, PyAny>) -> PyResult<bool>,
    /// `TimerHandle.cancel()` on ferroloop's loop: counts the timer as
    /// cancelled in the loop's heap if it is still `scheduled` there, and
    /// returns true; false (nothing done) for any other loop.
    pub timer_cancelled: fn(&Bound<'_, PyAny>, &AtomicBool) -> bool,
}

static LOOP_HOOKS: OnceLock<LoopHooks> = OnceLock::new();

/// Registers [`LoopHooks`] (once; later calls are ignored).
pub(crate) fn set_loop_hooks(hooks: LoopHooks) {
    let _ = LOOP_HOOKS.set(hooks);
}

/// `loop.call_soon(fut.set_result, value)` is the commonest way to resolve a
/// future from a callback: given a handle's callback and arguments, the
/// future module's `direct_set_result` runs exactly that call without the
/// Python call machinery, or returns `None` when it is not that case. It
/// only takes the call for a future on ferroloop's loop, whose completion
/// only queues ready items: no Python code runs, which lets [`Handle::run`]
/// skip entering the handle's context. Registered with [`set_direct_call`]
/// at module init.
pub(crate) type DirectCall = fn(&Bound<'_, PyAny>, &Bound<'_, PyTuple>) -> Option<PyResult<()>>;

static DIRECT_CALL: OnceLock<DirectCall> = OnceLock::new();

/// Registers the [`DirectCall`] (once; later calls are ignored).
pub(crate) fn set_direct_call(f: DirectCall) {
    let _ = DIRECT_CALL.set(f);
}

#[inline]
fn direct_call(callback: &Bound<'_, PyAny>, args: &Bound<'_, PyTuple>) -> Option<PyResult<()>> {
    (DIRECT_CALL.get()?)(callback, args)
}

/// The mutable part of a Handle. Its references (and the handle's other
/// ones) are [`GilPy`]: released without PyO3's attach check.
pub(crate) struct HandleInner {
    pub callback: Option<GilPy<PyAny>>,
    pub args: Option<GilPy<PyTuple>>,
    pub repr: Option<GilPy<PyAny>>,
}

#[pyclass(module = "asyncio.events", name = "Handle", subclass, frozen, weakref)]
pub struct Handle {
    pub(crate) inner: GilRefCell<HandleInner>,
    /// Adopted when it is a copy made for this handle (see `crate::gc`).
    pub(crate) context: Adopted,
    pub(crate) lp: GilPy<PyAny>,
    pub(crate) cancelled: AtomicBool,
    pub(crate) source_traceback: Option<GilPy<PyAny>>,
}

impl Handle {
    pub(crate) fn new(
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        lp: Py<PyAny>,
        context: Adopted,
        source_traceback: Option<Py<PyAny>>,
    ) -> Self {
        Handle {
            inner: GilRefCell::new(HandleInner {
                callback: Some(GilPy::new(callback)),
                args: Some(GilPy::new(args)),
                repr: None,
            }),
            context,
            lp: GilPy::new(lp),
            cancelled: AtomicBool::new(false),
            source_traceback: source_traceback.map(GilPy::new),
        }
    }

    /// asyncio's `Handle.__init__` defaults: a copy of the current context
    /// when none (or None) is given, and a source traceback in debug mode.
    pub(crate) fn with_defaults(
        py: Python<'_>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        lp: Py<PyAny>,
        context: Option<Py<PyAny>>,
        debug: bool,
    ) -> PyResult<Self> {
        let context = match context {
            Some(c) if !c.is_none(py) => Adopted::shared(c),
            _ => Adopted::adopt_new_context(copy_context(py)?),
        };
        let tb = if debug {
            Some(extract_stack(py)?)
        } else {
            None
        };
        Ok(Handle::new(callback, args, lp, context, tb))
    }

    #[inline]
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Runs the callback in its context; reports failures like asyncio's
    /// `Handle._run` (exit exceptions propagate).
    pub(crate) fn run(slf: &Bound<'_, Handle>) -> PyResult<()> {
        let py = slf.py();
        let h = slf.get();
        // The loop's reference is usually the last one: then nothing can
        // look at the handle after it ran, and the callback and arguments
        // are moved out rather than copied (given back if it fails, for the
        // exception handler's repr of the handle).
        let sole = gc::refcnt(slf.as_any()) == 1;
        let (cb, args) = {
            let mut inner = h.inner.lock();
            if sole {
                match (inner.callback.take(), inner.args.take()) {
                    (Some(cb), Some(args)) => (cb.into_bound(py), args.into_bound(py)),
                    _ => return Ok(()),
                }
            } else {
                match (&inner.callback, &inner.args) {
                    (Some(cb), Some(args)) => (cb.bind(py).clone(), args.bind(py).clone()),
                    _ => return Ok(()),
                }
            }
        };
        // `fut.set_result(v)` of a native future on ferroloop's loop runs no
        // Python code, so no call and no context switch are needed -- when
        // the context is the private copy made for this handle (adopted:
        // nobody else holds it, so it cannot be entered elsewhere, which
        // `Context.run` would refuse). Either way the check runs once.
        let ctx = h.context.inner().bind(py);
        let res = if h.context.is_adopted() {
            match direct_call(&cb, &args) {
                Some(r) => r,
                None => in_context(ctx, || call_tuple(&cb, &args).map(|_| ())),
            }
        } else {
            in_context(ctx, || match direct_call(&cb, &args) {
                Some(r) => r,
                None => call_tuple(&cb, &args).map(|_| ()),
            })
        };
        if let Err(err) = res {
            if is_exit_exception(py, &err) {
                return Err(err);
            }
            if sole {
                let mut inner = h.inner.lock();
                if !h.is_cancelled() {
                    inner.callback = Some(GilPy::new(cb.clone().unbind()));
                    inner.args = Some(GilPy::new(args.clone().unbind()));
                }
            }
            report_callback_error(
                py,
                h.lp.bind(py),
                &cb,
                args.as_any(),
                err,
                Some(slf.as_any()),
                h.source_traceback.as_deref(),
            )?;
        }
        Ok(())
    }

    pub(crate) fn do_cancel(&self, py: Python<'_>, slf: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.cancelled.store(true, Ordering::Relaxed);
        // As asyncio: in debug mode the repr (now saying "cancelled") is kept.
        let debug = loop_debug(self.lp.bind(py))?;
        let saved_repr = if debug {
            Some(slf.repr()?.into_any().unbind())
        } else {
            None
        };
        let (cb, args) = {
            let mut inner = self.inner.lock();
            inner.repr = saved_repr.map(GilPy::new);
            (inner.callback.take(), inner.args.take())
        };
        drop((cb, args)); // dropped outside the lock: may run arbitrary __del__
        Ok(())
    }
}

/// A handle entering the loop's queues: while queued it is reachable (the
/// loop will run it), so the collector need not walk it (`crate::gc`).
#[inline]
pub(crate) fn pin(h: &Bound<'_, PyAny>) {
    gc::untrack_gc(h);
}

/// A handle leaving the loop's queues: back to the collector if anything
/// but the caller's reference holds it (a lone handle is about to die).
#[inline]
pub(crate) fn unpin(h: &Bound<'_, PyAny>) {
    if gc::refcnt(h) > 1 {
        gc::track(h);
    }
}

/// `loop.get_debug()`, without a Python call for ferroloop's own loop
/// ([`LoopHooks::debug`]).
fn loop_debug(lp: &Bound<'_, PyAny>) -> PyResult<bool> {
    match LOOP_HOOKS.get() {
        Some(hooks) => (hooks.debug)(lp),
        None => lp.call_method0(intern!(lp.py(), "get_debug"))?.is_truthy(),
    }
}

/// Sends a callback's exception to the loop's exception handler with
/// asyncio's message: `Exception in callback <formatted callback>`.
pub(crate) fn report_callback_error(
    py: Python<'_>,
    lp: &Bound<'_, PyAny>,
    cb: &Bound<'_, PyAny>,
    args: &Bound<'_, PyAny>,
    err: PyErr,
    handle: Option<&Bound<'_, PyAny>>,
    source_traceback: Option<&Py<PyAny>>,
) -> PyResult<()> {
    if let Some(h) = handle {
        gc::track(h); // handed to the exception handler
    }
    let formatted = imports(py)?
        .format_callback_source
        .bind(py)
        .call1((cb, args))?;
    let context = PyDict::new(py);
    context.set_item(
        "message",
        format!("Exception in callback {}", formatted.str()?),
    )?;
    context.set_item("exception", err.into_value(py))?;
    if let Some(h) = handle {
        context.set_item("handle", h)?;
    }
    if let Some(tb) = source_traceback {
        if tb.bind(py).is_truthy()? {
            context.set_item("source_traceback", tb)?;
        }
    }
    lp.call_method1(intern!(py, "call_exception_handler"), (context,))?;
    Ok(())
}

#[pymethods]
impl Handle {
    #[new]
    #[pyo3(signature = (callback, args, loop_, context=None))]
    fn py_new(
        py: Python<'_>,
        callback: Py<PyAny>,
        args: Py<PyAny>,
        loop_: Py<PyAny>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let args = args
            .bind(py)
            .cast::<PyTuple>()
            .map_err(|_| PyTypeError::new_err("args must be a tuple"))?
            .clone()
            .unbind();
        let debug = loop_debug(loop_.bind(py))?;
        Handle::with_defaults(py, callback, args, loop_, context, debug)
    }

    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.get().do_cancel(slf.py(), slf.as_any())
    }

    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }

    fn get_context(&self, py: Python<'_>) -> Py<PyAny> {
        self.context.expose(py)
    }

    fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
        Handle::run(slf)
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.inner.lock().callback.as_ref().map(|c| c.clone_ref(py))
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> Option<Py<PyTuple>> {
        self.inner.lock().args.as_ref().map(|c| c.clone_ref(py))
    }

    #[getter]
    fn _cancelled(&self) -> bool {
        self.is_cancelled()
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Py<PyAny> {
        self.lp.clone_ref(py)
    }

    #[getter]
    fn _context(&self, py: Python<'_>) -> Py<PyAny> {
        self.context.expose(py)
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.source_traceback.as_deref().map(|t| t.clone_ref(py))
    }

    #[getter]
    fn _repr(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.inner.lock().repr.as_ref().map(|r| r.clone_ref(py))
    }

    #[getter]
    fn __class__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let ty = slf.get_type();
        if ty.is(Handle::type_object(py)) {
            Ok(imports(py)?.aio_handle.clone_ref(py))
        } else if ty.is(TimerHandle::type_object(py)) {
            Ok(imports(py)?.aio_timer_handle.clone_ref(py))
        } else {
            Ok(ty.into_any().unbind())
        }
    }

    fn _repr_info<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        imports(py)?.handle_repr_info.bind(py).call1((slf,))
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let py = slf.py();
        if let Some(r) = slf.get().inner.lock().repr.as_ref() {
            return r.bind(py).extract();
        }
        let info = slf.call_method0(intern!(py, "_repr_info"))?;
        let sep = pyo3::types::PyString::new(py, " ");
        Ok(format!(
            "<{}>",
            sep.call_method1(intern!(py, "join"), (info,))?
        ))
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        if let Some(inner) = self.inner.try_lock() {
            if let Some(c) = inner.callback.as_deref() {
                visit.call(c)?;
            }
            if let Some(a) = inner.args.as_deref() {
                visit.call(a)?;
            }
        }
        self.context.traverse(&visit)?;
        visit.call(&*self.lp)?;
        Ok(())
    }
}

/// A `Handle` scheduled at a deadline (`when()`).
#[pyclass(module = "asyncio.events", name = "TimerHandle", extends = Handle, subclass, frozen)]
pub struct TimerHandle {
    pub(crate) when: f64,
    /// The deadline exactly as given (`call_at(10)` reports `when() == 10`).
    pub(crate) when_obj: Option<Py<PyAny>>,
    pub(crate) scheduled: AtomicBool,
}

#[pymethods]
impl TimerHandle {
    #[new]
    #[pyo3(signature = (when, callback, args, loop_, context=None))]
    fn py_new(
        py: Python<'_>,
        when: &Bound<'_, PyAny>,
        callback: Py<PyAny>,
        args: Py<PyAny>,
        loop_: Py<PyAny>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<PyClassInitializer<Self>> {
        let base = Handle::py_new(py, callback, args, loop_, context)?;
        Ok(PyClassInitializer::from(base).add_subclass(TimerHandle {
            when: when.extract()?,
            when_obj: Some(when.clone().unbind()),
            scheduled: AtomicBool::new(false),
        }))
    }

    fn when(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match &self.when_obj {
            Some(w) => Ok(w.clone_ref(py)),
            None => Ok(self.when.into_pyobject(py)?.into_any().unbind()),
        }
    }

    #[getter]
    fn _when(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.when(py)
    }

    #[getter]
    fn _scheduled(&self) -> bool {
        self.scheduled.load(Ordering::Relaxed)
    }

    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let base = slf.as_super().get();
        if !base.is_cancelled() {
            let lp = base.lp.bind(py);
            let native = LOOP_HOOKS
                .get()
                .is_some_and(|hooks| (hooks.timer_cancelled)(lp, &slf.get().scheduled));
            if !native {
                lp.call_method1(intern!(py, "_timer_handle_cancelled"), (slf,))?;
            }
        }
        base.do_cancel(py, slf.as_any())
    }

    fn _repr_info<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        imports(py)?.timer_repr_info.bind(py).call1((slf,))
    }

    fn __hash__(&self) -> isize {
        // hash(float) as Python computes it, so equal `when` hash equal.
        Python::attach(|py| {
            self.when
                .into_pyobject(py)
                .ok()
                .and_then(|f| f.hash().ok())
                .unwrap_or(0)
        })
    }

    fn __richcmp__(
        slf: &Bound<'_, Self>,
        other: &Bound<'_, PyAny>,
        op: pyo3::basic::CompareOp,
    ) -> PyResult<Py<PyAny>> {
        use pyo3::basic::CompareOp::*;
        let py = slf.py();
        let Ok(o) = other.cast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        let (a, b) = (slf.get().when, o.get().when);
        // asyncio's order: when, callback, args, cancelled -- each read when
        // it is compared, and compared outside the handles' locks (the
        // callbacks' own `__eq__` may run any code, `cancel()` included, and
        // `h == h` would lock one mutex twice).
        let eq = || -> PyResult<bool> {
            if a != b {
                return Ok(false);
            }
            let (ha, hb) = (slf.as_super().get(), o.as_super().get());
            type Field = fn(&HandleInner, Python<'_>) -> Option<Py<PyAny>>;
            let field_eq = |get: Field| -> PyResult<bool> {
                let x = get(&ha.inner.lock(), py);
                let y = get(&hb.inner.lock(), py);
                match (x, y) {
                    (Some(x), Some(y)) => x.bind(py).eq(y.bind(py)),
                    (None, None) => Ok(true),
                    _ => Ok(false),
                }
            };
            Ok(
                field_eq(|i, py| i.callback.as_ref().map(|c| c.clone_ref(py)))?
                    && field_eq(|i, py| i.args.as_ref().map(|t| t.clone_ref(py).into_any()))?
                    && ha.is_cancelled() == hb.is_cancelled(),
            )
        };
        let r = match op {
            Lt => a < b,
            Gt => a > b,
            Le => a < b || eq()?,
            Ge => a > b || eq()?,
            Eq => eq()?,
            Ne => !eq()?,
        };
        Ok(pyo3::types::PyBool::new(py, r)
            .to_owned()
            .into_any()
            .unbind())
    }
}

/// A timer in the loop's heap: the same object seen as its base `Handle`
/// (for the cancelled flag) and as `TimerHandle` (for the scheduled flag),
/// both frozen, so the heap reads them without a borrow.
pub(crate) struct TimerEntry {
    pub base: Py<Handle>,
    pub timer: Py<TimerHandle>,
}

impl ferroloop_core::Cancellable for TimerEntry {
    fn is_cancelled(&self) -> bool {
        self.base.get().is_cancelled()
    }
    fn unscheduled(&self) {
        self.timer.get().scheduled.store(false, Ordering::Relaxed);
    }
}
