"""add_reader / remove_reader / add_writer / remove_writer.

Expected behaviour is that of CPython 3.11's selector loop
(selector_events.BaseSelectorEventLoop over selectors.EpollSelector):
level-triggered callbacks, ``remove_*`` returning whether a callback was
registered, asyncio's ValueError / OSError / RuntimeError for bad fds.
"""

import asyncio
import os
import re
import socket

import pytest
from io_helpers import TIMEOUT, Factory, Recorder, socketpair


def _bounded_run(loop, seconds=TIMEOUT):
    """run_forever() with a safety stop; returns True if it had to be used."""
    fired = []

    def safety():
        fired.append(True)
        loop.stop()

    h = loop.call_later(seconds, safety)
    loop.run_forever()
    h.cancel()
    return bool(fired)


def _spin(loop, iterations):
    """Run exactly-ish ``iterations`` loop iterations (sleep(0) each)."""
    async def go():
        for _ in range(iterations):
            await asyncio.sleep(0)
    loop.run_until_complete(go())


class FilenoObject:
    """A minimal object with a fileno() method."""

    def __init__(self, fd):
        self.fd = fd

    def fileno(self):
        return self.fd


@pytest.fixture
def pipe():
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    fds = [r, w]
    yield fds
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


# ---------------------------------------------------------------------------
# level triggering
# ---------------------------------------------------------------------------

def test_reader_reading_one_byte_per_call_is_called_until_drained(loop):
    with socketpair() as (a, b):
        b.send(b'0123456789')
        got = []
        done = loop.create_future()

        def reader():
            got.append(a.recv(1))
            if len(got) == 10:
                loop.remove_reader(a)
                done.set_result(None)

        loop.add_reader(a, reader)
        loop.run_until_complete(asyncio.wait_for(done, TIMEOUT))
        assert b''.join(got) == b'0123456789'
        assert len(got) == 10


def test_reader_not_reading_is_called_every_iteration(loop):
    with socketpair() as (a, b):
        b.send(b'x')
        calls = 0
        ticks = 0

        def reader():
            nonlocal calls
            calls += 1
            if calls == 20:
                loop.remove_reader(a)
                loop.stop()

        def tick():
            nonlocal ticks
            ticks += 1
            loop.call_soon(tick)

        loop.add_reader(a, reader)
        loop.call_soon(tick)
        assert not _bounded_run(loop, 5)
        assert calls == 20
        # Once per loop iteration: as many calls as self-rescheduling ticks.
        assert abs(ticks - calls) <= 2, (ticks, calls)
        # The data is still there: nobody consumed it.
        assert a.recv(10) == b'x'


def test_reader_not_called_again_once_drained(loop):
    with socketpair() as (a, b):
        calls = []
        first = loop.create_future()

        def reader():
            data = a.recv(100)
            calls.append(data)
            if not first.done():
                first.set_result(None)

        loop.add_reader(a, reader)
        _spin(loop, 5)
        assert calls == []          # nothing to read yet
        b.send(b'abc')
        loop.run_until_complete(asyncio.wait_for(first, TIMEOUT))
        loop.run_until_complete(asyncio.sleep(0.02))
        _spin(loop, 5)
        assert calls == [b'abc']    # drained: no further calls
        second = loop.create_future()
        loop.add_reader(a, lambda: (calls.append(a.recv(100)),
                                    second.done() or second.set_result(None)))
        b.send(b'def')
        loop.run_until_complete(asyncio.wait_for(second, TIMEOUT))
        assert calls == [b'abc', b'def']
        assert loop.remove_reader(a) is True


def test_writer_is_level_triggered_and_stops_after_remove(loop):
    with socketpair() as (a, b):
        calls = 0

        def writer():
            nonlocal calls
            calls += 1
            if calls == 5:
                assert loop.remove_writer(a) is True
                loop.stop()

        loop.add_writer(a, writer)
        assert not _bounded_run(loop, 5)
        assert calls == 5
        _spin(loop, 5)
        loop.run_until_complete(asyncio.sleep(0.01))
        assert calls == 5
        assert loop.remove_writer(a) is False


def test_writer_fires_on_writable_socket(loop):
    with socketpair() as (a, b):
        fut = loop.create_future()

        def writer(sock):
            loop.remove_writer(sock)
            n = sock.send(b'ping')
            fut.set_result(n)

        loop.add_writer(a.fileno(), writer, a)
        assert loop.run_until_complete(asyncio.wait_for(fut, TIMEOUT)) == 4
        assert b.recv(10) == b'ping'


