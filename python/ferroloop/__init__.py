"""ferroloop: asyncio's event loop, Futures and Tasks, implemented in Rust.

Three ways to use it::

    ferroloop.run(main())                      # like asyncio.run
    ferroloop.install(); asyncio.run(main())   # policy for the whole program
    python -m ferroloop script.py              # an unmodified script

The hot paths (ready queue, timers, Handles, Future, Task, the fd table) are
native; this module adds the parts of the event-loop API that are bookkeeping
rather than scheduling (exception handler, executors, async-generator hooks,
``run_until_complete``), reusing asyncio's own implementations of them where
they only read public loop state, so behaviour and messages stay asyncio's.

I/O that is not native yet (servers' accept loop, UDP, pipes, TLS,
signals, the subprocess transport) is asyncio's Unix selector-loop code
running on ferroloop's native fd watches: see ``_adopt_asyncio_io`` below
for the rule that decides what is taken.  Stream transports and ``sock_*``
are native (``_transport.py``, ``io/``); children are reaped through pidfds
instead of a child watcher (``_children.py``).
"""

from __future__ import annotations

import asyncio
import selectors
import signal
import socket
import sys
import threading
import warnings
import weakref
from asyncio import base_events as _base_events
from asyncio import constants as _constants
from asyncio import coroutines as _coroutines
from asyncio import events as _events
from asyncio import unix_events as _unix_events
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ._children import close_child_watches as _close_child_watches
from ._children import make_subprocess_transport as _make_subprocess_transport
from ._datagram import make_datagram_transport as _make_datagram_transport
from ._ferroloop import (
    Future,
    Handle,
    Task,
    TimerHandle,
    __version__,
    _Loop,
    _sock_read_call,
    _sock_recv,
    _sock_recv_into,
    _sock_sendall,
    _sock_write_call,
)
from ._tls import ssl_protocol_class as _ssl_protocol_class
from ._tls import start_tls as _start_tls
from ._transport import _SocketTransport

__all__ = [
    "Loop",
    "Future",
    "Task",
    "Handle",
    "TimerHandle",
    "EventLoopPolicy",
    "new_event_loop",
    "install",
    "run",
    "__version__",
]

_T = TypeVar("_T")
_Base = _base_events.BaseEventLoop


