//! # ferroloop (Python binding)
//!
//! PyO3 glue between `ferroloop-core` and Python: the native event loop
//! (`_Loop`), `Handle`/`TimerHandle`, and native `Future`/`Task`. The Python
//! package `ferroloop` subclasses `_Loop` into `ferroloop.Loop`.
//!
//! Rust panics never abort the interpreter: PyO3 catches them at every
//! method boundary and raises `pyo3_runtime.PanicException` instead.
//!
//! This file is module init only. The modules form layers, each using only
//! those below it; the few calls upward go through function-pointer hooks
//! and traits that the higher module installs during the init below (the
//! submodules of `future` form one layer and use each other freely):
//! 1. `gil`, `gc`, `aio` (asyncio/contextvars calls), then `errors` and `slots`
//!    (all CPython slot patching);
//! 2. `handle`: `Handle`, `TimerHandle`;
//! 3. `loop_state`: the `_Loop` struct and its ready-queue items;
//! 4. `future`: `Future`, `Task`, the task step;
//! 5. `io`: fd watches, buffers, stream transports, `sock_*` operations;
//! 6. `event_loop` (`_Loop`'s methods and driver), `fastcall`.

#![allow(non_snake_case)] // asyncio's private names (`_Task__step`, `get__name` getters)

mod aio;
mod errors;
mod event_loop;
mod fastcall;
mod future;
mod gc;
mod gil;
mod handle;
mod io;
mod loop_state;
mod slots;

use pyo3::prelude::*;

#[pymodule(gil_used = true)]
fn _ferroloop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<loop_state::Loop>()?;
    m.add_class::<handle::Handle>()?;
    m.add_class::<handle::TimerHandle>()?;
    m.add_class::<future::Future>()?;
    m.add_class::<future::task::Task>()?;
    m.add_class::<future::iter::FutureIter>()?;
    m.add_class::<future::step::TaskStepMethWrapper>()?;
    m.add_class::<future::step::TaskWakeup>()?;
    loop_state::install();
    // SAFETY: module init, GIL held, before any Handle exists; TimerHandle
    // was created above and keeps the generic allocator.
    unsafe { slots::install_handle_freelist(&m.py().get_type::<handle::Handle>()) };
    future::finalize::install(m.py())?;
    fastcall::install(m.py())?;
    future::iter::install_am_send(m.py());
    future::init_statics(m.py())?;
    m.add_class::<io::stream::StreamCore>()?;
    m.add_class::<io::datagram::DatagramCore>()?;
    m.add_class::<io::tls::TlsPump>()?;
    m.add_class::<io::sock_ops::SockWatch>()?;
    m.add_function(wrap_pyfunction!(io::sock_ops::_sock_recv, m)?)?;
    m.add_function(wrap_pyfunction!(io::sock_ops::_sock_recv_into, m)?)?;
    m.add_function(wrap_pyfunction!(io::sock_ops::_sock_sendall, m)?)?;
    m.add_function(wrap_pyfunction!(io::sock_ops::_sock_read_call, m)?)?;
    m.add_function(wrap_pyfunction!(io::sock_ops::_sock_write_call, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
