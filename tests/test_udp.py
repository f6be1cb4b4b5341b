"""Datagram endpoints: loop.create_datagram_endpoint and its transports.

Expected behaviour: CPython 3.11 asyncio --
``base_events.BaseEventLoop.create_datagram_endpoint`` (argument checks,
address resolution, ``reuse_port``/``allow_broadcast``, ``sock=``; no
``reuse_address`` parameter at all since 3.11) and
``selector_events._SelectorDatagramTransport`` (one ``recvfrom`` per ready
event; ``sendto``: bytes-like check, empty data ignored, connected
transports refuse another address, an ``OSError`` of a send or a read goes
to ``protocol.error_received``, any other exception of a send is a fatal
error -- exception handler, then ``connection_lost(exc)`` --, a send that
would block queues the datagram with flow control; after ``close()`` a
connected transport counts the sends and logs a warning from the 5th on).

ferroloop's AF_INET/AF_INET6 transport (``python/ferroloop/_datagram.py``)
is that class with a native data path
(``crates/ferroloop-python/src/io/datagram.rs``): reads are batched (up to
32 datagrams per ready event, edge-triggered watch), the sender's address
tuple is cached for consecutive datagrams of one sender, and ``sendto`` has
a native fast path for IP-literal tuples (destination cache keyed on the
address object) that falls back to asyncio's ``sendto`` for everything
else.  The tests below aim at exactly those places: bursts larger than a
batch, interleaved senders (same port on different hosts too), alternating
destinations, every rejected-address shape, exceptions and
``close``/``pause_reading`` inside ``datagram_received``.  AF_UNIX datagram
sockets get asyncio's own transport on ferroloop (the loop's fd watching is
still ferroloop's).

Kernel facts the tests rely on (Linux):

* UDP over loopback never returns EAGAIN, however small SO_SNDBUF is: the
  loopback device orphans the skb (gives its memory back to the sender)
  as it hands it to the receiver, and a full receive buffer *drops* the
  datagram instead.  So the UDP flood test asserts that nothing is ever
  queued in the transport (on asyncio as on ferroloop) and gives the
  receiver a receive buffer that holds the whole flood; the queue /
  pause_writing / resume_writing path is exercised with AF_UNIX datagram
  sockets, whose sender *is* refused (EAGAIN) while the receiver's queue
  is full or its SO_SNDBUF is used up.
* A connected UDP socket gets ECONNREFUSED (ICMP port unreachable, not
  rate-limited on loopback) after sending to a port nobody listens on.

Object lifetimes as in asyncio: the loop keeps a reading transport alive
(the reader Handle holds its bound ``_read_ready``), so an endpoint whose
``create_datagram_endpoint`` result was dropped keeps serving; and a bound
``transport.sendto`` keeps its transport alive.

``isinstance(transport, asyncio.DatagramTransport)`` is False for 3.11's
``_SelectorDatagramTransport`` (it derives from ``_SelectorTransport``
only); ferroloop's native transport is one, so that is checked on the
ferroloop params only.

Every wait is bounded (io_helpers.TIMEOUT); every socket is closed; the
``loop`` fixture fails a test on a leaked fd or an unexpected
exception-handler call.
"""

import array
import asyncio
import contextlib
import contextvars
import errno
import gc
import logging
import os
import socket
import time
import warnings
import weakref

import pytest
from io_helpers import TIMEOUT, has_ipv6_loopback, short_tmpdir

needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason='no IPv6 loopback')

# asyncio.constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES in 3.11.
CONNLOST_WARN_THRESHOLD = 5


def wait(aw, timeout=TIMEOUT):
    return asyncio.wait_for(aw, timeout)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

