"""redis.asyncio (redis-py) against a real redis-server (the session's
``redis_server`` fixture, 127.0.0.1 and a Unix socket) on the test's loop:
commands, pipelines/transactions, a connection pool under concurrency,
pub/sub, blocking commands, cancellation of a command in flight.
"""

import asyncio
import uuid

import pytest
from io_helpers import payload

redis_asyncio = pytest.importorskip('redis.asyncio')


@pytest.fixture
def prefix(loop_kind):
    return f'fl:{loop_kind}:{uuid.uuid4().hex[:8]}:'


def client(redis_server, **kw):
    return redis_asyncio.Redis(host=redis_server['host'], port=redis_server['port'],
                               socket_timeout=10, socket_connect_timeout=10, **kw)


def test_redis_commands(loop, bounded, redis_server, prefix):
    async def main():
        r = client(redis_server, decode_responses=True)
        try:
            assert await r.ping() is True
            assert await r.set(f'{prefix}k', 'v1') is True
            assert await r.get(f'{prefix}k') == 'v1'
            assert await r.incrby(f'{prefix}n', 5) == 5
            assert await r.hset(f'{prefix}h', mapping={'a': '1', 'b': '2'}) == 2
            assert await r.hgetall(f'{prefix}h') == {'a': '1', 'b': '2'}
            assert await r.rpush(f'{prefix}l', *map(str, range(10))) == 10
            assert await r.lrange(f'{prefix}l', 2, 4) == ['2', '3', '4']
            assert await r.set(f'{prefix}ttl', 'x', px=150) is True
            await asyncio.sleep(0.3)
            assert await r.get(f'{prefix}ttl') is None

            # MULTI/EXEC transaction and a plain pipeline
            async with r.pipeline(transaction=True) as pipe:
                pipe.incr(f'{prefix}t').incr(f'{prefix}t').get(f'{prefix}t')
                assert await pipe.execute() == [1, 2, '2']
            async with r.pipeline(transaction=False) as pipe:
                for i in range(500):
                    pipe.set(f'{prefix}p{i}', i)
                assert await pipe.execute() == [True] * 500
            assert await r.mget([f'{prefix}p{i}' for i in (0, 250, 499)]) == ['0', '250', '499']
            assert len([k async for k in r.scan_iter(match=f'{prefix}p*', count=100)]) == 500
        finally:
            keys = await r.keys(f'{prefix}*')
            if keys:
                await r.delete(*keys)
            await r.aclose()

    bounded(main())


def test_redis_large_values_and_pool(loop, bounded, redis_server, prefix):
    async def main():
        pool = redis_asyncio.BlockingConnectionPool(
            host=redis_server['host'], port=redis_server['port'], max_connections=8,
            timeout=10, socket_timeout=10, client_name=f'{prefix}pool'.replace(':', '-'))
        r = redis_asyncio.Redis(connection_pool=pool)
        try:
            big = payload(4 * 1024 * 1024 + 3)
            assert await r.set(f'{prefix}big', big) is True
            assert await r.get(f'{prefix}big') == big
            assert await r.strlen(f'{prefix}big') == len(big)

            async def one(i):
                await r.set(f'{prefix}c{i}', i)
                await asyncio.sleep(0)
                return int(await r.get(f'{prefix}c{i}'))

            assert await asyncio.gather(*(one(i) for i in range(300))) == list(range(300))
            # the pool opened at least 2 and at most 8 connections
            names = [c['name'] for c in await r.client_list()]
            assert 2 <= names.count(f'{prefix}pool'.replace(':', '-')) <= 8, names
        finally:
            keys = await r.keys(f'{prefix}*')
            if keys:
                await r.delete(*keys)
            await r.aclose()
            await pool.aclose()

    bounded(main())


def test_redis_pubsub(loop, bounded, redis_server, prefix):
    async def main():
        sub = client(redis_server, decode_responses=True)
        pub = client(redis_server, decode_responses=True)
        ps = sub.pubsub(ignore_subscribe_messages=True)
        try:
            await ps.subscribe(f'{prefix}chan')
            await ps.psubscribe(f'{prefix}pat.*')
            # wait for both subscriptions to be active
            async with asyncio.timeout(10):
                while await pub.pubsub_numsub(f'{prefix}chan') != [(f'{prefix}chan', 1)]:
                    await asyncio.sleep(0.01)
            for i in range(20):
                assert await pub.publish(f'{prefix}chan', f'm{i}') == 1
            assert await pub.publish(f'{prefix}pat.x', 'via pattern') == 1
            got = []
            async with asyncio.timeout(10):
                while len(got) < 21:
                    msg = await ps.get_message(timeout=1.0)
                    if msg is not None:
                        got.append((msg['type'], msg['data']))
            assert got == [('message', f'm{i}') for i in range(20)] + [('pmessage', 'via pattern')]
            # nothing else arrives
            assert await ps.get_message(timeout=0.1) is None
        finally:
            await ps.aclose()
            await sub.aclose()
            await pub.aclose()

    bounded(main())


def test_redis_blocking_and_cancel(loop, bounded, redis_server, prefix):
    async def main():
        r = client(redis_server)
        other = client(redis_server)
        try:
            # BLPOP times out server-side
            t0 = loop.time()
            assert await r.blpop([f'{prefix}q'], timeout=0.2) is None
            assert 0.15 < loop.time() - t0 < 5

            # BLPOP woken by an LPUSH from another connection
            waiter = asyncio.ensure_future(r.blpop([f'{prefix}q'], timeout=5))
            await asyncio.sleep(0.1)
            assert not waiter.done()
            await other.lpush(f'{prefix}q', b'item')
            assert await waiter == (f'{prefix}q'.encode(), b'item')

            # a command cancelled in flight: the client drops that connection
            # and the next command works
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(r.blpop([f'{prefix}never'], timeout=5), 0.1)
            assert await r.ping() is True
            assert await r.set(f'{prefix}after', b'1') is True
            assert await r.get(f'{prefix}after') == b'1'
        finally:
            keys = await other.keys(f'{prefix}*')
            if keys:
                await other.delete(*keys)
            await r.aclose()
            await other.aclose()

    bounded(main())


def test_redis_unix_socket(loop, bounded, redis_server, prefix):
    async def main():
        r = redis_asyncio.Redis(unix_socket_path=redis_server['unix_socket'],
                                socket_timeout=10)
        try:
            assert await r.ping() is True
            data = payload(1 << 20)
            await r.set(f'{prefix}u', data)
            assert await r.get(f'{prefix}u') == data
            assert await r.delete(f'{prefix}u') == 1
            info = await r.client_info()
            assert info.get('addr', '').startswith('/') or info.get('laddr', '').startswith('/')
        finally:
            await r.aclose()

    bounded(main())
