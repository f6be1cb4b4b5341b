//! Constructors of the exceptions the binding raises: asyncio's own classes
//! (through the cached [`crate::aio::Imports`]), the loop's `RuntimeError`s,
//! and `OSError`s built from Rust I/O errors.
//!
//! ## Invariants
//! - An asyncio exception is an instance of the class asyncio itself raises
//!   (looked up once, never re-created), so `except asyncio.X` catches it.
//! - [`os_error`] passes `(errno, strerror)` to `OSError`, so CPython picks
//!   the subclass for the errno (`ConnectionResetError`, `BrokenPipeError`,
//!   ...) and sets `errno`/`strerror`, as for an `OSError` raised by the
//!   `socket` or `os` modules.

use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PyRuntimeError, PySystemExit};
use pyo3::prelude::*;

use crate::aio::imports;

/// Builds an exception instance of the cached class `cls` with `msg`.
pub fn new_exc<'py>(py: Python<'py>, cls: &Py<PyAny>, msg: impl IntoPyObject<'py>) -> PyErr {
    match cls.bind(py).call1((msg,)) {
        Ok(v) => PyErr::from_value(v),
        Err(e) => e,
    }
}

pub fn invalid_state(py: Python<'_>, msg: String) -> PyErr {
    match imports(py) {
        Ok(i) => new_exc(py, &i.invalid_state_error, msg),
        Err(e) => e,
    }
}

/// True for the two exceptions asyncio never routes to the exception handler.
pub fn is_exit_exception(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py)
}

/// The `RuntimeError` every loop method raises once the loop is closed.
pub fn closed_error() -> PyErr {
    PyRuntimeError::new_err("Event loop is closed")
}

/// `OSError(errno, strerror)` for an error from the operating system (CPython
/// turns it into the subclass for that errno), `OSError(message)` otherwise.
pub fn os_error(e: std::io::Error) -> PyErr {
    let Some(errno) = e.raw_os_error() else {
        return PyOSError::new_err(e.to_string());
    };
    // `io::Error` displays an OS error as "<strerror> (os error <errno>)":
    // `OSError` wants the bare message (it formats "[Errno N] ..." itself).
    let text = e.to_string();
    let strerror = match text.strip_suffix(&format!(" (os error {errno})")) {
        Some(s) => s.to_string(),
        None => text,
    };
    PyOSError::new_err((errno, strerror))
}

/// A Rust panic caught at the Python boundary (`std::panic::catch_unwind`)
/// as a `PanicException` with the panic's message (`what` when it has
/// none), for the loop to report: a panic never aborts the interpreter.
pub fn panic_error(payload: Box<dyn std::any::Any + Send>, what: &str) -> PyErr {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| what.to_string());
    pyo3::panic::PanicException::new_err(msg)
}
