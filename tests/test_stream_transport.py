"""The stream transport's data path: what a native transport must get right
beyond the API (which tests/test_tcp.py covers): the context protocol
callbacks run in, reads that fill the buffer, data and EOF arriving
together, writes queued while the peer is slow (copies of mutable buffers,
order, water marks re-entered from resume_writing), the repr, debug mode.

Every test runs on asyncio and ferroloop (the ``loop`` fixture): asyncio's
selector transport is the reference.
"""

import array
import asyncio
import contextlib
import contextvars
import logging
import os
import re
import socket
import time

import pytest
from io_helpers import TIMEOUT, Recorder, payload, read_until_eof, sha256, tcp_pair

READ_SIZE = 256 * 1024  # asyncio's max_size for one read


def wait(aw, timeout=TIMEOUT):
    return asyncio.wait_for(aw, timeout)


async def accept(loop, proto, sock):
    tr, pr = await wait(loop.connect_accepted_socket(lambda: proto, sock))
    assert pr is proto
    return tr


@pytest.mark.parametrize('debug', [False, True])
def test_callbacks_run_in_the_context_the_transport_was_made_in(loop, run, debug):
    # (debug mode runs the reads through Handles: same context)
    loop.set_debug(debug)
    var = contextvars.ContextVar('var', default='outer')
    seen = []

    class P(Recorder):
        def connection_made(self, tr):
            seen.append(('made', var.get()))
            super().connection_made(tr)

        def data_received(self, data):
            seen.append(('data', var.get()))
            super().data_received(data)

        def eof_received(self):
            seen.append(('eof', var.get()))
            return super().eof_received()

        def connection_lost(self, exc):
            seen.append(('lost', var.get()))
            super().connection_lost(exc)

    async def main():
        with tcp_pair() as (client, server):
            proto = P(loop)

            async def inner():
                var.set('inner')
                return await accept(loop, proto, server)

            await asyncio.create_task(inner())
            client.sendall(b'ping')
            await proto.wait_bytes(4)
            client.shutdown(socket.SHUT_WR)
            await proto.wait_lost()
    run(main())
    assert [name for name, _ in seen[:1]] == ['made']
    assert {name for name, _ in seen} == {'made', 'data', 'eof', 'lost'}
    assert {value for _, value in seen} == {'inner'}


def test_data_and_eof_that_arrived_together(loop, run):
    # The peer's bytes and its FIN are both waiting before the transport's
    # first read: one readiness event covers both.
    async def main():
        with tcp_pair() as (client, server):
            client.sendall(b'hello')
            client.shutdown(socket.SHUT_WR)
            await asyncio.sleep(0.05)
            proto = Recorder(loop)
            await accept(loop, proto, server)
            await proto.wait_lost()
            assert proto.data == b'hello'
            assert proto.events == ['connection_made', 'data_received',
                                    'eof_received', 'connection_lost']
    run(main())


def test_reads_that_fill_the_buffer_then_eof(loop, run):
    # Exact multiples of the read size: every read fills the buffer, the
    # next one finds the end of the stream.
    data = payload(3 * READ_SIZE)

    async def main():
        with tcp_pair() as (client, server):
            proto = Recorder(loop)
            await accept(loop, proto, server)
            await loop.sock_sendall(client, data)
            client.shutdown(socket.SHUT_WR)
            await proto.wait_lost()
            assert sha256(bytes(proto.data)) == sha256(data)
            assert proto.events[-2:] == ['eof_received', 'connection_lost']
    run(main())


def test_buffered_protocol_with_a_tiny_buffer(loop, run):
    data = payload(100_003)

    class Tiny(asyncio.BufferedProtocol):
        def __init__(self):
            self.buf = bytearray(7)
            self.got = bytearray()
            self.calls = 0
            self.lost = loop.create_future()

        def get_buffer(self, sizehint):
            return self.buf

        def buffer_updated(self, n):
            self.calls += 1
            self.got += self.buf[:n]

        def eof_received(self):
            return None

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        with tcp_pair() as (client, server):
            proto = Tiny()
            await accept(loop, proto, server)
            await loop.sock_sendall(client, data)
            client.shutdown(socket.SHUT_WR)
            assert await wait(proto.lost) is None
            assert bytes(proto.got) == data
            assert proto.calls >= len(data) // 7
    run(main())


