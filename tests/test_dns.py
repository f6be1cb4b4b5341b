"""loop.getaddrinfo / loop.getnameinfo.

asyncio 3.11 runs socket.getaddrinfo / socket.getnameinfo in the default
executor, so results and errors are exactly the socket module's.  Only
loopback names and numeric hosts are used (no network access).
"""

import asyncio
import socket

import pytest
from io_helpers import TIMEOUT, has_ipv6_loopback


def wait(coro):
    return asyncio.wait_for(coro, TIMEOUT)


def _error_of(fn, *args):
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - we compare with the loop's
        return exc
    raise AssertionError(f'{fn.__name__}{args!r} did not raise')


# ---------------------------------------------------------------------------
# getaddrinfo
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('host, port', [
    ('127.0.0.1', 80),
    ('127.0.0.1', 0),
    ('127.0.0.1', None),
    ('127.0.0.1', '8080'),
    ('localhost', 443),
    (None, 1234),
])
def test_getaddrinfo_equals_socket_getaddrinfo(loop, run, host, port):
    got = run(wait(loop.getaddrinfo(host, port)))
    assert got == socket.getaddrinfo(host, port)
    assert isinstance(got, list)
    assert got, 'expected at least one address'
    for family, type_, _proto, _canonname, _sockaddr in got:
        assert isinstance(family, socket.AddressFamily)
        assert isinstance(type_, socket.SocketKind)


def test_getaddrinfo_numeric_host(loop, run):
    got = run(wait(loop.getaddrinfo('127.0.0.1', 80, type=socket.SOCK_STREAM)))
    assert got == [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP,
                    '', ('127.0.0.1', 80))]


def test_getaddrinfo_localhost_includes_ipv4_loopback(loop, run):
    got = run(wait(loop.getaddrinfo('localhost', 80, type=socket.SOCK_STREAM)))
    assert (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, '',
            ('127.0.0.1', 80)) in got


def test_getaddrinfo_ipv6_numeric(loop, run):
    if not has_ipv6_loopback():
        pytest.skip('no IPv6 loopback')
    got = run(wait(loop.getaddrinfo('::1', 80, family=socket.AF_INET6,
                                    type=socket.SOCK_STREAM)))
    assert got == [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP,
                    '', ('::1', 80, 0, 0))]


@pytest.mark.parametrize('kw', [
    dict(family=socket.AF_INET),
    dict(type=socket.SOCK_STREAM),
    dict(type=socket.SOCK_DGRAM),
    dict(proto=socket.IPPROTO_UDP),
    dict(family=socket.AF_INET, type=socket.SOCK_DGRAM,
         proto=socket.IPPROTO_UDP),
    dict(flags=socket.AI_PASSIVE),
    dict(flags=socket.AI_NUMERICHOST),
    dict(flags=socket.AI_NUMERICSERV),
    dict(flags=socket.AI_CANONNAME),
    dict(family=socket.AF_INET6, flags=socket.AI_V4MAPPED),
], ids=lambda kw: ','.join(f'{k}={int(v)}' for k, v in kw.items()))
def test_getaddrinfo_passes_arguments_through(loop, run, kw):
    host = '127.0.0.1'
    try:
        expected = socket.getaddrinfo(host, 80, **kw)
    except socket.gaierror as exc:
        with pytest.raises(socket.gaierror) as info:
            run(wait(loop.getaddrinfo(host, 80, **kw)))
        assert info.value.args == exc.args
    else:
        assert run(wait(loop.getaddrinfo(host, 80, **kw))) == expected


def test_getaddrinfo_family_filters(loop, run):
    got = run(wait(loop.getaddrinfo(None, 80, family=socket.AF_INET,
                                    type=socket.SOCK_STREAM,
                                    flags=socket.AI_PASSIVE)))
    assert got == [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP,
                    '', ('0.0.0.0', 80))]


def test_getaddrinfo_arguments_after_port_are_keyword_only(loop):
    with pytest.raises(TypeError, match='positional argument'):
        loop.getaddrinfo('127.0.0.1', 80, socket.AF_INET)


def test_getaddrinfo_numerichost_with_name_raises_gaierror(loop, run):
    expected = _error_of(socket.getaddrinfo, 'localhost', 80, 0, 0, 0,
                         socket.AI_NUMERICHOST)
    with pytest.raises(socket.gaierror) as info:
        run(wait(loop.getaddrinfo('localhost', 80,
                                  flags=socket.AI_NUMERICHOST)))
    assert info.value.errno == socket.EAI_NONAME
    assert info.value.args == expected.args
    assert str(info.value) == str(expected)


