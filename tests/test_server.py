"""The Server object returned by create_server, and create_server options.

Expected behaviour: CPython 3.11's base_events.Server and
BaseEventLoop.create_server (version differences of later Pythons are
noted where a test depends on them).
"""

import asyncio
import errno
import re
import socket
import sys

import pytest
from io_helpers import (
    TIMEOUT,
    EchoProtocol,
    Factory,
    Recorder,
    close_protocols,
    fd_count,
    has_ipv6_loopback,
    open_fds,
    unused_port,
)


def wait(aw, timeout=TIMEOUT):
    return asyncio.wait_for(aw, timeout)


async def echo_once(loop, addr, message=b'ping'):
    """Connect, send ``message``, expect it back, close."""
    proto = Recorder(loop)
    tr, _ = await wait(loop.create_connection(lambda: proto, *addr[:2]))
    tr.write(message)
    got = await proto.wait_bytes(len(message))
    tr.close()
    await proto.wait_lost()
    return got


def addr_of(server, i=0):
    return server.sockets[i].getsockname()


def expected_passive(host, family=socket.AF_UNSPEC):
    infos = socket.getaddrinfo(host, 0, family, socket.SOCK_STREAM, 0,
                               socket.AI_PASSIVE)
    return sorted({(info[0], info[4][0]) for info in infos})


def bound(server):
    return sorted((s.family, s.getsockname()[0]) for s in server.sockets)


# ---------------------------------------------------------------------------
# the Server object
# ---------------------------------------------------------------------------

def test_server_object_api(loop, run):
    async def main():
        sf = Factory(EchoProtocol, loop)
        server = await wait(loop.create_server(sf, '127.0.0.1', 0))
        try:
            assert isinstance(server, asyncio.AbstractServer)
            assert server.get_loop() is loop
            assert server.is_serving() is True
            socks = server.sockets
            assert isinstance(socks, tuple)
            assert len(socks) == 1
            s = socks[0]
            assert s.family == socket.AF_INET
            assert s.type == socket.SOCK_STREAM
            host, port = s.getsockname()
            assert host == '127.0.0.1'
            assert port > 0
            assert s.fileno() >= 0
            assert await echo_once(loop, (host, port)) == b'ping'
        finally:
            await sf.close_all()
            server.close()
            await wait(server.wait_closed())
        assert server.is_serving() is False
        assert server.sockets == ()
    run(main())


def test_start_serving_false_then_start_serving(loop, run):
    async def main():
        sf = Factory(EchoProtocol, loop)
        server = await wait(loop.create_server(sf, '127.0.0.1', 0,
                                               start_serving=False))
        try:
            assert server.is_serving() is False
            addr = addr_of(server)
            assert addr[1] > 0                      # already bound
            # Not listening yet: connections are refused.
            with pytest.raises(ConnectionRefusedError):
                await wait(loop.create_connection(asyncio.Protocol, *addr))
            assert await server.start_serving() is None
            assert server.is_serving() is True
            await server.start_serving()            # idempotent
            assert server.is_serving() is True
            assert await echo_once(loop, addr) == b'ping'
            assert len(sf.protocols) == 1
        finally:
            await sf.close_all()
            server.close()
            await wait(server.wait_closed())
    run(main())


def test_serve_forever_cancelled_closes_server(loop, run):
    async def main():
        sf = Factory(EchoProtocol, loop)
        server = await wait(loop.create_server(sf, '127.0.0.1', 0,
                                               start_serving=False))
        addr = addr_of(server)
        task = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0)
        assert server.is_serving() is True          # serve_forever starts it
        assert await echo_once(loop, addr) == b'ping'
        with pytest.raises(RuntimeError,
                           match='is already being awaited on serve_forever'):
            await server.serve_forever()
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await wait(task)
        assert server.is_serving() is False
        assert server.sockets == ()
        with pytest.raises(ConnectionRefusedError):
            await wait(loop.create_connection(asyncio.Protocol, *addr))
        await sf.close_all()
    run(main())


def test_serve_forever_ends_when_server_closed(loop, run):
    async def main():
        server = await wait(loop.create_server(lambda: Recorder(loop),
                                               '127.0.0.1', 0))
        task = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0)
        # close() cancels the serve_forever future.
        server.close()
        with pytest.raises(asyncio.CancelledError):
            await wait(task)
        assert server.is_serving() is False
    run(main())


