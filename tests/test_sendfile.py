"""loop.sendfile (over transports) and loop.sock_sendfile.

Expected behaviour: CPython 3.11 on Linux, where the selector loop sends
regular files natively with os.sendfile (unix_events
._sock_sendfile_native), falls back to read+send for other file objects
when ``fallback=True``, and updates the file position to
``offset + bytes sent``.
"""

import asyncio
import io
import re
import socket

import pytest
from io_helpers import (
    TIMEOUT,
    Factory,
    Recorder,
    payload,
    read_all,
    read_until_eof,
    sha256,
    short_tmpdir,
    socketpair,
    tcp_pair,
)


def wait(aw, timeout=TIMEOUT):
    return asyncio.wait_for(aw, timeout)


SIZE = 256 * 1024 + 17
DATA = payload(SIZE)


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / 'data.bin'
    path.write_bytes(DATA)
    with open(path, 'rb') as f:
        yield f


@pytest.fixture
def big_file(tmp_path):
    path = tmp_path / 'big.bin'
    data = payload(8 * 1024 * 1024)
    path.write_bytes(data)
    with open(path, 'rb') as f:
        yield f, data


@pytest.fixture(params=['tcp', 'unix'])
def endpoint(request, tmp_path):
    """A function creating a server, used as ``await make(loop, factory)``."""
    if request.param == 'tcp':
        async def make(loop, factory):
            server = await loop.create_server(factory, '127.0.0.1', 0)
            addr = server.sockets[0].getsockname()

            async def connect(proto_factory):
                return await loop.create_connection(proto_factory, *addr)
            return server, connect
        yield make
    else:
        with short_tmpdir(tmp_path) as d:
            path = str(d / 'sf.sock')

            async def make(loop, factory):
                server = await loop.create_unix_server(factory, path)

                async def connect(proto_factory):
                    return await loop.create_unix_connection(proto_factory,
                                                             path)
                return server, connect
            yield make


async def with_connection(loop, endpoint, body, server_kw=None):
    """Run ``body(tr, client_proto, server_proto)`` on a fresh connection."""
    sf = Factory(Recorder, loop, **(server_kw or {}))
    server, connect = await wait(endpoint(loop, sf))
    try:
        client = Recorder(loop)
        tr, _ = await wait(connect(lambda: client))
        srv = await sf.wait_made()
        try:
            return await body(tr, client, srv)
        finally:
            if not tr.is_closing():
                tr.close()
            await client.wait_lost()
    finally:
        await sf.close_all()
        server.close()
        await wait(server.wait_closed())


# ---------------------------------------------------------------------------
# loop.sendfile over transports
# ---------------------------------------------------------------------------

def test_sendfile_whole_file(loop, run, endpoint, data_file):
    async def body(tr, client, srv):
        sent = await wait(loop.sendfile(tr, data_file))
        assert sent == SIZE
        assert data_file.tell() == SIZE
        got = await srv.wait_bytes(SIZE)
        assert sha256(got) == sha256(DATA)
        assert not tr.is_closing()
    run(with_connection(loop, endpoint, body))


def test_sendfile_offset_and_count(loop, run, endpoint, data_file):
    async def body(tr, client, srv):
        sent = await wait(loop.sendfile(tr, data_file, 1000, 5000))
        assert sent == 5000
        assert data_file.tell() == 6000
        got = await srv.wait_bytes(5000)
        assert got == DATA[1000:6000]
    run(with_connection(loop, endpoint, body))


def test_sendfile_offset_only(loop, run, endpoint, data_file):
    async def body(tr, client, srv):
        sent = await wait(loop.sendfile(tr, data_file, offset=SIZE - 100))
        assert sent == 100
        assert data_file.tell() == SIZE
        assert await srv.wait_bytes(100) == DATA[-100:]
    run(with_connection(loop, endpoint, body))


def test_sendfile_count_larger_than_file(loop, run, endpoint, data_file):
    async def body(tr, client, srv):
        sent = await wait(loop.sendfile(tr, data_file, 10, SIZE * 2))
        assert sent == SIZE - 10
        assert data_file.tell() == SIZE
        got = await srv.wait_bytes(SIZE - 10)
        assert sha256(got) == sha256(DATA[10:])
    run(with_connection(loop, endpoint, body))


def test_sendfile_offset_beyond_end_sends_nothing(loop, run, endpoint,
                                                  data_file):
    async def body(tr, client, srv):
        data_file.seek(7)
        sent = await wait(loop.sendfile(tr, data_file, SIZE + 10))
        assert sent == 0
        # Nothing was sent, so the position was not touched.
        assert data_file.tell() == 7
    run(with_connection(loop, endpoint, body))


def test_sendfile_ignores_current_position(loop, run, endpoint, data_file):
    async def body(tr, client, srv):
        data_file.seek(123)
        sent = await wait(loop.sendfile(tr, data_file))   # offset=0
        assert sent == SIZE
        assert data_file.tell() == SIZE
        got = await srv.wait_bytes(SIZE)
        assert sha256(got) == sha256(DATA)
    run(with_connection(loop, endpoint, body))


