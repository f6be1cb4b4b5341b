"""TLS records on the wire: what an application sees when the peer's
ciphertext arrives in awkward pieces, on every loop.

ferroloop's TLS connections run asyncio's ``SSLProtocol`` with a native data
path (``ferroloop._tls._SSLProtocol``, ``_TLSPump``): it stops reading when
no whole TLS record is left in the incoming ``MemoryBIO`` (a record tracker)
instead of reading until ``SSLWantReadError``.  A mistake there is a STALL:
plaintext that arrived is not delivered until more bytes come.  So the
peer here is a ``RawTLS`` (test_tls.py: an ``ssl.SSLObject`` driven by hand
over a plain socket) whose records are cut at chosen offsets; after each
piece the test waits until the loop's socket has been read empty
(``FIONREAD``) and checks -- with a bounded wait, the peer sending nothing
more -- that exactly the plaintext of the records completed so far has
arrived, in one ``data_received`` per piece (asyncio joins the records of a
read).

Also here: close_notify right behind data, session tickets, a KeyUpdate,
a post-handshake CertificateRequest and a TLS 1.2 renegotiation after the
handshake, TLS 1.2 echo, an ``SSLContext.sslobject_class`` of the user's,
``set_protocol`` between ``Protocol`` and ``BufferedProtocol``, the
application transport's ``write`` (argument errors, empty data, before the
handshake, after close), ``pause_reading``, small read-buffer limits, and
bad records behind good ones.  Where exact values depend on OpenSSL or on
asyncio's internals the same scenario runs on a fresh stdlib loop
(``run_reference``) and the results are compared.  KeyUpdate and
renegotiation call libssl through ctypes (the ssl module has no API for
them) and skip where that is not safe.

Linux only (``FIONREAD``/``SIOCOUTQNSD`` on the sockets).

test_tls.py covers the rest (echo, timeouts, close_notify, bad records,
bulk transfer, BufferedProtocol basics); this file reuses its fixtures.
"""

import array
import asyncio
import contextlib
import ctypes
import fcntl
import hashlib
import logging
import socket
import ssl
import struct
import sys
import sysconfig
import termios
import time

import pytest
from io_helpers import TIMEOUT, Factory, Recorder, payload, tcp_pair
from test_tls import (  # noqa: F401  (fixtures: ca, server_cert, server_ctx, via)
    HOSTNAME,
    RawTLS,
    ca,
    describe,
    logged,
    loop_client_raw_server,
    run_reference,
    server_cert,
    server_ctx,
    summarize,
    tls_pair,
    via,
    wait,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="socket queue ioctls")

SIDES = ("client", "server")  # the loop's role; the RawTLS peer has the other
VERSIONS = ("TLSv1_2", "TLSv1_3")
STALL = 3.0  # how long data that arrived may take to reach the protocol
PAUSE = 0.06  # the pause inside a record (>= 50 ms)
MAX_PLAINTEXT = 1 << 14
BLOCK = payload(1 << 20)
SIOCOUTQNSD = 0x894B  # bytes of a TCP socket's send queue not yet sent (linux/sockios.h)


def text(seed, n):
    """``n`` bytes, different for each seed."""
    start = (seed * 7919) % (len(BLOCK) - n)
    return BLOCK[start : start + n]


def digest(chunks):
    """Chunks, comparable without printing them."""
    return [(len(c), hashlib.sha256(c).hexdigest()[:12]) for c in chunks]


@pytest.fixture
def client_ctx(ca):
    """test_tls.py's client context without the system's CA store (loading
    it costs 35 ms a test); the same settings otherwise."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(ctx)
    return ctx


@pytest.fixture(params=VERSIONS)
def version(request, server_ctx):
    """The TLS version negotiated (the server's context is pinned to it)."""
    v = getattr(ssl.TLSVersion, request.param)
    server_ctx.minimum_version = v
    server_ctx.maximum_version = v
    return request.param


@pytest.fixture(params=SIDES)
def side(request):
    return request.param


# ---------------------------------------------------------------------------
# the socket queues
# ---------------------------------------------------------------------------


def _ioctl_int(fd, request):
    return struct.unpack("i", fcntl.ioctl(fd, request, b"\0\0\0\0"))[0]


async def until(cond, what, timeout=STALL):
    """Wait (bounded) until ``cond()``; else fail with ``what()``."""
    deadline = time.monotonic() + timeout
    spins = 0
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout}s: {what()}")
        spins += 1
        await asyncio.sleep(0 if spins < 50 else 0.001)


async def drained(s, timeout=STALL):
    """Wait until everything the peer sent was read by the loop."""
    peer_fd = s.raw.sock.fileno()

    def empty():
        try:
            return _ioctl_int(peer_fd, SIOCOUTQNSD) == 0 and _ioctl_int(s.fd, termios.FIONREAD) == 0
        except OSError:  # the loop closed its socket (after a close_notify)
            return True

    await until(
        empty,
        lambda: (
            "the loop did not read its socket: "
            f"{_ioctl_int(s.fd, termios.FIONREAD)} bytes queued, "
            f"{_ioctl_int(peer_fd, SIOCOUTQNSD)} unsent"
        ),
        timeout,
    )


# ---------------------------------------------------------------------------
# record streams made by the peer
# ---------------------------------------------------------------------------


def record_spans(ct):
    """(start, end) of each TLS record in ``ct`` (whole records only)."""
    spans, pos = [], 0
    while pos < len(ct):
        assert len(ct) - pos >= 5, "partial record header"
        end = pos + 5 + int.from_bytes(ct[pos + 3 : pos + 5], "big")
        assert end <= len(ct), "partial record"
        spans.append((pos, end))
        pos = end
    return spans


class Stream:
    """Ciphertext the peer will send, with its record boundaries and the
    plaintext each record carries (b'' for control records)."""

    def __init__(self, raw):
        self.raw = raw
        self.data = bytearray()
        self.records = []  # (start, end, plaintext)

    def control(self, ct):
        base = len(self.data)
        self.data += ct
        self.records += [(base + a, base + b, b"") for a, b in record_spans(ct)]

    def app(self, *plaintexts, before=0):
        """One application_data record per plaintext (after ``before``
        control records the first write sends too)."""
        for pt in plaintexts:
            assert 0 < len(pt) <= MAX_PLAINTEXT
            self.raw.obj.write(pt)
            ct = self.raw.out.read()
            spans = record_spans(ct)
            assert len(spans) == 1 + before
            base = len(self.data)
            self.data += ct
            self.records += [(base + a, base + b, b"") for a, b in spans[:-1]]
            self.records.append((base + spans[-1][0], base + spans[-1][1], bytes(pt)))
            before = 0

    def close_notify(self):
        with contextlib.suppress(ssl.SSLWantReadError):
            self.raw.obj.unwrap()
        self.control(self.raw.out.read())

    def plaintext(self):
        return b"".join(pt for _, _, pt in self.records)

    def rec(self, i):
        return self.records[i][:2]