def test_serve_forever_on_closed_server(loop, run):
    async def main():
        server = await wait(loop.create_server(lambda: Recorder(loop),
                                               '127.0.0.1', 0))
        server.close()
        await wait(server.wait_closed())
        with pytest.raises(RuntimeError, match=re.escape(
                f'server {server!r} is closed')):
            await server.serve_forever()
    run(main())


def test_close_and_wait_closed(loop, run):
    async def main():
        sf = Factory(EchoProtocol, loop)
        server = await wait(loop.create_server(sf, '127.0.0.1', 0))
        addr = addr_of(server)
        waiter = asyncio.ensure_future(server.wait_closed())
        await asyncio.sleep(0.01)
        assert not waiter.done()                    # still serving
        assert server.close() is None
        assert server.is_serving() is False
        assert server.sockets == ()
        server.close()                              # idempotent
        assert await wait(waiter) is None
        assert await wait(server.wait_closed()) is None
        with pytest.raises(ConnectionRefusedError):
            await wait(loop.create_connection(asyncio.Protocol, *addr))
    run(main())


def test_existing_connections_survive_server_close(loop, run):
    async def main():
        sf = Factory(EchoProtocol, loop)
        server = await wait(loop.create_server(sf, '127.0.0.1', 0))
        tr, pr = await wait(loop.create_connection(lambda: Recorder(loop),
                                                   *addr_of(server)))
        await sf.wait_made()
        server.close()
        waiter = asyncio.ensure_future(server.wait_closed())
        await asyncio.sleep(0.02)
        if sys.version_info < (3, 12):
            # 3.11: wait_closed() returns at once after close().
            assert waiter.done()
        else:
            # 3.12+: it waits for the active connections.
            assert not waiter.done()
        tr.write(b'after close')
        assert await pr.wait_bytes(11) == b'after close'
        tr.close()
        await pr.wait_lost()
        await sf.protocols[0].wait_lost()
        await wait(waiter)
    run(main())


def test_async_with_closes_server(loop, run):
    async def main():
        sf = Factory(EchoProtocol, loop)
        server = await wait(loop.create_server(sf, '127.0.0.1', 0))
        async with server as entered:
            assert entered is server
            assert server.is_serving()
            assert await echo_once(loop, addr_of(server)) == b'ping'
            await sf.protocols[0].wait_lost()
        assert server.is_serving() is False
        assert server.sockets == ()
    run(main())


def test_many_sequential_connections_with_small_backlog(loop, run):
    async def main():
        sf = Factory(EchoProtocol, loop)
        server = await wait(loop.create_server(sf, '127.0.0.1', 0, backlog=1))
        async with server:
            for i in range(10):
                msg = b'conn %d' % i
                assert await echo_once(loop, addr_of(server), msg) == msg
            await sf.close_all()
        assert len(sf.protocols) == 10
    run(main())


def test_burst_of_connections(loop, run):
    n = 64

    async def main():
        sf = Factory(EchoProtocol, loop)
        server = await wait(loop.create_server(sf, '127.0.0.1', 0,
                                               backlog=n * 2))
        async with server:
            addr = addr_of(server)
            results = await wait(asyncio.gather(
                *(echo_once(loop, addr, b'%d' % i) for i in range(n))))
            assert results == [b'%d' % i for i in range(n)]
            await sf.close_all()
        assert len(sf.protocols) == n
    run(main())


# ---------------------------------------------------------------------------
# create_server options
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('host', [None, ''], ids=['None', 'empty'])
def test_host_none_binds_all_interfaces(loop, run, host):
    async def main():
        server = await wait(loop.create_server(lambda: Recorder(loop),
                                               host, 0))
        async with server:
            assert bound(server) == expected_passive(None)
            for s in server.sockets:
                if s.family == socket.AF_INET6:
                    assert s.getsockopt(socket.IPPROTO_IPV6,
                                        socket.IPV6_V6ONLY) == 1
                assert s.getsockname()[1] > 0
            # Reachable over IPv4 loopback.
            v4 = [s for s in server.sockets if s.family == socket.AF_INET]
            if v4:
                port = v4[0].getsockname()[1]
                with socket.create_connection(('127.0.0.1', port)):
                    pass
    run(main())


