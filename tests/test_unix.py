"""AF_UNIX stream servers and connections.

Expected behaviour: CPython 3.11's unix_events._UnixSelectorEventLoop
(create_unix_server / create_unix_connection) and streams.py.
"""

import asyncio
import errno
import os
import pathlib
import re
import socket
import stat
import sys
import uuid

import pytest
from io_helpers import TIMEOUT, EchoProtocol, Factory, Recorder, payload, sha256, short_tmpdir


def wait(aw, timeout=TIMEOUT):
    return asyncio.wait_for(aw, timeout)


@pytest.fixture
def sock_dir(tmp_path):
    with short_tmpdir(tmp_path) as d:
        yield d


@pytest.fixture
def sock_path(sock_dir):
    return str(sock_dir / 's.sock')


def abstract_name():
    return f'\0ferroloop-test-{os.getpid()}-{uuid.uuid4().hex[:12]}'


async def close_server(server, factory=None):
    if factory is not None:
        await factory.close_all()
    server.close()
    await wait(server.wait_closed())


async def unix_connect(loop, path, cls=Recorder, **kw):
    proto = cls(loop, **kw)
    tr, pr = await wait(loop.create_unix_connection(lambda: proto, path))
    assert pr is proto
    return tr, pr


# ---------------------------------------------------------------------------
# protocols
# ---------------------------------------------------------------------------

def test_unix_echo(loop, run, sock_path):
    async def main():
        sf = Factory(EchoProtocol, loop)
        server = await wait(loop.create_unix_server(sf, sock_path))
        try:
            assert stat.S_ISSOCK(os.stat(sock_path).st_mode)
            assert server.sockets[0].family == socket.AF_UNIX
            assert server.sockets[0].getsockname() == sock_path
            tr, pr = await unix_connect(loop, sock_path)
            assert isinstance(tr, asyncio.Transport)
            tr.write(b'over a unix socket')
            assert await pr.wait_bytes(18) == b'over a unix socket'
            tr.write_eof()
            assert await pr.wait_lost() is None
            assert pr.events == ['connection_made', 'data_received',
                                 'eof_received', 'connection_lost']
            srv = sf.protocols[0]
            assert await srv.wait_lost() is None
            assert srv.events == ['connection_made', 'data_received',
                                  'eof_received', 'connection_lost']
        finally:
            await close_server(server, sf)
    run(main())


def test_unix_large_transfer_and_close_flush(loop, run, sock_path):
    size = 8 * 1024 * 1024
    data = payload(size)

    async def main():
        sf = Factory(Recorder, loop)
        server = await wait(loop.create_unix_server(sf, sock_path))
        try:
            tr, pr = await unix_connect(loop, sock_path)
            tr.write(data)
            assert tr.get_write_buffer_size() > 0
            tr.close()
            assert await pr.wait_lost() is None
            srv = sf.protocols[0]
            await srv.wait_lost()
            assert sha256(srv.data) == sha256(data)
        finally:
            await close_server(server, sf)
    run(main())


def test_unix_pathlib_path(loop, run, sock_path):
    async def main():
        sf = Factory(EchoProtocol, loop)
        server = await wait(loop.create_unix_server(
            sf, pathlib.Path(sock_path)))
        try:
            tr, pr = await wait(loop.create_unix_connection(
                lambda: Recorder(loop), pathlib.Path(sock_path)))
            tr.write(b'pathlib')
            assert await pr.wait_bytes(7) == b'pathlib'
            tr.close()
            await pr.wait_lost()
        finally:
            await close_server(server, sf)
    run(main())


def test_unix_extra_info(loop, run, sock_path):
    async def main():
        sf = Factory(Recorder, loop)
        server = await wait(loop.create_unix_server(sf, sock_path))
        try:
            tr, pr = await unix_connect(loop, sock_path)
            srv = await sf.wait_made()
            # The client socket is unnamed.
            assert tr.get_extra_info('peername') == sock_path
            assert tr.get_extra_info('sockname') == ''
            assert srv.transport.get_extra_info('sockname') == sock_path
            assert srv.transport.get_extra_info('peername') == ''
            sock = tr.get_extra_info('socket')
            assert sock.family == socket.AF_UNIX
            assert sock.type == socket.SOCK_STREAM
            assert tr.get_extra_info('nope', 'dflt') == 'dflt'
            tr.close()
            await pr.wait_lost()
        finally:
            await close_server(server, sf)
    run(main())


def test_unix_server_close_keeps_socket_file_on_311(loop, run, sock_path):
    async def main():
        server = await wait(loop.create_unix_server(
            lambda: Recorder(loop), sock_path))
        server.close()
        await wait(server.wait_closed())
    run(main())
    if sys.version_info < (3, 13):
        # 3.11/3.12 leave the socket file behind.
        assert os.path.exists(sock_path)
    else:
        assert not os.path.exists(sock_path)