class Chunks(Recorder):
    """A Recorder that also keeps each data_received argument."""

    def __init__(self, loop, **kw):
        super().__init__(loop, **kw)
        self.chunks = []

    def data_received(self, data):
        assert type(data) is bytes
        self.chunks.append(data)
        super().data_received(data)


class Session:
    def __init__(self, loop, proto, raw, fd):
        self.loop = loop
        self.proto = proto
        self.raw = raw
        self.fd = fd  # the loop's socket
        self.sent = 0  # bytes of the current Stream sent


async def raw_handshake(raw, last_flight=None):
    """RawTLS.handshake, except that the final flight goes to
    ``last_flight(raw, bytes)`` instead of the socket when given."""
    while True:
        try:
            raw.obj.do_handshake()
        except ssl.SSLWantReadError:
            await raw.flush()
            await raw.fill()
        else:
            if last_flight is None:
                await raw.flush()
            else:
                await last_flight(raw, raw.out.read())
            return


@contextlib.asynccontextmanager
async def session(loop, via, side, server_ctx, client_ctx, *, proto=None, last_flight=None):
    """The loop's TLS end (``side``, made ``via`` ssl= or start_tls) and a
    RawTLS peer, both handshakes done."""
    proto = proto if proto is not None else Chunks(loop)
    with tcp_pair() as (csock, ssock):
        loop_sock, peer_sock = (csock, ssock) if side == "client" else (ssock, csock)
        peer_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        peer_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        fd = loop_sock.fileno()
        if side == "client":
            raw = RawTLS(loop, peer_sock, server_ctx, server_side=True)
            ctx, kw = client_ctx, {"server_hostname": HOSTNAME}
        else:
            raw = RawTLS(loop, peer_sock, client_ctx, server_side=False, server_hostname=HOSTNAME)
            ctx, kw = server_ctx, {}
        try:
            if via == "ssl":
                if side == "client":
                    connect = loop.create_connection(lambda: proto, sock=loop_sock, ssl=ctx, **kw)
                else:
                    connect = loop.connect_accepted_socket(lambda: proto, loop_sock, ssl=ctx)
                # the loop's call first: its SSLProtocol is in place before
                # the peer's first flight can arrive
                (tr, _), _ = await wait(asyncio.gather(connect, raw_handshake(raw, last_flight)))
            else:
                if side == "client":
                    plain, _ = await wait(loop.create_connection(lambda: proto, sock=loop_sock))
                else:
                    plain, _ = await wait(loop.connect_accepted_socket(lambda: proto, loop_sock))
                upgrade = loop.start_tls(plain, proto, ctx, server_side=side == "server", **kw)
                tr, _ = await wait(asyncio.gather(upgrade, raw_handshake(raw, last_flight)))
                proto.transport = tr
            assert proto.transport is tr
            yield Session(loop, proto, raw, fd)
        finally:
            if proto.transport is not None and not proto.lost.done():
                proto.transport.abort()
            if proto.made.done():
                await asyncio.wait([proto.lost], timeout=TIMEOUT)


async def deliver(
    s, st, cuts=(), pauses=(), *, chunks=True, received=None, after=None, timeout=STALL
):
    """Send ``st`` from ``s.sent`` to its end, cut at ``cuts``.  After each
    piece: wait until the loop read it, then until the plaintext of the
    records it completed arrived (bounded: a stall fails), and, with
    ``chunks``, check that each piece made one data_received with exactly
    that plaintext.  ``pauses``: cuts followed by a PAUSE with nothing sent,
    after which nothing more may have arrived.  ``after(cut)`` runs after
    each piece."""
    proto = s.proto
    received = received if received is not None else (lambda: len(proto.data))
    await drained(s)  # whatever came before (tickets) read on its own
    expected = list(proto.chunks) if chunks else None
    total = received()
    prev = s.sent
    for cut in sorted({*cuts, len(st.data)}):
        if cut <= prev:
            continue
        await wait(s.loop.sock_sendall(s.raw.sock, st.data[prev:cut]))
        await drained(s, timeout)
        done = b"".join(pt for _, end, pt in st.records if prev < end <= cut)
        total += len(done)
        await until(
            lambda: received() >= total,  # noqa: B023
            lambda: (
                f"STALL: bytes {prev}:{cut} of {len(st.data)} sent and read, "  # noqa: B023
                f"{total - received()} bytes of plaintext not delivered"  # noqa: B023
            ),
            timeout,
        )
        if chunks:
            if done:
                expected.append(done)
            assert digest(proto.chunks) == digest(expected), f"after bytes {prev}:{cut}"
        if cut in pauses:
            await asyncio.sleep(PAUSE)
            assert received() == total
            if chunks:
                assert digest(proto.chunks) == digest(expected)
        if after is not None:
            after(cut)
        prev = cut
    s.sent = prev
    assert received() == total


# ---------------------------------------------------------------------------
# 1. ciphertext cut at awkward points
# ---------------------------------------------------------------------------


def build(pattern, st):
    """Records for ``pattern`` and where to cut them: (cuts, pauses)."""
    if pattern == "bytewise":
        st.app(b"a", b"hi!", text(1, 30))
        return range(1, len(st.data)), ()
    if pattern == "header":
        # each piece: the rest of a record and 1..5 bytes of the next header
        st.app(*(text(i, n) for i, n in enumerate((1, 7, 100, 3, 1000, 2, 50, MAX_PLAINTEXT, 5))))
        return [start + 1 + i % 5 for i, (start, _, _) in enumerate(st.records)], ()
    if pattern == "body-pause":
        st.app(text(1, 20), text(2, 5000), text(3, MAX_PLAINTEXT), b"end")
        cuts, pauses = [], []
        for i, (start, end, _) in enumerate(st.records):
            mid = start + 5 + (end - start - 5) // 2
            cuts += [mid, end]
            if i in (1, 2):
                pauses.append(mid)
        return cuts, pauses
    if pattern == "coalesced":
        st.app(*(text(i, 1 + i % 20) for i in range(300)))
        # 200 records in one piece; 50 and 3 bytes of a header; the rest
        return [st.rec(199)[1], st.rec(250)[0] + 3], ()
    if pattern == "max-size":
        st.app(text(1, MAX_PLAINTEXT), b"1", text(2, MAX_PLAINTEXT))
        st.app(text(3, MAX_PLAINTEXT - 1), b"22", text(4, MAX_PLAINTEXT))
        return [
            st.rec(0)[0] + 8191,  # half a max-size record
            st.rec(1)[1],  # its rest and a tiny record
            st.rec(2)[0] + 2,  # 2 bytes of a header
            st.rec(3)[0] + 5 + 9000,  # the rest of a max-size record, half of the next
            st.rec(5)[1],  # its rest, a tiny and a max-size record
        ], ()
    raise ValueError(pattern)