def test_host_list(loop, run):
    hosts = ['127.0.0.1'] + (['::1'] if has_ipv6_loopback() else [])

    async def main():
        sf = Factory(EchoProtocol, loop)
        server = await wait(loop.create_server(sf, hosts, 0))
        async with server:
            assert sorted(s.getsockname()[0] for s in server.sockets) == \
                sorted(hosts)
            for s in server.sockets:
                host, port = s.getsockname()[:2]
                assert await echo_once(loop, (host, port)) == b'ping'
            await sf.close_all()
    run(main())


def test_host_list_duplicates_bound_once(loop, run):
    async def main():
        server = await wait(loop.create_server(
            lambda: Recorder(loop), ['127.0.0.1', '127.0.0.1'], 0))
        async with server:
            assert len(server.sockets) == 1
    run(main())


def test_localhost_dual_stack(loop, run):
    async def main():
        sf = Factory(EchoProtocol, loop)
        server = await wait(loop.create_server(sf, 'localhost', 0))
        async with server:
            assert bound(server) == expected_passive('localhost')
            for s in server.sockets:
                host, port = s.getsockname()[:2]
                assert await echo_once(loop, (host, port)) == b'ping'
            await sf.close_all()
    run(main())


def test_family_argument(loop, run):
    async def main():
        server = await wait(loop.create_server(
            lambda: Recorder(loop), None, 0, family=socket.AF_INET))
        async with server:
            assert bound(server) == [(socket.AF_INET, '0.0.0.0')]
    run(main())


def test_explicit_port(loop, run):
    port = unused_port()

    async def main():
        sf = Factory(EchoProtocol, loop)
        server = await wait(loop.create_server(sf, '127.0.0.1', port))
        async with server:
            assert addr_of(server) == ('127.0.0.1', port)
            assert await echo_once(loop, ('127.0.0.1', port)) == b'ping'
            await sf.close_all()
    run(main())


