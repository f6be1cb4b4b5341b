//! I/O on the loop: below the `_Loop` methods (`crate::event_loop`), above
//! the loop state and handles.
//! - [`fd_watch`]: `add_reader`/`add_writer` handles on the core's fd table.
//! - [`read_buf`]: socket reads into one reusable buffer.
//! - [`stream`]: native stream transports (TCP and Unix sockets).
//! - [`datagram`]: the data path of UDP transports.
//! - [`tls`]: the data path of TLS connections (asyncio's `SSLProtocol`).
//! - [`sock_ops`]: native `sock_recv`/`sock_recv_into`/`sock_sendall`.
//! - [`buffer`]: byte views of buffer-protocol objects.

pub(crate) mod buffer;
pub(crate) mod datagram;
pub(crate) mod fd_watch;
pub(crate) mod read_buf;
pub(crate) mod sock_ops;
pub(crate) mod stream;
pub(crate) mod tls;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// The instance `__dict__` of `obj` (asyncio's transports and protocols keep
/// their state there).
pub(crate) fn instance_dict<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
    let py = obj.py();
    // SAFETY: `obj` is live and the GIL is held; PyObject_GenericGetDict
    // returns a new reference to the instance dict (creating it if needed),
    // or NULL with an exception set.
    let d = unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyObject_GenericGetDict(obj.as_ptr(), std::ptr::null_mut()),
        )?
    };
    Ok(d.cast_into::<PyDict>()?)
}
