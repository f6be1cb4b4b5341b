"""Shared helpers for the networking / fd-watching behaviour tests.

Plain helpers (not fixtures) so that conftest.py stays untouched.  Every
waiting helper is bounded by a timeout: a broken loop makes a test fail in
seconds, never hang.
"""

import asyncio
import contextlib
import gc
import hashlib
import os
import random
import socket
import struct
import tempfile

# Upper bound for any single wait in the I/O tests (seconds).
TIMEOUT = 10.0


# ---------------------------------------------------------------------------
# file descriptors
# ---------------------------------------------------------------------------

def fd_count():
    """Number of open file descriptors of this process (after a gc pass)."""
    gc.collect()
    gc.collect()
    return len(os.listdir('/proc/self/fd'))


def open_fds():
    """Set of open fd numbers (after a gc pass); for leak diagnostics."""
    gc.collect()
    gc.collect()
    out = {}
    for name in os.listdir('/proc/self/fd'):
        try:
            out[int(name)] = os.readlink(f'/proc/self/fd/{name}')
        except OSError:  # the listdir fd itself, already closed
            pass
    return out


# ---------------------------------------------------------------------------
# sockets
# ---------------------------------------------------------------------------

@contextlib.contextmanager
def socketpair(family=socket.AF_UNIX, type=socket.SOCK_STREAM):
    """A non-blocking socket pair, closed on exit."""
    a, b = socket.socketpair(family, type)
    try:
        a.setblocking(False)
        b.setblocking(False)
        yield a, b
    finally:
        a.close()
        b.close()


@contextlib.contextmanager
def tcp_pair(host='127.0.0.1'):
    """A connected (client, server) pair of non-blocking TCP sockets."""
    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as lsock:
        lsock.bind((host, 0))
        lsock.listen(1)
        client = socket.socket(family, socket.SOCK_STREAM)
        try:
            client.connect(lsock.getsockname())
            server, _ = lsock.accept()
        except BaseException:
            client.close()
            raise
    try:
        client.setblocking(False)
        server.setblocking(False)
        yield client, server
    finally:
        client.close()
        server.close()


@contextlib.contextmanager
def listening_socket(host='127.0.0.1', backlog=16):
    """A plain (blocking) listening TCP socket on an ephemeral port."""
    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, 0))
        sock.listen(backlog)
        yield sock
    finally:
        sock.close()


