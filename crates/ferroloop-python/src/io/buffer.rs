//! Byte views of buffer-protocol objects (`bytes`, `bytearray`,
//! `memoryview`, `array`, ...), as `socket.send`/`recv_into` take them.
//!
//! ## Invariants
//! - A [`BufView`] holds an export of its object (a `bytearray` cannot be
//!   resized while it lives) and is created, read and released with the
//!   GIL held; it may be kept across loop iterations (a pending
//!   `sock_sendall`), as asyncio keeps a `memoryview`.

use pyo3::ffi;
use pyo3::prelude::*;

/// A contiguous byte view of a buffer-protocol object, released on drop.
pub(crate) struct BufView {
    view: ffi::Py_buffer,
}

impl BufView {
    pub(crate) fn get(obj: &Bound<'_, PyAny>, writable: bool) -> PyResult<Self> {
        let flags = if writable {
            ffi::PyBUF_WRITABLE
        } else {
            ffi::PyBUF_SIMPLE
        };
        let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::uninit();
        // SAFETY: GIL held; `view` is filled on success and released in Drop.
        if unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), flags) } != 0 {
            return Err(PyErr::fetch(obj.py()));
        }
        // SAFETY: initialized by the successful call above.
        let view = unsafe { view.assume_init() };
        Ok(BufView { view })
    }

    pub(crate) fn len(&self) -> usize {
        usize::try_from(self.view.len).unwrap_or(0)
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        if self.len() == 0 {
            return &[];
        }
        // SAFETY: a simple (contiguous) view of `len` bytes at `buf`, alive
        // until released in Drop.
        unsafe { std::slice::from_raw_parts(self.view.buf.cast::<u8>(), self.len()) }
    }

    /// The view's bytes as a destination for a read (`recv` only writes).
    pub(crate) fn bytes_mut(&mut self) -> &mut [std::mem::MaybeUninit<u8>] {
        if self.len() == 0 {
            return &mut [];
        }
        // SAFETY: a writable contiguous view (PyBUF_WRITABLE) of `len` bytes;
        // MaybeUninit<u8> has u8's layout.
        unsafe { std::slice::from_raw_parts_mut(self.view.buf.cast(), self.len()) }
    }
}

impl Drop for BufView {
    fn drop(&mut self) {
        // SAFETY: obtained by PyObject_GetBuffer, released once, GIL held
        // (module invariants).
        unsafe { ffi::PyBuffer_Release(&mut self.view) }
    }
}

// SAFETY: the view's pointers are only used with the GIL held (module
// invariants), which serializes every access to the exporting object.
unsafe impl Send for BufView {}
