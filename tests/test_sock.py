"""loop.sock_* coroutines on non-blocking sockets.

Expected behaviour: CPython 3.11's selector loop (selector_events.py).
"""

import array
import asyncio
import contextlib
import errno
import os
import re
import socket
import time

import pytest
from io_helpers import (
    TIMEOUT,
    listening_socket,
    payload,
    read_all,
    sha256,
    socketpair,
    tcp_pair,
    unused_port,
)


@pytest.fixture
def udp_pair():
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        a.bind(('127.0.0.1', 0))
        b.bind(('127.0.0.1', 0))
        a.setblocking(False)
        b.setblocking(False)
        yield a, b
    finally:
        a.close()
        b.close()


def wait(coro):
    return asyncio.wait_for(coro, TIMEOUT)


# ---------------------------------------------------------------------------
# sock_recv / sock_recv_into
# ---------------------------------------------------------------------------

def test_sock_recv_data_already_available(loop, run):
    with socketpair() as (a, b):
        b.send(b'ready')
        assert run(wait(loop.sock_recv(a, 100))) == b'ready'


def test_sock_recv_waits_for_data(loop, run):
    with socketpair() as (a, b):
        async def main():
            task = asyncio.ensure_future(loop.sock_recv(a, 100))
            for _ in range(5):
                await asyncio.sleep(0)
            assert not task.done()
            b.send(b'later')
            return await wait(task)
        assert run(main()) == b'later'


def test_sock_recv_respects_nbytes(loop, run):
    with socketpair() as (a, b):
        b.send(b'0123456789')
        assert run(loop.sock_recv(a, 4)) == b'0123'
        assert run(loop.sock_recv(a, 4)) == b'4567'
        assert run(loop.sock_recv(a, 4)) == b'89'


def test_sock_recv_returns_empty_bytes_on_peer_close(loop, run):
    with socketpair() as (a, b):
        b.close()
        assert run(wait(loop.sock_recv(a, 100))) == b''


def test_sock_recv_pending_then_peer_closes(loop, run):
    with socketpair() as (a, b):
        async def main():
            task = asyncio.ensure_future(loop.sock_recv(a, 100))
            await asyncio.sleep(0.01)
            assert not task.done()
            b.close()
            return await wait(task)
        assert run(main()) == b''


def test_sock_recv_tcp_peer_shutdown_then_empty(loop, run):
    with tcp_pair() as (c, s):
        async def main():
            await loop.sock_sendall(c, b'last words')
            c.shutdown(socket.SHUT_WR)
            data = await read_all(loop, s, 1 << 20)
            assert data == b'last words'
            assert await wait(loop.sock_recv(s, 10)) == b''
        run(main())


def test_sock_recv_into(loop, run):
    with socketpair() as (a, b):
        async def main():
            buf = bytearray(10)
            task = asyncio.ensure_future(loop.sock_recv_into(a, buf))
            await asyncio.sleep(0)
            b.send(b'abc')
            n = await wait(task)
            assert n == 3
            assert buf == b'abc' + bytes(7)
            # Into a memoryview slice: only that part is written.
            buf2 = bytearray(b'..........')
            b.send(b'XYZW')
            n = await wait(loop.sock_recv_into(a, memoryview(buf2)[2:5]))
            assert n == 3
            assert buf2 == b'..XYZ.....'
            n = await wait(loop.sock_recv_into(a, buf2))
            assert n == 1
            assert buf2[:1] == b'W'
        run(main())


def test_sock_recv_into_peer_closed_returns_zero(loop, run):
    with socketpair() as (a, b):
        b.close()
        buf = bytearray(4)
        assert run(wait(loop.sock_recv_into(a, buf))) == 0
        assert buf == bytes(4)


def test_cancelled_sock_recv_leaves_socket_usable(loop, run):
    with socketpair() as (a, b):
        async def main():
            task = asyncio.ensure_future(loop.sock_recv(a, 100))
            for _ in range(3):
                await asyncio.sleep(0)
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert task.cancelled()
            # No reader is left behind for the socket.
            assert loop.remove_reader(a) is False
            b.send(b'for the next one')
            # The cancelled call did not consume the data.
            return await wait(loop.sock_recv(a, 100))
        assert run(main()) == b'for the next one'


def test_cancelled_sock_recv_into_leaves_buffer_untouched(loop, run):
    with socketpair() as (a, b):
        async def main():
            buf = bytearray(8)
            task = asyncio.ensure_future(loop.sock_recv_into(a, buf))
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            b.send(b'data')
            await asyncio.sleep(0.01)
            assert buf == bytes(8)
            buf2 = bytearray(8)
            assert await wait(loop.sock_recv_into(a, buf2)) == 4
            assert buf2[:4] == b'data'
        run(main())


