//! Every patch of a CPython type slot, in one place.
//!
//! PyO3 fills the slots of our classes; a few need what PyO3 does not offer
//! and are replaced at module init:
//! - `tp_new` of Future and Task: PyO3's, then [`shed_eager_dict`] ("the
//!   dict slot": CPython 3.11/3.12 give every new object an empty instance
//!   dict, which asyncio's C Future creates lazily).
//! - `tp_dealloc`, `tp_clear` and `tp_finalize` of Future and Task:
//!   asyncio logs "Future exception was never retrieved" and "Task was
//!   destroyed but it is pending!" from `__del__`. PyO3 has no `__del__`, so
//!   we do what CPython's own `_asyncio` module does for its C Future: a
//!   `tp_finalize` slot, and a `tp_dealloc` that calls
//!   `PyObject_CallFinalizerFromDealloc` before the real deallocation. The
//!   finalizer runs with the object still alive (PEP 442), so the report can
//!   pass the future itself to the exception handler, as asyncio does.
//! - `am_send`, `tp_alloc` and `tp_free` of FutureIter: `await fut` finishes
//!   without creating a StopIteration, and FutureIter memory is recycled
//!   (CPython's C FutureIter has the same slot and free list).
//!
//! This module knows how slots are replaced, not what a future does in them:
//! the trampolines are generic over [`FinalizeHooks`] and [`AmSend`], which
//! the future module implements, and are monomorphized when it installs them
//! (direct calls, no lookup at run time).
//!
//! ## Invariants
//! - Slots are replaced only on our own heap types, fully created, during
//!   module init with the GIL held, before any instance or subclass exists
//!   (subclasses copy `tp_new`), and `PyType_Modified` follows every change.
//!   The one later patch is [`adopt_subclass`]: it fills the empty
//!   `tp_finalize` of a Python subclass of Future/Task as it is created.
//! - The replaced `tp_new`, `tp_dealloc` and `tp_clear` forward to PyO3's
//!   functions, kept in statics set once ([`replace_slot`]).
//! - The trampolines run with the GIL held (CPython calls them); those of
//!   `tp_finalize`, `tp_clear` and `am_send` run their Rust part under
//!   `catch_unwind`, so a panic there does not unwind into CPython.
//! - The Future/Task `tp_dealloc` writes the reference count directly
//!   (`ob_refcnt`, the first field of an object on GIL builds), as CPython's
//!   `PyObject_CallFinalizerFromDealloc` does: free-threaded CPython, where
//!   that field is `ob_tid`, is refused at compile time.

#[cfg(Py_GIL_DISABLED)]
compile_error!(
    "ferroloop does not support free-threaded CPython yet: the Future/Task tp_dealloc \
     (set_refcnt in crates/ferroloop-python/src/slots.rs) writes ob_refcnt directly, \
     which is ob_tid on a free-threaded build"
);

use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::OnceLock;

use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::prelude::*;

use crate::gil::GilCell;
use pyo3::types::PyType;
use pyo3::PyTypeCheck;

use crate::aio::with_gil;