class DgramProto(asyncio.DatagramProtocol):
    """Records every callback.

    ``datagrams`` is the list of ``(data, addr)``; ``errors`` the
    exceptions passed to ``error_received``; ``events`` the callback names
    in order (datagrams and errors as ``'dgram'``/``'error'``);
    ``lost_calls`` the arguments of every ``connection_lost``.  ``echo``
    sends each datagram back to its sender; ``hook(proto, data, addr)`` runs
    after the datagram was recorded (and may raise).
    """

    def __init__(self, loop, *, echo=False, hook=None):
        self.loop = loop
        self.echo = echo
        self.hook = hook
        self.transport = None
        self.datagrams = []
        self.errors = []
        self.events = []
        self.lost_calls = []
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self._waiters = []

    def connection_made(self, transport):
        self.events.append('made')
        self.transport = transport
        self.made.set_result(transport)

    def datagram_received(self, data, addr):
        self.events.append('dgram')
        self.datagrams.append((data, addr))
        self._wake()
        if self.echo:
            self.transport.sendto(data, addr)
        if self.hook is not None:
            self.hook(self, data, addr)

    def error_received(self, exc):
        self.events.append('error')
        self.errors.append(exc)
        self._wake()

    def connection_lost(self, exc):
        self.events.append('lost')
        self.lost_calls.append(exc)
        if not self.lost.done():
            self.lost.set_result(exc)
        self._wake()

    def pause_writing(self):
        self.events.append('pause_writing')

    def resume_writing(self):
        self.events.append('resume_writing')

    @property
    def data(self):
        return [d for d, _ in self.datagrams]

    def _wake(self):
        for pred, fut in self._waiters[:]:
            if fut.done() or pred():
                self._waiters.remove((pred, fut))
                if not fut.done():
                    fut.set_result(None)

    async def until(self, pred, timeout=TIMEOUT, what='condition'):
        if pred():
            return
        fut = self.loop.create_future()
        self._waiters.append((pred, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise AssertionError(
                f'timed out waiting for {what}: {len(self.datagrams)} datagrams, '
                f'errors {self.errors!r}, events tail {self.events[-5:]!r}') from None

    async def wait_datagrams(self, n, timeout=TIMEOUT):
        await self.until(lambda: len(self.datagrams) >= n, timeout, f'{n} datagrams')
        return self.datagrams

    async def wait_errors(self, n=1, timeout=TIMEOUT):
        await self.until(lambda: len(self.errors) >= n, timeout, f'{n} errors')
        return self.errors

    async def wait_lost(self, timeout=TIMEOUT):
        return await asyncio.wait_for(asyncio.shield(self.lost), timeout)


@contextlib.asynccontextmanager
async def endpoint(loop, factory=None, **kw):
    """create_datagram_endpoint; on exit close the transport and wait for
    connection_lost."""
    if factory is None:
        def factory():
            return DgramProto(loop)
    tr, proto = await wait(loop.create_datagram_endpoint(factory, **kw))
    try:
        yield tr, proto
    finally:
        if not tr.is_closing():
            tr.close()
        await proto.wait_lost()


@contextlib.contextmanager
def plain_socket(host='127.0.0.1', *, family=None, rcvbuf=None, sndbuf=None, bind=True):
    """A plain non-blocking datagram socket bound to ``(host, 0)``."""
    if family is None:
        family = socket.AF_INET6 if ':' in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if rcvbuf is not None:
            grow_rcvbuf(sock, rcvbuf)
        if sndbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        if bind:
            sock.bind((host, 0))
        sock.setblocking(False)
        yield sock
    finally:
        sock.close()


def grow_rcvbuf(sock, size):
    """Set SO_RCVBUF to ``size`` (past rmem_max when allowed); return what
    the kernel reports."""
    force = getattr(socket, 'SO_RCVBUFFORCE', None)
    try:
        if force is None:
            raise PermissionError
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def require_rcvbuf(sock, count):
    # A small datagram costs ~900 bytes of receive buffer on loopback
    # (skb truesize); the kernel reports twice the requested size.
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < count * 2048:
        pytest.skip(f'cannot get a receive buffer for {count} datagrams (rmem_max)')


async def recv_datagrams(sock, n, timeout=TIMEOUT, size=70000):
    """``n`` datagrams ``(data, addr)`` from the plain non-blocking ``sock``,
    letting the loop run between tries."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        try:
            out.append(sock.recvfrom(size))
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f'only {len(out)} of {n} datagrams arrived: {out[-3:]!r}') from None
            await asyncio.sleep(0.001)
    return out


def drain(sock, size=70000):
    """Every datagram queued on the plain non-blocking ``sock`` right now."""
    out = []
    while True:
        try:
            out.append(sock.recvfrom(size))
        except BlockingIOError:
            return out


async def settle(n=5, delay=0.005):
    """Let the loop run a few iterations (for "nothing more happens")."""
    for _ in range(n):
        await asyncio.sleep(delay)


def stdlib_sendto_error(family, data, addr):
    """The exception a plain socket's sendto raises for ``addr`` (or None)."""
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        try:
            s.sendto(data, addr)
        except BaseException as exc:  # noqa: BLE001 -- any type is the answer
            return exc
    return None


def same_exc(a, b):
    return type(a) is type(b) and str(a) == str(b) and a.args == b.args


@pytest.fixture
def sock_dir(tmp_path):
    with short_tmpdir(tmp_path) as d:
        yield d


# ---------------------------------------------------------------------------
# create_datagram_endpoint: addresses, families, options
# ---------------------------------------------------------------------------

def test_local_addr_echo_round_trip(loop, run):
    async def main():
        async with endpoint(loop, lambda: DgramProto(loop, echo=True),
                            local_addr=('127.0.0.1', 0)) as (tr, proto):
            assert proto.events == ['made']
            assert proto.transport is tr
            server_addr = tr.get_extra_info('sockname')
            assert server_addr[0] == '127.0.0.1' and server_addr[1] > 0
            assert tr.get_extra_info('peername') is None
            with plain_socket() as client:
                client.sendto(b'ping', server_addr)
                client.sendto(b'pong', server_addr)
                got = await recv_datagrams(client, 2)
                assert got == [(b'ping', server_addr), (b'pong', server_addr)]
                assert proto.datagrams == [(b'ping', client.getsockname()),
                                           (b'pong', client.getsockname())]
            addr = proto.datagrams[0][1]
            assert type(addr) is tuple and type(addr[0]) is str and type(addr[1]) is int
            assert all(type(d) is bytes for d in proto.data)
            assert proto.errors == []
        assert proto.lost_calls == [None]
    run(main())


def test_remote_addr_connects(loop, run):
    async def main():
        with plain_socket() as peer:
            async with endpoint(loop, remote_addr=peer.getsockname()) as (tr, proto):
                sockname = tr.get_extra_info('sockname')
                assert tr.get_extra_info('peername') == peer.getsockname()
                assert sockname[0] == '127.0.0.1' and sockname[1] != 0
                tr.sendto(b'one')
                tr.sendto(b'two', peer.getsockname())  # the peer's own address is fine
                tr.sendto(b'three', None)
                got = await recv_datagrams(peer, 3)
                assert got == [(b'one', sockname), (b'two', sockname), (b'three', sockname)]
                peer.sendto(b'back', sockname)
                await proto.wait_datagrams(1)
                assert proto.datagrams == [(b'back', peer.getsockname())]
    run(main())


def test_local_and_remote_addr(loop, run):
    async def main():
        with plain_socket() as peer, plain_socket() as placeholder:
            # A port known to be free for the local side: take one, release it.
            local = placeholder.getsockname()
            placeholder.close()
            async with endpoint(loop, local_addr=local,
                                remote_addr=peer.getsockname()) as (tr, proto):
                assert tr.get_extra_info('sockname') == local
                assert tr.get_extra_info('peername') == peer.getsockname()
                tr.sendto(b'x')
                assert await recv_datagrams(peer, 1) == [(b'x', local)]
    run(main())


def test_remote_host_name_is_resolved(loop, run):
    async def main():
        with plain_socket() as peer:
            port = peer.getsockname()[1]
            async with endpoint(loop, remote_addr=('localhost', port),
                                family=socket.AF_INET) as (tr, proto):
                assert tr.get_extra_info('peername') == ('127.0.0.1', port)
                tr.sendto(b'named')
                (data, _), = await recv_datagrams(peer, 1)
                assert data == b'named'
                # A connected transport compares addresses as given: the
                # host name is not its peer address.
                with pytest.raises(ValueError) as ei:
                    tr.sendto(b'named', ('localhost', port))
                assert str(ei.value) == f"Invalid address: must be None or ('127.0.0.1', {port})"
    run(main())


def test_family_only_unbound_socket(loop, run):
    async def main():
        with plain_socket() as peer:
            async with endpoint(loop, family=socket.AF_INET) as (tr, proto):
                sock = tr.get_extra_info('socket')
                assert sock.family == socket.AF_INET
                assert sock.type == socket.SOCK_DGRAM
                assert tr.get_extra_info('sockname') == ('0.0.0.0', 0)
                # The first send binds the socket; the reply finds it.
                tr.sendto(b'hello', peer.getsockname())
                (data, addr), = await recv_datagrams(peer, 1)
                assert data == b'hello'
                # Bound to the wildcard address by the send.
                assert sock.getsockname() == ('0.0.0.0', addr[1])
                assert addr[1] != 0
                peer.sendto(b'reply', addr)
                await proto.wait_datagrams(1)
                assert proto.datagrams == [(b'reply', peer.getsockname())]
    run(main())


def test_local_addr_host_name_with_family(loop, run):
    async def main():
        async with endpoint(loop, local_addr=('localhost', 0),
                            family=socket.AF_INET) as (tr, proto):
            assert tr.get_extra_info('socket').family == socket.AF_INET
            assert tr.get_extra_info('sockname')[0] == '127.0.0.1'
    run(main())


def test_argument_errors(loop, run):
    async def main():
        with pytest.raises(ValueError) as ei:
            await loop.create_datagram_endpoint(asyncio.DatagramProtocol)
        assert str(ei.value) == 'unexpected address family'
        with pytest.raises(TypeError) as ei:
            await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                local_addr='127.0.0.1')
        assert str(ei.value) == '2-tuple is expected'
        with pytest.raises(TypeError) as ei:
            await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                remote_addr=('127.0.0.1', 1, 0))
        assert str(ei.value) == '2-tuple is expected'
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stream:
            with pytest.raises(ValueError) as ei:
                await loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=stream)
            assert str(ei.value) == f'A UDP Socket was expected, got {stream!r}'
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dgram:
            with pytest.raises(ValueError) as ei:
                await loop.create_datagram_endpoint(
                    asyncio.DatagramProtocol, sock=dgram,
                    local_addr=('127.0.0.1', 0), reuse_port=True)
            assert str(ei.value) == (
                'socket modifier keyword arguments can not be used when sock is '
                "specified. (local_addr=('127.0.0.1', 0), reuse_port=True)")
        with pytest.raises(TypeError) as ei:
            await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=('127.0.0.1', 0),
                family=socket.AF_UNIX)
        assert str(ei.value) == 'string is expected'
    run(main())


@pytest.mark.parametrize('value', [True, False, None])
def test_reuse_address_rejected_as_311(loop, value):
    # 3.11 removed the parameter: any value is an unexpected keyword.
    def attempt(lp):
        with pytest.raises(Exception) as ei:
            coro = lp.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=('127.0.0.1', 0),
                reuse_address=value)
            # (Were it a coroutine, running it must raise.)
            lp.run_until_complete(coro)
        return ei.value

    ref_loop = asyncio.SelectorEventLoop()
    try:
        expected = attempt(ref_loop)
    finally:
        ref_loop.close()
    got = attempt(loop)
    assert type(expected) is TypeError
    assert "unexpected keyword argument 'reuse_address'" in str(expected)
    assert type(got) is type(expected)
    assert str(got) == str(expected)


def test_reuse_port(loop, run):
    if not hasattr(socket, 'SO_REUSEPORT'):
        pytest.skip('no SO_REUSEPORT')

    async def main():
        async with endpoint(loop, local_addr=('127.0.0.1', 0), reuse_port=True) as (t1, _):
            s1 = t1.get_extra_info('socket')
            assert s1.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
            addr = t1.get_extra_info('sockname')
            # A second endpoint may bind the very same address.
            async with endpoint(loop, local_addr=addr, reuse_port=True) as (t2, _):
                assert t2.get_extra_info('sockname') == addr
            # Without the option it may not.
            with pytest.raises(OSError) as ei:
                await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=addr)
            assert ei.value.errno == errno.EADDRINUSE
    run(main())


def test_allow_broadcast(loop, run):
    async def main():
        with plain_socket() as peer:
            target = peer.getsockname()
            async with endpoint(loop, local_addr=('127.0.0.1', 0), remote_addr=target,
                                allow_broadcast=True) as (tr, proto):
                sock = tr.get_extra_info('socket')
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) != 0
                # allow_broadcast skips connect(): no peer name, but the
                # remote address is still the transport's only destination.
                assert tr.get_extra_info('peername') is None
                tr.sendto(b'to remote')
                tr.sendto(b'again', target)
                got = await recv_datagrams(peer, 2)
                assert [d for d, _ in got] == [b'to remote', b'again']
                with pytest.raises(ValueError) as ei:
                    tr.sendto(b'elsewhere', ('127.0.0.1', 9))
                assert str(ei.value) == f'Invalid address: must be None or {target}'
                # Not connected: anyone may send to it.
                with plain_socket() as other:
                    other.sendto(b'from other', tr.get_extra_info('sockname'))
                    await proto.wait_datagrams(1)
                    assert proto.datagrams == [(b'from other', other.getsockname())]
    run(main())


