"""anyio's networking (asyncio backend) on the test's loop: TCP and Unix
listeners and clients (create_tcp_listener / connect_tcp,
create_unix_listener / connect_unix), fd passing over a Unix socket, TLS
streams, UDP (subprocesses and signals are in test_anyio_processes.py).
anyio's asyncio backend runs on whichever loop is running,
so each test is one ``loop.run_until_complete`` of anyio code.
"""

import hashlib
import os
import socket

import pytest
from io_helpers import payload, short_tmpdir

anyio = pytest.importorskip('anyio')
from anyio.abc import SocketAttribute  # noqa: E402
from anyio.streams.tls import TLSListener  # noqa: E402


async def echo(stream):
    async with stream:
        async for chunk in stream:  # until the peer's EOF
            await stream.send(chunk)


async def roundtrip(stream, data, chunk=65_536):
    """Sends ``data`` (then EOF) while reading the echo; returns it."""
    got = []

    async def reader():
        async for block in stream:
            got.append(block)

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        for i in range(0, len(data), chunk):
            await stream.send(data[i:i + chunk])
        await stream.send_eof()
    return b''.join(got)


def test_anyio_tcp(loop, bounded):
    async def main():
        listener = await anyio.create_tcp_listener(local_host='127.0.0.1', local_port=0)
        port = listener.extra(SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, echo)

            async def client(n):
                data = payload(512 * 1024 + n)
                async with await anyio.connect_tcp('127.0.0.1', port) as stream:
                    assert stream.extra(SocketAttribute.remote_port) == port
                    assert stream.extra(SocketAttribute.family) == socket.AF_INET
                    got = await roundtrip(stream, data)
                assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
                return len(got)

            sizes = []

            async def run_client(n):
                sizes.append(await client(n))

            async with anyio.create_task_group() as clients:
                for n in range(12):
                    clients.start_soon(run_client, n)
            assert sorted(sizes) == [512 * 1024 + n for n in range(12)]
            tg.cancel_scope.cancel()

        # nothing listens any more
        with pytest.raises(OSError):
            await anyio.connect_tcp('127.0.0.1', port)

    bounded(main())


def test_anyio_unix(loop, bounded, tmp_path):
    async def main(path):
        listener = await anyio.create_unix_listener(path)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, echo)
            for n in range(5):
                data = payload(300_000 + n)
                async with await anyio.connect_unix(path) as stream:
                    assert stream.extra(SocketAttribute.family) == socket.AF_UNIX
                    assert await roundtrip(stream, data, chunk=40_000) == data
            tg.cancel_scope.cancel()

    with short_tmpdir(tmp_path) as d:
        bounded(main(str(d / 'anyio.sock')))


def test_anyio_unix_fd_passing(loop, bounded, tmp_path):
    async def main(path):
        received = []

        async def handler(stream):
            async with stream:
                msg, fds = await stream.receive_fds(1024, 4)
                for fd in fds:
                    received.append(os.read(fd, 100))
                    os.close(fd)
                await stream.send(msg.upper())

        listener = await anyio.create_unix_listener(path)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, handler)
            r1, w1 = os.pipe()
            r2, w2 = os.pipe()
            try:
                os.write(w1, b'first pipe')
                os.write(w2, b'second pipe')
                async with await anyio.connect_unix(path) as stream:
                    await stream.send_fds(b'two fds', [r1, r2])
                    assert await stream.receive() == b'TWO FDS'
            finally:
                for fd in (r1, w1, r2, w2):
                    os.close(fd)
            tg.cancel_scope.cancel()
        assert received == [b'first pipe', b'second pipe']

    with short_tmpdir(tmp_path) as d:
        bounded(main(str(d / 'fds.sock')))


def test_anyio_tls(loop, bounded, tls_contexts):
    server_ctx, client_ctx = tls_contexts

    async def main():
        tcp = await anyio.create_tcp_listener(local_host='127.0.0.1', local_port=0)
        port = tcp.extra(SocketAttribute.local_port)
        listener = TLSListener(tcp, server_ctx, standard_compatible=False)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, echo)
            for n in range(3):
                data = payload(700_000 + n)
                async with await anyio.connect_tcp('127.0.0.1', port, ssl_context=client_ctx,
                                                   tls_standard_compatible=False) as stream:
                    assert stream.extra(anyio.streams.tls.TLSAttribute.tls_version)
                    got = []

                    async def reader(stream=stream, got=got, data=data):
                        while sum(map(len, got)) < len(data):
                            got.append(await stream.receive())

                    async with anyio.create_task_group() as io:
                        io.start_soon(reader)
                        for i in range(0, len(data), 50_000):
                            await stream.send(data[i:i + 50_000])
                    assert b''.join(got) == data
            tg.cancel_scope.cancel()

    bounded(main())


