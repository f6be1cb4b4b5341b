//! Native `Future` and `Task`.
//!
//! One Rust struct, [`Future`], holds the state of both: a task is a future
//! whose `task` field is set. The Python class `Task` is a zero-sized
//! subclass that only overrides methods. This keeps every internal path
//! (completion, callbacks, awaiting) one code path with a single borrow.
//!
//! ## Invariants
//! - A `PyRef`/`PyRefMut` of a future is never held while Python code runs
//!   (callbacks, `repr`, `__del__` of a dropped value): borrows are short and
//!   values are moved out before they are dropped or called.
//! - Done callbacks are kept as [`DoneCallback`]: a task waiting on a native
//!   future is stored as `Wakeup` (no bound method, no Handle per wake-up);
//!   on ferroloop's loop, completion pushes `Ready` items straight into the
//!   ready queue. On any other loop, they go through `loop.call_soon`.
//! - The objects report asyncio's classes through `__class__`, so
//!   `isinstance(f, asyncio.Future)` is true (CPython's isinstance falls back
//!   to `__class__`), and asyncio's own repr helpers format them.
//! - The semantics follow CPython's `Lib/asyncio/futures.py` and `tasks.py`
//!   (3.11): state machine, error messages, callback and cancellation order.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use pyo3::exceptions::{PyRuntimeError, PyStopIteration, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple, PyType};
use pyo3::{ffi, intern, PyTraverseError, PyTypeInfo, PyVisit};

use crate::event_loop::{Loop, Ready};
use crate::gc::Adopted;
use crate::handle::loop_debug;
use crate::util::{
    copy_context, extract_stack, foreign_call_soon, imports, in_context, invalid_state,
    is_exit_exception, registry,
};

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

/// A registered done callback.
pub(crate) enum DoneCallback {
    /// `fn(fut)` run in `ctx`.
    Py { func: Py<PyAny>, ctx: Adopted },
    /// Wake the native task `task` (runs in the task's context).
    Wakeup { task: Py<Future> },
}

/// Task-only state.
pub(crate) struct TaskFields {
    /// Adopted once only the task holds it (see `crate::gc`).
    pub coro: Adopted,
    /// Adopted when it is the copy made for this task.
    pub context: Adopted,
    name: Option<Py<PyAny>>,
    seq: u64,
    pub must_cancel: bool,
    pub fut_waiter: Option<Py<PyAny>>,
    num_cancels_requested: i64,
    log_destroy_pending: bool,
    started: bool,
    /// How many items of the loop's ready queue hold this task; while
    /// non-zero the task is pinned (out of the collector's lists).
    queued: u32,
    /// This task's entry in `asyncio.tasks._all_tasks`, removed on drop.
    registered: Option<Py<PyAny>>,
}

impl Drop for TaskFields {
    fn drop(&mut self) {
        if let Some(r) = self.registered.take() {
            crate::util::with_gil(|py| {
                if let Ok(reg) = registry(py) {
                    if let Err(e) = reg.unregister(py, r) {
                        e.write_unraisable(py, None);
                    }
                }
            });
        }
    }
}

static TASK_COUNTER: AtomicU64 = AtomicU64::new(1);

/// Done callbacks; one, stored inline, is by far the common case.
type Callbacks = smallvec::SmallVec<[DoneCallback; 1]>;

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

/// The Python class `Task`: a [`Future`] whose `task` field is set.
#[pyclass(module = "ferroloop._ferroloop", name = "Task", extends = Future, subclass)]
pub struct Task;

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

