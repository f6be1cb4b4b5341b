//! One reusable read buffer for the loop's socket reads.
//!
//! asyncio's socket transport reads with `sock.recv(256 KiB)`: CPython
//! allocates a 256 KiB `bytes` per read and shrinks it to what arrived.
//! Whether that costs a `malloc` from the heap or an `mmap`/`mremap`/
//! `munmap` triple depends on glibc's dynamic mmap threshold, i.e. on what
//! the process happened to allocate before: measured on a 1 KiB echo, the
//! same asyncio transport code ran 104k msg/s in one process and 32k in
//! another, with three extra syscalls per read. [`recv_bytes`] reads into
//! this module's buffer instead and makes one `bytes` of the exact size:
//! one copy of the bytes that arrived, no large allocation, whatever the
//! heap's history.
//!
//! ## Invariants
//! - The buffer is touched only with the GIL held, and nothing re-enters
//!   while it is in use (`crate::gil::GilCell`): the read and the copy into
//!   the new `bytes` run no Python code.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, RawFd};

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::gil::GilCell;

static READ_BUF: GilCell<Vec<MaybeUninit<u8>>> = GilCell::new(Vec::new());

/// `sock.recv(max_size)` on the open socket `fd`, through the reusable
/// buffer: the bytes received (empty at end of stream), or the OS error
/// (`WouldBlock` when nothing is ready).
pub(crate) fn recv_bytes(
    py: Python<'_>,
    fd: RawFd,
    max_size: usize,
) -> io::Result<Bound<'_, PyBytes>> {
    // SAFETY: the GIL is held (we have `py`) and the closure runs no Python
    // code; `fd` stays open for the call (the caller owns the socket).
    unsafe {
        READ_BUF.with(|buf| {
            if buf.len() < max_size {
                buf.resize(max_size, MaybeUninit::uninit());
            }
            let borrowed = BorrowedFd::borrow_raw(fd);
            let sock = socket2::SockRef::from(&borrowed);
            let n = sock.recv(&mut buf[..max_size])?;
            // recv initialized the first n bytes.
            let got = std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n);
            Ok(PyBytes::new(py, got))
        })
    }
}
