"""I/O under faults and load: fd exhaustion, many connections, a huge echo,
writes after connection loss, unclosed transports, logging of peer resets.

Expected behaviour: CPython 3.11's selector loop (selector_events.py
BaseSelectorEventLoop._accept_connection, _SelectorTransport.write /
__del__ / _fatal_error; constants.py ACCEPT_RETRY_DELAY and
LOG_THRESHOLD_FOR_CONNLOST_WRITES).  Everything runs over 127.0.0.1 on
ephemeral ports.

Not tested: a ResourceWarning for an unclosed *Server*.  CPython 3.11's
base_events.Server has no ``__del__`` and never warns (the only warnings
are the socket module's own ones for its listening sockets), debug mode or
not.
"""

import asyncio
import contextlib
import errno
import gc
import hashlib
import logging
import random
import re
import resource
import socket
import time
import warnings

import pytest
from io_helpers import (
    TIMEOUT,
    EchoProtocol,
    Factory,
    Recorder,
    fd_count,
    listening_socket,
    open_fds,
    read_all,
    serving,
    set_linger_rst,
)

ACCEPT_RETRY_DELAY = asyncio.constants.ACCEPT_RETRY_DELAY            # 1 s
LOG_THRESHOLD = asyncio.constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES  # 5


def wait(aw, timeout=TIMEOUT):
    return asyncio.wait_for(aw, timeout)


async def wait_until(predicate, timeout=TIMEOUT, interval=0.01):
    """Poll ``predicate()`` until it is true (bounded by ``timeout``)."""
    async def _poll():
        while not predicate():
            await asyncio.sleep(interval)
    await asyncio.wait_for(_poll(), timeout)


@contextlib.contextmanager
def soft_nofile_limit(soft):
    """Set the soft RLIMIT_NOFILE to ``soft``; always restore it on exit."""
    old_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (old_soft, hard))


def lowest_free_fd():
    used = set(open_fds())
    fd = 0
    while fd in used:
        fd += 1
    return fd


# ---------------------------------------------------------------------------
# accept() failing with EMFILE
# ---------------------------------------------------------------------------

def test_accept_emfile_pauses_then_recovers(loop, run, loop_errors):
    """asyncio reports 'socket.accept() out of system resource', stops
    watching the listening socket for ACCEPT_RETRY_DELAY (1 s) instead of
    spinning on it, and accepts the queued connections once fds are
    available again.

    (CPython 3.11 keeps looping ``for _ in range(backlog)`` after the
    EMFILE, so one readiness event reports up to ``backlog`` times; only
    the bounds 1..backlog per retry round are asserted.)
    """
    n_clients = 4
    backlog = 8
    window = ACCEPT_RETRY_DELAY + 0.6

    async def main():
        sf = Factory(EchoProtocol, loop)
        server = await wait(loop.create_server(sf, '127.0.0.1', 0,
                                               backlog=backlog))
        addr = server.sockets[0].getsockname()
        lfd = server.sockets[0].fileno()
        clients = [socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                   for _ in range(n_clients)]
        try:
            async with serving(server):
                # The kernel hands out the lowest free fd number and refuses
                # any number >= the soft limit: with the limit at the lowest
                # free number, accept() has no fd left to use.
                limit = lowest_free_fd()
                with soft_nofile_limit(limit):
                    for i, c in enumerate(clients):
                        # A blocking connect() completes in the listen
                        # backlog; it needs no new fd.
                        c.connect(addr)
                        c.sendall(b'client %d' % i)
                    await wait_until(lambda: loop_errors)
                    t0 = time.monotonic()
                    cpu0 = time.process_time()
                    samples = []
                    while True:
                        elapsed = time.monotonic() - t0
                        samples.append((elapsed, len(loop_errors)))
                        if elapsed >= window:
                            break
                        await asyncio.sleep(0.02)
                    cpu = time.process_time() - cpu0
                    wall = time.monotonic() - t0
                    errors_at_restore = len(loop_errors)
                    accepted_while_limited = len(sf.protocols)
                # --- the limit is restored here ---

                def count_at(t):
                    return [n for el, n in samples if el <= t][-1]

                assert accepted_while_limited == 0
                first_round = count_at(0.1)
                assert 1 <= first_round <= backlog, samples
                # Paused: no new accept() attempt during the retry delay...
                assert count_at(ACCEPT_RETRY_DELAY - 0.2) == first_round, samples
                # ...but a retry (failing again) after it.
                assert errors_at_restore > first_round, samples
                assert errors_at_restore <= 3 * backlog, samples
                # No busy loop while paused.
                assert cpu < 0.3, (
                    f'{cpu:.3f} s CPU in {wall:.3f} s with accept() '
                    f'failing (busy loop?)')

                for ctx in loop_errors:
                    assert ctx['message'] == 'socket.accept() out of system resource'
                    exc = ctx['exception']
                    assert isinstance(exc, OSError)
                    assert exc.errno == errno.EMFILE
                    assert ctx['socket'].fileno() == lfd

                # Fds available again: the next retry accepts the queued
                # connections and they are served.
                for i, c in enumerate(clients):
                    c.setblocking(False)
                    msg = b'client %d' % i
                    assert await read_all(loop, c, len(msg)) == msg
                assert len(sf.protocols) == n_clients
                reader, writer = await wait(asyncio.open_connection(*addr))
                writer.write(b'fresh')
                assert await wait(reader.readexactly(5)) == b'fresh'
                writer.close()
                await wait(writer.wait_closed())
                assert len(loop_errors) == errors_at_restore
                await sf.close_all()
        finally:
            for c in clients:
                c.close()
    run(main())