/// Module-init state of this file: exact type pointers, `set_result`'s C
/// function, whether coroutines may be adopted.
pub(crate) fn init_statics(py: Python<'_>) -> PyResult<()> {
    let v = py.version_info();
    ADOPT_COROUTINES.store((v.major, v.minor) < (3, 14), Ordering::Relaxed);
    SHED_EAGER_DICT.store((v.major, v.minor) < (3, 13), Ordering::Relaxed);
    patch_new(
        Future::type_object(py).as_type_ptr(),
        &FUTURE_NEW,
        future_new,
    );
    patch_new(Task::type_object(py).as_type_ptr(), &TASK_NEW, task_new);
    FUTURE_TYPE.store(Future::type_object(py).as_type_ptr(), Ordering::Relaxed);
    TASK_TYPE.store(Task::type_object(py).as_type_ptr(), Ordering::Relaxed);
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

/// CPython 3.11 and 3.12 give every new object of a type with a `__dict__`
/// slot an empty dict in `object.__new__`, through which PyO3 allocates.
/// asyncio's C Future creates its dict lazily; so do we: [`shed_eager_dict`]
/// drops it again right after creation. Besides the allocation, an instance
/// dict costs a probe on every method lookup (`fut.set_result`,
/// `waiter.done`): CPython's generic getattr looks in it after finding a
/// non-data descriptor. Attribute assignment and `__dict__` recreate it.
static SHED_EAGER_DICT: AtomicBool = AtomicBool::new(false);

/// `Py_TPFLAGS_MANAGED_DICT` (3.11+): the dict lives before the object.
const TPFLAGS_MANAGED_DICT: std::ffi::c_ulong = 1 << 4;

/// Drops `obj`'s instance dict if `object.__new__` made it and it is still
/// empty (3.11/3.12; a no-op elsewhere).
pub(crate) fn shed_eager_dict(obj: *mut ffi::PyObject) {
    if !SHED_EAGER_DICT.load(Ordering::Relaxed) {
        return;
    }
    // SAFETY: `obj` is a live object just created with the GIL held; a
    // positive `tp_dictoffset` without the managed-dict flag locates its
    // `PyObject *` dict slot inside the object (fixed-size types).
    unsafe {
        let tp = ffi::Py_TYPE(obj);
        let off = (*tp).tp_dictoffset;
        if off <= 0 || ((*tp).tp_flags & TPFLAGS_MANAGED_DICT) != 0 {
            return;
        }
        let slot = obj.cast::<u8>().offset(off).cast::<*mut ffi::PyObject>();
        let dict = *slot;
        if !dict.is_null() && ffi::PyDict_Size(dict) == 0 {
            *slot = std::ptr::null_mut();
            ffi::Py_DECREF(dict);
        }
    }
}

type NewFunc = unsafe extern "C" fn(
    *mut ffi::PyTypeObject,
    *mut ffi::PyObject,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;
static FUTURE_NEW: std::sync::OnceLock<NewFunc> = std::sync::OnceLock::new();
static TASK_NEW: std::sync::OnceLock<NewFunc> = std::sync::OnceLock::new();

/// `Future.__new__` / `Task.__new__` from Python (`asyncio.Future()` on a
/// ferroloop loop, subclasses): PyO3's, then [`shed_eager_dict`].
unsafe fn new_with(
    orig: &std::sync::OnceLock<NewFunc>,
    tp: *mut ffi::PyTypeObject,
    args: *mut ffi::PyObject,
    kwds: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let Some(f) = orig.get() else {
        return std::ptr::null_mut();
    };
    // SAFETY: forwarded tp_new contract (GIL held, valid arguments).
    let obj = unsafe { f(tp, args, kwds) };
    if !obj.is_null() {
        shed_eager_dict(obj);
    }
    obj
}

unsafe extern "C" fn future_new(
    tp: *mut ffi::PyTypeObject,
    args: *mut ffi::PyObject,
    kwds: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: forwarded tp_new contract.
    unsafe { new_with(&FUTURE_NEW, tp, args, kwds) }
}

unsafe extern "C" fn task_new(
    tp: *mut ffi::PyTypeObject,
    args: *mut ffi::PyObject,
    kwds: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: forwarded tp_new contract.
    unsafe { new_with(&TASK_NEW, tp, args, kwds) }
}

fn patch_new(tp: *mut ffi::PyTypeObject, store: &std::sync::OnceLock<NewFunc>, new: NewFunc) {
    // SAFETY: our own heap type, fully created, during module init with the
    // GIL held and before any subclass exists (subclasses copy tp_new).
    unsafe {
        if crate::util::replace_slot(&raw mut (*tp).tp_new, store, new) {
            ffi::PyType_Modified(tp);
        }
    }
}

/// `loop.call_soon(fut.set_result, value)` is the commonest way to resolve a
/// future from a callback: when `callback` is exactly our Future's bound
/// `set_result` and `args` is one value, run it without the Python call
/// machinery (same function, same errors). `None`: not that case.
pub(crate) fn direct_set_result(
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
        if ffi::PyCFunction_Check(p) == 0 {
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
        shed_eager_dict(fut.as_ptr());
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
// Completion and callbacks
// ---------------------------------------------------------------------------

/// Hands every registered callback to the loop (asyncio's
/// `__schedule_callbacks`) and clears the list.
fn schedule_callbacks(fut: &Bound<'_, Future>) -> PyResult<()> {
    let (callbacks, lp, native) = {
        let mut f = fut.borrow_mut();
        if f.callbacks.is_empty() {
            return Ok(());
        }
        (
            std::mem::take(&mut f.callbacks),
            f.lp()?.bind(fut.py()).clone(),
            f.native_loop,
        )
    };
    for cb in callbacks {
        schedule_one(&lp, native, fut, cb)?;
    }
    Ok(())
}

/// Schedules one done callback of `fut` on `lp`.
fn schedule_one(
    lp: &Bound<'_, PyAny>,
    native: bool,
    fut: &Bound<'_, Future>,
    cb: DoneCallback,
) -> PyResult<()> {
    let py = lp.py();
    if native {
        // SAFETY: `native` is `lp` being an instance of Loop (checked when
        // the loop was set), so the cast holds.
        let l = unsafe { lp.cast_unchecked::<Loop>() };
        let item = match cb {
            DoneCallback::Py { func, ctx } => Ready::FutCallback {
                func,
                fut: fut.clone().into_any().unbind(),
                ctx,
            },
            DoneCallback::Wakeup { task } => Ready::Wakeup {
                task,
                fut: fut.clone().into_any().unbind(),
            },
        };
        return Loop::push_ready(l, item);
    }
    match cb {
        DoneCallback::Py { func, ctx } => foreign_call_soon(
            lp,
            func.into_bound(py),
            Some(fut.clone().into_any()),
            ctx.expose(py).bind(py),
        ),
        DoneCallback::Wakeup { task } => {
            let ctx = task.borrow(py).task().context.expose(py);
            let w = Bound::new(py, TaskWakeup { task })?;
            foreign_call_soon(lp, w.into_any(), Some(fut.clone().into_any()), ctx.bind(py))
        }
    }
}

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

/// `Future.add_done_callback` with an internal callback.
pub(crate) fn fut_add_callback(fut: &Bound<'_, Future>, cb: DoneCallback) -> PyResult<()> {
    let (lp, native) = {
        let mut f = fut.borrow_mut();
        check_initialized(&f)?;
        if f.state == State::Pending {
            f.callbacks.push(cb);
            return Ok(());
        }
        (f.lp()?.clone_ref(fut.py()), f.native_loop)
    };
    schedule_one(lp.bind(fut.py()), native, fut, cb)
}

// ---------------------------------------------------------------------------
// Task stepping
// ---------------------------------------------------------------------------

fn is_coroutine(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    // SAFETY: obj is a live object; PyCoro_CheckExact only reads its type.
    if unsafe { ffi::PyCoro_CheckExact(obj.as_ptr()) } != 0 {
        return Ok(true);
    }
    imports(obj.py())?
        .iscoroutine
        .bind(obj.py())
        .call1((obj,))?
        .is_truthy()
}

/// Builds the state of a new task (nothing scheduled yet).
fn new_task_state<'py>(
    py: Python<'py>,
    coro: &Bound<'py, PyAny>,
    lp: Option<&Bound<'py, PyAny>>,
    name: Option<&Bound<'py, PyAny>>,
    context: Option<&Bound<'py, PyAny>>,
) -> PyResult<Future> {
    let lp = match lp {
        Some(l) if !l.is_none() => l.clone(),
        _ => imports(py)?.get_event_loop.bind(py).call0()?,
    };
    if !is_coroutine(coro)? {
        return Err(PyTypeError::new_err(format!(
            "a coroutine was expected, got {}",
            repr_of(coro)
        )));
    }
    let debug = loop_debug(&lp)?;
    let mut fut = Future::new_pending(py, &lp, debug)?;
    let name = match name {
        Some(n) if !n.is_none() => Some(n.str()?.into_any().unbind()),
        _ => None,
    };
    let context = match context {
        Some(c) if !c.is_none() => Adopted::shared(c.clone().unbind()),
        _ => Adopted::adopt(copy_context(py)?),
    };
    fut.task = Some(Box::new(TaskFields {
        // Shared with the caller for now; adopted at a step once the task
        // is its only holder.
        coro: Adopted::shared(coro.clone().unbind()),
        context,
        name,
        seq: TASK_COUNTER.fetch_add(1, Ordering::Relaxed),
        must_cancel: false,
        fut_waiter: None,
        num_cancels_requested: 0,
        log_destroy_pending: true,
        started: false,
        queued: 0,
        registered: None,
    }));
    Ok(fut)
}

/// Schedules the first step and registers the task with asyncio
/// (`all_tasks()`), exactly once.
fn start_task(task: &Bound<'_, Task>) -> PyResult<()> {
    let py = task.py();
    let fut = task.as_super();
    {
        let mut f = fut.borrow_mut();
        let t = f.task_mut();
        if t.started {
            return Ok(());
        }
        t.started = true;
    }
    schedule_step(fut, None)?;
    {
        let f = fut.borrow();
        let t = f.task();
        if t.queued > 0 && ADOPT_COROUTINES.load(Ordering::Relaxed) {
            // Pinned until its first step, which settles it.
            t.coro.adopt_pinned(py);
        }
    }
    let r = registry(py)?.register(task.as_any())?;
    fut.borrow_mut().task_mut().registered = r;
    Ok(())
}

/// `loop.create_task(coro)` with a native task.
pub(crate) fn create_task<'py>(
    lp: &Bound<'py, PyAny>,
    coro: &Bound<'py, PyAny>,
    name: Option<&Bound<'py, PyAny>>,
    context: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, Task>> {
    let py = lp.py();
    let state = new_task_state(py, coro, Some(lp), name, context)?;
    let task = Bound::new(py, PyClassInitializer::from(state).add_subclass(Task))?;
    shed_eager_dict(task.as_ptr());
    start_task(&task)?;
    Ok(task)
}

/// Schedules `task.__step(exc)` on the task's loop, in the task's context.
pub(crate) fn schedule_step(task: &Bound<'_, Future>, exc: Option<Py<PyAny>>) -> PyResult<()> {
    let py = task.py();
    let (lp, native) = {
        let f = task.borrow();
        (f.lp()?.clone_ref(py), f.native_loop)
    };
    let lp = lp.into_bound(py);
    if native {
        return Loop::push_ready(
            // SAFETY: `native` means `lp` is an instance of Loop.
            unsafe { lp.cast_unchecked::<Loop>() },
            Ready::Step {
                task: task.clone().unbind(),
                exc,
            },
        );
    }
    let step = Bound::new(
        py,
        TaskStepMethWrapper {
            task: task.clone().unbind(),
            exc,
        },
    )?;
    let ctx = task.borrow().task().context.expose(py);
    foreign_call_soon(&lp, step.into_any(), None, ctx.bind(py))
}

enum Outcome<'py> {
    Yielded(Bound<'py, PyAny>),
    Returned(Bound<'py, PyAny>),
    Raised(PyErr),
}

fn send_into<'py>(coro: &Bound<'py, PyAny>, exc: Option<Bound<'py, PyAny>>) -> Outcome<'py> {
    let py = coro.py();
    match exc {
        None => {
            // SAFETY: type checks only read the object's type.
            let fast = unsafe {
                ffi::PyCoro_CheckExact(coro.as_ptr()) != 0
                    || ffi::PyGen_CheckExact(coro.as_ptr()) != 0
            };
            if fast {
                let mut out: *mut ffi::PyObject = std::ptr::null_mut();
                // SAFETY: coro is a live coroutine/generator; Py_None is a valid
                // borrowed argument; `out` receives a new reference on NEXT and RETURN.
                let rc = unsafe { ffi::PyIter_Send(coro.as_ptr(), ffi::Py_None(), &mut out) };
                return match rc {
                    // SAFETY: on PYGEN_NEXT/PYGEN_RETURN `out` is a new, non-NULL reference.
                    ffi::PySendResult::PYGEN_NEXT => {
                        Outcome::Yielded(unsafe { Bound::from_owned_ptr(py, out) })
                    }
                    ffi::PySendResult::PYGEN_RETURN => {
                        Outcome::Returned(unsafe { Bound::from_owned_ptr(py, out) })
                    }
                    ffi::PySendResult::PYGEN_ERROR => Outcome::Raised(PyErr::fetch(py)),
                };
            }
            classify(py, coro.call_method1(intern!(py, "send"), (py.None(),)))
        }
        Some(e) => classify(py, coro.call_method1(intern!(py, "throw"), (e,))),
    }
}

fn classify<'py>(py: Python<'py>, r: PyResult<Bound<'py, PyAny>>) -> Outcome<'py> {
    match r {
        Ok(v) => Outcome::Yielded(v),
        Err(e) if e.is_instance_of::<PyStopIteration>(py) => {
            let value = e
                .value(py)
                .getattr(intern!(py, "value"))
                .unwrap_or_else(|_| py.None().into_bound(py));
            Outcome::Returned(value)
        }
        Err(e) => Outcome::Raised(e),
    }
}

/// asyncio's `Task.__step`.
pub(crate) fn task_step(task: &Bound<'_, Future>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
    let py = task.py();
    let (done, must_cancel) = {
        let f = task.borrow();
        (f.state != State::Pending, f.task().must_cancel)
    };
    if done {
        let exc_repr = exc.as_ref().map(repr_of).unwrap_or_else(|| "None".into());
        return Err(invalid_state(
            py,
            format!(
                "_step(): already done: {}, {}",
                repr_of(task.as_any()),
                exc_repr
            ),
        ));
    }
    let mut exc = exc;
    if must_cancel {
        let is_cancel = match &exc {
            Some(e) => e.is_instance(imports(py)?.cancelled_error.bind(py))?,
            None => false,
        };
        if !is_cancel {
            exc = Some(make_cancelled_error(task)?);
        }
        task.borrow_mut().task_mut().must_cancel = false;
    }
    // Bound (not Py) temporaries: dropping them needs no attach check.
    let (coro, lp) = {
        let mut f = task.borrow_mut();
        let lp = f.lp()?.bind(py).clone();
        let t = f.task_mut();
        let waiter = t.fut_waiter.take().map(|w| w.into_bound(py));
        if ADOPT_COROUTINES.load(Ordering::Relaxed) {
            t.coro.settle(py);
        }
        let coro = t.coro.inner().bind(py).clone();
        drop(f);
        drop(waiter);
        (coro, lp)
    };
    let reg = registry(py)?;
    reg.enter(&lp, task.as_any())?;
    let outcome = send_into(&coro, exc);
    let res = handle_outcome(task, &lp, outcome);
    let leave = reg.leave(&lp, task.as_any());
    res?;
    leave?;
    Ok(())
}

fn handle_outcome<'py>(
    task: &Bound<'py, Future>,
    lp: &Bound<'py, PyAny>,
    outcome: Outcome<'py>,
) -> PyResult<()> {
    let py = task.py();
    match outcome {
        Outcome::Returned(value) => {
            let cancel_msg = {
                let mut f = task.borrow_mut();
                let t = f.task_mut();
                if t.must_cancel {
                    t.must_cancel = false;
                    Some(f.cancel_message.as_ref().map(|m| m.clone_ref(py)))
                } else {
                    None
                }
            };
            match cancel_msg {
                Some(msg) => fut_cancel(task, msg).map(|_| ()),
                None => fut_set_result(task, value.unbind()),
            }
        }
        Outcome::Raised(err) => {
            if err.is_instance(py, imports(py)?.cancelled_error.bind(py)) {
                task.borrow_mut().cancelled_exc = Some(err.into_value(py).into_any());
                fut_cancel(task, None).map(|_| ())
            } else if is_exit_exception(py, &err) {
                let value = err.clone_ref(py).into_value(py);
                fut_set_exception(task, value.bind(py).as_any())?;
                Err(err)
            } else {
                // into_value attaches the traceback to the exception object
                // (on 3.11 a fetched error keeps it apart until then).
                let value = err.into_value(py);
                fut_set_exception(task, value.bind(py).as_any())
            }
        }
        Outcome::Yielded(result) => handle_yield(task, lp, result),
    }
}

fn step_with_error(task: &Bound<'_, Future>, msg: String) -> PyResult<()> {
    let err = runtime(msg).into_value(task.py()).into_any();
    schedule_step(task, Some(err))
}

fn handle_yield<'py>(
    task: &Bound<'py, Future>,
    lp: &Bound<'py, PyAny>,
    result: Bound<'py, PyAny>,
) -> PyResult<()> {
    let py = task.py();
    let native = native_exact(&result);
    // What asyncio reads off the yielded object: its loop and its
    // `_asyncio_future_blocking` flag. Native futures: no attribute lookups.
    let (same_loop, blocking) = match native {
        Some(fut) => {
            let f = fut.borrow();
            (f.lp()?.bind(py).is(lp), f.blocking)
        }
        None => {
            if result.is_none() {
                // Bare `yield` (asyncio.sleep(0)): run the next step soon.
                return schedule_step(task, None);
            }
            match result.getattr_opt(intern!(py, "_asyncio_future_blocking"))? {
                Some(b) if !b.is_none() => {
                    let fut_loop = match result.getattr_opt(intern!(py, "get_loop"))? {
                        Some(get_loop) => get_loop.call0()?,
                        None => result.getattr(intern!(py, "_loop"))?,
                    };
                    (fut_loop.is(lp), b.is_truthy()?)
                }
                _ => return bad_yield(task, &result),
            }
        }
    };
    if !same_loop {
        return step_with_error(
            task,
            format!(
                "Task {} got Future {} attached to a different loop",
                repr_of(task.as_any()),
                repr_of(&result)
            ),
        );
    }
    if !blocking {
        return step_with_error(
            task,
            format!(
                "yield was used instead of yield from in task {} with {}",
                repr_of(task.as_any()),
                repr_of(&result)
            ),
        );
    }
    if result.is(task) {
        return step_with_error(
            task,
            format!("Task cannot await on itself: {}", repr_of(task.as_any())),
        );
    }
    match native {
        Some(fut) => {
            // No bound method: the wake-up is a `Ready::Wakeup` item.
            fut.borrow_mut().blocking = false;
            fut_add_callback(
                fut,
                DoneCallback::Wakeup {
                    task: task.clone().unbind(),
                },
            )?;
        }
        None => {
            result.setattr(intern!(py, "_asyncio_future_blocking"), false)?;
            let ctx = task.borrow().task().context.expose(py);
            let wakeup = Bound::new(
                py,
                TaskWakeup {
                    task: task.clone().unbind(),
                },
            )?;
            let kwargs = pyo3::types::PyDict::new(py);
            kwargs.set_item(intern!(py, "context"), ctx)?;
            result.call_method(intern!(py, "add_done_callback"), (wakeup,), Some(&kwargs))?;
        }
    }
    after_wait(task, result)
}

/// A yielded value that is neither None nor a future.
fn bad_yield(task: &Bound<'_, Future>, result: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = task.py();
    if imports(py)?
        .isgenerator
        .bind(py)
        .call1((result,))?
        .is_truthy()?
    {
        step_with_error(
            task,
            format!(
                "yield was used instead of yield from for generator in task {} with {}",
                repr_of(task.as_any()),
                repr_of(result)
            ),
        )
    } else {
        step_with_error(task, format!("Task got bad yield: {}", repr_of(result)))
    }
}

/// The task now waits on `waiter`; deliver a pending cancellation to it.
fn after_wait(task: &Bound<'_, Future>, waiter: Bound<'_, PyAny>) -> PyResult<()> {
    let py = task.py();
    let cancel_msg = {
        let mut f = task.borrow_mut();
        let msg = f.cancel_message.as_ref().map(|m| m.clone_ref(py));
        let t = f.task_mut();
        t.fut_waiter = Some(waiter.clone().unbind());
        if t.must_cancel {
            Some(msg)
        } else {
            None
        }
    };
    if let Some(msg) = cancel_msg {
        if cancel_other(&waiter, msg)? {
            task.borrow_mut().task_mut().must_cancel = false;
        }
    }
    Ok(())
}

/// `fut.cancel(msg=msg)` on any future.
fn cancel_other(fut: &Bound<'_, PyAny>, msg: Option<Py<PyAny>>) -> PyResult<bool> {
    let py = fut.py();
    if let Some(f) = native_exact(fut) {
        if f.borrow().task.is_some() {
            return task_cancel(f, msg);
        }
        return fut_cancel(f, msg);
    }
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item(intern!(py, "msg"), msg)?;
    fut.call_method(intern!(py, "cancel"), (), Some(&kwargs))?
        .is_truthy()
}

/// asyncio's `Task.__wakeup(fut)`.
pub(crate) fn task_wakeup(task: &Bound<'_, Future>, fut: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = task.py();
    let res = match native_exact(fut) {
        Some(f) => fut_result(f).map(|_| ()),
        None => fut.call_method0(intern!(py, "result")).map(|_| ()),
    };
    match res {
        Ok(()) => task_step(task, None),
        Err(e) => task_step(task, Some(e.into_value(py).into_bound(py).into_any())),
    }
}

/// asyncio's `Task.cancel(msg)`.
pub(crate) fn task_cancel(task: &Bound<'_, Future>, msg: Option<Py<PyAny>>) -> PyResult<bool> {
    let py = task.py();
    let waiter = {
        let mut f = task.borrow_mut();
        f.log_traceback = false;
        if f.state != State::Pending {
            return Ok(false);
        }
        let t = f.task_mut();
        t.num_cancels_requested += 1;
        t.fut_waiter.as_ref().map(|w| w.clone_ref(py))
    };
    if let Some(w) = waiter {
        let m = msg.as_ref().map(|m| m.clone_ref(py));
        if cancel_other(w.bind(py), m)? {
            return Ok(true);
        }
    }
    let mut f = task.borrow_mut();
    f.task_mut().must_cancel = true;
    let old = std::mem::replace(&mut f.cancel_message, msg);
    drop(f);
    drop(old);
    Ok(true)
}

// ---------------------------------------------------------------------------
// Callables handed to foreign loops (and shown in reprs)
// ---------------------------------------------------------------------------

/// `task.__step(exc)` as a callable (CPython's C Task uses an object of
/// the same name for the same purpose).
#[pyclass(module = "ferroloop._ferroloop", name = "TaskStepMethWrapper", frozen)]
pub struct TaskStepMethWrapper {
    pub(crate) task: Py<Future>,
    pub(crate) exc: Option<Py<PyAny>>,
}

#[pymethods]
impl TaskStepMethWrapper {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        task_step(
            self.task.bind(py),
            self.exc.as_ref().map(|e| e.bind(py).clone()),
        )
    }

    #[getter]
    fn __self__(&self, py: Python<'_>) -> Py<Future> {
        self.task.clone_ref(py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.task)?;
        if let Some(e) = &self.exc {
            visit.call(e)?;
        }
        Ok(())
    }
}

/// `task.__wakeup` as a callable; `__qualname__` matches the C Task's
/// method, so reprs of futures show `cb=[Task.task_wakeup()]` as on stdlib.
#[pyclass(module = "ferroloop._ferroloop", name = "task_wakeup", frozen)]
pub struct TaskWakeup {
    pub(crate) task: Py<Future>,
}

#[pymethods]
impl TaskWakeup {
    fn __call__(&self, py: Python<'_>, fut: &Bound<'_, PyAny>) -> PyResult<()> {
        task_wakeup(self.task.bind(py), fut)
    }

    #[getter]
    fn __qualname__(&self) -> &'static str {
        "Task.task_wakeup"
    }

    #[getter]
    fn __self__(&self, py: Python<'_>) -> Py<Future> {
        self.task.clone_ref(py)
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        match other.cast::<TaskWakeup>() {
            Ok(o) => o.get().task.is(&self.task),
            Err(_) => false,
        }
    }

    fn __hash__(&self) -> isize {
        self.task.as_ptr() as isize
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.task)
    }
}

