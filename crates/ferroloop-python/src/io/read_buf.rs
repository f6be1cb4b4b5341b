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
/// buffer: the bytes received (empty at end of stream), and whether more
/// may be queued although the read was short (see [`recv_raw`]); or the
/// OS error (`WouldBlock` when nothing is ready).
pub(crate) fn recv_bytes(
    py: Python<'_>,
    fd: RawFd,
    max_size: usize,
    unix: bool,
) -> io::Result<(Bound<'_, PyBytes>, bool)> {
    // SAFETY: the GIL is held (we have `py`) and the closure runs no Python
    // code; `fd` stays open for the call (the caller owns the socket).
    unsafe {
        READ_BUF.with(|buf| {
            if buf.len() < max_size {
                buf.resize(max_size, MaybeUninit::uninit());
            }
            let (n, more) = recv_raw(fd, &mut buf[..max_size], unix)?;
            // recv initialized the first n bytes.
            let got = std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n);
            Ok((PyBytes::new(py, got), more))
        })
    }
}

/// One read from the open socket `fd` into `buf`: the byte count, and
/// whether the read stopped at ancillary data. With `unix` (an AF_UNIX
/// stream) it is a `recvmsg` without a control buffer: a read stops after
/// a message that carried passed fds (or at a change of sender credentials
/// with `SO_PASSCRED`) although more bytes are queued, and the kernel says
/// so with `MSG_CTRUNC` (the fds are closed, as `socket.recv` does). A
/// TCP read is short only when the queue is drained (or at the urgent mark
/// of `MSG_OOB` data).
pub(crate) fn recv_raw(
    fd: RawFd,
    buf: &mut [MaybeUninit<u8>],
    unix: bool,
) -> io::Result<(usize, bool)> {
    if !unix {
        // SAFETY: the caller keeps `fd` open for the call.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        return socket2::SockRef::from(&borrowed)
            .recv(buf)
            .map(|n| (n, false));
    }
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid (no name, no control buffer).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: `msg` points at one iovec covering `buf`, which lives for the
    // call; recvmsg writes at most `buf.len()` bytes there and fills in
    // `msg_flags`; the caller keeps `fd` open.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((n as usize, msg.msg_flags & libc::MSG_CTRUNC != 0))
}
