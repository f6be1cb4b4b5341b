//! Finalizers for native futures: asyncio logs "Future exception was never
//! retrieved" and "Task was destroyed but it is pending!" from `__del__`.
//!
//! PyO3 has no `__del__`, so we do what CPython's own `_asyncio` module does
//! for its C Future: a `tp_finalize` slot, and a `tp_dealloc` that calls
//! `PyObject_CallFinalizerFromDealloc` before the real deallocation. The
//! finalizer runs with the object still alive (PEP 442), so the report can
//! pass the future itself to the exception handler, as asyncio does.

use std::sync::OnceLock;

use pyo3::prelude::*;
use pyo3::{ffi, PyTypeInfo};

use crate::future::{clear_task_refs, finalize_report, needs_finalizer, Future, Task};
use crate::util::replace_slot;

type Dealloc = unsafe extern "C" fn(*mut ffi::PyObject);
type Clear = unsafe extern "C" fn(*mut ffi::PyObject) -> std::ffi::c_int;

static FUTURE_DEALLOC: OnceLock<Dealloc> = OnceLock::new();
static TASK_DEALLOC: OnceLock<Dealloc> = OnceLock::new();
static FUTURE_CLEAR: OnceLock<Clear> = OnceLock::new();
static TASK_CLEAR: OnceLock<Clear> = OnceLock::new();

unsafe extern "C" fn finalize(obj: *mut ffi::PyObject) {
    // tp_finalize is called with the GIL held. `attach` (not
    // `assume_attached`) also tells PyO3 so: otherwise reference drops in
    // here would be deferred, and the GC would see the object resurrected.
    // During interpreter shutdown PyO3 refuses to attach (and a panic here
    // could not unwind): skip the report, as a failing `__del__` would.
    // SAFETY: Py_IsInitialized only reads interpreter state.
    if unsafe { ffi::Py_IsInitialized() } == 0 {
        return;
    }
    let _ = std::panic::catch_unwind(|| Python::attach(|py| finalize_attached(py, obj)));
}

fn finalize_attached(py: Python<'_>, obj: *mut ffi::PyObject) {
    // SAFETY: `obj` is alive (refcount temporarily > 0) during tp_finalize.
    let any = unsafe { Bound::from_borrowed_ptr(py, obj) };
    let Ok(fut) = any.cast::<Future>() else {
        return;
    };
    // Most futures die done and retrieved: nothing to do, nothing to save.
    if !needs_finalizer(fut) {
        return;
    }
    // Keep any exception being raised around us intact (as `__del__` does).
    let saved = PyErr::take(py);
    if let Err(e) = finalize_report(fut) {
        e.write_unraisable(py, Some(&any));
    }
    if let Some(e) = saved {
        e.restore(py);
    }
}

/// Sets the reference count of an object of a (non free-threaded) GIL
/// build, where it is the object's first field, as CPython's own
/// `PyObject_CallFinalizerFromDealloc` does to revive an object briefly.
///
/// # Safety
/// `obj` must be live or being deallocated by the caller, GIL held.
unsafe fn set_refcnt(obj: *mut ffi::PyObject, n: ffi::Py_ssize_t) {
    // SAFETY: forwarded; `ob_refcnt` is at offset 0 of PyObject on GIL builds.
    unsafe { *obj.cast::<ffi::Py_ssize_t>() = n };
}

unsafe fn dealloc_with(obj: *mut ffi::PyObject, orig: &OnceLock<Dealloc>) {
    // SAFETY: called as tp_dealloc with refcount 0 and the GIL held.
    // Most futures die done and retrieved, with nothing to report: look at
    // the Rust state (the object revived at refcount 1, since a borrow takes
    // a reference) and skip the finalizer call when it would do nothing.
    let needed = unsafe {
        set_refcnt(obj, 1);
        let py = Python::assume_attached();
        let needed = pyo3::Borrowed::from_ptr(py, obj)
            .cast::<Future>()
            .map(|f| needs_finalizer(&f))
            .unwrap_or(true);
        debug_assert_eq!(ffi::Py_REFCNT(obj), 1);
        set_refcnt(obj, 0);
        needed
    };
    // SAFETY: as above; the finalizer may resurrect the object, in which
    // case we must stop here.
    if needed && unsafe { ffi::PyObject_CallFinalizerFromDealloc(obj) } < 0 {
        return;
    }
    let f = orig.get().expect("installed before any instance exists");
    // SAFETY: the original PyO3 deallocator of this exact type.
    unsafe { f(obj) }
}