PATTERNS = ("bytewise", "header", "body-pause", "coalesced", "max-size")


@pytest.mark.parametrize("pattern", PATTERNS)
def test_records_cut_anywhere_arrive_without_stalling(
    loop, run, via, side, version, server_ctx, client_ctx, pattern
):
    async def main():
        async with session(loop, via, side, server_ctx, client_ctx) as s:
            assert s.raw.obj.version() == version.replace("_", ".")
            st = Stream(s.raw)
            cuts, pauses = build(pattern, st)
            await deliver(s, st, cuts, pauses)
            assert bytes(s.proto.data) == st.plaintext()
            assert s.proto.events == ["connection_made", "data_received"]
            # the connection still works the other way
            s.proto.transport.write(b"ack")
            assert await s.raw.recv() == b"ack"

    run(main())


def test_a_large_burst_of_records_arrives_in_order(loop, run, via, side, server_ctx, client_ctx):
    # 2 MB of records of every size, sent at once: several socket reads,
    # each ending anywhere in a record
    sizes = [1 + (i * 7919) % MAX_PLAINTEXT for i in range(250)]

    async def main():
        async with session(loop, via, side, server_ctx, client_ctx) as s:
            st = Stream(s.raw)
            st.app(*(text(i, n) for i, n in enumerate(sizes)))
            assert len(st.data) > 2_000_000
            await wait(loop.sock_sendall(s.raw.sock, st.data))
            plain = st.plaintext()
            await until(
                lambda: len(s.proto.data) >= len(plain),
                lambda: f"STALL: {len(plain) - len(s.proto.data)} bytes not delivered",
            )
            assert hashlib.sha256(s.proto.data).digest() == hashlib.sha256(plain).digest()
            assert b"".join(s.proto.chunks) == plain

    run(main())


async def partial_record_behind_a_record(loop, via, server_ctx, client_ctx):
    async with session(loop, via, "client", server_ctx, client_ctx) as s:
        tr = s.proto.transport
        st = Stream(s.raw)
        st.app(b"x", text(1, MAX_PLAINTEXT))
        sizes = []
        # a whole record and half of the next: asyncio's reads take the
        # half record out of the incoming BIO too (into OpenSSL's buffer)
        await deliver(
            s, st, [st.rec(1)[0] + 8000], after=lambda cut: sizes.append(tr.get_read_buffer_size())
        )
        return sizes, bytes(s.proto.data) == st.plaintext()


def test_read_buffer_size_with_a_partial_record_like_asyncio(
    loop, run, via, version, server_ctx, client_ctx
):
    got = run(partial_record_behind_a_record(loop, via, server_ctx, client_ctx))
    want, _ = run_reference(partial_record_behind_a_record, via, server_ctx, client_ctx)
    assert want == ([0, 0], True)
    assert got == want


def test_small_read_buffer_limits_and_partial_records(loop, run, via, server_ctx, client_ctx):
    # set_read_buffer_limits(high=4096) on the TLS transport.  asyncio's
    # reads move a partial record out of the incoming BIO (into OpenSSL's
    # buffer), so the BIO never holds one at or above the mark; if it did,
    # the socket's reading would pause and the rest never come in.
    async def main():
        async with session(loop, via, "client", server_ctx, client_ctx) as s:
            tr = s.proto.transport
            tr.set_read_buffer_limits(high=4096)
            assert tr.get_read_buffer_limits() == (1024, 4096)
            st = Stream(s.raw)
            st.app(b"x", text(1, MAX_PLAINTEXT), b"y", text(2, MAX_PLAINTEXT))
            cuts = [st.rec(1)[0] + 8000, st.rec(3)[0] + 9000]
            await deliver(s, st, cuts, timeout=1.0)
            assert bytes(s.proto.data) == st.plaintext()

    run(main())


# ---------------------------------------------------------------------------
# 2. close_notify right behind application data
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["same-send", "cut-twice", "and-fin"])
def test_close_notify_right_behind_data(
    loop, run, via, side, version, server_ctx, client_ctx, split
):
    async def main():
        async with session(loop, via, side, server_ctx, client_ctx) as s:
            proto = s.proto
            st = Stream(s.raw)
            st.app(b"one", text(5, 3000), b"three")
            st.close_notify()
            alert_start, alert_end = st.rec(-1)
            if split == "and-fin":  # and the TCP FIN right behind
                await wait(loop.sock_sendall(s.raw.sock, st.data))
                s.raw.sock.shutdown(socket.SHUT_WR)
            # cut-twice: inside the last data record; then its rest and 3
            # bytes of the close_notify, and a pause; then the rest
            cuts = [st.rec(-2)[0] + 7, alert_start + 3] if split == "cut-twice" else []

            def check(cut):
                if cut < alert_end:  # the close_notify is not whole yet
                    assert "eof_received" not in proto.events

            if split != "and-fin":
                await deliver(s, st, cuts, cuts[1:], after=check)
            assert await proto.wait_lost() is None
            assert bytes(proto.data) == st.plaintext()
            assert proto.events == [
                "connection_made",
                "data_received",
                "eof_received",
                "connection_lost",
            ]
            # the loop answered with its close_notify and closed the socket
            assert await s.raw.recv() == b""

    run(main())


# ---------------------------------------------------------------------------
# 3. after the handshake: session tickets, the last flight with data,
#    KeyUpdate; TLS 1.2
# ---------------------------------------------------------------------------


def test_session_tickets_cut_into_pieces_then_data(loop, run, via, server_ctx, client_ctx):
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    server_ctx.num_tickets = 4
    held = []

    async def hold(raw, tail):
        held.append(tail)

    async def main():
        async with session(loop, via, "client", server_ctx, client_ctx, last_flight=hold) as s:
            ssl_object = s.proto.transport.get_extra_info("ssl_object")
            assert ssl_object.version() == "TLSv1.3"
            (tickets,) = held
            st = Stream(s.raw)
            st.control(tickets)
            n = len(st.records)
            assert n == 4  # NewSessionTicket records (encrypted: type 23)
            st.app(b"data-1", text(6, 2000), b"data-3")
            cuts = [
                st.rec(0)[0] + 2,  # inside a ticket's header
                st.rec(1)[0] + 20,  # inside a ticket's body, then a pause
                st.rec(n - 1)[1] + 9,  # the other tickets and part of data-1
                st.rec(n + 1)[1],  # the rest of data-1 and the 2000 bytes
            ]
            await deliver(s, st, cuts, [cuts[1]])
            assert bytes(s.proto.data) == st.plaintext()
            # the tickets were taken in
            assert ssl_object.session is not None and ssl_object.session.has_ticket

    run(main())


