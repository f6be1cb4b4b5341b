"""TLS on ferroloop: asyncio's ``SSLProtocol`` with a native data path.

``_SSLProtocol`` *is* asyncio's ``sslproto.SSLProtocol`` (3.11's handshake,
shutdown, flow-control and error state machine, its timeouts, log lines
and messages), driving the ``ssl.SSLObject`` the user's ``SSLContext``
makes over two ``ssl.MemoryBIO``s. The methods of the connected state are
a ``_TLSPump``'s (``crates/ferroloop-python/src/io/tls.rs``), bound in the
instance ``__dict__``:

* ``get_buffer``/``buffer_updated``: ciphertext from the socket transport
  into the incoming BIO, then the state's step;
* ``_do_read``, ``_do_read__copied``: plaintext straight into the ``bytes``
  given to ``data_received``, stopping when no whole record is left instead
  of at an ``SSLWantReadError`` per batch;
* ``_process_outgoing``: ciphertext from the outgoing BIO to the socket;
* the application transport's ``write``: encrypts at once when asyncio
  would, and hands every other case to asyncio's ``_write_appdata``.

The pump reads the protocol's state from its ``__dict__`` on every call,
so asyncio's Python methods (handshake, shutdown, ``BufferedProtocol``
reads, queued writes) and the pump take turns on the same state.

Where asyncio's ``SSLProtocol`` lacks a method this relies on (a future
Python), plain ``SSLProtocol`` is used.
"""

from __future__ import annotations

import ssl
from asyncio import sslproto
from typing import Any

from ._ferroloop import _TLSPump

_BASE = sslproto.SSLProtocol
# The asyncio internals the pump stands in for or reads.
_RELIED_ON = (
    "get_buffer",
    "buffer_updated",
    "_do_read",
    "_do_read__copied",
    "_do_read__buffered",
    "_process_outgoing",
    "_write_appdata",
    "_do_write",
    "_do_handshake",
    "_do_flush",
    "_do_shutdown",
    "_control_app_writing",
    "_control_ssl_reading",
    "_call_eof_received",
    "_start_shutdown",
    "_fatal_error",
    "max_size",
)
NATIVE = all(hasattr(_BASE, name) for name in _RELIED_ON) and hasattr(sslproto, "SSLAgainErrors")

# Protocol methods taken by the pump (instance attributes, dropped again by
# connection_lost, which breaks the protocol <-> pump cycle).
_PUMPED = ("get_buffer", "buffer_updated", "_do_read", "_do_read__copied", "_process_outgoing")


class _SSLProtocol(_BASE):  # type: ignore[misc,valid-type]
    """asyncio's ``SSLProtocol`` whose connected state runs in Rust."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        sslobj = self._sslobj
        # A context's own sslobject_class keeps its Python methods.
        raw = sslobj._sslobj if type(sslobj) is ssl.SSLObject else None
        S = sslproto.SSLProtocolState
        pump = _TLSPump(
            self,
            raw,
            sslproto.SSLAgainErrors,
            (S.WRAPPED, S.FLUSHING, S.DO_HANDSHAKE, S.SHUTDOWN),
            _BASE,
        )
        for name in _PUMPED:
            setattr(self, name, getattr(pump, name))
        # The pump lends one read buffer shared by every connection: the
        # 256 KiB asyncio just gave this one goes (asyncio's get_buffer,
        # the pump's fallback, grows it again if it is ever asked to).
        self._ssl_buffer = bytearray()
        self._ssl_buffer_view = memoryview(self._ssl_buffer)
        if self._app_transport is not None:
            self._app_transport.write = pump.write

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        for name in _PUMPED:
            self.__dict__.pop(name, None)


def ssl_protocol_class() -> type:
    """The ``SSLProtocol`` class ferroloop's loops use."""
    return _SSLProtocol if NATIVE else _BASE


async def start_tls(
    self: Any,
    transport: Any,
    protocol: Any,
    sslcontext: Any,
    *,
    server_side: bool = False,
    server_hostname: str | None = None,
    ssl_handshake_timeout: float | None = None,
    ssl_shutdown_timeout: float | None = None,
) -> Any:
    """``loop.start_tls``: asyncio 3.11's steps and errors, with ferroloop's
    ``SSLProtocol``."""
    if not isinstance(sslcontext, ssl.SSLContext):
        raise TypeError(
            f"sslcontext is expected to be an instance of ssl.SSLContext, got {sslcontext!r}"
        )
    if not getattr(transport, "_start_tls_compatible", False):
        raise TypeError(f"transport {transport!r} is not supported by start_tls()")
    waiter = self.create_future()
    ssl_protocol = ssl_protocol_class()(
        self,
        protocol,
        sslcontext,
        waiter,
        server_side,
        server_hostname,
        ssl_handshake_timeout=ssl_handshake_timeout,
        ssl_shutdown_timeout=ssl_shutdown_timeout,
        call_connection_made=False,
    )
    # Paused first, so the protocol's buffer_updated cannot run before its
    # connection_made.
    transport.pause_reading()
    transport.set_protocol(ssl_protocol)
    conmade_cb = self.call_soon(ssl_protocol.connection_made, transport)
    resume_cb = self.call_soon(transport.resume_reading)
    try:
        await waiter
    except BaseException:
        transport.close()
        conmade_cb.cancel()
        resume_cb.cancel()
        raise
    return ssl_protocol._app_transport
