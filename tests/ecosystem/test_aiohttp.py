"""aiohttp's web server (AppRunner + TCPSite on 127.0.0.1:0) and its
ClientSession, both on the test's loop: JSON GET/POST, a websocket echo, a
~5 MB web.FileResponse (sendfile), streamed uploads, concurrent requests.
"""

import asyncio
import contextlib
import hashlib

import pytest
from io_helpers import payload

aiohttp = pytest.importorskip('aiohttp')
from aiohttp import web  # noqa: E402

FILE_SIZE = 5 * 1024 * 1024 + 12345


def make_app(file_path=None):
    async def hello(request):
        loop = asyncio.get_running_loop()
        return web.json_response({'hello': request.query.get('name', 'world'),
                                  'loop': type(loop).__name__})

    async def echo_json(request):
        data = await request.json()
        return web.json_response({'got': data, 'keys': sorted(data)}, status=201)

    async def digest(request):
        h = hashlib.sha256()
        n = 0
        async for chunk in request.content.iter_chunked(65536):
            h.update(chunk)
            n += len(chunk)
        return web.json_response({'len': n, 'sha256': h.hexdigest()})

    async def slow(request):
        await asyncio.sleep(0.02)
        return web.Response(text=request.match_info['n'])

    async def file(request):
        return web.FileResponse(file_path)

    async def ws_echo(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                if msg.data == 'close':
                    await ws.close(code=4000, message=b'bye')
                else:
                    await ws.send_str(msg.data.upper())
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws

    app = web.Application()
    app.router.add_get('/hello', hello)
    app.router.add_post('/json', echo_json)
    app.router.add_post('/digest', digest)
    app.router.add_get('/slow/{n}', slow)
    app.router.add_get('/ws', ws_echo)
    if file_path is not None:
        app.router.add_get('/file', file)
    return app


@contextlib.asynccontextmanager
async def serving(app):
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, '127.0.0.1', 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f'http://{host}:{port}'
    finally:
        await runner.cleanup()


def test_aiohttp_json(loop, bounded):
    async def main():
        async with serving(make_app()) as url, aiohttp.ClientSession() as session:
            async with session.get(f'{url}/hello', params={'name': 'ferro'}) as r:
                assert r.status == 200
                assert await r.json() == {'hello': 'ferro', 'loop': type(loop).__name__}
            doc = {'b': [1, 2, 3], 'a': {'x': None, 'y': 'é'}, 'c': 1.5}
            async with session.post(f'{url}/json', json=doc) as r:
                assert r.status == 201
                assert await r.json() == {'got': doc, 'keys': ['a', 'b', 'c']}
            async with session.get(f'{url}/nowhere') as r:
                assert r.status == 404

    bounded(main())


def test_aiohttp_streamed_upload_and_concurrency(loop, bounded):
    async def main():
        data = payload(3 * 1024 * 1024 + 7)
        connector = aiohttp.TCPConnector(limit=10)
        async with serving(make_app()) as url, \
                aiohttp.ClientSession(connector=connector) as session:
            async def gen():
                for i in range(0, len(data), 77_777):
                    yield data[i:i + 77_777]
                    await asyncio.sleep(0)

            async with session.post(f'{url}/digest', data=gen()) as r:
                assert await r.json() == {'len': len(data),
                                          'sha256': hashlib.sha256(data).hexdigest()}

            async def get(n):
                async with session.get(f'{url}/slow/{n}') as r:
                    return await r.text()

            got = await asyncio.gather(*(get(i) for i in range(60)))
            assert got == [str(i) for i in range(60)]

    bounded(main())


def test_aiohttp_websocket_echo(loop, bounded):
    async def main():
        async with serving(make_app()) as url, aiohttp.ClientSession() as session:
            async with session.ws_connect(f'{url}/ws', heartbeat=5) as ws:
                for i in range(100):
                    await ws.send_str(f'msg {i}')
                for i in range(100):
                    assert await ws.receive_str(timeout=10) == f'MSG {i}'
                blob = payload(1 << 20)
                await ws.send_bytes(blob)
                assert await ws.receive_bytes(timeout=10) == blob[::-1]
                await ws.send_str('close')
                msg = await ws.receive(timeout=10)
                assert msg.type == aiohttp.WSMsgType.CLOSE
                assert (msg.data, msg.extra) == (4000, 'bye')
            assert ws.closed
            assert ws.close_code == 4000

    bounded(main())


def test_aiohttp_file_response(loop, bounded, tmp_path):
    data = payload(FILE_SIZE)
    path = tmp_path / 'big.bin'
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()

    async def main():
        async with serving(make_app(path)) as url, aiohttp.ClientSession() as session:
            # read whole, then streamed in small chunks (exercises flow control
            # of the sendfile path), then a Range request
            async with session.get(f'{url}/file') as r:
                assert r.status == 200
                assert r.content_length == FILE_SIZE
                body = await r.read()
            assert hashlib.sha256(body).hexdigest() == expected

            h = hashlib.sha256()
            async with session.get(f'{url}/file') as r:
                async for chunk in r.content.iter_chunked(8192):
                    h.update(chunk)
                    if r.content.total_bytes < 1 << 20:
                        await asyncio.sleep(0.001)  # a slow reader for the first MiB
            assert h.hexdigest() == expected

            start, end = 1_000_000, 3_500_000
            async with session.get(f'{url}/file',
                                   headers={'Range': f'bytes={start}-{end - 1}'}) as r:
                assert r.status == 206
                part = await r.read()
            assert part == data[start:end]

    bounded(main())