// ---------------------------------------------------------------------------
// Awaiting
// ---------------------------------------------------------------------------

/// The iterator `__await__` returns (CPython's FutureIter).
#[pyclass(module = "ferroloop._ferroloop", name = "FutureIter")]
pub struct FutureIter {
    fut: Option<Py<Future>>,
}

enum IterStep {
    Yield(Py<PyAny>),
    Return(Py<PyAny>),
}

impl FutureIter {
    fn advance(&mut self, py: Python<'_>) -> PyResult<IterStep> {
        let Some(fut) = self.fut.as_ref() else {
            return Err(PyStopIteration::new_err(()));
        };
        {
            let mut f = fut.bind(py).borrow_mut();
            if f.state == State::Pending {
                if !f.blocking {
                    f.blocking = true;
                    return Ok(IterStep::Yield(fut.clone_ref(py).into_any()));
                }
                return Err(runtime("await wasn't used with future"));
            }
        }
        // Bound, not Py: dropping it needs no attach check.
        let fut = self.fut.take().map(|f| f.into_bound(py));
        let fut = fut.as_ref().expect("checked above");
        Ok(IterStep::Return(fut_result(fut)?.unbind()))
    }

    fn step(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        match self.advance(py)? {
            IterStep::Yield(v) => Ok(Some(v)),
            IterStep::Return(v) => Err(PyStopIteration::new_err((v,))),
        }
    }
}