def test_anyio_udp(loop, bounded):
    async def main():
        async with await anyio.create_udp_socket(local_host='127.0.0.1') as server:
            port = server.extra(SocketAttribute.local_port)

            async def serve():
                async for data, addr in server:
                    await server.sendto(data[::-1], *addr)

            async with anyio.create_task_group() as tg:
                tg.start_soon(serve)
                async with await anyio.create_connected_udp_socket(
                        '127.0.0.1', port, local_host='127.0.0.1') as client:
                    for i in range(100):
                        msg = f'datagram {i}'.encode() * (1 + i % 7)
                        await client.send(msg)
                        with anyio.fail_after(5):
                            assert await client.receive() == msg[::-1]
                tg.cancel_scope.cancel()

    bounded(main())


def test_anyio_udp_addresses(loop, bounded):
    """create_udp_socket / create_connected_udp_socket on 127.0.0.1: the
    sockets' addresses, the sender addresses the receivers see, datagram
    boundaries, and a connected socket receiving only from its peer."""
    async def receive(sock):
        with anyio.fail_after(5):
            return await sock.receive()

    async def main():
        async with await anyio.create_udp_socket(
                family=socket.AF_INET, local_host='127.0.0.1') as server:
            assert server.extra(SocketAttribute.family) == socket.AF_INET
            server_addr = server.extra(SocketAttribute.local_address)
            assert server_addr[0] == '127.0.0.1' and server_addr[1] > 0
            assert server.extra(SocketAttribute.local_port) == server_addr[1]

            async with await anyio.create_connected_udp_socket(
                    *server_addr, local_host='127.0.0.1') as client:
                client_addr = client.extra(SocketAttribute.local_address)
                assert client_addr[0] == '127.0.0.1' and client_addr != server_addr
                assert client.extra(SocketAttribute.remote_address) == server_addr
                assert client.extra(SocketAttribute.remote_port) == server_addr[1]

                # the server sees the client's address; its answer comes back
                await client.send(b'ping')
                data, addr = await receive(server)
                assert (data, addr) == (b'ping', client_addr)
                await server.sendto(b'pong', *addr)
                assert await receive(client) == b'pong'

                # a burst: boundaries and (on loopback) order are kept
                msgs = [bytes([i]) * (1 + 97 * i) for i in range(30)]
                for m in msgs:
                    await client.send(m)
                got = [await receive(server) for _ in msgs]
                assert [d for d, _ in got] == msgs
                assert {a for _, a in got} == {client_addr}
                for m in msgs:
                    await server.sendto(m[::-1], *client_addr)
                assert [await receive(client) for _ in msgs] == [m[::-1] for m in msgs]

                # an unconnected socket talking to both
                async with await anyio.create_udp_socket(local_host='127.0.0.1') as other:
                    other_addr = other.extra(SocketAttribute.local_address)
                    await other.sendto(b'hello server', *server_addr)
                    assert await receive(server) == (b'hello server', other_addr)
                    await server.sendto(b'hello other', *other_addr)
                    assert await receive(other) == (b'hello other', server_addr)
                    # the connected client drops datagrams from others:
                    # it gets only the server's, sent after
                    await other.sendto(b'not for you', *client_addr)
                    await server.sendto(b'for you', *client_addr)
                    assert await receive(client) == b'for you'

            # a datagram to the closed client's port (an ICMP port
            # unreachable, ignored by an unconnected socket): the server
            # stays usable
            await server.sendto(b'to nobody', *client_addr)
            async with await anyio.create_udp_socket(local_host='127.0.0.1') as other:
                await other.sendto(b'again', *server_addr)
                assert await receive(server) == (
                    b'again', other.extra(SocketAttribute.local_address))

    bounded(main())
