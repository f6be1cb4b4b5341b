"""TCP transports and protocols: create_server / create_connection, streams.

Expected behaviour: CPython 3.11's selector loop (selector_events.py
_SelectorSocketTransport, base_events.py create_connection/create_server,
streams.py).  Everything runs over 127.0.0.1 (or ::1) on ephemeral ports.
"""

import array
import asyncio
import contextlib
import errno
import re
import socket

import pytest
from io_helpers import (
    TIMEOUT,
    EchoProtocol,
    Factory,
    Recorder,
    close_protocols,
    has_ipv6_loopback,
    listening_socket,
    payload,
    set_linger_rst,
    sha256,
    unused_port,
)


def wait(aw, timeout=TIMEOUT):
    return asyncio.wait_for(aw, timeout)


@contextlib.asynccontextmanager
async def tcp_server(loop, factory, host='127.0.0.1', **kw):
    """create_server on an ephemeral port; yields (server, (host, port)).

    On exit, closes every server-side transport the factory created and the
    server itself.
    """
    server = await wait(loop.create_server(factory, host, 0, **kw))
    try:
        yield server, server.sockets[0].getsockname()[:2]
    finally:
        if isinstance(factory, Factory):
            await factory.close_all()
        server.close()
        await wait(server.wait_closed())


async def connect(loop, addr, cls=Recorder, **kw):
    proto = cls(loop, **kw)
    tr, pr = await wait(loop.create_connection(lambda: proto, *addr))
    assert pr is proto
    return tr, pr


class Cleanup:
    """Collects client protocols and closes them at the end."""

    def __init__(self):
        self.protocols = []

    def add(self, proto):
        self.protocols.append(proto)
        return proto

    async def close(self):
        await close_protocols(self.protocols)


@pytest.fixture
def cleanup():
    return Cleanup()


# ---------------------------------------------------------------------------
# basics
# ---------------------------------------------------------------------------

def test_echo_round_trip(loop, run):
    async def main():
        sf = Factory(EchoProtocol, loop)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await connect(loop, addr)
            tr.write(b'hello world')
            assert await pr.wait_bytes(11) == b'hello world'
            tr.write(b'!')
            assert await pr.wait_bytes(12) == b'hello world!'
            tr.close()
            assert await pr.wait_lost() is None
            assert pr.events == ['connection_made', 'data_received',
                                 'connection_lost']
            srv = sf.protocols[0]
            assert await srv.wait_lost() is None
            assert srv.data == b'hello world!'
    run(main())


def test_echo_round_trip_ipv6(loop, run):
    if not has_ipv6_loopback():
        pytest.skip('no IPv6 loopback')

    async def main():
        sf = Factory(EchoProtocol, loop)
        async with tcp_server(loop, sf, host='::1') as (server, addr):
            assert server.sockets[0].family == socket.AF_INET6
            tr, pr = await connect(loop, addr)
            assert tr.get_extra_info('peername')[:2] == addr
            assert len(tr.get_extra_info('peername')) == 4
            tr.write(b'six')
            assert await pr.wait_bytes(3) == b'six'
            tr.close()
            await pr.wait_lost()
    run(main())


def test_event_order_client_write_eof(loop, run):
    async def main():
        sf = Factory(EchoProtocol, loop)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await connect(loop, addr)
            tr.write(b'ping')
            tr.write_eof()
            # Server echoes, gets EOF, closes (eof_received returned None);
            # the client then sees data, EOF and closes in turn.
            assert await pr.wait_lost() is None
            srv = sf.protocols[0]
            assert await srv.wait_lost() is None
            assert srv.events == ['connection_made', 'data_received',
                                  'eof_received', 'connection_lost']
            assert pr.events == ['connection_made', 'data_received',
                                 'eof_received', 'connection_lost']
            assert pr.data == b'ping'
            assert tr.is_closing()
    run(main())


