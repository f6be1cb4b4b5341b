"""tornado's HTTPServer and AsyncHTTPClient (simple_httpclient, tornado's
own IOStream over the loop's add_reader/add_writer) on the asyncio loop of
the test, plus tornado's websocket server and client.  127.0.0.1 only.
"""

import asyncio
import contextlib
import hashlib
import json

import pytest
from io_helpers import payload

tornado = pytest.importorskip('tornado')

import tornado.httpclient  # noqa: E402
import tornado.httpserver  # noqa: E402
import tornado.netutil  # noqa: E402
import tornado.web  # noqa: E402
import tornado.websocket  # noqa: E402
from tornado.ioloop import IOLoop  # noqa: E402

CHUNK = 32 * 1024
CHUNKS = 64  # 2 MiB


class HelloHandler(tornado.web.RequestHandler):
    def get(self):
        self.write({'hello': self.get_argument('name', 'world'),
                    'loop': type(asyncio.get_running_loop()).__name__,
                    'ioloop_wraps_it': IOLoop.current().asyncio_loop
                    is asyncio.get_running_loop()})


class EchoHandler(tornado.web.RequestHandler):
    def post(self):
        body = self.request.body
        self.set_status(201)
        self.write({'len': len(body), 'sha256': hashlib.sha256(body).hexdigest(),
                    'ctype': self.request.headers.get('Content-Type')})


class StreamHandler(tornado.web.RequestHandler):
    async def get(self):
        for i in range(CHUNKS):
            self.write(bytes([i]) * CHUNK)
            await self.flush()  # chunked transfer encoding, one flush per chunk


class SlowHandler(tornado.web.RequestHandler):
    async def get(self, n):
        await asyncio.sleep(0.02)
        self.write(n)


class WSEcho(tornado.websocket.WebSocketHandler):
    def on_message(self, message):
        if isinstance(message, bytes):
            return self.write_message(message[::-1], binary=True)
        return self.write_message(message.upper())


@contextlib.asynccontextmanager
async def serving():
    app = tornado.web.Application([
        (r'/hello', HelloHandler),
        (r'/echo', EchoHandler),
        (r'/stream', StreamHandler),
        (r'/slow/(\d+)', SlowHandler),
        (r'/ws', WSEcho),
    ])
    sockets = tornado.netutil.bind_sockets(0, '127.0.0.1')
    server = tornado.httpserver.HTTPServer(app, max_body_size=16 << 20)
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    client = tornado.httpclient.AsyncHTTPClient(force_instance=True, max_clients=10)
    try:
        yield f'http://127.0.0.1:{port}', client
    finally:
        client.close()
        server.stop()
        await server.close_all_connections()


def test_tornado_http(loop, bounded):
    async def main():
        async with serving() as (url, client):
            r = await client.fetch(f'{url}/hello?name=ferro')
            assert r.code == 200
            assert json.loads(r.body) == {'hello': 'ferro', 'loop': type(loop).__name__,
                                          'ioloop_wraps_it': True}

            data = payload(2 * 1024 * 1024 + 1)
            r = await client.fetch(f'{url}/echo', method='POST', body=data,
                                   headers={'Content-Type': 'application/octet-stream'})
            assert r.code == 201
            assert json.loads(r.body) == {'len': len(data),
                                          'sha256': hashlib.sha256(data).hexdigest(),
                                          'ctype': 'application/octet-stream'}

            with pytest.raises(tornado.httpclient.HTTPClientError) as exc:
                await client.fetch(f'{url}/nowhere')
            assert exc.value.code == 404

    bounded(main())


def test_tornado_streaming(loop, bounded):
    async def main():
        async with serving() as (url, client):
            # chunked download through streaming_callback
            h = hashlib.sha256()
            sizes = []

            def on_chunk(block):
                h.update(block)
                sizes.append(len(block))

            r = await client.fetch(f'{url}/stream', streaming_callback=on_chunk,
                                   request_timeout=20)
            assert r.code == 200
            assert r.headers.get('Transfer-Encoding') == 'chunked'
            expected = b''.join(bytes([i]) * CHUNK for i in range(CHUNKS))
            assert sum(sizes) == len(expected)
            assert h.hexdigest() == hashlib.sha256(expected).hexdigest()

            # streamed upload through body_producer (chunked request)
            data = payload(1024 * 1024 + 5)

            async def producer(write):
                for i in range(0, len(data), 50_000):
                    await write(data[i:i + 50_000])

            r = await client.fetch(f'{url}/echo', method='POST', body_producer=producer,
                                   headers={'Content-Type': 'application/octet-stream'},
                                   request_timeout=20)
            assert json.loads(r.body)['sha256'] == hashlib.sha256(data).hexdigest()

            # concurrent requests (max_clients=10)
            rs = await asyncio.gather(*(client.fetch(f'{url}/slow/{i}') for i in range(40)))
            assert [r.body for r in rs] == [str(i).encode() for i in range(40)]

    bounded(main())


def test_tornado_websocket(loop, bounded):
    async def main():
        async with serving() as (url, _client):
            ws = await tornado.websocket.websocket_connect(
                url.replace('http://', 'ws://') + '/ws', max_message_size=8 << 20)
            try:
                for i in range(100):
                    await ws.write_message(f'm{i}')
                    assert await ws.read_message() == f'M{i}'
                blob = payload(1 << 20)
                await ws.write_message(blob, binary=True)
                assert await ws.read_message() == blob[::-1]
            finally:
                ws.close()
            # after the close handshake, read_message returns None
            assert await ws.read_message() is None

    bounded(main())