/// `am_send` slot of FutureIter: lets `await fut` finish without creating a
/// StopIteration (CPython's C FutureIter has the same slot).
unsafe extern "C" fn future_iter_am_send(
    iter: *mut ffi::PyObject,
    _arg: *mut ffi::PyObject,
    result: *mut *mut ffi::PyObject,
) -> ffi::PySendResult {
    // SAFETY: slots run with the GIL held. Without PyO3's attach
    // bookkeeping (two thread-local updates per call) a `Py` dropped here
    // is released at PyO3's next entry when the thread is not already
    // counted as attached; on this path values are `Bound` or handed out.
    let py = unsafe { Python::assume_attached() };
    let outcome = std::panic::catch_unwind(|| {
        // SAFETY: `iter` is the live receiver of this slot.
        let obj = unsafe { Bound::from_borrowed_ptr(py, iter) };
        let r = match obj.cast::<FutureIter>() {
            Ok(it) => match it.try_borrow_mut() {
                Ok(mut it) => it.advance(py),
                Err(e) => Err(PyErr::from(e)),
            },
            Err(e) => Err(PyErr::from(e)),
        };
        match r {
            Ok(IterStep::Yield(v)) => (ffi::PySendResult::PYGEN_NEXT, v.into_ptr()),
            Ok(IterStep::Return(v)) => (ffi::PySendResult::PYGEN_RETURN, v.into_ptr()),
            Err(e) => {
                e.restore(py);
                (ffi::PySendResult::PYGEN_ERROR, std::ptr::null_mut())
            }
        }
    });
    let (status, value) = outcome.unwrap_or_else(|_| {
        runtime("panic in FutureIter.send").restore(py);
        (ffi::PySendResult::PYGEN_ERROR, std::ptr::null_mut())
    });
    // SAFETY: `result` is a valid out-pointer supplied by PyIter_Send.
    unsafe { *result = value };
    status
}

