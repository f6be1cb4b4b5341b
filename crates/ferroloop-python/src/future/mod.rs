//! Native `Future` and `Task`.
//!
//! One Rust struct, [`Future`], holds the state of both: a task is a future
//! whose `task` field is set. The Python class `Task` is a zero-sized
//! subclass that only overrides methods. This keeps every internal path
//! (completion, callbacks, awaiting) one code path with a single borrow.
//!
//! This file holds the struct, its core state operations and its Python
//! API; the rest is split by concern:
//! - [`callbacks`]: done callbacks and how completion schedules them;
//! - [`iter`]: `FutureIter`, what `await fut` iterates;
//! - [`task`]: task state, creation and cancellation, the `Task` class;
//! - [`step`]: running a task (`__step`, `__wakeup`) and the ready-queue
//!   items and callables that do it;
//! - [`registry`]: asyncio's current-task / all-tasks bookkeeping;
//! - [`finalize`]: pinning queued tasks, and what the patched slots
//!   (`crate::slots`) do for a future: `__del__` reports and `tp_clear`.
//!
//! ## Invariants
//! - A `PyRef`/`PyRefMut` of a future is never held while Python code runs
//!   (callbacks, `repr`, `__del__` of a dropped value): borrows are short and
//!   values are moved out before they are dropped or called.
//! - Done callbacks are kept as [`callbacks::DoneCallback`]: a task waiting
//!   on a native future is stored as `Wakeup` (no bound method, no Handle
//!   per wake-up); on ferroloop's loop, completion pushes `Ready` items
//!   straight into the ready queue. On any other loop, they go through
//!   `loop.call_soon`.
//! - The objects report asyncio's classes through `__class__`, so
//!   `isinstance(f, asyncio.Future)` is true (CPython's isinstance falls back
//!   to `__class__`), and asyncio's own repr helpers format them.
//! - The semantics follow CPython's `Lib/asyncio/futures.py` and `tasks.py`
//!   (3.11): state machine, error messages, callback and cancellation order.

pub(crate) mod callbacks;
pub(crate) mod finalize;
pub(crate) mod iter;
pub(crate) mod registry;
pub(crate) mod step;
pub(crate) mod task;

use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use pyo3::exceptions::{PyRuntimeError, PyStopIteration, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple, PyType};
use pyo3::{ffi, intern, PyTraverseError, PyTypeInfo, PyVisit};

use crate::aio::{copy_context, extract_stack, imports};
use crate::errors::invalid_state;
use crate::gc::Adopted;
use crate::handle;
use crate::loop_state::{loop_debug, Loop};
use crate::slots;

// What the loop's driver (`crate::event_loop`) calls.
pub(crate) use self::finalize::unpin_task;
pub(crate) use self::step::{item_to_handle, task_context, task_step, task_wakeup};
pub(crate) use self::task::create_task;

use self::callbacks::{fut_add_callback, schedule_callbacks, Callbacks, DoneCallback};
use self::iter::FutureIter;
use self::step::TaskWakeup;
use self::task::{Task, TaskFields};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum State {
    Pending,
    Cancelled,
    Finished,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Pending => "PENDING",
            State::Cancelled => "CANCELLED",
            State::Finished => "FINISHED",
        }
    }
}

/// Whether tasks adopt their coroutines (`crate::gc`). Off from 3.14, where
/// `frame.f_generator` hands out a coroutine from inside its own frame.
static ADOPT_COROUTINES: AtomicBool = AtomicBool::new(false);