def test_sock_argument(loop, run):
    async def main():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(('127.0.0.1', 0))
        assert sock.getblocking()
        addr = sock.getsockname()
        async with endpoint(loop, lambda: DgramProto(loop, echo=True), sock=sock) as (tr, proto):
            assert not sock.getblocking()  # made non-blocking
            assert tr.get_extra_info('sockname') == addr
            assert tr.get_extra_info('peername') is None
            assert tr.get_extra_info('socket').fileno() == sock.fileno()
            with plain_socket() as client:
                client.sendto(b'via sock=', addr)
                assert await recv_datagrams(client, 1) == [(b'via sock=', addr)]
        # Closing the transport closed the socket.
        assert sock.fileno() == -1
    run(main())


def test_connected_sock_argument(loop, run):
    async def main():
        with plain_socket() as peer:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(('127.0.0.1', 0))
            sock.connect(peer.getsockname())
            async with endpoint(loop, sock=sock) as (tr, proto):
                assert tr.get_extra_info('peername') == peer.getsockname()
                tr.sendto(b'connected')
                assert await recv_datagrams(peer, 1) == [(b'connected', sock.getsockname())]
                # sock= gives the transport no address to compare with: it
                # sees the socket is connected (peername) and uses send(),
                # so the address is ignored.
                tr.sendto(b'addr ignored', ('127.0.0.1', 9))
                assert await recv_datagrams(peer, 1) == [(b'addr ignored', sock.getsockname())]
    run(main())


# ---------------------------------------------------------------------------
# IPv6
# ---------------------------------------------------------------------------

@needs_ipv6
def test_ipv6_echo_four_tuples(loop, run):
    async def main():
        async with endpoint(loop, lambda: DgramProto(loop, echo=True),
                            local_addr=('::1', 0)) as (tr, proto):
            assert tr.get_extra_info('socket').family == socket.AF_INET6
            server_addr = tr.get_extra_info('sockname')
            assert len(server_addr) == 4 and server_addr[0] == '::1'
            with plain_socket('::1') as client:
                client.sendto(b'six', server_addr)
                client.sendto(b'two-tuple', server_addr[:2])
                got = await recv_datagrams(client, 2)
                assert got == [(b'six', server_addr), (b'two-tuple', server_addr)]
                caddr = client.getsockname()
                assert len(caddr) == 4
                assert proto.datagrams == [(b'six', caddr), (b'two-tuple', caddr)]
                addr = proto.datagrams[0][1]
                assert type(addr) is tuple and [type(x) for x in addr] == [str, int, int, int]
                # Sending from the transport to 2-, 3- and 4-tuples.
                tr.sendto(b'a', caddr[:2])
                tr.sendto(b'b', caddr[:3])
                tr.sendto(b'c', caddr)
                got = await recv_datagrams(client, 3)
                assert got == [(b'a', server_addr), (b'b', server_addr), (b'c', server_addr)]
    run(main())


@needs_ipv6
def test_ipv6_family_with_remote(loop, run):
    async def main():
        with plain_socket('::1') as peer:
            async with endpoint(loop, remote_addr=('::1', peer.getsockname()[1]),
                                family=socket.AF_INET6) as (tr, proto):
                assert tr.get_extra_info('peername') == peer.getsockname()
                tr.sendto(b'v6')
                (data, addr), = await recv_datagrams(peer, 1)
                assert data == b'v6'
                assert addr == tr.get_extra_info('sockname')
                peer.sendto(b'v6 back', addr)
                await proto.wait_datagrams(1)
                assert proto.datagrams == [(b'v6 back', peer.getsockname())]
    run(main())


@needs_ipv6
def test_ipv6_dual_stack_mapped_sender_address(loop, run):
    async def main():
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(('::', 0))
        except OSError as exc:
            sock.close()
            pytest.skip(f'no dual-stack socket: {exc}')
        port = sock.getsockname()[1]
        async with endpoint(loop, lambda: DgramProto(loop, echo=True), sock=sock) as (tr, proto):
            with plain_socket() as client:  # IPv4
                client.sendto(b'mapped', ('127.0.0.1', port))
                await proto.wait_datagrams(1)
                cport = client.getsockname()[1]
                assert proto.datagrams == [(b'mapped', ('::ffff:127.0.0.1', cport, 0, 0))]
                # The echo (to the mapped address) reaches the IPv4 client.
                (data, addr), = await recv_datagrams(client, 1)
                assert data == b'mapped'
                assert addr == ('127.0.0.1', port)
    run(main())


@needs_ipv6
@pytest.mark.parametrize('addr', [
    pytest.param(('127.0.0.1', 9), id='ipv4-literal'),
    pytest.param(('::1', 9, 1 << 20), id='flowinfo-overflow'),
    pytest.param(('::1', 70000), id='port-overflow'),
    pytest.param(('::1', 9, 0, 0, 0), id='five-tuple'),
])
def test_ipv6_bad_destination_as_asyncio(loop, loop_errors, run, addr):
    expected = stdlib_sendto_error(socket.AF_INET6, b'x', addr)
    assert expected is not None

    async def main():
        async with endpoint(loop, local_addr=('::1', 0)) as (tr, proto):
            tr.sendto(b'x', addr)
            await check_send_failure(loop, loop_errors, tr, proto, expected)
    run(main())


# ---------------------------------------------------------------------------
# AF_UNIX datagram sockets
# ---------------------------------------------------------------------------

def test_unix_datagram_echo(loop, run, sock_dir):
    spath = str(sock_dir / 's.sock')
    cpath = str(sock_dir / 'c.sock')

    async def main():
        async with endpoint(loop, lambda: DgramProto(loop, echo=True),
                            family=socket.AF_UNIX, local_addr=spath) as (server, sproto):
            assert server.get_extra_info('sockname') == spath
            assert server.get_extra_info('socket').family == socket.AF_UNIX
            async with endpoint(loop, family=socket.AF_UNIX, local_addr=cpath,
                                remote_addr=spath) as (client, cproto):
                assert client.get_extra_info('sockname') == cpath
                assert client.get_extra_info('peername') == spath
                for i in range(5):
                    client.sendto(b'unix %d' % i)
                await cproto.wait_datagrams(5)
                assert sproto.datagrams == [(b'unix %d' % i, cpath) for i in range(5)]
                assert cproto.datagrams == [(b'unix %d' % i, spath) for i in range(5)]
                with pytest.raises(ValueError) as ei:
                    client.sendto(b'x', cpath)
                assert str(ei.value) == f'Invalid address: must be None or {spath}'
            # A plain socket: bound, then unbound (the address the socket
            # module reports for an unbound sender).
            ppath = str(sock_dir / 'p.sock')
            with plain_socket(family=socket.AF_UNIX, bind=False) as plain:
                plain.bind(ppath)
                plain.sendto(b'plain', spath)
                assert await recv_datagrams(plain, 1) == [(b'plain', spath)]
                assert sproto.datagrams[-1] == (b'plain', plain.getsockname())
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ref_rx, \
                    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as anon:
                ref_rx.bind(str(sock_dir / 'r.sock'))
                anon.sendto(b'ref', str(sock_dir / 'r.sock'))
                ref_addr = ref_rx.recvfrom(10)[1]
            sproto.echo = False  # an unbound sender cannot be answered
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as anon:
                anon.sendto(b'anon', spath)
                await sproto.wait_datagrams(7)
                assert sproto.datagrams[-1] == (b'anon', ref_addr)
    run(main())