def unused_port(host='127.0.0.1'):
    """A loopback port nothing listens on (bound, then released)."""
    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def set_linger_rst(sock):
    """Make ``sock.close()`` send a RST (SO_LINGER on, timeout 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                    struct.pack('ii', 1, 0))


def has_ipv6_loopback():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(('::1', 0))
    except OSError:
        return False
    return True


@contextlib.contextmanager
def short_tmpdir(tmp_path):
    """A directory for AF_UNIX socket files (paths must fit sun_path)."""
    if len(str(tmp_path)) < 80:
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(prefix='fl') as d:
        import pathlib
        yield pathlib.Path(d)


# ---------------------------------------------------------------------------
# payloads
# ---------------------------------------------------------------------------

_BLOCK = random.Random(20240229).randbytes((1 << 20) + 7)


def payload(n):
    """``n`` deterministic pseudo-random bytes (not periodic at 2**k)."""
    reps = n // len(_BLOCK) + 1
    return (_BLOCK * reps)[:n]


def sha256(data):
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------
# protocols
# ---------------------------------------------------------------------------

class Recorder(asyncio.Protocol):
    """A protocol that records its events and the bytes it received.

    ``events`` holds the callback names in order; consecutive
    ``data_received`` calls are coalesced into one entry.  ``made``,
    ``eof`` and ``lost`` are futures resolved by the corresponding callback
    (``lost`` gets the exception passed to ``connection_lost``).

    ``echo=True`` writes every chunk back; ``keep_open`` is what
    ``eof_received`` returns; ``pause_on_connect`` pauses reading in
    ``connection_made``.
    """

    def __init__(self, loop, *, echo=False, keep_open=None,
                 pause_on_connect=False):
        self.loop = loop
        self.echo = echo
        self.keep_open = keep_open
        self.pause_on_connect = pause_on_connect
        self.events = []
        self.data = bytearray()
        self.transport = None
        self.exc = None
        self.made = loop.create_future()
        self.eof = loop.create_future()
        self.lost = loop.create_future()
        self._waiters = []

    def _event(self, name):
        if name == 'data_received' and self.events[-1:] == [name]:
            return
        self.events.append(name)

    def connection_made(self, transport):
        self._event('connection_made')
        self.transport = transport
        if self.pause_on_connect:
            transport.pause_reading()
        self.made.set_result(transport)

    def data_received(self, data):
        self._event('data_received')
        self.data += data
        if self.echo:
            self.transport.write(data)
        self._wake()

    def eof_received(self):
        self._event('eof_received')
        self.eof.set_result(None)
        self._wake()
        return self.keep_open

    def connection_lost(self, exc):
        self._event('connection_lost')
        self.exc = exc
        self.lost.set_result(exc)
        self._wake()

    def pause_writing(self):
        self._event('pause_writing')

    def resume_writing(self):
        self._event('resume_writing')

    def _wake(self):
        done = self.lost.done() or self.eof.done()
        for n, fut in self._waiters[:]:
            if len(self.data) >= n or done:
                self._waiters.remove((n, fut))
                if not fut.done():
                    fut.set_result(None)

    async def wait_bytes(self, n, timeout=TIMEOUT):
        """Wait until ``n`` bytes arrived (or EOF / connection loss)."""
        if len(self.data) < n and not (self.lost.done() or self.eof.done()):
            fut = self.loop.create_future()
            self._waiters.append((n, fut))
            await asyncio.wait_for(fut, timeout)
        return bytes(self.data)

    async def wait_lost(self, timeout=TIMEOUT):
        return await asyncio.wait_for(asyncio.shield(self.lost), timeout)


class EchoProtocol(Recorder):
    """Server side of an echo service (closes on EOF, like asyncio's default)."""

    def __init__(self, loop, **kw):
        kw.setdefault('echo', True)
        super().__init__(loop, **kw)


class Factory:
    """A protocol factory that remembers every protocol it made."""

    def __init__(self, cls, loop, **kw):
        self.cls = cls
        self.loop = loop
        self.kw = kw
        self.protocols = []
        self._waiters = []

    def __call__(self):
        proto = self.cls(self.loop, **self.kw)
        self.protocols.append(proto)
        for n, fut in self._waiters[:]:
            if len(self.protocols) >= n:
                self._waiters.remove((n, fut))
                fut.set_result(None)
        return proto

    async def wait_count(self, n, timeout=TIMEOUT):
        """Wait until ``n`` protocols were created."""
        if len(self.protocols) < n:
            fut = self.loop.create_future()
            self._waiters.append((n, fut))
            await asyncio.wait_for(fut, timeout)
        return self.protocols[n - 1]

    async def wait_made(self, n=1, timeout=TIMEOUT):
        """Wait for the n-th protocol's connection_made; return it."""
        proto = await self.wait_count(n, timeout)
        await asyncio.wait_for(asyncio.shield(proto.made), timeout)
        return proto

    async def close_all(self, timeout=TIMEOUT):
        """Close every transport and wait for every connection_lost."""
        await close_protocols(self.protocols, timeout)


async def close_protocols(protocols, timeout=TIMEOUT):
    for proto in protocols:
        tr = proto.transport
        if tr is not None and not tr.is_closing():
            tr.close()
    pending = [p.lost for p in protocols if p.transport is not None]
    if pending:
        await asyncio.wait_for(asyncio.gather(*pending), timeout)


@contextlib.asynccontextmanager
async def serving(server):
    """Close ``server`` and wait for it on exit."""
    try:
        yield server
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)


def server_port(server):
    return server.sockets[0].getsockname()[1]


async def read_all(loop, sock, n, timeout=TIMEOUT, chunk=1 << 18):
    """sock_recv until ``n`` bytes arrived or EOF; returns the bytes."""
    buf = bytearray()

    async def _go():
        while len(buf) < n:
            data = await loop.sock_recv(sock, chunk)
            if not data:
                break
            buf.extend(data)
    await asyncio.wait_for(_go(), timeout)
    return bytes(buf)


async def read_until_eof(loop, sock, timeout=TIMEOUT, chunk=1 << 18):
    """sock_recv until EOF; returns the bytes."""
    buf = bytearray()

    async def _go():
        while True:
            data = await loop.sock_recv(sock, chunk)
            if not data:
                return
            buf.extend(data)
    await asyncio.wait_for(_go(), timeout)
    return bytes(buf)