def test_last_handshake_flight_in_one_segment_with_data(
    loop, run, via, side, version, server_ctx, client_ctx
):
    # The peer's final flight (TLS 1.2 server: ticket, ChangeCipherSpec,
    # Finished, which complete the loop's handshake; TLS 1.3 server: the
    # tickets; TLS 1.3 client: its Finished, which completes the loop's
    # handshake) and three application records in one send: the data must
    # come out of that same read.
    data = [b"first", text(7, 5000), b"third"]
    tails = []

    async def with_data(raw, tail):
        tails.append(tail)
        for pt in data:
            raw.obj.write(pt)
        await wait(loop.sock_sendall(raw.sock, tail + raw.out.read()))

    async def main():
        async with session(loop, via, side, server_ctx, client_ctx, last_flight=with_data) as s:
            want = b"".join(data)
            await until(
                lambda: len(s.proto.data) >= len(want),
                lambda: f"STALL: {len(want) - len(s.proto.data)} bytes not delivered",
            )
            assert s.proto.chunks == [want]
            assert s.proto.events == ["connection_made", "data_received"]
            # TLS 1.2 client: the server's Finished was its last flight
            assert bool(tails[0]) == ((side, version) != ("server", "TLSv1_2"))
            s.proto.transport.write(b"ack")
            assert await s.raw.recv() == b"ack"

    run(main())


def libssl():
    """The process's libssl through ctypes (the one _ssl uses), or None
    where an SSLObject's ``SSL *`` cannot be reached safely."""
    if (
        sys.implementation.name != "cpython"
        or hasattr(sys, "gettotalrefcount")
        or sysconfig.get_config_var("Py_GIL_DISABLED")
    ):
        return None
    with open("/proc/self/maps") as maps:
        path = next((line.split()[-1] for line in maps if "/libssl." in line), None)
    if path is None:
        return None
    lib = ctypes.CDLL(path)
    lib.SSL_get_ex_data.restype = ctypes.c_void_p
    lib.SSL_get_ex_data.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.SSL_key_update.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.SSL_renegotiate.argtypes = [ctypes.c_void_p]
    lib.SSL_do_handshake.argtypes = [ctypes.c_void_p]
    return lib


def ssl_pointer(lib, obj):
    """The ``SSL *`` of an ``ssl.SSLObject`` (skips the test if unsure)."""
    raw = obj._sslobj
    word = ctypes.sizeof(ctypes.c_void_p)
    # _ssl's PySSLSocket: PyObject_HEAD, Socket (NULL over BIOs), SSL *;
    # the SSL's app data points back at the PySSLSocket.
    sock_field, ptr = (ctypes.c_void_p.from_address(id(raw) + k * word).value for k in (2, 3))
    if sock_field or not ptr or lib.SSL_get_ex_data(ptr, 0) != id(raw):
        pytest.skip("the SSL * of an SSLObject cannot be found")
    return ptr


def key_updater():
    """``key_update(sslobject, requested)``: makes the ``ssl.SSLObject``
    send a TLS 1.3 KeyUpdate (``SSL_key_update``: the ssl module has no API
    for it), or None where that cannot be done."""
    lib = libssl()
    if lib is None:
        return None

    def key_update(obj, requested):
        ptr = ssl_pointer(lib, obj)
        assert lib.SSL_key_update(ptr, int(requested)) == 1
        assert lib.SSL_do_handshake(ptr) == 1

    return key_update


def test_key_update_after_handshake(loop, run, via, side, server_ctx, client_ctx):
    key_update = key_updater()
    if key_update is None:
        pytest.skip("SSL_key_update is not reachable")
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_3

    async def main():
        proto = Chunks(loop, echo=True)
        async with session(loop, via, side, server_ctx, client_ctx, proto=proto) as s:
            st = Stream(s.raw)

            def update(requested):
                key_update(s.raw.obj, requested)
                ct = s.raw.out.read()
                assert len(record_spans(ct)) == 1
                st.control(ct)

            st.app(b"before")
            update(requested=True)  # the loop must answer with its own
            st.app(b"after-1")
            update(requested=False)
            st.app(text(8, 3000))
            update(requested=True)
            st.app(b"last")
            cuts = [
                st.rec(2)[1],  # data, KeyUpdate, data in one piece
                st.rec(3)[0] + 9,  # a KeyUpdate cut in its body, then a pause
                st.rec(3)[1],  # its rest: no data
                st.rec(5)[0] + 3,  # data and 3 bytes of a KeyUpdate's header
            ]
            await deliver(s, st, cuts, [cuts[1]])
            # the echo comes back under the loop's new keys
            want = st.plaintext()
            assert await raw_read(s.raw, len(want)) == want

    run(main())


async def raw_read(raw, n):
    """Application data from a RawTLS until ``n`` bytes (bounded waits)."""
    got = b""
    while len(got) < n:
        data = await raw.recv()
        assert data, f"close_notify after {len(got)} of {n} bytes"
        got += data
    return got


def test_post_handshake_client_auth(loop, run, via, ca, server_ctx, client_ctx):
    # A TLS 1.3 CertificateRequest after the handshake, cut in two, with
    # data behind it: the loop answers (Certificate, CertificateVerify,
    # Finished) from its read path, without writing anything itself.
    ca.issue_cert("client.example.org", common_name="client.example.org").configure_cert(client_ctx)
    client_ctx.post_handshake_auth = True
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.post_handshake_auth = True
    ca.configure_trust(server_ctx)

    async def main():
        async with session(loop, via, "client", server_ctx, client_ctx) as s:
            raw = s.raw
            assert raw.obj.getpeercert() is None
            raw.obj.verify_client_post_handshake()
            st = Stream(raw)
            st.app(b"who are you?", before=1)  # the CertificateRequest goes with it
            st.app(b"more")
            cuts = [st.rec(0)[0] + 11, st.rec(1)[1]]
            await deliver(s, st, cuts, cuts[:1])
            # the loop's answer arrives with nothing written by the application
            deadline = time.monotonic() + TIMEOUT
            while raw.obj.getpeercert() is None:
                assert time.monotonic() < deadline
                await raw.fill()
                with contextlib.suppress(ssl.SSLWantReadError):
                    assert raw.obj.read(1 << 16) == b""
            subject = dict(x[0] for x in raw.obj.getpeercert()["subject"])
            assert subject["commonName"] == "client.example.org"
            s.proto.transport.write(b"ack")
            assert await raw.recv() == b"ack"

    run(main())


