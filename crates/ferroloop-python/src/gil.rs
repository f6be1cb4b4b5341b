//! The GIL as the lock: ferroloop's extension declares `gil_used`, and a
//! free-threaded build does not compile (`crate::slots`), so every access to
//! our objects from Python holds the GIL. The types here use that instead of
//! atomics and thread-locals on the hottest paths (a `call_soon` allocates
//! and frees a Handle, locks it to run it, and drops its references):
//! an atomic read-modify-write costs ~20 cycles, PyO3's per-drop attach
//! check a thread-local read. Measured: chained `call_soon` 0.77x -> 1.00x
//! of rloop's speed from the free list's and the loop's atomics alone.
//!
//! ## Invariants
//! - [`GilCell`]: accessed only with the GIL held, by code that runs no
//!   Python (nothing can re-enter).
//! - [`GilRefCell`]: accessed only with the GIL held; Python code may run
//!   while it is borrowed elsewhere on the stack, so borrows are checked (a
//!   non-atomic flag): a conflicting borrow fails instead of aliasing.
//! - [`GilPy`]: dropped only with the GIL held.

use std::cell::{RefCell, UnsafeCell};
use std::mem::ManuallyDrop;

use pyo3::ffi;
use pyo3::prelude::*;

/// Data guarded by the GIL instead of a lock, for code that provably runs
/// with it held (CPython slots) and never re-enters.
pub(crate) struct GilCell<T>(UnsafeCell<T>);

// SAFETY: every access goes through `with`, whose contract requires the GIL,
// which serializes them.
unsafe impl<T: Send> Sync for GilCell<T> {}

impl<T> GilCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        GilCell(UnsafeCell::new(value))
    }

    /// # Safety
    /// The GIL is held, and `f` runs no code that could call `with` again.
    pub(crate) unsafe fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: exclusive by the contract.
        f(unsafe { &mut *self.0.get() })
    }
}

/// A `RefCell` shared by GIL-holding threads (a frozen pyclass's mutable
/// part): borrows are checked without atomics.
pub(crate) struct GilRefCell<T>(RefCell<T>);

// SAFETY: every access holds the GIL (module invariants), which serializes
// the non-atomic borrow flag and the value.
unsafe impl<T: Send> Sync for GilRefCell<T> {}

impl<T> GilRefCell<T> {
    pub(crate) fn new(value: T) -> Self {
        GilRefCell(RefCell::new(value))
    }

    /// Borrows mutably; panics (a PanicException in Python, never a
    /// deadlock) if already borrowed.
    #[inline]
    pub(crate) fn lock(&self) -> std::cell::RefMut<'_, T> {
        self.0.borrow_mut()
    }

    /// Borrows mutably unless already borrowed (for `tp_traverse`).
    #[inline]
    pub(crate) fn try_lock(&self) -> Option<std::cell::RefMut<'_, T>> {
        self.0.try_borrow_mut().ok()
    }
}

/// A strong reference released with a direct `Py_DECREF`.
///
/// PyO3's `Py<T>` checks, on every drop, whether the thread is attached to
/// the interpreter (a thread-local read: `__tls_get_addr` in a shared
/// library, ~20 instructions). The fields of a `Handle` are dropped with the
/// GIL held -- by its `tp_dealloc`, or by GIL-holding code that took them
/// out (the same invariant [`Adopted`] relies on) -- so they skip that
/// check. Asserted in debug builds.
#[repr(transparent)]
pub(crate) struct GilPy<T>(ManuallyDrop<Py<T>>);

impl<T> GilPy<T> {
    #[inline]
    pub(crate) fn new(obj: Py<T>) -> Self {
        GilPy(ManuallyDrop::new(obj))
    }

    /// Gives the reference to code that may drop it anywhere.
    #[inline]
    pub(crate) fn into_inner(self) -> Py<T> {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped, so the Py is moved out once.
        unsafe { ManuallyDrop::take(&mut this.0) }
    }

    /// The reference as a `Bound` (dropped without the attach check too).
    #[inline]
    pub(crate) fn into_bound(self, py: Python<'_>) -> Bound<'_, T> {
        self.into_inner().into_bound(py)
    }
}

impl<T> std::ops::Deref for GilPy<T> {
    type Target = Py<T>;

    #[inline]
    fn deref(&self) -> &Py<T> {
        &self.0
    }
}

impl<T> Drop for GilPy<T> {
    #[inline]
    fn drop(&mut self) {
        debug_assert_eq!(
            // SAFETY: PyGILState_Check only reads the thread state.
            unsafe { ffi::PyGILState_Check() },
            1,
            "GilPy dropped without the GIL"
        );
        // SAFETY: the GIL is held (see the type's docs); we own this
        // reference and release it exactly once.
        unsafe { ffi::Py_DECREF(self.0.as_ptr()) }
    }
}