/// Installs [`future_iter_am_send`] on the FutureIter type.
pub(crate) fn install_am_send(py: Python<'_>) {
    let tp = FutureIter::type_object(py).as_type_ptr();
    // SAFETY: FutureIter is our own heap type, fully initialized, with no
    // instance yet (module init, GIL held). Heap types always point
    // tp_as_async at their own writable PyAsyncMethods.
    unsafe {
        let am = (*tp).tp_as_async;
        if !am.is_null() {
            (*am).am_send = Some(future_iter_am_send);
        }
        // Every `await fut` makes a FutureIter: recycle their memory, as
        // CPython's C FutureIter does (see `future_iter_alloc`).
        if FUTURE_ITER_TYPE
            .compare_exchange(
                std::ptr::null_mut(),
                tp,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            (*tp).tp_alloc = Some(future_iter_alloc);
            (*tp).tp_free = Some(future_iter_free);
        }
        ffi::PyType_Modified(tp);
    }
}

/// Freed FutureIter objects kept for reuse (addresses of objects whose
/// deallocation is complete but whose memory, GC header included, is kept).
static ITER_FREELIST: parking_lot::Mutex<Vec<usize>> = parking_lot::const_mutex(Vec::new());
const ITER_FREELIST_MAX: usize = 64;
static FUTURE_ITER_TYPE: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(std::ptr::null_mut());