def test_writes_queued_behind_a_slow_peer_keep_order_and_content(loop, run):
    # The peer does not read until every write was made, so most of them
    # are queued. Mutable buffers are changed right after write(): what
    # was passed is what must arrive (asyncio copies them).
    async def main():
        with tcp_pair() as (client, server):
            proto = Recorder(loop)
            tr = await accept(loop, proto, server)
            tr.set_write_buffer_limits(high=1 << 30)
            expected = bytearray()
            big = payload(200_000)
            for i in range(3000):
                n = (i * 7919) % 3000 + 1
                chunk = payload(n + i)[i:]
                if i % 3 == 0:
                    buf = bytearray(chunk)
                    tr.write(buf)
                    buf[:] = b'X' * len(buf)
                elif i % 3 == 1:
                    tr.write(memoryview(chunk)[1:])
                    chunk = chunk[1:]
                else:
                    tr.write(chunk)
                expected += chunk
                if i % 500 == 0:
                    tr.write(big)
                    expected += big
                    scratch = bytearray(big)
                    tr.write(scratch)
                    scratch[:] = bytes(len(scratch))
                    expected += big
            assert tr.get_write_buffer_size() > 0
            tr.write_eof()
            got = await read_until_eof(loop, client)
            assert len(got) == len(expected)
            assert sha256(got) == sha256(bytes(expected))
            assert tr.get_write_buffer_size() == 0
            tr.close()
            await proto.wait_lost()
    run(main())


def test_resume_writing_that_writes_again(loop, run):
    # The protocol refills the transport from resume_writing() until all is
    # sent: every refill happens inside the transport's flush.
    total = 8 << 20
    data = payload(total)

    class Pump(asyncio.Protocol):
        def __init__(self):
            self.pos = 0
            self.pauses = 0
            self.resumes = 0
            self.lost = loop.create_future()

        def connection_made(self, tr):
            self.tr = tr
            tr.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
            self.fill()

        def fill(self):
            while self.pos < total and self.tr.get_write_buffer_size() <= 64 * 1024:
                self.tr.write(data[self.pos:self.pos + 100_000])
                self.pos += 100_000
            if self.pos >= total:
                self.tr.write_eof()

        def pause_writing(self):
            self.pauses += 1

        def resume_writing(self):
            self.resumes += 1
            self.fill()

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        with tcp_pair() as (client, server):
            proto = Pump()
            tr = await accept(loop, proto, server)
            got = await read_until_eof(loop, client, chunk=4096)
            assert sha256(got) == sha256(data)
            assert proto.pauses >= 1 and proto.resumes >= 1
            tr.close()
            assert await wait(proto.lost) is None
    run(main())


def test_repr_shows_polling_state_and_buffer(loop, run):
    async def main():
        with tcp_pair() as (client, server):
            proto = Recorder(loop)
            tr = await accept(loop, proto, server)
            fd = server.fileno()
            assert re.fullmatch(
                rf'<\w+ fd={fd} read=polling write=<idle, bufsize=0>>', repr(tr))
            tr.pause_reading()
            tr.set_write_buffer_limits(high=1 << 30)
            while tr.get_write_buffer_size() == 0:
                tr.write(payload(1 << 20))
            size = tr.get_write_buffer_size()
            assert re.fullmatch(
                rf'<\w+ fd={fd} read=idle write=<polling, bufsize={size}>>', repr(tr))
            tr.abort()
            assert repr(tr).split()[1] == 'closing'
            await proto.wait_lost()
            assert re.fullmatch(rf'<\w+ closed fd={fd}>', repr(tr))
    run(main())