def test_concurrent_sock_recv_on_different_sockets(loop, run):
    with socketpair() as (a, b), socketpair() as (c, d):
        async def main():
            t1 = asyncio.ensure_future(loop.sock_recv(a, 10))
            t2 = asyncio.ensure_future(loop.sock_recv(c, 10))
            await asyncio.sleep(0)
            d.send(b'second')
            assert await wait(t2) == b'second'
            assert not t1.done()
            b.send(b'first')
            assert await wait(t1) == b'first'
        run(main())


def test_sock_recv_wait_for_timeout(loop, run):
    with socketpair() as (a, b):
        async def main():
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(loop.sock_recv(a, 10), 0.02)
            b.send(b'after timeout')
            return await wait(loop.sock_recv(a, 100))
        assert run(main()) == b'after timeout'


# ---------------------------------------------------------------------------
# UDP
# ---------------------------------------------------------------------------

def test_sock_sendto_and_recvfrom(loop, run, udp_pair):
    a, b = udp_pair

    async def main():
        task = asyncio.ensure_future(loop.sock_recvfrom(b, 1000))
        await asyncio.sleep(0)
        n = await wait(loop.sock_sendto(a, b'datagram', b.getsockname()))
        assert n == 8
        data, addr = await wait(task)
        assert data == b'datagram'
        assert addr == a.getsockname()
    run(main())


def test_sock_recvfrom_truncates_to_bufsize(loop, run, udp_pair):
    a, b = udp_pair
    a.sendto(b'0123456789', b.getsockname())

    async def main():
        data, addr = await wait(loop.sock_recvfrom(b, 4))
        assert data == b'0123'
        assert addr == a.getsockname()
    run(main())


def test_sock_recvfrom_into(loop, run, udp_pair):
    a, b = udp_pair

    async def main():
        buf = bytearray(16)
        task = asyncio.ensure_future(loop.sock_recvfrom_into(b, buf))
        await asyncio.sleep(0)
        a.sendto(b'hello', b.getsockname())
        n, addr = await wait(task)
        assert (n, addr) == (5, a.getsockname())
        assert buf[:5] == b'hello'
        # nbytes limits how much of the datagram is stored.
        buf2 = bytearray(16)
        a.sendto(b'0123456789', b.getsockname())
        n, addr = await wait(loop.sock_recvfrom_into(b, buf2, 3))
        assert (n, addr) == (3, a.getsockname())
        assert buf2 == b'012' + bytes(13)
        # nbytes=0 means len(buf).
        buf3 = bytearray(4)
        a.sendto(b'abcdefgh', b.getsockname())
        n, _ = await wait(loop.sock_recvfrom_into(b, buf3, 0))
        assert n == 4
        assert buf3 == b'abcd'
    run(main())


def test_sock_sendto_returns_bytes_sent_and_accepts_buffers(loop, run, udp_pair):
    a, b = udp_pair

    async def main():
        addr = b.getsockname()
        assert await loop.sock_sendto(a, bytearray(b'ba'), addr) == 2
        assert await loop.sock_sendto(a, memoryview(b'mv!'), addr) == 3
        got = []
        for _ in range(2):
            data, _ = await wait(loop.sock_recvfrom(b, 100))
            got.append(data)
        assert got == [b'ba', b'mv!']
    run(main())


def test_sock_recvfrom_ipv6(loop, run):
    from io_helpers import has_ipv6_loopback
    if not has_ipv6_loopback():
        pytest.skip('no IPv6 loopback')
    a = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        a.bind(('::1', 0))
        b.bind(('::1', 0))
        a.setblocking(False)
        b.setblocking(False)

        async def main():
            await loop.sock_sendto(a, b'six', b.getsockname())
            data, addr = await wait(loop.sock_recvfrom(b, 10))
            assert data == b'six'
            assert addr == a.getsockname()
        run(main())
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------------------
# sock_sendall
# ---------------------------------------------------------------------------

def test_sock_sendall_small(loop, run):
    with socketpair() as (a, b):
        assert run(wait(loop.sock_sendall(a, b'small'))) is None
        assert b.recv(100) == b'small'


@pytest.mark.parametrize('kind', ['bytes', 'bytearray', 'memoryview'])
def test_sock_sendall_large_with_concurrent_reader(loop, run, kind):
    size = 8 * 1024 * 1024
    data = payload(size)
    buf = {'bytes': data, 'bytearray': bytearray(data),
           'memoryview': memoryview(data)}[kind]
    with socketpair() as (a, b):
        async def main():
            reader = asyncio.ensure_future(read_all(loop, b, size))
            result = await wait(loop.sock_sendall(a, buf))
            assert result is None
            received = await reader
            assert len(received) == size
            assert sha256(received) == sha256(data)
        run(main())