class Loop(_Loop, asyncio.AbstractEventLoop):  # type: ignore[misc]
    """An asyncio event loop whose core, Futures and Tasks are native.

    ``native_tasks=False`` makes ``create_future``/``create_task`` use
    asyncio's own Future and Task classes (for comparison, or as a fallback).
    """

    def __init__(self, *, native_tasks: bool = True) -> None:
        self._native_tasks = native_tasks
        self._thread_id: int | None = None
        self._exception_handler: Callable[..., Any] | None = None
        self._default_executor: Any = None
        self._executor_shutdown_called = False
        self._asyncgens: weakref.WeakSet[Any] = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._current_handle: Any = None
        self._coroutine_origin_tracking_enabled = False
        self._coroutine_origin_tracking_saved_depth: int | None = None
        # fd -> transport, read by asyncio's I/O code (_ensure_fd_no_transport).
        self._transports: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
        # Signals (asyncio's code, see _adopt_asyncio_io): handlers by signal
        # number, and the socket pair signal.set_wakeup_fd writes to, made
        # when the first handler is added (a loop without signal handlers
        # watches no fd, so its idle iterations make no syscall).
        self._signal_handlers: dict[int, Any] = {}
        self._ssock: socket.socket | None = None
        self._csock: socket.socket | None = None
        # The reactor's signal wake-up fd while run_forever holds
        # signal.set_wakeup_fd (see _claim_wakeup_fd).
        self._wakeup_fd: int | None = None
        # Children being waited for: pidfd -> (pid, transport); _children.py.
        self._child_pidfds: dict[int, tuple[int, Any]] = {}
        self.set_debug(_coroutines._is_debug_mode())

    # -- state asyncio's helpers read ----------------------------------------
    @property
    def _selector(self) -> _SelectorView | None:
        return None if self.is_closed() else _SelectorView(self)

    @property
    def _debug(self) -> bool:
        return self.get_debug()

    @property
    def _closed(self) -> bool:
        return self.is_closed()

    def __repr__(self) -> str:
        return (
            f"<{self.__class__.__name__} running={self.is_running()} "
            f"closed={self.is_closed()} debug={self.get_debug()}>"
        )

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if not self.is_closed():
            _warn(f"unclosed event loop {self!r}", ResourceWarning, source=self)
            if not self.is_running():
                self.close()

    # -- running ---------------------------------------------------------------
    def run_forever(self) -> None:
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self.get_debug())
        old_agen_hooks = sys.get_asyncgen_hooks()
        try:
            self._thread_id = threading.get_ident()
            sys.set_asyncgen_hooks(
                firstiter=self._asyncgen_firstiter_hook,
                finalizer=self._asyncgen_finalizer_hook,
            )
            _events._set_running_loop(self)
            wakeup = self._claim_wakeup_fd()
            try:
                self._run()
            finally:
                self._release_wakeup_fd(wakeup)
        finally:
            self._thread_id = None
            _events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            sys.set_asyncgen_hooks(*old_agen_hooks)

    def _claim_wakeup_fd(self) -> int | None:
        # While it runs in the main thread with nobody else's wake-up fd set,
        # the loop gives signal.set_wakeup_fd its reactor's pipe: a signal
        # that arrives just before a blocking poll (Ctrl-C with no handler,
        # asyncio.run's SIGINT handler) still ends the poll at once, where
        # asyncio's poll would sleep on (ferroloop_core::signal_wake).
        if self._signal_handlers:
            return None  # asyncio's self-pipe is the wake-up fd already
        try:
            fd = self._signal_wakeup_fd()
            prev = signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
        except (ValueError, OSError):
            return None  # not the main thread of the main interpreter
        if prev != -1:
            signal.set_wakeup_fd(prev)  # someone else's: theirs stays
            return None
        self._wakeup_fd = fd
        return fd

    def _release_wakeup_fd(self, fd: int | None) -> None:
        if fd is None:
            return
        self._wakeup_fd = None
        try:
            current = signal.set_wakeup_fd(-1)
        except ValueError:
            return
        if current not in (fd, -1):
            signal.set_wakeup_fd(current)  # add_signal_handler's, meanwhile

    run_until_complete = _Base.run_until_complete
    _check_running = _Base._check_running

    def close(self) -> None:
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        if self.get_debug():
            _base_events.logger.debug("Close %r", self)
        self._close_self_pipe()
        self._close()
        _close_child_watches(self)  # after: a waiting thread sees a closed loop
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)
        # As asyncio's Unix loop: signal handlers go with the loop.
        if not sys.is_finalizing():
            for sig in list(self._signal_handlers):
                self.remove_signal_handler(sig)
        elif self._signal_handlers:
            warnings.warn(
                f"Closing the loop {self!r} on interpreter shutdown stage, "
                "skipping signal handlers removal",
                ResourceWarning,
                stacklevel=2,
                source=self,
            )
            self._signal_handlers.clear()

    # -- transports --------------------------------------------------------------
    def _make_socket_transport(
        self,
        sock: socket.socket,
        protocol: Any,
        waiter: Any = None,
        *,
        extra: Any = None,
        server: Any = None,
    ) -> _SocketTransport:
        self._ensure_fd_no_transport(sock)
        return _SocketTransport(self, sock, protocol, waiter, extra, server)

    def _make_ssl_transport(
        self,
        rawsock: socket.socket,
        protocol: Any,
        sslcontext: Any,
        waiter: Any = None,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        extra: Any = None,
        server: Any = None,
        ssl_handshake_timeout: float | None = _constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: float | None = _constants.SSL_SHUTDOWN_TIMEOUT,
    ) -> Any:
        # asyncio's SSLProtocol with a native data path (_tls.py), over the
        # native socket transport (asyncio's own builds its Python
        # _SelectorSocketTransport here).
        ssl_protocol = _ssl_protocol_class()(
            self,
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        self._make_socket_transport(rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport

    # -- TLS upgrade: asyncio's steps, ferroloop's SSLProtocol (_tls.py) -------
    start_tls = _start_tls

    # -- datagrams: asyncio's transport with a native data path (_datagram.py)
    _make_datagram_transport = _make_datagram_transport

    # -- subprocesses: reaped through pidfds, no child watcher (_children.py) --
    _make_subprocess_transport = _make_subprocess_transport

    # -- sock_* (native: ferroloop-python's io/sock_ops.rs) ---------------------
    # asyncio's coroutines, their checks first (at await time, as asyncio's);
    # the native part returns the result when the socket is ready now, else
    # a future.
    async def sock_recv(self, sock: socket.socket, n: int) -> bytes:
        _base_events._check_ssl_socket(sock)  # type: ignore[attr-defined]
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        r = _sock_recv(self, sock, n)
        return r if r.__class__ is bytes else await r  # type: ignore[no-any-return]

    async def sock_recv_into(self, sock: socket.socket, buf: Any) -> int:
        _base_events._check_ssl_socket(sock)  # type: ignore[attr-defined]
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        r = _sock_recv_into(self, sock, buf)
        return r if r.__class__ is int else await r  # type: ignore[no-any-return]

    async def sock_accept(self, sock: socket.socket) -> tuple[socket.socket, Any]:
        _base_events._check_ssl_socket(sock)  # type: ignore[attr-defined]
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        r = _sock_read_call(self, sock, "accept", ())
        conn, address = r if r.__class__ is tuple else await r
        conn.setblocking(False)
        return conn, address

    async def sock_recvfrom(self, sock: socket.socket, bufsize: int) -> tuple[bytes, Any]:
        _base_events._check_ssl_socket(sock)  # type: ignore[attr-defined]
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        r = _sock_read_call(self, sock, "recvfrom", (bufsize,))
        return r if r.__class__ is tuple else await r  # type: ignore[no-any-return]

    async def sock_recvfrom_into(
        self, sock: socket.socket, buf: Any, nbytes: int = 0
    ) -> tuple[int, Any]:
        _base_events._check_ssl_socket(sock)  # type: ignore[attr-defined]
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        if not nbytes:
            nbytes = len(buf)
        r = _sock_read_call(self, sock, "recvfrom_into", (buf, nbytes))
        return r if r.__class__ is tuple else await r  # type: ignore[no-any-return]

    async def sock_sendto(self, sock: socket.socket, data: Any, address: Any) -> int:
        _base_events._check_ssl_socket(sock)  # type: ignore[attr-defined]
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        r = _sock_write_call(self, sock, "sendto", (data, address), (data, 0, address))
        return r if r.__class__ is int else await r  # type: ignore[no-any-return]

    async def sock_sendall(self, sock: socket.socket, data: Any) -> None:
        _base_events._check_ssl_socket(sock)  # type: ignore[attr-defined]
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        r = _sock_sendall(self, sock, data)
        if r is not None:
            await r

    # -- signals -----------------------------------------------------------------
    def add_signal_handler(self, sig: int, callback: Callable[..., object], *args: Any) -> None:
        if self._csock is None and not self.is_closed():
            self._make_self_pipe()
        _unix_events._UnixSelectorEventLoop.add_signal_handler(self, sig, callback, *args)

    def remove_signal_handler(self, sig: int) -> bool:
        removed: bool = _unix_events._UnixSelectorEventLoop.remove_signal_handler(self, sig)
        if self._wakeup_fd is not None and not self._signal_handlers:
            # asyncio let go of the wake-up fd (-1): the running loop's again.
            try:
                signal.set_wakeup_fd(self._wakeup_fd, warn_on_full_buffer=False)
            except ValueError:
                pass
        return removed

    def _make_self_pipe(self) -> None:
        self._ssock, self._csock = socket.socketpair()
        self._ssock.setblocking(False)
        self._csock.setblocking(False)
        self._add_reader(self._ssock.fileno(), self._read_from_self)

    def _close_self_pipe(self) -> None:
        if self._ssock is None or self._csock is None:
            return
        self._remove_reader(self._ssock.fileno())
        self._ssock.close()
        self._csock.close()
        self._ssock = self._csock = None

    def _add_callback_signalsafe(self, handle: Any) -> None:
        # Reached from _handle_signal, on the loop's thread (the wake-up
        # byte was read by _read_from_self): queue like asyncio's
        # _add_callback, which skips a handle cancelled by then.
        self.call_soon(_run_signal_handle, handle)

    # -- debug -------------------------------------------------------------------
    def set_debug(self, enabled: bool) -> None:
        self._set_debug_flag(bool(enabled))
        if self.is_running():
            self.call_soon_threadsafe(self._set_coroutine_origin_tracking, enabled)

    _set_coroutine_origin_tracking = _Base._set_coroutine_origin_tracking
    _check_callback = _Base._check_callback
    _check_thread = _Base._check_thread

    def _log_slow_callback(self, handle: Any, duration: float) -> None:
        _base_events.logger.warning(
            "Executing %s took %.3f seconds", _base_events._format_handle(handle), duration
        )

    # -- errors ------------------------------------------------------------------
    get_exception_handler = _Base.get_exception_handler
    set_exception_handler = _Base.set_exception_handler
    default_exception_handler = _Base.default_exception_handler
    call_exception_handler = _Base.call_exception_handler

    # -- executors ---------------------------------------------------------------
    run_in_executor = _Base.run_in_executor
    set_default_executor = _Base.set_default_executor
    _check_default_executor = _Base._check_default_executor
    shutdown_default_executor = _Base.shutdown_default_executor
    _do_shutdown = _Base._do_shutdown

    # -- async generators --------------------------------------------------------
    _asyncgen_firstiter_hook = _Base._asyncgen_firstiter_hook
    _asyncgen_finalizer_hook = _Base._asyncgen_finalizer_hook
    shutdown_asyncgens = _Base.shutdown_asyncgens


# What asyncio's selector loop does *around* its selector, ferroloop does
# natively (the iteration, the ready queue, the fd table: ``_add_reader`` &
# co. are ``_Loop`` methods); none of these is taken from asyncio.
_NOT_FROM_ASYNCIO = frozenset(
    {
        "_run_once",
        "_process_events",
        "_call_soon",
        "_add_callback",
        "_add_reader",
        "_add_writer",
        "_remove_reader",
        "_remove_writer",
    }
)


def _run_signal_handle(handle: Any) -> None:
    if not handle._cancelled:
        handle._run()


def _adopt_asyncio_io(cls: type) -> list[str]:
    """Gives ``cls`` asyncio's own I/O methods (sockets, transports, servers,
    DNS, sendfile, datagrams, pipes, TLS, signals, subprocesses), taken from the Unix selector
    loop's classes in method-resolution order: every method that ``cls`` and
    its native base do not define, minus ``_NOT_FROM_ASYNCIO``. They reach
    the loop only through its public methods and the native fd watches, so
    their behaviour and messages are asyncio's for the running Python
    version. Returns the names taken (for tests and docs)."""
    own = {
        name
        for klass in cls.__mro__
        if klass not in (_events.AbstractEventLoop, object)
        for name in vars(klass)
    }
    taken = []
    for base in _unix_events._UnixSelectorEventLoop.__mro__:
        if base in (_events.AbstractEventLoop, object):
            continue
        for name, value in vars(base).items():
            if name.startswith("__") or name in _NOT_FROM_ASYNCIO or name in own:
                continue
            setattr(cls, name, value)
            own.add(name)
            taken.append(name)
    return sorted(taken)


_ASYNCIO_IO_METHODS = _adopt_asyncio_io(Loop)


class _SelectorView:
    """The read-only face of a selector that asyncio's transports consult
    for their reprs (``_test_selector_event``: is this fd watched for
    reading?). The fd table itself is native (``_Loop._fd_key``)."""

    __slots__ = ("_loop",)

    def __init__(self, loop: Loop) -> None:
        self._loop = loop

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        key = self._loop._fd_key(fileobj)
        if key is None:
            raise KeyError(f"{fileobj!r} is not registered")
        obj, fd, events, reader, writer = key
        return selectors.SelectorKey(obj, fd, events, (reader, writer))


def new_event_loop(*, native_tasks: bool = True) -> Loop:
    """Returns a new ferroloop event loop."""
    return Loop(native_tasks=native_tasks)


class EventLoopPolicy(_unix_events.DefaultEventLoopPolicy):  # type: ignore[misc,valid-type]
    """asyncio's default (Unix) policy, creating ferroloop loops.  Its child
    watcher is not used by them: a ferroloop loop reaps its own children
    through pidfds (``_children.py``).

    As with the standard policy (and unlike uvloop's), ``get_event_loop()``
    called in the main thread with no loop set creates and sets one.
    """

    _loop_factory = Loop

    def __repr__(self) -> str:
        return f"<{self.__class__.__name__}>"


def install() -> None:
    """Makes ferroloop the event loop of every ``asyncio.run``/``new_event_loop``."""
    asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = None) -> _T:
    """Like ``asyncio.run(main)``, on a new ferroloop loop."""
    if _events._get_running_loop() is not None:
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)