def test_sendfile_empty_file(loop, run, endpoint, tmp_path):
    path = tmp_path / 'empty'
    path.write_bytes(b'')

    async def body(tr, client, srv):
        with open(path, 'rb') as f:
            assert await wait(loop.sendfile(tr, f)) == 0
            assert f.tell() == 0
        tr.write(b'after')
        assert await srv.wait_bytes(5) == b'after'
    run(with_connection(loop, endpoint, body))


def test_sendfile_keeps_write_order(loop, run, endpoint, data_file):
    async def body(tr, client, srv):
        tr.write(b'HEAD')
        sent = await wait(loop.sendfile(tr, data_file))
        tr.write(b'TAIL')
        assert sent == SIZE
        got = await srv.wait_bytes(SIZE + 8)
        assert len(got) == SIZE + 8
        assert got[:4] == b'HEAD'
        assert got[-4:] == b'TAIL'
        assert sha256(got[4:-4]) == sha256(DATA)
    run(with_connection(loop, endpoint, body))


def test_sendfile_twice_and_transport_still_reads(loop, run, endpoint,
                                                  data_file):
    async def body(tr, client, srv):
        assert await wait(loop.sendfile(tr, data_file, 0, 100)) == 100
        assert await wait(loop.sendfile(tr, data_file, 100, 100)) == 100
        assert await srv.wait_bytes(200) == DATA[:200]
        # Reading was resumed after sendfile.
        assert tr.is_reading()
        srv.transport.write(b'reply')
        assert await client.wait_bytes(5) == b'reply'
    run(with_connection(loop, endpoint, body))


def test_sendfile_large_file_slow_reader(loop, run, endpoint, big_file):
    f, data = big_file

    async def body(tr, client, srv):
        task = asyncio.ensure_future(loop.sendfile(tr, f))
        await asyncio.sleep(0.02)
        assert not task.done()          # the reader is paused
        srv.transport.resume_reading()
        assert await wait(task) == len(data)
        got = await srv.wait_bytes(len(data))
        assert sha256(got) == sha256(data)
        assert f.tell() == len(data)
    run(with_connection(loop, endpoint, body,
                        server_kw={'pause_on_connect': True}))


@pytest.mark.parametrize('fallback', [True, False])
def test_sendfile_fallback_argument_regular_file(loop, run, endpoint,
                                                 data_file, fallback):
    # A selector loop sends regular files natively, so fallback=False works.
    async def body(tr, client, srv):
        sent = await wait(loop.sendfile(tr, data_file, 5, 50,
                                        fallback=fallback))
        assert sent == 50
        assert data_file.tell() == 55
        assert await srv.wait_bytes(50) == DATA[5:55]
    run(with_connection(loop, endpoint, body))


def test_sendfile_non_regular_file_fallback(loop, run, endpoint):
    async def body(tr, client, srv):
        f = io.BytesIO(DATA)
        sent = await wait(loop.sendfile(tr, f, 10, 1000))
        assert sent == 1000
        assert f.tell() == 1010
        assert await srv.wait_bytes(1000) == DATA[10:1010]
    run(with_connection(loop, endpoint, body))


def test_sendfile_non_regular_file_without_fallback(loop, run, endpoint):
    async def body(tr, client, srv):
        f = io.BytesIO(DATA)
        with pytest.raises(asyncio.SendfileNotAvailableError):
            await wait(loop.sendfile(tr, f, fallback=False))
        assert f.tell() == 0
        # The transport is still usable.
        tr.write(b'ok')
        assert await srv.wait_bytes(2) == b'ok'
    run(with_connection(loop, endpoint, body))


def test_sendfile_closing_transport(loop, run, endpoint, data_file):
    async def body(tr, client, srv):
        tr.close()
        with pytest.raises(RuntimeError, match='^Transport is closing$'):
            await loop.sendfile(tr, data_file)
    run(with_connection(loop, endpoint, body))


@pytest.mark.parametrize('kwargs, exc, message', [
    (dict(count=0), ValueError, 'count must be a positive integer (got 0)'),
    (dict(count=-1), ValueError, 'count must be a positive integer (got -1)'),
    (dict(count='1'), TypeError, "count must be a positive integer (got '1')"),
    (dict(offset=-1), ValueError,
     'offset must be a non-negative integer (got -1)'),
    (dict(offset=1.5), TypeError,
     'offset must be a non-negative integer (got 1.5)'),
], ids=['count0', 'count-neg', 'count-str', 'offset-neg', 'offset-float'])
def test_sendfile_bad_arguments(loop, run, endpoint, data_file, kwargs, exc,
                                message):
    async def body(tr, client, srv):
        with pytest.raises(exc, match=f'^{re.escape(message)}$'):
            await loop.sendfile(tr, data_file, **kwargs)
        # The transport survives the failed call.
        assert tr.is_reading()
        tr.write(b'still')
        assert await srv.wait_bytes(5) == b'still'
    run(with_connection(loop, endpoint, body))