// `dict`: like the C Future, instances accept attribute assignment.
#[pyclass(
    module = "ferroloop._ferroloop",
    name = "Future",
    subclass,
    weakref,
    dict
)]
pub struct Future {
    pub(crate) state: State,
    result: Option<Py<PyAny>>,
    exception: Option<Py<PyAny>>,
    exception_tb: Option<Py<PyAny>>,
    /// `None` until `__init__` ran (a subclass may skip it, as asyncio allows).
    lp_opt: Option<Py<PyAny>>,
    /// `lp` is ferroloop's loop: schedule without Python calls.
    pub(crate) native_loop: bool,
    callbacks: Callbacks,
    cancel_message: Option<Py<PyAny>>,
    cancelled_exc: Option<Py<PyAny>>,
    source_traceback: Option<Py<PyAny>>,
    blocking: bool,
    log_traceback: bool,
    pub(crate) task: Option<Box<TaskFields>>,
}

/// The exact native Future or Task type (not a Python subclass, whose
/// overridden methods must be called): the C Task's `Future_CheckExact`.
fn native_exact<'a, 'py>(obj: &'a Bound<'py, PyAny>) -> Option<&'a Bound<'py, Future>> {
    // SAFETY: reading the type pointer of a live object.
    let tp = unsafe { ffi::Py_TYPE(obj.as_ptr()) };
    if tp == FUTURE_TYPE.load(Ordering::Relaxed) || tp == TASK_TYPE.load(Ordering::Relaxed) {
        // SAFETY: the object's type is exactly Future or Task.
        Some(unsafe { obj.cast_unchecked::<Future>() })
    } else {
        None
    }
}

/// The exact native types, recorded at module init for [`native_exact`]
/// (a pointer comparison instead of a lazy type-object lookup per call).
static FUTURE_TYPE: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(std::ptr::null_mut());
static TASK_TYPE: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(std::ptr::null_mut());

/// The C function behind `Future.set_result` (see [`direct_set_result`]).
static SET_RESULT_FN: AtomicPtr<std::ffi::c_void> = AtomicPtr::new(std::ptr::null_mut());

/// Module-init state of this module: exact type pointers, `set_result`'s C
/// function (and the [`handle::DirectCall`] hook using it), whether
/// coroutines may be adopted, the `tp_new` patch ([`slots::install_new`]).
pub(crate) fn init_statics(py: Python<'_>) -> PyResult<()> {
    let v = py.version_info();
    ADOPT_COROUTINES.store((v.major, v.minor) < (3, 14), Ordering::Relaxed);
    // SAFETY: our own Future and Task types, fully created; module init,
    // before any subclass of them exists.
    unsafe { slots::install_new(&Future::type_object(py), &Task::type_object(py)) };
    FUTURE_TYPE.store(Future::type_object(py).as_type_ptr(), Ordering::Relaxed);
    TASK_TYPE.store(Task::type_object(py).as_type_ptr(), Ordering::Relaxed);
    handle::set_direct_call(direct_set_result);
    let probe = Bound::new(py, Future::blank(false))?;
    let bound = probe.getattr(intern!(py, "set_result"))?;
    // SAFETY: `bound` is a live builtin method; GetFunction reads its
    // PyMethodDef's C function pointer.
    let f = unsafe {
        if ffi::PyCFunction_Check(bound.as_ptr()) == 0 {
            return Ok(());
        }
        ffi::PyCFunction_GetFunction(bound.as_ptr())
    };
    if let Some(f) = f {
        SET_RESULT_FN.store(f as *mut std::ffi::c_void, Ordering::Relaxed);
    }
    Ok(())
}