def test_tls12_echo_both_directions(loop, run, via, server_ctx, client_ctx):
    server_ctx.maximum_version = ssl.TLSVersion.TLSv1_2

    async def main():
        factory = Factory(Chunks, loop, echo=True)
        async with tls_pair(loop, via, server_ctx, client_ctx, factory=factory) as pair:
            client, sproto = pair.client, pair.server_proto
            for proto in (client, sproto):
                assert proto.transport.get_extra_info("ssl_object").version() == "TLSv1.2"
            sent = b""
            for msg in (
                b"x",
                text(1, MAX_PLAINTEXT),
                text(2, MAX_PLAINTEXT + 1),
                bytearray(text(3, 100_000)),
                memoryview(text(4, 70_000))[1:-1],
            ):
                client.transport.write(msg)
                sent += bytes(msg)
                assert await client.wait_bytes(len(sent)) == sent
            assert bytes(sproto.data) == sent
            sproto.transport.write(b"from the server")
            sent += b"from the server"
            assert await client.wait_bytes(len(sent)) == sent
            client.transport.close()
            assert await client.wait_lost() is None
            assert await sproto.wait_lost() is None
            assert bytes(sproto.data) == sent[: -len(b"from the server")]

    run(main())


async def renegotiation_scenario(loop, via, server_ctx, client_ctx):
    lib = libssl()
    async with session(loop, via, "client", server_ctx, client_ctx) as s:
        tr, raw = s.proto.transport, s.raw
        assert raw.obj.version() == "TLSv1.2"
        # the server asks for a new handshake (HelloRequest)
        ptr = ssl_pointer(lib, raw.obj)
        assert lib.SSL_renegotiate(ptr) == 1
        assert lib.SSL_do_handshake(ptr) == 1
        await raw.flush()
        await raw.fill()  # the loop's new ClientHello: it is renegotiating
        # SSLWantReadError from SSLObject.write: asyncio queues the data
        tr.write(b"during-1|")
        tr.write(memoryview(b"during-2|"))
        queued = tr.get_write_buffer_size()
        # the server's reads drive its side of the handshake; the loop
        # writes the queued data once its side is done
        during = await raw_read(raw, 18)
        tr.write(b"after|")
        after = await raw_read(raw, 6)
        await raw.send(b"from the server")
        await s.proto.wait_bytes(15)
        return queued, during, after, bytes(s.proto.data), s.proto.events


def test_writes_during_tls12_renegotiation(loop, run, via, server_ctx, client_ctx):
    if libssl() is None:
        pytest.skip("SSL_renegotiate is not reachable")
    server_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    got = run(renegotiation_scenario(loop, via, server_ctx, client_ctx))
    want, contexts = run_reference(renegotiation_scenario, via, server_ctx, client_ctx)
    assert contexts == []
    assert got == want
    queued, during, after, received, _ = got
    assert queued >= 18
    assert (during, after, received) == (b"during-1|during-2|", b"after|", b"from the server")


# ---------------------------------------------------------------------------
# 4. the user's SSLObject class
# ---------------------------------------------------------------------------


def counting_class(log):
    """An ssl.SSLObject subclass logging each read and write call."""

    class CountingSSLObject(ssl.SSLObject):
        def read(self, *args):
            try:
                got = super().read(*args)
            except ssl.SSLError as exc:
                log.append(("read", args[0], type(exc).__name__))
                raise
            log.append(("read", args[0], got if isinstance(got, int) else len(got)))
            return got

        def write(self, data):
            n = super().write(data)
            log.append(("write", n))
            return n

    return CountingSSLObject


class EchoBuf(Chunks, asyncio.BufferedProtocol):
    """An echoing BufferedProtocol with a small buffer (a memoryview: see
    test_tls.BufRecorder)."""

    def __init__(self, loop, size=1000):
        super().__init__(loop)
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)

    def get_buffer(self, sizehint):
        return self.view

    def buffer_updated(self, nbytes):
        data = bytes(self.buf[:nbytes])
        self.chunks.append(data)
        self._event("data_received")
        self.data += data
        self.transport.write(data)
        self._wake()


async def user_sslobject_scenario(loop, via, kind, server_ctx, client_ctx):
    log = []
    client_ctx.sslobject_class = cls = counting_class(log)
    proto = Chunks(loop, echo=True) if kind == "protocol" else EchoBuf(loop)
    async with session(loop, via, "client", server_ctx, client_ctx, proto=proto) as s:
        assert isinstance(proto.transport.get_extra_info("ssl_object"), cls)
        st = Stream(s.raw)
        cuts, _ = build("header", st)
        await deliver(s, st, cuts, chunks=kind == "protocol")
        want = st.plaintext()
        assert await raw_read(s.raw, len(want)) == want
        assert bytes(proto.data) == want
        return list(log)


@pytest.mark.parametrize("kind", ["protocol", "buffered"])
def test_user_sslobject_class_is_used(loop, run, via, server_ctx, client_ctx, kind):
    # The pump uses the user's read/write (asyncio's own read path): the
    # same calls, with the same results, as asyncio makes.
    got = run(user_sslobject_scenario(loop, via, kind, server_ctx, client_ctx))
    want, contexts = run_reference(user_sslobject_scenario, via, kind, server_ctx, client_ctx)
    assert contexts == []
    assert sum(1 for c in got if c[0] == "read" and isinstance(c[2], int) and c[2] > 0) >= 9
    assert sum(1 for c in got if c[0] == "write") >= 9
    assert got == want


async def failing_read_scenario(loop, via, server_ctx, client_ctx):
    armed = []

    class FailingSSLObject(ssl.SSLObject):
        def read(self, *args):
            if armed:
                raise RuntimeError("the user's read failed")
            return super().read(*args)

    client_ctx.sslobject_class = FailingSSLObject
    async with session(loop, via, "client", server_ctx, client_ctx) as s:
        armed.append(True)
        await s.raw.send(b"data")
        exc = await s.proto.wait_lost()
        return s.proto.events, describe(exc)


def test_user_sslobject_read_error_is_fatal_like_asyncio(
    loop, run, loop_errors, via, server_ctx, client_ctx
):
    got = run(failing_read_scenario(loop, via, server_ctx, client_ctx))
    want, contexts = run_reference(failing_read_scenario, via, server_ctx, client_ctx)
    assert got == want
    assert summarize(loop_errors) == summarize(contexts)
    assert [c["message"] for c in contexts] == ["Fatal error on SSL protocol"]


# ---------------------------------------------------------------------------
# 5. set_protocol between Protocol and BufferedProtocol
# ---------------------------------------------------------------------------


class Copying(Chunks):
    def __init__(self, loop, name, sink):
        super().__init__(loop)
        self.name = name
        self.sink = sink

    def data_received(self, data):
        super().data_received(data)
        self.sink.got(self, data)


class Buffering(Copying, asyncio.BufferedProtocol):
    def __init__(self, loop, name, sink, size):
        super().__init__(loop, name, sink)
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)

    def get_buffer(self, sizehint):
        return self.view

    def buffer_updated(self, nbytes):
        self.sink.got(self, bytes(self.buf[:nbytes]))


