//! Shared helpers: the cache of asyncio objects the binding calls into, and
//! running a callable inside a `contextvars.Context`.

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
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
}

static IMPORTS: PyOnceLock<Imports> = PyOnceLock::new();
static REGISTRY: PyOnceLock<Registry> = PyOnceLock::new();

/// asyncio's task bookkeeping (`current_task()`, `all_tasks()`), done with
/// direct container operations where the interpreter version allows it and
/// with asyncio's own functions otherwise:
/// - `_current_tasks` is a plain dict shared with the C accelerator on
///   3.11–3.13 (3.14 moved it into the thread state: call the functions).
/// - `_all_tasks` is a `WeakSet` on 3.11 (3.12 keeps native tasks elsewhere:
///   call `_register_task`). `WeakSet.add` stores `ref(task, set._remove)`
///   in its `data` set; the callback, a Python function, then runs when the
///   task dies. A native task instead stores a plain `ref(task)` (no
///   callback, so it references nothing and stays out of the cyclic GC) and
///   takes it out of `data` itself when it is deallocated, deferring to
///   `_pending_removals` while the set is being iterated, as `_remove` does.
pub struct Registry {
    current: Option<Py<PyDict>>,
    weak_data: Option<Py<pyo3::types::PySet>>,
    weak_iterating: Option<Py<pyo3::types::PySet>>,
    weak_pending: Option<Py<PyAny>>,
    weak_set: Option<Py<PyAny>>,
}

pub fn registry(py: Python<'_>) -> PyResult<&'static Registry> {
    REGISTRY.get_or_try_init(py, || {
        let tasks = py.import("asyncio.tasks")?;
        let v = py.version_info();
        let current = if (v.major, v.minor) < (3, 14) {
            tasks
                .getattr("_current_tasks")?
                .cast_into::<PyDict>()
                .ok()
                .map(|d| d.unbind())
        } else {
            None
        };
        let (mut weak_data, mut weak_iterating, mut weak_pending, mut weak_set) =
            (None, None, None, None);
        if (v.major, v.minor) == (3, 11) {
            let ws = tasks.getattr("_all_tasks")?;
            if let (Ok(data), Ok(iterating), Ok(pending)) = (
                ws.getattr("data"),
                ws.getattr("_iterating"),
                ws.getattr("_pending_removals"),
            ) {
                if let (Ok(data), Ok(iterating)) = (
                    data.cast_into::<pyo3::types::PySet>(),
                    iterating.cast_into::<pyo3::types::PySet>(),
                ) {
                    weak_data = Some(data.unbind());
                    weak_iterating = Some(iterating.unbind());
                    weak_pending = Some(pending.unbind());
                    weak_set = Some(ws.unbind());
                }
            }
        }
        Ok(Registry {
            current,
            weak_data,
            weak_iterating,
            weak_pending,
            weak_set,
        })
    })
}

impl Registry {
    /// Adds `task` to `all_tasks()`. Returns the reference to hand back to
    /// [`Registry::unregister`] when the task is deallocated, if one is needed.
    pub fn register(&self, task: &Bound<'_, PyAny>) -> PyResult<Option<Py<PyAny>>> {
        let py = task.py();
        if let (Some(data), Some(pending), Some(ws)) =
            (&self.weak_data, &self.weak_pending, &self.weak_set)
        {
            if pending.bind(py).is_truthy()? {
                ws.bind(py).call_method0(intern!(py, "_commit_removals"))?;
            }
            let r = pyo3::types::PyWeakrefReference::new(task)?.into_any();
            // A callback-less weakref references nothing: it cannot be part
            // of a cycle, so the collector need not walk it.
            crate::gc::untrack(&r);
            data.bind(py).add(&r)?;
            return Ok(Some(r.unbind()));
        }
        imports(py)?.register_task.bind(py).call1((task,))?;
        Ok(None)
    }

    /// Takes a dead task's reference out of `_all_tasks` (what the WeakSet's
    /// own callback would have done).
    pub fn unregister(&self, py: Python<'_>, r: Py<PyAny>) -> PyResult<()> {
        if let (Some(data), Some(iterating), Some(pending)) =
            (&self.weak_data, &self.weak_iterating, &self.weak_pending)
        {
            if iterating.bind(py).is_empty() {
                data.bind(py).discard(r)?;
            } else {
                pending.bind(py).call_method1(intern!(py, "append"), (r,))?;
            }
        }
        Ok(())
    }

    /// asyncio's `_enter_task`: one dict lookup (`setdefault`) when no task
    /// is current, as is the rule.
    pub fn enter(&self, lp: &Bound<'_, PyAny>, task: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = lp.py();
        let Some(d) = &self.current else {
            return imports(py)?
                .enter_task
                .bind(py)
                .call1((lp, task))
                .map(|_| ());
        };
        // SAFETY: GIL held, live dict/key/value; SetDefault returns a
        // borrowed reference (the value now stored) or NULL with an error.
        let cur = unsafe { ffi::PyDict_SetDefault(d.as_ptr(), lp.as_ptr(), task.as_ptr()) };
        if cur.is_null() {
            return Err(PyErr::fetch(py));
        }
        if cur == task.as_ptr() {
            return Ok(());
        }
        // SAFETY: `cur` is a live borrowed reference held by the dict.
        let cur = unsafe { Bound::from_borrowed_ptr(py, cur) };
        if !cur.is_none() {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(format!(
                "Cannot enter into task {} while another task {} is being executed.",
                task.repr()?,
                cur.repr()?
            )));
        }
        d.bind(py).set_item(lp, task)
    }

    pub fn leave(&self, lp: &Bound<'_, PyAny>, task: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = lp.py();
        let Some(d) = &self.current else {
            return imports(py)?
                .leave_task
                .bind(py)
                .call1((lp, task))
                .map(|_| ());
        };
        let d = d.bind(py);
        // One lookup: take the entry out; put it back if it is not ours.
        match dict_pop(d, lp)? {
            Some(c) if c.is(task) => Ok(()),
            other => {
                let current = match &other {
                    Some(c) => {
                        d.set_item(lp, c)?;
                        c.repr()?.to_string()
                    }
                    None => "None".to_string(),
                };
                Err(pyo3::exceptions::PyRuntimeError::new_err(format!(
                    "Leaving task {} does not match the current task {}.",
                    task.repr()?,
                    current
                )))
            }
        }
    }
}