def test_stale_socket_file_is_removed(loop, run, sock_path):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()
    assert stat.S_ISSOCK(os.stat(sock_path).st_mode)

    async def main():
        sf = Factory(EchoProtocol, loop)
        server = await wait(loop.create_unix_server(sf, sock_path))
        try:
            # bind() succeeded, so the stale file was unlinked first.
            assert stat.S_ISSOCK(os.stat(sock_path).st_mode)
            tr, pr = await unix_connect(loop, sock_path)
            tr.write(b'fresh')
            assert await pr.wait_bytes(5) == b'fresh'
            tr.close()
            await pr.wait_lost()
        finally:
            await close_server(server, sf)
    run(main())


def test_regular_file_at_path_is_not_removed(loop, run, sock_path):
    with open(sock_path, 'wb') as f:
        f.write(b'not a socket')

    async def main():
        with pytest.raises(OSError) as info:
            await loop.create_unix_server(lambda: Recorder(loop), sock_path)
        assert info.value.errno == errno.EADDRINUSE
        assert str(info.value) == (f'[Errno {errno.EADDRINUSE}] '
                                   f'Address {sock_path!r} is already in use')
    run(main())
    with open(sock_path, 'rb') as f:
        assert f.read() == b'not a socket'


def test_bind_in_missing_directory_fails(loop, run, sock_dir):
    path = str(sock_dir / 'missing' / 's.sock')

    async def main():
        with pytest.raises(FileNotFoundError):
            await loop.create_unix_server(lambda: Recorder(loop), path)
    run(main())


def test_connect_to_missing_path(loop, run, sock_path):
    async def main():
        with pytest.raises(FileNotFoundError) as info:
            await wait(loop.create_unix_connection(
                lambda: Recorder(loop), sock_path))
        assert info.value.errno == errno.ENOENT
    run(main())


def test_connect_to_socket_file_without_listener(loop, run, sock_path):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()

    async def main():
        with pytest.raises(ConnectionRefusedError) as info:
            await wait(loop.create_unix_connection(
                lambda: Recorder(loop), sock_path))
        assert info.value.errno == errno.ECONNREFUSED
    run(main())


def test_abstract_namespace(loop, run):
    name = abstract_name()

    async def main():
        sf = Factory(EchoProtocol, loop)
        server = await wait(loop.create_unix_server(sf, name))
        try:
            assert server.sockets[0].getsockname() == name.encode()
            tr, pr = await unix_connect(loop, name)
            assert tr.get_extra_info('peername') == name.encode()
            tr.write(b'abstract')
            assert await pr.wait_bytes(8) == b'abstract'
            srv = sf.protocols[0]
            assert srv.transport.get_extra_info('sockname') == name.encode()
            tr.close()
            await pr.wait_lost()
        finally:
            await close_server(server, sf)
    run(main())
    # Nothing was created in the file system.
    assert not os.path.exists(name[1:])


def test_abstract_namespace_bytes(loop, run):
    name = abstract_name().encode()

    async def main():
        sf = Factory(EchoProtocol, loop)
        server = await wait(loop.create_unix_server(sf, name))
        try:
            tr, pr = await unix_connect(loop, name)
            tr.write(b'bytes name')
            assert await pr.wait_bytes(10) == b'bytes name'
            tr.close()
            await pr.wait_lost()
        finally:
            await close_server(server, sf)
    run(main())


def test_abstract_name_in_use(loop, run):
    name = abstract_name()
    holder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    holder.bind(name)
    try:
        async def main():
            with pytest.raises(OSError) as info:
                await loop.create_unix_server(lambda: Recorder(loop), name)
            assert info.value.errno == errno.EADDRINUSE
            assert str(info.value) == (f'[Errno {errno.EADDRINUSE}] '
                                       f'Address {name!r} is already in use')
        run(main())
    finally:
        holder.close()


def test_sock_argument_variants(loop, run, sock_path):
    async def main():
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(sock_path)
        sf = Factory(EchoProtocol, loop)
        server = await wait(loop.create_unix_server(sf, sock=lsock))
        try:
            assert server.sockets[0].fileno() == lsock.fileno()
            assert lsock.gettimeout() == 0.0
            csock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            csock.connect(sock_path)
            proto = Recorder(loop)
            tr, pr = await wait(loop.create_unix_connection(lambda: proto,
                                                            sock=csock))
            assert pr is proto
            assert csock.gettimeout() == 0.0
            assert tr.get_extra_info('peername') == sock_path
            tr.write(b'sock=')
            assert await pr.wait_bytes(5) == b'sock='
            tr.close()
            await pr.wait_lost()
            assert csock.fileno() == -1
        finally:
            await close_server(server, sf)
        assert lsock.fileno() == -1        # the server closed it
    run(main())


