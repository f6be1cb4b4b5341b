"""The ASGI application served by uvicorn in test_uvicorn.py (in-process and
as a subprocess: ``uvicorn asgi_app:app``), and ``compat_loop``, a
zero-argument loop factory for ``uvicorn --loop asgi_app:compat_loop``
(ferroloop with asyncio's Future/Task classes; plain ferroloop is
``--loop ferroloop:new_event_loop``).

``/held?tag=T&delay=D&size=N`` is for the signal tests of
test_uvicorn_signals.py: it writes ``held request T started`` to stderr
(so that the parent knows the request is in flight), sleeps D seconds, then
answers with ``held_body(N)``.  With ``ASGI_APP_ANNOUNCE_LOOP=1`` in its
environment the app writes ``lifespan startup on <loop module>.<loop class>``
to stderr at startup."""

import asyncio
import hashlib
import json
import os
import sys

# Lifespan events seen by this process (in-process tests read it).
LIFESPAN = []

STREAM_CHUNK = 64 * 1024
STREAM_CHUNKS = 32  # 2 MiB


def compat_loop():
    import ferroloop
    return ferroloop.new_event_loop(native_tasks=False)


def held_body(size):
    """The body of a ``/held`` response of ``size`` bytes."""
    block = bytes(range(256))
    return (block * (size // 256 + 1))[:size]


def _query(scope):
    return dict(p.split('=', 1) for p in scope['query_string'].decode().split('&') if p)


async def _body(receive):
    parts = []
    while True:
        msg = await receive()
        if msg['type'] == 'http.disconnect':
            raise ConnectionError('client went away')
        parts.append(msg.get('body', b''))
        if not msg.get('more_body', False):
            return b''.join(parts)


async def _respond(send, body, status=200, ctype=b'text/plain'):
    await send({'type': 'http.response.start', 'status': status,
                'headers': [(b'content-type', ctype),
                            (b'content-length', str(len(body)).encode())]})
    await send({'type': 'http.response.body', 'body': body})


async def app(scope, receive, send):
    if scope['type'] == 'lifespan':
        while True:
            msg = await receive()
            LIFESPAN.append(msg['type'])
            if msg['type'] == 'lifespan.startup':
                if os.environ.get('ASGI_APP_ANNOUNCE_LOOP'):
                    lp = asyncio.get_running_loop()
                    print(f'lifespan startup on {type(lp).__module__}.{type(lp).__name__}',
                          file=sys.stderr, flush=True)
                await send({'type': 'lifespan.startup.complete'})
            elif msg['type'] == 'lifespan.shutdown':
                await send({'type': 'lifespan.shutdown.complete'})
                return

    if scope['type'] == 'websocket':
        msg = await receive()
        assert msg['type'] == 'websocket.connect'
        await send({'type': 'websocket.accept'})
        while True:
            msg = await receive()
            if msg['type'] == 'websocket.disconnect':
                return
            if msg.get('text') is not None:
                await send({'type': 'websocket.send', 'text': msg['text'][::-1]})
            else:
                await send({'type': 'websocket.send', 'bytes': msg['bytes'][::-1]})

    assert scope['type'] == 'http'
    path = scope['path']
    if path == '/':
        await _respond(send, b'hello')
    elif path == '/loop':
        lp = asyncio.get_running_loop()
        info = {'module': type(lp).__module__, 'name': type(lp).__name__,
                'http_version': scope['http_version']}
        await _respond(send, json.dumps(info).encode(), ctype=b'application/json')
    elif path == '/echo':
        body = await _body(receive)
        info = {'len': len(body), 'sha256': hashlib.sha256(body).hexdigest(),
                'method': scope['method'], 'query': scope['query_string'].decode()}
        await _respond(send, json.dumps(info).encode(), ctype=b'application/json')
    elif path == '/stream':
        # chunked transfer encoding: no content-length, several body messages
        await send({'type': 'http.response.start', 'status': 200,
                    'headers': [(b'content-type', b'application/octet-stream')]})
        for i in range(STREAM_CHUNKS):
            await send({'type': 'http.response.body', 'body': bytes([i]) * STREAM_CHUNK,
                        'more_body': True})
        await send({'type': 'http.response.body', 'body': b''})
    elif path == '/slow':
        delay = float(dict(p.split('=') for p in scope['query_string'].decode().split('&')
                           if p).get('delay', '0.05'))
        await asyncio.sleep(delay)
        await _respond(send, b'slow')
    elif path == '/held':
        q = _query(scope)
        print(f'held request {q.get("tag", "-")} started', file=sys.stderr, flush=True)
        await asyncio.sleep(float(q.get('delay', '1')))
        await _respond(send, held_body(int(q.get('size', '100000'))),
                       ctype=b'application/octet-stream')
    else:
        await _respond(send, b'not found', status=404)