/// `loop.call_soon(fut.set_result, value)` is the commonest way to resolve a
/// future from a callback: when `callback` is exactly our Future's bound
/// `set_result` and `args` is one value, run it without the Python call
/// machinery (same function, same errors). `None`: not that case.
fn direct_set_result(
    callback: &Bound<'_, PyAny>,
    args: &Bound<'_, PyTuple>,
) -> Option<PyResult<()>> {
    let p = callback.as_ptr();
    let want = SET_RESULT_FN.load(Ordering::Relaxed);
    if want.is_null() || args.len() != 1 {
        return None;
    }
    // SAFETY: type checks and reads of a builtin method's function pointer
    // and borrowed `__self__` on a live object.
    let owner = unsafe {
        // Exact types: a builtin method is a PyCFunction (or a PyCMethod);
        // the subtype walk of PyCFunction_Check is skipped for the common
        // case of a Python function.
        let tp = ffi::Py_TYPE(p);
        if tp != &raw mut ffi::PyCFunction_Type && tp != &raw mut ffi::PyCMethod_Type {
            return None;
        }
        match ffi::PyCFunction_GetFunction(p) {
            Some(f) if f as *mut std::ffi::c_void == want => {}
            _ => return None,
        }
        let owner = ffi::PyCFunction_GetSelf(p);
        if owner.is_null() {
            return None;
        }
        Bound::from_borrowed_ptr(callback.py(), owner)
    };
    // Our `set_result` bound to a Future (or a subclass that keeps it): the
    // very function the call would run.
    let fut = owner.cast::<Future>().ok()?;
    // On ferroloop's loop, completion only pushes ready items: no Python
    // code runs (callers rely on it to skip entering the handle's context).
    if !fut.try_borrow().ok()?.native_loop {
        return None;
    }
    let value = args.get_item(0).ok()?;
    Some(fut_set_result(fut, value.unbind()))
}

fn runtime(msg: impl Into<String>) -> PyErr {
    PyRuntimeError::new_err(msg.into())
}

fn repr_of(obj: &Bound<'_, PyAny>) -> String {
    obj.repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "<?>".into())
}

impl Future {
    pub(crate) fn new_pending(
        py: Python<'_>,
        lp: &Bound<'_, PyAny>,
        with_traceback: bool,
    ) -> PyResult<Self> {
        let native_loop = lp.is_instance_of::<Loop>();
        let source_traceback = if with_traceback {
            Some(extract_stack(py)?)
        } else {
            None
        };
        Ok(Future {
            state: State::Pending,
            result: None,
            exception: None,
            exception_tb: None,
            lp_opt: Some(lp.clone().unbind()),
            native_loop,
            callbacks: Callbacks::new(),
            cancel_message: None,
            cancelled_exc: None,
            source_traceback,
            blocking: false,
            log_traceback: false,
            task: None,
        })
    }

    /// `loop.create_future()` for ferroloop's loop.
    pub(crate) fn create<'py>(lp: &Bound<'py, PyAny>, debug: bool) -> PyResult<Bound<'py, Future>> {
        let py = lp.py();
        let fut = Bound::new(py, Future::new_pending(py, lp, debug)?)?;
        // SAFETY: `fut` was just created, and the GIL is held.
        unsafe { slots::shed_eager_dict(fut.as_ptr()) };
        Ok(fut)
    }

    /// The future's loop; RuntimeError if `__init__` never ran.
    pub(crate) fn lp(&self) -> PyResult<&Py<PyAny>> {
        self.lp_opt
            .as_ref()
            .ok_or_else(|| runtime("Future object is not initialized."))
    }

    /// A future/task created by `__new__` alone (no loop yet).
    fn blank(task: bool) -> Self {
        Python::attach(|py| Future {
            state: State::Pending,
            result: None,
            exception: None,
            exception_tb: None,
            lp_opt: None,
            native_loop: false,
            callbacks: Callbacks::new(),
            cancel_message: None,
            cancelled_exc: None,
            source_traceback: None,
            blocking: false,
            log_traceback: false,
            task: task.then(|| {
                Box::new(TaskFields {
                    coro: Adopted::shared(py.None()),
                    context: Adopted::shared(py.None()),
                    name: None,
                    seq: 0,
                    must_cancel: false,
                    fut_waiter: None,
                    num_cancels_requested: 0,
                    log_destroy_pending: false,
                    started: false,
                    queued: 0,
                    registered: None,
                })
            }),
        })
    }

    fn task(&self) -> &TaskFields {
        self.task.as_deref().expect("task state on a Task")
    }

    fn task_mut(&mut self) -> &mut TaskFields {
        self.task.as_deref_mut().expect("task state on a Task")
    }
}

