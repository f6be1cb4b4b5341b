"""TLS through real libraries, on each loop kind, with certificates from a
trustme CA (the session's ``tls_ca``; leaf certificates for 127.0.0.1 and
localhost):

* aiohttp: an HTTPS web server (``TCPSite(ssl_context=...)``) and a
  ClientSession trusting the CA: GET/POST, multi-MB bodies both ways (also a
  FileResponse, whose sendfile falls back to writes on a TLS transport),
  keep-alive reuse, a client certificate, certificate verification failures;
* uvicorn as a child process with ``--ssl-keyfile/--ssl-certfile`` and
  ``--loop`` set to the loop kind, queried by httpx: requests, keep-alive,
  a chunked streamed response;
* asyncpg against a PostgreSQL that requires TLS on TCP
  (``postgres_tls_server``): an SSLContext, ``ssl='require'``, ``'prefer'``
  and ``'verify-full'`` (asyncpg upgrades with ``loop.start_tls`` after its
  SSLRequest); ``pg_stat_ssl`` confirms the session is encrypted;
* websockets over wss://: echo of messages around the frame-length
  boundaries up to 5 MB, both close handshakes, an untrusted certificate.

Everything listens on 127.0.0.1 on ports the kernel picks; every wait is
bounded.
"""

import asyncio
import contextlib
import hashlib
import io
import json
import os
import selectors
import signal
import ssl
import subprocess
import sys
import time
import urllib.parse

import pytest
from io_helpers import payload

trustme = pytest.importorskip('trustme')

HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------
# certificates and contexts
# ---------------------------------------------------------------------------

@pytest.fixture(scope='session')
def server_cert(tls_ca):
    """The servers' leaf certificate (trustme.LeafCert)."""
    return tls_ca.issue_cert('127.0.0.1', 'localhost')


@pytest.fixture
def server_ctx(server_cert):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(ctx)
    return ctx


