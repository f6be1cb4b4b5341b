//! Keeping CPython's cyclic GC busy only with what can become garbage.
//!
//! On stdlib asyncio most of a 100k-task `gather`, and most of a burst of
//! `call_soon(cb, *args)`, is spent in the cyclic collector traversing
//! Handles, Tasks, coroutines and `contextvars.Context` copies over and over
//! (every old-generation collection walks every tracked object). Two
//! techniques cut that work without changing what gets collected:
//!
//! ## Pinning
//! An object held by the loop's queues (ready queue, timer heap, injector)
//! cannot be garbage: the loop will run it, and those queues are Rust
//! containers the collector never sees, so their references already count as
//! external. While queued, such an object (a `Handle`, a `Task` waiting for
//! its next step) is therefore taken out of the collector's lists
//! ([`untrack`]) and put back ([`track`]) when it leaves the queues and
//! anything else still holds it.
//!
//! ## Adoption ([`Adopted`])
//! An object referenced *only* by one of our objects — a context copy made
//! for a callback or task, a coroutine only its task holds — is untracked,
//! and its owner's `tp_traverse` visits the adoptee's referents in its place,
//! as if the adoptee's fields were the owner's. The collector then sees the
//! same graph minus one node, so it finds exactly the same cycles.
//!
//! ## Invariants
//! - An adoptee has refcount 1 (the owner's reference) whenever the
//!   collector may run, or its owner is pinned (so reachable). Every path
//!   that hands an adoptee to other code goes through [`Adopted::expose`],
//!   which gives it back to the collector first.
//! - Context and coroutine deallocators unlink the object from the GC list
//!   without checking it is tracked, so an adoptee is always re-tracked
//!   before its last reference goes ([`Adopted`]'s `Drop`).
//! - Only exact `Context` and coroutine objects are adopted: their
//!   `tp_traverse` is plain and known.

use std::ffi::{c_int, c_void};
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

/// Takes `obj` out of the collector's lists if it is in them.
#[inline]
pub(crate) fn untrack(obj: &Bound<'_, PyAny>) {
    let p = obj.as_ptr();
    // SAFETY: `p` is a live object and we hold the GIL (we have a Bound).
    // PyObject_GC_UnTrack is a no-op on untracked objects; IsTracked is
    // false for non-GC types.
    unsafe {
        if ffi::PyObject_GC_IsTracked(p) != 0 {
            ffi::PyObject_GC_UnTrack(p.cast());
        }
    }
}

/// [`untrack`] for an object known to be of a GC type (Handle, Task,
/// Context, coroutine): one call, no type check.
#[inline]
pub(crate) fn untrack_gc(obj: &Bound<'_, PyAny>) {
    debug_assert!(
        // SAFETY: reads the type's flags.
        unsafe { ffi::PyObject_IS_GC(obj.as_ptr()) } != 0
    );
    // SAFETY: a live GC object (the caller's promise), GIL held;
    // PyObject_GC_UnTrack checks whether it is tracked itself.
    unsafe { ffi::PyObject_GC_UnTrack(obj.as_ptr().cast()) }
}

/// Puts `obj` back into the collector's lists if it is a GC object that is
/// not tracked.
#[inline]
pub(crate) fn track(obj: &Bound<'_, PyAny>) {
    // SAFETY: live object, GIL held.
    unsafe { track_raw(obj.as_ptr()) }
}

/// # Safety
/// `p` must be a live object and the GIL held.
#[inline]
unsafe fn track_raw(p: *mut ffi::PyObject) {
    // SAFETY: forwarded; PyObject_GC_Track requires a GC object that is
    // not tracked, which both checks ensure.
    unsafe {
        if ffi::PyObject_IS_GC(p) != 0 && ffi::PyObject_GC_IsTracked(p) == 0 {
            ffi::PyObject_GC_Track(p.cast());
        }
    }
}

/// Runs `obj`'s `tp_finalize` once (a no-op if it already ran), as the
/// collector does for the unreachable objects it finds.
pub(crate) fn call_finalizer(obj: &Bound<'_, PyAny>) {
    // SAFETY: live object, GIL held; PyObject_CallFinalizer checks for and
    // records an earlier finalization, and reports errors as unraisable.
    unsafe { ffi::PyObject_CallFinalizer(obj.as_ptr()) }
}

/// Reference count of `obj` (including the caller's reference).
#[inline]
pub(crate) fn refcnt(obj: &Bound<'_, PyAny>) -> isize {
    // SAFETY: live object.
    unsafe { ffi::Py_REFCNT(obj.as_ptr()) }
}

fn adoptable(obj: &Bound<'_, PyAny>) -> bool {
    let p = obj.as_ptr();
    // SAFETY: type checks only read the object's type.
    unsafe { ffi::PyContext_CheckExact(p) != 0 || ffi::PyCoro_CheckExact(p) != 0 }
}

/// A reference to an object this struct may have adopted (see the module
/// docs). Use [`Adopted::inner`] only for calls that do not keep the object
/// (entering a context, sending into a coroutine, identity checks); anything
/// that hands it on uses [`Adopted::expose`].
pub(crate) struct Adopted {
    /// Dropped by hand (see `Drop`): re-tracked first, or leaked when that
    /// cannot be done.
    obj: ManuallyDrop<Py<PyAny>>,
    untracked: AtomicBool,
}

impl Adopted {
    /// Owns and adopts a context copy just made (`PyContext_CopyCurrent`):
    /// an exact, tracked `Context` nobody else holds, so no check is needed.
    pub fn adopt_new_context(ctx: Bound<'_, PyAny>) -> Self {
        debug_assert!(refcnt(&ctx) == 1 && adoptable(&ctx));
        untrack_gc(&ctx);
        Adopted {
            obj: ManuallyDrop::new(ctx.unbind()),
            untracked: AtomicBool::new(true),
        }
    }