/// `tp_alloc` of FutureIter: a recycled object when one is free, else the
/// generic allocation. A recycled object is set up as `PyType_GenericAlloc`
/// would: zeroed body, type and refcount, tracked by the collector.
unsafe extern "C" fn future_iter_alloc(
    tp: *mut ffi::PyTypeObject,
    nitems: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    if nitems == 0 && tp == FUTURE_ITER_TYPE.load(Ordering::Relaxed) {
        let recycled = ITER_FREELIST.lock().pop();
        if let Some(addr) = recycled {
            let obj = addr as *mut ffi::PyObject;
            // SAFETY: `obj` is a FutureIter's memory, untracked and no longer
            // an object (its deallocation ran up to tp_free); basicsize is
            // the object's size after the GC header, which stays as the
            // untracking left it. PyObject_Init sets type and refcount (and
            // takes the type reference the deallocation released).
            unsafe {
                let size = usize::try_from((*tp).tp_basicsize).unwrap_or(0);
                std::ptr::write_bytes(obj.cast::<u8>(), 0, size);
                ffi::PyObject_Init(obj, tp);
                ffi::PyObject_GC_Track(obj.cast());
            }
            return obj;
        }
    }
    // SAFETY: the default allocator for any type.
    unsafe { ffi::PyType_GenericAlloc(tp, nitems) }
}

/// `tp_free` of FutureIter: keeps up to [`ITER_FREELIST_MAX`] objects.
unsafe extern "C" fn future_iter_free(obj: *mut std::ffi::c_void) {
    if obj.is_null() {
        return;
    }
    {
        let mut free = ITER_FREELIST.lock();
        if free.len() < ITER_FREELIST_MAX {
            free.push(obj as usize);
            return;
        }
    }
    // SAFETY: a GC object allocated by PyType_GenericAlloc or recycled.
    unsafe { ffi::PyObject_GC_Del(obj) }
}

#[pymethods]
impl FutureIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.step(py)
    }

    fn send(&mut self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<Option<Py<PyAny>>> {
        let _ = value;
        self.step(py)
    }

    /// Raises into the awaiting frame, with the argument rules of the C
    /// FutureIter (`throw(type[, value[, traceback]])`).
    #[pyo3(signature = (typ, val=None, tb=None))]
    fn throw(
        &mut self,
        py: Python<'_>,
        typ: &Bound<'_, PyAny>,
        val: Option<&Bound<'_, PyAny>>,
        tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let val = val.filter(|v| !v.is_none());
        let tb = tb.filter(|t| !t.is_none());
        if let Some(t) = tb {
            if !t.is_instance_of::<pyo3::types::PyTraceback>() {
                return Err(PyTypeError::new_err(
                    "throw() third argument must be a traceback",
                ));
            }
        }
        let base = py.get_type::<pyo3::exceptions::PyBaseException>();
        let exc_class = typ
            .cast::<PyType>()
            .ok()
            .filter(|t| t.is_subclass(&base).unwrap_or(false));
        let exc = if let Some(t) = exc_class {
            match val {
                Some(v) if v.is_instance(t)? => v.clone(),
                Some(v) => match v.cast::<PyTuple>() {
                    Ok(args) => t.call1(args.clone())?,
                    Err(_) => t.call1((v,))?,
                },
                None => t.call0()?,
            }
        } else if typ.is_instance_of::<pyo3::exceptions::PyBaseException>() {
            if val.is_some() {
                return Err(PyTypeError::new_err(
                    "instance exception may not have a separate value",
                ));
            }
            typ.clone()
        } else {
            return Err(PyTypeError::new_err(
                "exceptions must be classes deriving BaseException or instances of such a class",
            ));
        };
        if let Some(tb) = tb {
            exc.setattr(intern!(py, "__traceback__"), tb)?;
        }
        self.fut = None;
        Err(PyErr::from_value(exc))
    }

    fn close(&mut self) {
        self.fut = None;
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(f) = &self.fut {
            visit.call(f)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.fut = None;
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
        crate::finalize::adopt_subclass(cls);
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
            _ => Adopted::adopt(copy_context(py)?),
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
            // The coroutine and context are dropped by `finalize::clear`
            // once this borrow is released (dropping a coroutine runs its
            // `finally` blocks, which may use the task).
        }
    }
}