def test_event_order_server_closes_first(loop, run):
    class Greeter(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.write(b'greetings')
            transport.close()

    async def main():
        sf = Factory(Greeter, loop)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await connect(loop, addr)
            assert await pr.wait_lost() is None
            assert pr.data == b'greetings'
            assert pr.events == ['connection_made', 'data_received',
                                 'eof_received', 'connection_lost']
            srv = sf.protocols[0]
            assert await srv.wait_lost() is None
            assert srv.events == ['connection_made', 'connection_lost']
    run(main())


def test_connection_made_runs_before_create_connection_returns(loop, run):
    async def main():
        sf = Factory(Recorder, loop)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await connect(loop, addr)
            assert pr.events == ['connection_made']
            assert pr.transport is tr
            assert pr.made.result() is tr
            srv = await sf.wait_made()
            assert srv.events == ['connection_made']
            tr.close()
            await pr.wait_lost()
    run(main())


def test_transport_types_and_protocol(loop, run):
    async def main():
        sf = Factory(Recorder, loop)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await connect(loop, addr)
            srv = await sf.wait_made()
            for t in (tr, srv.transport):
                assert isinstance(t, asyncio.Transport)
                assert isinstance(t, asyncio.ReadTransport)
                assert isinstance(t, asyncio.WriteTransport)
                assert isinstance(t, asyncio.BaseTransport)
                assert not isinstance(t, asyncio.DatagramTransport)
            assert tr.get_protocol() is pr
            assert srv.transport.get_protocol() is srv
            tr.close()
            await pr.wait_lost()
    run(main())


def test_set_protocol_redirects_data(loop, run):
    async def main():
        sf = Factory(Recorder, loop)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await connect(loop, addr)
            srv = await sf.wait_made()
            srv.transport.write(b'first')
            await pr.wait_bytes(5)
            other = Recorder(loop)
            tr.set_protocol(other)
            assert tr.get_protocol() is other
            srv.transport.write(b'second')
            assert await other.wait_bytes(6) == b'second'
            assert pr.data == b'first'
            tr.close()
            assert await other.wait_lost() is None
            assert 'connection_lost' not in pr.events
    run(main())


def test_get_extra_info(loop, run):
    async def main():
        sf = Factory(Recorder, loop)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await connect(loop, addr)
            srv = await sf.wait_made()
            sock = tr.get_extra_info('socket')
            assert sock.family == socket.AF_INET
            assert sock.type == socket.SOCK_STREAM
            assert sock.fileno() >= 0
            assert tr.get_extra_info('sockname') == sock.getsockname()
            assert tr.get_extra_info('peername') == addr
            assert sock.getpeername() == addr
            ssock = srv.transport.get_extra_info('socket')
            assert srv.transport.get_extra_info('sockname') == addr
            assert srv.transport.get_extra_info('peername') == \
                tr.get_extra_info('sockname')
            assert ssock.getpeername() == sock.getsockname()
            assert tr.get_extra_info('no-such-key') is None
            assert tr.get_extra_info('no-such-key', 42) == 42
            assert tr.get_extra_info('no-such-key', default='d') == 'd'
            assert tr.get_extra_info('sslcontext') is None
            assert tr.get_extra_info('peercert') is None
            tr.close()
            await pr.wait_lost()
            # Extra info stays readable after the transport closed.
            assert tr.get_extra_info('peername') == addr
    run(main())


def test_tcp_nodelay_is_set(loop, run):
    async def main():
        sf = Factory(Recorder, loop)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await connect(loop, addr)
            srv = await sf.wait_made()
            for t in (tr, srv.transport):
                s = t.get_extra_info('socket')
                assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            tr.close()
            await pr.wait_lost()
    run(main())


# ---------------------------------------------------------------------------
# write()
# ---------------------------------------------------------------------------

def test_write_accepts_bytes_like_objects(loop, run):
    async def main():
        sf = Factory(Recorder, loop)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await connect(loop, addr)
            tr.write(b'a')
            tr.write(bytearray(b'b'))
            tr.write(memoryview(b'c'))
            tr.write(memoryview(bytearray(b'xdex'))[1:3])
            tr.write(b'')
            tr.write(bytearray())
            srv = await sf.wait_made()
            assert await srv.wait_bytes(5) == b'abcde'
            assert tr.get_write_buffer_size() == 0
            tr.close()
            await pr.wait_lost()
            await srv.wait_lost()
            assert srv.data == b'abcde'
    run(main())


@pytest.mark.parametrize('bad', ['text', 123, None, array.array('b', [1]),
                                 [b'a']],
                         ids=['str', 'int', 'None', 'array', 'list'])
def test_write_rejects_non_bytes(loop, run, bad):
    async def main():
        sf = Factory(Recorder, loop)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await connect(loop, addr)
            msg = ('data argument must be a bytes-like object, '
                   f'not {type(bad).__name__!r}')
            with pytest.raises(TypeError, match=f'^{re.escape(msg)}$'):
                tr.write(bad)
            assert not tr.is_closing()
            tr.write(b'ok')
            srv = await sf.wait_made()
            assert await srv.wait_bytes(2) == b'ok'
            tr.close()
            await pr.wait_lost()
    run(main())


def test_writelines_rejects_str_items(loop, run):
    async def main():
        sf = Factory(Recorder, loop)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await connect(loop, addr)
            with pytest.raises(TypeError):
                tr.writelines(['text'])
            tr.close()
            await pr.wait_lost()
    run(main())


def test_writelines(loop, run):
    async def main():
        sf = Factory(Recorder, loop)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await connect(loop, addr)
            tr.writelines([b'a', bytearray(b'b'), memoryview(b'c')])
            tr.writelines(x for x in (b'd', b'', b'ef'))
            tr.writelines([])
            srv = await sf.wait_made()
            assert await srv.wait_bytes(6) == b'abcdef'
            tr.close()
            await pr.wait_lost()
    run(main())


@pytest.mark.parametrize('size', [16, 8 * 1024 * 1024], ids=['small', '8MiB'])
def test_bytearray_mutated_after_write_does_not_change_sent_data(loop, run,
                                                                 size):
    async def main():
        sf = Factory(Recorder, loop)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await connect(loop, addr)
            original = payload(size)
            buf = bytearray(original)
            view_src = bytearray(b'view-data')
            tr.write(buf)
            tr.write(memoryview(view_src))
            # Mutate and shrink right away, before the loop runs again.
            buf[:] = bytes(size)
            buf.extend(b'garbage')
            view_src[:] = b'XXXXXXXXX'
            srv = await sf.wait_made()
            data = await srv.wait_bytes(size + 9)
            assert len(data) == size + 9
            assert sha256(data) == sha256(original + b'view-data')
            tr.close()
            await pr.wait_lost()
    run(main())


def test_write_after_close_is_ignored(loop, run):
    async def main():
        sf = Factory(Recorder, loop)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await connect(loop, addr)
            tr.write(b'before')
            srv = await sf.wait_made()
            await srv.wait_bytes(6)
            tr.close()
            tr.write(b'after')          # no exception
            tr.close()                  # idempotent
            assert await pr.wait_lost() is None
            await srv.wait_lost()
            assert srv.data == b'before'
            assert pr.events.count('connection_lost') == 1
    run(main())


# ---------------------------------------------------------------------------
# write_eof / half close
# ---------------------------------------------------------------------------

def test_write_eof(loop, run):
    async def main():
        sf = Factory(Recorder, loop, keep_open=True)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await connect(loop, addr)
            assert tr.can_write_eof() is True
            tr.write(b'data then eof')
            tr.write_eof()
            tr.write_eof()                  # second call: no-op
            assert not tr.is_closing()
            with pytest.raises(RuntimeError,
                               match=r'^Cannot call write\(\) after write_eof\(\)$'):
                tr.write(b'more')
            srv = await sf.wait_made()
            await wait(asyncio.shield(srv.eof))
            assert srv.data == b'data then eof'
            assert srv.events == ['connection_made', 'data_received',
                                  'eof_received']
            tr.close()
            await pr.wait_lost()
    run(main())


def test_half_close_server_answers_after_client_eof(loop, run):
    class HalfCloseServer(Recorder):
        def eof_received(self):
            super().eof_received()
            self.loop.call_later(0.01, self.answer)
            return True                     # keep the write side open

        def answer(self):
            assert not self.transport.is_closing()
            self.transport.write(b'response:' + bytes(self.data))
            self.transport.close()

    async def main():
        sf = Factory(HalfCloseServer, loop)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await connect(loop, addr)
            tr.write(b'request')
            tr.write_eof()
            assert await pr.wait_lost() is None
            assert pr.data == b'response:request'
            assert pr.events == ['connection_made', 'data_received',
                                 'eof_received', 'connection_lost']
            srv = sf.protocols[0]
            assert await srv.wait_lost() is None
            assert srv.events == ['connection_made', 'data_received',
                                  'eof_received', 'connection_lost']
    run(main())


def test_client_keep_open_after_server_eof(loop, run):
    async def main():
        sf = Factory(Recorder, loop, keep_open=True)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await connect(loop, addr, keep_open=True)
            srv = await sf.wait_made()
            srv.transport.write_eof()
            await wait(asyncio.shield(pr.eof))
            assert not tr.is_closing()
            tr.write(b'still talking')
            assert await srv.wait_bytes(13) == b'still talking'
            tr.write_eof()
            await wait(asyncio.shield(srv.eof))
            srv.transport.close()
            tr.close()
            await pr.wait_lost()
            assert pr.events == ['connection_made', 'eof_received',
                                 'connection_lost']
    run(main())


# ---------------------------------------------------------------------------
# close / abort
# ---------------------------------------------------------------------------

def test_close_flushes_pending_data(loop, run):
    size = 8 * 1024 * 1024
    data = payload(size)

    async def main():
        sf = Factory(Recorder, loop)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await connect(loop, addr)
            tr.get_extra_info('socket').setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            tr.write(data)
            assert tr.get_write_buffer_size() > 0
            tr.close()
            assert tr.is_closing()
            assert 'connection_lost' not in pr.events
            assert await pr.wait_lost() is None
            assert tr.get_write_buffer_size() == 0
            srv = sf.protocols[0]
            await srv.wait_lost()
            assert len(srv.data) == size
            assert sha256(srv.data) == sha256(data)
            assert srv.events == ['connection_made', 'data_received',
                                  'eof_received', 'connection_lost']
    run(main())


def test_abort_drops_buffered_data(loop, run):
    size = 16 * 1024 * 1024

    async def main():
        sf = Factory(Recorder, loop, pause_on_connect=True)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await connect(loop, addr)
            tr.get_extra_info('socket').setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            srv = await sf.wait_made()
            tr.write(payload(size))
            assert tr.get_write_buffer_size() > 0
            tr.abort()
            assert tr.is_closing()
            assert tr.get_write_buffer_size() == 0
            assert await pr.wait_lost() is None
            # The write paused the protocol; abort() does not resume it.
            assert pr.events == ['connection_made', 'pause_writing',
                                 'connection_lost']
            srv.transport.resume_reading()
            exc = await srv.wait_lost()
            assert exc is None or isinstance(exc, ConnectionResetError)
            assert len(srv.data) < size
    run(main())


def test_abort_is_idempotent_and_after_close(loop, run):
    async def main():
        sf = Factory(Recorder, loop)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await connect(loop, addr)
            tr.close()
            tr.abort()
            tr.abort()
            assert await pr.wait_lost() is None
            await asyncio.sleep(0)
            assert pr.events == ['connection_made', 'connection_lost']
    run(main())


def test_is_closing(loop, run):
    async def main():
        sf = Factory(Recorder, loop)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await connect(loop, addr)
            assert tr.is_closing() is False
            tr.close()
            assert tr.is_closing() is True
            await pr.wait_lost()
            assert tr.is_closing() is True
            srv = sf.protocols[0]
            await srv.wait_lost()
            assert srv.transport.is_closing() is True
    run(main())


def test_peer_reset_gives_connection_reset_error(loop, run):
    async def main():
        with listening_socket() as lsock:
            tr, pr = await connect(loop, lsock.getsockname())
            conn, _ = lsock.accept()
            with conn:
                set_linger_rst(conn)
            exc = await pr.wait_lost()
            assert isinstance(exc, ConnectionResetError)
            assert exc.errno == errno.ECONNRESET
            assert pr.events == ['connection_made', 'connection_lost']
            assert tr.is_closing()
    run(main())


def test_peer_reset_while_writing(loop, run):
    async def main():
        with listening_socket() as lsock:
            tr, pr = await connect(loop, lsock.getsockname())
            conn, _ = lsock.accept()
            with conn:
                set_linger_rst(conn)
            await asyncio.sleep(0.01)
            for _ in range(50):
                if pr.lost.done():
                    break
                tr.write(b'x' * 65536)
                await asyncio.sleep(0.001)
            exc = await pr.wait_lost()
            assert isinstance(exc, (ConnectionResetError, BrokenPipeError))
            assert tr.get_write_buffer_size() == 0
            assert pr.events.count('connection_lost') == 1
    run(main())


# ---------------------------------------------------------------------------
# reading flow control
# ---------------------------------------------------------------------------

def test_pause_and_resume_reading(loop, run):
    async def main():
        sf = Factory(Recorder, loop)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await connect(loop, addr)
            srv = await sf.wait_made()
            assert tr.is_reading() is True
            tr.pause_reading()
            assert tr.is_reading() is False
            tr.pause_reading()              # no-op
            assert tr.is_reading() is False
            srv.transport.write(b'while paused')
            await asyncio.sleep(0.05)
            assert pr.data == b''
            assert pr.events == ['connection_made']
            tr.resume_reading()
            assert tr.is_reading() is True
            tr.resume_reading()             # no-op
            assert await pr.wait_bytes(12) == b'while paused'
            tr.close()
            assert tr.is_reading() is False
            tr.pause_reading()              # no-op on a closing transport
            tr.resume_reading()
            assert tr.is_reading() is False
            await pr.wait_lost()
    run(main())


def test_eof_not_seen_while_paused(loop, run):
    async def main():
        sf = Factory(Recorder, loop)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await connect(loop, addr)
            srv = await sf.wait_made()
            tr.pause_reading()
            srv.transport.write(b'bye')
            srv.transport.close()
            await srv.wait_lost()
            await asyncio.sleep(0.05)
            assert pr.events == ['connection_made']
            tr.resume_reading()
            assert await pr.wait_lost() is None
            assert pr.data == b'bye'
            assert pr.events == ['connection_made', 'data_received',
                                 'eof_received', 'connection_lost']
    run(main())


def test_pause_reading_in_connection_made(loop, run):
    async def main():
        sf = Factory(Recorder, loop, pause_on_connect=True)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await connect(loop, addr)
            srv = await sf.wait_made()
            assert srv.transport.is_reading() is False
            tr.write(b'queued')
            await asyncio.sleep(0.05)
            assert srv.data == b''
            srv.transport.resume_reading()
            assert await srv.wait_bytes(6) == b'queued'
            tr.close()
            await pr.wait_lost()
    run(main())


# ---------------------------------------------------------------------------
# writing flow control
# ---------------------------------------------------------------------------

def test_write_buffer_limits(loop, run):
    async def main():
        sf = Factory(Recorder, loop)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await connect(loop, addr)
            assert tr.get_write_buffer_limits() == (16384, 65536)
            assert tr.get_write_buffer_size() == 0
            tr.set_write_buffer_limits(high=1000)
            assert tr.get_write_buffer_limits() == (250, 1000)
            tr.set_write_buffer_limits(low=100)
            assert tr.get_write_buffer_limits() == (100, 400)
            tr.set_write_buffer_limits(100, 100)
            assert tr.get_write_buffer_limits() == (100, 100)
            tr.set_write_buffer_limits(high=0)
            assert tr.get_write_buffer_limits() == (0, 0)
            tr.set_write_buffer_limits()
            assert tr.get_write_buffer_limits() == (16384, 65536)
            for kw, msg in [
                (dict(high=10, low=20), 'high (10) must be >= low (20) must be >= 0'),
                (dict(high=-1), 'high (-1) must be >= low (-1) must be >= 0'),
                (dict(low=-4), 'high (-16) must be >= low (-4) must be >= 0'),
            ]:
                with pytest.raises(ValueError, match=f'^{re.escape(msg)}$'):
                    tr.set_write_buffer_limits(**kw)
            # A failed call leaves the limits alone.
            assert tr.get_write_buffer_limits() == (16384, 65536)
            tr.close()
            await pr.wait_lost()
    run(main())


class FlowRecorder(Recorder):
    def __init__(self, loop, **kw):
        super().__init__(loop, **kw)
        self.paused_fut = loop.create_future()
        self.resumed_fut = loop.create_future()
        self.sizes = []

    def pause_writing(self):
        super().pause_writing()
        self.sizes.append(('pause', self.transport.get_write_buffer_size()))
        if not self.paused_fut.done():
            self.paused_fut.set_result(None)

    def resume_writing(self):
        super().resume_writing()
        self.sizes.append(('resume', self.transport.get_write_buffer_size()))
        if not self.resumed_fut.done():
            self.resumed_fut.set_result(None)


def test_pause_and_resume_writing(loop, run):
    size = 8 * 1024 * 1024
    data = payload(size)

    async def main():
        sf = Factory(Recorder, loop, pause_on_connect=True)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await connect(loop, addr, cls=FlowRecorder)
            srv = await sf.wait_made()
            tr.get_extra_info('socket').setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            low, high = tr.get_write_buffer_limits()
            tr.write(data)
            # pause_writing() is called synchronously from write().
            assert pr.events == ['connection_made', 'pause_writing']
            assert pr.sizes[0][1] > high
            assert tr.get_write_buffer_size() > high
            srv.transport.resume_reading()
            await wait(asyncio.shield(pr.resumed_fut))
            assert pr.events == ['connection_made', 'pause_writing',
                                 'resume_writing']
            assert pr.sizes[1][1] <= low
            got = await srv.wait_bytes(size)
            assert sha256(got) == sha256(data)
            tr.close()
            await pr.wait_lost()
    run(main())


def test_lowering_high_water_mark_pauses_immediately(loop, run):
    async def main():
        sf = Factory(Recorder, loop, pause_on_connect=True)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await connect(loop, addr, cls=FlowRecorder)
            srv = await sf.wait_made()
            tr.get_extra_info('socket').setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            tr.set_write_buffer_limits(high=64 * 1024 * 1024)
            tr.write(payload(8 * 1024 * 1024))
            assert tr.get_write_buffer_size() > 1024
            assert 'pause_writing' not in pr.events
            tr.set_write_buffer_limits(high=1024)
            assert pr.events == ['connection_made', 'pause_writing']
            tr.abort()
            await pr.wait_lost()
            srv.transport.resume_reading()
    run(main())


def test_write_buffer_size_drops_to_zero_when_drained(loop, run):
    async def main():
        sf = Factory(Recorder, loop)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await connect(loop, addr, cls=FlowRecorder)
            tr.get_extra_info('socket').setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            tr.write(payload(4 * 1024 * 1024))
            srv = await sf.wait_made()
            await srv.wait_bytes(4 * 1024 * 1024)
            await asyncio.sleep(0)
            assert tr.get_write_buffer_size() == 0
            tr.close()
            await pr.wait_lost()
    run(main())


# ---------------------------------------------------------------------------
# BufferedProtocol
# ---------------------------------------------------------------------------

class BufRecorder(asyncio.BufferedProtocol):
    def __init__(self, loop, bufsize=4096, empty=False):
        self.loop = loop
        self.buf = bytearray(bufsize)
        self.empty = empty
        self.data = bytearray()
        self.events = []
        self.nbytes = []
        self.transport = None
        self.made = loop.create_future()
        self.lost = loop.create_future()

    def _event(self, name):
        if self.events[-1:] != [name]:
            self.events.append(name)

    def connection_made(self, transport):
        self.events.append('connection_made')
        self.transport = transport
        self.made.set_result(None)

    def get_buffer(self, sizehint):
        self._event('get_buffer')
        if self.empty:
            return bytearray()
        return memoryview(self.buf)

    def buffer_updated(self, nbytes):
        self._event('buffer_updated')
        self.nbytes.append(nbytes)
        self.data += self.buf[:nbytes]

    def eof_received(self):
        self.events.append('eof_received')

    def connection_lost(self, exc):
        self.events.append('connection_lost')
        self.lost.set_result(exc)


def test_buffered_protocol_server(loop, run):
    size = 1024 * 1024 + 123
    data = payload(size)

    async def main():
        protos = []

        def factory():
            protos.append(BufRecorder(loop))
            return protos[-1]

        server = await loop.create_server(factory, '127.0.0.1', 0)
        try:
            addr = server.sockets[0].getsockname()
            tr, pr = await connect(loop, addr)
            tr.write(data)
            tr.write_eof()
            await wait(asyncio.shield(pr.eof))
            bp = protos[0]
            assert await wait(asyncio.shield(bp.lost)) is None
            assert sha256(bp.data) == sha256(data)
            assert all(0 < n <= 4096 for n in bp.nbytes)
            assert sum(bp.nbytes) == size
            # get_buffer / buffer_updated alternate, then EOF and loss.
            assert bp.events[0] == 'connection_made'
            assert bp.events[-2:] == ['eof_received', 'connection_lost']
            middle = bp.events[1:-2]
            assert middle[:2] == ['get_buffer', 'buffer_updated']
            assert set(middle) == {'get_buffer', 'buffer_updated'}
            tr.close()
            await pr.wait_lost()
        finally:
            server.close()
            await server.wait_closed()
    run(main())


def test_buffered_protocol_client(loop, run):
    async def main():
        sf = Factory(EchoProtocol, loop)
        async with tcp_server(loop, sf) as (server, addr):
            bp = BufRecorder(loop, bufsize=7)
            tr, pr = await wait(loop.create_connection(lambda: bp, *addr))
            assert pr is bp
            tr.write(b'buffered protocol echo')
            for _ in range(200):
                if len(bp.data) >= 22:
                    break
                await asyncio.sleep(0.005)
            assert bp.data == b'buffered protocol echo'
            assert max(bp.nbytes) <= 7
            tr.close()
            await wait(asyncio.shield(bp.lost))
    run(main())


def test_buffered_protocol_empty_buffer_is_fatal(loop, run, loop_errors):
    async def main():
        sf = Factory(Recorder, loop)
        async with tcp_server(loop, sf) as (server, addr):
            bp = BufRecorder(loop, empty=True)
            tr, pr = await wait(loop.create_connection(lambda: bp, *addr))
            srv = await sf.wait_made()
            srv.transport.write(b'x')
            exc = await wait(asyncio.shield(bp.lost))
            assert isinstance(exc, RuntimeError)
            assert str(exc) == 'get_buffer() returned an empty buffer'
            assert tr.is_closing()
            await srv.wait_lost()
    run(main())
    assert len(loop_errors) == 1
    ctx = loop_errors[0]
    assert ctx['message'] == 'Fatal error: protocol.get_buffer() call failed.'
    assert isinstance(ctx['exception'], RuntimeError)
    assert ctx['protocol'].__class__ is BufRecorder


# ---------------------------------------------------------------------------
# protocol callbacks raising
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('where', ['data_received', 'eof_received'])
def test_protocol_callback_error_is_fatal(loop, run, loop_errors, where):
    boom = ZeroDivisionError('boom')

    class Bad(Recorder):
        def data_received(self, data):
            super().data_received(data)
            if where == 'data_received':
                raise boom

        def eof_received(self):
            super().eof_received()
            if where == 'eof_received':
                raise boom

    async def main():
        sf = Factory(Recorder, loop)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await connect(loop, addr, cls=Bad)
            srv = await sf.wait_made()
            if where == 'data_received':
                srv.transport.write(b'data')
            else:
                srv.transport.write_eof()
            assert await pr.wait_lost() is boom
            assert tr.is_closing()
            return tr, pr

    tr, pr = run(main())
    assert len(loop_errors) == 1
    ctx = loop_errors[0]
    assert ctx['message'] == f'Fatal error: protocol.{where}() call failed.'
    assert ctx['exception'] is boom
    assert ctx['transport'] is tr
    assert ctx['protocol'] is pr


# ---------------------------------------------------------------------------
# create_connection variants
# ---------------------------------------------------------------------------

def test_create_connection_with_sock(loop, run):
    async def main():
        sf = Factory(EchoProtocol, loop)
        async with tcp_server(loop, sf) as (server, addr):
            sock = socket.create_connection(addr)
            try:
                assert sock.gettimeout() is None
                proto = Recorder(loop)
                tr, pr = await wait(loop.create_connection(lambda: proto,
                                                           sock=sock))
                assert pr is proto
                assert sock.gettimeout() == 0.0        # made non-blocking
                assert tr.get_extra_info('socket').fileno() == sock.fileno()
                assert tr.get_extra_info('peername') == addr
                tr.write(b'via sock=')
                assert await pr.wait_bytes(9) == b'via sock='
                tr.close()
                await pr.wait_lost()
                # The transport closed the socket it was given.
                assert sock.fileno() == -1
            finally:
                sock.close()
    run(main())


def test_create_connection_argument_errors(loop, run):
    async def main():
        with socket.socket() as sock:
            with pytest.raises(ValueError, match=re.escape(
                    'host/port and sock can not be specified at the same time')):
                await loop.create_connection(asyncio.Protocol, '127.0.0.1', 1,
                                             sock=sock)
        with pytest.raises(ValueError, match=re.escape(
                'host and port was not specified and no sock specified')):
            await loop.create_connection(asyncio.Protocol)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            with pytest.raises(ValueError, match=re.escape(
                    f'A Stream Socket was expected, got {udp!r}')):
                await loop.create_connection(asyncio.Protocol, sock=udp)
        with pytest.raises(ValueError, match=re.escape(
                'server_hostname is only meaningful with ssl')):
            await loop.create_connection(asyncio.Protocol, '127.0.0.1', 1,
                                         server_hostname='x')
        with pytest.raises(ValueError, match=re.escape(
                'ssl_handshake_timeout is only meaningful with ssl')):
            await loop.create_connection(asyncio.Protocol, '127.0.0.1', 1,
                                         ssl_handshake_timeout=1)
    run(main())


def test_create_connection_local_addr(loop, run):
    async def main():
        sf = Factory(Recorder, loop)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await wait(loop.create_connection(
                lambda: Recorder(loop), *addr, local_addr=('127.0.0.1', 0)))
            srv = await sf.wait_made()
            sockname = tr.get_extra_info('sockname')
            assert sockname[0] == '127.0.0.1'
            assert sockname[1] != 0
            assert srv.transport.get_extra_info('peername') == sockname
            tr.close()
            await pr.wait_lost()

            port = unused_port()
            tr, pr = await wait(loop.create_connection(
                lambda: Recorder(loop), *addr, local_addr=('127.0.0.1', port)))
            assert tr.get_extra_info('sockname') == ('127.0.0.1', port)
            tr.close()
            await pr.wait_lost()
    run(main())


def test_create_connection_local_addr_in_use(loop, run):
    async def main():
        with listening_socket() as lsock:
            host, port = lsock.getsockname()
            with pytest.raises(OSError) as info:
                await loop.create_connection(asyncio.Protocol, host, port,
                                             local_addr=(host, port))
            assert info.value.errno == errno.EADDRINUSE
            assert str(info.value) == (
                f'[Errno {errno.EADDRINUSE}] error while attempting to bind '
                f"on address ('127.0.0.1', {port}): address already in use")
    run(main())


def test_create_connection_local_addr_family_mismatch(loop, run):
    async def main():
        with listening_socket() as lsock:
            host, port = lsock.getsockname()
            with pytest.raises(OSError) as info:
                await loop.create_connection(asyncio.Protocol, host, port,
                                             local_addr=('::1', 0))
            assert type(info.value) is OSError
            assert str(info.value) == (
                'no matching local address with '
                'family=<AddressFamily.AF_INET: 2> found')
    run(main())


@pytest.mark.parametrize('host', ['127.0.0.1', 'localhost'])
@pytest.mark.parametrize('delay', [0.25, 0.0])
def test_create_connection_happy_eyeballs(loop, run, host, delay):
    async def main():
        sf = Factory(EchoProtocol, loop)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await wait(loop.create_connection(
                lambda: Recorder(loop), host, addr[1],
                happy_eyeballs_delay=delay))
            assert tr.get_extra_info('peername') == addr
            tr.write(b'eyeballs')
            assert await pr.wait_bytes(8) == b'eyeballs'
            tr.close()
            await pr.wait_lost()
    run(main())


def test_create_connection_interleave(loop, run):
    async def main():
        sf = Factory(EchoProtocol, loop)
        async with tcp_server(loop, sf) as (server, addr):
            tr, pr = await wait(loop.create_connection(
                lambda: Recorder(loop), 'localhost', addr[1], interleave=1))
            tr.close()
            await pr.wait_lost()
    run(main())


@pytest.mark.parametrize('happy', [None, 0.1], ids=['plain', 'happy_eyeballs'])
def test_create_connection_refused(loop, run, happy):
    port = unused_port()

    async def main():
        with pytest.raises(ConnectionRefusedError) as info:
            await wait(loop.create_connection(
                asyncio.Protocol, '127.0.0.1', port,
                happy_eyeballs_delay=happy))
        assert info.value.errno == errno.ECONNREFUSED
        assert re.fullmatch(
            r"\[Errno 111\] (Connect call failed \('127\.0\.0\.1', "
            + str(port) + r"\)|Connection refused)",
            str(info.value)), str(info.value)
    run(main())


def test_create_connection_refused_localhost(loop, run):
    # One address: its error is raised as is.  Several addresses with
    # different messages (e.g. ::1 and 127.0.0.1): a plain OSError whose
    # message starts with 'Multiple exceptions: '.
    port = unused_port()
    infos = socket.getaddrinfo('localhost', port, type=socket.SOCK_STREAM)
    addresses = {info[4] for info in infos}

    async def main():
        with pytest.raises(OSError) as info:
            await wait(loop.create_connection(asyncio.Protocol, 'localhost',
                                              port))
        return info.value

    exc = run(main())
    if len(addresses) == 1:
        assert isinstance(exc, ConnectionRefusedError)
        assert exc.errno == errno.ECONNREFUSED
    else:
        assert type(exc) is OSError
        assert str(exc).startswith('Multiple exceptions: ')
        for sockaddr in addresses:
            assert repr(sockaddr) in str(exc) or str(sockaddr[0]) in str(exc)


def test_create_connection_unresolvable(loop, run):
    async def main():
        with pytest.raises(socket.gaierror):
            await wait(loop.create_connection(asyncio.Protocol,
                                              'nonexistent.invalid', 80))
    run(main())


def test_connect_accepted_socket(loop, run):
    async def main():
        with listening_socket() as lsock:
            client = socket.create_connection(lsock.getsockname())
            conn, _ = lsock.accept()
            try:
                proto = Recorder(loop)
                tr, pr = await wait(loop.connect_accepted_socket(
                    lambda: proto, conn))
                assert pr is proto
                assert pr.events == ['connection_made']
                client.sendall(b'accepted')
                assert await pr.wait_bytes(8) == b'accepted'
                tr.write(b'reply')
                client.settimeout(TIMEOUT)
                assert client.recv(10) == b'reply'
                tr.close()
                await pr.wait_lost()
            finally:
                client.close()
                conn.close()
    run(main())


# ---------------------------------------------------------------------------
# streams
# ---------------------------------------------------------------------------

def test_streams_echo(loop, run):
    async def main():
        handled = loop.create_future()

        async def handler(reader, writer):
            try:
                while True:
                    line = await reader.readline()
                    if not line:
                        break
                    writer.write(line.upper())
                    await writer.drain()
                writer.write(b'bye\n')
                await writer.drain()
                writer.close()
                await writer.wait_closed()
            finally:
                handled.set_result(None)

        server = await asyncio.start_server(handler, '127.0.0.1', 0)
        async with server:
            addr = server.sockets[0].getsockname()
            reader, writer = await wait(asyncio.open_connection(*addr))
            assert isinstance(writer.transport, asyncio.Transport)
            assert writer.get_extra_info('peername') == addr
            writer.write(b'hello\n')
            await writer.drain()
            assert await wait(reader.readline()) == b'HELLO\n'
            writer.write(b'abc\ndef\n')
            await writer.drain()
            assert await wait(reader.readexactly(8)) == b'ABC\nDEF\n'
            assert writer.can_write_eof()
            writer.write_eof()
            assert await wait(reader.readline()) == b'bye\n'
            with pytest.raises(asyncio.IncompleteReadError) as info:
                await wait(reader.readexactly(10))
            assert info.value.partial == b''
            assert info.value.expected == 10
            assert reader.at_eof()
            assert await wait(reader.read()) == b''
            writer.close()
            await wait(writer.wait_closed())
            await wait(handled)
    run(main())


def test_streams_read_and_readuntil(loop, run):
    async def main():
        async def handler(reader, writer):
            writer.write(b'part1|part2|tail')
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(handler, '127.0.0.1', 0)
        async with server:
            addr = server.sockets[0].getsockname()
            reader, writer = await wait(asyncio.open_connection(*addr))
            assert await wait(reader.readuntil(b'|')) == b'part1|'
            assert await wait(reader.readuntil(b'|')) == b'part2|'
            with pytest.raises(asyncio.IncompleteReadError) as info:
                await wait(reader.readuntil(b'|'))
            assert info.value.partial == b'tail'
            writer.close()
            await wait(writer.wait_closed())
    run(main())


def test_streams_200_concurrent_connections(loop, run):
    n = 200

    async def main():
        async def handler(reader, writer):
            line = await reader.readline()
            writer.write(b'echo:' + line)
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(handler, '127.0.0.1', 0,
                                            backlog=n + 50)
        async with server:
            addr = server.sockets[0].getsockname()

            async def client(i):
                reader, writer = await asyncio.open_connection(*addr)
                writer.write(b'%d\n' % i)
                await writer.drain()
                answer = await reader.readline()
                assert await reader.read() == b''
                writer.close()
                await writer.wait_closed()
                return answer

            answers = await wait(asyncio.gather(*(client(i) for i in range(n))),
                                 30)
            assert answers == [b'echo:%d\n' % i for i in range(n)]
    run(main())


def test_streams_64mib_echo_checksum(loop, run):
    size = 64 * 1024 * 1024
    chunk = 256 * 1024
    data = payload(size)
    expected = sha256(data)

    async def main():
        async def handler(reader, writer):
            while True:
                buf = await reader.read(chunk)
                if not buf:
                    break
                writer.write(buf)
                await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(handler, '127.0.0.1', 0)
        async with server:
            addr = server.sockets[0].getsockname()
            reader, writer = await wait(asyncio.open_connection(*addr))

            async def send():
                view = memoryview(data)
                for i in range(0, size, chunk):
                    writer.write(view[i:i + chunk])
                    await writer.drain()
                writer.write_eof()

            async def receive():
                import hashlib
                h = hashlib.sha256()
                total = 0
                while True:
                    buf = await reader.read(1 << 20)
                    if not buf:
                        return total, h.hexdigest()
                    h.update(buf)
                    total += len(buf)

            _, (total, digest) = await wait(
                asyncio.gather(send(), receive()), 30)
            assert total == size
            assert digest == expected
            writer.close()
            await wait(writer.wait_closed())
    run(main())