// ---------------------------------------------------------------------------
// Completion
// ---------------------------------------------------------------------------

fn check_initialized(fut: &Future) -> PyResult<()> {
    fut.lp().map(|_| ())
}

pub(crate) fn fut_set_result(fut: &Bound<'_, Future>, value: Py<PyAny>) -> PyResult<()> {
    let py = fut.py();
    {
        let mut f = fut.borrow_mut();
        check_initialized(&f)?;
        if f.state != State::Pending {
            // The C Future's message (asyncio's default implementation).
            drop(f);
            return Err(invalid_state(py, "invalid state".into()));
        }
        f.result = Some(value);
        f.state = State::Finished;
    }
    schedule_callbacks(fut)
}

pub(crate) fn fut_set_exception(
    fut: &Bound<'_, Future>,
    exception: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = fut.py();
    {
        let f = fut.borrow();
        check_initialized(&f)?;
        if f.state != State::Pending {
            // The C Future's message (asyncio's default implementation).
            drop(f);
            return Err(invalid_state(py, "invalid state".into()));
        }
    }
    let exc = if let Ok(ty) = exception.cast::<PyType>() {
        let inst = ty.call0()?;
        if !inst.is_instance_of::<pyo3::exceptions::PyBaseException>() {
            return Err(PyTypeError::new_err(
                "exception must be a BaseException subclass or instance",
            ));
        }
        inst
    } else {
        exception.clone()
    };
    if !exc.is_instance_of::<pyo3::exceptions::PyBaseException>() {
        return Err(PyTypeError::new_err("invalid exception object"));
    }
    if exc.get_type().is(PyStopIteration::type_object(py)) {
        return Err(PyTypeError::new_err(
            "StopIteration interacts badly with generators and cannot be raised into a Future",
        ));
    }
    let tb = exc.getattr(intern!(py, "__traceback__"))?;
    {
        let mut f = fut.borrow_mut();
        f.exception = Some(exc.unbind());
        f.exception_tb = if tb.is_none() {
            None
        } else {
            Some(tb.unbind())
        };
        f.state = State::Finished;
        f.log_traceback = true;
    }
    schedule_callbacks(fut)
}

/// `Future.cancel(msg)` (the base behaviour, also `super().cancel()` of a task).
pub(crate) fn fut_cancel(fut: &Bound<'_, Future>, msg: Option<Py<PyAny>>) -> PyResult<bool> {
    {
        let mut f = fut.borrow_mut();
        check_initialized(&f)?;
        f.log_traceback = false;
        if f.state != State::Pending {
            return Ok(false);
        }
        f.state = State::Cancelled;
        f.cancel_message = msg;
    }
    schedule_callbacks(fut)?;
    Ok(true)
}

/// asyncio's `_make_cancelled_error()`: the saved CancelledError if a task
/// was cancelled by one, else a new one carrying the cancel message.
pub(crate) fn make_cancelled_error<'py>(fut: &Bound<'py, Future>) -> PyResult<Bound<'py, PyAny>> {
    let py = fut.py();
    let (saved, msg) = {
        let mut f = fut.borrow_mut();
        (
            f.cancelled_exc.take(),
            f.cancel_message.as_ref().map(|m| m.clone_ref(py)),
        )
    };
    if let Some(exc) = saved {
        return Ok(exc.into_bound(py));
    }
    let cls = imports(py)?.cancelled_error.bind(py);
    match msg {
        None => cls.call0(),
        Some(m) => cls.call1((m,)),
    }
}