def test_getaddrinfo_bad_host_raises_gaierror(loop, run):
    with pytest.raises(socket.gaierror) as info:
        run(wait(loop.getaddrinfo('nonexistent.invalid', 80)))
    assert info.value.errno in (socket.EAI_NONAME, socket.EAI_AGAIN,
                                getattr(socket, 'EAI_NODATA', -5))
    assert isinstance(info.value.strerror, str) and info.value.strerror


def test_getaddrinfo_bad_service_raises_gaierror(loop, run):
    expected = _error_of(socket.getaddrinfo, '127.0.0.1', 'no-such-service',
                         0, socket.SOCK_STREAM)
    with pytest.raises(socket.gaierror) as info:
        run(wait(loop.getaddrinfo('127.0.0.1', 'no-such-service',
                                  type=socket.SOCK_STREAM)))
    assert info.value.args == expected.args


def test_getaddrinfo_bad_port_type(loop, run):
    expected = _error_of(socket.getaddrinfo, '127.0.0.1', 1.5)
    with pytest.raises(type(expected)) as info:
        run(wait(loop.getaddrinfo('127.0.0.1', 1.5)))
    assert str(info.value) == str(expected)


def test_getaddrinfo_many_concurrent(loop, run):
    async def main():
        hosts = ['127.0.0.1', 'localhost'] * 10
        results = await wait(asyncio.gather(
            *(loop.getaddrinfo(h, 80 + i, type=socket.SOCK_STREAM)
              for i, h in enumerate(hosts))))
        for i, (h, res) in enumerate(zip(hosts, results, strict=True)):
            assert res == socket.getaddrinfo(h, 80 + i,
                                             type=socket.SOCK_STREAM)
    run(main())


def test_getaddrinfo_cancel(loop, run):
    async def main():
        task = asyncio.ensure_future(loop.getaddrinfo('localhost', 80))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The loop still resolves afterwards.
        assert await wait(loop.getaddrinfo('127.0.0.1', 80)) == \
            socket.getaddrinfo('127.0.0.1', 80)
    run(main())


def test_getaddrinfo_in_debug_mode(loop, run):
    loop.set_debug(True)
    assert run(wait(loop.getaddrinfo('127.0.0.1', 80))) == \
        socket.getaddrinfo('127.0.0.1', 80)


# ---------------------------------------------------------------------------
# getnameinfo
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('sockaddr, flags', [
    (('127.0.0.1', 80), 0),
    (('127.0.0.1', 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV),
    (('127.0.0.1', 53), socket.NI_DGRAM),
    (('127.0.0.1', 8080), socket.NI_NUMERICSERV),
])
def test_getnameinfo_equals_socket_getnameinfo(loop, run, sockaddr, flags):
    assert run(wait(loop.getnameinfo(sockaddr, flags))) == \
        socket.getnameinfo(sockaddr, flags)


def test_getnameinfo_numeric(loop, run):
    assert run(wait(loop.getnameinfo(
        ('127.0.0.1', 80),
        socket.NI_NUMERICHOST | socket.NI_NUMERICSERV))) == ('127.0.0.1', '80')


def test_getnameinfo_default_flags(loop, run):
    assert run(wait(loop.getnameinfo(('127.0.0.1', 80)))) == \
        socket.getnameinfo(('127.0.0.1', 80), 0)


def test_getnameinfo_ipv6(loop, run):
    if not has_ipv6_loopback():
        pytest.skip('no IPv6 loopback')
    flags = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
    assert run(wait(loop.getnameinfo(('::1', 80, 0, 0), flags))) == \
        ('::1', '80')


@pytest.mark.parametrize('sockaddr, flags', [
    (('127.0.0.1',), 0),
    ('127.0.0.1', 0),
    (('127.0.0.1', 80), 'x'),
    (('not-numeric-host', 80), 0),
])
def test_getnameinfo_errors_are_socket_module_errors(loop, run, sockaddr,
                                                     flags):
    expected = _error_of(socket.getnameinfo, sockaddr, flags)
    with pytest.raises(type(expected)) as info:
        run(wait(loop.getnameinfo(sockaddr, flags)))
    assert str(info.value) == str(expected)