// ---------------------------------------------------------------------------
// Python API of Task
// ---------------------------------------------------------------------------

#[pymethods]
impl Task {
    /// Allocates an uninitialized task; `__init__` does the work (so a
    /// subclass can run code before it, as with asyncio's C Task).
    #[new]
    #[pyo3(signature = (*args, **kwargs))]
    fn py_new(
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, pyo3::types::PyDict>>,
    ) -> PyClassInitializer<Self> {
        let _ = (args, kwargs);
        PyClassInitializer::from(Future::blank(true)).add_subclass(Task)
    }

    #[pyo3(signature = (coro, *, r#loop=None, name=None, context=None))]
    fn __init__(
        slf: &Bound<'_, Self>,
        coro: &Bound<'_, PyAny>,
        r#loop: Option<Bound<'_, PyAny>>,
        name: Option<Bound<'_, PyAny>>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let state = new_task_state(py, coro, r#loop.as_ref(), name.as_ref(), context.as_ref())?;
        let old = std::mem::replace(&mut *slf.as_super().borrow_mut(), state);
        drop(old);
        start_task(slf)
    }

    #[pyo3(signature = (msg=None))]
    fn cancel(slf: &Bound<'_, Self>, msg: Option<Py<PyAny>>) -> PyResult<bool> {
        task_cancel(slf.as_super(), msg)
    }

    fn cancelling(slf: &Bound<'_, Self>) -> i64 {
        slf.as_super().borrow().task().num_cancels_requested
    }

    fn uncancel(slf: &Bound<'_, Self>) -> i64 {
        let mut f = slf.as_super().borrow_mut();
        let t = f.task_mut();
        if t.num_cancels_requested > 0 {
            t.num_cancels_requested -= 1;
        }
        t.num_cancels_requested
    }

    fn set_result(&self, result: &Bound<'_, PyAny>) -> PyResult<()> {
        let _ = result;
        Err(runtime("Task does not support set_result operation"))
    }

    fn set_exception(&self, exception: &Bound<'_, PyAny>) -> PyResult<()> {
        let _ = exception;
        Err(runtime("Task does not support set_exception operation"))
    }

    fn get_coro(slf: &Bound<'_, Self>) -> Py<PyAny> {
        slf.as_super().borrow().task().coro.expose(slf.py())
    }

    fn get_context(slf: &Bound<'_, Self>) -> Py<PyAny> {
        slf.as_super().borrow().task().context.expose(slf.py())
    }

    fn get_name(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let mut f = slf.as_super().borrow_mut();
        let t = f.task_mut();
        if t.name.is_none() {
            t.name = Some(
                PyString::new(py, &format!("Task-{}", t.seq))
                    .into_any()
                    .unbind(),
            );
        }
        Ok(t.name.as_ref().map(|n| n.clone_ref(py)).expect("set above"))
    }

    fn set_name(slf: &Bound<'_, Self>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let s = value.str()?.into_any().unbind();
        let old = slf.as_super().borrow_mut().task_mut().name.replace(s);
        drop(old);
        Ok(())
    }

    #[pyo3(signature = (*, limit=None))]
    fn get_stack(slf: &Bound<'_, Self>, limit: Option<Py<PyAny>>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        Ok(imports(py)?
            .task_get_stack
            .bind(py)
            .call1((slf, limit))?
            .unbind())
    }

    #[pyo3(signature = (*, limit=None, file=None))]
    fn print_stack(
        slf: &Bound<'_, Self>,
        limit: Option<Py<PyAny>>,
        file: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        Ok(imports(py)?
            .task_print_stack
            .bind(py)
            .call1((slf, limit, file))?
            .unbind())
    }

    #[getter]
    fn _coro(slf: &Bound<'_, Self>) -> Py<PyAny> {
        Task::get_coro(slf)
    }

    #[getter]
    fn _context(slf: &Bound<'_, Self>) -> Py<PyAny> {
        Task::get_context(slf)
    }

    #[getter]
    fn get__name(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Task::get_name(slf)
    }

    #[getter]
    fn get__fut_waiter(slf: &Bound<'_, Self>) -> Py<PyAny> {
        opt_clone(slf.py(), &slf.as_super().borrow().task().fut_waiter)
    }

    #[setter]
    fn set__fut_waiter(slf: &Bound<'_, Self>, v: Option<Py<PyAny>>) {
        let py = slf.py();
        let old = std::mem::replace(
            &mut slf.as_super().borrow_mut().task_mut().fut_waiter,
            v.filter(|x| !x.is_none(py)),
        );
        drop(old);
    }

    #[getter]
    fn get__must_cancel(slf: &Bound<'_, Self>) -> bool {
        slf.as_super().borrow().task().must_cancel
    }

    #[setter]
    fn set__must_cancel(slf: &Bound<'_, Self>, v: bool) {
        slf.as_super().borrow_mut().task_mut().must_cancel = v;
    }

    #[getter]
    fn get__log_destroy_pending(slf: &Bound<'_, Self>) -> bool {
        slf.as_super().borrow().task().log_destroy_pending
    }

    #[setter]
    fn set__log_destroy_pending(slf: &Bound<'_, Self>, v: bool) {
        slf.as_super().borrow_mut().task_mut().log_destroy_pending = v;
    }

    #[getter]
    fn get__num_cancels_requested(slf: &Bound<'_, Self>) -> i64 {
        slf.as_super().borrow().task().num_cancels_requested
    }

    #[setter]
    fn set__num_cancels_requested(slf: &Bound<'_, Self>, v: i64) {
        slf.as_super().borrow_mut().task_mut().num_cancels_requested = v;
    }

    /// asyncio's private `Task.__step`, as the C Task exposes it.
    #[pyo3(signature = (exc=None))]
    fn _Task__step(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let ctx = slf.as_super().borrow().task().context.inner().clone_ref(py);
        in_context(ctx.bind(py), || {
            task_step(slf.as_super(), exc.filter(|e| !e.is_none()))
        })
    }

    fn _Task__wakeup(slf: &Bound<'_, Self>, fut: &Bound<'_, PyAny>) -> PyResult<()> {
        task_wakeup(slf.as_super(), fut)
    }
}