/// `Future.result()`.
pub(crate) fn fut_result<'py>(fut: &Bound<'py, Future>) -> PyResult<Bound<'py, PyAny>> {
    let py = fut.py();
    let mut f = fut.borrow_mut();
    match f.state {
        State::Cancelled => {
            drop(f);
            Err(PyErr::from_value(make_cancelled_error(fut)?))
        }
        State::Pending => {
            drop(f);
            Err(invalid_state(py, "Result is not set.".into()))
        }
        State::Finished => {
            f.log_traceback = false;
            if let Some(exc) = &f.exception {
                let exc = exc.bind(py).clone();
                let tb = match &f.exception_tb {
                    Some(t) => t.bind(py).clone(),
                    None => py.None().into_bound(py),
                };
                drop(f);
                let exc = exc.call_method1(intern!(py, "with_traceback"), (tb,))?;
                return Err(PyErr::from_value(exc));
            }
            Ok(match &f.result {
                Some(r) => r.bind(py).clone(),
                None => py.None().into_bound(py),
            })
        }
    }
}

// ---------------------------------------------------------------------------
// Python API of Future
// ---------------------------------------------------------------------------

fn opt_clone(py: Python<'_>, v: &Option<Py<PyAny>>) -> Py<PyAny> {
    v.as_ref()
        .map(|x| x.clone_ref(py))
        .unwrap_or_else(|| py.None())
}

#[pymethods]
impl Future {
    /// Allocates an uninitialized future; `__init__` attaches it to a loop
    /// (a subclass that skips `super().__init__()` gets "not initialized"
    /// errors, as with asyncio's C Future).
    #[new]
    #[pyo3(signature = (*args, **kwargs))]
    fn py_new(args: &Bound<'_, PyTuple>, kwargs: Option<&Bound<'_, pyo3::types::PyDict>>) -> Self {
        let _ = (args, kwargs);
        Future::blank(false)
    }

