"""asyncpg against a real PostgreSQL (the session's ``postgres_server``
fixture: 127.0.0.1 and a Unix socket) on the test's loop: queries and type
round trips, prepared statements, transactions, cursors, COPY, LISTEN/NOTIFY,
a pool under concurrency, query cancellation (asyncpg opens a second
connection for the cancel request).
"""

import asyncio
import datetime
import decimal
import json
import uuid

import pytest

asyncpg = pytest.importorskip('asyncpg')


def connect(pg, **kw):
    params = dict(host=pg['host'], port=pg['port'], user=pg['user'],
                  database=pg['database'], timeout=10, command_timeout=20)
    params.update(kw)
    return asyncpg.connect(**params)


def test_asyncpg_queries_and_types(loop, bounded, postgres_server):
    async def main():
        conn = await connect(postgres_server)
        try:
            assert await conn.fetchval('SELECT 1 + $1::int', 41) == 42
            ts = datetime.datetime(2024, 2, 29, 12, 30, 15, 123456,
                                   tzinfo=datetime.UTC)
            u = uuid.uuid4()
            row = await conn.fetchrow(
                'SELECT $1::numeric AS n, $2::timestamptz AS ts, $3::uuid AS u, '
                '$4::int[] AS arr, $5::text AS t, $6::bytea AS b, $7::jsonb AS j',
                decimal.Decimal('12345.6789'), ts, u, [1, 2, None, 4], 'héllo ✓',
                bytes(range(256)), json.dumps({'a': [1, 2]}))
            assert row['n'] == decimal.Decimal('12345.6789')
            assert row['ts'] == ts
            assert row['u'] == u
            assert row['arr'] == [1, 2, None, 4]
            assert row['t'] == 'héllo ✓'
            assert row['b'] == bytes(range(256))
            assert json.loads(row['j']) == {'a': [1, 2]}

            # a large result set, streamed from the server in several reads
            rows = await conn.fetch('SELECT g, md5(g::text) FROM generate_series(1, 50000) g')
            assert len(rows) == 50000
            assert rows[-1][0] == 50000

            with pytest.raises(asyncpg.UndefinedTableError):
                await conn.fetch('SELECT * FROM no_such_table')
            assert await conn.fetchval('SELECT 2') == 2  # still usable
        finally:
            await conn.close(timeout=10)

    bounded(main())


def test_asyncpg_transactions_cursor_copy(loop, bounded, postgres_server):
    async def main():
        conn = await connect(postgres_server)
        try:
            await conn.execute('CREATE TEMP TABLE items (id int PRIMARY KEY, name text)')
            stmt = await conn.prepare('INSERT INTO items VALUES ($1, $2)')
            await stmt.executemany([(i, f'item {i}') for i in range(1000)])

            # a rolled-back transaction leaves no trace
            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    await conn.execute('DELETE FROM items')
                    assert await conn.fetchval('SELECT count(*) FROM items') == 0
                    raise RuntimeError('roll back')
            assert await conn.fetchval('SELECT count(*) FROM items') == 1000

            # a server-side cursor, prefetching 100 rows at a time
            total = 0
            async with conn.transaction():
                async for rec in conn.cursor('SELECT id FROM items ORDER BY id', prefetch=100):
                    assert rec['id'] == total
                    total += 1
            assert total == 1000

            # COPY in both directions
            records = [(i, f'copied {i}') for i in range(1000, 21000)]
            res = await conn.copy_records_to_table('items', records=records)
            assert res == 'COPY 20000'
            out = await conn.fetchval("SELECT string_agg(name, ',' ORDER BY id) FROM items "
                                      'WHERE id >= 1000')
            assert out.split(',') == [name for _, name in records]
        finally:
            await conn.close(timeout=10)

    bounded(main())


def test_asyncpg_listen_notify(loop, bounded, postgres_server):
    async def main():
        listener = await connect(postgres_server)
        sender = await connect(postgres_server)
        got = []
        done = asyncio.Event()
        channel = f'fl_{uuid.uuid4().hex[:8]}'

        def on_notify(conn, pid, chan, payload):
            got.append((chan, payload))
            if len(got) == 20:
                done.set()

        try:
            await listener.add_listener(channel, on_notify)
            for i in range(20):
                await sender.execute('SELECT pg_notify($1, $2)', channel, f'n{i}')
            async with asyncio.timeout(10):
                await done.wait()
            assert got == [(channel, f'n{i}') for i in range(20)]
            await listener.remove_listener(channel, on_notify)
        finally:
            await listener.close(timeout=10)
            await sender.close(timeout=10)

    bounded(main())


def test_asyncpg_pool(loop, bounded, postgres_server):
    async def main():
        pg = postgres_server
        async with asyncpg.create_pool(host=pg['host'], port=pg['port'], user=pg['user'],
                                       database=pg['database'], min_size=2, max_size=6,
                                       timeout=10, command_timeout=20) as pool:
            async def work(i):
                async with pool.acquire() as conn:
                    return await conn.fetchval('SELECT $1::int * 2 FROM pg_sleep(0.01)', i)

            t0 = loop.time()
            assert await asyncio.gather(*(work(i) for i in range(120))) == [
                i * 2 for i in range(120)]
            assert loop.time() - t0 < 15
            assert 2 <= pool.get_size() <= 6
            assert pool.get_idle_size() == pool.get_size()

    bounded(main())


def test_asyncpg_cancel(loop, bounded, postgres_server):
    async def main():
        conn = await connect(postgres_server)
        try:
            # command_timeout: asyncpg sends a cancel request on a new
            # connection and the server aborts the query
            t0 = loop.time()
            with pytest.raises(asyncio.TimeoutError):
                await conn.execute('SELECT pg_sleep(10)', timeout=0.2)
            assert loop.time() - t0 < 5
            assert await conn.fetchval('SELECT 3') == 3

            # asyncio cancellation of a query in flight
            task = asyncio.ensure_future(conn.fetchval('SELECT pg_sleep(10)'))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await conn.fetchval('SELECT 4') == 4
        finally:
            await conn.close(timeout=10)

    bounded(main())


def test_asyncpg_unix_socket(loop, bounded, postgres_server):
    async def main():
        conn = await connect(postgres_server, host=postgres_server['socket_dir'])
        try:
            # the server sees a Unix-socket client: no client address
            assert await conn.fetchval('SELECT inet_client_addr()') is None
            rows = await conn.fetch('SELECT g FROM generate_series(1, 20000) g')
            assert [r[0] for r in rows[:3]] == [1, 2, 3] and len(rows) == 20000
        finally:
            await conn.close(timeout=10)

    bounded(main())
