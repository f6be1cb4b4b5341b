"""TLS: what an application sees of ``ssl=`` and ``start_tls`` on every loop.

Expected behaviour: CPython 3.11 asyncio -- ``base_events.py``
(``create_connection``, ``create_server``, ``connect_accepted_socket``,
``start_tls`` and their argument checks), ``unix_events.py``
(``create_unix_connection`` / ``create_unix_server``),
``selector_events.py`` (``_accept_connection2``: how a failed server-side
handshake is reported), ``streams.py`` and ``sslproto.py`` (``SSLProtocol``:
handshake, flow control both ways, close_notify, the handshake and shutdown
timeouts, which errors go to the exception handler and which only to
``connection_lost``).  ferroloop runs asyncio's ``sslproto`` over its own
socket transport (``ssl=``: transport made by ``_make_ssl_transport``;
``start_tls``: the connection's existing transport), so the tests that can
take either path run both (``via``).

Certificates come from a trustme CA made by this module (a second CA for
"unknown issuer"); nothing is installed system-wide.  Messages that come
from OpenSSL are compared with the same scenario run on a fresh stdlib loop
(``run_reference``) as well as with what CPython 3.11 produces.  The peer
that must misbehave at the TLS level (never answer close_notify, send a bad
record, vanish mid-handshake) is ``RawTLS``: an ``ssl.SSLObject`` driven by
hand over a plain socket.

Loopback only; every wait is bounded (``TIMEOUT``, or a few seconds more for
the bulk transfer); the ``loop`` fixture fails a test that leaks an fd.
"""

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import ssl
import struct
import time

import pytest
import trustme
from io_helpers import (
    TIMEOUT,
    Factory,
    Recorder,
    has_ipv6_loopback,
    payload,
    server_port,
    serving,
    set_linger_rst,
    sha256,
    short_tmpdir,
    tcp_pair,
    unused_port,
)

HOSTNAME = 'localhost'
VIAS = ('ssl', 'start_tls')

# The bulk transfer (test_bulk_transfer_under_backpressure).
BULK_SIZE = 100 << 20
BULK_TIMEOUT = 60.0
CHUNK = 256 * 1024
PERIOD = (1 << 20) + 7          # the payload repeats every PERIOD bytes
BULK_BLOCK = payload(PERIOD + CHUNK)


def wait(aw, timeout=TIMEOUT):
    return asyncio.wait_for(aw, timeout)


# ---------------------------------------------------------------------------
# certificates and contexts
# ---------------------------------------------------------------------------

@pytest.fixture(scope='module')
def ca():
    return trustme.CA()


@pytest.fixture(scope='module')
def other_ca():
    return trustme.CA()


@pytest.fixture(scope='module')
def server_cert(ca):
    return ca.issue_cert(HOSTNAME, '127.0.0.1', '::1')


@pytest.fixture(scope='module')
def client_cert(ca):
    return ca.issue_cert('client.example.org', common_name='client.example.org')


def make_server_ctx(cert, *, client_ca=None):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        client_ca.configure_trust(ctx)
    return ctx


def make_client_ctx(trusted_ca, cert=None):
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    trusted_ca.configure_trust(ctx)
    if cert is not None:
        cert.configure_cert(ctx)
    return ctx


@pytest.fixture
def server_ctx(server_cert):
    return make_server_ctx(server_cert)


@pytest.fixture
def client_ctx(ca):
    return make_client_ctx(ca)


@pytest.fixture(params=VIAS)
def via(request):
    """How the TLS transport is made: ``ssl=`` on create_server /
    create_connection, or ``loop.start_tls`` on a plain connection."""
    return request.param


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def describe(exc):
    """What is compared of an exception: type, text, and the SSL details."""
    if exc is None:
        return None
    out = (type(exc), str(exc))
    if isinstance(exc, ssl.SSLError):
        out += (exc.library, exc.reason)
    if isinstance(exc, ssl.SSLCertVerificationError):
        out += (exc.verify_code, exc.verify_message)
    return out


def summarize(contexts):
    """Exception-handler contexts, comparable across loops."""
    return [(c.get('message'), describe(c.get('exception')), sorted(c)) for c in contexts]


def logged(records):
    """asyncio's log records that matter: warnings and up, and any record
    with a traceback (``%r: message`` has its repr prefix removed)."""
    out = []
    for r in records:
        if r.name != 'asyncio' or (r.levelno < logging.WARNING and not r.exc_info):
            continue
        msg = r.getMessage()
        if msg.startswith('Executing '):  # debug mode's slow-callback notes: timing
            continue
        if msg.startswith('<'):
            msg = msg.rsplit('>: ', 1)[-1]
        out.append((r.levelname, msg, r.exc_info[0] if r.exc_info else None))
    return out


def run_reference(scenario, *args, debug=False):
    """asyncio's answer: ``scenario(loop, *args)`` on a new stdlib selector
    loop.  Returns (result, the exception-handler contexts it produced)."""
    ref = asyncio.SelectorEventLoop()
    contexts = []
    ref.set_exception_handler(lambda _loop, context: contexts.append(context))
    ref.set_debug(debug)
    try:
        return ref.run_until_complete(scenario(ref, *args)), contexts
    finally:
        ref.close()


def current_fds():
    """fd -> target of this process's open fds (no gc pass: polled)."""
    fds = {}
    for name in os.listdir('/proc/self/fd'):
        try:
            fds[int(name)] = os.readlink(f'/proc/self/fd/{name}')
        except OSError:  # the listdir fd itself
            pass
    return fds


async def fds_settle(expected, timeout=TIMEOUT):
    """Wait until the open fds are ``expected`` again: the far side of a
    failed connection (a server's accepted socket) was let go."""
    deadline = time.monotonic() + timeout
    while (now := current_fds()) != expected:
        if time.monotonic() > deadline:
            extra = {fd: t for fd, t in now.items() if expected.get(fd) != t}
            raise AssertionError(f'fds still open after {timeout}s: {extra}')
        await asyncio.sleep(0.01)
    # the accept task wakes up after the transport let go of its socket
    for _ in range(5):
        await asyncio.sleep(0)


async def drain_raw(loop, sock, timeout=TIMEOUT):
    """Raw bytes until EOF; a reset ends the stream too."""
    buf = bytearray()

    async def go():
        while True:
            try:
                data = await loop.sock_recv(sock, 1 << 18)
            except ConnectionResetError:
                return
            if not data:
                return
            buf.extend(data)
    await wait(go(), timeout)
    return bytes(buf)