def test_unix_datagram_flow_control(loop, run, sock_dir):
    # AF_UNIX: the sender *is* refused (EAGAIN) while the receiver does not
    # read, so sendto queues, the buffer grows, pause_writing/resume_writing
    # follow the limits, and every datagram arrives in order.
    rpath = str(sock_dir / 'r.sock')
    n = 2000
    size = 64

    async def main():
        with plain_socket(family=socket.AF_UNIX, bind=False) as receiver:
            receiver.bind(rpath)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
            sock.connect(rpath)
            async with endpoint(loop, sock=sock) as (tr, proto):
                tr.set_write_buffer_limits(high=20 * size, low=5 * size)
                assert tr.get_write_buffer_limits() == (5 * size, 20 * size)
                sizes = []
                for i in range(n):
                    tr.sendto(b'%08d' % i + b'.' * (size - 8))
                    sizes.append(tr.get_write_buffer_size())
                assert max(sizes) > 0, 'the kernel never refused a datagram'
                first_queued = next(i for i, s in enumerate(sizes) if s)
                # From the first refusal on, every datagram is queued (asyncio
                # sends in order): the buffer grows by one datagram per call.
                assert sizes[first_queued:] == [size * (k + 1) for k in range(n - first_queued)]
                assert proto.events[:2] == ['made', 'pause_writing']
                got = await recv_datagrams(receiver, n)
                assert [d[:8] for d, _ in got] == [b'%08d' % i for i in range(n)]
                assert all(len(d) == size for d, _ in got)
                await proto.until(lambda: tr.get_write_buffer_size() == 0, what='empty buffer')
                await settle(2)
                flow = [e for e in proto.events if e.endswith('_writing')]
                assert flow == ['pause_writing', 'resume_writing']
                assert drain(receiver) == []
                assert proto.errors == []
                # Working afterwards.
                tr.sendto(b'after')
                assert [d for d, _ in await recv_datagrams(receiver, 1)] == [b'after']
    run(main())


def test_unix_datagram_abort_discards_queue(loop, run, sock_dir):
    rpath = str(sock_dir / 'r.sock')

    async def main():
        with plain_socket(family=socket.AF_UNIX, bind=False) as receiver:
            receiver.bind(rpath)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
            sock.connect(rpath)
            async with endpoint(loop, sock=sock) as (tr, proto):
                for i in range(100):
                    tr.sendto(b'%03d' % i)
                assert tr.get_write_buffer_size() > 0
                accepted = len(drain(receiver))
                assert 0 < accepted < 100
                tr.abort()
                assert tr.is_closing()
                assert await proto.wait_lost() is None
                await settle(2)
                assert drain(receiver) == []
            assert proto.lost_calls == [None]
    run(main())


# ---------------------------------------------------------------------------
# sendto: checks, messages, data types, addresses
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('data', [
    pytest.param('text', id='str'),
    pytest.param(42, id='int'),
    pytest.param(None, id='None'),
    pytest.param([1, 2], id='list'),
    pytest.param(array.array('b', b'xy'), id='array'),
])
def test_sendto_non_bytes_type_error(loop, run, data):
    async def main():
        with plain_socket() as peer:
            async with endpoint(loop, local_addr=('127.0.0.1', 0)) as (tr, proto):
                with pytest.raises(TypeError) as ei:
                    tr.sendto(data, peer.getsockname())
                assert str(ei.value) == (
                    f'data argument must be a bytes-like object, not {type(data).__name__!r}')
            # Also connected, and without an address.
            async with endpoint(loop, remote_addr=peer.getsockname()) as (tr, proto):
                with pytest.raises(TypeError) as ei:
                    tr.sendto(data)
                assert str(ei.value) == (
                    f'data argument must be a bytes-like object, not {type(data).__name__!r}')
                tr.sendto(b'still fine')
                assert [d for d, _ in await recv_datagrams(peer, 1)] == [b'still fine']
    run(main())


def test_sendto_connected_other_address_value_error(loop, run):
    async def main():
        with plain_socket() as peer, plain_socket() as other:
            target = peer.getsockname()
            async with endpoint(loop, remote_addr=target) as (tr, proto):
                other_port = ('127.0.0.1', target[1] % 65535 + 1)
                for bad in (other.getsockname(), other_port, 'not a tuple', (target[0],),
                            list(target)):
                    with pytest.raises(ValueError) as ei:
                        tr.sendto(b'x', bad)
                    assert str(ei.value) == f'Invalid address: must be None or {target}'
                # Equal, not identical, tuples are the peer.
                tr.sendto(b'equal', (str(target[0]), int(target[1])))
                tr.sendto(b'kw', addr=target)
                got = await recv_datagrams(peer, 2)
                assert [d for d, _ in got] == [b'equal', b'kw']
                assert drain(other) == []
    run(main())


def test_sendto_empty_data_is_ignored(loop, run):
    # 3.11: ``if not data: return`` -- nothing is sent.
    async def main():
        with plain_socket() as peer:
            async with endpoint(loop, local_addr=('127.0.0.1', 0)) as (tr, proto):
                for empty in (b'', bytearray(), memoryview(b'')):
                    tr.sendto(empty, peer.getsockname())
                tr.sendto(b'marker', peer.getsockname())
                assert tr.get_write_buffer_size() == 0
                assert [d for d, _ in await recv_datagrams(peer, 1)] == [b'marker']
            async with endpoint(loop, remote_addr=peer.getsockname()) as (tr, proto):
                tr.sendto(b'')
                tr.sendto(b'marker2')
                assert [d for d, _ in await recv_datagrams(peer, 1)] == [b'marker2']
                await settle(2)
                assert drain(peer) == []
    run(main())


def test_sendto_bytes_like_data(loop, run):
    class Bytes(bytes):
        pass

    async def main():
        with plain_socket() as peer:
            target = peer.getsockname()
            async with endpoint(loop, local_addr=('127.0.0.1', 0)) as (tr, proto):
                ba = bytearray(b'bytearray')
                tr.sendto(ba, target)
                ba[:] = b'CHANGED!!'  # sent already: the change is not seen
                tr.sendto(memoryview(b'..memoryview..')[2:-2], target)
                tr.sendto(memoryview(array.array('i', [1, 2])), target)
                tr.sendto(Bytes(b'subclass'), target)
                got = await recv_datagrams(peer, 4)
                assert [d for d, _ in got] == [
                    b'bytearray', b'memoryview', array.array('i', [1, 2]).tobytes(), b'subclass']
            async with endpoint(loop, remote_addr=target) as (tr, proto):
                tr.sendto(bytearray(b'conn ba'))
                tr.sendto(memoryview(b'conn mv'))
                got = await recv_datagrams(peer, 2)
                assert [d for d, _ in got] == [b'conn ba', b'conn mv']
    run(main())


def test_sendto_host_name_address(loop, run):
    async def main():
        with plain_socket() as peer:
            port = peer.getsockname()[1]
            async with endpoint(loop, local_addr=('127.0.0.1', 0)) as (tr, proto):
                tr.sendto(b'by name', ('localhost', port))
                tr.sendto(b'literal', ('127.0.0.1', port))
                tr.sendto(b'by name again', ('localhost', port))
                # The socket module also takes the host as bytes.
                tr.sendto(b'bytes host', (b'127.0.0.1', port))
                tr.sendto(b'keyword', addr=('127.0.0.1', port))
                # '' is INADDR_ANY for the socket module: Linux delivers it locally.
                tr.sendto(b'any', ('', port))
                got = await recv_datagrams(peer, 6)
                assert [d for d, _ in got] == [
                    b'by name', b'literal', b'by name again', b'bytes host', b'keyword', b'any']
                assert {a for _, a in got} == {tr.get_extra_info('sockname')}
                assert proto.errors == []
    run(main())


async def check_send_failure(loop, loop_errors, tr, proto, expected):
    """After a sendto whose address the socket module refuses with
    ``expected``: an OSError goes to error_received (the transport stays
    open), anything else is asyncio's fatal write error."""
    if isinstance(expected, OSError):
        await proto.wait_errors(1)
        assert len(proto.errors) == 1
        assert same_exc(proto.errors[0], expected), (proto.errors[0], expected)
        assert not tr.is_closing()
        assert loop_errors == []
        return
    await proto.wait_lost()
    assert len(proto.lost_calls) == 1
    exc = proto.lost_calls[0]
    assert same_exc(exc, expected), (exc, expected)
    assert proto.errors == []
    assert len(loop_errors) == 1
    ctx = loop_errors[0]
    assert ctx['message'] == 'Fatal write error on datagram transport'
    assert ctx['exception'] is exc
    assert ctx['transport'] is tr
    assert ctx['protocol'] is proto


