"""uvicorn (httptools and h11 protocols) serving a small ASGI app, on the
test's loop; httpx / websockets clients on the same loop.  Also uvicorn as a
real subprocess on ferroloop (``--loop ferroloop:new_event_loop``), stopped
with SIGINT / SIGTERM.

Everything listens on 127.0.0.1 (or a Unix socket) on ephemeral ports.
"""

import asyncio
import contextlib
import hashlib
import os
import selectors
import signal
import subprocess
import sys
import time

import pytest
from io_helpers import payload, short_tmpdir

uvicorn = pytest.importorskip('uvicorn')
httpx = pytest.importorskip('httpx')

from ecosystem import asgi_app  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
HTTP_IMPLS = ('httptools', 'h11')


def loop_name(loop):
    return {'module': type(loop).__module__, 'name': type(loop).__name__}


@contextlib.asynccontextmanager
async def serving(**config_kw):
    """Runs ``uvicorn.Server(config).serve()`` as a task of the running
    loop; yields the server once it listens; stops it (should_exit) on exit
    and waits for serve() to return."""
    kw = dict(host='127.0.0.1', port=0, loop='none', lifespan='on',
              log_config=None, log_level='warning', access_log=False,
              timeout_graceful_shutdown=5)
    kw.update(config_kw)
    config = uvicorn.Config(asgi_app.app, **kw)
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()  # startup failed: raise its error
                    raise AssertionError('uvicorn serve() returned before starting')
                await asyncio.sleep(0.01)
        yield server
    finally:
        server.should_exit = True
        async with asyncio.timeout(10):
            await task


def base_url(server):
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    return f'http://{host}:{port}'


@pytest.mark.parametrize('http', HTTP_IMPLS)
def test_uvicorn_http(loop, bounded, http):
    async def main():
        asgi_app.LIFESPAN.clear()
        async with serving(http=http) as server:
            url = base_url(server)
            limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
            async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as client:
                r = await client.get('/')
                assert (r.status_code, r.text) == (200, 'hello')

                r = await client.get('/loop')
                assert r.json() == {**loop_name(loop), 'http_version': '1.1'}

                r = await client.get('/missing')
                assert r.status_code == 404

                # a 1 MiB upload (content-length) and a 1 MiB chunked upload
                data = payload(1 << 20)
                r = await client.post('/echo?x=1', content=data)
                assert r.json() == {'len': len(data), 'sha256': hashlib.sha256(data).hexdigest(),
                                    'method': 'POST', 'query': 'x=1'}

                async def chunks():
                    for i in range(0, len(data), 100_003):
                        yield data[i:i + 100_003]

                r = await client.put('/echo', content=chunks())
                assert r.json()['sha256'] == hashlib.sha256(data).hexdigest()

                # a chunked 2 MiB download, read incrementally
                h = hashlib.sha256()
                n = 0
                async with client.stream('GET', '/stream') as r:
                    assert r.status_code == 200
                    assert r.headers.get('transfer-encoding') == 'chunked'
                    async for block in r.aiter_bytes():
                        h.update(block)
                        n += len(block)
                expected = b''.join(bytes([i]) * asgi_app.STREAM_CHUNK
                                    for i in range(asgi_app.STREAM_CHUNKS))
                assert n == len(expected)
                assert h.hexdigest() == hashlib.sha256(expected).hexdigest()

                # 40 concurrent requests over at most 8 keep-alive connections
                t0 = loop.time()
                rs = await asyncio.gather(*(client.get('/slow', params={'delay': '0.05'})
                                            for _ in range(40)))
                assert [r.text for r in rs] == ['slow'] * 40
                assert loop.time() - t0 < 5
                assert 1 <= len(server.server_state.connections) <= 8
                assert server.server_state.total_requests == 46
        assert asgi_app.LIFESPAN == ['lifespan.startup', 'lifespan.shutdown']

    bounded(main())


@pytest.mark.parametrize('http', HTTP_IMPLS)
def test_uvicorn_graceful_shutdown(loop, bounded, http):
    """A request in flight when the server is told to exit still gets its
    response; serve() then returns after the lifespan shutdown."""
    async def main():
        asgi_app.LIFESPAN.clear()
        async with httpx.AsyncClient(timeout=10) as client:
            async with serving(http=http) as server:
                url = base_url(server)
                pending = asyncio.ensure_future(client.get(f'{url}/slow?delay=0.3'))
                async with asyncio.timeout(5):
                    while not server.server_state.tasks:
                        await asyncio.sleep(0.01)
                server.should_exit = True
                r = await pending
                assert (r.status_code, r.text) == (200, 'slow')
            # the listening socket is closed
            with pytest.raises(httpx.ConnectError):
                await client.get(url)
        assert asgi_app.LIFESPAN == ['lifespan.startup', 'lifespan.shutdown']

    bounded(main())


