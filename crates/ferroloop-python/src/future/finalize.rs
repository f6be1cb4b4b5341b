//! What the patched slots of Future and Task (`crate::slots`) do for a
//! future, through [`FinalizeHooks`]: the "Future exception was never
//! retrieved" / "Task was destroyed but it is pending!" reports asyncio makes
//! from `__del__`, and the second half of `tp_clear`. Also pinning: a task
//! held by the loop's ready queue is out of the collector's lists
//! (`crate::gc`).
//!
//! ## Invariants
//! - The hooks run inside `tp_dealloc`/`tp_finalize`/`tp_clear`: they only
//!   try to borrow (a failed borrow means "do nothing" or "assume needed").
//! - A pending task's adopted coroutine is finalized when the task is, as
//!   the collector does for asyncio's tasks.
//! - A task is pinned while `queued` > 0 ([`pin_task`], [`unpin_task`]);
//!   unpinning settles its coroutine's adoption.

use pyo3::prelude::*;
use pyo3::{intern, PyTypeInfo};

use crate::gc::Adopted;
use crate::slots::{self, FinalizeHooks};

use super::task::Task;
use super::{Future, State};

/// Installs the finalizing `tp_dealloc`/`tp_finalize` and the two-step
/// `tp_clear` on Future and Task.
pub(crate) fn install(py: Python<'_>) -> PyResult<()> {
    // SAFETY: our own Future and Task heap types (a Task is a Future),
    // fully created; module init, before any instance or subclass exists.
    unsafe {
        slots::install_finalizers::<Future>(&Future::type_object(py), &Task::type_object(py));
    }
    Ok(())
}

impl FinalizeHooks for Future {
    fn needs_finalizer(obj: &Bound<'_, Self>) -> bool {
        needs_finalizer(obj)
    }

    fn finalize_report(obj: &Bound<'_, Self>) -> PyResult<()> {
        finalize_report(obj)
    }

    fn clear_refs(obj: &Bound<'_, Self>) {
        clear_task_refs(obj)
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
fn clear_task_refs(obj: &Bound<'_, Future>) {
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
fn needs_finalizer(obj: &Bound<'_, Future>) -> bool {
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
fn finalize_report(obj: &Bound<'_, Future>) -> PyResult<()> {
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
