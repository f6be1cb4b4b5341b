//! `FutureIter`, the iterator `__await__` returns (CPython's FutureIter):
//! its Python methods (`send`, `throw`, ...) and the iteration the `am_send`
//! slot runs ([`AmSend`], installed by [`install_am_send`] through
//! `crate::slots`, which also recycles FutureIter memory).
//!
//! ## Invariants
//! - A step on a pending future yields the future itself and sets its
//!   `_asyncio_future_blocking` flag (if the flag is still set, the step
//!   raises "await wasn't used with future" instead); a step on a done
//!   future returns its result (or raises it), after which the iterator is
//!   exhausted.

use pyo3::exceptions::{PyStopIteration, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyTuple, PyType};
use pyo3::{intern, PyTraverseError, PyTypeInfo, PyVisit};

use crate::slots::{self, AmSend, SendStep};

use super::{fut_result, runtime, Future, State};

/// The iterator `__await__` returns (CPython's FutureIter).
#[pyclass(module = "ferroloop._ferroloop", name = "FutureIter")]
pub struct FutureIter {
    pub(super) fut: Option<Py<Future>>,
}

impl FutureIter {
    fn advance(&mut self, py: Python<'_>) -> PyResult<SendStep> {
        let Some(fut) = self.fut.as_ref() else {
            return Err(PyStopIteration::new_err(()));
        };
        {
            let mut f = fut.bind(py).borrow_mut();
            if f.state == State::Pending {
                if !f.blocking {
                    f.blocking = true;
                    return Ok(SendStep::Yield(fut.clone_ref(py).into_any()));
                }
                return Err(runtime("await wasn't used with future"));
            }
        }
        // Bound, not Py: dropping it needs no attach check.
        let fut = self.fut.take().map(|f| f.into_bound(py));
        let fut = fut.as_ref().expect("checked above");
        Ok(SendStep::Return(fut_result(fut)?.unbind()))
    }

    fn step(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        match self.advance(py)? {
            SendStep::Yield(v) => Ok(Some(v)),
            SendStep::Return(v) => Err(PyStopIteration::new_err((v,))),
        }
    }
}

impl AmSend for FutureIter {
    fn am_send(iter: &Bound<'_, Self>) -> PyResult<SendStep> {
        match iter.try_borrow_mut() {
            Ok(mut it) => it.advance(iter.py()),
            Err(e) => Err(PyErr::from(e)),
        }
    }
}

/// Installs the `am_send` slot and the recycling allocator on FutureIter.
pub(crate) fn install_am_send(py: Python<'_>) {
    // SAFETY: FutureIter is our own heap type, fully initialized, with no
    // instance yet (module init, GIL held).
    unsafe { slots::install_am_send::<FutureIter>(&FutureIter::type_object(py)) }
}

#[pymethods]
impl FutureIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.step(py)
    }

    fn send(&mut self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<Option<Py<PyAny>>> {
        let _ = value;
        self.step(py)
    }

    /// Raises into the awaiting frame, with the argument rules of the C
    /// FutureIter (`throw(type[, value[, traceback]])`).
    #[pyo3(signature = (typ, val=None, tb=None))]
    fn throw(
        &mut self,
        py: Python<'_>,
        typ: &Bound<'_, PyAny>,
        val: Option<&Bound<'_, PyAny>>,
        tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let val = val.filter(|v| !v.is_none());
        let tb = tb.filter(|t| !t.is_none());
        if let Some(t) = tb {
            if !t.is_instance_of::<pyo3::types::PyTraceback>() {
                return Err(PyTypeError::new_err(
                    "throw() third argument must be a traceback",
                ));
            }
        }
        let base = py.get_type::<pyo3::exceptions::PyBaseException>();
        let exc_class = typ
            .cast::<PyType>()
            .ok()
            .filter(|t| t.is_subclass(&base).unwrap_or(false));
        let exc = if let Some(t) = exc_class {
            match val {
                Some(v) if v.is_instance(t)? => v.clone(),
                Some(v) => match v.cast::<PyTuple>() {
                    Ok(args) => t.call1(args.clone())?,
                    Err(_) => t.call1((v,))?,
                },
                None => t.call0()?,
            }
        } else if typ.is_instance_of::<pyo3::exceptions::PyBaseException>() {
            if val.is_some() {
                return Err(PyTypeError::new_err(
                    "instance exception may not have a separate value",
                ));
            }
            typ.clone()
        } else {
            return Err(PyTypeError::new_err(
                "exceptions must be classes deriving BaseException or instances of such a class",
            ));
        };
        if let Some(tb) = tb {
            exc.setattr(intern!(py, "__traceback__"), tb)?;
        }
        self.fut = None;
        Err(PyErr::from_value(exc))
    }

    fn close(&mut self) {
        self.fut = None;
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(f) = &self.fut {
            visit.call(f)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.fut = None;
    }
}