def test_uvicorn_unix_socket(loop, bounded, tmp_path):
    async def main(path):
        async with serving(http='httptools', uds=path, host=None, port=None) as server:
            assert server.servers[0].sockets[0].getsockname() == path
            transport = httpx.AsyncHTTPTransport(uds=path)
            async with httpx.AsyncClient(transport=transport, timeout=10) as client:
                for _ in range(3):
                    r = await client.get('http://uvicorn/loop')
                    assert r.json()['name'] == type(loop).__name__
                data = payload(300_000)
                r = await client.post('http://uvicorn/echo', content=data)
                assert r.json()['sha256'] == hashlib.sha256(data).hexdigest()

    with short_tmpdir(tmp_path) as d:
        bounded(main(str(d / 'uv.sock')))


def test_uvicorn_websocket(loop, bounded):
    ws_client = pytest.importorskip('websockets.asyncio.client')

    async def main():
        async with serving(http='httptools', ws='websockets-sansio') as server:
            host, port = server.servers[0].sockets[0].getsockname()[:2]
            async with ws_client.connect(f'ws://{host}:{port}/ws', open_timeout=10) as ws:
                for i in range(50):
                    await ws.send(f'message {i}')
                    assert await ws.recv() == f'message {i}'[::-1]
                big = payload(300_000)
                await ws.send(big)
                assert await ws.recv() == big[::-1]

    bounded(main())


# ---------------------------------------------------------------------------
# uvicorn as a subprocess
# ---------------------------------------------------------------------------

# uvicorn's --loop takes "module:callable", a zero-argument loop factory.
LOOP_OPTION = {
    'asyncio': 'asyncio',
    'ferroloop': 'ferroloop:new_event_loop',
    'ferroloop-compat': 'asgi_app:compat_loop',
}
EXPECTED_LOOP = {
    'asyncio': {'module': 'asyncio.unix_events', 'name': '_UnixSelectorEventLoop'},
    'ferroloop': {'module': 'ferroloop', 'name': 'Loop'},
    'ferroloop-compat': {'module': 'ferroloop', 'name': 'Loop'},
}


def _read_until(proc, stream, needle, timeout):
    """Reads ``stream`` (a pipe of ``proc``) until a line contains
    ``needle``; returns everything read. Bounded by ``timeout``."""
    out = b''
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        while needle not in out:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f'timed out waiting for {needle!r}; output:\n'
                                     f'{out.decode(errors="replace")}')
            if not sel.select(left):
                continue
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                raise AssertionError(f'uvicorn exited ({proc.wait(5)}) before {needle!r}; '
                                     f'output:\n{out.decode(errors="replace")}')
            out += chunk
    return out


@pytest.mark.parametrize(('http', 'sig'), [('httptools', signal.SIGINT), ('h11', signal.SIGTERM)],
                         ids=['httptools-SIGINT', 'h11-SIGTERM'])
def test_uvicorn_subprocess(loop_kind, loop, bounded, http, sig):
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([HERE] + [p for p in [env.get('PYTHONPATH')] if p])
    env.pop('PYTHONASYNCIODEBUG', None)
    argv = [sys.executable, '-m', 'uvicorn', 'asgi_app:app', '--host', '127.0.0.1',
            '--port', '0', '--loop', LOOP_OPTION[loop_kind], '--http', http,
            '--no-access-log', '--timeout-graceful-shutdown', '5']
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env, cwd=HERE)
    try:
        err = _read_until(proc, proc.stderr, b'(Press CTRL+C to quit)', timeout=20)
        line = next(ln for ln in err.decode().splitlines() if 'Uvicorn running on' in ln)
        url = line.split('Uvicorn running on ')[1].split()[0]
        assert url.startswith('http://127.0.0.1:')

        async def main():
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                r = await client.get('/loop')
                assert r.json() == {**EXPECTED_LOOP[loop_kind], 'http_version': '1.1'}
                data = payload(200_000)
                r = await client.post('/echo', content=data)
                assert r.json()['sha256'] == hashlib.sha256(data).hexdigest()

        bounded(main())

        proc.send_signal(sig)
        try:
            _, rest = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, rest = proc.communicate(timeout=5)
            raise AssertionError('uvicorn did not exit within 15 s of '
                                 f'{sig.name}:\n{(err + rest).decode(errors="replace")}'
                                 ) from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stderr.close()
    log = (err + rest).decode(errors='replace')
    # uvicorn shuts down gracefully, restores the previous handlers and
    # re-raises the captured signal: SIGINT's default handler is Python's
    # KeyboardInterrupt (uvicorn's CLI exits 0), SIGTERM's kills the process.
    expected_rc = 0 if sig == signal.SIGINT else -signal.SIGTERM
    assert proc.returncode == expected_rc, log
    for needle in ('Shutting down', 'Application shutdown complete',
                   'Finished server process'):
        assert needle in log, log
    assert 'Traceback' not in log, log
    assert 'NotImplementedError' not in log, log
