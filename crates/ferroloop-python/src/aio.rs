//! Calling into asyncio and `contextvars`: the asyncio objects the binding
//! uses, looked up once per interpreter ([`imports`]); running a callable
//! inside a `contextvars.Context` ([`in_context`], [`copy_context`]);
//! `call_soon` on a loop that is not ferroloop's ([`foreign_call_soon`]);
//! debug-mode source tracebacks ([`extract_stack`]); and attaching to the
//! interpreter from a destructor ([`with_gil`]).
//!
//! ## Invariants
//! - [`Imports`] is filled once per interpreter, on first use, with the GIL
//!   held; its objects live as long as the interpreter.
//! - [`in_context`] enters and exits exactly one context around its
//!   callable, and fails, as `Context.run` does, if that context is already
//!   entered in this thread.
//! - [`with_gil`] runs its callable only with the GIL held: attached
//!   through PyO3, or, during interpreter shutdown when PyO3 refuses to
//!   attach, if this thread holds the GIL already; it is skipped otherwise.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{ffi, intern};

/// asyncio objects looked up once per interpreter.
pub struct Imports {
    pub cancelled_error: Py<PyAny>,
    pub invalid_state_error: Py<PyAny>,
    pub aio_future: Py<PyAny>,
    pub aio_task: Py<PyAny>,
    pub aio_handle: Py<PyAny>,
    pub aio_timer_handle: Py<PyAny>,
    pub future_repr: Py<PyAny>,
    pub future_repr_info: Py<PyAny>,
    pub task_repr: Py<PyAny>,
    pub task_repr_info: Py<PyAny>,
    pub task_get_stack: Py<PyAny>,
    pub task_print_stack: Py<PyAny>,
    pub handle_repr_info: Py<PyAny>,
    pub timer_repr_info: Py<PyAny>,
    pub enter_task: Py<PyAny>,
    pub leave_task: Py<PyAny>,
    pub register_task: Py<PyAny>,
    pub iscoroutine: Py<PyAny>,
    pub get_event_loop: Py<PyAny>,
    pub extract_stack: Py<PyAny>,
    pub format_callback_source: Py<PyAny>,
    pub isgenerator: Py<PyAny>,
    pub generic_alias: Py<PyAny>,
    pub logger: Py<PyAny>,
    pub buffered_protocol: Py<PyAny>,
}

static IMPORTS: PyOnceLock<Imports> = PyOnceLock::new();

fn attr(py: Python<'_>, module: &str, path: &str) -> PyResult<Py<PyAny>> {
    let mut obj = py.import(module)?.into_any();
    for part in path.split('.') {
        obj = obj.getattr(part)?;
    }
    Ok(obj.unbind())
}

pub fn imports(py: Python<'_>) -> PyResult<&'static Imports> {
    IMPORTS.get_or_try_init(py, || {
        Ok(Imports {
            cancelled_error: attr(py, "asyncio.exceptions", "CancelledError")?,
            invalid_state_error: attr(py, "asyncio.exceptions", "InvalidStateError")?,
            aio_future: attr(py, "asyncio.futures", "Future")?,
            aio_task: attr(py, "asyncio.tasks", "Task")?,
            aio_handle: attr(py, "asyncio.events", "Handle")?,
            aio_timer_handle: attr(py, "asyncio.events", "TimerHandle")?,
            future_repr: attr(py, "asyncio.base_futures", "_future_repr")?,
            future_repr_info: attr(py, "asyncio.base_futures", "_future_repr_info")?,
            task_repr: attr(py, "asyncio.base_tasks", "_task_repr")?,
            task_repr_info: attr(py, "asyncio.base_tasks", "_task_repr_info")?,
            task_get_stack: attr(py, "asyncio.base_tasks", "_task_get_stack")?,
            task_print_stack: attr(py, "asyncio.base_tasks", "_task_print_stack")?,
            handle_repr_info: attr(py, "asyncio.events", "Handle._repr_info")?,
            timer_repr_info: attr(py, "asyncio.events", "TimerHandle._repr_info")?,
            enter_task: attr(py, "asyncio.tasks", "_enter_task")?,
            leave_task: attr(py, "asyncio.tasks", "_leave_task")?,
            register_task: attr(py, "asyncio.tasks", "_register_task")?,
            iscoroutine: attr(py, "asyncio.coroutines", "iscoroutine")?,
            get_event_loop: attr(py, "asyncio.events", "_get_event_loop")?,
            extract_stack: attr(py, "asyncio.format_helpers", "extract_stack")?,
            format_callback_source: attr(py, "asyncio.format_helpers", "_format_callback_source")?,
            isgenerator: attr(py, "inspect", "isgenerator")?,
            generic_alias: attr(py, "types", "GenericAlias")?,
            logger: attr(py, "asyncio.log", "logger")?,
            buffered_protocol: attr(py, "asyncio.protocols", "BufferedProtocol")?,
        })
    })
}

/// `contextvars.copy_context()`.
pub fn copy_context(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    // SAFETY: called with the GIL held (we have `py`); returns a new reference or NULL with an error set.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent()) }
}

/// Runs `f` with `ctx` as the current context (`ctx.run(f)`), like asyncio's
/// `Handle._run`. Entering fails, as `Context.run` does, if `ctx` is already
/// entered in this thread.
pub fn in_context<'py, R>(ctx: &Bound<'py, PyAny>, f: impl FnOnce() -> PyResult<R>) -> PyResult<R> {
    let py = ctx.py();
    // SAFETY: ctx is a live object (borrowed for the call) and we hold the GIL.
    // PyContext_Enter type-checks its argument and sets an exception on failure.
    if unsafe { ffi::PyContext_Enter(ctx.as_ptr()) } < 0 {
        return Err(PyErr::fetch(py));
    }
    let result = f();
    // SAFETY: we entered exactly this context above, in this thread, and every
    // nested enter made by `f` was exited by the time it returned.
    if unsafe { ffi::PyContext_Exit(ctx.as_ptr()) } < 0 {
        let exit_err = PyErr::fetch(py);
        return result.and(Err(exit_err));
    }
    result
}