class Sink:
    """What every protocol received, in order; switches the transport's
    protocol when the total passes a threshold of ``plan``."""

    def __init__(self, plan):
        self.data = bytearray()
        self.log = []
        self.plan = list(plan)
        self.transport = None

    def got(self, proto, data):
        self.log.append((proto.name, len(data)))
        self.data += data
        while self.plan and len(self.data) >= self.plan[0][0]:
            _, nxt = self.plan.pop(0)
            self.switch(nxt)

    def switch(self, proto):
        self.log.append(("switch to", proto.name, len(self.data)))
        self.transport.set_protocol(proto)
        assert self.transport.get_protocol() is proto


SWITCH_SIZES = (700, 2500, 1, 4000, MAX_PLAINTEXT, 10, 999, 1001, 5000, 3, 12000, 800, 9000, 64)


async def switching_scenario(loop, via, server_ctx, client_ctx):
    sink = Sink([])
    first = Copying(loop, "copy-a", sink)
    buf1000 = Buffering(loop, "buf-1000", sink, 1000)
    other = Copying(loop, "copy-b", sink)
    buf333 = Buffering(loop, "buf-333", sink, 333)
    # switched from inside data_received / buffer_updated (from a full
    # buffer: the SSLObject holds more of the record for the next one)
    sink.plan = [(3000, buf1000), (9000, other), (30000, first), (45000, other)]
    async with session(loop, via, "client", server_ctx, client_ctx, proto=first) as s:
        sink.transport = s.proto.transport
        st = Stream(s.raw)
        st.app(*(text(i, n) for i, n in enumerate(SWITCH_SIZES)))
        cuts = [st.rec(1)[0] + 40, st.rec(4)[0] + 5000, st.rec(8)[1] - 1, st.rec(11)[0] + 2]

        def from_outside(cut):  # and between reads
            if cut == cuts[2]:
                sink.switch(buf333)
            elif cut == cuts[3]:
                sink.switch(buf1000)

        await deliver(
            s, st, cuts, chunks=False, received=lambda: len(sink.data), after=from_outside
        )
        sink.switch(first)
        plain = st.plaintext()
        assert sink.data == plain
        assert not sink.plan
        return sink.log


def test_set_protocol_between_protocol_and_buffered_protocol(
    loop, run, via, server_ctx, client_ctx
):
    got = run(switching_scenario(loop, via, server_ctx, client_ctx))
    want, contexts = run_reference(switching_scenario, via, server_ctx, client_ctx)
    assert contexts == []
    assert {name for name, *_ in got} >= {"copy-a", "copy-b", "buf-1000", "buf-333"}
    assert got == want


class Hinted(Buffering):
    def get_buffer(self, sizehint):
        self.sink.log.append((self.name, "sizehint", sizehint))
        return super().get_buffer(sizehint)


async def sizehint_scenario(loop, via, server_ctx, client_ctx):
    sink = Sink([])
    first = Copying(loop, "copy", sink)
    buf = Hinted(loop, "buf", sink, 4000)
    sink.plan = [(1, buf)]  # from the first data_received on
    async with session(loop, via, "client", server_ctx, client_ctx, proto=first) as s:
        sink.transport = s.proto.transport
        st = Stream(s.raw)
        st.app(b"x", text(1, MAX_PLAINTEXT))
        # a whole record and half of the next, then the rest
        await deliver(s, st, [st.rec(1)[0] + 8000], chunks=False, received=lambda: len(sink.data))
        sink.switch(first)
        assert sink.data == st.plaintext()
        return sink.log


def test_buffered_protocol_sizehint_like_asyncio(loop, run, via, server_ctx, client_ctx):
    # get_buffer(sizehint): asyncio passes what the incoming BIO holds
    got = run(sizehint_scenario(loop, via, server_ctx, client_ctx))
    want, contexts = run_reference(sizehint_scenario, via, server_ctx, client_ctx)
    assert contexts == []
    assert any(entry[1] == "sizehint" for entry in want)
    assert got == want


# ---------------------------------------------------------------------------
# 6. the application transport's write()
# ---------------------------------------------------------------------------


def test_write_rejects_what_is_not_bytes_like(loop, run, via, server_ctx, client_ctx):
    class SubBytes(bytes):
        pass

    class SubBytearray(bytearray):
        pass

    async def main():
        async with loop_client_raw_server(loop, via, server_ctx, client_ctx) as (client, raw):
            tr = client.transport
            for bad in (1, "text", None, 1.5, [b"a"], array.array("b", b"ab"), bytearray):
                with pytest.raises(TypeError) as info:
                    tr.write(bad)
                want = f"data: expecting a bytes-like instance, got {type(bad).__name__}"
                assert str(info.value) == want
            with pytest.raises(TypeError) as info:
                tr.write(data="text")
            assert str(info.value) == "data: expecting a bytes-like instance, got str"
            tr.write(data=b"keyword|")
            tr.write(SubBytes(b"bytes subclass|"))
            tr.write(SubBytearray(b"bytearray subclass"))
            want = b"keyword|bytes subclass|bytearray subclass"
            assert await raw_read(raw, len(want)) == want
            assert not tr.is_closing()
            assert client.events == ["connection_made"]

    run(main())


def test_empty_writes_do_nothing(loop, run, caplog, via, server_ctx, client_ctx):
    empties = (
        b"",
        bytearray(),
        memoryview(b""),
        memoryview(b"abc")[3:],
        memoryview(bytearray(8))[:0],
    )

    async def main():
        async with loop_client_raw_server(loop, via, server_ctx, client_ctx) as (client, raw):
            tr = client.transport
            for data in empties:
                tr.write(data)
            assert tr.get_write_buffer_size() == 0
            tr.write(b"x")
            assert await raw.recv() == b"x"
            tr.close()
            # none of these counts towards "SSL connection is closed"
            for _ in range(10):
                for data in empties:
                    tr.write(data)
            assert await raw.recv() == b""  # close_notify, nothing before it
            await raw.unwrap()
            assert await client.wait_lost() is None
            for data in empties:
                tr.write(data)
            assert client.events == ["connection_made", "eof_received", "connection_lost"]

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        run(main())
    assert logged(caplog.records) == []


def test_bytes_like_writes_arrive(loop, run, via, server_ctx, client_ctx):
    ints = array.array("I", range(1000))

    async def main():
        async with loop_client_raw_server(loop, via, server_ctx, client_ctx) as (client, raw):
            tr = client.transport
            want = b""
            changing = bytearray(b"as written|")
            for data in (
                bytearray(b"bytearray|"),
                memoryview(b"--memoryview slice|--")[2:-2],
                memoryview(bytearray(b"memoryview of a bytearray|")),
                memoryview(ints),  # itemsize 4: len() is 1000, 4000 bytes
                memoryview(bytes(range(12))).cast("B", (3, 4)),  # 2-D
                memoryview(text(9, 100_000))[5:],  # several records
                changing,
            ):
                tr.write(data)
                want += bytes(data) if not isinstance(data, memoryview) else data.tobytes()
            changing[:] = b"CHANGED!!!|"  # encrypted at once: not sent
            tr.writelines([b"lines:", bytearray(b"bytearray,"), memoryview(b"memoryview|")])
            want += b"lines:bytearray,memoryview|"
            assert await raw_read(raw, len(want)) == want
            assert tr.get_write_buffer_size() == 0

    run(main())