@pytest.mark.parametrize('addr', [
    pytest.param('127.0.0.1', id='str'),
    pytest.param(None, id='None'),
    pytest.param(['127.0.0.1', 9], id='list'),
    pytest.param(('127.0.0.1',), id='one-tuple'),
    pytest.param(('127.0.0.1', 9, 0), id='three-tuple'),
    pytest.param(('127.0.0.1', 70000), id='port-too-big'),
    pytest.param(('127.0.0.1', -1), id='port-negative'),
    pytest.param(('127.0.0.1', '9'), id='port-str'),
    pytest.param((127, 9), id='host-int'),
    pytest.param(('127.0.0.1', 0), id='port-zero'),
    pytest.param(('::1', 9), id='ipv6-literal'),
    pytest.param(('127.0.0.1\0', 9), id='nul-in-host'),
    # No SO_BROADCAST: refused by the kernel (or unroutable), not sent.
    pytest.param(('255.255.255.255', 9), id='broadcast-literal'),
    pytest.param(('<broadcast>', 9), id='broadcast-name'),
])
def test_sendto_bad_address_as_asyncio(loop, loop_errors, run, addr):
    expected = stdlib_sendto_error(socket.AF_INET, b'x', addr)
    assert expected is not None, 'the socket module accepted the address'

    async def main():
        async with endpoint(loop, local_addr=('127.0.0.1', 0)) as (tr, proto):
            tr.sendto(b'x', addr)
            await check_send_failure(loop, loop_errors, tr, proto, expected)
            if isinstance(expected, OSError):
                # Still working.
                with plain_socket() as peer:
                    tr.sendto(b'ok', peer.getsockname())
                    assert [d for d, _ in await recv_datagrams(peer, 1)] == [b'ok']
    run(main())


def test_sendto_too_large_error_received(loop, run):
    big = b'x' * 70000
    expected = stdlib_sendto_error(socket.AF_INET, big, ('127.0.0.1', 9))
    assert isinstance(expected, OSError) and expected.errno == errno.EMSGSIZE

    async def main():
        with plain_socket() as peer:
            async with endpoint(loop, local_addr=('127.0.0.1', 0)) as (tr, proto):
                tr.sendto(big, peer.getsockname())
                await proto.wait_errors(1)
                assert same_exc(proto.errors[0], expected)
                tr.sendto(bytearray(big), peer.getsockname())
                await proto.wait_errors(2)
                assert same_exc(proto.errors[1], expected)
                assert tr.get_write_buffer_size() == 0
                tr.sendto(b'small', peer.getsockname())
                assert [d for d, _ in await recv_datagrams(peer, 1)] == [b'small']
    run(main())


# ---------------------------------------------------------------------------
# many senders / many destinations (the address caches)
# ---------------------------------------------------------------------------

def _extra_loopback_ok():
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(('127.0.0.2', 0))
    except OSError:
        return False
    return True


def test_interleaved_senders_get_right_addresses(loop, run):
    rounds = 40

    async def main():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        grow_rcvbuf(sock, 1 << 22)
        sock.bind(('127.0.0.1', 0))
        server_addr = sock.getsockname()
        async with endpoint(loop, lambda: DgramProto(loop, echo=True), sock=sock) as (tr, proto):
            with contextlib.ExitStack() as stack:
                clients = [stack.enter_context(plain_socket()) for _ in range(3)]
                if _extra_loopback_ok():
                    # Same port, another host: the cache must compare
                    # whole addresses.
                    port = clients[0].getsockname()[1]
                    twin = stack.enter_context(plain_socket(bind=False))
                    try:
                        twin.bind(('127.0.0.2', port))
                    except OSError:
                        pass
                    else:
                        clients.append(twin)
                # A pattern of alternations and runs of one sender.
                order = []
                for r in range(rounds):
                    order += list(range(len(clients)))
                    order += [r % len(clients)] * (r % 3)
                counts = [0] * len(clients)
                expected = []
                for c in order:
                    msg = b'client %d #%d' % (c, counts[c])
                    counts[c] += 1
                    clients[c].sendto(msg, server_addr)
                    expected.append((msg, clients[c].getsockname()))
                await proto.wait_datagrams(len(expected))
                assert proto.datagrams == expected
                for c, client in enumerate(clients):
                    got = await recv_datagrams(client, counts[c])
                    assert got == [(b'client %d #%d' % (c, k), server_addr)
                                   for k in range(counts[c])]
                # Slowly too: one datagram per loop iteration.
                proto.datagrams.clear()
                expected = []
                echoes = [[] for _ in clients]
                for k in range(12):
                    c = k % len(clients)
                    clients[c].sendto(b'slow %d' % k, server_addr)
                    expected.append((b'slow %d' % k, clients[c].getsockname()))
                    echoes[c].append(b'slow %d' % k)
                    await proto.wait_datagrams(k + 1)
                assert proto.datagrams == expected
                for c, client in enumerate(clients):
                    got = await recv_datagrams(client, len(echoes[c]))
                    assert [d for d, _ in got] == echoes[c]
                assert proto.errors == []
    run(main())


@needs_ipv6
def test_interleaved_ipv6_senders(loop, run):
    async def main():
        async with endpoint(loop, lambda: DgramProto(loop, echo=True),
                            local_addr=('::1', 0)) as (tr, proto):
            server_addr = tr.get_extra_info('sockname')
            with plain_socket('::1') as a, plain_socket('::1') as b, plain_socket('::1') as c:
                clients = [a, b, c, a, a, b, c, c, b, a]
                for k, cl in enumerate(clients):
                    cl.sendto(b'%d' % k, server_addr)
                await proto.wait_datagrams(len(clients))
                assert proto.datagrams == [(b'%d' % k, cl.getsockname())
                                           for k, cl in enumerate(clients)]
                for cl in (a, b, c):
                    n = clients.count(cl)
                    got = await recv_datagrams(cl, n)
                    assert [d for d, _ in got] == [b'%d' % k for k, x in enumerate(clients) if x is cl]
    run(main())


def test_sendto_alternating_destinations(loop, run):
    async def main():
        with contextlib.ExitStack() as stack:
            peers = [stack.enter_context(plain_socket(rcvbuf=1 << 20)) for _ in range(3)]
            addrs = [p.getsockname() for p in peers]
            ports = [a[1] for a in addrs]
            async with endpoint(loop, local_addr=('127.0.0.1', 0)) as (tr, proto):
                me = tr.get_extra_info('sockname')
                expected = [[] for _ in peers]
                k = 0

                def send(i, addr):
                    nonlocal k
                    msg = b'm%d' % k
                    k += 1
                    tr.sendto(msg, addr)
                    expected[i].append(msg)

                # The same tuple objects in alternation.
                for r in range(30):
                    send(r % 3, addrs[r % 3])
                # New, equal tuples every time.
                for r in range(30):
                    send(r % 3, ('127.0.0.1', ports[r % 3]))
                # Runs of one destination, then a change.
                for r in range(30):
                    i = (r // 4) % 3
                    send(i, addrs[i] if r % 2 else ('127.0.0.1', ports[i]))
                # A tuple object reused after others.
                first = addrs[0]
                for i in (0, 1, 0, 2, 0):
                    send(i, first if i == 0 else addrs[i])
                for i, p in enumerate(peers):
                    got = await recv_datagrams(p, len(expected[i]))
                    assert [d for d, _ in got] == expected[i]
                    assert {a for _, a in got} == {me}
                    assert drain(p) == []
    run(main())


# ---------------------------------------------------------------------------
# bursts, order, flow control
# ---------------------------------------------------------------------------

def test_burst_larger_than_a_read_batch(loop, run):
    n = 500

    async def main():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        grow_rcvbuf(sock, 1 << 22)
        try:
            require_rcvbuf(sock, n)
        except BaseException:
            sock.close()
            raise
        sock.bind(('127.0.0.1', 0))
        server_addr = sock.getsockname()
        with plain_socket() as client:
            # Queued before the transport exists (already readable when the
            # loop starts watching it).
            for i in range(n):
                client.sendto(b'early %04d' % i, server_addr)
            async with endpoint(loop, sock=sock) as (tr, proto):
                await proto.wait_datagrams(n)
                assert proto.data == [b'early %04d' % i for i in range(n)]
                assert {a for _, a in proto.datagrams} == {client.getsockname()}
                # A second burst, sent between two loop iterations.
                for i in range(n):
                    client.sendto(b'late %04d' % i, server_addr)
                # Other callbacks keep running while the burst is read: it
                # is spread over several loop iterations.
                ticks = []

                def tick():
                    ticks.append(len(proto.datagrams))
                    if len(proto.datagrams) < 2 * n:
                        loop.call_soon(tick)
                loop.call_soon(tick)
                await proto.wait_datagrams(2 * n)
                assert proto.data[n:] == [b'late %04d' % i for i in range(n)]
                during = [t for t in ticks if t < 2 * n]
                assert len(during) >= 3, ticks
                assert during[0] < 2 * n - n // 2
                await settle(2)
                assert len(proto.datagrams) == 2 * n
                # And one more, alone.
                client.sendto(b'last', server_addr)
                await proto.wait_datagrams(2 * n + 1)
                assert proto.data[-1] == b'last'
    run(main())


def test_udp_flood_small_sndbuf_order_no_loss(loop, run):
    # See the module docstring: the kernel never refuses a UDP datagram on
    # loopback, so nothing is ever queued in the transport (asyncio's
    # behaviour too); every datagram must still arrive, in order.
    n = 2000
    size = 100

    async def main():
        with plain_socket(rcvbuf=1 << 23) as receiver:
            require_rcvbuf(receiver, n)
            target = receiver.getsockname()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
            sock.bind(('127.0.0.1', 0))
            async with endpoint(loop, sock=sock) as (tr, proto):
                tr.set_write_buffer_limits(high=4 * size, low=size)
                sizes = []
                for i in range(n):
                    tr.sendto(b'%08d' % i + b'-' * (size - 8), target)
                    sizes.append(tr.get_write_buffer_size())
                assert max(sizes) == 0
                await settle(2)
                assert [e for e in proto.events if e.endswith('_writing')] == []
                got = await recv_datagrams(receiver, n)
                assert [d[:8] for d, _ in got] == [b'%08d' % i for i in range(n)]
                assert all(len(d) == size for d, _ in got)
                assert {a for _, a in got} == {sock.getsockname()}
                assert drain(receiver) == []
                assert proto.errors == []
    run(main())


# ---------------------------------------------------------------------------
# error_received
# ---------------------------------------------------------------------------

def _refused():
    return ConnectionRefusedError(errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED))