/// `callable(*args)`, through vectorcall (no `PyObject_Call` tuple path:
/// the tuple's items are passed as the argument array).
#[inline]
pub fn call_tuple<'py>(
    callable: &Bound<'py, PyAny>,
    args: &Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = callable.py();
    let t = args.as_ptr().cast::<ffi::PyTupleObject>();
    // SAFETY: `args` is a live tuple (its items are borrowed for the call,
    // which does not outlive it); `callable` is live; GIL held. A tuple's
    // items are stored inline after its header (`ob_item`).
    unsafe {
        let n = ffi::PyTuple_GET_SIZE(args.as_ptr());
        let items = (*t).ob_item.as_ptr();
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyObject_Vectorcall(callable.as_ptr(), items, n as usize, std::ptr::null_mut()),
        )
    }
}

/// `()`: the empty tuple, from a cache (`PyTuple_New(0)` is a call).
#[inline]
pub fn empty_tuple(py: Python<'_>) -> Bound<'_, PyTuple> {
    static EMPTY: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();
    EMPTY
        .get_or_init(py, || PyTuple::empty(py).unbind())
        .bind(py)
        .clone()
}

/// `loop.call_soon(callback, *args, context=ctx)` on an arbitrary loop.
pub fn foreign_call_soon<'py>(
    lp: &Bound<'py, PyAny>,
    callback: Bound<'py, PyAny>,
    arg: Option<Bound<'py, PyAny>>,
    ctx: &Bound<'py, PyAny>,
) -> PyResult<()> {
    let py = lp.py();
    let kwargs = PyDict::new(py);
    kwargs.set_item(intern!(py, "context"), ctx)?;
    let args = match arg {
        Some(a) => PyTuple::new(py, [callback, a])?,
        None => PyTuple::new(py, [callback])?,
    };
    lp.call_method(intern!(py, "call_soon"), args, Some(&kwargs))?;
    Ok(())
}

/// `format_helpers.extract_stack(sys._getframe(depth))` for debug-mode
/// source tracebacks.
pub fn extract_stack(py: Python<'_>) -> PyResult<Py<PyAny>> {
    let sys = py.import("sys")?;
    let frame = sys.call_method1(intern!(py, "_getframe"), (0,))?;
    Ok(imports(py)?
        .extract_stack
        .bind(py)
        .call1((frame,))?
        .unbind())
}

/// Runs `f` attached to the interpreter from a destructor: by attaching
/// (cheap when this thread holds the GIL already), or, during interpreter
/// shutdown when PyO3 refuses to attach, directly if this thread holds the
/// GIL; skipped otherwise.
pub fn with_gil(f: impl FnOnce(Python<'_>)) {
    let mut f = Some(f);
    if Python::try_attach(|py| (f.take().expect("called once"))(py)).is_some() {
        return;
    }
    // SAFETY: PyGILState_Check only reads the thread state.
    if unsafe { ffi::PyGILState_Check() } == 1 {
        if let Some(f) = f.take() {
            // SAFETY: this thread holds the GIL.
            f(unsafe { Python::assume_attached() });
        }
    }
}