def test_sock_sendall_over_tcp(loop, run):
    size = 4 * 1024 * 1024
    data = payload(size)
    with tcp_pair() as (c, s):
        async def main():
            reader = asyncio.ensure_future(read_all(loop, s, size))
            await wait(loop.sock_sendall(c, data))
            received = await reader
            assert sha256(received) == sha256(data)
        run(main())


def test_sock_sendall_empty(loop, run):
    with socketpair() as (a, b):
        assert run(wait(loop.sock_sendall(a, b''))) is None


def test_cancelled_sock_sendall_removes_writer(loop, run):
    with socketpair() as (a, b):
        async def main():
            task = asyncio.ensure_future(loop.sock_sendall(a, payload(4 << 20)))
            await asyncio.sleep(0.01)
            assert not task.done()      # nobody reads: it must be waiting
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert loop.remove_writer(a) is False
        run(main())


def test_sock_sendall_to_closed_peer_raises(loop, run):
    with socketpair() as (a, b):
        b.close()
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            run(wait(loop.sock_sendall(a, b'x' * 1000)))


# ---------------------------------------------------------------------------
# sock_connect / sock_accept
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('host', ['127.0.0.1', 'localhost'])
def test_sock_connect_and_accept(loop, run, host):
    with listening_socket() as lsock:
        lsock.setblocking(False)
        port = lsock.getsockname()[1]
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.setblocking(False)
        conn = None
        try:
            async def main():
                nonlocal conn
                accept = asyncio.ensure_future(loop.sock_accept(lsock))
                assert await wait(loop.sock_connect(client, (host, port))) is None
                conn, addr = await wait(accept)
                assert addr == client.getsockname()
                assert client.getpeername() == ('127.0.0.1', port)
                # The accepted socket is non-blocking.
                assert conn.gettimeout() == 0.0
                assert not conn.getblocking()
                await loop.sock_sendall(client, b'over tcp')
                assert await wait(loop.sock_recv(conn, 100)) == b'over tcp'
            run(main())
        finally:
            client.close()
            if conn is not None:
                conn.close()


def test_sock_accept_waits_for_connection(loop, run):
    with listening_socket() as lsock:
        lsock.setblocking(False)

        async def main():
            accept = asyncio.ensure_future(loop.sock_accept(lsock))
            for _ in range(3):
                await asyncio.sleep(0)
            assert not accept.done()
            client = socket.create_connection(lsock.getsockname())
            try:
                conn, addr = await wait(accept)
                with conn:
                    assert addr == client.getsockname()
                    assert isinstance(conn, socket.socket)
            finally:
                client.close()
        run(main())


def test_cancelled_sock_accept(loop, run):
    with listening_socket() as lsock:
        lsock.setblocking(False)

        async def main():
            accept = asyncio.ensure_future(loop.sock_accept(lsock))
            await asyncio.sleep(0)
            accept.cancel()
            with pytest.raises(asyncio.CancelledError):
                await accept
            assert loop.remove_reader(lsock) is False
            client = socket.create_connection(lsock.getsockname())
            try:
                conn, addr = await wait(loop.sock_accept(lsock))
                conn.close()
                assert addr == client.getsockname()
            finally:
                client.close()
        run(main())


def test_sock_connect_refused(loop, run):
    port = unused_port()
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setblocking(False)
    try:
        with pytest.raises(ConnectionRefusedError) as info:
            run(wait(loop.sock_connect(client, ('127.0.0.1', port))))
        assert info.value.errno == errno.ECONNREFUSED
        assert re.fullmatch(
            r"\[Errno 111\] (Connect call failed \('127\.0\.0\.1', "
            + str(port) + r"\)|Connection refused)",
            str(info.value)), str(info.value)
        assert loop.remove_writer(client) is False
    finally:
        client.close()


def test_sock_connect_unresolvable_host(loop, run):
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setblocking(False)
    try:
        with pytest.raises(socket.gaierror):
            run(wait(loop.sock_connect(client, ('nonexistent.invalid', 80))))
    finally:
        client.close()