def test_error_received_connection_refused_then_working(loop, run):
    async def main():
        with plain_socket() as gone:
            dead = gone.getsockname()
        async with endpoint(loop, remote_addr=dead) as (tr, proto):
            tr.sendto(b'into the void')
            await proto.wait_errors(1)
            assert len(proto.errors) == 1
            assert same_exc(proto.errors[0], _refused())
            assert not tr.is_closing()
            assert proto.lost_calls == []
            # Several sends in a row: each error is reported (by the read or
            # by the next send), never anything else.
            for _ in range(3):
                tr.sendto(b'again')
            await proto.wait_errors(2)
            await settle(2)
            assert all(same_exc(e, _refused()) for e in proto.errors)
            assert not tr.is_closing()
            # Someone listens on the port now: the transport still works.
            with plain_socket(bind=False) as back:
                back.bind(dead)
                errors_before = len(proto.errors)
                me = tr.get_extra_info('sockname')
                tr.sendto(b'hello again')
                assert await recv_datagrams(back, 1) == [(b'hello again', me)]
                back.sendto(b'reply', me)
                await proto.wait_datagrams(1)
                assert proto.datagrams == [(b'reply', dead)]
                assert len(proto.errors) == errors_before
    run(main())


@needs_ipv6
def test_error_received_connection_refused_ipv6(loop, run):
    async def main():
        with plain_socket('::1') as gone:
            dead = gone.getsockname()[:2]
        async with endpoint(loop, remote_addr=dead) as (tr, proto):
            tr.sendto(b'void')
            await proto.wait_errors(1)
            assert same_exc(proto.errors[0], _refused())
            assert not tr.is_closing()
    run(main())


# ---------------------------------------------------------------------------
# the protocol's callbacks: exceptions, close, pause/resume, abort
# ---------------------------------------------------------------------------

class Boom(Exception):
    pass


def test_datagram_received_exception_reported_and_reading_goes_on(loop, loop_errors, run):
    raised = []

    def hook(proto, data, addr):
        if data.startswith(b'boom'):
            exc = Boom(data)
            raised.append(exc)
            raise exc

    async def main():
        async with endpoint(loop, lambda: DgramProto(loop, hook=hook),
                            local_addr=('127.0.0.1', 0)) as (tr, proto):
            addr = tr.get_extra_info('sockname')
            with plain_socket() as client:
                msgs = [b'0', b'boom 1', b'2', b'3', b'boom 4', b'boom 5', b'6']
                for m in msgs:
                    client.sendto(m, addr)
                await proto.wait_datagrams(len(msgs))
                assert proto.data == msgs
                await settle(2)
                client.sendto(b'later', addr)
                await proto.wait_datagrams(len(msgs) + 1)
                assert proto.data[-1] == b'later'
            assert not tr.is_closing()
        assert len(loop_errors) == 3
        for ctx, exc in zip(loop_errors, raised, strict=True):
            assert ctx['message'].startswith('Exception in callback ')
            assert ctx['exception'] is exc
        assert proto.lost_calls == [None]
    run(main())


def test_datagram_received_keyboard_interrupt_propagates(loop, run):
    def hook(proto, data, addr):
        if data == b'interrupt':
            raise KeyboardInterrupt

    async def main(proto, n):
        await proto.wait_datagrams(n)

    made = run(wait(loop.create_datagram_endpoint(
        lambda: DgramProto(loop, hook=hook), local_addr=('127.0.0.1', 0))))
    tr, proto = made
    try:
        addr = tr.get_extra_info('sockname')
        with plain_socket() as client:
            for m in (b'a', b'interrupt', b'c'):
                client.sendto(m, addr)
            task = loop.create_task(main(proto, 3))
            with pytest.raises(KeyboardInterrupt):
                run(task)
            assert proto.data[:2] == [b'a', b'interrupt']
            # The loop can run again; the datagram after it is not lost.
            run(task)
            assert proto.data == [b'a', b'interrupt', b'c']
    finally:
        tr.close()
        run(proto.wait_lost())


def test_close_inside_datagram_received(loop, run):
    def hook(proto, data, addr):
        if data == b'2':
            proto.transport.close()
            assert proto.transport.is_closing()

    async def main():
        tr, proto = await wait(loop.create_datagram_endpoint(
            lambda: DgramProto(loop, hook=hook), local_addr=('127.0.0.1', 0)))
        addr = tr.get_extra_info('sockname')
        with plain_socket() as client:
            for i in range(10):
                client.sendto(b'%d' % i, addr)
            assert await proto.wait_lost() is None
            await settle(3)
            assert proto.data == [b'0', b'1', b'2']
            assert proto.lost_calls == [None]
            assert proto.events[-1] == 'lost'
            tr.close()  # again: nothing happens
            assert not tr.is_reading()
            tr.pause_reading()  # no-ops once closing
            tr.resume_reading()
            assert not tr.is_reading()
            client.sendto(b'late', addr)
            await settle(1)
            assert proto.lost_calls == [None]
            assert proto.data == [b'0', b'1', b'2']
    run(main())


def test_pause_and_resume_reading_inside_datagram_received(loop, run):
    def hook(proto, data, addr):
        if data in (b'2', b'6'):
            proto.transport.pause_reading()
            assert not proto.transport.is_reading()

    async def main():
        async with endpoint(loop, lambda: DgramProto(loop, hook=hook),
                            local_addr=('127.0.0.1', 0)) as (tr, proto):
            assert tr.is_reading()
            addr = tr.get_extra_info('sockname')
            with plain_socket() as client:
                for i in range(10):
                    client.sendto(b'%d' % i, addr)
                await proto.wait_datagrams(3)
                await settle(3)
                assert proto.data == [b'0', b'1', b'2']
                assert not tr.is_reading()
                tr.pause_reading()  # already paused: no-op
                tr.resume_reading()
                assert tr.is_reading()
                await proto.wait_datagrams(7)
                await settle(3)
                assert proto.data == [b'%d' % i for i in range(7)]
                tr.resume_reading()
                await proto.wait_datagrams(10)
                assert proto.data == [b'%d' % i for i in range(10)]
                # Paused from outside, datagrams wait in the kernel.
                tr.pause_reading()
                client.sendto(b'while paused', addr)
                await settle(3)
                assert len(proto.datagrams) == 10
                tr.resume_reading()
                tr.resume_reading()  # already reading: no-op
                await proto.wait_datagrams(11)
                assert proto.data[-1] == b'while paused'
    run(main())


def test_abort(loop, run):
    async def main():
        tr, proto = await wait(loop.create_datagram_endpoint(
            lambda: DgramProto(loop), local_addr=('127.0.0.1', 0)))
        addr = tr.get_extra_info('sockname')
        with plain_socket() as client:
            client.sendto(b'before', addr)
            await proto.wait_datagrams(1)
            client.sendto(b'after abort', addr)
            tr.abort()
            assert tr.is_closing()
            assert await proto.wait_lost() is None
            await settle(2)
            assert proto.data == [b'before']
            assert proto.lost_calls == [None]
            tr.abort()
            tr.close()
            await settle(1)
            assert proto.lost_calls == [None]
    run(main())