/// `task` entered the loop's ready queue (see `crate::gc`, pinning).
pub(crate) fn pin_task(task: &Bound<'_, Future>) {
    if let Ok(mut f) = task.try_borrow_mut() {
        if let Some(t) = f.task.as_deref_mut() {
            t.queued += 1;
            if t.queued == 1 {
                crate::gc::untrack(task.as_any());
            }
        }
    }
}

/// An item holding `task` left the loop's ready queue (run or dropped):
/// when no other item holds it, the task goes back to the collector, and
/// its coroutine's adoption is settled.
pub(crate) fn unpin_task(task: &Bound<'_, Future>) {
    let py = task.py();
    if let Ok(mut f) = task.try_borrow_mut() {
        if let Some(t) = f.task.as_deref_mut() {
            t.queued = t.queued.saturating_sub(1);
            if t.queued == 0 {
                t.coro.settle(py);
                crate::gc::track(task.as_any());
            }
            return;
        }
    }
    crate::gc::track(task.as_any());
}

/// The second half of the task's `tp_clear`, run without a borrow held:
/// drops the coroutine and context as the C Task's clear does. An adopted
/// coroutine is not in the collector's unreachable set, so this is where its
/// finalizer (closing the frame) runs when a task dies in a cycle.
pub(crate) fn clear_task_refs(obj: &Bound<'_, Future>) {
    let py = obj.py();
    let taken = obj.try_borrow_mut().ok().and_then(|mut f| {
        f.task.as_deref_mut().map(|t| {
            (
                std::mem::replace(&mut t.coro, Adopted::shared(py.None())),
                std::mem::replace(&mut t.context, Adopted::shared(py.None())),
            )
        })
    });
    drop(taken);
}

/// Whether [`finalize_report`] would do anything for this future (most
/// futures die done, retrieved and without an adopted coroutine).
pub(crate) fn needs_finalizer(obj: &Bound<'_, Future>) -> bool {
    let Ok(f) = obj.try_borrow() else {
        return true;
    };
    if f.log_traceback {
        return true;
    }
    f.state == State::Pending
        && f.task
            .as_ref()
            .is_some_and(|t| t.started || t.coro.is_adopted())
}

/// Messages for the "never retrieved" / "destroyed but pending" logs.
pub(crate) fn finalize_report(obj: &Bound<'_, Future>) -> PyResult<()> {
    let py = obj.py();
    let (is_task, pending_log, exc_log, lp, tb, exc) = {
        let Ok(f) = obj.try_borrow() else {
            return Ok(());
        };
        if f.lp_opt.is_none() {
            drop(f);
            finalize_adopted_coroutine(obj);
            return Ok(());
        }
        let pending_log = f.state == State::Pending
            && f.task
                .as_ref()
                .is_some_and(|t| t.log_destroy_pending && t.started);
        (
            f.task.is_some(),
            pending_log,
            f.log_traceback,
            f.lp()?.clone_ref(py),
            f.source_traceback.as_ref().map(|t| t.clone_ref(py)),
            f.exception.as_ref().map(|e| e.clone_ref(py)),
        )
    };
    let lp = lp.bind(py);
    if pending_log {
        let ctx = pyo3::types::PyDict::new(py);
        ctx.set_item("task", obj)?;
        ctx.set_item("message", "Task was destroyed but it is pending!")?;
        if let Some(tb) = &tb {
            if tb.bind(py).is_truthy()? {
                ctx.set_item("source_traceback", tb)?;
            }
        }
        lp.call_method1(intern!(py, "call_exception_handler"), (ctx,))?;
    }
    if exc_log {
        let ctx = pyo3::types::PyDict::new(py);
        let name = if is_task { "Task" } else { "Future" };
        let cls_name: String = obj
            .getattr(intern!(py, "__class__"))
            .and_then(|c| c.getattr(intern!(py, "__name__")))
            .and_then(|n| n.extract())
            .unwrap_or_else(|_| name.to_string());
        ctx.set_item(
            "message",
            format!("{cls_name} exception was never retrieved"),
        )?;
        ctx.set_item("exception", exc)?;
        ctx.set_item("future", obj)?;
        if let Some(tb) = &tb {
            if tb.bind(py).is_truthy()? {
                ctx.set_item("source_traceback", tb)?;
            }
        }
        lp.call_method1(intern!(py, "call_exception_handler"), (ctx,))?;
    }
    finalize_adopted_coroutine(obj);
    Ok(())
}

/// A pending task is being destroyed: its adopted coroutine is closed now
/// (finally blocks run), as the collector does for asyncio's tasks, whose
/// coroutine it finalizes along with the task even when the task's report
/// resurrects it.
fn finalize_adopted_coroutine(obj: &Bound<'_, Future>) {
    let py = obj.py();
    let coro = match obj.try_borrow() {
        Ok(f) if f.state == State::Pending => f.task.as_ref().and_then(|t| t.coro.adopted(py)),
        _ => None,
    };
    if let Some(coro) = coro {
        crate::gc::call_finalizer(coro.bind(py));
    }
}