def test_reuse_address_default_and_off(loop, run):
    async def main():
        server = await wait(loop.create_server(lambda: Recorder(loop),
                                               '127.0.0.1', 0))
        async with server:
            assert server.sockets[0].getsockopt(
                socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
        server = await wait(loop.create_server(lambda: Recorder(loop),
                                               '127.0.0.1', 0,
                                               reuse_address=False))
        async with server:
            assert server.sockets[0].getsockopt(
                socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
    run(main())


def test_reuse_port(loop, run):
    if not hasattr(socket, 'SO_REUSEPORT'):
        pytest.skip('no SO_REUSEPORT')

    async def main():
        s1 = await wait(loop.create_server(lambda: Recorder(loop),
                                           '127.0.0.1', 0, reuse_port=True))
        async with s1:
            assert s1.sockets[0].getsockopt(
                socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
            port = addr_of(s1)[1]
            s2 = await wait(loop.create_server(lambda: Recorder(loop),
                                               '127.0.0.1', port,
                                               reuse_port=True))
            async with s2:
                assert addr_of(s2) == ('127.0.0.1', port)
    run(main())


def test_address_in_use(loop, run):
    async def main():
        s1 = await wait(loop.create_server(lambda: Recorder(loop),
                                           '127.0.0.1', 0))
        async with s1:
            port = addr_of(s1)[1]
            with pytest.raises(OSError) as info:
                await loop.create_server(lambda: Recorder(loop),
                                         '127.0.0.1', port)
            assert info.value.errno == errno.EADDRINUSE
            assert str(info.value) == (
                f'[Errno {errno.EADDRINUSE}] error while attempting to bind '
                f"on address ('127.0.0.1', {port}): address already in use")
    run(main())


def test_sock_argument(loop, run):
    async def main():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(('127.0.0.1', 0))                 # bound, not listening
        sf = Factory(EchoProtocol, loop)
        server = await wait(loop.create_server(sf, sock=sock))
        async with server:
            assert server.sockets[0].fileno() == sock.fileno()
            assert sock.gettimeout() == 0.0
            assert await echo_once(loop, sock.getsockname()) == b'ping'
            await sf.close_all()
        assert sock.fileno() == -1                  # closed by the server
    run(main())


def test_create_server_argument_errors(loop, run):
    async def main():
        with socket.socket() as s:
            with pytest.raises(ValueError, match=re.escape(
                    'host/port and sock can not be specified at the same time')):
                await loop.create_server(asyncio.Protocol, '127.0.0.1', 0,
                                         sock=s)
        with pytest.raises(ValueError, match=re.escape(
                'Neither host/port nor sock were specified')):
            await loop.create_server(asyncio.Protocol)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            with pytest.raises(ValueError, match=re.escape(
                    f'A Stream Socket was expected, got {udp!r}')):
                await loop.create_server(asyncio.Protocol, sock=udp)
        with pytest.raises(TypeError, match=re.escape(
                'ssl argument must be an SSLContext or None')):
            await loop.create_server(asyncio.Protocol, '127.0.0.1', 0,
                                     ssl=True)
        with pytest.raises(ValueError, match=re.escape(
                'ssl_handshake_timeout is only meaningful with ssl')):
            await loop.create_server(asyncio.Protocol, '127.0.0.1', 0,
                                     ssl_handshake_timeout=1)
        with pytest.raises(socket.gaierror):
            await wait(loop.create_server(asyncio.Protocol,
                                          'nonexistent.invalid', 0))
        # flags reach getaddrinfo: a name with AI_NUMERICHOST cannot resolve.
        with pytest.raises(socket.gaierror) as info:
            await wait(loop.create_server(asyncio.Protocol, 'localhost', 0,
                                          flags=socket.AI_NUMERICHOST))
        assert info.value.errno == socket.EAI_NONAME
    run(main())


# ---------------------------------------------------------------------------
# file descriptor leaks
# ---------------------------------------------------------------------------

def _assert_no_fd_leak(before_fds, before_count):
    after = fd_count()
    if after != before_count:
        now = open_fds()
        leaked = {fd: now[fd] for fd in set(now) - set(before_fds)}
        pytest.fail(f'fd leak: {before_count} -> {after}; new: {leaked}')


def test_no_fd_leak_server_lifecycle(loop, run):
    async def warm_up():
        # Let lazily created loop resources (executor, self-pipe) exist.
        await loop.getaddrinfo('127.0.0.1', 0)
        server = await loop.create_server(lambda: Recorder(loop),
                                          '127.0.0.1', 0)
        server.close()
        await server.wait_closed()

    async def main():
        sf = Factory(EchoProtocol, loop)
        server = await wait(loop.create_server(sf, '127.0.0.1', 0))
        addr = addr_of(server)
        clients = []
        for i in range(20):
            proto = Recorder(loop)
            tr, _ = await wait(loop.create_connection(lambda p=proto: p, *addr))
            tr.write(b'%d' % i)
            clients.append(proto)
        for i, proto in enumerate(clients):
            assert await proto.wait_bytes(len(b'%d' % i)) == b'%d' % i
        # Half of the connections closed by clients, half by the server.
        await close_protocols(clients[:10])
        await sf.wait_count(20)
        await close_protocols(sf.protocols[10:])
        await close_protocols(clients[10:])
        await sf.close_all()
        server.close()
        await wait(server.wait_closed())
        # Failed operations must not leak their sockets either.
        port = unused_port()
        with pytest.raises(ConnectionRefusedError):
            await wait(loop.create_connection(asyncio.Protocol, '127.0.0.1',
                                              port))
        busy = await wait(loop.create_server(asyncio.Protocol, '127.0.0.1', 0))
        with pytest.raises(OSError):
            await loop.create_server(asyncio.Protocol, '127.0.0.1',
                                     addr_of(busy)[1])
        busy.close()
        await busy.wait_closed()

    run(warm_up())
    before_fds = open_fds()
    before = fd_count()
    run(main())
    _assert_no_fd_leak(before_fds, before)


def test_no_fd_leak_streams(loop, run):
    async def main():
        async def handler(reader, writer):
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(handler, '127.0.0.1', 0)
        async with server:
            addr = server.sockets[0].getsockname()
            for _ in range(10):
                reader, writer = await wait(asyncio.open_connection(*addr))
                writer.write(b'x\n')
                assert await wait(reader.readline()) == b'x\n'
                assert await wait(reader.read()) == b''
                writer.close()
                await wait(writer.wait_closed())
            await asyncio.sleep(0.01)

    run(main())     # warm-up: the same thing once
    before_fds = open_fds()
    before = fd_count()
    run(main())
    _assert_no_fd_leak(before_fds, before)