def test_error_received_exception_reported(loop, loop_errors, run):
    class Proto(DgramProto):
        def error_received(self, exc):
            super().error_received(exc)
            raise Boom('from error_received')

    async def main():
        with plain_socket() as gone:
            dead = gone.getsockname()
        async with endpoint(loop, lambda: Proto(loop), remote_addr=dead) as (tr, proto):
            tr.sendto(b'void')
            await proto.wait_errors(1)
            await settle(2)
            assert not tr.is_closing()
            assert len(loop_errors) == len(proto.errors) >= 1
            assert isinstance(loop_errors[0]['exception'], Boom)
            assert loop_errors[0]['message'].startswith('Exception in callback ')
    run(main())


def test_set_protocol_inside_datagram_received(loop, run):
    second = None

    def hook(proto, data, addr):
        if data == b'2':
            proto.transport.set_protocol(second)

    async def main():
        nonlocal second
        second = DgramProto(loop)
        async with endpoint(loop, lambda: DgramProto(loop, hook=hook),
                            local_addr=('127.0.0.1', 0)) as (tr, first):
            second.transport = tr
            addr = tr.get_extra_info('sockname')
            with plain_socket() as client:
                for i in range(40):
                    client.sendto(b'%d' % i, addr)
                await second.wait_datagrams(37)
                await settle(2)
                assert first.data == [b'0', b'1', b'2']
                assert second.data == [b'%d' % i for i in range(3, 40)]
                assert tr.get_protocol() is second
            tr.close()
            await second.wait_lost()
            first.lost.set_result(None)  # for endpoint(): it went to `second`
        assert first.lost_calls == []
        assert second.lost_calls == [None]
    run(main())


def test_pause_and_resume_in_the_same_callback(loop, run):
    def hook(proto, data, addr):
        proto.transport.pause_reading()
        proto.transport.resume_reading()

    async def main():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        grow_rcvbuf(sock, 1 << 21)
        sock.bind(('127.0.0.1', 0))
        addr = sock.getsockname()
        async with endpoint(loop, lambda: DgramProto(loop, hook=hook), sock=sock) as (tr, proto):
            with plain_socket() as client:
                for i in range(100):
                    client.sendto(b'%d' % i, addr)
                await proto.wait_datagrams(100)
                await settle(2)
                assert proto.data == [b'%d' % i for i in range(100)]
                assert tr.is_reading()
    run(main())