def test_sock_connect_unix(loop, run, tmp_path):
    from io_helpers import short_tmpdir
    with short_tmpdir(tmp_path) as d:
        path = str(d / 's')
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            lsock.bind(path)
            lsock.listen(1)
            lsock.setblocking(False)
            client.setblocking(False)

            async def main():
                accept = asyncio.ensure_future(loop.sock_accept(lsock))
                await wait(loop.sock_connect(client, path))
                conn, _ = await wait(accept)
                with conn:
                    await loop.sock_sendall(conn, b'unix')
                    assert await wait(loop.sock_recv(client, 10)) == b'unix'
            run(main())
        finally:
            lsock.close()
            client.close()


# ---------------------------------------------------------------------------
# blocking sockets (asyncio checks them in debug mode)
# ---------------------------------------------------------------------------

NONBLOCKING_MSG = '^the socket must be non-blocking$'


@pytest.mark.parametrize('method', [
    'sock_recv', 'sock_recv_into', 'sock_recvfrom', 'sock_recvfrom_into',
    'sock_sendall', 'sock_sendto', 'sock_connect', 'sock_accept',
    'sock_sendfile',
])
def test_blocking_socket_rejected_in_debug_mode(loop, run, method, tmp_path):
    loop.set_debug(True)
    stype = (socket.SOCK_DGRAM if method in ('sock_recvfrom',
                                             'sock_recvfrom_into',
                                             'sock_sendto')
             else socket.SOCK_STREAM)
    sock = socket.socket(socket.AF_INET, stype)
    f = open(tmp_path / 'f', 'w+b')
    try:
        assert sock.gettimeout() is None      # blocking
        args = {
            'sock_recv': (sock, 10),
            'sock_recv_into': (sock, bytearray(10)),
            'sock_recvfrom': (sock, 10),
            'sock_recvfrom_into': (sock, bytearray(10)),
            'sock_sendall': (sock, b'x'),
            'sock_sendto': (sock, b'x', ('127.0.0.1', 9)),
            'sock_connect': (sock, ('127.0.0.1', 9)),
            'sock_accept': (sock,),
            'sock_sendfile': (sock, f),
        }[method]
        with pytest.raises(ValueError, match=NONBLOCKING_MSG):
            run(getattr(loop, method)(*args))
        # A socket with a timeout is not non-blocking either.
        sock.settimeout(1.0)
        with pytest.raises(ValueError, match=NONBLOCKING_MSG):
            run(getattr(loop, method)(*args))
    finally:
        sock.close()
        f.close()


# ---------------------------------------------------------------------------
# what a socket's registration kept between operations must not change
# (ferroloop keeps it, edge-triggered; asyncio adds and removes a reader)
# ---------------------------------------------------------------------------

def test_sock_recv_after_the_fd_number_is_reused(loop, run):
    async def main():
        with socketpair() as (a, b):
            fd = a.fileno()
            task = asyncio.ensure_future(loop.sock_recv(a, 10))
            await asyncio.sleep(0.01)
            b.send(b'one')
            assert await wait(task) == b'one'
        # `a` is closed: its number comes back with the next socket.
        with socketpair() as (c, d):
            if fd not in (c.fileno(), d.fileno()):
                pytest.skip('the fd number was not reused')
            mine, peer = (c, d) if c.fileno() == fd else (d, c)
            task = asyncio.ensure_future(loop.sock_recv(mine, 10))
            await asyncio.sleep(0.01)
            peer.send(b'two')
            assert await wait(task) == b'two'
            # add_reader on the reused number works too
            got = loop.create_future()
            loop.add_reader(mine, lambda: got.done() or got.set_result(mine.recv(10)))
            peer.send(b'three')
            assert await wait(got) == b'three'
            assert loop.remove_reader(mine) is True
    run(main())


def test_remove_reader_after_sock_recv_finds_nothing(loop, run):
    async def main():
        with socketpair() as (a, b):
            task = asyncio.ensure_future(loop.sock_recv(a, 10))
            await asyncio.sleep(0.01)
            b.send(b'x')
            assert await wait(task) == b'x'
            assert loop.remove_reader(a) is False
            assert loop.remove_writer(a) is False
    run(main())


def test_sock_recv_in_small_pieces_then_eof(loop, run):
    # Data and the FIN arrive before the reads: every piece, then b''.
    async def main():
        with tcp_pair() as (a, b):
            task = asyncio.ensure_future(loop.sock_recv(a, 3))
            await asyncio.sleep(0.01)
            b.sendall(b'0123456789')
            b.shutdown(socket.SHUT_WR)
            got = [await wait(task)]
            while got[-1]:
                got.append(await wait(loop.sock_recv(a, 3)))
            assert b''.join(got) == b'0123456789'
            assert got[-1] == b''
    run(main())