def test_slow_data_received_is_reported_in_debug_mode(loop, run, caplog):
    class Slow(Recorder):
        def data_received(self, data):
            time.sleep(0.06)
            super().data_received(data)

    async def main():
        with tcp_pair() as (client, server):
            proto = Slow(loop)
            tr = await accept(loop, proto, server)
            client.sendall(b'x')
            await proto.wait_bytes(1)
            tr.close()
            await proto.wait_lost()

    loop.set_debug(True)
    loop.slow_callback_duration = 0.05
    with caplog.at_level(logging.WARNING, logger='asyncio'):
        run(main())
    slow = [r.getMessage() for r in caplog.records
            if r.getMessage().startswith('Executing')]
    assert any('_read_ready' in m and 'took' in m for m in slow), slow


def test_write_by_keyword_and_argument_errors(loop, run):
    async def main():
        with tcp_pair() as (client, server):
            proto = Recorder(loop)
            tr = await accept(loop, proto, server)
            tr.write(data=b'kw')
            for args, kwargs in [((), {}), ((b'a', b'b'), {}), ((), {'other': b'x'})]:
                try:
                    tr.write(*args, **kwargs)
                except TypeError:
                    pass
                else:
                    raise AssertionError(f'write(*{args}, **{kwargs}) did not raise')
            assert await loop.sock_recv(client, 10) == b'kw'
            tr.close()
            await proto.wait_lost()
    run(main())


def test_unix_transport_read_stopped_by_ancillary_data(loop, run):
    async def main():
        r, w = os.pipe()
        c, d = socket.socketpair()
        try:
            proto = Recorder(loop)
            tr = await accept(loop, proto, c)
            d.sendmsg([b'abc'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                  array.array('i', [r]))])
            d.send(b'def')
            assert await proto.wait_bytes(6) == b'abcdef'
            tr.close()
            await proto.wait_lost()
        finally:
            d.close()
            os.close(r)
            os.close(w)
    run(main())


def test_write_after_connection_lost_never_reaches_a_reused_fd(loop, run):
    # close() with data queued: the flush ends in connection_lost, which
    # closes the socket. A later write() must not send on the fd number,
    # which a new socket may have now (asyncio raises AttributeError).
    async def main():
        with tcp_pair() as (client, server):
            proto = Recorder(loop)
            tr = await accept(loop, proto, server)
            tr.set_write_buffer_limits(high=1 << 30)
            data = payload(8 << 20)
            tr.write(data)
            assert tr.get_write_buffer_size() > 0
            tr.close()
            got = await read_until_eof(loop, client)
            assert len(got) == len(data)
            await proto.wait_lost()
        pairs = [socket.socketpair() for _ in range(4)]
        try:
            for a, _ in pairs:
                a.setblocking(False)
            with contextlib.suppress(AttributeError):
                tr.write(b'LEAKED')
            await asyncio.sleep(0.05)
            for a, _ in pairs:
                with pytest.raises(BlockingIOError):
                    a.recv(100)
        finally:
            for a, b in pairs:
                a.close()
                b.close()
    run(main())


def test_write_buffer_limits_accept_any_numbers(loop, run):
    async def main():
        with tcp_pair() as (client, server):
            proto = Recorder(loop)
            tr = await accept(loop, proto, server)
            tr.set_write_buffer_limits(high=100.0)
            assert tr.get_write_buffer_limits() == (25.0, 100.0)
            tr.set_write_buffer_limits(high=float('inf'), low=10.5)
            assert tr.get_write_buffer_limits() == (10.5, float('inf'))
            with pytest.raises(ValueError, match=r'high \(1\) must be >= low \(2\)'):
                tr.set_write_buffer_limits(high=1, low=2)
            tr.set_write_buffer_limits(high=10.5, low=2)
            tr.pause_reading()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            while not proto.events.count('pause_writing'):
                tr.write(b'x' * 65536)
            assert tr.get_write_buffer_size() > 10
            tr.abort()
            await proto.wait_lost()
    run(main())
