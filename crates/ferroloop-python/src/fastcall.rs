//! Hand-written vectorcall entry points for the hottest methods.
//!
//! PyO3 parses `(callback, *args, context=None)` generically: it matches
//! keyword names, collects `*args` and sets up its trampoline, about a
//! quarter of what `loop.call_soon(cb, arg)` costs in all. `call_soon` is
//! called for every callback a program schedules, so it gets a
//! `METH_FASTCALL | METH_KEYWORDS` method of its own, installed over PyO3's
//! at module init; the work itself stays in [`Loop::call_soon`]. Likewise
//! a stream transport's `write(data)`, called for every message a protocol
//! sends (the work stays in [`StreamCore::write_data`]), and a datagram
//! transport's `sendto(data, addr)` (the work stays in
//! [`DatagramCore::sendto`]).
//!
//! ## Invariants
//! - The method descriptor checks that `self` is of the method's class
//!   (`_Loop`, `_StreamCore`, `_DatagramCore`) before calling.
//! - A Rust panic is caught and raised as `pyo3_runtime.PanicException`,
//!   as PyO3's trampolines do; nothing unwinds into CPython.
//! - The functions run with the GIL held (CPython calls them) but outside
//!   PyO3's attach bookkeeping, so they keep only `Bound` temporaries; a
//!   `Py` dropped here while PyO3 does not count the thread as attached
//!   (a call from outside the running loop) is released at PyO3's next
//!   entry instead of at once, which is harmless.

use std::ffi::CStr;

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};
use pyo3::PyTypeInfo;

use crate::io::datagram::DatagramCore;
use crate::io::stream::StreamCore;
use crate::loop_state::Loop;

/// A `PyMethodDef` in a static (CPython keeps the pointer).
struct MethodDef(ffi::PyMethodDef);
// SAFETY: the definition is immutable after construction and only read by
// CPython; its pointers refer to static C strings and functions.
unsafe impl Sync for MethodDef {}

const CALL_SOON_DOC: &CStr = c"call_soon($self, callback, *args, context=None)\n--\n\n\
Arrange for `callback(*args)` to be called soon, in `context` (a copy of the \
current context by default). Returns a Handle.";

static CALL_SOON: MethodDef = MethodDef(ffi::PyMethodDef {
    ml_name: c"call_soon".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunctionFastWithKeywords: call_soon,
    },
    ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
    ml_doc: CALL_SOON_DOC.as_ptr(),
});

const WRITE_DOC: &CStr = c"write($self, data)\n--\n\n\
Write the bytes-like `data` to the transport: sent at once when possible, \
the rest queued.";

static STREAM_WRITE: MethodDef = MethodDef(ffi::PyMethodDef {
    ml_name: c"write".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunctionFastWithKeywords: stream_write,
    },
    ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
    ml_doc: WRITE_DOC.as_ptr(),
});

const SENDTO_DOC: &CStr = c"sendto($self, data, addr=None)\n--\n\n\
Send the datagram `data` to `addr` (None: the connected peer): at once when \
possible, else queued.";

static DATAGRAM_SENDTO: MethodDef = MethodDef(ffi::PyMethodDef {
    ml_name: c"sendto".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunctionFastWithKeywords: datagram_sendto,
    },
    ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
    ml_doc: SENDTO_DOC.as_ptr(),
});

/// Puts the raw methods on their classes, replacing PyO3's wrappers
/// (`_DatagramCore.sendto` has only this one).
pub(crate) fn install(py: Python<'_>) -> PyResult<()> {
    put_method(&Loop::type_object(py), "call_soon", &CALL_SOON)?;
    put_method(&StreamCore::type_object(py), "write", &STREAM_WRITE)?;
    put_method(&DatagramCore::type_object(py), "sendto", &DATAGRAM_SENDTO)
}

fn put_method(
    tp: &Bound<'_, pyo3::types::PyType>,
    name: &str,
    def: &'static MethodDef,
) -> PyResult<()> {
    let py = tp.py();
    // SAFETY: `tp` is our live heap type and `def` a static definition;
    // PyDescr_NewMethod returns a new reference or NULL with an error.
    let descr = unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            // CPython only reads the definition (the C API just lacks `const`).
            ffi::PyDescr_NewMethod(tp.as_type_ptr(), (&raw const def.0).cast_mut()),
        )?
    };
    // type.__setattr__ updates the type's dict and invalidates its caches.
    tp.setattr(name, descr)
}

