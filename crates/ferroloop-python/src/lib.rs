//! # ferroloop (Python binding)
//!
//! PyO3 glue between `ferroloop-core` and Python: the native event loop
//! (`_Loop`), `Handle`/`TimerHandle`, and native `Future`/`Task`. The Python
//! package `ferroloop` subclasses `_Loop` into `ferroloop.Loop`.
//!
//! Rust panics never abort the interpreter: PyO3 catches them at every
//! method boundary and raises `pyo3_runtime.PanicException` instead.

#![allow(non_snake_case)] // asyncio's private names (`_Task__step`, `get__name` getters)

mod event_loop;
mod fastcall;
mod finalize;
mod future;
mod gc;
mod handle;
mod util;

use pyo3::prelude::*;

#[pymodule(gil_used = true)]
fn _ferroloop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<event_loop::Loop>()?;
    m.add_class::<handle::Handle>()?;
    m.add_class::<handle::TimerHandle>()?;
    m.add_class::<future::Future>()?;
    m.add_class::<future::Task>()?;
    m.add_class::<future::FutureIter>()?;
    m.add_class::<future::TaskStepMethWrapper>()?;
    m.add_class::<future::TaskWakeup>()?;
    finalize::install(m.py())?;
    fastcall::install(m.py())?;
    future::install_am_send(m.py());
    future::init_statics(m.py())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