def test_sock_recv_datagrams_queued_together(loop, run, udp_pair):
    a, b = udp_pair
    async def main():
        task = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        for i in range(5):
            b.sendto(b'd%d' % i, a.getsockname())
        got = [await wait(task)]
        for _ in range(4):
            got.append(await wait(loop.sock_recv(a, 100)))
        assert got == [b'd%d' % i for i in range(5)]
    run(main())


def test_sock_recv_zero_and_negative_sizes(loop, run):
    async def main():
        with socketpair() as (a, b):
            assert await wait(loop.sock_recv(a, 0)) == b''
            with pytest.raises(ValueError, match='negative buffersize in recv'):
                await wait(loop.sock_recv(a, -1))
    run(main())


def test_pending_sock_sendall_keeps_a_bytearray_from_resizing(loop, run):
    # asyncio holds a memoryview of the data while the send waits.
    async def main():
        with socketpair() as (a, b):
            data = bytearray(payload(8 << 20))
            task = asyncio.ensure_future(loop.sock_sendall(a, data))
            await asyncio.sleep(0.01)
            assert not task.done()
            with pytest.raises(BufferError):
                data.extend(b'x')
            got = await read_all(loop, b, len(data))
            await wait(task)
            assert sha256(got) == sha256(bytes(data))
            data.extend(b'x')  # released once the send is done
    run(main())


def test_sock_accept_then_more_connections_queued_together(loop, run):
    # Three clients connect before the server accepts: one readiness event
    # covers them all, and each sock_accept gets one.
    async def main():
        with listening_socket() as lsock:
            lsock.setblocking(False)
            first = asyncio.ensure_future(loop.sock_accept(lsock))
            await asyncio.sleep(0.01)
            clients = [socket.create_connection(lsock.getsockname()) for _ in range(3)]
            try:
                conns = [await wait(first)]
                conns += [await wait(loop.sock_accept(lsock)) for _ in range(2)]
                for (conn, _addr), c in zip(conns, clients, strict=True):
                    assert conn.gettimeout() == 0
                    c.sendall(b'hi')
                # every accepted socket belongs to one client
                peers = sorted(c.getsockname() for c in clients)
                assert sorted(addr for _, addr in conns) == peers
                for conn, _ in conns:
                    assert await wait(loop.sock_recv(conn, 10)) == b'hi'
                    conn.close()
            finally:
                for c in clients:
                    c.close()
    run(main())


def test_sock_recv_unix_read_stopped_by_ancillary_data(loop, run):
    # An AF_UNIX read stops after a message that carried SCM_RIGHTS while
    # more bytes are queued: the rest must still arrive.
    async def main():
        r, w = os.pipe()
        try:
            with socketpair() as (a, b):
                async def send():
                    await asyncio.sleep(0.02)
                    b.sendmsg([b'abc'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                          array.array('i', [r]))])
                    b.send(b'def')
                sender = asyncio.ensure_future(send())
                got = b''
                while len(got) < 6:
                    got += await wait(loop.sock_recv(a, 100))
                await sender
                assert got == b'abcdef'
        finally:
            os.close(r)
            os.close(w)
    run(main())


def test_pending_sock_recv_of_a_closed_socket_never_reads_another(loop, run):
    # The socket is closed with its sock_recv pending; a new socket gets the
    # same fd number and is watched: the old operation must not read it.
    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        task = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0.02)
        a.close()
        b.close()
        with socketpair() as (c, d):
            with contextlib.suppress(OSError):  # asyncio: ENOENT from epoll
                loop.add_writer(c, lambda: loop.remove_writer(c))
            d.send(b'for c')
            await asyncio.sleep(0.1)
            assert not task.done()
            assert c.recv(100) == b'for c'
            loop.remove_writer(c)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    run(main())


def test_socket_at_eof_does_not_keep_the_loop_busy(loop, run):
    async def main():
        with socketpair() as (a, b):
            task = asyncio.ensure_future(loop.sock_recv(a, 100))
            await asyncio.sleep(0.02)
            b.send(b'req')
            b.shutdown(socket.SHUT_WR)
            assert await wait(task) == b'req'
            assert await wait(loop.sock_recv(a, 100)) == b''
            cpu = time.process_time()
            await asyncio.sleep(0.3)
            assert time.process_time() - cpu < 0.15
    run(main())


def test_sock_recv_after_remove_reader_with_a_send_pending(loop, run):
    async def main():
        with socketpair() as (a, b):
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            big = asyncio.ensure_future(loop.sock_sendall(a, b'z' * 4_000_000))
            await asyncio.sleep(0.02)
            assert not big.done()
            assert loop.remove_reader(a) is False
            b.send(b'ping')
            assert await wait(loop.sock_recv(a, 100)) == b'ping'
            big.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await big
    run(main())