def test_empty_and_largest_datagrams_received(loop, run):
    async def main():
        for host, largest in (('127.0.0.1', 65507), ('::1', 65527)):
            if ':' in host and not has_ipv6_loopback():
                continue
            sock = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET,
                                 socket.SOCK_DGRAM)
            grow_rcvbuf(sock, 1 << 20)
            sock.bind((host, 0))
            async with endpoint(loop, lambda: DgramProto(loop, echo=True), sock=sock) as (tr, proto):
                addr = tr.get_extra_info('sockname')
                big = bytes(range(256)) * (largest // 256) + b'z' * (largest % 256)
                with plain_socket(host, rcvbuf=1 << 20) as client:
                    client.sendto(b'', addr)
                    client.sendto(big, addr)
                    client.sendto(b'', addr)
                    await proto.wait_datagrams(3)
                    assert proto.data == [b'', big, b'']
                    assert [a for _, a in proto.datagrams] == [client.getsockname()] * 3
                    # The echo of b'' is not sent (3.11 drops empty data).
                    got = await recv_datagrams(client, 1)
                    assert got == [(big, addr)]
                    await settle(2)
                    assert drain(client) == []
    run(main())


def test_ping_pong_between_two_endpoints(loop, run):
    rounds = 300

    def hook(proto, data, addr):
        n = int(data)
        if n < rounds:
            proto.transport.sendto(b'%d' % (n + 1), addr)

    async def main():
        async with endpoint(loop, lambda: DgramProto(loop, hook=hook),
                            local_addr=('127.0.0.1', 0)) as (a, pa):
            async with endpoint(loop, lambda: DgramProto(loop, hook=hook),
                                remote_addr=a.get_extra_info('sockname')) as (b, pb):
                b.sendto(b'0')
                # `a` gets the even balls, the last one (rounds is even) too.
                await pa.wait_datagrams(rounds // 2 + 1)
                await settle(2)
                assert pa.data == [b'%d' % i for i in range(0, rounds + 1, 2)]
                assert pb.data == [b'%d' % i for i in range(1, rounds + 1, 2)]
                assert {x for _, x in pa.datagrams} == {b.get_extra_info('sockname')}
                assert {x for _, x in pb.datagrams} == {a.get_extra_info('sockname')}
    run(main())


def test_debug_mode_echo_and_callback_error(loop, loop_errors, run, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 10.0

    def hook(proto, data, addr):
        if data == b'boom':
            raise Boom(data)

    async def main():
        async with endpoint(loop, lambda: DgramProto(loop, echo=True, hook=hook),
                            local_addr=('127.0.0.1', 0)) as (tr, proto):
            addr = tr.get_extra_info('sockname')
            with plain_socket() as client:
                msgs = [b'%d' % i for i in range(50)] + [b'boom'] + [b'after']
                for m in msgs:
                    client.sendto(m, addr)
                await proto.wait_datagrams(len(msgs))
                assert proto.data == msgs
                got = await recv_datagrams(client, len(msgs))
                assert [d for d, _ in got] == msgs
        assert len(loop_errors) == 1
        assert loop_errors[0]['message'].startswith('Exception in callback ')
        assert isinstance(loop_errors[0]['exception'], Boom)

    with caplog.at_level(logging.DEBUG, logger='asyncio'):
        run(main())
    assert any('Datagram endpoint local_addr=' in r.getMessage() for r in caplog.records)


def test_pause_reading_in_connection_made(loop, run):
    class Proto(DgramProto):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.pause_reading()

    async def main():
        async with endpoint(loop, lambda: Proto(loop), local_addr=('127.0.0.1', 0)) as (tr, proto):
            assert not tr.is_reading()
            addr = tr.get_extra_info('sockname')
            with plain_socket() as client:
                client.sendto(b'waiting', addr)
                await settle(3)
                assert proto.datagrams == []
                tr.resume_reading()
                await proto.wait_datagrams(1)
                assert proto.data == [b'waiting']
    run(main())


def test_endpoint_kept_alive_by_the_loop(loop, run):
    # The result of create_datagram_endpoint is dropped and the protocol
    # keeps only a weak reference: the loop keeps the transport alive while
    # it reads (asyncio's reader Handle holds its bound _read_ready), so
    # datagrams keep coming and the protocol can answer through it.
    class WeakProto(asyncio.DatagramProtocol):
        def __init__(self):
            self.ref = None
            self.got = []
            self.lost = loop.create_future()

        def connection_made(self, transport):
            self.ref = weakref.ref(transport)

        def datagram_received(self, data, addr):
            self.got.append(data)
            self.ref().sendto(data.upper(), addr)

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    proto = WeakProto()

    async def main():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            await wait(loop.create_datagram_endpoint(lambda: proto, local_addr=('127.0.0.1', 0)))
            gc.collect()
            await settle(2)
            gc.collect()
        # (A collected transport warns "unclosed transport" and closes its
        # socket; the recorded warning would then hold it as its source.)
        unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
        del caught
        assert unclosed == [], 'the transport was garbage-collected'
        assert proto.ref() is not None
        addr = proto.ref().get_extra_info('sockname')
        with plain_socket() as client:
            client.sendto(b'still there?', addr)
            assert await recv_datagrams(client, 1) == [(b'STILL THERE?', addr)]
        assert proto.got == [b'still there?']
        proto.ref().close()
        assert await wait(asyncio.shield(proto.lost)) is None

    run(main())


def test_fd_reused_after_close_mid_burst(loop, run):
    def hook(proto, data, addr):
        if data == b'a5':
            proto.transport.close()

    async def main():
        sock_a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        grow_rcvbuf(sock_a, 1 << 21)
        sock_a.bind(('127.0.0.1', 0))
        tr_a, pa = await wait(loop.create_datagram_endpoint(
            lambda: DgramProto(loop, hook=hook), sock=sock_a))
        addr_a = tr_a.get_extra_info('sockname')
        with plain_socket() as client:
            for i in range(100):
                client.sendto(b'a%d' % i, addr_a)
            await pa.wait_lost()
            # A new endpoint, most likely on the very same fd number.
            async with endpoint(loop, local_addr=('127.0.0.1', 0)) as (tr_b, pb):
                addr_b = tr_b.get_extra_info('sockname')
                for i in range(100):
                    client.sendto(b'b%d' % i, addr_b)
                await pb.wait_datagrams(100)
                await settle(2)
                assert pb.data == [b'b%d' % i for i in range(100)]
                assert pa.data == [b'a%d' % i for i in range(6)]
                assert pa.lost_calls == [None]
    run(main())


def test_bound_sendto_keeps_the_transport(loop, run):
    # A bound method holds its transport (asyncio's sendto is a plain
    # method): sending through it works with no other reference left.
    async def main():
        tr, proto = await wait(loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=('127.0.0.1', 0)))
        tr.pause_reading()  # the loop does not need it either now
        me = tr.get_extra_info('sockname')
        ref = weakref.ref(tr)
        send = tr.sendto
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            del tr, proto
            gc.collect()
        unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
        del caught
        assert unclosed == [], 'the transport was garbage-collected'
        with plain_socket() as peer:
            send(b'through the bound method', peer.getsockname())
            assert await recv_datagrams(peer, 1) == [(b'through the bound method', me)]
        tr = ref()
        assert tr is not None
        tr.close()
        await settle(2)
        assert tr.get_extra_info('socket').fileno() == -1

    run(main())


def test_sendto_arity_and_keywords(loop, run):
    async def main():
        with plain_socket() as peer:
            target = peer.getsockname()
            async with endpoint(loop, local_addr=('127.0.0.1', 0)) as (tr, proto):
                with pytest.raises(TypeError):
                    tr.sendto()
                with pytest.raises(TypeError):
                    tr.sendto(b'x', target, 0)
                with pytest.raises(TypeError):
                    tr.sendto(b'x', address=target)
                tr.sendto(data=b'kw', addr=target)
                assert [d for d, _ in await recv_datagrams(peer, 1)] == [b'kw']
                assert proto.errors == []
    run(main())


def test_transport_fd_is_not_for_add_reader(loop, run):
    async def main():
        async with endpoint(loop, local_addr=('127.0.0.1', 0)) as (tr, proto):
            fd = tr.get_extra_info('socket').fileno()
            for method in (loop.add_reader, loop.add_writer):
                with pytest.raises(RuntimeError) as ei:
                    method(fd, print)
                assert str(ei.value) == f'File descriptor {fd!r} is used by transport {tr!r}'
            for method in (loop.remove_reader, loop.remove_writer):
                with pytest.raises(RuntimeError) as ei:
                    method(fd)
                assert str(ei.value) == f'File descriptor {fd!r} is used by transport {tr!r}'
            # Still reading.
            with plain_socket() as client:
                client.sendto(b'ok', tr.get_extra_info('sockname'))
                await proto.wait_datagrams(1)
    run(main())


# ---------------------------------------------------------------------------
# contextvars
# ---------------------------------------------------------------------------

def test_datagram_received_runs_in_copy_of_creation_context(loop, run):
    var = contextvars.ContextVar('var', default='unset')
    seen = []

    def hook(proto, data, addr):
        seen.append(var.get())
        var.set(f'set in callback {len(seen)}')

    async def main():
        var.set('at creation')
        async with endpoint(loop, lambda: DgramProto(loop, hook=hook),
                            local_addr=('127.0.0.1', 0)) as (tr, proto):
            var.set('after creation')
            addr = tr.get_extra_info('sockname')
            with plain_socket() as client:
                client.sendto(b'1', addr)
                await proto.wait_datagrams(1)
                assert seen == ['at creation']
                assert var.get() == 'after creation'
                client.sendto(b'2', addr)
                client.sendto(b'3', addr)
                await proto.wait_datagrams(3)
                # One context copy for every read (asyncio's reader Handle).
                assert seen == ['at creation', 'set in callback 1', 'set in callback 2']
                assert var.get() == 'after creation'
                # resume_reading reads in a copy of *its* caller's context.
                tr.pause_reading()
                ctx = contextvars.copy_context()
                ctx.run(var.set, 'at resume')
                ctx.run(tr.resume_reading)
                ctx.run(var.set, 'changed after resume')
                client.sendto(b'4', addr)
                await proto.wait_datagrams(4)
                assert seen[-1] == 'at resume'
                assert ctx[var] == 'changed after resume'
                assert var.get() == 'after creation'
        assert var.get() == 'after creation'

    run(main())
    assert var.get() == 'unset'


# ---------------------------------------------------------------------------
# transport API
# ---------------------------------------------------------------------------

def test_is_datagram_transport_on_ferroloop(loop, loop_kind, run):
    if loop_kind == 'asyncio':
        pytest.skip("3.11's _SelectorDatagramTransport is not an asyncio.DatagramTransport")

    async def main():
        async with endpoint(loop, local_addr=('127.0.0.1', 0)) as (tr, _):
            assert isinstance(tr, asyncio.DatagramTransport)
            assert isinstance(tr, asyncio.BaseTransport)
        if has_ipv6_loopback():
            async with endpoint(loop, local_addr=('::1', 0)) as (tr, _):
                assert isinstance(tr, asyncio.DatagramTransport)
    run(main())


def test_extra_info_repr_is_closing(loop, run):
    async def main():
        with plain_socket() as peer:
            tr, proto = await wait(loop.create_datagram_endpoint(
                lambda: DgramProto(loop), remote_addr=peer.getsockname()))
            sock = tr.get_extra_info('socket')
            assert sock.family == socket.AF_INET
            assert sock.type == socket.SOCK_DGRAM
            assert tr.get_extra_info('sockname') == sock.getsockname()
            assert tr.get_extra_info('peername') == peer.getsockname() == sock.getpeername()
            assert tr.get_extra_info('missing', 'dflt') == 'dflt'
            assert tr.get_protocol() is proto
            fd = sock.fileno()
            r = repr(tr)
            assert f'fd={fd}' in r
            assert 'read=polling' in r
            assert 'write=<idle, bufsize=0>' in r
            tr.pause_reading()
            assert 'read=idle' in repr(tr)
            tr.resume_reading()
            assert 'read=polling' in repr(tr)
            assert not tr.is_closing()
            assert tr.get_write_buffer_size() == 0
            assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
            tr.close()
            assert tr.is_closing()
            assert not tr.is_reading()
            assert 'closing' in repr(tr)
            await proto.wait_lost()
            assert tr.is_closing()
            assert 'closed' in repr(tr)
            assert sock.fileno() == -1
    run(main())


def test_sendto_after_close_connected_counts_and_warns(loop, run, caplog):
    async def main():
        with plain_socket() as peer:
            tr, proto = await wait(loop.create_datagram_endpoint(
                lambda: DgramProto(loop), remote_addr=peer.getsockname()))
            tr.close()
            n = 8
            with caplog.at_level(logging.WARNING, logger='asyncio'):
                for _ in range(n):
                    tr.sendto(b'after close')
                await proto.wait_lost()
                tr.sendto(b'after lost')
            # _conn_lost is 1 after close(); each send counts, and warns
            # once the count has reached the threshold.
            logged = [r for r in caplog.records
                      if r.getMessage() == 'socket.send() raised exception.']
            assert len(logged) == n + 1 - (CONNLOST_WARN_THRESHOLD - 1)
            await settle(2)
            assert drain(peer) == []
            assert proto.errors == []
            assert proto.lost_calls == [None]
    run(main())


def test_sendto_after_close_unconnected_as_311(loop, run):
    # 3.11: an unconnected transport is not guarded -- between close() and
    # connection_lost the socket still sends; afterwards the transport has
    # dropped its socket and its loop, so sendto's fatal-error path itself
    # fails: the caller gets an AttributeError.
    async def main():
        with plain_socket() as peer:
            tr, proto = await wait(loop.create_datagram_endpoint(
                lambda: DgramProto(loop), local_addr=('127.0.0.1', 0)))
            me = tr.get_extra_info('sockname')
            tr.close()
            tr.sendto(b'closing', peer.getsockname())
            assert await recv_datagrams(peer, 1) == [(b'closing', me)]
            await proto.wait_lost()
            with pytest.raises(AttributeError) as ei:
                tr.sendto(b'closed', peer.getsockname())
            assert str(ei.value) == "'NoneType' object has no attribute 'call_exception_handler'"
            await settle(1)
            assert proto.lost_calls == [None]
            assert drain(peer) == []
    run(main())
