"""The Python face of ferroloop's UDP transports.

``_DatagramTransport`` is asyncio's own ``_SelectorDatagramTransport``
(3.11's code and messages for the send queue, flow control, ``close``,
``abort``, errors and ``repr``) with its data path native
(``crates/ferroloop-python/src/io/datagram.rs``, ``_DatagramCore``):

* reading is not asyncio's reader Handle calling ``_read_ready`` once per
  datagram, but the core's fd watch, which reads batches of datagrams and
  calls ``protocol.datagram_received`` itself;
* ``sendto`` is the core's method, bound in the instance ``__dict__``: it
  sends at once when asyncio would, and hands every other case (a queue
  to append to, a lost connection, an address that is not an IP literal,
  bad arguments, a send that would block) to asyncio's ``sendto``.

AF_INET and AF_INET6 sockets only; other families (AF_UNIX datagram
sockets) get asyncio's transport unchanged.
"""

from __future__ import annotations

import socket
from asyncio import selector_events, transports
from typing import Any

from ._ferroloop import _DatagramCore

_AsyncioDatagramTransport = selector_events._SelectorDatagramTransport
_NATIVE_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def make_datagram_transport(
    loop: Any,
    sock: socket.socket,
    protocol: Any,
    address: Any = None,
    waiter: Any = None,
    extra: Any = None,
) -> Any:
    """``loop._make_datagram_transport``."""
    if sock.family in _NATIVE_FAMILIES:
        return _DatagramTransport(loop, sock, protocol, address, waiter, extra)
    return _AsyncioDatagramTransport(loop, sock, protocol, address, waiter, extra)


class _DatagramTransport(_AsyncioDatagramTransport, transports.DatagramTransport):  # type: ignore[misc,valid-type]
    """asyncio's datagram transport, reading and sending in Rust; also an
    ``asyncio.DatagramTransport`` (3.11's selector transport is not one)."""

    def __init__(
        self,
        loop: Any,
        sock: socket.socket,
        protocol: Any,
        address: Any = None,
        waiter: Any = None,
        extra: Any = None,
    ) -> None:
        super().__init__(loop, sock, protocol, address, waiter, extra)
        connected = bool(self._extra["peername"])
        self._core = _DatagramCore(loop, self, sock, connected, _AsyncioDatagramTransport.sendto)
        self.sendto = self._core.sendto

    def _read_ready(self) -> None:
        # What the core's fd watch runs (named so in debug-mode Handles and
        # in "Exception in callback" reports, as asyncio's reader Handle).
        self._core._read_ready()

    def _add_reader(self, fd: Any, callback: Any, *args: Any) -> None:
        # asyncio starts (and resumes) reading with
        # _add_reader(self._sock_fd, self._read_ready): the core's watch.
        if fd == self._sock_fd and callback == self._read_ready and not args:
            if self.is_reading():
                self._core._start_reading()
            return
        super()._add_reader(fd, callback, *args)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        self._core._detach()  # before asyncio closes the socket
        super()._call_connection_lost(exc)