unsafe extern "C" fn future_dealloc(obj: *mut ffi::PyObject) {
    // SAFETY: forwarded tp_dealloc contract.
    unsafe { dealloc_with(obj, &FUTURE_DEALLOC) }
}

unsafe extern "C" fn task_dealloc(obj: *mut ffi::PyObject) {
    // SAFETY: forwarded tp_dealloc contract.
    unsafe { dealloc_with(obj, &TASK_DEALLOC) }
}

unsafe fn clear_with(obj: *mut ffi::PyObject, orig: &OnceLock<Clear>) -> std::ffi::c_int {
    // SAFETY: called as tp_clear (GIL held, object alive); first PyO3's
    // clear (`__clear__`, under a borrow), then the task's coroutine and
    // context without one.
    let rc = match orig.get() {
        Some(f) => unsafe { f(obj) },
        None => 0,
    };
    // `with_gil`, not `attach`: the collector also runs during interpreter
    // shutdown, when PyO3 refuses to attach (the GIL is held all the same).
    let _ = std::panic::catch_unwind(|| {
        crate::util::with_gil(|py| {
            // SAFETY: `obj` is alive for the duration of tp_clear.
            let any = unsafe { Bound::from_borrowed_ptr(py, obj) };
            if let Ok(fut) = any.cast::<Future>() {
                clear_task_refs(fut);
            }
        })
    });
    rc
}

unsafe extern "C" fn future_clear(obj: *mut ffi::PyObject) -> std::ffi::c_int {
    // SAFETY: forwarded tp_clear contract.
    unsafe { clear_with(obj, &FUTURE_CLEAR) }
}

unsafe extern "C" fn task_clear(obj: *mut ffi::PyObject) -> std::ffi::c_int {
    // SAFETY: forwarded tp_clear contract.
    unsafe { clear_with(obj, &TASK_CLEAR) }
}

fn patch_clear(tp: *mut ffi::PyTypeObject, store: &OnceLock<Clear>, replacement: Clear) {
    // SAFETY: our own heap type, fully created, during module init with the
    // GIL held and before any instance exists (`replace_slot`'s contract).
    unsafe {
        if replace_slot(&raw mut (*tp).tp_clear, store, replacement) {
            ffi::PyType_Modified(tp);
        }
    }
}

fn patch(tp: *mut ffi::PyTypeObject, store: &OnceLock<Dealloc>, replacement: Dealloc) {
    // SAFETY: as in `patch_clear`. Slots of heap types are writable;
    // PyType_Modified invalidates caches.
    unsafe {
        if replace_slot(&raw mut (*tp).tp_dealloc, store, replacement) {
            (*tp).tp_finalize = Some(finalize);
            // Python subclasses inherit tp_finalize only with this flag
            // (their subtype_dealloc then runs it).
            (*tp).tp_flags |= ffi::Py_TPFLAGS_HAVE_FINALIZE;
            ffi::PyType_Modified(tp);
        }
    }
}

/// Gives a Python subclass of Future/Task our finalizer. CPython does not
/// copy `tp_finalize` into subclasses that lack the (legacy) finalize flag,
/// and their `subtype_dealloc` only calls the slot of their own type.
pub fn adopt_subclass(cls: &Bound<'_, pyo3::types::PyType>) {
    let tp = cls.as_type_ptr();
    // SAFETY: `cls` is a live, fully created heap type (called from
    // `__init_subclass__`, with the GIL); a type with its own `__del__`
    // keeps it (slot_tp_finalize), so only an empty slot is filled.
    unsafe {
        if (*tp).tp_finalize.is_none() {
            (*tp).tp_finalize = Some(finalize);
            (*tp).tp_flags |= ffi::Py_TPFLAGS_HAVE_FINALIZE;
            ffi::PyType_Modified(tp);
        }
    }
}

pub fn install(py: Python<'_>) -> PyResult<()> {
    patch(
        Future::type_object(py).as_type_ptr(),
        &FUTURE_DEALLOC,
        future_dealloc,
    );
    patch(
        Task::type_object(py).as_type_ptr(),
        &TASK_DEALLOC,
        task_dealloc,
    );
    patch_clear(
        Future::type_object(py).as_type_ptr(),
        &FUTURE_CLEAR,
        future_clear,
    );
    patch_clear(Task::type_object(py).as_type_ptr(), &TASK_CLEAR, task_clear);
    Ok(())
}