    #[pyo3(signature = (*, r#loop=None))]
    fn __init__(slf: &Bound<'_, Self>, r#loop: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let lp = match r#loop {
            Some(l) if !l.is_none() => l,
            _ => imports(py)?.get_event_loop.bind(py).call0()?,
        };
        let debug = loop_debug(&lp)?;
        let fresh = Future::new_pending(py, &lp, debug)?;
        let old = std::mem::replace(&mut *slf.borrow_mut(), fresh);
        drop(old);
        Ok(())
    }

    /// Subclasses keep the "never retrieved" / "destroyed pending" logs.
    #[classmethod]
    #[pyo3(signature = (**kwargs))]
    fn __init_subclass__(cls: &Bound<'_, PyType>, kwargs: Option<&Bound<'_, pyo3::types::PyDict>>) {
        let _ = kwargs;
        slots::adopt_subclass::<Future>(cls);
    }

    #[classmethod]
    fn __class_getitem__(cls: &Bound<'_, PyType>, item: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let py = cls.py();
        Ok(imports(py)?
            .generic_alias
            .bind(py)
            .call1((cls, item))?
            .unbind())
    }

    #[getter]
    fn __class__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let ty = slf.get_type();
        if ty.is(Future::type_object(py)) {
            Ok(imports(py)?.aio_future.clone_ref(py))
        } else if ty.is(Task::type_object(py)) {
            Ok(imports(py)?.aio_task.clone_ref(py))
        } else {
            Ok(ty.into_any().unbind())
        }
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let imp = imports(py)?;
        let f = if slf.borrow().task.is_some() {
            &imp.task_repr
        } else {
            &imp.future_repr
        };
        Ok(f.bind(py).call1((slf,))?.unbind())
    }

    fn _repr_info(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let imp = imports(py)?;
        let f = if slf.borrow().task.is_some() {
            &imp.task_repr_info
        } else {
            &imp.future_repr_info
        };
        Ok(f.bind(py).call1((slf,))?.unbind())
    }

    fn result(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        fut_result(slf).map(Bound::unbind)
    }

    fn exception(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let state = slf.borrow().state;
        match state {
            State::Cancelled => Err(PyErr::from_value(make_cancelled_error(slf)?)),
            State::Pending => Err(invalid_state(py, "Exception is not set.".into())),
            State::Finished => {
                let mut f = slf.borrow_mut();
                f.log_traceback = false;
                Ok(opt_clone(py, &f.exception))
            }
        }
    }

    fn done(&self) -> bool {
        self.state != State::Pending
    }

    fn cancelled(&self) -> bool {
        self.state == State::Cancelled
    }

    #[pyo3(signature = (msg=None))]
    fn cancel(slf: &Bound<'_, Self>, msg: Option<Py<PyAny>>) -> PyResult<bool> {
        fut_cancel(slf, msg)
    }

    fn set_result(slf: &Bound<'_, Self>, result: Py<PyAny>) -> PyResult<()> {
        fut_set_result(slf, result)
    }

    fn set_exception(slf: &Bound<'_, Self>, exception: &Bound<'_, PyAny>) -> PyResult<()> {
        fut_set_exception(slf, exception)
    }

    #[pyo3(signature = (r#fn, *, context=None))]
    fn add_done_callback(
        slf: &Bound<'_, Self>,
        r#fn: Py<PyAny>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let ctx = match context {
            Some(c) if !c.is_none(py) => Adopted::shared(c),
            _ => Adopted::adopt_new_context(copy_context(py)?),
        };
        fut_add_callback(slf, DoneCallback::Py { func: r#fn, ctx })
    }

    fn remove_done_callback(slf: &Bound<'_, Self>, r#fn: &Bound<'_, PyAny>) -> PyResult<usize> {
        let py = slf.py();
        check_initialized(&slf.borrow())?;
        let callbacks = std::mem::take(&mut slf.borrow_mut().callbacks);
        let before = callbacks.len();
        let mut kept = Callbacks::with_capacity(before);
        let mut err = None;
        for cb in callbacks {
            let matches = if err.is_some() {
                false
            } else {
                let r = match &cb {
                    DoneCallback::Py { func, .. } => func.bind(py).eq(r#fn),
                    DoneCallback::Wakeup { task } => match r#fn.cast::<TaskWakeup>() {
                        Ok(w) => Ok(w.get().task.is(task)),
                        Err(_) => Ok(false),
                    },
                };
                r.unwrap_or_else(|e| {
                    err = Some(e);
                    false
                })
            };
            if !matches {
                kept.push(cb);
            }
        }
        let removed = before - kept.len();
        // Callbacks added while comparing (by __eq__ code) go after the kept ones.
        let mut f = slf.borrow_mut();
        let added = std::mem::replace(&mut f.callbacks, kept);
        f.callbacks.extend(added);
        drop(f);
        match err {
            Some(e) => Err(e),
            None => Ok(removed),
        }
    }

    fn get_loop(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self.lp()?.clone_ref(py))
    }

    fn __await__(slf: &Bound<'_, Self>) -> FutureIter {
        FutureIter {
            fut: Some(slf.clone().unbind()),
        }
    }

    fn __iter__(slf: &Bound<'_, Self>) -> FutureIter {
        FutureIter {
            fut: Some(slf.clone().unbind()),
        }
    }

    fn _make_cancelled_error(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Ok(make_cancelled_error(slf)?.unbind())
    }

    #[getter]
    fn get__asyncio_future_blocking(&self) -> bool {
        self.blocking
    }

    #[setter]
    fn set__asyncio_future_blocking(&mut self, value: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        match value {
            None => Err(pyo3::exceptions::PyAttributeError::new_err(
                "cannot delete attribute",
            )),
            Some(v) => {
                self.blocking = v.is_truthy()?;
                Ok(())
            }
        }
    }

    #[getter]
    fn _state(&self) -> &'static str {
        self.state.name()
    }

    #[getter]
    fn _result(&self, py: Python<'_>) -> Py<PyAny> {
        opt_clone(py, &self.result)
    }

    #[getter]
    fn _exception(&self, py: Python<'_>) -> Py<PyAny> {
        opt_clone(py, &self.exception)
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Py<PyAny> {
        opt_clone(py, &self.lp_opt)
    }

    /// Like the C Future: `None` when no callback is registered.
    #[getter]
    fn _callbacks<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyList>>> {
        if self.callbacks.is_empty() {
            return Ok(None);
        }
        let list = PyList::empty(py);
        for cb in &self.callbacks {
            let item = match cb {
                DoneCallback::Py { func, ctx } => {
                    PyTuple::new(py, [func.clone_ref(py), ctx.expose(py)])?
                }
                DoneCallback::Wakeup { task } => {
                    let ctx = task
                        .try_borrow(py)
                        .map(|t| t.task().context.expose(py))
                        .unwrap_or_else(|_| py.None());
                    let w = Py::new(
                        py,
                        TaskWakeup {
                            task: task.clone_ref(py),
                        },
                    )?
                    .into_any();
                    PyTuple::new(py, [w, ctx])?
                }
            };
            list.append(item)?;
        }
        Ok(Some(list))
    }

    #[getter]
    fn get__source_traceback(&self, py: Python<'_>) -> Py<PyAny> {
        opt_clone(py, &self.source_traceback)
    }

    #[setter]
    fn set__source_traceback(&mut self, v: Option<Py<PyAny>>) {
        self.source_traceback = v;
    }

    #[getter]
    fn get__log_traceback(&self) -> bool {
        self.log_traceback
    }

    #[setter]
    fn set__log_traceback(&mut self, v: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        if let Some(v) = v {
            if v.is_truthy()? {
                return Err(PyValueError::new_err(
                    "_log_traceback can only be set to False",
                ));
            }
        }
        self.log_traceback = false;
        Ok(())
    }

    #[getter]
    fn get__cancel_message(&self, py: Python<'_>) -> Py<PyAny> {
        opt_clone(py, &self.cancel_message)
    }

    #[setter]
    fn set__cancel_message(&mut self, py: Python<'_>, v: Option<Py<PyAny>>) {
        self.cancel_message = v.filter(|x| !x.is_none(py));
    }

    #[getter]
    fn get__cancelled_exc(&self, py: Python<'_>) -> Py<PyAny> {
        opt_clone(py, &self.cancelled_exc)
    }

    #[setter]
    fn set__cancelled_exc(&mut self, py: Python<'_>, v: Option<Py<PyAny>>) {
        self.cancelled_exc = v.filter(|x| !x.is_none(py));
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(l) = &self.lp_opt {
            visit.call(l)?;
        }
        for v in [
            &self.result,
            &self.exception,
            &self.exception_tb,
            &self.cancel_message,
            &self.cancelled_exc,
            &self.source_traceback,
        ]
        .into_iter()
        .flatten()
        {
            visit.call(v)?;
        }
        for cb in &self.callbacks {
            match cb {
                DoneCallback::Py { func, ctx } => {
                    visit.call(func)?;
                    ctx.traverse(&visit)?;
                }
                DoneCallback::Wakeup { task } => visit.call(task)?,
            }
        }
        if let Some(t) = &self.task {
            t.coro.traverse(&visit)?;
            t.context.traverse(&visit)?;
            if let Some(n) = &t.name {
                visit.call(n)?;
            }
            if let Some(w) = &t.fut_waiter {
                visit.call(w)?;
            }
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.result = None;
        self.exception = None;
        self.exception_tb = None;
        self.cancel_message = None;
        self.cancelled_exc = None;
        self.source_traceback = None;
        self.callbacks.clear();
        if let Some(t) = self.task.as_deref_mut() {
            t.fut_waiter = None;
            t.name = None;
            // The coroutine and context are dropped by `clear_task_refs`
            // (`finalize`, the second half of `tp_clear`) once this borrow is
            // released (dropping a coroutine runs its
            // `finally` blocks, which may use the task).
        }
    }
}