def test_writer_not_called_while_socket_full_then_called_when_drained(loop):
    with socketpair() as (a, b):
        # Fill the send buffer of ``a`` completely.
        chunk = b'x' * 65536
        total = 0
        for _ in range(10000):
            try:
                total += a.send(chunk)
            except BlockingIOError:
                break
        else:
            pytest.fail('socket buffer never filled')
        calls = []
        fut = loop.create_future()

        def writer():
            calls.append(1)
            loop.remove_writer(a)
            fut.set_result(None)

        loop.add_writer(a, writer)
        _spin(loop, 5)
        assert calls == []          # not writable while full
        # Drain the peer so that ``a`` becomes writable again.
        received = 0
        for _ in range(100000):
            try:
                data = b.recv(1 << 20)
            except BlockingIOError:
                break
            received += len(data)
        assert received == total
        loop.run_until_complete(asyncio.wait_for(fut, TIMEOUT))
        assert calls == [1]


def test_reader_and_writer_on_same_fd_are_independent(loop):
    with socketpair() as (a, b):
        events = []
        wrote = loop.create_future()
        read = loop.create_future()

        def writer():
            events.append('w')
            assert loop.remove_writer(a) is True
            wrote.set_result(None)

        def reader():
            events.append(('r', a.recv(100)))
            read.set_result(None)

        loop.add_reader(a, reader)
        loop.add_writer(a, writer)
        loop.run_until_complete(asyncio.wait_for(wrote, TIMEOUT))
        _spin(loop, 3)
        assert events == ['w']            # reader only fires on data
        # The reader is still registered after remove_writer().
        b.send(b'data')
        loop.run_until_complete(asyncio.wait_for(read, TIMEOUT))
        assert events == ['w', ('r', b'data')]
        assert loop.remove_writer(a) is False
        assert loop.remove_reader(a) is True
        assert loop.remove_reader(a) is False


def test_remove_writer_keeps_reader_and_vice_versa(loop):
    with socketpair() as (a, b):
        loop.add_reader(a, lambda: None)
        loop.add_writer(a, lambda: None)
        assert loop.remove_reader(a) is True
        # The writer survived the removal of the reader.
        fut = loop.create_future()
        loop.add_writer(a, lambda: fut.done() or fut.set_result('w'))
        assert loop.run_until_complete(asyncio.wait_for(fut, TIMEOUT)) == 'w'
        assert loop.remove_writer(a) is True
        assert loop.remove_writer(a) is False
        assert loop.remove_reader(a) is False


# ---------------------------------------------------------------------------
# pipes
# ---------------------------------------------------------------------------

def test_pipe_reader_and_writer(loop, pipe):
    r, w = pipe
    got = loop.create_future()
    writable = loop.create_future()

    def on_writable():
        loop.remove_writer(w)
        os.write(w, b'through the pipe')
        writable.set_result(None)

    def on_readable():
        loop.remove_reader(r)
        got.set_result(os.read(r, 100))

    loop.add_reader(r, on_readable)
    loop.add_writer(w, on_writable)
    assert loop.run_until_complete(
        asyncio.wait_for(got, TIMEOUT)) == b'through the pipe'
    assert writable.done()


def test_pipe_eof_is_readable_level_triggered(loop, pipe):
    r, w = pipe
    os.write(w, b'last')
    os.close(w)
    pipe.remove(w)
    reads = []

    def on_readable():
        reads.append(os.read(r, 2))
        if len(reads) == 5:
            loop.remove_reader(r)
            loop.stop()

    loop.add_reader(r, on_readable)
    assert not _bounded_run(loop, 5)
    # Data first, then EOF reported again and again (level-triggered).
    assert reads == [b'la', b'st', b'', b'', b'']


# ---------------------------------------------------------------------------
# fd forms, arguments, return values
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('form', ['int', 'socket', 'fileno-object'])
def test_fd_forms_are_interchangeable(loop, form):
    with socketpair() as (a, b):
        target = {'int': a.fileno(), 'socket': a,
                  'fileno-object': FilenoObject(a.fileno())}[form]
        fut = loop.create_future()
        loop.add_reader(target, lambda: fut.done() or fut.set_result(a.recv(10)))
        b.send(b'hi')
        assert loop.run_until_complete(asyncio.wait_for(fut, TIMEOUT)) == b'hi'
        # Removal by the plain fd number finds the registration.
        assert loop.remove_reader(a.fileno()) is True
        assert loop.remove_reader(target) is False


