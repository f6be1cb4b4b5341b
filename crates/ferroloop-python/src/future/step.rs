//! Running a task: asyncio's `Task.__step` (send into the coroutine, act on
//! what it yields or returns) and `Task.__wakeup`; the callables that run
//! them on foreign loops and in reprs ([`TaskStepMethWrapper`],
//! [`TaskWakeup`]); and queueing lightweight items on ferroloop's loop,
//! which in debug mode become Handles made of those callables
//! ([`push_ready`], [`item_to_handle`]).
//!
//! ## Invariants
//! - Each step runs with the task current (`asyncio.current_task()`,
//!   entered and left around it by [`task_step`]) and in the task's context
//!   (entered by whoever runs the step: the loop's driver, a Handle, or a
//!   foreign loop given the context).
//! - Every `Ready::Step`/`Ready::Wakeup` item is made in this package and
//!   holds a native task (a [`Future`] whose task state is set): the casts
//!   of these items' `task` rely on it.
//! - In debug mode every item queued on ferroloop's loop is a real `Handle`
//!   (source tracebacks, slow-callback warnings name it).

use std::sync::atomic::Ordering;

use pyo3::exceptions::PyStopIteration;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use pyo3::{ffi, intern, PyTraverseError, PyVisit};

use crate::aio::{extract_stack, imports};
use crate::errors::{invalid_state, is_exit_exception};
use crate::gc::Adopted;
use crate::handle::Handle;
use crate::loop_state::{Loop, Ready};

use super::callbacks::{fut_add_callback, DoneCallback};
use super::registry::registry;
use super::task::{schedule_step, task_cancel};
use super::{
    fut_cancel, fut_result, fut_set_exception, fut_set_result, make_cancelled_error, native_exact,
    repr_of, runtime, Future, State, ADOPT_COROUTINES,
};

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
                    ffi::PySendResult::PYGEN_NEXT => {
                        // SAFETY: on PYGEN_NEXT `out` is a new, non-NULL reference.
                        Outcome::Yielded(unsafe { Bound::from_owned_ptr(py, out) })
                    }
                    ffi::PySendResult::PYGEN_RETURN => {
                        // SAFETY: on PYGEN_RETURN `out` is a new, non-NULL reference.
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
pub(super) fn cancel_other(fut: &Bound<'_, PyAny>, msg: Option<Py<PyAny>>) -> PyResult<bool> {
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
// Lightweight items on ferroloop's loop
// ---------------------------------------------------------------------------

/// Queues `item` on ferroloop's loop `lp` ([`Loop::push_ready`]), calling
/// `on_queued` (which must run no Python code) if the item itself is queued;
/// in debug mode queues the `Handle` that [`item_to_handle`] makes of it.
pub(crate) fn push_ready(
    lp: &Bound<'_, Loop>,
    item: Ready,
    on_queued: impl FnOnce(),
) -> PyResult<()> {
    let Some(item) = Loop::push_ready(lp, item, on_queued)? else {
        return Ok(());
    };
    let h = item_to_handle(lp, item)?;
    lp.get().st().core.ready.push(Ready::Handle(h));
    Ok(())
}

/// Wraps a lightweight item into an asyncio-style `Handle` (debug mode
/// and error reports).
pub(crate) fn item_to_handle(slf: &Bound<'_, Loop>, item: Ready) -> PyResult<Py<Handle>> {
    let py = slf.py();
    let lp = slf.clone().into_any().unbind();
    let debug = slf.get().st().debug;
    let tb = if debug {
        Some(extract_stack(py)?)
    } else {
        None
    };
    let (cb, args, ctx): (Py<PyAny>, Py<PyTuple>, Adopted) = match item {
        Ready::Handle(h) => return Ok(h),
        Ready::FutCallback { func, fut, ctx } => (func, PyTuple::new(py, [fut])?.unbind(), ctx),
        Ready::Step { task, exc } => {
            // SAFETY: Step items hold a native task (module docs).
            let task = unsafe { task.into_bound(py).cast_into_unchecked::<Future>() };
            let ctx = Adopted::shared(task_context(&task));
            (
                Py::new(
                    py,
                    TaskStepMethWrapper {
                        task: task.unbind(),
                        exc,
                    },
                )?
                .into_any(),
                PyTuple::empty(py).unbind(),
                ctx,
            )
        }
        Ready::Wakeup { task, fut } => {
            // SAFETY: Wakeup items hold a native task (module docs).
            let task = unsafe { task.into_bound(py).cast_into_unchecked::<Future>() };
            let ctx = Adopted::shared(task_context(&task));
            (
                Py::new(
                    py,
                    TaskWakeup {
                        task: task.unbind(),
                    },
                )?
                .into_any(),
                PyTuple::new(py, [fut])?.unbind(),
                ctx,
            )
        }
        Ready::Stream { stream, write } => {
            let cb = crate::io::datagram::ready_callback(stream.bind(py), write)?.unbind();
            // The transport's own context (a copy of the one its reader or
            // writer was added in), as in non-debug mode.
            let ctx = stream.bind(py).call_method1("_context", (write,))?;
            let ctx = if ctx.is_none() {
                Adopted::adopt_new_context(crate::aio::copy_context(py)?)
            } else {
                Adopted::shared(ctx.unbind())
            };
            (cb, PyTuple::empty(py).unbind(), ctx)
        }
        Ready::Sock { watch, write } => {
            let cb = watch.bind(py).getattr("_retry")?.unbind();
            let args = PyTuple::new(
                py,
                [
                    slf.clone().into_any(),
                    pyo3::types::PyBool::new(py, write).to_owned().into_any(),
                ],
            )?;
            let ctx = Adopted::adopt_new_context(crate::aio::copy_context(py)?);
            (cb, args.unbind(), ctx)
        }
    };
    Py::new(py, Handle::new(cb, args, lp, ctx, tb))
}

/// The context a task's steps run in.
pub(crate) fn task_context(task: &Bound<'_, Future>) -> Py<PyAny> {
    task.borrow()
        .task
        .as_ref()
        .map(|t| t.context.inner().clone_ref(task.py()))
        .expect("Ready::Step/Wakeup hold tasks")
}