/// The number of keyword arguments of a vectorcall.
///
/// # Safety
/// `kwnames` is NULL or a live tuple (the vectorcall contract).
unsafe fn keyword_count(kwnames: *mut ffi::PyObject) -> usize {
    if kwnames.is_null() {
        0
    } else {
        // SAFETY: a non-NULL `kwnames` is a live tuple (contract).
        unsafe { ffi::PyTuple_GET_SIZE(kwnames) as usize }
    }
}

/// Runs a raw method's body as PyO3's trampolines do: a panic becomes a
/// `PanicException`, an error is set and NULL returned.
fn finish(
    py: Python<'_>,
    body: impl FnOnce() -> PyResult<*mut ffi::PyObject>,
) -> *mut ffi::PyObject {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
    match r
        .unwrap_or_else(|payload| Err(crate::errors::panic_error(payload, "panic from Rust code")))
    {
        Ok(obj) => obj,
        Err(e) => {
            e.restore(py);
            std::ptr::null_mut()
        }
    }
}

/// `_StreamCore.write(data)`; `data` may also come by keyword, as
/// asyncio's Python method allows.
///
/// # Safety
/// Called by CPython as a `METH_FASTCALL | METH_KEYWORDS` method of
/// `_StreamCore` (the vectorcall contract, as for [`call_soon`]).
unsafe extern "C" fn stream_write(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this method with the GIL held.
    let py = unsafe { Python::assume_attached() };
    finish(py, || {
        // SAFETY: a pure computation on the vectorcall `nargsf`.
        let nargs = unsafe { ffi::PyVectorcall_NARGS(nargsf as usize) } as usize;
        // SAFETY: the caller's `kwnames` (contract).
        let nkw = unsafe { keyword_count(kwnames) };
        let keyword_ok = nkw == 1 && nargs == 0 && {
            // SAFETY: a live tuple of one str (contract).
            let name = unsafe { Bound::from_borrowed_ptr(py, ffi::PyTuple_GET_ITEM(kwnames, 0)) };
            name.cast_into::<PyString>()
                .is_ok_and(|n| n.to_str().is_ok_and(|n| n == "data"))
        };
        if !((nargs == 1 && nkw == 0) || keyword_ok) {
            return Err(PyTypeError::new_err(format!(
                "write() takes exactly one argument 'data' ({} given)",
                nargs + nkw
            )));
        }
        // SAFETY: exactly one live argument (checked above, contract).
        let data = unsafe { Bound::from_borrowed_ptr(py, *args) };
        // SAFETY: `slf` is live (contract).
        let slf = unsafe { Bound::from_borrowed_ptr(py, slf) };
        // SAFETY: the method descriptor checked that `slf` is a `_StreamCore`.
        let slf = unsafe { slf.cast_into_unchecked::<StreamCore>() };
        StreamCore::write_data(&slf, &data)?;
        // SAFETY: a new reference to None.
        Ok(unsafe { ffi::Py_NewRef(ffi::Py_None()) })
    })
}

/// `_DatagramCore.sendto(data, addr=None)`: one or two positional
/// arguments here; other calls go to asyncio's `sendto` as they are.
///
/// # Safety
/// Called by CPython as a `METH_FASTCALL | METH_KEYWORDS` method of
/// `_DatagramCore` (the vectorcall contract, as for [`call_soon`]).
unsafe extern "C" fn datagram_sendto(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this method with the GIL held.
    let py = unsafe { Python::assume_attached() };
    finish(py, || {
        // SAFETY: `slf` is live (contract).
        let slf = unsafe { Bound::from_borrowed_ptr(py, slf) };
        // SAFETY: a pure computation on the vectorcall `nargsf`.
        let nargs = unsafe { ffi::PyVectorcall_NARGS(nargsf as usize) } as usize;
        if !kwnames.is_null() || !(1..=2).contains(&nargs) {
            // Keywords or a wrong count: asyncio's own `sendto` parses them
            // (and words any error as asyncio does).
            // SAFETY: the caller's `kwnames` (contract).
            let nkw = unsafe { keyword_count(kwnames) };
            let all: Vec<Bound<'_, PyAny>> = (0..nargs + nkw)
                // SAFETY: `nargs + nkw` live arguments (contract).
                .map(|i| unsafe { Bound::from_borrowed_ptr(py, *args.add(i)) })
                .collect();
            let positional = PyTuple::new(py, &all[..nargs])?;
            let keywords = pyo3::types::PyDict::new(py);
            for (i, value) in all[nargs..].iter().enumerate() {
                // SAFETY: item i of the live `kwnames` tuple (contract).
                let name = unsafe {
                    Bound::from_borrowed_ptr(
                        py,
                        ffi::PyTuple_GET_ITEM(kwnames, i as ffi::Py_ssize_t),
                    )
                };
                keywords.set_item(name, value)?;
            }
            // SAFETY: the method descriptor checked that `slf` is a `_DatagramCore`.
            let slf = unsafe { slf.cast_into_unchecked::<DatagramCore>() };
            return DatagramCore::sendto_asyncio(&slf, &positional, &keywords).map(Bound::into_ptr);
        }
        // SAFETY: `nargs` live arguments (checked above, contract).
        let data = unsafe { Bound::from_borrowed_ptr(py, *args) };
        let addr = (nargs == 2).then(|| {
            // SAFETY: the second of two live arguments.
            unsafe { Bound::from_borrowed_ptr(py, *args.add(1)) }
        });
        // SAFETY: the method descriptor checked that `slf` is a `_DatagramCore`.
        let slf = unsafe { slf.cast_into_unchecked::<DatagramCore>() };
        DatagramCore::sendto(&slf, &data, addr.as_ref())?;
        // SAFETY: a new reference to None.
        Ok(unsafe { ffi::Py_NewRef(ffi::Py_None()) })
    })
}