/// Replaces the function in a type slot (`&raw mut (*tp).tp_new`, ...) with
/// `new`, keeping the original in `store` for the replacement to forward to.
/// False, and nothing changed, if the slot is empty or was replaced before.
/// The caller calls `PyType_Modified` afterwards.
///
/// # Safety
/// `slot` points into one of our own heap types, fully created, during
/// module init with the GIL held, before instances or subclasses exist.
pub unsafe fn replace_slot<F: Copy>(slot: *mut Option<F>, store: &OnceLock<F>, new: F) -> bool {
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

// ---------------------------------------------------------------------------
// tp_new of Future and Task: the dict slot
// ---------------------------------------------------------------------------

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
///
/// # Safety
/// `obj` is a live object just created (nothing else has seen it yet), and
/// the GIL is held.
pub(crate) unsafe fn shed_eager_dict(obj: *mut ffi::PyObject) {
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
static FUTURE_NEW: OnceLock<NewFunc> = OnceLock::new();
static TASK_NEW: OnceLock<NewFunc> = OnceLock::new();

/// `Future.__new__` / `Task.__new__` from Python (`asyncio.Future()` on a
/// ferroloop loop, subclasses): PyO3's, then [`shed_eager_dict`].
///
/// # Safety
/// The `tp_new` contract: GIL held, `tp` a subtype of the type whose
/// original slot is in `orig`, `args`/`kwds` valid.
unsafe fn new_with(
    orig: &OnceLock<NewFunc>,
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
        // SAFETY: `obj` was just created by the original tp_new.
        unsafe { shed_eager_dict(obj) };
    }
    obj
}

/// `tp_new` of Future.
///
/// # Safety
/// Called by CPython as a `tp_new` slot.
unsafe extern "C" fn future_new(
    tp: *mut ffi::PyTypeObject,
    args: *mut ffi::PyObject,
    kwds: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: forwarded tp_new contract.
    unsafe { new_with(&FUTURE_NEW, tp, args, kwds) }
}

/// `tp_new` of Task.
///
/// # Safety
/// Called by CPython as a `tp_new` slot.
unsafe extern "C" fn task_new(
    tp: *mut ffi::PyTypeObject,
    args: *mut ffi::PyObject,
    kwds: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: forwarded tp_new contract.
    unsafe { new_with(&TASK_NEW, tp, args, kwds) }
}

/// # Safety
/// As [`install_new`], for `tp`.
unsafe fn patch_new(tp: *mut ffi::PyTypeObject, store: &OnceLock<NewFunc>, new: NewFunc) {
    // SAFETY: our own heap type, fully created, during module init with the
    // GIL held and before any subclass exists (subclasses copy tp_new).
    unsafe {
        if replace_slot(&raw mut (*tp).tp_new, store, new) {
            ffi::PyType_Modified(tp);
        }
    }
}

/// Decides whether new futures shed their eager dict (3.11/3.12) and puts
/// [`shed_eager_dict`] behind the `tp_new` of `future` and `task`.
///
/// # Safety
/// `future` and `task` are ferroloop's own `Future` and `Task` heap types,
/// fully created; called once, during module init, before any subclass of
/// them exists.
pub(crate) unsafe fn install_new(future: &Bound<'_, PyType>, task: &Bound<'_, PyType>) {
    let v = future.py().version_info();
    SHED_EAGER_DICT.store((v.major, v.minor) < (3, 13), Ordering::Relaxed);
    // SAFETY: forwarded contract.
    unsafe {
        patch_new(future.as_type_ptr(), &FUTURE_NEW, future_new);
        patch_new(task.as_type_ptr(), &TASK_NEW, task_new);
    }
}

// ---------------------------------------------------------------------------
// tp_dealloc, tp_clear and tp_finalize of Future and Task
// ---------------------------------------------------------------------------

/// What the Future/Task slots ask of the future module. Implemented by the
/// class whose instances they serve (the native Future, base of Task); the
/// trampolines are monomorphized over it at install.
pub(crate) trait FinalizeHooks: PyTypeCheck + Sized {
    /// Whether [`FinalizeHooks::finalize_report`] would do anything for
    /// `obj` (most futures die done and retrieved). Runs inside
    /// `tp_dealloc`, with the object briefly revived: it must not keep a
    /// reference to it.
    fn needs_finalizer(obj: &Bound<'_, Self>) -> bool;
    /// The `__del__` of a native future (its reports); an error is reported
    /// as unraisable.
    fn finalize_report(obj: &Bound<'_, Self>) -> PyResult<()>;
    /// The second half of `tp_clear`, after PyO3's `__clear__`, with no
    /// borrow held.
    fn clear_refs(obj: &Bound<'_, Self>);
}

type Dealloc = unsafe extern "C" fn(*mut ffi::PyObject);
type Clear = unsafe extern "C" fn(*mut ffi::PyObject) -> std::ffi::c_int;

static FUTURE_DEALLOC: OnceLock<Dealloc> = OnceLock::new();
static TASK_DEALLOC: OnceLock<Dealloc> = OnceLock::new();
static FUTURE_CLEAR: OnceLock<Clear> = OnceLock::new();
static TASK_CLEAR: OnceLock<Clear> = OnceLock::new();

/// `tp_finalize` of Future, Task and their Python subclasses.
///
/// # Safety
/// Called by CPython as a `tp_finalize` slot (GIL held, `obj` alive).
unsafe extern "C" fn finalize<H: FinalizeHooks>(obj: *mut ffi::PyObject) {
    // tp_finalize is called with the GIL held. `attach` (not
    // `assume_attached`) also tells PyO3 so: otherwise reference drops in
    // here would be deferred, and the GC would see the object resurrected.
    // During interpreter shutdown PyO3 refuses to attach (and a panic here
    // could not unwind): skip the report, as a failing `__del__` would.
    // SAFETY: Py_IsInitialized only reads interpreter state.
    if unsafe { ffi::Py_IsInitialized() } == 0 {
        return;
    }
    let _ = std::panic::catch_unwind(|| Python::attach(|py| finalize_attached::<H>(py, obj)));
}

fn finalize_attached<H: FinalizeHooks>(py: Python<'_>, obj: *mut ffi::PyObject) {
    // SAFETY: `obj` is alive (refcount temporarily > 0) during tp_finalize.
    let any = unsafe { Bound::from_borrowed_ptr(py, obj) };
    let Ok(fut) = any.cast::<H>() else {
        return;
    };
    // Most futures die done and retrieved: nothing to do, nothing to save.
    if !H::needs_finalizer(fut) {
        return;
    }
    // Keep any exception being raised around us intact (as `__del__` does).
    let saved = PyErr::take(py);
    if let Err(e) = H::finalize_report(fut) {
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

/// Runs the finalizer if it has something to do, then the original
/// deallocator kept in `orig`.
///
/// # Safety
/// The `tp_dealloc` contract (refcount 0, GIL held), for an instance of the
/// type whose original slot is in `orig`.
unsafe fn dealloc_with<H: FinalizeHooks>(obj: *mut ffi::PyObject, orig: &OnceLock<Dealloc>) {
    // SAFETY: called as tp_dealloc with refcount 0 and the GIL held.
    // Most futures die done and retrieved, with nothing to report: look at
    // the Rust state (the object revived at refcount 1, since a borrow takes
    // a reference) and skip the finalizer call when it would do nothing.
    let needed = unsafe {
        set_refcnt(obj, 1);
        let py = Python::assume_attached();
        let needed = pyo3::Borrowed::from_ptr(py, obj)
            .cast::<H>()
            .map(|f| H::needs_finalizer(&f))
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

/// `tp_dealloc` of Future.
///
/// # Safety
/// Called by CPython as a `tp_dealloc` slot.
unsafe extern "C" fn future_dealloc<H: FinalizeHooks>(obj: *mut ffi::PyObject) {
    // SAFETY: forwarded tp_dealloc contract.
    unsafe { dealloc_with::<H>(obj, &FUTURE_DEALLOC) }
}

/// `tp_dealloc` of Task.
///
/// # Safety
/// Called by CPython as a `tp_dealloc` slot.
unsafe extern "C" fn task_dealloc<H: FinalizeHooks>(obj: *mut ffi::PyObject) {
    // SAFETY: forwarded tp_dealloc contract.
    unsafe { dealloc_with::<H>(obj, &TASK_DEALLOC) }
}

/// PyO3's clear (kept in `orig`), then [`FinalizeHooks::clear_refs`].
///
/// # Safety
/// The `tp_clear` contract (GIL held, `obj` alive), for an instance of the
/// type whose original slot is in `orig`.
unsafe fn clear_with<H: FinalizeHooks>(
    obj: *mut ffi::PyObject,
    orig: &OnceLock<Clear>,
) -> std::ffi::c_int {
    // First PyO3's clear (`__clear__`, under a borrow), then the task's
    // coroutine and context without one.
    let rc = match orig.get() {
        // SAFETY: called as tp_clear (GIL held, object alive); the original
        // PyO3 clear of this exact type.
        Some(f) => unsafe { f(obj) },
        None => 0,
    };
    // `with_gil`, not `attach`: the collector also runs during interpreter
    // shutdown, when PyO3 refuses to attach (the GIL is held all the same).
    let _ = std::panic::catch_unwind(|| {
        with_gil(|py| {
            // SAFETY: `obj` is alive for the duration of tp_clear.
            let any = unsafe { Bound::from_borrowed_ptr(py, obj) };
            if let Ok(fut) = any.cast::<H>() {
                H::clear_refs(fut);
            }
        })
    });
    rc
}

/// `tp_clear` of Future.
///
/// # Safety
/// Called by CPython as a `tp_clear` slot.
unsafe extern "C" fn future_clear<H: FinalizeHooks>(obj: *mut ffi::PyObject) -> std::ffi::c_int {
    // SAFETY: forwarded tp_clear contract.
    unsafe { clear_with::<H>(obj, &FUTURE_CLEAR) }
}

/// `tp_clear` of Task.
///
/// # Safety
/// Called by CPython as a `tp_clear` slot.
unsafe extern "C" fn task_clear<H: FinalizeHooks>(obj: *mut ffi::PyObject) -> std::ffi::c_int {
    // SAFETY: forwarded tp_clear contract.
    unsafe { clear_with::<H>(obj, &TASK_CLEAR) }
}

/// # Safety
/// As [`install_finalizers`], for `tp`.
unsafe fn patch_clear(tp: *mut ffi::PyTypeObject, store: &OnceLock<Clear>, replacement: Clear) {
    // SAFETY: our own heap type, fully created, during module init with the
    // GIL held and before any instance exists (`replace_slot`'s contract).
    unsafe {
        if replace_slot(&raw mut (*tp).tp_clear, store, replacement) {
            ffi::PyType_Modified(tp);
        }
    }
}

/// # Safety
/// As [`install_finalizers`], for `tp`.
unsafe fn patch<H: FinalizeHooks>(
    tp: *mut ffi::PyTypeObject,
    store: &OnceLock<Dealloc>,
    replacement: Dealloc,
) {
    // SAFETY: as in `patch_clear`. Slots of heap types are writable;
    // PyType_Modified invalidates caches.
    unsafe {
        if replace_slot(&raw mut (*tp).tp_dealloc, store, replacement) {
            (*tp).tp_finalize = Some(finalize::<H>);
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
pub fn adopt_subclass<H: FinalizeHooks>(cls: &Bound<'_, PyType>) {
    let tp = cls.as_type_ptr();
    // SAFETY: `cls` is a live, fully created heap type (called from
    // `__init_subclass__`, with the GIL); a type with its own `__del__`
    // keeps it (slot_tp_finalize), so only an empty slot is filled.
    unsafe {
        if (*tp).tp_finalize.is_none() {
            (*tp).tp_finalize = Some(finalize::<H>);
            (*tp).tp_flags |= ffi::Py_TPFLAGS_HAVE_FINALIZE;
            ffi::PyType_Modified(tp);
        }
    }
}

/// Puts the finalizing `tp_dealloc`/`tp_finalize` and the two-step
/// `tp_clear` on `future` and `task`, serving instances through `H`.
///
/// # Safety
/// `future` and `task` are ferroloop's own `Future` and `Task` heap types
/// (instances of both pass `cast::<H>()`), fully created; called once,
/// during module init, before any instance or subclass of them exists.
pub(crate) unsafe fn install_finalizers<H: FinalizeHooks>(
    future: &Bound<'_, PyType>,
    task: &Bound<'_, PyType>,
) {
    // SAFETY: forwarded contract.
    unsafe {
        patch::<H>(future.as_type_ptr(), &FUTURE_DEALLOC, future_dealloc::<H>);
        patch::<H>(task.as_type_ptr(), &TASK_DEALLOC, task_dealloc::<H>);
        patch_clear(future.as_type_ptr(), &FUTURE_CLEAR, future_clear::<H>);
        patch_clear(task.as_type_ptr(), &TASK_CLEAR, task_clear::<H>);
    }
}

// ---------------------------------------------------------------------------
// am_send, tp_alloc and tp_free of FutureIter
// ---------------------------------------------------------------------------

/// What one `send(None)` into an awaitable's iterator produced.
pub(crate) enum SendStep {
    /// Suspend the awaiting coroutine, yielding this value to its driver.
    Yield(Py<PyAny>),
    /// The `await` is over with this value.
    Return(Py<PyAny>),
}

/// The iteration the `am_send` slot runs: implemented by the iterator class
/// (FutureIter), over which [`future_iter_am_send`] is monomorphized.
pub(crate) trait AmSend: PyTypeCheck + Sized {
    /// One `send(None)` step; an error is raised into the awaiting frame.
    fn am_send(iter: &Bound<'_, Self>) -> PyResult<SendStep>;
}

/// `am_send` slot of FutureIter: lets `await fut` finish without creating a
/// StopIteration (CPython's C FutureIter has the same slot).
///
/// # Safety
/// Called by CPython as an `am_send` slot: GIL held, `iter` alive, `result`
/// a valid out-pointer.
unsafe extern "C" fn future_iter_am_send<H: AmSend>(
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
        let r = match obj.cast::<H>() {
            Ok(it) => H::am_send(it),
            Err(e) => Err(PyErr::from(e)),
        };
        match r {
            Ok(SendStep::Yield(v)) => (ffi::PySendResult::PYGEN_NEXT, v.into_ptr()),
            Ok(SendStep::Return(v)) => (ffi::PySendResult::PYGEN_RETURN, v.into_ptr()),
            Err(e) => {
                e.restore(py);
                (ffi::PySendResult::PYGEN_ERROR, std::ptr::null_mut())
            }
        }
    });
    let (status, value) = outcome.unwrap_or_else(|_| {
        PyRuntimeError::new_err("panic in FutureIter.send").restore(py);
        (ffi::PySendResult::PYGEN_ERROR, std::ptr::null_mut())
    });
    // SAFETY: `result` is a valid out-pointer supplied by PyIter_Send.
    unsafe { *result = value };
    status
}

/// Installs [`future_iter_am_send`] (serving instances through `H`) and the
/// recycling allocator on the FutureIter type `tp`.
///
/// # Safety
/// `tp` is ferroloop's own FutureIter heap type (its instances pass
/// `cast::<H>()`), fully initialized, with no instance yet (module init,
/// GIL held).
pub(crate) unsafe fn install_am_send<H: AmSend>(tp: &Bound<'_, PyType>) {
    let tp = tp.as_type_ptr();
    // SAFETY: per the contract. Heap types always point tp_as_async at
    // their own writable PyAsyncMethods.
    unsafe {
        let am = (*tp).tp_as_async;
        if !am.is_null() {
            (*am).am_send = Some(future_iter_am_send::<H>);
        }
        // Every `await fut` makes a FutureIter: recycle their memory, as
        // CPython's C FutureIter does (see [`FreeList`]).
        ITER_FREELIST.install_for::<IterList>(tp);
        ffi::PyType_Modified(tp);
    }
}

/// Memory of freed objects of one type, kept for reuse: the `tp_alloc` /
/// `tp_free` pair of a type whose objects are made and freed at a high rate
/// (a FutureIter per `await`, a Handle per `call_soon`), as CPython keeps
/// free lists for its own hot types. Skips malloc/free and the allocator's
/// bookkeeping; a recycled object is set up as `PyType_GenericAlloc` would.
///
/// Invariants: only objects of exactly the installed type (never a
/// subclass: those are larger) enter the list, after their deallocation is
/// complete (their memory, GC header included, untouched since
/// `PyObject_GC_UnTrack`); at most [`FreeList::MAX`] are kept. All access
/// holds the GIL ([`crate::gil::GilCell`]).
pub(crate) struct FreeList {
    tp: AtomicPtr<ffi::PyTypeObject>,
    objs: GilCell<Vec<usize>>,
}

impl FreeList {
    const MAX: usize = 64;

    pub(crate) const fn new() -> Self {
        FreeList {
            tp: AtomicPtr::new(std::ptr::null_mut()),
            objs: GilCell::new(Vec::new()),
        }
    }

    /// Makes `tp` allocate through this list (once per list).
    ///
    /// # Safety
    /// `tp` is one of ferroloop's own GC heap types, fully initialized,
    /// whose slots `tp_alloc`/`tp_free` are the generic ones; module init,
    /// GIL held; `L` names this very list.
    unsafe fn install_for<L: HasFreeList>(&'static self, tp: *mut ffi::PyTypeObject) {
        let fresh = self
            .tp
            .compare_exchange(
                std::ptr::null_mut(),
                tp,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok();
        if fresh {
            // SAFETY: per the contract.
            unsafe {
                (*tp).tp_alloc = Some(pooled_alloc::<L>);
                (*tp).tp_free = Some(pooled_free::<L>);
                ffi::PyType_Modified(tp);
            }
        }
    }
}

/// Names a static [`FreeList`] (the slots below are generic over it).
pub(crate) trait HasFreeList {
    fn list() -> &'static FreeList;
}

/// `tp_alloc` through a [`FreeList`]: a recycled object when one is free,
/// else the generic allocation.
///
/// # Safety
/// Called by CPython as a `tp_alloc` slot (GIL held, `tp` a live type).
unsafe extern "C" fn pooled_alloc<L: HasFreeList>(
    tp: *mut ffi::PyTypeObject,
    nitems: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    let list = L::list();
    if nitems == 0 && tp == list.tp.load(Ordering::Relaxed) {
        // SAFETY: tp_alloc runs with the GIL held; nothing re-enters.
        let recycled = unsafe { list.objs.with(Vec::pop) };
        if let Some(addr) = recycled {
            let obj = addr as *mut ffi::PyObject;
            // SAFETY: `obj` is the memory of an object of type `tp`,
            // untracked and no longer an object (its deallocation ran up to
            // tp_free); basicsize is the object's size after the GC header,
            // which stays as the untracking left it. PyObject_Init sets type
            // and refcount (and takes the type reference the deallocation
            // released).
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

/// `tp_free` through a [`FreeList`]: keeps up to [`FreeList::MAX`] objects
/// of exactly the list's type.
///
/// # Safety
/// Called by CPython as a `tp_free` slot, on a GC object whose deallocation
/// is complete (its type pointer still set, as deallocators leave it).
unsafe extern "C" fn pooled_free<L: HasFreeList>(obj: *mut std::ffi::c_void) {
    if obj.is_null() {
        return;
    }
    let list = L::list();
    // SAFETY: the type pointer of a deallocated object is still readable.
    let exact = unsafe { ffi::Py_TYPE(obj.cast()) } == list.tp.load(Ordering::Relaxed);
    if exact {
        // SAFETY: tp_free runs with the GIL held; nothing re-enters.
        let kept = unsafe {
            list.objs.with(|free| {
                let keep = free.len() < FreeList::MAX;
                if keep {
                    free.push(obj as usize);
                }
                keep
            })
        };
        if kept {
            return;
        }
    }
    // SAFETY: a GC object allocated by PyType_GenericAlloc or recycled.
    unsafe { ffi::PyObject_GC_Del(obj) }
}

struct IterList;
static ITER_FREELIST: FreeList = FreeList::new();
impl HasFreeList for IterList {
    fn list() -> &'static FreeList {
        &ITER_FREELIST
    }
}

struct HandleList;
static HANDLE_FREELIST: FreeList = FreeList::new();
impl HasFreeList for HandleList {
    fn list() -> &'static FreeList {
        &HANDLE_FREELIST
    }
}

/// Recycles the memory of `Handle` objects (one per `call_soon`); its
/// subclass `TimerHandle` keeps the generic allocator.
///
/// # Safety
/// `tp` is ferroloop's `Handle` type, fully initialized, with no instance
/// and no subclass created after this call inheriting the slots unknowingly
/// (a subclass's objects are larger: [`pooled_free`] keeps exact-type
/// objects only, and [`pooled_alloc`] recycles only for the exact type);
/// module init, GIL held.
pub(crate) unsafe fn install_handle_freelist(tp: &Bound<'_, PyType>) {
    // SAFETY: per the contract.
    unsafe { HANDLE_FREELIST.install_for::<HandleList>(tp.as_type_ptr()) }
}