    /// Adopts `obj` even though the caller may still hold it. Sound only
    /// while the owner is pinned (reachable from the loop's queues), and
    /// [`Adopted::settle`] must run before it is unpinned: a new task's
    /// coroutine, from `create_task` to its first step.
    pub fn adopt_pinned(&self, py: Python<'_>) {
        let o = self.obj.bind(py);
        if !self.untracked.load(Ordering::Relaxed) && adoptable(o) {
            // SAFETY: live object, GIL held.
            if unsafe { ffi::PyObject_GC_IsTracked(o.as_ptr()) } != 0 {
                untrack(o);
                self.untracked.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Owns `obj` without adopting it (it is shared with the caller).
    pub fn shared(obj: Py<PyAny>) -> Self {
        Adopted {
            obj: ManuallyDrop::new(obj),
            untracked: AtomicBool::new(false),
        }
    }

    /// Makes adoption match exclusivity: adopts the object if this is its
    /// only reference, gives it back to the collector if it is shared.
    pub fn settle(&self, py: Python<'_>) {
        let o = self.obj.bind(py);
        let shared = refcnt(o) > 1;
        if self.untracked.load(Ordering::Relaxed) {
            if shared {
                self.release(py);
            }
            return;
        }
        // SAFETY: live object, GIL held.
        let tracked = unsafe { ffi::PyObject_GC_IsTracked(o.as_ptr()) } != 0;
        if tracked && !shared && adoptable(o) {
            untrack(o);
            self.untracked.store(true, Ordering::Relaxed);
        }
    }

    /// A temporary reference to the object if it is adopted (for calls that
    /// do not keep it).
    pub fn adopted(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.untracked
            .load(Ordering::Relaxed)
            .then(|| self.obj.clone_ref(py))
    }

    /// Whether the object is adopted now.
    #[inline]
    pub fn is_adopted(&self) -> bool {
        self.untracked.load(Ordering::Relaxed)
    }

    /// The object, for a use that does not keep a reference.
    #[inline]
    pub fn inner(&self) -> &Py<PyAny> {
        &self.obj
    }

    /// Gives the object back to the collector and returns a new reference
    /// to it, for code that may keep it.
    pub fn expose(&self, py: Python<'_>) -> Py<PyAny> {
        self.release(py);
        self.obj.clone_ref(py)
    }

    fn release(&self, py: Python<'_>) {
        if self.untracked.swap(false, Ordering::Relaxed) {
            track(self.obj.bind(py));
        }
    }

    /// Visits the object, or, while adopted, what it references.
    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        if !self.untracked.load(Ordering::Relaxed) {
            return visit.call(&*self.obj);
        }
        let p = self.obj.as_ptr();
        // SAFETY: `p` is alive (we own a reference) and its type outlives it.
        let traverse = unsafe { (*ffi::Py_TYPE(p)).tp_traverse };
        let Some(traverse) = traverse else {
            return Ok(());
        };
        let mut relay = Relay { visit, err: None };
        // SAFETY: calling the adoptee's own tp_traverse with a visit
        // procedure that forwards to ours; `relay` outlives the call.
        let rc = unsafe { traverse(p, relay_visit, (&raw mut relay).cast()) };
        match relay.err {
            Some(e) => Err(e),
            None if rc == 0 => Ok(()),
            // The adoptee's traverse failed on its own: report it through
            // our visitor's protocol by visiting the object itself.
            None => visit.call(&*self.obj),
        }
    }
}

impl Drop for Adopted {
    fn drop(&mut self) {
        if *self.untracked.get_mut() {
            let p = self.obj.as_ptr();
            // An Adopted lives in a Handle, a task, a done callback or a
            // ready-queue item: all are dropped by their owner's tp_dealloc
            // or by the loop, so with the GIL held (objects shared with other
            // threads are only pushed and drained by GIL-holding code). PyO3
            // checks that on every `Py` drop through a thread-local; this
            // path runs for every Handle, so it relies on the invariant.
            debug_assert_eq!(
                // SAFETY: PyGILState_Check only reads the thread state.
                unsafe { ffi::PyGILState_Check() },
                1,
                "Adopted dropped without the GIL"
            );
            // SAFETY: GIL held (above); `p` is an untracked GC object we own
            // a reference to: track it, then release that reference directly
            // (the deallocator must see a tracked object).
            unsafe {
                ffi::PyObject_GC_Track(p.cast());
                ffi::Py_DECREF(p);
            }
            return;
        }
        // SAFETY: dropped exactly once, here.
        unsafe { ManuallyDrop::drop(&mut self.obj) }
    }
}

struct Relay<'a, 'b> {
    visit: &'a PyVisit<'b>,
    err: Option<PyTraverseError>,
}

unsafe extern "C" fn relay_visit(obj: *mut ffi::PyObject, arg: *mut c_void) -> c_int {
    if obj.is_null() {
        return 0;
    }
    // SAFETY: `arg` is the `Relay` passed by `Adopted::traverse`, alive for
    // the whole traverse call.
    let relay = unsafe { &mut *arg.cast::<Relay<'_, '_>>() };
    // SAFETY: `Py<PyAny>` is a transparent wrapper of a non-null object
    // pointer; we only lend it to the visitor for this call (no refcount
    // change, nothing dropped).
    let obj_ref: &Py<PyAny> = unsafe { &*(&raw const obj).cast::<Py<PyAny>>() };
    match relay.visit.call(obj_ref) {
        Ok(()) => 0,
        Err(e) => {
            relay.err = Some(e);
            1
        }
    }
}
