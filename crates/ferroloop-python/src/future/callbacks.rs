//! Done callbacks of a future: how they are stored ([`DoneCallback`], inline
//! for the common single callback) and how completion hands them to the
//! loop ([`schedule_callbacks`]): on ferroloop's loop as `Ready` items pushed
//! straight into the ready queue, on any other loop through
//! `loop.call_soon`.
//!
//! ## Invariants
//! - The callback list is moved out of the future before any callback is
//!   scheduled (no borrow is held while scheduling runs code).
//! - A callback added to a done future is scheduled at once, as asyncio's
//!   `add_done_callback` does.

use pyo3::prelude::*;

use crate::aio::foreign_call_soon;
use crate::gc::Adopted;
use crate::loop_state::{Loop, Ready};

use super::step::{push_ready, TaskWakeup};
use super::{check_initialized, Future, State};

/// A registered done callback.
pub(crate) enum DoneCallback {
    /// `fn(fut)` run in `ctx`.
    Py { func: Py<PyAny>, ctx: Adopted },
    /// Wake the native task `task` (runs in the task's context).
    Wakeup { task: Py<Future> },
}

/// Done callbacks; one, stored inline, is by far the common case.
pub(super) type Callbacks = smallvec::SmallVec<[DoneCallback; 1]>;

/// Hands every registered callback to the loop (asyncio's
/// `__schedule_callbacks`) and clears the list.
pub(super) fn schedule_callbacks(fut: &Bound<'_, Future>) -> PyResult<()> {
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
                task: task.into_any(),
                fut: fut.clone().into_any().unbind(),
            },
        };
        return push_ready(l, item, || {});
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