async def non_contiguous_write(loop, via, server_ctx, client_ctx):
    async with loop_client_raw_server(loop, via, server_ctx, client_ctx) as (client, raw):
        tr = client.transport
        try:
            tr.write(memoryview(b"abcdef")[::2])
            raised = None
        except Exception as exc:  # compared with asyncio's
            raised = describe(exc)
        exc = await client.wait_lost()
        return raised, client.events, describe(exc), tr.is_closing(), tr.get_write_buffer_size()


def test_non_contiguous_memoryview_write_like_asyncio(
    loop, run, loop_errors, via, server_ctx, client_ctx
):
    # SSLObject.write raises BufferError: a fatal error, as in asyncio
    got = run(non_contiguous_write(loop, via, server_ctx, client_ctx))
    want, contexts = run_reference(non_contiguous_write, via, server_ctx, client_ctx)
    assert got[:4] == want[:4]
    assert summarize(loop_errors) == summarize(contexts)
    assert [c["message"] for c in contexts] == ["Fatal error on SSL protocol"]


def test_write_buffer_size_after_a_failed_write_like_asyncio(
    loop, run, loop_errors, via, server_ctx, client_ctx
):
    # asyncio counts the data of a write that failed in
    # get_write_buffer_size() (it was added to the backlog's size first)
    got = run(non_contiguous_write(loop, via, server_ctx, client_ctx))
    want, _ = run_reference(non_contiguous_write, via, server_ctx, client_ctx)
    assert len(loop_errors) == 1
    assert got[4] == want[4]


def test_writes_before_the_handshake_completes(loop, run, caplog, via, server_ctx, client_ctx):
    # ssl=: writes in connection_made (the state is WRAPPED, nothing was
    # read yet); start_tls: writes to the transport start_tls will return,
    # during the handshake (asyncio queues them) and before it started
    # (asyncio drops them).
    early = (b"early-1|", bytearray(b"early-2|"), memoryview(b"early-3|"), b"")

    class Early(Recorder):
        size = None

        def connection_made(self, transport):
            super().connection_made(transport)
            for data in early:
                transport.write(data)
            self.size = transport.get_write_buffer_size()

    async def main():
        with tcp_pair() as (csock, ssock):
            raw = RawTLS(loop, ssock, server_ctx, server_side=True)
            if via == "ssl":
                client = Early(loop)
                connect = loop.create_connection(
                    lambda: client, sock=csock, ssl=client_ctx, server_hostname=HOSTNAME
                )
                (tr, _), _ = await wait(asyncio.gather(connect, raw.handshake()))
                assert client.size == 0  # encrypted and handed to the socket
            else:
                client = Recorder(loop)
                plain, _ = await wait(loop.create_connection(lambda: client, sock=csock))
                upgrade = asyncio.ensure_future(
                    loop.start_tls(plain, client, client_ctx, server_hostname=HOSTNAME)
                )
                try:
                    await until(lambda: plain.get_protocol() is not client, lambda: "no start_tls")
                    app = plain.get_protocol()._app_transport  # what start_tls will return
                    # before the SSLProtocol's connection_made (UNWRAPPED):
                    # asyncio drops the write
                    app.write(b"dropped|")
                    await raw.fill()  # the ClientHello: the loop is in its handshake
                    for data in early:
                        app.write(data)
                    assert app.get_write_buffer_size() >= 24  # queued
                    tr, _ = await wait(asyncio.gather(upgrade, raw.handshake()))
                finally:
                    upgrade.cancel()
                assert tr is app
                client.transport = tr
            try:
                tr.write(b"late")
                assert await raw_read(raw, 28) == b"early-1|early-2|early-3|late"
                tr.close()
                assert await raw.recv() == b""
                await raw.unwrap()
                assert await client.wait_lost() is None
            finally:
                if not client.lost.done():
                    tr.abort()
                    await asyncio.wait([client.lost], timeout=TIMEOUT)

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        run(main())
    assert logged(caplog.records) == []


async def writes_after_close(loop, via, server_ctx, client_ctx):
    async with loop_client_raw_server(loop, via, server_ctx, client_ctx) as (client, raw):
        tr = client.transport
        tr.write(b"before")
        tr.close()
        for i in range(7):  # while the shutdown runs
            tr.write(b"x%d" % i)
        tr.write(b"")
        tr.write(bytearray(b"ba"))
        tr.write(memoryview(b"mv"))
        assert await raw.recv() == b"before"
        assert await raw.recv() == b""
        await raw.unwrap()
        assert await client.wait_lost() is None
        for _ in range(3):  # after connection_lost
            tr.write(b"late")
        return client.events


def test_writes_after_close_warn_like_asyncio(loop, run, caplog, via, server_ctx, client_ctx):
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        got = run(writes_after_close(loop, via, server_ctx, client_ctx))
        got_logs = logged(caplog.records)
        caplog.clear()
        want, contexts = run_reference(writes_after_close, via, server_ctx, client_ctx)
        want_logs = logged(caplog.records)
    assert got == want
    assert contexts == []
    assert ("WARNING", "SSL connection is closed", None) in want_logs
    assert got_logs == want_logs


async def write_after_second_close(loop, via, server_ctx, client_ctx):
    async with loop_client_raw_server(loop, via, server_ctx, client_ctx) as (client, raw):
        tr = client.transport
        tr.close()
        tr.close()  # asyncio: drops the transport's SSLProtocol
        try:
            tr.write(b"x")
            raised = None
        except Exception as exc:  # compared with asyncio's
            raised = describe(exc)
        assert await raw.recv() == b""
        await raw.unwrap()
        assert await client.wait_lost() is None
        return raised


def test_write_after_a_second_close_like_asyncio(loop, run, caplog, via, server_ctx, client_ctx):
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        got = run(write_after_second_close(loop, via, server_ctx, client_ctx))
        got_logs = logged(caplog.records)
        caplog.clear()
        want, contexts = run_reference(write_after_second_close, via, server_ctx, client_ctx)
        want_logs = logged(caplog.records)
    assert contexts == []
    assert got == want
    assert got_logs == want_logs


# ---------------------------------------------------------------------------
# errors in the read path, behind good records
# ---------------------------------------------------------------------------


