//! Tasks: the task-only state of a [`Future`] ([`TaskFields`]), the Python
//! class `Task`, creating and starting a task (`loop.create_task`,
//! `Task(...)`), scheduling its steps, and `Task.cancel`.
//!
//! ## Invariants
//! - A task is started (first step scheduled, registered in `all_tasks()`)
//!   exactly once.
//! - While a ready-queue item holds the task it is pinned (`queued` > 0, see
//!   `super::finalize::pin_task`); a new task's coroutine is adopted
//!   (`crate::gc`) from creation to its first step only while pinned.
//! - Task state is reached through a borrow of the base [`Future`]; as
//!   there, no borrow is held while Python code runs.

use std::sync::atomic::{AtomicU64, Ordering};

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};

use crate::aio::{copy_context, foreign_call_soon, imports, in_context, with_gil};
use crate::gc::Adopted;
use crate::loop_state::{loop_debug, Loop, Ready};
use crate::slots;

use super::finalize::pin_task;
use super::registry::registry;
use super::step::{cancel_other, push_ready, task_step, task_wakeup, TaskStepMethWrapper};
use super::{opt_clone, repr_of, runtime, Future, State, ADOPT_COROUTINES};

/// Task-only state.
pub(crate) struct TaskFields {
    /// Adopted once only the task holds it (see `crate::gc`).
    pub coro: Adopted,
    /// Adopted when it is the copy made for this task.
    pub context: Adopted,
    pub(super) name: Option<Py<PyAny>>,
    pub(super) seq: u64,
    pub must_cancel: bool,
    pub fut_waiter: Option<Py<PyAny>>,
    pub(super) num_cancels_requested: i64,
    pub(super) log_destroy_pending: bool,
    pub(super) started: bool,
    /// How many items of the loop's ready queue hold this task; while
    /// non-zero the task is pinned (out of the collector's lists).
    pub(super) queued: u32,
    /// This task's entry in `asyncio.tasks._all_tasks`, removed on drop.
    pub(super) registered: Option<Py<PyAny>>,
}

impl Drop for TaskFields {
    fn drop(&mut self) {
        if let Some(r) = self.registered.take() {
            with_gil(|py| {
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

/// The Python class `Task`: a [`Future`] whose `task` field is set.
#[pyclass(module = "ferroloop._ferroloop", name = "Task", extends = Future, subclass)]
pub struct Task;

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
        _ => Adopted::adopt_new_context(copy_context(py)?),
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
    // SAFETY: `task` was just created, and the GIL is held.
    unsafe { slots::shed_eager_dict(task.as_ptr()) };
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
        // Pinning touches only the task (no Python code runs).
        return push_ready(
            // SAFETY: `native` means `lp` is an instance of Loop.
            unsafe { lp.cast_unchecked::<Loop>() },
            Ready::Step {
                task: task.clone().into_any().unbind(),
                exc,
            },
            || pin_task(task),
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