@pytest.mark.parametrize('form', ['int', 'socket', 'fileno-object'])
def test_writer_fd_forms(loop, form):
    with socketpair() as (a, b):
        target = {'int': a.fileno(), 'socket': a,
                  'fileno-object': FilenoObject(a.fileno())}[form]
        fut = loop.create_future()
        loop.add_writer(target, lambda: fut.done() or fut.set_result('w'))
        assert loop.run_until_complete(asyncio.wait_for(fut, TIMEOUT)) == 'w'
        assert loop.remove_writer(target) is True
        assert loop.remove_writer(a.fileno()) is False


def test_remove_returns_false_when_nothing_registered(loop):
    with socketpair() as (a, b):
        assert loop.remove_reader(a) is False
        assert loop.remove_writer(a) is False
        assert loop.remove_reader(a.fileno()) is False
        loop.add_reader(a, lambda: None)
        assert loop.remove_writer(a) is False      # only a reader
        assert loop.remove_reader(a) is True
        loop.add_writer(a, lambda: None)
        assert loop.remove_reader(a) is False      # only a writer
        assert loop.remove_writer(a) is True


def test_add_returns_none(loop):
    with socketpair() as (a, b):
        assert loop.add_reader(a, lambda: None) is None
        assert loop.add_writer(a, lambda: None) is None
        loop.remove_reader(a)
        loop.remove_writer(a)


def test_callback_positional_args(loop):
    with socketpair() as (a, b):
        calls = []
        fut = loop.create_future()

        def reader(*args):
            calls.append(args)
            loop.remove_reader(a)
            fut.set_result(None)

        loop.add_reader(a, reader, 1, 'two', None, (3,))
        b.send(b'x')
        loop.run_until_complete(asyncio.wait_for(fut, TIMEOUT))
        assert calls == [(1, 'two', None, (3,))]

        wcalls = []
        wfut = loop.create_future()

        def writer(*args):
            wcalls.append(args)
            loop.remove_writer(a)
            wfut.set_result(None)

        loop.add_writer(a, writer, 'w', 2)
        loop.run_until_complete(asyncio.wait_for(wfut, TIMEOUT))
        assert wcalls == [('w', 2)]


@pytest.mark.parametrize('method', ['add_reader', 'add_writer'])
def test_context_keyword_not_accepted(loop, method):
    with socketpair() as (a, b):
        with pytest.raises(TypeError,
                           match="unexpected keyword argument 'context'"):
            getattr(loop, method)(a, lambda: None, context=None)
        # Nothing was registered.
        assert loop.remove_reader(a) is False
        assert loop.remove_writer(a) is False


def test_readding_reader_replaces_callback(loop):
    with socketpair() as (a, b):
        old_calls = []
        new_calls = []
        fut = loop.create_future()

        def new():
            new_calls.append(a.recv(10))
            if len(new_calls) == 2:
                loop.remove_reader(a)
                fut.set_result(None)

        loop.add_reader(a, old_calls.append, 'old')
        loop.add_reader(a, new)
        b.send(b'1')
        loop.run_until_complete(asyncio.sleep(0.01))
        b.send(b'2')
        loop.run_until_complete(asyncio.wait_for(fut, TIMEOUT))
        _spin(loop, 3)
        assert old_calls == []
        assert new_calls == [b'1', b'2']


def test_readding_writer_replaces_callback(loop):
    with socketpair() as (a, b):
        old_calls = []
        fut = loop.create_future()

        def new():
            loop.remove_writer(a)
            fut.set_result('new')

        loop.add_writer(a, old_calls.append, 'old')
        loop.add_writer(a, new)
        assert loop.run_until_complete(asyncio.wait_for(fut, TIMEOUT)) == 'new'
        _spin(loop, 3)
        assert old_calls == []


def test_replacing_reader_from_inside_callback(loop):
    with socketpair() as (a, b):
        calls = []
        fut = loop.create_future()

        def second():
            calls.append(('second', a.recv(1)))
            if len(calls) == 3:
                loop.remove_reader(a)
                fut.set_result(None)

        def first():
            calls.append(('first', a.recv(1)))
            loop.add_reader(a, second)

        b.send(b'abc')
        loop.add_reader(a, first)
        loop.run_until_complete(asyncio.wait_for(fut, TIMEOUT))
        assert calls == [('first', b'a'), ('second', b'b'), ('second', b'c')]