/// `_Loop.call_soon(callback, *args, context=None)`.
///
/// # Safety
/// Called by CPython as a `METH_FASTCALL | METH_KEYWORDS` method of `_Loop`
/// (see [`call_soon_impl`]).
unsafe extern "C" fn call_soon(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this method with the GIL held.
    let py = unsafe { Python::assume_attached() };
    finish(py, || {
        // SAFETY: the vectorcall contract: `args` holds the positional
        // arguments followed by one value per name in `kwnames`.
        unsafe { call_soon_impl(py, slf, args, nargsf, kwnames) }.map(Bound::into_ptr)
    })
}

/// # Safety
/// GIL held; `slf` is a live `_Loop` (the method descriptor checked it);
/// `args[..nargs + len(kwnames)]` are live borrowed references for the
/// duration of the call (the vectorcall contract), `kwnames` a tuple of str
/// or NULL.
unsafe fn call_soon_impl<'py>(
    py: Python<'py>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: a pure computation on the vectorcall `nargsf`.
    let nargs = unsafe { ffi::PyVectorcall_NARGS(nargsf as usize) };
    // SAFETY: `args` holds at least `nargs` live references (contract).
    let positional = unsafe { std::slice::from_raw_parts(args, nargs as usize) };
    let mut context = None;
    let mut callback_kw = None;
    if !kwnames.is_null() {
        // SAFETY: a non-NULL `kwnames` is a live tuple (contract).
        let names = unsafe { Bound::from_borrowed_ptr(py, kwnames) };
        let names = names.cast_into::<PyTuple>()?;
        for (i, name) in names.iter().enumerate() {
            // SAFETY: one live value per keyword name follows the positional
            // arguments in `args` (contract).
            let value = unsafe { Bound::from_borrowed_ptr(py, *args.add(nargs as usize + i)) };
            let name = name.cast_into::<PyString>()?;
            match name.to_str()? {
                "context" => context = Some(value),
                // As in asyncio, `callback` may be passed by keyword (with
                // no positional arguments: they would follow it).
                "callback" if nargs == 0 => callback_kw = Some(value),
                "callback" => {
                    return Err(PyTypeError::new_err(
                        "_Loop.call_soon() got multiple values for argument 'callback'",
                    ))
                }
                _ => {
                    return Err(PyTypeError::new_err(format!(
                        "_Loop.call_soon() got an unexpected keyword argument '{name}'"
                    )))
                }
            }
        }
    }
    let (callback, rest) = match (positional.split_first(), callback_kw) {
        // SAFETY: a live positional argument (contract).
        (Some((&cb, rest)), _) => (unsafe { Bound::from_borrowed_ptr(py, cb) }, rest),
        (None, Some(cb)) => (cb, positional),
        (None, None) => {
            return Err(PyTypeError::new_err(
                "_Loop.call_soon() missing 1 required positional argument: 'callback'",
            ))
        }
    };
    let cb_args = if rest.is_empty() {
        crate::aio::empty_tuple(py)
    } else {
        PyTuple::new(
            py,
            rest.iter()
                // SAFETY: live positional arguments (contract).
                .map(|&a| unsafe { Bound::from_borrowed_ptr(py, a) }),
        )?
    };
    // SAFETY: `slf` is live (contract).
    let slf = unsafe { Bound::from_borrowed_ptr(py, slf) };
    // SAFETY: the method descriptor checked that `slf` is a `_Loop`.
    let slf = unsafe { slf.cast_into_unchecked::<Loop>() };
    Loop::call_soon(&slf, &callback, &cb_args, context).map(|h| h.into_bound(py).into_any())
}