def test_sendfile_text_file_rejected(loop, run, endpoint, tmp_path):
    path = tmp_path / 't.txt'
    path.write_text('text')

    async def body(tr, client, srv):
        with open(path) as f:
            with pytest.raises(ValueError,
                               match='^file should be opened in binary mode$'):
                await loop.sendfile(tr, f)
    run(with_connection(loop, endpoint, body))


# ---------------------------------------------------------------------------
# loop.sock_sendfile
# ---------------------------------------------------------------------------

def test_sock_sendfile_tcp(loop, run, data_file):
    with tcp_pair() as (c, s):
        async def main():
            reader = asyncio.ensure_future(read_all(loop, s, SIZE))
            sent = await wait(loop.sock_sendfile(c, data_file))
            assert sent == SIZE
            assert data_file.tell() == SIZE
            got = await reader
            assert sha256(got) == sha256(DATA)
        run(main())


def test_sock_sendfile_unix_socketpair_offset_count(loop, run, data_file):
    with socketpair() as (a, b):
        async def main():
            sent = await wait(loop.sock_sendfile(a, data_file, 100, 200))
            assert sent == 200
            assert data_file.tell() == 300
            a.shutdown(socket.SHUT_WR)
            assert await read_until_eof(loop, b) == DATA[100:300]
        run(main())


def test_sock_sendfile_large_needs_waiting(loop, run, big_file):
    f, data = big_file
    with socketpair() as (a, b):
        async def main():
            task = asyncio.ensure_future(loop.sock_sendfile(a, f))
            await asyncio.sleep(0.01)
            assert not task.done()      # socket buffer is full, nobody reads
            reader = asyncio.ensure_future(read_all(loop, b, len(data)))
            assert await wait(task) == len(data)
            assert sha256(await reader) == sha256(data)
            assert f.tell() == len(data)
        run(main())


def test_sock_sendfile_cancel(loop, run, big_file):
    f, data = big_file
    with socketpair() as (a, b):
        async def main():
            task = asyncio.ensure_future(loop.sock_sendfile(a, f))
            await asyncio.sleep(0.01)
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # No writer is left registered for the socket.
            assert loop.remove_writer(a) is False
            # What went out is a prefix of the file, and the socket is
            # still usable afterwards.
            received = bytearray()
            for _ in range(100000):
                try:
                    chunk = b.recv(1 << 20)
                except BlockingIOError:
                    break
                received += chunk
            assert 0 < len(received) < len(data)
            assert received == data[:len(received)]
            await wait(loop.sock_sendall(a, b'after cancel'))
            assert await read_all(loop, b, 12) == b'after cancel'
        run(main())


@pytest.mark.parametrize('fallback', [True, False])
def test_sock_sendfile_fallback_argument(loop, run, data_file, fallback):
    with socketpair() as (a, b):
        async def main():
            reader = asyncio.ensure_future(read_all(loop, b, SIZE))
            assert await wait(loop.sock_sendfile(a, data_file,
                                                 fallback=fallback)) == SIZE
            assert sha256(await reader) == sha256(DATA)
        run(main())


def test_sock_sendfile_bytesio(loop, run):
    with socketpair() as (a, b):
        async def main():
            f = io.BytesIO(DATA)
            reader = asyncio.ensure_future(read_all(loop, b, SIZE - 1))
            assert await wait(loop.sock_sendfile(a, f, 1)) == SIZE - 1
            assert f.tell() == SIZE
            assert sha256(await reader) == sha256(DATA[1:])
            with pytest.raises(asyncio.SendfileNotAvailableError):
                await loop.sock_sendfile(a, io.BytesIO(b'x'), fallback=False)
        run(main())


def test_sock_sendfile_datagram_socket_rejected(loop, run, data_file):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        with pytest.raises(ValueError, match=re.escape(
                'only SOCK_STREAM type sockets are supported')):
            run(loop.sock_sendfile(s, data_file))


def test_sock_sendfile_bad_arguments(loop, run, data_file, tmp_path):
    path = tmp_path / 't.txt'
    path.write_text('text')
    with socketpair() as (a, b):
        async def main():
            with pytest.raises(ValueError, match=re.escape(
                    'count must be a positive integer (got 0)')):
                await loop.sock_sendfile(a, data_file, 0, 0)
            with pytest.raises(ValueError, match=re.escape(
                    'offset must be a non-negative integer (got -2)')):
                await loop.sock_sendfile(a, data_file, -2)
            with open(path) as f:
                with pytest.raises(ValueError, match=re.escape(
                        'file should be opened in binary mode')):
                    await loop.sock_sendfile(a, f)
        run(main())