#[cfg(not(Py_3_13))]
extern "C" {
    /// 3.11/3.12 (`cpython/dictobject.h`): removes `key` and returns its
    /// value (new reference), or `deflt` (new reference) when missing.
    fn _PyDict_Pop(
        d: *mut ffi::PyObject,
        key: *mut ffi::PyObject,
        deflt: *mut ffi::PyObject,
    ) -> *mut ffi::PyObject;
}

#[cfg(Py_3_13)]
extern "C" {
    /// 3.13+: 1 and `*result` (new reference) if removed, 0 if missing.
    fn PyDict_Pop(
        d: *mut ffi::PyObject,
        key: *mut ffi::PyObject,
        result: *mut *mut ffi::PyObject,
    ) -> std::ffi::c_int;
}

/// `d.pop(key, None)` in one dict lookup; `None` when `key` was missing.
fn dict_pop<'py>(
    d: &Bound<'py, PyDict>,
    key: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = d.py();
    #[cfg(not(Py_3_13))]
    {
        // SAFETY: GIL held; live dict and key. A missing key yields the
        // default, a new reference: the dict itself serves as the sentinel
        // (a dict value that is the dict itself is not a task either).
        let sentinel = d.as_ptr();
        let v = unsafe { _PyDict_Pop(d.as_ptr(), key.as_ptr(), sentinel) };
        if v.is_null() {
            return Err(PyErr::fetch(py));
        }
        // SAFETY: `v` is a new reference.
        let v = unsafe { Bound::from_owned_ptr(py, v) };
        Ok(if v.as_ptr() == sentinel {
            None
        } else {
            Some(v)
        })
    }
    #[cfg(Py_3_13)]
    {
        let mut v = std::ptr::null_mut();
        // SAFETY: GIL held; live dict and key; `v` receives a new reference.
        let r = unsafe { PyDict_Pop(d.as_ptr(), key.as_ptr(), &mut v) };
        if r < 0 {
            return Err(PyErr::fetch(py));
        }
        // SAFETY: on 1, `v` is a new reference.
        Ok((r == 1).then(|| unsafe { Bound::from_owned_ptr(py, v) }))
    }
}

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
        })
    })
}

/// Builds an exception instance of the cached class `cls` with `msg`.
pub fn new_exc<'py>(py: Python<'py>, cls: &Py<PyAny>, msg: impl IntoPyObject<'py>) -> PyErr {
    match cls.bind(py).call1((msg,)) {
        Ok(v) => PyErr::from_value(v),
        Err(e) => e,
    }
}

pub fn invalid_state(py: Python<'_>, msg: String) -> PyErr {
    match imports(py) {
        Ok(i) => new_exc(py, &i.invalid_state_error, msg),
        Err(e) => e,
    }
}

/// True for the two exceptions asyncio never routes to the exception handler.
pub fn is_exit_exception(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py)
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

/// Replaces the function in a type slot (`&raw mut (*tp).tp_new`, ...) with
/// `new`, keeping the original in `store` for the replacement to forward to.
/// False, and nothing changed, if the slot is empty or was replaced before.
/// The caller calls `PyType_Modified` afterwards.
///
/// # Safety
/// `slot` points into one of our own heap types, fully created, during
/// module init with the GIL held, before instances or subclasses exist.
pub unsafe fn replace_slot<F: Copy>(
    slot: *mut Option<F>,
    store: &std::sync::OnceLock<F>,
    new: F,
) -> bool {
    // SAFETY: per the contract, `slot` is valid and nothing else uses it.
    unsafe {
        match *slot {
            Some(orig) if store.set(orig).is_ok() => {
                *slot = Some(new);
                true
            }
            _ => false,
        }
    }
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