async def bad_record_behind_data(loop, via, split, server_ctx, client_ctx):
    async with session(loop, via, "client", server_ctx, client_ctx) as s:
        st = Stream(s.raw)
        st.app(b"good-1", text(3, 2000))
        st.control(b"\x17\x03\x03\x00\x20" + bytes(32))  # does not decrypt
        if split == "same-send":
            await wait(loop.sock_sendall(s.raw.sock, st.data))
        else:  # the good records and 10 bytes of the bad one, then the rest
            cut = st.rec(2)[0] + 10
            await wait(loop.sock_sendall(s.raw.sock, st.data[:cut]))
            await s.proto.wait_bytes(2006)
            await wait(loop.sock_sendall(s.raw.sock, st.data[cut:]))
        exc = await s.proto.wait_lost()
        return s.proto.events, digest(s.proto.chunks), describe(exc)


@pytest.mark.parametrize("split", ["same-send", "inside-bad-record"])
def test_bad_record_behind_good_records(loop, run, caplog, via, server_ctx, client_ctx, split):
    # asyncio drops the plaintext of a read that ends in a bad record
    # (the SSLError leaves _do_read__copied before data_received); an
    # SSLError is an OSError: connection_lost(exc), a debug log with the
    # traceback, no exception-handler call.
    loop.set_debug(True)
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        got = run(bad_record_behind_data(loop, via, split, server_ctx, client_ctx))
        got_logs = logged(caplog.records)
        caplog.clear()
        want, contexts = run_reference(
            bad_record_behind_data, via, split, server_ctx, client_ctx, debug=True
        )
        want_logs = logged(caplog.records)
    assert got == want
    assert contexts == []
    assert got_logs == want_logs
    assert ("DEBUG", "Fatal error on SSL protocol", ssl.SSLError) in got_logs
    assert got[2][0] is ssl.SSLError


BAD_HEADERS = {
    # longer than OpenSSL takes (TLS 1.2: 2^14 + 320, TLS 1.3: 2^14 + 256),
    # within the record tracker's limit (2^14 + 2048)
    "too-long": b"\x17\x03\x03" + (MAX_PLAINTEXT + 321).to_bytes(2, "big"),
    "wrong-version": b"\x17\x03\x01\x00\x20",  # TLS 1.0's after a TLS 1.2/1.3 handshake
}


async def bad_header_behind_data(loop, via, header, server_ctx, client_ctx):
    async with session(loop, via, "client", server_ctx, client_ctx) as s:
        st = Stream(s.raw)
        st.app(b"good", text(3, 2000))
        # whole records and a header OpenSSL rejects as soon as it reads it;
        # its body never comes
        await wait(loop.sock_sendall(s.raw.sock, st.data + BAD_HEADERS[header]))
        try:
            exc = describe(await s.proto.wait_lost(timeout=0.5))
        except TimeoutError:
            exc = "still open after 0.5 s"
        return list(s.proto.events), digest(s.proto.chunks), exc


@pytest.mark.parametrize("header", list(BAD_HEADERS))
def test_bad_record_header_behind_good_records(loop, run, version, server_ctx, client_ctx, header):
    # asyncio reads until SSLWantReadError, so OpenSSL sees the header at
    # once: connection_lost(SSLError), the read's plaintext dropped.
    got = run(bad_header_behind_data(loop, "ssl", header, server_ctx, client_ctx))
    want, contexts = run_reference(bad_header_behind_data, "ssl", header, server_ctx, client_ctx)
    assert contexts == []
    assert want[2][0] is ssl.SSLError
    assert got == want


# ---------------------------------------------------------------------------
# 7. pause_reading on the TLS transport
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("end", ["open", "close_notify", "tcp_eof"])
def test_pause_reading_holds_records_until_resume(
    loop, run, via, side, server_ctx, client_ctx, end
):
    async def main():
        async with session(loop, via, side, server_ctx, client_ctx) as s:
            proto = s.proto
            tr = proto.transport
            st = Stream(s.raw)
            st.app(b"first")
            await deliver(s, st)
            tr.pause_reading()
            assert not tr.is_reading()
            st.app(text(1, 3000), b"two", text(2, MAX_PLAINTEXT), b"three")
            if end == "close_notify":
                st.close_notify()
            prev = s.sent
            for cut in (st.rec(1)[0] + 100, st.rec(3)[0] + 4, st.rec(3)[1], len(st.data)):
                await wait(loop.sock_sendall(s.raw.sock, st.data[prev:cut]))
                await drained(s)  # read into the incoming BIO
                prev = cut
            if end == "tcp_eof":
                s.raw.sock.shutdown(socket.SHUT_WR)
            await asyncio.sleep(PAUSE)
            assert proto.chunks == [b"first"]
            assert proto.events == ["connection_made", "data_received"]
            assert tr.get_read_buffer_size() > 0
            tr.resume_reading()
            assert tr.is_reading()
            plain = st.plaintext()
            await until(
                lambda: len(proto.data) >= len(plain),
                lambda: f"STALL: {len(plain) - len(proto.data)} bytes not delivered",
            )
            assert proto.chunks == [b"first", plain[5:]]  # the held records in one call
            if end == "open":
                await asyncio.sleep(0.01)
                assert proto.events == ["connection_made", "data_received"]
                assert tr.get_read_buffer_size() == 0
            else:
                assert await proto.wait_lost() is None
                assert proto.events == [
                    "connection_made",
                    "data_received",
                    "eof_received",
                    "connection_lost",
                ]

    run(main())


def test_pause_reading_while_the_peer_keeps_sending(loop, run, via, side, server_ctx, client_ctx):
    # 3 MB while paused: the loop reads the socket into the incoming BIO up
    # to the high-water mark, then stops reading it; after resume_reading
    # everything arrives, in order.
    async def main():
        async with session(loop, via, side, server_ctx, client_ctx) as s:
            proto = s.proto
            tr = proto.transport
            tr.pause_reading()
            st = Stream(s.raw)
            st.app(*(text(i, MAX_PLAINTEXT) for i in range(190)))
            sender = asyncio.ensure_future(loop.sock_sendall(s.raw.sock, st.data))
            try:
                low, high = tr.get_read_buffer_limits()
                await until(
                    lambda: tr.get_read_buffer_size() >= high,
                    lambda: f"only {tr.get_read_buffer_size()} bytes read while paused",
                )
                await asyncio.sleep(PAUSE)
                held = tr.get_read_buffer_size()
                assert high <= held <= high + 256 * 1024  # one socket read past the mark
                assert proto.chunks == []
                tr.resume_reading()
                plain = st.plaintext()
                await until(
                    lambda: len(proto.data) >= len(plain),
                    lambda: f"STALL: {len(plain) - len(proto.data)} bytes not delivered",
                )
                await wait(sender)
            finally:
                sender.cancel()
            assert hashlib.sha256(proto.data).digest() == hashlib.sha256(plain).digest()
            assert tr.is_reading()

    run(main())