def client_hello(client_ctx):
    """The first flight of a TLS client: a ClientHello record."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_ctx.wrap_bio(inc, out, server_hostname=HOSTNAME)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


class RawTLS:
    """One end of a TLS session driven by hand: an ``ssl.SSLObject`` over
    memory BIOs on a plain non-blocking socket, through the loop's
    ``sock_*`` methods.  It does what the test says and nothing else (it
    does not answer close_notify by itself, for one)."""

    def __init__(self, loop, sock, ctx, *, server_side, server_hostname=None):
        self.loop = loop
        self.sock = sock
        self.inc = ssl.MemoryBIO()
        self.out = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_side=server_side,
                                server_hostname=server_hostname)
        self.tcp_eof = False

    async def flush(self):
        data = self.out.read()
        if data:
            await wait(self.loop.sock_sendall(self.sock, data))

    async def fill(self):
        data = await wait(self.loop.sock_recv(self.sock, 1 << 16))
        if data:
            self.inc.write(data)
        else:
            self.tcp_eof = True
            self.inc.write_eof()

    async def _drive(self, op, *args):
        while True:
            try:
                result = op(*args)
            except ssl.SSLWantReadError:
                await self.flush()
                if self.tcp_eof:
                    raise AssertionError('OpenSSL wants data after EOF') from None
                await self.fill()
            else:
                await self.flush()
                return result

    async def handshake(self):
        await self._drive(self.obj.do_handshake)

    async def send(self, data):
        self.obj.write(data)
        await self.flush()

    async def recv(self):
        """The next application data; b'' once close_notify arrived."""
        try:
            return await self._drive(self.obj.read, 1 << 16)
        except ssl.SSLZeroReturnError:
            return b''

    async def unwrap(self):
        """Send close_notify (without waiting for the answer)."""
        try:
            self.obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        await self.flush()


@contextlib.asynccontextmanager
async def loop_client_raw_server(loop, via, server_ctx, client_ctx, client=None, **tls_kw):
    """The loop's TLS client (``via``) connected to a ``RawTLS`` server.
    Yields (client protocol, raw server) after both handshakes."""
    client = client if client is not None else Recorder(loop)
    with tcp_pair() as (csock, ssock):
        raw = RawTLS(loop, ssock, server_ctx, server_side=True)
        try:
            if via == 'ssl':
                connect = loop.create_connection(
                    lambda: client, sock=csock, ssl=client_ctx,
                    server_hostname=HOSTNAME, **tls_kw)
                (tr, _), _ = await wait(asyncio.gather(connect, raw.handshake()))
            else:
                plain, _ = await wait(loop.create_connection(lambda: client, sock=csock))
                upgrade = loop.start_tls(plain, client, client_ctx,
                                         server_hostname=HOSTNAME, **tls_kw)
                tr, _ = await wait(asyncio.gather(upgrade, raw.handshake()))
                client.transport = tr
            assert client.transport is tr
            yield client, raw
        finally:
            if client.transport is not None and not client.lost.done():
                client.transport.abort()
            if client.made.done():
                await asyncio.wait([client.lost], timeout=TIMEOUT)


class Pair:
    def __init__(self, server, client, server_proto):
        self.server = server
        self.client = client
        self.server_proto = server_proto


@contextlib.asynccontextmanager
async def tls_pair(loop, via, server_ctx, client_ctx, *, client=None, factory=None,
                   server_hostname=HOSTNAME, client_kw=None, server_kw=None):
    """A loop TLS server and a loop TLS client connected to it (``via``),
    both handshakes done; ``.transport`` of both protocols is their TLS
    transport.  On exit whatever is still open is aborted."""
    client = client if client is not None else Recorder(loop)
    factory = factory if factory is not None else Factory(Recorder, loop)
    client_kw = client_kw or {}
    server_kw = server_kw or {}
    if via == 'ssl':
        server = await wait(loop.create_server(
            factory, '127.0.0.1', 0, ssl=server_ctx, **server_kw))
    else:
        server = await wait(loop.create_server(factory, '127.0.0.1', 0))
    try:
        port = server_port(server)
        if via == 'ssl':
            await wait(loop.create_connection(
                lambda: client, '127.0.0.1', port, ssl=client_ctx,
                server_hostname=server_hostname, **client_kw))
            sproto = await factory.wait_made(1)
        else:
            plain, _ = await wait(loop.create_connection(lambda: client, '127.0.0.1', port))
            sproto = await factory.wait_made(1)
            s_tls, c_tls = await wait(asyncio.gather(
                loop.start_tls(sproto.transport, sproto, server_ctx,
                               server_side=True, **server_kw),
                loop.start_tls(plain, client, client_ctx,
                               server_hostname=server_hostname, **client_kw)))
            sproto.transport = s_tls
            client.transport = c_tls
        yield Pair(server, client, sproto)
    finally:
        everyone = [client, *factory.protocols]
        for proto in everyone:
            if proto.transport is not None and not proto.lost.done():
                proto.transport.abort()
        waiting = [p.lost for p in everyone if p.made.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=TIMEOUT)
        server.close()
        await wait(server.wait_closed())


# ---------------------------------------------------------------------------
# echo: create_server / create_connection, connect_accepted_socket, streams,
# Unix sockets
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('server_hostname', [HOSTNAME, None])
@pytest.mark.parametrize('host', ['127.0.0.1', '::1'])
def test_echo_over_create_server_and_create_connection(
        loop, run, server_ctx, client_ctx, host, server_hostname):
    # server_hostname=None: the host is the name checked (the certificate
    # has the loopback addresses as IP SANs).
    if host == '::1' and not has_ipv6_loopback():
        pytest.skip('no IPv6 loopback')

    async def main():
        factory = Factory(Recorder, loop, echo=True)
        server = await wait(loop.create_server(factory, host, 0, ssl=server_ctx))
        async with serving(server):
            client = Recorder(loop)
            tr, pr = await wait(loop.create_connection(
                lambda: client, host, server_port(server), ssl=client_ctx,
                server_hostname=server_hostname))
            assert pr is client and client.transport is tr
            assert isinstance(tr, asyncio.Transport)
            assert not tr.is_closing()
            assert tr.get_extra_info('ssl_object').server_hostname == (server_hostname or host)
            expected = b''
            for msg in (b'hello', payload(300_000), bytes(range(256))):
                tr.write(msg)
                expected += msg
                assert await client.wait_bytes(len(expected)) == expected
            sproto = await factory.wait_made(1)
            assert bytes(sproto.data) == expected
            tr.close()
            assert tr.is_closing()
            assert await client.wait_lost() is None
            assert await sproto.wait_lost() is None
            assert sproto.events == ['connection_made', 'data_received',
                                     'eof_received', 'connection_lost']
            # sslproto calls eof_received on the closing side too, when the
            # peer's close_notify answers its own.
            assert client.events == ['connection_made', 'data_received',
                                     'eof_received', 'connection_lost']
    run(main())


def test_connect_accepted_socket_with_ssl(loop, run, server_ctx, client_ctx):
    async def main():
        with tcp_pair() as (csock, ssock):
            sproto = Recorder(loop, echo=True)
            client = Recorder(loop)
            (s_tr, _), (c_tr, _) = await wait(asyncio.gather(
                loop.connect_accepted_socket(lambda: sproto, ssock, ssl=server_ctx),
                loop.create_connection(lambda: client, sock=csock, ssl=client_ctx,
                                       server_hostname=HOSTNAME)))
            assert s_tr.get_extra_info('ssl_object').server_side is True
            assert c_tr.get_extra_info('ssl_object').server_side is False
            c_tr.write(b'accepted')
            assert await client.wait_bytes(8) == b'accepted'
            c_tr.close()
            assert await client.wait_lost() is None
            assert await sproto.wait_lost() is None
    run(main())


def test_streams_over_tls(loop, run, server_ctx, client_ctx):
    async def main():
        done = loop.create_future()

        async def handler(reader, writer):
            try:
                lines = []
                while line := await reader.readline():
                    lines.append(line)
                    writer.write(line.upper())
                    await writer.drain()
                seen = (lines, reader.at_eof(), writer.can_write_eof(),
                        writer.get_extra_info('ssl_object').server_side)
                writer.close()
                await writer.wait_closed()
                done.set_result(seen)
            except Exception as exc:  # reported through ``done``
                done.set_exception(exc)

        server = await wait(asyncio.start_server(handler, '127.0.0.1', 0, ssl=server_ctx))
        async with serving(server):
            reader, writer = await wait(asyncio.open_connection(
                '127.0.0.1', server_port(server), ssl=client_ctx,
                server_hostname=HOSTNAME))
            try:
                assert writer.can_write_eof() is False
                with pytest.raises(NotImplementedError):
                    writer.write_eof()
                sent = [b'line %d\n' % i for i in range(5)] + [b'x' * 60_000 + b'\n']
                for line in sent:
                    writer.write(line)
                await wait(writer.drain())
                for line in sent:
                    assert await wait(reader.readline()) == line.upper()
                obj = writer.get_extra_info('ssl_object')
                assert obj.server_side is False and obj.server_hostname == HOSTNAME
            finally:
                writer.close()
                await wait(writer.wait_closed())
            # close() sent close_notify: the server's reader saw EOF
            lines, at_eof, can_write_eof, server_side = await wait(done)
            assert lines == sent
            assert at_eof is True and can_write_eof is False and server_side is True
            assert await wait(reader.read()) == b''
            assert reader.at_eof()
    run(main())


@pytest.mark.parametrize('api', ['protocols', 'streams'])
def test_unix_socket_tls(loop, run, tmp_path, server_ctx, client_ctx, api):
    async def with_protocols(path):
        factory = Factory(Recorder, loop, echo=True)
        server = await wait(loop.create_unix_server(factory, path, ssl=server_ctx))
        async with serving(server):
            client = Recorder(loop)
            tr, _ = await wait(loop.create_unix_connection(
                lambda: client, path, ssl=client_ctx, server_hostname=HOSTNAME))
            sock = tr.get_extra_info('socket')
            assert sock.family == socket.AF_UNIX
            assert tr.get_extra_info('peername') == path
            assert ('DNS', HOSTNAME) in tr.get_extra_info('peercert')['subjectAltName']
            tr.write(b'over unix')
            assert await client.wait_bytes(9) == b'over unix'
            sproto = await factory.wait_made(1)
            assert sproto.transport.get_extra_info('sockname') == path
            assert sproto.transport.get_extra_info('ssl_object').server_side is True
            tr.close()
            assert await client.wait_lost() is None
            assert await sproto.wait_lost() is None

    async def with_streams(path):
        done = loop.create_future()

        async def handler(reader, writer):
            try:
                data = await reader.readexactly(5)
                writer.write(data[::-1])
                rest = await reader.read()
                writer.close()
                await writer.wait_closed()
                done.set_result(rest)
            except Exception as exc:  # reported through ``done``
                done.set_exception(exc)

        server = await wait(asyncio.start_unix_server(handler, path, ssl=server_ctx))
        async with serving(server):
            reader, writer = await wait(asyncio.open_unix_connection(
                path, ssl=client_ctx, server_hostname=HOSTNAME))
            try:
                writer.write(b'abcde')
                assert await wait(reader.readexactly(5)) == b'edcba'
                assert writer.get_extra_info('ssl_object') is not None
            finally:
                writer.close()
                await wait(writer.wait_closed())
            assert await wait(done) == b''

    with short_tmpdir(tmp_path) as d:
        path = str(d / 'tls.sock')
        run(with_protocols(path) if api == 'protocols' else with_streams(path))


# ---------------------------------------------------------------------------
# ssl=True, server_hostname, argument checks
# ---------------------------------------------------------------------------

async def connect_with_ssl_true(loop, server_ctx):
    factory = Factory(Recorder, loop, echo=True)
    server = await wait(loop.create_server(factory, '127.0.0.1', 0, ssl=server_ctx))
    async with serving(server):
        before = current_fds()
        client = Recorder(loop)
        try:
            tr, _ = await wait(loop.create_connection(
                lambda: client, '127.0.0.1', server_port(server), ssl=True,
                server_hostname=HOSTNAME))
        except Exception as exc:
            outcome = describe(exc)
            await factory.wait_count(1)
            await fds_settle(before)
        else:
            ctx = tr.get_extra_info('sslcontext')
            outcome = ('connected', type(ctx), ctx is server_ctx, ctx.verify_mode,
                       ctx.check_hostname)
            tr.write(b'default context')
            assert await client.wait_bytes(15) == b'default context'
            tr.close()
            assert await client.wait_lost() is None
            await (await factory.wait_made(1)).wait_lost()
    return outcome, client.events


@pytest.mark.parametrize('ca_installed', [False, True])
def test_ssl_true_makes_a_default_context(loop, run, monkeypatch, tmp_path, ca,
                                          server_ctx, ca_installed):
    # ssl=True: sslproto's ssl.create_default_context(), which trusts the
    # system's CAs -- and SSL_CERT_FILE, read when the context is made.
    if ca_installed:
        pem = tmp_path / 'ca.pem'
        ca.cert_pem.write_to_path(str(pem))
        monkeypatch.setenv('SSL_CERT_FILE', str(pem))
    else:
        monkeypatch.delenv('SSL_CERT_FILE', raising=False)
    got = run(connect_with_ssl_true(loop, server_ctx))
    want, contexts = run_reference(connect_with_ssl_true, server_ctx)
    assert got == want
    assert contexts == []
    outcome, events = got
    if ca_installed:
        assert outcome == ('connected', ssl.SSLContext, False, ssl.CERT_REQUIRED, True)
        assert events == ['connection_made', 'data_received', 'eof_received',
                          'connection_lost']
    else:
        assert outcome[0] is ssl.SSLCertVerificationError
        assert outcome[-2:] == (20, 'unable to get local issuer certificate')
        assert events == []   # the protocol never saw the failed connection


def test_empty_server_hostname_skips_the_hostname_check(loop, run, ca, client_ctx):
    # server_hostname='': the chain is verified, the name is not, even with
    # check_hostname on (base_events.create_connection's comment).
    other_name = make_server_ctx(ca.issue_cert('elsewhere.example.org'))
    assert client_ctx.check_hostname

    async def main():
        factory = Factory(Recorder, loop, echo=True)
        server = await wait(loop.create_server(factory, '127.0.0.1', 0, ssl=other_name))
        async with serving(server):
            client = Recorder(loop)
            tr, _ = await wait(loop.create_connection(
                lambda: client, '127.0.0.1', server_port(server), ssl=client_ctx,
                server_hostname=''))
            assert tr.get_extra_info('ssl_object').server_hostname is None
            tr.write(b'nameless')
            assert await client.wait_bytes(8) == b'nameless'
            tr.close()
            assert await client.wait_lost() is None
            await (await factory.wait_made(1)).wait_lost()
    run(main())


class ArgEnv:
    """What an argument-check case may use; made anew on each loop."""

    def __init__(self, server_ctx, client_ctx, tmpdir):
        self.server_ctx = server_ctx
        self.client_ctx = client_ctx
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.port = unused_port()
        self.path = os.path.join(tmpdir, 'nobody.sock')

    def close(self):
        self.sock.close()


P = asyncio.Protocol
NO_HOST = 'You must set server_hostname when using ssl without a host'
ONLY_SSL = 'server_hostname is only meaningful with ssl'
HS_ONLY = 'ssl_handshake_timeout is only meaningful with ssl'
SD_ONLY = 'ssl_shutdown_timeout is only meaningful with ssl'
NOT_CTX = 'ssl argument must be an SSLContext or None'

ARG_CASES = [
    # create_connection
    ('conn-ssl-no-host', lambda lp, e: lp.create_connection(
        P, None, e.port, ssl=e.client_ctx), ValueError, NO_HOST),
    ('conn-ssl-true-no-host', lambda lp, e: lp.create_connection(
        P, None, e.port, ssl=True), ValueError, NO_HOST),
    ('conn-sock-ssl-no-hostname', lambda lp, e: lp.create_connection(
        P, sock=e.sock, ssl=e.client_ctx), ValueError, NO_HOST),
    ('conn-hostname-no-ssl', lambda lp, e: lp.create_connection(
        P, '127.0.0.1', e.port, server_hostname=HOSTNAME), ValueError, ONLY_SSL),
    ('conn-empty-hostname-no-ssl', lambda lp, e: lp.create_connection(
        P, '127.0.0.1', e.port, server_hostname=''), ValueError, ONLY_SSL),
    ('conn-hostname-ssl-false', lambda lp, e: lp.create_connection(
        P, '127.0.0.1', e.port, ssl=False, server_hostname=HOSTNAME), ValueError, ONLY_SSL),
    ('conn-handshake-timeout-no-ssl', lambda lp, e: lp.create_connection(
        P, '127.0.0.1', e.port, ssl_handshake_timeout=1.0), ValueError, HS_ONLY),
    ('conn-shutdown-timeout-no-ssl', lambda lp, e: lp.create_connection(
        P, '127.0.0.1', e.port, ssl_shutdown_timeout=1.0), ValueError, SD_ONLY),
    ('conn-handshake-timeout-zero', lambda lp, e: lp.create_connection(
        P, sock=e.sock, ssl=e.client_ctx, server_hostname=HOSTNAME, ssl_handshake_timeout=0),
        ValueError, 'ssl_handshake_timeout should be a positive number, got 0'),
    ('conn-shutdown-timeout-negative', lambda lp, e: lp.create_connection(
        P, sock=e.sock, ssl=e.client_ctx, server_hostname=HOSTNAME, ssl_shutdown_timeout=-1.5),
        ValueError, 'ssl_shutdown_timeout should be a positive number, got -1.5'),
    ('conn-ssl-int', lambda lp, e: lp.create_connection(
        P, sock=e.sock, ssl=1, server_hostname=HOSTNAME),
        AttributeError, "'int' object has no attribute 'wrap_bio'"),
    ('conn-ssl-str', lambda lp, e: lp.create_connection(
        P, sock=e.sock, ssl='x', server_hostname=HOSTNAME),
        AttributeError, "'str' object has no attribute 'wrap_bio'"),
    # create_server
    ('server-ssl-true', lambda lp, e: lp.create_server(
        P, '127.0.0.1', 0, ssl=True), TypeError, NOT_CTX),
    ('server-ssl-false', lambda lp, e: lp.create_server(
        P, '127.0.0.1', 0, ssl=False), TypeError, NOT_CTX),
    ('server-handshake-timeout-no-ssl', lambda lp, e: lp.create_server(
        P, '127.0.0.1', 0, ssl_handshake_timeout=1.0), ValueError, HS_ONLY),
    ('server-shutdown-timeout-no-ssl', lambda lp, e: lp.create_server(
        P, '127.0.0.1', 0, ssl_shutdown_timeout=1.0), ValueError, SD_ONLY),
    # connect_accepted_socket
    ('accepted-handshake-timeout-no-ssl', lambda lp, e: lp.connect_accepted_socket(
        P, e.sock, ssl_handshake_timeout=1.0), ValueError, HS_ONLY),
    ('accepted-shutdown-timeout-no-ssl', lambda lp, e: lp.connect_accepted_socket(
        P, e.sock, ssl_shutdown_timeout=1.0), ValueError, SD_ONLY),
    ('accepted-ssl-true', lambda lp, e: lp.connect_accepted_socket(
        P, e.sock, ssl=True), ValueError, 'Server side SSL needs a valid SSLContext'),
    ('accepted-ssl-int', lambda lp, e: lp.connect_accepted_socket(
        P, e.sock, ssl=1), AttributeError, "'int' object has no attribute 'wrap_bio'"),
    # Unix sockets
    ('unix-conn-ssl-no-hostname', lambda lp, e: lp.create_unix_connection(
        P, e.path, ssl=e.client_ctx), ValueError,
        'you have to pass server_hostname when using ssl'),
    ('unix-conn-hostname-no-ssl', lambda lp, e: lp.create_unix_connection(
        P, e.path, server_hostname=HOSTNAME), ValueError, ONLY_SSL),
    ('unix-conn-handshake-timeout-no-ssl', lambda lp, e: lp.create_unix_connection(
        P, e.path, ssl_handshake_timeout=1.0), ValueError, HS_ONLY),
    ('unix-conn-shutdown-timeout-no-ssl', lambda lp, e: lp.create_unix_connection(
        P, e.path, ssl_shutdown_timeout=1.0), ValueError, SD_ONLY),
    ('unix-server-ssl-true', lambda lp, e: lp.create_unix_server(
        P, e.path, ssl=True), TypeError, NOT_CTX),
    ('unix-server-handshake-timeout-no-ssl', lambda lp, e: lp.create_unix_server(
        P, e.path, ssl_handshake_timeout=1.0), ValueError, HS_ONLY),
    ('unix-server-shutdown-timeout-no-ssl', lambda lp, e: lp.create_unix_server(
        P, e.path, ssl_shutdown_timeout=1.0), ValueError, SD_ONLY),
    # streams pass the arguments on
    ('open-connection-hostname-no-ssl', lambda lp, e: asyncio.open_connection(
        '127.0.0.1', e.port, server_hostname=HOSTNAME), ValueError, ONLY_SSL),
    ('open-connection-ssl-no-host', lambda lp, e: asyncio.open_connection(
        sock=e.sock, ssl=e.client_ctx), ValueError, NO_HOST),
    ('start-server-ssl-true', lambda lp, e: asyncio.start_server(
        lambda r, w: None, '127.0.0.1', 0, ssl=True), TypeError, NOT_CTX),
]


async def arg_outcome(loop, call, server_ctx, client_ctx, tmpdir):
    env = ArgEnv(server_ctx, client_ctx, tmpdir)
    try:
        result = await wait(call(loop, env))
    except Exception as exc:
        return describe(exc)
    else:  # not rejected: let go of what was made
        if isinstance(result, asyncio.AbstractServer):
            result.close()
            await result.wait_closed()
        elif isinstance(result[0], asyncio.StreamReader):
            result[1].close()
            await asyncio.sleep(0.01)
        else:
            result[0].abort()
            await asyncio.sleep(0.01)
        return 'accepted'
    finally:
        env.close()


@pytest.mark.parametrize('call, exc_type, message',
                         [pytest.param(*case[1:], id=case[0]) for case in ARG_CASES])
def test_argument_checks(loop, run, tmp_path, server_ctx, client_ctx, call, exc_type, message):
    with short_tmpdir(tmp_path) as d:
        got = run(arg_outcome(loop, call, server_ctx, client_ctx, str(d)))
        want, contexts = run_reference(arg_outcome, call, server_ctx, client_ctx, str(d))
    assert got == (exc_type, message)
    assert got == want
    assert contexts == []


def test_start_tls_argument_checks(loop, run, client_ctx):
    # start_tls rejects these before it touches the transport: the
    # connection goes on, in plain text, with its protocol.
    async def main():
        factory = Factory(Recorder, loop, echo=True)
        server = await wait(loop.create_server(factory, '127.0.0.1', 0))
        async with serving(server):
            client = Recorder(loop)
            tr, _ = await wait(loop.create_connection(
                lambda: client, '127.0.0.1', server_port(server)))
            dtr, _ = await wait(loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=('127.0.0.1', 0)))
            try:
                for ctx, exc_type, msg in [
                    (True, TypeError, 'sslcontext is expected to be an instance of '
                                      'ssl.SSLContext, got True'),
                    (None, TypeError, 'sslcontext is expected to be an instance of '
                                      'ssl.SSLContext, got None'),
                ]:
                    with pytest.raises(exc_type) as info:
                        await wait(loop.start_tls(tr, client, ctx, server_hostname=HOSTNAME))
                    assert str(info.value) == msg
                for kw, msg in [
                    ({'ssl_handshake_timeout': 0},
                     'ssl_handshake_timeout should be a positive number, got 0'),
                    ({'ssl_shutdown_timeout': -1},
                     'ssl_shutdown_timeout should be a positive number, got -1'),
                ]:
                    with pytest.raises(ValueError) as info:
                        await wait(loop.start_tls(tr, client, client_ctx,
                                                  server_hostname=HOSTNAME, **kw))
                    assert str(info.value) == msg
                with pytest.raises(TypeError) as info:
                    await wait(loop.start_tls(dtr, client, client_ctx))
                assert str(info.value) == f'transport {dtr!r} is not supported by start_tls()'
            finally:
                dtr.close()
            assert tr.get_protocol() is client
            assert tr.is_reading()
            tr.write(b'still plain')
            assert await client.wait_bytes(11) == b'still plain'
            tr.close()
            assert await client.wait_lost() is None
            await (await factory.wait_made(1)).wait_lost()
    run(main())


# ---------------------------------------------------------------------------
# get_extra_info, client certificates, ALPN
# ---------------------------------------------------------------------------

def test_extra_info(loop, run, via, server_ctx, client_ctx, server_cert):
    async def main():
        async with tls_pair(loop, via, server_ctx, client_ctx) as pair:
            c = pair.client.transport
            s = pair.server_proto.transport
            for tr, ctx, server_side in ((c, client_ctx, False), (s, server_ctx, True)):
                assert tr.get_extra_info('sslcontext') is ctx
                obj = tr.get_extra_info('ssl_object')
                assert isinstance(obj, ssl.SSLObject)
                assert obj.server_side is server_side
                assert obj.context is ctx
                assert obj.version() in ('TLSv1.2', 'TLSv1.3')
                cipher = tr.get_extra_info('cipher')
                assert cipher == obj.cipher()
                assert cipher[1] == obj.version()
                assert tr.get_extra_info('compression') is None
                assert obj.selected_alpn_protocol() is None
                sock = tr.get_extra_info('socket')
                assert isinstance(sock, asyncio.trsock.TransportSocket)
                assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
                assert tr.get_extra_info('sockname') == sock.getsockname()
                assert tr.get_extra_info('peername') == sock.getpeername()
                assert tr.get_extra_info('no such thing') is None
                assert tr.get_extra_info('no such thing', 'dflt') == 'dflt'
            assert c.get_extra_info('peername') == s.get_extra_info('sockname')
            assert c.get_extra_info('sockname') == s.get_extra_info('peername')
            assert c.get_extra_info('ssl_object').server_hostname == HOSTNAME
            assert s.get_extra_info('ssl_object').server_hostname is None
            peercert = c.get_extra_info('peercert')
            assert peercert == c.get_extra_info('ssl_object').getpeercert()
            assert ('DNS', HOSTNAME) in peercert['subjectAltName']
            assert ('IP Address', '127.0.0.1') in peercert['subjectAltName']
            served = ssl.PEM_cert_to_DER_cert(server_cert.cert_chain_pems[0].bytes().decode())
            assert c.get_extra_info('ssl_object').getpeercert(binary_form=True) == served
            assert s.get_extra_info('peercert') is None  # no client certificate asked for
    run(main())


def test_client_certificate(loop, run, via, ca, server_cert, client_cert):
    server_ctx = make_server_ctx(server_cert, client_ca=ca)
    client_ctx = make_client_ctx(ca, client_cert)

    async def main():
        factory = Factory(Recorder, loop, echo=True)
        async with tls_pair(loop, via, server_ctx, client_ctx, factory=factory) as pair:
            peercert = pair.server_proto.transport.get_extra_info('peercert')
            assert ('DNS', 'client.example.org') in peercert['subjectAltName']
            assert ((('commonName', 'client.example.org'),) in peercert['subject'])
            tr = pair.client.transport
            tr.write(b'mutual')
            assert await pair.client.wait_bytes(6) == b'mutual'
            tr.close()
            assert await pair.client.wait_lost() is None
            assert await pair.server_proto.wait_lost() is None
    run(main())


async def connect_without_client_cert(loop, server_ctx, client_ctx):
    factory = Factory(Recorder, loop)
    server = await wait(loop.create_server(factory, '127.0.0.1', 0, ssl=server_ctx))
    async with serving(server):
        before = current_fds()
        client = Recorder(loop)
        try:
            await wait(loop.create_connection(
                lambda: client, '127.0.0.1', server_port(server), ssl=client_ctx,
                server_hostname=HOSTNAME))
        except Exception as exc:
            outcome = ('raised', describe(exc))
        else:
            outcome = ('connected', describe(await client.wait_lost()))
        await factory.wait_count(1)
        await fds_settle(before)
    return outcome, client.events, [p.events for p in factory.protocols]


@pytest.mark.parametrize('version', ['TLSv1_2', 'TLSv1_3'])
def test_missing_client_certificate(loop, run, ca, server_cert, version):
    # TLS 1.2: the server refuses during the handshake, create_connection
    # fails.  TLS 1.3: the client's handshake is over before the server
    # looks at the (missing) certificate, so the connection is made and
    # then lost.  sslproto does not flush the server's alert.
    server_ctx = make_server_ctx(server_cert, client_ca=ca)
    server_ctx.maximum_version = getattr(ssl.TLSVersion, version)
    client_ctx = make_client_ctx(ca)
    got = run(connect_without_client_cert(loop, server_ctx, client_ctx))
    want, contexts = run_reference(connect_without_client_cert, server_ctx, client_ctx)
    assert got == want
    assert contexts == []
    outcome, client_events, server_events = got
    assert server_events == [[]]
    if version == 'TLSv1_2':
        assert outcome[0] == 'raised'
        assert client_events == []
    else:
        assert outcome[0] == 'connected'
        assert client_events[0] == 'connection_made' and client_events[-1] == 'connection_lost'


@pytest.mark.parametrize('server_protocols, client_protocols, selected', [
    (['h2', 'http/1.1'], ['http/1.1', 'h2'], 'h2'),   # the server's preference
    (['h2', 'http/1.1'], ['http/1.1'], 'http/1.1'),
    (['h2'], ['spdy/3'], None),                       # no overlap: none chosen
    (None, ['h2'], None),                             # the server does not do ALPN
])
def test_alpn(loop, run, via, server_ctx, client_ctx, server_protocols, client_protocols,
              selected):
    if server_protocols is not None:
        server_ctx.set_alpn_protocols(server_protocols)
    client_ctx.set_alpn_protocols(client_protocols)

    async def main():
        async with tls_pair(loop, via, server_ctx, client_ctx) as pair:
            for proto in (pair.client, pair.server_proto):
                obj = proto.transport.get_extra_info('ssl_object')
                assert obj.selected_alpn_protocol() == selected
            pair.client.transport.close()
            assert await pair.client.wait_lost() is None
            assert await pair.server_proto.wait_lost() is None
    run(main())


# ---------------------------------------------------------------------------
# start_tls: STARTTLS-style upgrades
# ---------------------------------------------------------------------------

class StartTLSServer(Recorder):
    """A line protocol: ``STARTTLS`` is answered ``OK`` and the connection
    is upgraded (``server_side=True``); after that every chunk is echoed
    upper-cased.  Data the TLS layer hands over before start_tls() has
    returned is kept until it has."""

    def __init__(self, loop, *, ctx):
        super().__init__(loop)
        self.ctx = ctx
        self.line = b''
        self.tls = None
        self.upgrading = False
        self.early = b''
        self.upgraded = loop.create_future()

    def data_received(self, data):
        super().data_received(data)
        if self.tls is not None:
            self.tls.write(data.upper())
        elif self.upgrading:
            self.early += data
        else:
            self.line += data
            if self.line == b'STARTTLS\r\n':
                self.upgrading = True
                self.transport.pause_reading()
                self.transport.write(b'OK\r\n')
                self.loop.create_task(self.upgrade())

    async def upgrade(self):
        try:
            tls = await self.loop.start_tls(self.transport, self, self.ctx, server_side=True)
        except Exception as exc:  # reported through ``upgraded``
            self.upgraded.set_exception(exc)
            return
        self.tls = self.transport = tls
        if self.early:
            tls.write(self.early.upper())
        self.upgraded.set_result(tls)


def test_start_tls_both_sides(loop, run, server_ctx, client_ctx):
    async def main():
        factory = Factory(StartTLSServer, loop, ctx=server_ctx)
        server = await wait(loop.create_server(factory, '127.0.0.1', 0))
        async with serving(server):
            client = Recorder(loop)
            plain, _ = await wait(loop.create_connection(
                lambda: client, '127.0.0.1', server_port(server)))
            assert plain.get_extra_info('ssl_object') is None
            plain.write(b'STARTTLS\r\n')
            assert await client.wait_bytes(4) == b'OK\r\n'
            tr = await wait(loop.start_tls(plain, client, client_ctx, server_hostname=HOSTNAME))
            assert tr is not plain
            assert plain.get_protocol() is not client   # the TLS layer sits in between
            assert tr.get_protocol() is client
            tr.write(b'hello tls\r\n')
            assert await client.wait_bytes(15) == b'OK\r\nHELLO TLS\r\n'
            sproto = factory.protocols[0]
            s_tls = await wait(asyncio.shield(sproto.upgraded))
            assert s_tls.get_extra_info('ssl_object').server_side is True
            assert tr.get_extra_info('ssl_object').server_side is False
            assert tr.get_extra_info('peercert')['subjectAltName'][0] == ('DNS', HOSTNAME)
            assert tr.get_extra_info('socket').fileno() == plain.get_extra_info('socket').fileno()
            tr.close()
            assert await client.wait_lost() is None
            assert await sproto.wait_lost() is None
            assert plain.is_closing()
            assert sproto.events == ['connection_made', 'data_received', 'eof_received',
                                     'connection_lost']
            assert client.events == ['connection_made', 'data_received', 'eof_received',
                                     'connection_lost']
    run(main())


def test_start_tls_with_streams(loop, run, server_ctx, client_ctx):
    async def main():
        done = loop.create_future()

        async def handler(reader, writer):
            try:
                assert await reader.readline() == b'STARTTLS\r\n'
                writer.write(b'OK\r\n')
                await writer.start_tls(server_ctx)   # server side: a server's writer
                line = await reader.readline()
                writer.write(line.upper())
                await writer.drain()
                rest = await reader.read()
                side = writer.get_extra_info('ssl_object').server_side
                writer.close()
                await writer.wait_closed()
                done.set_result((rest, side))
            except Exception as exc:  # reported through ``done``
                done.set_exception(exc)

        server = await wait(asyncio.start_server(handler, '127.0.0.1', 0))
        async with serving(server):
            reader, writer = await wait(asyncio.open_connection('127.0.0.1', server_port(server)))
            try:
                writer.write(b'STARTTLS\r\n')
                assert await wait(reader.readline()) == b'OK\r\n'
                await wait(writer.start_tls(client_ctx, server_hostname=HOSTNAME))
                assert writer.get_extra_info('ssl_object').server_side is False
                writer.write(b'secret\r\n')
                assert await wait(reader.readline()) == b'SECRET\r\n'
            finally:
                writer.close()
                await wait(writer.wait_closed())
            assert await wait(done) == (b'', True)
            assert await wait(reader.read()) == b''
    run(main())


# ---------------------------------------------------------------------------
# timeouts
# ---------------------------------------------------------------------------

def test_handshake_timeout_client(loop, run, via, client_ctx):
    # The server accepts (the kernel does) and never speaks.
    async def main():
        with tcp_pair() as (csock, ssock):
            client = Recorder(loop)
            t0 = loop.time()
            if via == 'ssl':
                with pytest.raises(ConnectionAbortedError) as info:
                    await wait(loop.create_connection(
                        lambda: client, sock=csock, ssl=client_ctx,
                        server_hostname=HOSTNAME, ssl_handshake_timeout=0.3))
            else:
                plain, _ = await wait(loop.create_connection(lambda: client, sock=csock))
                with pytest.raises(ConnectionAbortedError) as info:
                    await wait(loop.start_tls(plain, client, client_ctx,
                                              server_hostname=HOSTNAME,
                                              ssl_handshake_timeout=0.3))
                assert plain.is_closing()
            elapsed = loop.time() - t0
            assert str(info.value) == ('SSL handshake is taking longer than 0.3 seconds: '
                                       'aborting the connection')
            assert 0.25 <= elapsed < TIMEOUT
            hello = await drain_raw(loop, ssock)   # the ClientHello, then EOF
            assert hello[:1] == b'\x16'
            await asyncio.sleep(0.01)
        # The application protocol is not told about a TLS connection that
        # never was (start_tls: asyncio never reports the plain one's end).
        assert client.events == ([] if via == 'ssl' else ['connection_made'])
    run(main())


def test_shutdown_timeout(loop, run, via, server_ctx, client_ctx):
    # close() sends close_notify and waits for the peer's, which never comes.
    async def main():
        async with loop_client_raw_server(loop, via, server_ctx, client_ctx,
                                          ssl_shutdown_timeout=0.3) as (client, raw):
            t0 = loop.time()
            client.transport.close()
            exc = await client.wait_lost()
            elapsed = loop.time() - t0
            assert type(exc) is TimeoutError
            assert str(exc) == 'SSL shutdown timed out'
            assert 0.25 <= elapsed < TIMEOUT
            assert client.events == ['connection_made', 'connection_lost']
            assert await raw.recv() == b''          # close_notify had been sent
            assert await drain_raw(loop, raw.sock) == b''
    run(main())


# ---------------------------------------------------------------------------
# handshake failures: verification, peers that vanish
# ---------------------------------------------------------------------------

async def connect_and_fail(loop, server_ctx, client_ctx, host, hostname):
    factory = Factory(Recorder, loop)
    server = await wait(loop.create_server(factory, '127.0.0.1', 0, ssl=server_ctx))
    async with serving(server):
        before = current_fds()
        client = Recorder(loop)
        try:
            await wait(loop.create_connection(
                lambda: client, host, server_port(server), ssl=client_ctx,
                server_hostname=hostname))
        except Exception as exc:
            outcome = describe(exc)
        else:
            outcome = 'connected'
            client.transport.abort()
            await client.wait_lost()
        await factory.wait_count(1)
        await fds_settle(before)
    return outcome, client.events, [p.events for p in factory.protocols]


@pytest.mark.parametrize('debug', [False, True])
@pytest.mark.parametrize('case', ['unknown-ca', 'hostname', 'ip-address'])
def test_certificate_verification_failure(loop, run, loop_errors, ca, other_ca, server_ctx,
                                          case, debug):
    if case == 'unknown-ca':
        args = (server_ctx, make_client_ctx(other_ca), '127.0.0.1', HOSTNAME)
        code, message = 20, 'unable to get local issuer certificate'
    elif case == 'hostname':
        args = (server_ctx, make_client_ctx(ca), '127.0.0.1', 'example.org')
        code, message = 62, "Hostname mismatch, certificate is not valid for 'example.org'."
    else:  # a certificate for the name only; the address is what is checked
        args = (make_server_ctx(ca.issue_cert(HOSTNAME)), make_client_ctx(ca), '127.0.0.1', None)
        code, message = 64, "IP address mismatch, certificate is not valid for '127.0.0.1'."
    loop.set_debug(debug)
    got = run(connect_and_fail(loop, *args))
    want, contexts = run_reference(connect_and_fail, *args, debug=debug)
    assert got == want
    assert summarize(loop_errors) == summarize(contexts)
    outcome, client_events, server_events = got
    assert outcome[0] is ssl.SSLCertVerificationError
    assert outcome[-2:] == (code, message)
    assert outcome[1].startswith(
        f'[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}')
    assert client_events == [] and server_events == [[]]
    if debug:  # the server's failed handshake, reported by _accept_connection2
        assert [c['message'] for c in loop_errors] == [
            'Error on transport creation for incoming connection']
    else:
        assert loop_errors == []


async def server_meets_vanishing_client(loop, how, server_ctx, client_ctx):
    factory = Factory(Recorder, loop, echo=True)
    kw = {'ssl_handshake_timeout': 0.3} if how == 'silent' else {}
    server = await wait(loop.create_server(factory, '127.0.0.1', 0, ssl=server_ctx, **kw))
    async with serving(server):
        port = server_port(server)
        before = current_fds()
        sock = socket.socket()
        sock.setblocking(False)
        try:
            await wait(loop.sock_connect(sock, ('127.0.0.1', port)))
            if how == 'http':
                await wait(loop.sock_sendall(sock, b'GET / HTTP/1.1\r\nHost: x\r\n\r\n'))
            elif how in ('fin', 'rst'):
                hello = client_hello(client_ctx)
                await wait(loop.sock_sendall(sock, hello[:len(hello) // 2]))
            await factory.wait_count(1)
            if how == 'rst':
                set_linger_rst(sock)
                sock.close()
                received = None
            else:
                if how == 'fin':
                    sock.shutdown(socket.SHUT_WR)
                received = await drain_raw(loop, sock)
        finally:
            sock.close()
        await fds_settle(before)
        # and the server serves on
        client = Recorder(loop)
        tr, _ = await wait(loop.create_connection(
            lambda: client, '127.0.0.1', port, ssl=client_ctx, server_hostname=HOSTNAME))
        tr.write(b'next')
        assert await client.wait_bytes(4) == b'next'
        tr.close()
        await client.wait_lost()
        await (await factory.wait_made(2)).wait_lost()
    return received, [p.events for p in factory.protocols]


@pytest.mark.parametrize('debug', [False, True])
@pytest.mark.parametrize('how', ['fin', 'rst', 'http', 'silent'])
def test_client_vanishing_mid_handshake(loop, run, loop_errors, server_ctx, client_ctx,
                                        how, debug):
    # fin/rst: half a ClientHello, then EOF or a reset; http: not TLS at
    # all; silent: nothing, until the server's handshake timeout.
    loop.set_debug(debug)
    t0 = time.monotonic()
    got = run(server_meets_vanishing_client(loop, how, server_ctx, client_ctx))
    elapsed = time.monotonic() - t0
    want, contexts = run_reference(server_meets_vanishing_client, how, server_ctx, client_ctx,
                                   debug=debug)
    assert got == want
    assert summarize(loop_errors) == summarize(contexts)
    received, events = got
    assert received == (None if how == 'rst' else b'')   # no alert is sent
    assert events == [[], ['connection_made', 'data_received', 'eof_received',
                           'connection_lost']]
    if how == 'silent':
        assert elapsed >= 0.25
    expected_exc = {
        'fin': (ConnectionResetError, ''),
        'rst': (ConnectionResetError, '[Errno 104] Connection reset by peer'),
        'http': (ssl.SSLError,),
        'silent': (ConnectionAbortedError, 'SSL handshake is taking longer than 0.3 seconds: '
                                           'aborting the connection'),
    }[how]
    if debug:
        assert len(loop_errors) == 1
        ctx = loop_errors[0]
        assert ctx['message'] == 'Error on transport creation for incoming connection'
        assert describe(ctx['exception'])[:len(expected_exc)] == expected_exc
        assert type(ctx['exception']) is expected_exc[0]
    else:
        assert loop_errors == []


async def client_meets_vanishing_server(loop, via, how, client_ctx):
    with tcp_pair() as (csock, ssock):
        client = Recorder(loop)
        if via == 'ssl':
            connect = loop.create_connection(lambda: client, sock=csock, ssl=client_ctx,
                                             server_hostname=HOSTNAME)
        else:
            plain, _ = await wait(loop.create_connection(lambda: client, sock=csock))
            connect = loop.start_tls(plain, client, client_ctx, server_hostname=HOSTNAME)
        task = loop.create_task(connect)
        hello = await wait(loop.sock_recv(ssock, 1 << 16))
        assert hello[:1] == b'\x16'
        if how == 'rst':
            set_linger_rst(ssock)
            ssock.close()
        else:
            ssock.shutdown(socket.SHUT_WR)
        try:
            await wait(task)
        except Exception as exc:
            outcome = describe(exc)
        else:
            outcome = 'connected'
        if via == 'start_tls':
            assert plain.is_closing()
        await asyncio.sleep(0.01)
    return outcome, client.events


@pytest.mark.parametrize('how', ['fin', 'rst'])
def test_server_vanishing_mid_handshake(loop, run, via, client_ctx, how):
    got = run(client_meets_vanishing_server(loop, via, how, client_ctx))
    want, contexts = run_reference(client_meets_vanishing_server, via, how, client_ctx)
    assert got == want
    assert contexts == []
    outcome, events = got
    if how == 'fin':
        assert outcome == (ConnectionResetError, '')
    else:
        assert outcome == (ConnectionResetError, '[Errno 104] Connection reset by peer')
    # ssl=: the protocol never hears of it.  start_tls: the protocol of the
    # plain connection is told of its end only when sslproto had left the
    # handshake state first (EOF: _on_handshake_complete), not on a reset.
    if via == 'ssl':
        assert events == []
    elif how == 'fin':
        assert events == ['connection_made', 'connection_lost']
    else:
        assert events == ['connection_made']


# ---------------------------------------------------------------------------
# closing: close_notify, abort
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('initiator', ['loop', 'peer', 'peer-without-close-notify'])
def test_close_notify(loop, run, via, server_ctx, client_ctx, initiator):
    async def main():
        async with loop_client_raw_server(loop, via, server_ctx, client_ctx) as (client, raw):
            tr = client.transport
            if initiator == 'loop':
                tr.write(b'last words')
                tr.close()
                assert tr.is_closing()
                assert await raw.recv() == b'last words'
                assert await raw.recv() == b''        # close_notify
                await asyncio.sleep(0.05)
                assert not client.lost.done()          # waiting for the peer's
                await raw.unwrap()
                assert await client.wait_lost() is None
                assert await drain_raw(loop, raw.sock) == b''
                assert client.events == ['connection_made', 'eof_received', 'connection_lost']
            elif initiator == 'peer':
                await raw.send(b'bye')
                await raw.unwrap()
                assert await client.wait_lost() is None
                assert client.data == b'bye'
                assert await raw.recv() == b''         # the loop's answering close_notify
                assert await drain_raw(loop, raw.sock) == b''
                assert client.events == ['connection_made', 'data_received', 'eof_received',
                                         'connection_lost']
            else:  # TCP EOF without close_notify: the same for the application
                await raw.send(b'bye')
                raw.sock.shutdown(socket.SHUT_WR)
                assert await client.wait_lost() is None
                assert client.data == b'bye'
                assert await drain_raw(loop, raw.sock) == b''
                assert client.events == ['connection_made', 'data_received', 'eof_received',
                                         'connection_lost']
    run(main())


def test_close_flushes_pending_data_first(loop, run, via, server_ctx, client_ctx):
    data = payload(4 << 20)

    async def main():
        async with tls_pair(loop, via, server_ctx, client_ctx) as pair:
            client, sproto = pair.client, pair.server_proto
            # many writes: sslproto's buffer (get_write_buffer_size) only
            # fills once the socket transport below has paused it
            for i in range(0, len(data), CHUNK):
                client.transport.write(data[i:i + CHUNK])
            assert client.transport.get_write_buffer_size() > 0
            client.transport.close()
            assert await sproto.wait_lost() is None
            assert sha256(bytes(sproto.data)) == sha256(data)
            assert sproto.events == ['connection_made', 'data_received', 'eof_received',
                                     'connection_lost']
            assert await client.wait_lost() is None
    run(main())


def test_eof_received_returning_true_is_ignored(loop, run, caplog, via, server_ctx, client_ctx):
    async def main():
        factory = Factory(Recorder, loop, keep_open=True)
        async with tls_pair(loop, via, server_ctx, client_ctx, factory=factory) as pair:
            pair.client.transport.close()
            assert await pair.server_proto.wait_lost() is None
            assert await pair.client.wait_lost() is None
    with caplog.at_level(logging.WARNING, logger='asyncio'):
        run(main())
    assert logged(caplog.records) == [
        ('WARNING', 'returning true from eof_received() has no effect when using ssl', None)]


@pytest.mark.parametrize('rst', [False, True])
def test_abort_mid_stream(loop, run, via, server_ctx, client_ctx, rst):
    # abort(): no close_notify.  The peer sees a TCP EOF (eof_received,
    # connection_lost(None)) or, with SO_LINGER 0, a reset.
    async def main():
        factory = Factory(Recorder, loop, echo=True)
        async with tls_pair(loop, via, server_ctx, client_ctx, factory=factory) as pair:
            client, sproto = pair.client, pair.server_proto
            client.transport.write(b'ping')
            assert await client.wait_bytes(4) == b'ping'
            if rst:
                set_linger_rst(client.transport.get_extra_info('socket'))
            client.transport.abort()
            assert client.transport.is_closing()
            assert await client.wait_lost() is None
            exc = await sproto.wait_lost()
            if rst:
                assert type(exc) is ConnectionResetError
                assert sproto.events == ['connection_made', 'data_received', 'connection_lost']
            else:
                assert exc is None
                assert sproto.events == ['connection_made', 'data_received', 'eof_received',
                                         'connection_lost']
            assert client.events == ['connection_made', 'data_received', 'connection_lost']
    run(main())


def test_abort_does_not_wait(loop, run, via, server_ctx, client_ctx):
    # The peer reads nothing; 16 MB are written, most of them queued.
    # abort() drops them and reports connection_lost at once; no
    # close_notify is sent.
    total = 16 << 20

    async def main():
        async with loop_client_raw_server(loop, via, server_ctx, client_ctx) as (client, raw):
            tr = client.transport
            for offset in range(0, total, CHUNK):
                tr.write(bulk_chunk(offset, CHUNK))
            assert tr.get_write_buffer_size() > 0
            t0 = loop.time()
            tr.abort()
            assert tr.is_closing()
            assert await client.wait_lost() is None
            assert loop.time() - t0 < 1.0
            assert client.events == ['connection_made', 'pause_writing', 'connection_lost']
            stream = await drain_raw(loop, raw.sock)
            raw.inc.write(stream)
            raw.inc.write_eof()
            received = 0
            with pytest.raises(ssl.SSLEOFError):   # not SSLZeroReturnError
                while True:
                    received += len(raw.obj.read(1 << 20))
            assert received < total
    run(main())


# ---------------------------------------------------------------------------
# errors after the handshake
# ---------------------------------------------------------------------------

async def bad_record_after_handshake(loop, via, server_ctx, client_ctx):
    async with loop_client_raw_server(loop, via, server_ctx, client_ctx) as (client, raw):
        await raw.send(b'fine')
        assert await client.wait_bytes(4) == b'fine'
        # an application_data record that does not decrypt
        await wait(loop.sock_sendall(raw.sock, b'\x17\x03\x03\x00\x20' + bytes(32)))
        exc = await client.wait_lost()
        tail = await drain_raw(loop, raw.sock)
    return client.events, describe(exc), tail


@pytest.mark.parametrize('debug', [False, True])
def test_bad_record_after_handshake(loop, run, caplog, via, server_ctx, client_ctx, debug):
    # An OSError (SSLError) after the handshake: connection_lost(exc), no
    # exception-handler call; in debug mode a debug log with the traceback.
    loop.set_debug(debug)
    with caplog.at_level(logging.DEBUG, logger='asyncio'):
        got = run(bad_record_after_handshake(loop, via, server_ctx, client_ctx))
        got_logs = logged(caplog.records)
        caplog.clear()
        want, contexts = run_reference(bad_record_after_handshake, via, server_ctx, client_ctx,
                                       debug=debug)
        want_logs = logged(caplog.records)
    assert got == want
    assert contexts == []
    assert got_logs == want_logs
    events, exc, tail = got
    assert events == ['connection_made', 'data_received', 'connection_lost']
    assert exc[0] is ssl.SSLError
    assert tail == b''
    if debug:
        assert ('DEBUG', 'Fatal error on SSL protocol', ssl.SSLError) in got_logs
    else:
        assert got_logs == []


@pytest.mark.parametrize('which', ['data_received', 'eof_received'])
def test_exception_in_protocol_callback(loop, run, loop_errors, via, server_ctx, client_ctx,
                                        which):
    boom = RuntimeError('boom')

    class Raiser(Recorder):
        def data_received(self, data):
            super().data_received(data)
            if which == 'data_received':
                raise boom

        def eof_received(self):
            super().eof_received()
            if which == 'eof_received':
                raise boom

    async def main():
        async with tls_pair(loop, via, server_ctx, client_ctx, client=Raiser(loop)) as pair:
            client, sproto = pair.client, pair.server_proto
            sproto.transport.write(b'x')
            if which == 'eof_received':
                assert await client.wait_bytes(1) == b'x'
                sproto.transport.close()
            assert await client.wait_lost() is boom
            assert await sproto.wait_lost() is None
            assert client.events[-1] == 'connection_lost'
            return sproto.events
    events = run(main())
    if which == 'data_received':   # the peer sees a TCP EOF
        assert events == ['connection_made', 'eof_received', 'connection_lost']
    assert len(loop_errors) == 1
    ctx = loop_errors[0]
    assert ctx['message'] == {'data_received': 'Fatal error on SSL protocol',
                              'eof_received': 'Error calling eof_received()'}[which]
    assert ctx['exception'] is boom
    assert sorted(ctx) == ['exception', 'message', 'protocol', 'transport']
    assert isinstance(ctx['protocol'], asyncio.sslproto.SSLProtocol)
    assert isinstance(ctx['transport'], asyncio.Transport)   # the socket's, not TLS's
    assert not isinstance(ctx['transport'], asyncio.sslproto._SSLProtocolTransport)


# ---------------------------------------------------------------------------
# volume: flow control both ways, BufferedProtocol
# ---------------------------------------------------------------------------

def bulk_chunk(offset, n):
    start = offset % PERIOD
    return memoryview(BULK_BLOCK)[start:start + n]


class Sender(Recorder):
    """Writes an 8-byte length and ``total`` bytes as fast as flow control
    lets it (nothing while paused); records each pause/resume with the
    write buffer size at that moment."""

    def start(self, total, high, low):
        self.total = total
        self.sent = 0
        self.digest = hashlib.sha256()
        self.paused = False
        self.flow = []
        self.transport.set_write_buffer_limits(high=high, low=low)
        assert self.transport.get_write_buffer_limits() == (low, high)
        self.transport.write(struct.pack('!Q', total))
        self.fill()

    def fill(self):
        while not self.paused and self.sent < self.total:
            n = min(CHUNK, self.total - self.sent)
            chunk = bulk_chunk(self.sent, n)
            self.digest.update(chunk)
            self.sent += n
            self.transport.write(chunk)

    def pause_writing(self):
        super().pause_writing()
        self.flow.append(('pause', self.transport.get_write_buffer_size()))
        self.paused = True

    def resume_writing(self):
        super().resume_writing()
        self.flow.append(('resume', self.transport.get_write_buffer_size()))
        self.paused = False
        self.fill()


class Receiver(Recorder):
    """Hashes what arrives (after the 8-byte length), pausing reading for
    5 ms every ``PAUSE_EVERY`` bytes; answers with digest and count."""

    PAUSE_EVERY = 4 << 20

    def __init__(self, loop):
        super().__init__(loop)
        self.header = b''
        self.total = None
        self.got = 0
        self.digest = hashlib.sha256()
        self.read_pauses = 0
        self.data_while_paused = 0
        self.next_pause = self.PAUSE_EVERY

    def data_received(self, data):
        self._event('data_received')
        tr = self.transport
        if not tr.is_reading():
            self.data_while_paused += 1
        if self.total is None:
            self.header += data
            if len(self.header) < 8:
                return
            self.total, = struct.unpack('!Q', self.header[:8])
            data = self.header[8:]
        self.got += len(data)
        self.digest.update(data)
        if self.got >= self.total:
            tr.write(self.digest.digest() + struct.pack('!Q', self.got))
        elif self.got >= self.next_pause:
            self.next_pause += self.PAUSE_EVERY
            tr.pause_reading()
            assert not tr.is_reading()
            self.read_pauses += 1
            self.loop.call_later(0.005, tr.resume_reading)


def test_bulk_transfer_under_backpressure(loop, run, via, server_ctx, client_ctx):
    high, low = 256 * 1024, 64 * 1024

    async def main():
        async with tls_pair(loop, via, server_ctx, client_ctx, client=Sender(loop),
                            factory=Factory(Receiver, loop)) as pair:
            sender, receiver = pair.client, pair.server_proto
            sender.start(BULK_SIZE, high, low)
            answer = await sender.wait_bytes(40, timeout=BULK_TIMEOUT)
            assert sender.sent == BULK_SIZE
            assert answer[32:] == struct.pack('!Q', BULK_SIZE)
            assert answer[:32] == sender.digest.digest()
            assert receiver.data_while_paused == 0
            assert receiver.read_pauses >= BULK_SIZE // Receiver.PAUSE_EVERY - 1
            # pause and resume alternate; pause at/above high, resume at/below low
            kinds = [kind for kind, _ in sender.flow]
            assert len(kinds) >= 2
            assert kinds == ['pause', 'resume'] * (len(kinds) // 2) + ['pause'] * (len(kinds) % 2)
            assert all(size >= high for kind, size in sender.flow if kind == 'pause')
            assert all(size <= low for kind, size in sender.flow if kind == 'resume')
            sender.transport.close()
            assert await sender.wait_lost() is None
            assert await receiver.wait_lost() is None
    run(main())


class BufRecorder(Recorder, asyncio.BufferedProtocol):
    """A Recorder receiving through get_buffer/buffer_updated, into a
    1000-byte buffer.

    The buffer is handed out as a memoryview: 3.11's
    ``SSLProtocol._do_read__buffered`` fills ``buf[offset:]`` after its
    first read, which for a bytearray is a copy (the data is lost)."""

    def __init__(self, loop, size=1000):
        super().__init__(loop)
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.hints = []

    def get_buffer(self, sizehint):
        self.hints.append(sizehint)
        return self.view

    def buffer_updated(self, nbytes):
        assert 0 < nbytes <= len(self.buf)
        self._event('data_received')
        self.data += self.buf[:nbytes]
        self._wake()


@pytest.mark.parametrize('receiver', ['client', 'server'])
def test_buffered_protocol_over_tls(loop, run, via, server_ctx, client_ctx, receiver):
    data = payload((1 << 20) + 3)

    async def main():
        if receiver == 'client':
            kw = {'client': BufRecorder(loop)}
        else:
            kw = {'factory': Factory(BufRecorder, loop)}
        async with tls_pair(loop, via, server_ctx, client_ctx, **kw) as pair:
            if receiver == 'client':
                sender, bufproto = pair.server_proto, pair.client
            else:
                sender, bufproto = pair.client, pair.server_proto
            for i in range(0, len(data), 100_000):
                sender.transport.write(data[i:i + 100_000])
            sender.transport.close()
            assert await bufproto.wait_lost() is None
            assert sha256(bytes(bufproto.data)) == sha256(data)
            assert bufproto.events == ['connection_made', 'data_received', 'eof_received',
                                       'connection_lost']
            assert len(bufproto.hints) >= len(data) // 1000
            assert all(isinstance(h, int) and h >= 0 for h in bufproto.hints)
            assert await sender.wait_lost() is None
    run(main())