def test_remove_reader_from_inside_other_callback_prevents_call(loop):
    # asyncio: removing a reader cancels its handle, so an already-queued
    # call for this iteration does not run.
    with socketpair() as (a, b), socketpair() as (c, d):
        calls = []

        def reader_a():
            calls.append('a')
            loop.remove_reader(a)
            loop.remove_reader(c)
            loop.stop()

        def reader_c():
            calls.append('c')
            loop.remove_reader(a)
            loop.remove_reader(c)
            loop.stop()

        loop.add_reader(a, reader_a)
        loop.add_reader(c, reader_c)
        b.send(b'x')
        d.send(b'y')
        assert not _bounded_run(loop, 5)
        assert calls in (['a'], ['c'])


def test_exception_in_reader_goes_to_handler_and_reader_stays(loop, loop_errors):
    with socketpair() as (a, b):
        calls = []
        fut = loop.create_future()

        def reader():
            calls.append(1)
            if len(calls) == 1:
                raise ZeroDivisionError('boom')
            loop.remove_reader(a)
            fut.set_result(None)

        loop.add_reader(a, reader)
        b.send(b'x')
        loop.run_until_complete(asyncio.wait_for(fut, TIMEOUT))
        assert len(calls) == 2
        assert len(loop_errors) == 1
        ctx = loop_errors[0]
        assert isinstance(ctx['exception'], ZeroDivisionError)
        assert str(ctx['exception']) == 'boom'
        assert ctx['message'].startswith('Exception in callback ')


# ---------------------------------------------------------------------------
# bad file descriptors
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('method', ['add_reader', 'add_writer'])
@pytest.mark.parametrize('bad, message', [
    (-1, 'Invalid file descriptor: -1'),
    (-5, 'Invalid file descriptor: -5'),
    ('abc', "Invalid file object: 'abc'"),
    (None, 'Invalid file object: None'),
    (1.5, 'Invalid file object: 1.5'),
    (FilenoObject(-1), 'Invalid file descriptor: -1'),
], ids=['minus1', 'minus5', 'str', 'None', 'float', 'fileno-minus1'])
def test_add_invalid_fd_raises_value_error(loop, method, bad, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        getattr(loop, method)(bad, lambda: None)


@pytest.mark.parametrize('method', ['remove_reader', 'remove_writer'])
def test_remove_invalid_object_raises_value_error(loop, method):
    with pytest.raises(ValueError, match=re.escape("Invalid file object: 'abc'")):
        getattr(loop, method)('abc')


def test_add_reader_on_closed_socket_object(loop):
    s = socket.socket()
    s.close()
    with pytest.raises(ValueError, match=re.escape('Invalid file descriptor: -1')):
        loop.add_reader(s, lambda: None)
    with pytest.raises(ValueError, match=re.escape('Invalid file descriptor: -1')):
        loop.add_writer(s, lambda: None)


@pytest.mark.parametrize('method', ['add_reader', 'add_writer'])
def test_add_on_closed_int_fd_raises_ebadf(loop, method):
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError) as info:
        getattr(loop, method)(r, lambda: None)
    assert type(info.value) is OSError
    assert info.value.errno == 9           # EBADF
    # The failed registration left nothing behind.
    assert loop.remove_reader(r) is False
    assert loop.remove_writer(r) is False


def test_add_reader_on_regular_file_raises_permission_error(loop, tmp_path):
    # epoll refuses regular files with EPERM.
    path = tmp_path / 'f'
    path.write_bytes(b'data')
    with open(path, 'rb') as f:
        with pytest.raises(PermissionError):
            loop.add_reader(f, lambda: None)
        assert loop.remove_reader(f) is False


def test_remove_reader_after_int_fd_closed(loop, pipe):
    r, w = pipe
    loop.add_reader(r, lambda: None)
    loop.add_writer(w, lambda: None)
    os.close(r)
    os.close(w)
    pipe.clear()
    # The common "close, then unregister" order works and reports True.
    assert loop.remove_reader(r) is True
    assert loop.remove_writer(w) is True
    assert loop.remove_reader(r) is False
    _spin(loop, 2)


def test_remove_reader_after_socket_object_closed(loop):
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        loop.add_reader(a, lambda: None)
        a.close()
        # Found by object identity although fileno() is now -1.
        assert loop.remove_reader(a) is True
        # Once unregistered, the closed object is just an invalid fd.
        with pytest.raises(ValueError,
                           match=re.escape('Invalid file descriptor: -1')):
            loop.remove_reader(a)
    finally:
        a.close()
        b.close()