@pytest.fixture
def client_ctx(tls_ca):
    """Trusts only the trustme CA; checks the host name."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    tls_ca.configure_trust(ctx)
    return ctx


@pytest.fixture
def untrusting_ctx():
    """A verifying client context that does not know the trustme CA."""
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH)


def san(peercert):
    return sorted(v for _k, v in peercert['subjectAltName'])


# ---------------------------------------------------------------------------
# aiohttp
# ---------------------------------------------------------------------------

BIG_SIZE = 4 * 1024 * 1024 + 4321
FILE_SIZE = 3 * 1024 * 1024 + 77


def aiohttp_app(big=None, file_path=None):
    from aiohttp import web

    def conn_info(request):
        tr = request.transport
        ssl_obj = tr.get_extra_info('ssl_object')
        peercert = tr.get_extra_info('peercert')
        return {'scheme': request.scheme, 'secure': request.secure,
                'tls': ssl_obj.version() if ssl_obj is not None else None,
                'peer_port': tr.get_extra_info('peername')[1],
                'client_cert': (dict(x[0] for x in peercert['subject'])
                                if peercert else None),
                'loop': type(asyncio.get_running_loop()).__name__}

    async def info(request):
        return web.json_response(conn_info(request))

    async def echo_json(request):
        return web.json_response({'got': await request.json(),
                                  'peer_port': conn_info(request)['peer_port']}, status=201)

    async def digest(request):
        h = hashlib.sha256()
        n = 0
        async for chunk in request.content.iter_chunked(65536):
            h.update(chunk)
            n += len(chunk)
        return web.json_response({'len': n, 'sha256': h.hexdigest()})

    async def big_body(request):
        return web.Response(body=big, content_type='application/octet-stream')

    async def file(request):
        return web.FileResponse(file_path)

    app = web.Application(client_max_size=16 << 20)
    app.router.add_get('/info', info)
    app.router.add_post('/json', echo_json)
    app.router.add_post('/digest', digest)
    if big is not None:
        app.router.add_get('/big', big_body)
    if file_path is not None:
        app.router.add_get('/file', file)
    return app


@contextlib.asynccontextmanager
async def https_serving(app, ctx):
    from aiohttp import web
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, '127.0.0.1', 0, ssl_context=ctx)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f'https://{host}:{port}'
    finally:
        await runner.cleanup()


def test_aiohttp_https_round_trips_and_keepalive(loop, bounded, server_ctx, client_ctx):
    aiohttp = pytest.importorskip('aiohttp')

    async def main():
        connector = aiohttp.TCPConnector(ssl=client_ctx, limit=1)
        async with https_serving(aiohttp_app(), server_ctx) as url, \
                aiohttp.ClientSession(connector=connector) as session:
            async with session.get(f'{url}/info') as r:
                assert r.status == 200
                first = await r.json()
            assert first == {'scheme': 'https', 'secure': True, 'tls': 'TLSv1.3',
                             'peer_port': first['peer_port'], 'client_cert': None,
                             'loop': type(loop).__name__}

            doc = {'b': [1, 2, 3], 'a': {'x': None, 'y': 'é'}, 'c': 1.5}
            async with session.post(f'{url}/json', json=doc) as r:
                assert r.status == 201
                assert await r.json() == {'got': doc, 'peer_port': first['peer_port']}
            async with session.get(f'{url}/nowhere') as r:
                assert r.status == 404

            # keep-alive: with limit=1 every request, sequential or
            # concurrent, goes over the first TLS connection
            ports = []
            for _ in range(10):
                async with session.get(f'{url}/info') as r:
                    ports.append((await r.json())['peer_port'])

            async def get():
                async with session.get(f'{url}/info') as r:
                    return (await r.json())['peer_port']

            ports += await asyncio.gather(*(get() for _ in range(20)))
            assert ports == [first['peer_port']] * 30

    bounded(main())


def test_aiohttp_https_large_bodies(loop, bounded, server_ctx, client_ctx, tmp_path):
    aiohttp = pytest.importorskip('aiohttp')
    big = payload(BIG_SIZE)
    big_sha = hashlib.sha256(big).hexdigest()
    file_data = payload(FILE_SIZE)[::-1]
    (tmp_path / 'file.bin').write_bytes(file_data)

    async def main():
        connector = aiohttp.TCPConnector(ssl=client_ctx)
        async with https_serving(aiohttp_app(big, tmp_path / 'file.bin'), server_ctx) as url, \
                aiohttp.ClientSession(connector=connector) as session:
            # upload: one content-length body, then a chunked stream
            async with session.post(f'{url}/digest', data=io.BytesIO(big)) as r:
                assert await r.json() == {'len': BIG_SIZE, 'sha256': big_sha}

            async def gen():
                for i in range(0, BIG_SIZE, 100_003):
                    yield big[i:i + 100_003]

            async with session.post(f'{url}/digest', data=gen()) as r:
                assert await r.json() == {'len': BIG_SIZE, 'sha256': big_sha}

            # download: whole, then in small chunks by a slow reader
            async with session.get(f'{url}/big') as r:
                assert r.content_length == BIG_SIZE
                # the body is not read yet: the response holds the connection
                ssl_obj = r.connection.transport.get_extra_info('ssl_object')
                assert ssl_obj is not None and ssl_obj.version() == 'TLSv1.3'
                assert san(ssl_obj.getpeercert()) == ['127.0.0.1', 'localhost']
                assert hashlib.sha256(await r.read()).hexdigest() == big_sha
            h = hashlib.sha256()
            async with session.get(f'{url}/big') as r:
                async for chunk in r.content.iter_chunked(8192):
                    h.update(chunk)
                    if r.content.total_bytes < 1 << 20:
                        await asyncio.sleep(0.001)
            assert h.hexdigest() == big_sha

            # FileResponse: loop.sendfile on a TLS transport
            async with session.get(f'{url}/file') as r:
                assert r.status == 200
                assert r.content_length == FILE_SIZE
                body = await r.read()
            assert hashlib.sha256(body).hexdigest() == hashlib.sha256(file_data).hexdigest()

    bounded(main())


def test_aiohttp_https_client_certificate(loop, bounded, tls_ca, server_ctx, client_ctx):
    aiohttp = pytest.importorskip('aiohttp')
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    tls_ca.configure_trust(server_ctx)
    tls_ca.issue_cert('client.example', common_name='client.example').configure_cert(client_ctx)

    async def main():
        connector = aiohttp.TCPConnector(ssl=client_ctx)
        async with https_serving(aiohttp_app(), server_ctx) as url, \
                aiohttp.ClientSession(connector=connector) as session:
            async with session.get(f'{url}/info') as r:
                info = await r.json()
            assert info['tls'] == 'TLSv1.3'
            assert info['client_cert']['commonName'] == 'client.example'

    bounded(main())


def test_aiohttp_https_verification_failure(loop, bounded, server_ctx, client_ctx,
                                            untrusting_ctx):
    aiohttp = pytest.importorskip('aiohttp')

    async def main():
        async with https_serving(aiohttp_app(), server_ctx) as url:
            # a client that does not trust the CA
            async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=untrusting_ctx)) as session:
                with pytest.raises(aiohttp.ClientConnectorCertificateError) as info:
                    await session.get(f'{url}/info')
                err = info.value.certificate_error
                assert isinstance(err, ssl.SSLCertVerificationError)
                assert 'unable to get local issuer certificate' in err.verify_message

            async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=client_ctx)) as session:
                # a trusted certificate for another name
                with pytest.raises(aiohttp.ClientConnectorCertificateError) as info:
                    await session.get(f'{url}/info', server_hostname='wrong.example')
                assert isinstance(info.value.certificate_error, ssl.SSLCertVerificationError)
                assert 'wrong.example' in str(info.value.certificate_error)

                # the server survived both failed handshakes
                async with session.get(f'{url}/info') as r:
                    assert (await r.json())['tls'] == 'TLSv1.3'

    bounded(main())


# ---------------------------------------------------------------------------
# uvicorn (child process, --ssl-*) + httpx
# ---------------------------------------------------------------------------

# uvicorn's --loop takes "module:callable", a zero-argument loop factory.
UVICORN_LOOP = {
    'asyncio': 'asyncio',
    'ferroloop': 'ferroloop:new_event_loop',
    'ferroloop-compat': 'asgi_app:compat_loop',
}
UVICORN_EXPECTED_LOOP = {
    'asyncio': {'module': 'asyncio.unix_events', 'name': '_UnixSelectorEventLoop'},
    'ferroloop': {'module': 'ferroloop', 'name': 'Loop'},
    'ferroloop-compat': {'module': 'ferroloop', 'name': 'Loop'},
}


def read_until(proc, needle, timeout):
    """Reads ``proc.stderr`` until it contains ``needle``; bounded."""
    out = b''
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stderr, selectors.EVENT_READ)
        while needle not in out:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f'timed out waiting for {needle!r}; output:\n'
                                     f'{out.decode(errors="replace")}')
            if not sel.select(left):
                continue
            chunk = os.read(proc.stderr.fileno(), 65536)
            if not chunk:
                raise AssertionError(f'uvicorn exited ({proc.wait(5)}) before {needle!r}; '
                                     f'output:\n{out.decode(errors="replace")}')
            out += chunk
    return out


def test_uvicorn_https_subprocess(loop_kind, loop, bounded, server_cert, client_ctx, tmp_path):
    pytest.importorskip('uvicorn')
    httpx = pytest.importorskip('httpx')
    from ecosystem import asgi_app

    certfile, keyfile = tmp_path / 'cert.pem', tmp_path / 'key.pem'
    for blob in server_cert.cert_chain_pems:
        blob.write_to_path(certfile, append=True)
    server_cert.private_key_pem.write_to_path(keyfile)
    keyfile.chmod(0o600)

    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([HERE] + [p for p in [env.get('PYTHONPATH')] if p])
    env.pop('PYTHONASYNCIODEBUG', None)
    argv = [sys.executable, '-m', 'uvicorn', 'asgi_app:app', '--host', '127.0.0.1',
            '--port', '0', '--loop', UVICORN_LOOP[loop_kind], '--http', 'httptools',
            '--ssl-keyfile', str(keyfile), '--ssl-certfile', str(certfile),
            '--no-access-log', '--timeout-graceful-shutdown', '5']
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env, cwd=HERE)
    rest = b''
    try:
        err = read_until(proc, b'(Press CTRL+C to quit)', timeout=20)
        line = next(ln for ln in err.decode().splitlines() if 'Uvicorn running on' in ln)
        url = line.split('Uvicorn running on ')[1].split()[0]
        assert url.startswith('https://127.0.0.1:'), line

        async def main():
            limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
            async with httpx.AsyncClient(base_url=url, verify=client_ctx, limits=limits,
                                         timeout=10) as client:
                r = await client.get('/loop')
                assert r.json() == {**UVICORN_EXPECTED_LOOP[loop_kind],
                                    'http_version': '1.1'}
                stream = r.extensions['network_stream']
                ssl_obj = stream.get_extra_info('ssl_object')
                assert ssl_obj is not None and ssl_obj.version() == 'TLSv1.3'
                assert san(ssl_obj.getpeercert()) == ['127.0.0.1', 'localhost']
                local = stream.get_extra_info('client_addr')

                # keep-alive: sequential requests reuse the first connection
                for _ in range(10):
                    r = await client.get('/')
                    assert (r.status_code, r.text) == (200, 'hello')
                    assert r.headers.get('connection') != 'close'
                    assert r.extensions['network_stream'].get_extra_info(
                        'client_addr') == local

                data = payload(1 << 20)
                r = await client.post('/echo?tls=1', content=data)
                assert r.json() == {'len': len(data),
                                    'sha256': hashlib.sha256(data).hexdigest(),
                                    'method': 'POST', 'query': 'tls=1'}

                # a chunked 2 MiB response, read incrementally
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
                assert (n, h.hexdigest()) == (len(expected),
                                              hashlib.sha256(expected).hexdigest())

                # concurrent requests over at most 4 TLS connections
                rs = await asyncio.gather(*(client.get('/slow', params={'delay': '0.05'})
                                            for _ in range(12)))
                assert [r.text for r in rs] == ['slow'] * 12

            # a client that does not trust the CA
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                with pytest.raises(httpx.ConnectError, match='CERTIFICATE_VERIFY_FAILED'):
                    await client.get('/')

        bounded(main())

        proc.send_signal(signal.SIGINT)
        try:
            _, rest = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, rest = proc.communicate(timeout=5)
            raise AssertionError('uvicorn did not exit within 15 s of SIGINT:\n'
                                 f'{(err + rest).decode(errors="replace")}') from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stderr.close()
    log = (err + rest).decode(errors='replace')
    assert proc.returncode == 0, log
    assert 'Finished server process' in log, log
    assert 'Traceback' not in log, log


# ---------------------------------------------------------------------------
# asyncpg (PostgreSQL with ssl=on)
# ---------------------------------------------------------------------------

SSL_INFO = 'SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()'


def pg_connect(pg, **kw):
    asyncpg = pytest.importorskip('asyncpg')
    params = dict(host=pg['host'], port=pg['port'], user=pg['user'],
                  database=pg['database'], timeout=10, command_timeout=20)
    params.update(kw)
    return asyncpg.connect(**params)


async def assert_encrypted(conn):
    row = await conn.fetchrow(SSL_INFO)
    assert (row['ssl'], row['version']) == (True, 'TLSv1.3')


def test_asyncpg_tls_context(loop, bounded, postgres_tls_server, client_ctx):
    asyncpg = pytest.importorskip('asyncpg')

    async def main():
        conn = await pg_connect(postgres_tls_server, ssl=client_ctx)
        try:
            assert await conn.fetchval('SELECT 1 + $1::int', 41) == 42
            await assert_encrypted(conn)
            assert conn.get_settings().server_version.startswith(
                str(conn.get_server_version().major))

            # a large result set and COPY: many TLS records both ways
            rows = await conn.fetch('SELECT g, md5(g::text) FROM generate_series(1, 50000) g')
            assert len(rows) == 50000 and rows[-1][0] == 50000
            await conn.execute('CREATE TEMP TABLE items (id int PRIMARY KEY, name text)')
            records = [(i, f'item {i} ' + 'x' * (i % 200)) for i in range(20000)]
            assert await conn.copy_records_to_table('items', records=records) == 'COPY 20000'
            got = await conn.fetch('SELECT id, name FROM items ORDER BY id')
            assert [tuple(r) for r in got] == records

            # command timeout: the cancel request goes over a new TLS connection
            with pytest.raises(asyncio.TimeoutError):
                await conn.execute('SELECT pg_sleep(10)', timeout=0.2)
            assert await conn.fetchval('SELECT 3') == 3
            await assert_encrypted(conn)
        finally:
            await conn.close(timeout=10)

        # a pool of TLS connections under concurrency
        pg = postgres_tls_server
        async with asyncpg.create_pool(host=pg['host'], port=pg['port'], user=pg['user'],
                                       database=pg['database'], ssl=client_ctx, min_size=2,
                                       max_size=4, timeout=10, command_timeout=20) as pool:
            async def work(i):
                async with pool.acquire() as c:
                    row = await c.fetchrow(
                        'SELECT $1::int * 2 AS v, s.ssl FROM pg_sleep(0.01), pg_stat_ssl s '
                        'WHERE s.pid = pg_backend_pid()', i)
                    return row['v'], row['ssl']

            assert await asyncio.gather(*(work(i) for i in range(40))) == [
                (i * 2, True) for i in range(40)]

    bounded(main())


@pytest.mark.parametrize('mode', ['require', 'prefer', 'verify-full'])
def test_asyncpg_tls_sslmode(loop, bounded, postgres_tls_server, mode):
    async def main():
        if mode == 'verify-full':  # sslrootcert: a DSN parameter, not a keyword
            kw = {'dsn': 'postgresql://?sslmode=verify-full&sslrootcert='
                         + urllib.parse.quote(postgres_tls_server['ca_file'])}
        else:
            kw = {'ssl': mode}
        conn = await pg_connect(postgres_tls_server, **kw)
        try:
            await assert_encrypted(conn)
            assert await conn.fetchval('SELECT $1::text', mode) == mode
        finally:
            await conn.close(timeout=10)

    bounded(main())


def test_asyncpg_tls_refusals(loop, bounded, postgres_tls_server, untrusting_ctx):
    asyncpg = pytest.importorskip('asyncpg')

    async def main():
        # the server rejects unencrypted TCP clients (pg_hba hostnossl reject)
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError,
                           match='no encryption'):
            await pg_connect(postgres_tls_server, ssl='disable')
        # the client rejects a certificate it cannot verify
        with pytest.raises(ssl.SSLCertVerificationError):
            await pg_connect(postgres_tls_server, ssl=untrusting_ctx)
        # the server still serves TLS clients
        conn = await pg_connect(postgres_tls_server, ssl='require')
        try:
            await assert_encrypted(conn)
        finally:
            await conn.close(timeout=10)

    bounded(main())


# ---------------------------------------------------------------------------
# websockets over wss://
# ---------------------------------------------------------------------------

WS_SIZES = (0, 1, 125, 126, 127, 65535, 65536, 65537, 1 << 20, 5 * 1024 * 1024 + 3)


def test_websockets_wss_echo_and_close(loop, bounded, server_ctx, client_ctx):
    ws_server = pytest.importorskip('websockets.asyncio.server')
    ws_client = pytest.importorskip('websockets.asyncio.client')
    from websockets.exceptions import ConnectionClosedOK

    async def main():
        closed = []  # (close code, reason) seen by each server handler

        async def handler(conn):
            ssl_obj = conn.transport.get_extra_info('ssl_object')
            await conn.send(json.dumps({'tls': ssl_obj.version(),
                                        'loop': type(asyncio.get_running_loop()).__name__}))
            async for msg in conn:
                if msg == 'bye':
                    await conn.close(1000, 'server done')
                else:
                    await conn.send(msg)
            closed.append((conn.close_code, conn.close_reason))

        async with ws_server.serve(handler, '127.0.0.1', 0, ssl=server_ctx,
                                   max_size=8 << 20) as server:
            port = server.sockets[0].getsockname()[1]
            uri = f'wss://127.0.0.1:{port}'

            # client-initiated close handshake
            async with ws_client.connect(uri, ssl=client_ctx, max_size=8 << 20,
                                         open_timeout=10) as conn:
                ssl_obj = conn.transport.get_extra_info('ssl_object')
                assert ssl_obj.version() == 'TLSv1.3'
                assert san(ssl_obj.getpeercert()) == ['127.0.0.1', 'localhost']
                assert json.loads(await conn.recv()) == {'tls': 'TLSv1.3',
                                                         'loop': type(loop).__name__}
                for n in WS_SIZES:
                    blob = payload(n)
                    text = blob.hex()[:n]
                    await conn.send(blob)
                    await conn.send(text)
                    got = await conn.recv()
                    assert isinstance(got, bytes) and len(got) == n and got == blob
                    assert await conn.recv() == text
                # many small messages in flight at once
                for i in range(300):
                    await conn.send(f'msg {i}')
                for i in range(300):
                    assert await conn.recv() == f'msg {i}'
                await conn.close(1000, 'client done')
                assert (conn.close_code, conn.close_reason) == (1000, 'client done')
                assert conn.transport.is_closing()

            # server-initiated close handshake
            async with ws_client.connect(uri, ssl=client_ctx, open_timeout=10) as conn:
                await conn.recv()
                await conn.send('bye')
                with pytest.raises(ConnectionClosedOK):
                    await conn.recv()
                assert (conn.close_code, conn.close_reason) == (1000, 'server done')
                async with asyncio.timeout(10):
                    await conn.wait_closed()

            async with asyncio.timeout(10):
                while len(closed) < 2:
                    await asyncio.sleep(0.01)
            assert closed == [(1000, 'client done'), (1000, 'server done')]

    bounded(main())


def test_websockets_wss_untrusted(loop, bounded, server_ctx, client_ctx, untrusting_ctx):
    ws_server = pytest.importorskip('websockets.asyncio.server')
    ws_client = pytest.importorskip('websockets.asyncio.client')

    async def echo(conn):
        async for msg in conn:
            await conn.send(msg)

    async def main():
        async with ws_server.serve(echo, '127.0.0.1', 0, ssl=server_ctx) as server:
            port = server.sockets[0].getsockname()[1]
            with pytest.raises(ssl.SSLCertVerificationError):
                async with ws_client.connect(f'wss://127.0.0.1:{port}', ssl=untrusting_ctx,
                                             open_timeout=10):
                    pass
            # the server still accepts a trusting client
            async with ws_client.connect(f'wss://127.0.0.1:{port}', ssl=client_ctx,
                                         open_timeout=10) as conn:
                await conn.send('ok')
                assert await conn.recv() == 'ok'

    bounded(main())
