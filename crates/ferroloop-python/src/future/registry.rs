//! asyncio's current-task and all-tasks bookkeeping for native tasks
//! ([`Registry`]): what `asyncio.current_task()` and `asyncio.all_tasks()`
//! read, kept the way asyncio's own (C or Python) tasks keep it, beside the
//! task code that uses it (`super::task`, `super::step`).
//!
//! ## Invariants
//! - The registry is looked up once per interpreter; the containers it holds
//!   are asyncio's own, shared with asyncio's Python and C code.
//! - A task is current between [`Registry::enter`] and [`Registry::leave`]
//!   around each of its steps, with asyncio's errors when another task is
//!   current.
//! - A native task registered through the `WeakSet`'s data (3.11) removes its
//!   entry when its state is dropped (`super::task::TaskFields`'s `Drop`).

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;
use pyo3::{ffi, intern};

use crate::aio::imports;

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
        // A missing key yields the default, a new reference: the dict itself
        // serves as the sentinel (a dict value that is the dict itself is not
        // a task either).
        let sentinel = d.as_ptr();
        // SAFETY: GIL held; live dict and key; `sentinel` is a live object.
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
