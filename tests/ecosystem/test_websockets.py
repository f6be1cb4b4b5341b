"""websockets (the asyncio API: websockets.asyncio.server.serve /
websockets.asyncio.client.connect) server and client on the test's loop:
echo over TCP, TLS (wss) and a Unix socket, large and many messages,
pings, close codes, concurrent clients.
"""

import asyncio
import hashlib

import pytest
from io_helpers import payload, short_tmpdir

websockets = pytest.importorskip('websockets')
ws_server = pytest.importorskip('websockets.asyncio.server',
                                reason='websockets has no asyncio API (needs >= 13)')
ws_client = pytest.importorskip('websockets.asyncio.client')
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK  # noqa: E402


async def echo(conn):
    async for msg in conn:
        if msg == 'who':
            await conn.send(type(asyncio.get_running_loop()).__name__)
        elif msg == 'close':
            await conn.close(1000, 'asked to')
        elif isinstance(msg, str):
            await conn.send(msg[::-1])
        else:
            await conn.send(hashlib.sha256(msg).digest() + msg[:16])


def addr(server):
    host, port = server.sockets[0].getsockname()[:2]
    return f'ws://{host}:{port}'


async def exchange(conn, loop):
    await conn.send('who')
    assert await conn.recv() == type(loop).__name__
    for i in range(200):
        await conn.send(f'text {i}')
    for i in range(200):
        assert await conn.recv() == f'text {i}'[::-1]
    blob = payload(4 * 1024 * 1024 + 3)
    await conn.send(blob)
    got = await conn.recv()
    assert got == hashlib.sha256(blob).digest() + blob[:16]
    latency = await (await conn.ping(b'hi'))
    assert 0 <= latency < 5


def test_websockets_echo(loop, bounded):
    async def main():
        async with ws_server.serve(echo, '127.0.0.1', 0, max_size=8 << 20) as server:
            async with ws_client.connect(addr(server), max_size=8 << 20) as conn:
                await exchange(conn, loop)
                await conn.send('close')
                with pytest.raises(ConnectionClosedOK):
                    await conn.recv()
                assert conn.close_code == 1000
                assert conn.close_reason == 'asked to'

    bounded(main())


def test_websockets_no_compression_and_max_size(loop, bounded):
    async def main():
        async with ws_server.serve(echo, '127.0.0.1', 0, compression=None,
                                   max_size=1 << 20) as server:
            async with ws_client.connect(addr(server), compression=None,
                                         max_size=8 << 20) as conn:
                await conn.send(payload(1000))
                assert len(await conn.recv()) == 48
                await conn.send(payload((1 << 20) + 1))  # over the server's max_size
                with pytest.raises(ConnectionClosedError):
                    await conn.recv()
                assert conn.close_code == 1009  # message too big

    bounded(main())


def test_websockets_concurrent_clients(loop, bounded):
    async def main():
        async with ws_server.serve(echo, '127.0.0.1', 0) as server:
            async def client(n):
                async with ws_client.connect(addr(server)) as conn:
                    for i in range(20):
                        await conn.send(f'{n}-{i}')
                        assert await conn.recv() == f'{n}-{i}'[::-1]
                return n

            assert await asyncio.gather(*(client(n) for n in range(25))) == list(range(25))

    bounded(main())


def test_websockets_tls(loop, bounded, tls_contexts):
    server_ctx, client_ctx = tls_contexts

    async def main():
        async with ws_server.serve(echo, '127.0.0.1', 0, ssl=server_ctx,
                                   max_size=8 << 20) as server:
            port = server.sockets[0].getsockname()[1]
            async with ws_client.connect(f'wss://127.0.0.1:{port}', ssl=client_ctx,
                                         max_size=8 << 20) as conn:
                assert conn.transport.get_extra_info('ssl_object') is not None
                await exchange(conn, loop)

    bounded(main())


def test_websockets_unix(loop, bounded, tmp_path):
    async def main(path):
        async with ws_server.unix_serve(echo, path, max_size=8 << 20):
            async with ws_client.unix_connect(path, 'ws://localhost/',
                                              max_size=8 << 20) as conn:
                await exchange(conn, loop)

    with short_tmpdir(tmp_path) as d:
        bounded(main(str(d / 'ws.sock')))
