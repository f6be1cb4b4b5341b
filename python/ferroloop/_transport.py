"""The Python face of ferroloop's native stream transport.

``_SocketTransport`` is what ``create_connection``, ``create_server``,
``connect_accepted_socket`` and the Unix variants hand to protocols: an
``asyncio.Transport`` (a native class cannot subclass it: the ``__slots__``
of ``asyncio.BaseTransport`` fix its instance layout) whose state and data
path live in ``_StreamCore`` (``crates/ferroloop-python/src/io/stream.rs``).
The methods a protocol calls per message are bound straight to the core in
the instance's ``__dict__``, so no Python frame runs between a protocol and
the socket; the rest forward through ordinary methods.
"""

from __future__ import annotations

import math
import socket
import sys
import warnings
from asyncio import base_events, constants, futures, transports, trsock
from typing import Any

from ._ferroloop import _StreamCore

# Called per message by protocols and streams: bound to the core per instance.
_HOT_METHODS = (
    "write",
    "writelines",
    "is_closing",
    "is_reading",
    "pause_reading",
    "resume_reading",
    "get_write_buffer_size",
)

_ATTACH_WITH_TRANSPORT = sys.version_info >= (3, 12)


def _byte_count(limit: Any) -> int:
    """A water mark as a whole number of bytes (infinite: the largest)."""
    return math.floor(min(limit, 1 << 62))


class _SocketTransport(transports._FlowControlMixin):  # type: ignore[misc,name-defined]
    """asyncio's socket transport (``_SelectorSocketTransport``'s behaviour),
    native. TCP and Unix stream sockets. A ``_FlowControlMixin`` as asyncio's
    (``loop.sendfile``'s fallback requires one), with the flow-control state
    in the core."""

    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE
    max_size = 256 * 1024  # read size, as asyncio's
    _core: _StreamCore | None = None  # set first thing; __del__ reads it

    def __init__(
        self,
        loop: Any,
        sock: socket.socket,
        protocol: Any,
        waiter: Any = None,
        extra: Any = None,
        server: Any = None,
    ) -> None:
        # BaseTransport's __init__ only: the mixin's state is the core's.
        transports.BaseTransport.__init__(self, extra)
        self._extra["socket"] = trsock.TransportSocket(sock)
        try:
            self._extra["sockname"] = sock.getsockname()
        except OSError:
            self._extra["sockname"] = None
        if "peername" not in self._extra:
            try:
                self._extra["peername"] = sock.getpeername()
            except OSError:
                self._extra["peername"] = None
        self._sock_fd = sock.fileno()
        self._server = server
        core = _StreamCore(loop, self, sock, protocol, server, self.max_size)
        self._core = core
        d = self.__dict__
        for name in _HOT_METHODS:
            d[name] = getattr(core, name)
        if server is not None:
            if _ATTACH_WITH_TRANSPORT:
                server._attach(self)
            else:
                server._attach()
        loop._transports[self._sock_fd] = self
        base_events._set_nodelay(sock)  # type: ignore[attr-defined]
        loop.call_soon(protocol.connection_made, self)
        # only start reading when connection_made() has been called
        loop.call_soon(core._start_reading)
        if waiter is not None:
            # only wake up the waiter when connection_made() has been called
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)  # type: ignore[attr-defined]

    # -- state asyncio's code and tests read --------------------------------
    @property
    def _sock(self) -> socket.socket | None:
        return self._core._sock if self._core is not None else None

    @property  # type: ignore[override]
    def _loop(self) -> Any:
        return self._core._loop if self._core is not None else None

    @property
    def _protocol(self) -> Any:
        return self._core.get_protocol() if self._core is not None else None

    @property
    def _closing(self) -> bool:
        return self._core is not None and self._core._closing

    @property
    def _paused(self) -> bool:
        return self._core is not None and self._core._paused

    @property
    def _conn_lost(self) -> int:
        return self._core._conn_lost if self._core is not None else 0

    @property  # type: ignore[override]
    def _protocol_paused(self) -> bool:
        return self._core is not None and self._core._protocol_paused

    def __repr__(self) -> str:
        core = self._core
        info = [self.__class__.__name__]
        if core is None or core._sock is None:
            info.append("closed")
        elif core._closing:
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        loop = core._loop if core is not None else None
        if loop is not None and not loop.is_closed():
            reading, writing = core._polling()  # type: ignore[union-attr]
            info.append("read=polling" if reading else "read=idle")
            state = "polling" if writing else "idle"
            info.append(f"write=<{state}, bufsize={core.get_write_buffer_size()}>")  # type: ignore[union-attr]
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn: Any = warnings.warn) -> None:
        core = self._core
        if core is not None and core._sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            core._sock.close()

    # -- the transport API (hot ones are rebound per instance, see above) --
    def write(self, data: Any) -> None:
        self._core.write(data)  # type: ignore[union-attr]

    def writelines(self, list_of_data: Any) -> None:
        self._core.writelines(list_of_data)  # type: ignore[union-attr]

    def write_eof(self) -> None:
        self._core.write_eof()  # type: ignore[union-attr]

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        self._core.close()  # type: ignore[union-attr]

    def abort(self) -> None:
        self._core.abort()  # type: ignore[union-attr]

    def is_closing(self) -> bool:
        return self._core.is_closing()  # type: ignore[union-attr]

    def is_reading(self) -> bool:
        return self._core.is_reading()  # type: ignore[union-attr]

    def pause_reading(self) -> None:
        self._core.pause_reading()  # type: ignore[union-attr]

    def resume_reading(self) -> None:
        self._core.resume_reading()  # type: ignore[union-attr]

    def set_protocol(self, protocol: Any) -> None:
        self._core.set_protocol(protocol)  # type: ignore[union-attr]

    def get_protocol(self) -> Any:
        return self._core.get_protocol()  # type: ignore[union-attr]

    def get_write_buffer_size(self) -> int:
        return self._core.get_write_buffer_size()  # type: ignore[union-attr]

    def get_write_buffer_limits(self) -> tuple[Any, Any]:
        limits = self.__dict__.get("_limits")
        if limits is not None:
            return limits  # type: ignore[no-any-return]
        return self._core.get_write_buffer_limits()  # type: ignore[union-attr]

    def set_write_buffer_limits(self, high: Any = None, low: Any = None) -> None:
        # asyncio's arithmetic and message, on any numbers (floats too); the
        # core compares whole byte counts, which floor() keeps exact.
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._limits = (low, high)
        self._core.set_write_buffer_limits(_byte_count(high), _byte_count(low))  # type: ignore[union-attr]

    # -- what asyncio's loop code calls (sendfile, errors) ------------------
    def _make_empty_waiter(self) -> Any:
        return self._core._make_empty_waiter()  # type: ignore[union-attr]

    def _reset_empty_waiter(self) -> None:
        self._core._reset_empty_waiter()  # type: ignore[union-attr]

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on transport") -> None:
        self._core._fatal_error(exc, message)  # type: ignore[union-attr]

    def _force_close(self, exc: BaseException | None) -> None:
        self._core._force_close(exc)  # type: ignore[union-attr]

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        self._core._call_connection_lost(exc)  # type: ignore[union-attr]

    def _read_ready(self) -> None:
        self._core._read_ready()  # type: ignore[union-attr]

    def _write_ready(self) -> None:
        self._core._write_ready()  # type: ignore[union-attr]