def test_fd_number_reused_after_close_and_remove(loop):
    r1, w1 = os.pipe()
    loop.add_reader(r1, lambda: None)
    os.close(r1)
    os.close(w1)
    assert loop.remove_reader(r1) is True
    r2, w2 = os.pipe()          # very likely the same numbers again
    try:
        os.set_blocking(r2, False)
        fut = loop.create_future()

        def on_read():
            loop.remove_reader(r2)
            fut.set_result(os.read(r2, 10))

        loop.add_reader(r2, on_read)
        os.write(w2, b'again')
        assert loop.run_until_complete(asyncio.wait_for(fut, TIMEOUT)) == b'again'
    finally:
        os.close(r2)
        os.close(w2)


# ---------------------------------------------------------------------------
# fds owned by transports, closed loop
# ---------------------------------------------------------------------------

def test_fd_used_by_transport_is_refused(loop):
    async def main():
        srv_factory = Factory(Recorder, loop)
        server = await loop.create_server(srv_factory, '127.0.0.1', 0)
        port = server.sockets[0].getsockname()[1]
        tr, pr = await loop.create_connection(
            lambda: Recorder(loop), '127.0.0.1', port)
        try:
            fd = tr.get_extra_info('socket').fileno()
            pattern = f'File descriptor {fd!r} is used by transport '
            for method in ('add_reader', 'add_writer'):
                with pytest.raises(RuntimeError, match=re.escape(pattern)):
                    getattr(loop, method)(fd, lambda: None)
            for method in ('remove_reader', 'remove_writer'):
                with pytest.raises(RuntimeError, match=re.escape(pattern)):
                    getattr(loop, method)(fd)
            # A fileno() object is resolved, and its repr is reported.
            obj = FilenoObject(fd)
            with pytest.raises(RuntimeError, match=re.escape(
                    f'File descriptor {obj!r} is used by transport ')):
                loop.add_reader(obj, lambda: None)
            # The transport keeps working.
            await srv_factory.wait_made()
            tr.write(b'still works')
            assert await srv_factory.protocols[0].wait_bytes(11) == b'still works'
        finally:
            tr.close()
            await pr.wait_lost()
            await srv_factory.close_all()
            server.close()
            await server.wait_closed()

    loop.run_until_complete(main())


def test_closed_loop(loop):
    with socketpair() as (a, b):
        loop.close()
        with pytest.raises(RuntimeError, match='^Event loop is closed$'):
            loop.add_reader(a, lambda: None)
        with pytest.raises(RuntimeError, match='^Event loop is closed$'):
            loop.add_writer(a, lambda: None)
        assert loop.remove_reader(a) is False
        assert loop.remove_writer(a) is False


def test_registrations_survive_stop_and_restart(loop):
    with socketpair() as (a, b):
        got = []

        def reader():
            got.append(a.recv(10))
            loop.stop()

        loop.add_reader(a, reader)
        b.send(b'1')
        assert not _bounded_run(loop, 5)
        b.send(b'2')
        assert not _bounded_run(loop, 5)
        assert got == [b'1', b'2']
        assert loop.remove_reader(a) is True


def test_many_fds_watched_at_once(loop):
    pairs = [socket.socketpair() for _ in range(50)]
    try:
        seen = set()
        fut = loop.create_future()

        def reader(i, sock):
            assert sock.recv(10) == str(i).encode()
            loop.remove_reader(sock)
            seen.add(i)
            if len(seen) == len(pairs):
                fut.set_result(None)

        for i, (a, _) in enumerate(pairs):
            a.setblocking(False)
            loop.add_reader(a, reader, i, a)
        for i, (_, b) in enumerate(reversed(pairs)):
            b.send(str(len(pairs) - 1 - i).encode())
        loop.run_until_complete(asyncio.wait_for(fut, TIMEOUT))
        assert seen == set(range(50))
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_cancelled_reader_is_released_where_its_finalizer_may_use_the_loop(loop):
    # A cancelled reader leaves the fd table when its fd fires (asyncio's
    # _process_events); what it held is released then, and a finalizer
    # running at that moment may call the loop.
    seen = []
    a, b = socket.socketpair()
    a.setblocking(False)

    class FdObj:
        def __init__(self, fd):
            self.fd = fd

        def fileno(self):
            return self.fd

        def __del__(self):
            loop.call_soon(seen.append, 'fileobj released')

    try:
        h = loop._add_reader(FdObj(a.fileno()), lambda: None)
        h.cancel()
        del h
        b.send(b'x')
        loop.run_until_complete(asyncio.sleep(0.05))
        assert seen == ['fileobj released']
    finally:
        a.close()
        b.close()