def test_argument_errors(loop, run, sock_path):
    async def main():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            with pytest.raises(ValueError, match=re.escape(
                    'path and sock can not be specified at the same time')):
                await loop.create_unix_server(asyncio.Protocol, sock_path,
                                              sock=s)
            with pytest.raises(ValueError, match=re.escape(
                    'path and sock can not be specified at the same time')):
                await loop.create_unix_connection(asyncio.Protocol, sock_path,
                                                  sock=s)
        with pytest.raises(ValueError, match=re.escape(
                'path was not specified, and no sock specified')):
            await loop.create_unix_server(asyncio.Protocol)
        with pytest.raises(ValueError, match=re.escape(
                'no path and sock were specified')):
            await loop.create_unix_connection(asyncio.Protocol)
        for bad in (socket.socket(socket.AF_INET, socket.SOCK_STREAM),
                    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)):
            with bad:
                msg = f'A UNIX Domain Stream Socket was expected, got {bad!r}'
                with pytest.raises(ValueError, match=re.escape(msg)):
                    await loop.create_unix_server(asyncio.Protocol, sock=bad)
                with pytest.raises(ValueError, match=re.escape(msg)):
                    await loop.create_unix_connection(asyncio.Protocol,
                                                      sock=bad)
        with pytest.raises(TypeError, match=re.escape(
                'ssl argument must be an SSLContext or None')):
            await loop.create_unix_server(asyncio.Protocol, sock_path,
                                          ssl=True)
        with pytest.raises(ValueError, match=re.escape(
                'server_hostname is only meaningful with ssl')):
            await loop.create_unix_connection(asyncio.Protocol, sock_path,
                                              server_hostname='x')
        assert not os.path.exists(sock_path)
    run(main())


def test_unix_server_start_serving_false(loop, run, sock_path):
    async def main():
        sf = Factory(EchoProtocol, loop)
        server = await wait(loop.create_unix_server(sf, sock_path,
                                                    start_serving=False))
        try:
            assert not server.is_serving()
            assert os.path.exists(sock_path)       # bound, not listening
            with pytest.raises(ConnectionRefusedError):
                await wait(loop.create_unix_connection(
                    lambda: Recorder(loop), sock_path))
            await server.start_serving()
            assert server.is_serving()
            tr, pr = await unix_connect(loop, sock_path)
            tr.write(b'now')
            assert await pr.wait_bytes(3) == b'now'
            tr.close()
            await pr.wait_lost()
        finally:
            await close_server(server, sf)
    run(main())


def test_peer_close_seen_as_eof(loop, run, sock_path):
    async def main():
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            lsock.bind(sock_path)
            lsock.listen(1)
            tr, pr = await unix_connect(loop, sock_path)
            conn, _ = lsock.accept()
            conn.sendall(b'last')
            conn.close()
            assert await pr.wait_lost() is None
            assert pr.data == b'last'
            assert pr.events == ['connection_made', 'data_received',
                                 'eof_received', 'connection_lost']
        finally:
            lsock.close()
    run(main())


# ---------------------------------------------------------------------------
# streams
# ---------------------------------------------------------------------------

def test_unix_streams_echo(loop, run, sock_path):
    async def main():
        handled = loop.create_future()

        async def handler(reader, writer):
            try:
                assert writer.get_extra_info('sockname') == sock_path
                while True:
                    line = await reader.readline()
                    if not line:
                        break
                    writer.write(line[::-1])
                    await writer.drain()
                writer.close()
                await writer.wait_closed()
            finally:
                handled.set_result(None)

        server = await wait(asyncio.start_unix_server(handler, sock_path))
        async with server:
            reader, writer = await wait(asyncio.open_unix_connection(sock_path))
            assert writer.get_extra_info('peername') == sock_path
            writer.write(b'abc\n')
            await writer.drain()
            assert await wait(reader.readexactly(4)) == b'\ncba'
            writer.write(b'12\n')
            writer.write_eof()
            assert await wait(reader.read()) == b'\n21'
            assert reader.at_eof()
            writer.close()
            await wait(writer.wait_closed())
            await wait(handled)
    run(main())


def test_unix_streams_many_clients(loop, run, sock_path):
    async def main():
        async def handler(reader, writer):
            data = await reader.read()
            writer.write(sha256(data).encode())
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await wait(asyncio.start_unix_server(handler, sock_path))
        async with server:
            async def client(i):
                reader, writer = await asyncio.open_unix_connection(sock_path)
                data = payload(1000 * i + 1)
                writer.write(data)
                writer.write_eof()
                answer = await reader.read()
                writer.close()
                await writer.wait_closed()
                return answer == sha256(data).encode()

            results = await wait(asyncio.gather(*(client(i) for i in range(50))))
            assert all(results)
    run(main())