# ---------------------------------------------------------------------------
# many connections
# ---------------------------------------------------------------------------

@contextlib.contextmanager
def nofile_at_least(need):
    """Raise the soft RLIMIT_NOFILE to >= ``need`` (restored on exit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f'RLIMIT_NOFILE hard limit {hard} < {need} fds needed')
        new = hard if hard != resource.RLIM_INFINITY else need
        with soft_nofile_limit(new):
            yield
    else:
        yield


def test_5000_connections_opened_and_closed(loop, run):
    """5 waves of 1,000 concurrent open_connection() clients against one
    server; every one is echoed and no fd stays open."""
    waves, per_wave = 5, 1000
    # client + server side of each connection, above the highest fd in use.
    need = max(open_fds()) + 2 * per_wave + 200

    async def main():
        fds_start = fd_count()
        sf = Factory(EchoProtocol, loop)
        server = await wait(loop.create_server(sf, '127.0.0.1', 0,
                                               backlog=per_wave + 100))
        addr = server.sockets[0].getsockname()

        async def client(i):
            reader, writer = await asyncio.open_connection(*addr)
            try:
                msg = b'connection %d\n' % i
                writer.write(msg)
                await writer.drain()
                echoed = await reader.readexactly(len(msg))
            finally:
                writer.close()
                await writer.wait_closed()
            return echoed

        async with serving(server):
            for wave in range(waves):
                ids = range(wave * per_wave, (wave + 1) * per_wave)
                echoed = await wait(asyncio.gather(*(client(i) for i in ids)))
                assert echoed == [b'connection %d\n' % i for i in ids]
                # Server side: EOF from the client closes each transport.
                assert len(sf.protocols) == per_wave
                excs = await wait(asyncio.gather(*(p.lost for p in sf.protocols)))
                assert excs == [None] * per_wave
                sf.protocols.clear()
        await asyncio.sleep(0)
        assert fd_count() == fds_start

    with nofile_at_least(need):
        run(main())


# ---------------------------------------------------------------------------
# a huge echo under backpressure
# ---------------------------------------------------------------------------

class FlowControlledEcho(asyncio.Protocol):
    """Echo server that stops reading while its write side is paused."""

    def __init__(self, loop):
        self.lost = loop.create_future()
        self.pauses = 0

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def pause_writing(self):
        self.pauses += 1
        self.transport.pause_reading()

    def resume_writing(self):
        self.transport.resume_reading()

    def connection_lost(self, exc):
        self.lost.set_result(exc)


class HashingClient(asyncio.Protocol):
    """Hashes everything it receives; honours pause/resume_writing."""

    def __init__(self, loop):
        self.loop = loop
        self.received = hashlib.sha256()
        self.nreceived = 0
        self.paused = False
        self.pauses = 0
        self._resume = None
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.received.update(data)
        self.nreceived += len(data)

    def pause_writing(self):
        assert not self.paused
        self.paused = True
        self.pauses += 1

    def resume_writing(self):
        assert self.paused
        self.paused = False
        self._wake()

    def connection_lost(self, exc):
        self.lost.set_result(exc)
        self._wake()

    def _wake(self):
        if self._resume is not None and not self._resume.done():
            self._resume.set_result(None)

    async def writable(self):
        if self.paused and not self.lost.done():
            self._resume = self.loop.create_future()
            await self._resume


def test_1gib_echo_sha256_under_backpressure(loop, run):
    """1 GiB written in 1 MiB chunks (a seeded pattern, never two equal
    neighbours) through a loopback echo server with flow control on both
    sides; the sha256 of what came back equals that of what was sent.

    Measured on the 2-core development machine: ~2.9 s on the stdlib loop
    (~2.5 s on ferroloop), well under the 25 s budget, so the full 1 GiB the
    issue asks for is kept.
    """
    chunk = 1 << 20
    nchunks = 1024                      # 1 GiB
    prime = 4099
    base = memoryview(random.Random(0xF0E1).randbytes(chunk + prime))

    def chunk_at(i):
        off = (i * 997) % prime
        return base[off:off + chunk]

    async def main():
        server_protos = []

        def factory():
            server_protos.append(FlowControlledEcho(loop))
            return server_protos[-1]

        server = await wait(loop.create_server(factory, '127.0.0.1', 0))
        async with serving(server):
            addr = server.sockets[0].getsockname()
            tr, pr = await wait(loop.create_connection(
                lambda: HashingClient(loop), *addr))
            high = tr.get_write_buffer_limits()[1]
            sent = hashlib.sha256()
            max_buffered = 0

            async def transfer():
                nonlocal max_buffered
                for i in range(nchunks):
                    await pr.writable()
                    assert not pr.lost.done(), 'connection lost mid-transfer'
                    data = chunk_at(i)
                    tr.write(data)
                    sent.update(data)
                    max_buffered = max(max_buffered, tr.get_write_buffer_size())
                tr.write_eof()
                # The server echoes the rest, sees EOF and closes; then the
                # client sees EOF and closes too.
                return await pr.lost

            assert await wait(transfer(), 120) is None
            assert await wait(server_protos[0].lost) is None
            assert pr.nreceived == nchunks * chunk
            assert pr.received.hexdigest() == sent.hexdigest()
            # Backpressure was exercised and honoured.
            assert pr.pauses >= 1
            assert max_buffered <= high + chunk
    run(main())


# ---------------------------------------------------------------------------
# writes after the connection was lost
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('how', ['peer_reset', 'peer_eof', 'local_close'])
def test_write_after_connection_lost_warns_past_threshold(loop, run, caplog, how):
    """asyncio's write() after the loss of the connection: no exception,
    nothing sent; once LOG_THRESHOLD (5) such writes happened, every further
    one logs 'socket.send() raised exception.' at WARNING on 'asyncio'.

    (3.11: ``_conn_lost`` is 1 once the loss is scheduled; write() warns if
    ``_conn_lost >= 5`` and then increments it, so the k-th write (1-based)
    sees ``_conn_lost == k`` and warns iff k >= 5: N writes give N - 4
    warnings.  Empty writes return before that check.)
    """
    nwrites = 8

    def send_warnings():
        return [r for r in caplog.records
                if r.name == 'asyncio' and r.levelno == logging.WARNING
                and r.getMessage() == 'socket.send() raised exception.']

    async def main():
        with listening_socket() as lsock:
            pr = Recorder(loop)
            tr, _ = await wait(loop.create_connection(lambda: pr,
                                                      *lsock.getsockname()))
            conn, _ = lsock.accept()
            with conn:
                if how == 'peer_reset':
                    set_linger_rst(conn)
                    conn.close()
                elif how == 'peer_eof':
                    conn.close()
                else:
                    tr.close()
                exc = await pr.wait_lost()
            if how == 'peer_reset':
                assert isinstance(exc, ConnectionResetError)
            else:
                assert exc is None
            assert tr.is_closing()

            counts = []
            with caplog.at_level(logging.DEBUG, logger='asyncio'):
                caplog.clear()
                for _ in range(nwrites):
                    assert tr.write(b'x') is None
                    counts.append(len(send_warnings()))
                tr.write(b'')               # empty writes are not counted
                counts.append(len(send_warnings()))
            first = LOG_THRESHOLD - 1       # writes before the first warning
            expected = [max(0, k - first) for k in range(1, nwrites + 1)]
            assert counts == expected + [nwrites - first]
            others = [r for r in caplog.records
                      if r.levelno >= logging.WARNING and r not in send_warnings()]
            assert others == []
            assert tr.get_write_buffer_size() == 0
            assert pr.events.count('connection_lost') == 1
    run(main())


# ---------------------------------------------------------------------------
# ResourceWarning for an unclosed transport
# ---------------------------------------------------------------------------

class Quiet(asyncio.Protocol):
    """Holds nothing: dropping the transport leaves no reference to it."""


@pytest.mark.parametrize('side', ['client', 'server'])
def test_unclosed_transport_resource_warning(loop, run, side):
    """A transport neither closed nor referenced when its loop closes is
    reported with ResourceWarning 'unclosed transport ...' when collected,
    and its socket gets closed (the peer sees EOF, no fd leaks)."""
    with listening_socket() as lsock:
        if side == 'client':
            async def main():
                await wait(loop.create_connection(Quiet, *lsock.getsockname()))
            run(main())
            peer, _ = lsock.accept()
        else:
            made = []

            class Server(asyncio.Protocol):
                def connection_made(self, transport):
                    made.append(None)

            async def main():
                server = await wait(loop.create_server(Server, '127.0.0.1', 0))
                addr = server.sockets[0].getsockname()
                peer = socket.create_connection(addr, timeout=TIMEOUT)
                try:
                    await wait_until(lambda: made)
                    server.close()          # 3.11: leaves the connection open
                    await wait(server.wait_closed())
                except BaseException:
                    peer.close()
                    raise
                return peer
            peer = run(main())

        with peer:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter('always')
                loop.close()
                gc.collect()
                gc.collect()
            resource_warnings = [str(w.message) for w in caught
                                 if issubclass(w.category, ResourceWarning)]
            transport_warnings = [m for m in resource_warnings
                                  if m.startswith('unclosed transport ')]
            assert len(transport_warnings) == 1, resource_warnings
            # The transport is collected as part of a reference cycle; if the
            # collector finalizes its socket object first, the socket module
            # adds its own 'unclosed <socket.socket ...>' warning (CPython
            # does, depending on the collection order).  Nothing else.
            others = [m for m in resource_warnings
                      if m not in transport_warnings
                      and not m.startswith('unclosed <socket.socket ')]
            assert others == []
            peer.settimeout(TIMEOUT)
            assert peer.recv(1) == b''      # the transport closed its socket


# ---------------------------------------------------------------------------
# logging of a peer reset
# ---------------------------------------------------------------------------

_SLOW_CALLBACK = re.compile(r'^Executing .* took [\d.]+ seconds$', re.S)


@pytest.mark.parametrize('debug', [False, True], ids=['nodebug', 'debug'])
def test_peer_reset_logging(loop, run, caplog, debug):
    """A reset by the peer (connection_lost(ConnectionResetError), see
    test_tcp.py::test_peer_reset_gives_connection_reset_error) is not an
    error for asyncio: nothing at WARNING or above, no exception-handler
    call (the ``loop`` fixture fails the test on one).  In debug mode the
    transport logs '<transport>: Fatal read error on socket transport' at
    DEBUG on 'asyncio', with the exception's traceback; without debug mode
    it logs nothing about it."""
    loop.set_debug(debug)
    caplog.set_level(logging.DEBUG)

    async def main():
        with listening_socket() as lsock:
            pr = Recorder(loop)
            tr, _ = await wait(loop.create_connection(lambda: pr,
                                                      *lsock.getsockname()))
            conn, _ = lsock.accept()
            caplog.clear()
            with conn:
                set_linger_rst(conn)
            exc = await pr.wait_lost()
            assert isinstance(exc, ConnectionResetError)
            await asyncio.sleep(0.05)       # any late log record
    run(main())

    loud = [r for r in caplog.records if r.levelno >= logging.WARNING
            and not (debug and _SLOW_CALLBACK.match(r.getMessage()))]
    assert loud == []
    fatal = [r for r in caplog.records
             if 'Fatal read error on socket transport' in r.getMessage()]
    if not debug:
        assert fatal == []
        return
    assert len(fatal) == 1, [r.getMessage() for r in caplog.records]
    rec = fatal[0]
    assert rec.name == 'asyncio'
    assert rec.levelno == logging.DEBUG
    assert rec.getMessage().endswith(': Fatal read error on socket transport')
    assert rec.exc_info is not None
    assert rec.exc_info[0] is ConnectionResetError
