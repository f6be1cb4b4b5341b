//! I/O on the loop: below the `_Loop` methods (`crate::event_loop`), above
//! the loop state and handles.
//! - [`fd_watch`]: `add_reader`/`add_writer` handles on the core's fd table.
//! - [`read_buf`]: socket reads into one reusable buffer.
//! - [`stream`]: native stream transports (TCP and Unix sockets).
//! - [`datagram`]: the data path of UDP transports.
//! - [`sock_ops`]: native `sock_recv`/`sock_recv_into`/`sock_sendall`.
//! - [`buffer`]: byte views of buffer-protocol objects.

pub(crate) mod buffer;
pub(crate) mod datagram;
pub(crate) mod fd_watch;
pub(crate) mod read_buf;
pub(crate) mod sock_ops;
pub(crate) mod stream;
