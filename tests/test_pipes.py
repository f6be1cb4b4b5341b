"""Pipe transports: ``loop.connect_read_pipe`` / ``loop.connect_write_pipe``
over an os.pipe, a FIFO, a socket pair and a pty master.

Expected behaviour: CPython 3.11's Unix loop (unix_events.py
_UnixReadPipeTransport / _UnixWritePipeTransport, transports.py
_FlowControlMixin, base_events.py connect_read_pipe / connect_write_pipe):

* A transport is made only for a FIFO, a socket or a character device;
  anything else (a regular file) is refused with a ValueError, the file is
  left open and ``connection_made`` is never called.  The transport sets
  the fd non-blocking; ``connect_*_pipe`` returns after ``connection_made``.
* Read side: ``data_received`` in order, then on EOF (``read() == b''``)
  ``eof_received`` and ``connection_lost(None)`` whatever ``eof_received``
  returns.  A pty master whose slave closed fails its read with EIO: no
  ``eof_received``, ``connection_lost(OSError(EIO))``, and (EIO being
  expected) no call of the exception handler.  ``pause_reading`` stops
  reading until ``resume_reading``; both are no-ops when repeated or after
  ``close``.  ``close`` calls ``connection_lost(None)`` and closes the pipe.
* Write side: ``write`` tries ``os.write`` at once and buffers the rest;
  ``_FlowControlMixin`` calls ``pause_writing`` when the buffer grows above
  the high-water mark and ``resume_writing`` when it drains to the low one.
  For a FIFO or a socket the transport watches its fd for reading, which
  reports the reader closing: ``connection_lost(None)`` with an empty
  buffer, ``connection_lost(BrokenPipeError())`` with data still buffered.
  An ``os.write`` failing with EPIPE gives ``connection_lost`` that
  BrokenPipeError (an OSError: not passed to the exception handler); later
  writes are dropped, and from the sixth failed write on each one logs
  'pipe closed by peer or os.write(pipe, data) raised exception.'.
  ``close`` (= ``write_eof``) flushes the buffer first; ``abort`` drops it.
* ``get_extra_info('pipe')`` is the object passed in.

Every wait is bounded by io_helpers.TIMEOUT; the ``loop`` fixture checks
that no fd is left open or watched.
"""

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
import subprocess
import sys
import tty

import pytest
from io_helpers import TIMEOUT, Recorder, fd_count, payload, sha256

KINDS = ('pipe', 'fifo', 'socketpair', 'pty')
# Kinds whose write transport sees its reader go away (asyncio watches a
# FIFO or a socket for reading; a character device is not watched).  Also
# the kinds for which a close of the transport's end keeps the data already
# in the kernel for the reader: closing a pty master discards what the
# slave has not read yet.
NOT_PTY = ('pipe', 'fifo', 'socketpair')


def wait(aw, timeout=TIMEOUT):
    return asyncio.wait_for(aw, timeout)


async def wait_until(predicate, timeout=TIMEOUT, interval=0.005):
    async def _poll():
        while not predicate():
            await asyncio.sleep(interval)
    await asyncio.wait_for(_poll(), timeout)


async def spin(n=10):
    """Let the loop run ``n`` iterations (and a little time) for events
    that should *not* happen."""
    for _ in range(n):
        await asyncio.sleep(0)
    await asyncio.sleep(0.03)


@contextlib.contextmanager
def channel(kind, tmp_path, transport_reads):
    """``(end, peer)``: a one-way channel.  ``end`` (a file object or a
    socket) is for the transport, which reads from it if
    ``transport_reads``, else writes to it; ``peer`` is the other end, for
    the test's own non-blocking ``os.read``/``os.write`` on
    ``peer.fileno()``.  For a pty, ``end`` is the master and ``peer`` the
    slave, in raw mode (bytes pass unchanged both ways)."""
    objs = []
    try:
        if kind == 'pipe':
            r, w = os.pipe()
            rf = open(r, 'rb', buffering=0)
            objs.append(rf)
            wf = open(w, 'wb', buffering=0)
            objs.append(wf)
            end, peer = (rf, wf) if transport_reads else (wf, rf)
        elif kind == 'fifo':
            path = tmp_path / 'fifo'
            os.mkfifo(path)
            # The read end first: a non-blocking open for writing of a FIFO
            # without a reader fails with ENXIO.
            rf = open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), 'rb', buffering=0)
            objs.append(rf)
            wf = open(os.open(path, os.O_WRONLY | os.O_NONBLOCK), 'wb', buffering=0)
            objs.append(wf)
            end, peer = (rf, wf) if transport_reads else (wf, rf)
        elif kind == 'socketpair':
            a, b = socket.socketpair()
            objs += [a, b]
            end, peer = a, b
        elif kind == 'pty':
            master, slave = os.openpty()
            mf = open(master, 'r+b', buffering=0)
            objs.append(mf)
            sf = open(slave, 'r+b', buffering=0)
            objs.append(sf)
            tty.setraw(slave)
            end, peer = mf, sf
        else:
            raise ValueError(kind)
        os.set_blocking(peer.fileno(), False)
        yield end, peer
    finally:
        for obj in objs:
            obj.close()


def is_closed(obj):
    return obj.fileno() == -1 if isinstance(obj, socket.socket) else obj.closed


def _set_once(fut):
    if not fut.done():
        fut.set_result(None)


async def readable(loop, fd):
    fut = loop.create_future()
    loop.add_reader(fd, _set_once, fut)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


async def peer_read(loop, peer, n=None, *, chunk=65536, delay=0, timeout=TIMEOUT):
    """Read from ``peer`` until ``n`` bytes (or EOF / EIO); ``delay``
    sleeps after each read (a slow reader)."""
    fd = peer.fileno()
    buf = bytearray()

    async def _go():
        while n is None or len(buf) < n:
            size = chunk if n is None else min(chunk, n - len(buf))
            try:
                data = os.read(fd, size)
            except BlockingIOError:
                await readable(loop, fd)
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:  # pty: the other side closed
                    break
                raise
            if not data:
                break
            buf.extend(data)
            if delay:
                await asyncio.sleep(delay)

    await asyncio.wait_for(_go(), timeout)
    return bytes(buf)


def factory(loop, **kw):
    made = []

    def make():
        proto = Recorder(loop, **kw)
        made.append(proto)
        return proto
    make.made = made
    return make


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


# ---------------------------------------------------------------------------
# making the transports
# ---------------------------------------------------------------------------

def test_read_pipe_transport_basics(loop, run, kind, tmp_path):
    with channel(kind, tmp_path, transport_reads=True) as (end, peer):
        async def main():
            os.set_blocking(end.fileno(), True)
            pf = factory(loop)
            tr, proto = await wait(loop.connect_read_pipe(pf, end))
            assert pf.made == [proto]
            # connection_made ran before connect_read_pipe returned.
            assert proto.events == ['connection_made']
            assert proto.transport is tr
            assert isinstance(tr, asyncio.ReadTransport)
            assert not isinstance(tr, asyncio.WriteTransport)
            assert tr.get_extra_info('pipe') is end
            assert tr.get_extra_info('peername', 'dflt') == 'dflt'
            assert tr.get_protocol() is proto
            assert os.get_blocking(end.fileno()) is False
            assert tr.is_reading() is True
            assert tr.is_closing() is False
            assert repr(tr) == f'<_UnixReadPipeTransport fd={end.fileno()} polling>'
            tr.pause_reading()
            assert repr(tr) == f'<_UnixReadPipeTransport fd={end.fileno()} idle>'
            tr.close()
            await proto.wait_lost()
        run(main())


def test_write_pipe_transport_basics(loop, run, kind, tmp_path):
    with channel(kind, tmp_path, transport_reads=False) as (end, peer):
        async def main():
            os.set_blocking(end.fileno(), True)
            pf = factory(loop)
            tr, proto = await wait(loop.connect_write_pipe(pf, end))
            assert pf.made == [proto]
            assert proto.events == ['connection_made']
            assert isinstance(tr, asyncio.WriteTransport)
            # (_FlowControlMixin derives from Transport: a ReadTransport too.)
            assert tr.get_extra_info('pipe') is end
            assert tr.get_protocol() is proto
            assert os.get_blocking(end.fileno()) is False
            assert tr.can_write_eof() is True
            assert tr.is_closing() is False
            assert tr.get_write_buffer_size() == 0
            assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
            assert repr(tr) == (
                f'<_UnixWritePipeTransport fd={end.fileno()} idle bufsize=0>')
            tr.close()
            assert tr.is_closing() is True
            await proto.wait_lost()
            assert proto.exc is None
            assert is_closed(end)
        run(main())


@pytest.mark.parametrize('direction', ['read', 'write'])
def test_regular_file_is_refused(loop, run, tmp_path, direction):
    path = tmp_path / 'regular'
    path.write_bytes(b'data')
    with open(path, 'rb' if direction == 'read' else 'wb', buffering=0) as f:
        pf = factory(loop)
        if direction == 'read':
            msg = 'Pipe transport is for pipes/sockets only.'
            coro = loop.connect_read_pipe(pf, f)
        else:
            msg = 'Pipe transport is only for pipes, sockets and character devices'
            coro = loop.connect_write_pipe(pf, f)
        with pytest.raises(ValueError) as info:
            run(wait(coro))
        assert str(info.value) == msg
        # The protocol was made but never connected; the file stays open.
        [proto] = pf.made
        assert proto.events == []
        assert not f.closed
        assert os.get_blocking(f.fileno()) is True


def test_directory_fd_is_refused(loop, run, tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        class Dir:
            def fileno(self):
                return fd

            def close(self):
                pass

        with pytest.raises(ValueError, match='for pipes/sockets only'):
            run(wait(loop.connect_read_pipe(factory(loop), Dir())))
        with pytest.raises(ValueError, match='pipes, sockets and character devices'):
            run(wait(loop.connect_write_pipe(factory(loop), Dir())))
        assert stat.S_ISDIR(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# read side
# ---------------------------------------------------------------------------

def test_read_data_and_eof_in_order(loop, run, kind, tmp_path):
    chunks = [b'first ', b'second ', bytes(range(256)), b'x' * 3000, b'last']
    with channel(kind, tmp_path, transport_reads=True) as (end, peer):
        async def main():
            tr, proto = await wait(loop.connect_read_pipe(factory(loop), end))
            for chunk in chunks:
                os.write(peer.fileno(), chunk)
                await asyncio.sleep(0.002)
            total = len(b''.join(chunks))
            await proto.wait_bytes(total)
            assert proto.events == ['connection_made', 'data_received']
            peer.close()
            exc = await proto.wait_lost()
            return tr, proto, exc

        tr, proto, exc = run(main())
        assert bytes(proto.data) == b''.join(chunks)
        if kind == 'pty':
            # The master's read fails with EIO once the slave is closed.
            assert proto.events == ['connection_made', 'data_received', 'connection_lost']
            assert type(exc) is OSError
            assert exc.errno == errno.EIO
        else:
            assert proto.events == [
                'connection_made', 'data_received', 'eof_received', 'connection_lost']
            assert exc is None
        assert tr.is_closing() is True
        assert tr.is_reading() is False
        assert is_closed(end)


def test_data_written_before_close_arrives_before_eof(loop, run, kind, tmp_path):
    data = payload(20000)
    with channel(kind, tmp_path, transport_reads=True) as (end, peer):
        async def main():
            tr, proto = await wait(loop.connect_read_pipe(factory(loop), end))
            # Written and closed in one go, while the loop does not run.
            view = memoryview(data)
            while view:
                try:
                    n = os.write(peer.fileno(), view)
                except BlockingIOError:
                    await asyncio.sleep(0.001)
                    continue
                view = view[n:]
            peer.close()
            await proto.wait_lost()
            return proto

        proto = run(main())
        assert sha256(proto.data) == sha256(data)
        assert proto.events[:2] == ['connection_made', 'data_received']
        assert proto.events[-1] == 'connection_lost'


def test_eof_received_returning_true_still_closes(loop, run, tmp_path):
    with channel('pipe', tmp_path, transport_reads=True) as (end, peer):
        async def main():
            tr, proto = await wait(loop.connect_read_pipe(
                factory(loop, keep_open=True), end))
            os.write(peer.fileno(), b'bye')
            peer.close()
            assert await proto.wait_lost() is None
            return proto
        proto = run(main())
        assert proto.events == [
            'connection_made', 'data_received', 'eof_received', 'connection_lost']
        assert bytes(proto.data) == b'bye'


def test_pause_and_resume_reading(loop, run, kind, tmp_path):
    with channel(kind, tmp_path, transport_reads=True) as (end, peer):
        async def main():
            tr, proto = await wait(loop.connect_read_pipe(factory(loop), end))
            tr.pause_reading()
            assert tr.is_reading() is False
            tr.pause_reading()            # no-op
            assert tr.is_reading() is False
            os.write(peer.fileno(), b'while paused')
            await spin()
            assert proto.data == b''
            tr.resume_reading()
            assert tr.is_reading() is True
            tr.resume_reading()           # no-op
            await proto.wait_bytes(12)
            assert bytes(proto.data) == b'while paused'
            # Paused again from data_received's caller side, then resumed.
            tr.pause_reading()
            os.write(peer.fileno(), b' more')
            await spin()
            assert bytes(proto.data) == b'while paused'
            tr.resume_reading()
            await proto.wait_bytes(17)
            assert bytes(proto.data) == b'while paused more'
            tr.close()
            assert tr.is_reading() is False
            await proto.wait_lost()
            return proto
        proto = run(main())
        assert proto.events == ['connection_made', 'data_received', 'connection_lost']
        assert proto.exc is None


def test_pause_reading_in_connection_made(loop, run, kind, tmp_path):
    """Paused before the transport's reader is added: it is never added."""
    with channel(kind, tmp_path, transport_reads=True) as (end, peer):
        os.write(peer.fileno(), b'early')

        async def main():
            tr, proto = await wait(loop.connect_read_pipe(
                factory(loop, pause_on_connect=True), end))
            assert tr.is_reading() is False
            await spin()
            assert proto.data == b''
            tr.resume_reading()
            assert await proto.wait_bytes(5) == b'early'
            tr.close()
            await proto.wait_lost()
        run(main())


def test_eof_while_paused_is_seen_after_resume(loop, run, kind, tmp_path):
    with channel(kind, tmp_path, transport_reads=True) as (end, peer):
        async def main():
            tr, proto = await wait(loop.connect_read_pipe(factory(loop), end))
            tr.pause_reading()
            os.write(peer.fileno(), b'tail')
            peer.close()
            await spin()
            assert proto.events == ['connection_made']
            tr.resume_reading()
            await proto.wait_lost()
            return proto
        proto = run(main())
        assert bytes(proto.data) == b'tail'
        assert proto.events[:2] == ['connection_made', 'data_received']
        assert proto.events[-1] == 'connection_lost'


def test_pause_in_data_received_stops_delivery(loop, run, tmp_path):
    class Pausing(Recorder):
        def data_received(self, data):
            super().data_received(data)
            self.transport.pause_reading()

    with channel('socketpair', tmp_path, transport_reads=True) as (end, peer):
        async def main():
            tr, proto = await wait(loop.connect_read_pipe(lambda: Pausing(loop), end))
            os.write(peer.fileno(), b'one')
            await proto.wait_bytes(3)
            os.write(peer.fileno(), b'two')
            await spin()
            assert bytes(proto.data) == b'one'
            tr.resume_reading()
            # data_received pauses again after the next chunk.
            assert await proto.wait_bytes(6) == b'onetwo'
            assert tr.is_reading() is False
            tr.close()
            await proto.wait_lost()
        run(main())


def test_read_close_calls_connection_lost_without_eof(loop, run, kind, tmp_path):
    with channel(kind, tmp_path, transport_reads=True) as (end, peer):
        async def main():
            tr, proto = await wait(loop.connect_read_pipe(factory(loop), end))
            tr.close()
            assert tr.is_closing() is True
            assert tr.is_reading() is False
            tr.close()                    # no-op
            tr.resume_reading()           # no-op after close
            tr.pause_reading()            # no-op after close
            os.write(peer.fileno(), b'too late')
            assert await proto.wait_lost() is None
            await spin()
            return tr, proto
        tr, proto = run(main())
        assert proto.events == ['connection_made', 'connection_lost']
        assert proto.data == b''
        assert is_closed(end)
        assert tr.get_protocol() is None
        assert repr(tr) == f'<_UnixReadPipeTransport closed fd={tr._fileno} closed>'


def test_read_set_protocol(loop, run, tmp_path):
    with channel('pipe', tmp_path, transport_reads=True) as (end, peer):
        async def main():
            tr, first = await wait(loop.connect_read_pipe(factory(loop), end))
            os.write(peer.fileno(), b'to first')
            await first.wait_bytes(8)
            second = Recorder(loop)
            tr.set_protocol(second)
            assert tr.get_protocol() is second
            os.write(peer.fileno(), b'to second')
            peer.close()
            await second.wait_lost()
            return first, second
        first, second = run(main())
        assert bytes(first.data) == b'to first'
        assert first.events == ['connection_made', 'data_received']
        assert bytes(second.data) == b'to second'
        assert second.events == ['data_received', 'eof_received', 'connection_lost']


# ---------------------------------------------------------------------------
# write side
# ---------------------------------------------------------------------------

def test_small_write_goes_out_at_once(loop, run, kind, tmp_path):
    with channel(kind, tmp_path, transport_reads=False) as (end, peer):
        async def main():
            tr, proto = await wait(loop.connect_write_pipe(factory(loop), end))
            tr.write(b'hello ')
            tr.write(bytearray(b'bytearray '))
            tr.write(memoryview(b'xxmemoryview')[2:])
            tr.write(b'')
            assert tr.get_write_buffer_size() == 0
            got = await peer_read(loop, peer, 26)
            tr.close()
            await proto.wait_lost()
            return got
        assert run(main()) == b'hello bytearray memoryview'


def test_write_buffer_grows_then_drains(loop, run, kind, tmp_path):
    data = payload(1 << 20)
    with channel(kind, tmp_path, transport_reads=False) as (end, peer):
        async def main():
            tr, proto = await wait(loop.connect_write_pipe(factory(loop), end))
            tr.write(data)
            size = tr.get_write_buffer_size()
            # Part went straight into the kernel's buffer, the rest waits.
            assert 0 < size < len(data)
            assert repr(tr) == (
                f'<_UnixWritePipeTransport fd={end.fileno()} polling bufsize={size}>')
            await spin()
            if kind != 'pty':
                # Nobody reads.  (A pty moves written bytes on to the
                # slave's input queue later, making room again.)
                assert tr.get_write_buffer_size() == size
            got = await peer_read(loop, peer, len(data))
            await wait_until(lambda: tr.get_write_buffer_size() == 0)
            assert repr(tr) == f'<_UnixWritePipeTransport fd={end.fileno()} idle bufsize=0>'
            tr.close()
            await proto.wait_lost()
            return got, proto
        got, proto = run(main())
        assert sha256(got) == sha256(data)
        # Above the default high-water mark (64 KiB), then below the low one.
        assert proto.events == [
            'connection_made', 'pause_writing', 'resume_writing', 'connection_lost']


def test_buffered_bytearray_is_copied(loop, run, tmp_path):
    with channel('pipe', tmp_path, transport_reads=False) as (end, peer):
        async def main():
            tr, proto = await wait(loop.connect_write_pipe(factory(loop), end))
            filler = b'f' * (1 << 20)
            tr.write(filler)
            buf = bytearray(b'original')
            tr.write(buf)
            buf[:] = b'MUTATED!'
            got = await peer_read(loop, peer, len(filler) + 8)
            tr.close()
            await proto.wait_lost()
            return got[len(filler):]
        assert run(main()) == b'original'


def test_write_buffer_limits(loop, run, tmp_path):
    with channel('pipe', tmp_path, transport_reads=False) as (end, peer):
        async def main():
            tr, proto = await wait(loop.connect_write_pipe(factory(loop), end))
            tr.set_write_buffer_limits(high=1000, low=100)
            assert tr.get_write_buffer_limits() == (100, 1000)
            tr.set_write_buffer_limits(high=800)
            assert tr.get_write_buffer_limits() == (200, 800)
            tr.set_write_buffer_limits(low=300)
            assert tr.get_write_buffer_limits() == (300, 1200)
            tr.set_write_buffer_limits()
            assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
            with pytest.raises(ValueError, match=r'^high \(1\) must be >= low \(2\) must be >= 0$'):
                tr.set_write_buffer_limits(high=1, low=2)
            with pytest.raises(ValueError, match=r'must be >= 0'):
                tr.set_write_buffer_limits(high=10, low=-1)
            # Fill the pipe, buffer the rest: still under the high mark.
            tr.set_write_buffer_limits(high=(2 << 20))
            tr.write(b'a' * (1 << 20))
            assert 0 < tr.get_write_buffer_size() < (1 << 20)
            assert proto.events == ['connection_made']
            # Lowering the high mark under the buffered size pauses at once.
            tr.set_write_buffer_limits(high=0)
            assert proto.events == ['connection_made', 'pause_writing']
            tr.abort()
            await proto.wait_lost()
            return proto
        proto = run(main())
        assert proto.events == ['connection_made', 'pause_writing', 'connection_lost']


def test_flow_control_with_a_slow_reader(loop, run, kind, tmp_path):
    total = 512 * 1024
    chunk = 8192
    data = payload(total)
    with channel(kind, tmp_path, transport_reads=False) as (end, peer):
        async def main():
            can_write = asyncio.Event()
            can_write.set()
            sizes = []

            class Flow(Recorder):
                def pause_writing(self):
                    super().pause_writing()
                    sizes.append(('pause', self.transport.get_write_buffer_size()))
                    can_write.clear()

                def resume_writing(self):
                    super().resume_writing()
                    sizes.append(('resume', self.transport.get_write_buffer_size()))
                    can_write.set()

            tr, proto = await wait(loop.connect_write_pipe(lambda: Flow(loop), end))
            tr.set_write_buffer_limits(high=16384, low=4096)
            reader = asyncio.ensure_future(
                peer_read(loop, peer, total, chunk=4096, delay=0.0005))
            for off in range(0, total, chunk):
                await wait(can_write.wait())
                tr.write(data[off:off + chunk])
                assert tr.get_write_buffer_size() <= 16384 + chunk
            got = await reader
            await wait_until(lambda: tr.get_write_buffer_size() == 0)
            tr.close()
            await proto.wait_lost()
            return got, proto, sizes

        got, proto, sizes = run(main())
        assert sha256(got) == sha256(data)
        flow = [e for e in proto.events if e.endswith('_writing')]
        assert len(flow) >= 2
        # Strictly alternating, starting with a pause, ending resumed.
        assert flow == ['pause_writing', 'resume_writing'] * (len(flow) // 2)
        for what, size in sizes:
            if what == 'pause':
                assert size > 16384
            else:
                # _write_ready resumes only after a write that emptied the
                # buffer (a partial write does not check the low mark).
                assert size == 0
        assert proto.exc is None


@pytest.mark.parametrize('kind', NOT_PTY)
def test_close_flushes_the_buffer(loop, run, kind, tmp_path):
    data = payload(300000)
    with channel(kind, tmp_path, transport_reads=False) as (end, peer):
        async def main():
            tr, proto = await wait(loop.connect_write_pipe(factory(loop), end))
            tr.write(data)
            assert tr.get_write_buffer_size() > 0
            tr.close()
            assert tr.is_closing() is True
            tr.write(b'dropped after close')   # silently ignored
            await spin()
            assert not proto.lost.done()       # still flushing
            got = await peer_read(loop, peer, len(data))
            assert await proto.wait_lost() is None
            return got, proto
        got, proto = run(main())
        assert sha256(got) == sha256(data)
        assert proto.events[-1] == 'connection_lost'
        assert is_closed(end)


def test_write_eof_is_close(loop, run, tmp_path):
    with channel('pipe', tmp_path, transport_reads=False) as (end, peer):
        async def main():
            tr, proto = await wait(loop.connect_write_pipe(factory(loop), end))
            tr.write(b'end')
            tr.write_eof()
            assert tr.is_closing() is True
            tr.write_eof()                     # no-op
            tr.close()                         # no-op
            assert await proto.wait_lost() is None
            # EOF for the reader.
            return await peer_read(loop, peer)
        assert run(main()) == b'end'


@pytest.mark.parametrize('kind', NOT_PTY)
def test_abort_drops_the_buffer(loop, run, kind, tmp_path):
    data = payload(1 << 20)
    with channel(kind, tmp_path, transport_reads=False) as (end, peer):
        async def main():
            tr, proto = await wait(loop.connect_write_pipe(factory(loop), end))
            tr.write(data)
            assert tr.get_write_buffer_size() > 0
            tr.abort()
            assert tr.is_closing() is True
            assert tr.get_write_buffer_size() == 0
            assert await proto.wait_lost() is None
            got = await peer_read(loop, peer)
            return got, proto
        got, proto = run(main())
        # Only what the kernel had taken before abort() reaches the reader.
        assert 0 < len(got) < len(data)
        assert got == data[:len(got)]
        assert proto.events == ['connection_made', 'pause_writing', 'connection_lost']
        assert is_closed(end)


# ---------------------------------------------------------------------------
# the reader goes away
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('kind', NOT_PTY)
def test_reader_closes_with_empty_buffer(loop, run, kind, tmp_path):
    with channel(kind, tmp_path, transport_reads=False) as (end, peer):
        async def main():
            tr, proto = await wait(loop.connect_write_pipe(factory(loop), end))
            tr.write(b'all sent')
            assert await peer_read(loop, peer, 8) == b'all sent'
            peer.close()
            return await proto.wait_lost(), tr, proto
        exc, tr, proto = run(main())
        assert exc is None
        assert proto.events == ['connection_made', 'connection_lost']
        assert tr.is_closing() is True
        assert is_closed(end)


@pytest.mark.parametrize('kind', NOT_PTY)
def test_reader_closes_with_data_buffered(loop, run, kind, tmp_path):
    with channel(kind, tmp_path, transport_reads=False) as (end, peer):
        async def main():
            tr, proto = await wait(loop.connect_write_pipe(factory(loop), end))
            tr.write(payload(4 << 20))
            assert tr.get_write_buffer_size() > 0
            await spin()
            peer.close()
            exc = await proto.wait_lost()
            assert tr.get_write_buffer_size() == 0
            return exc, proto
        exc, proto = run(main())
        # The transport's reader callback sees the close first and makes a
        # bare BrokenPipeError (not the one of a failed os.write).
        assert type(exc) is BrokenPipeError
        assert exc.args == ()
        assert proto.events == ['connection_made', 'pause_writing', 'connection_lost']
        assert is_closed(end)


@pytest.mark.parametrize('kind', NOT_PTY)
def test_write_to_closed_reader(loop, run, kind, tmp_path, caplog):
    with channel(kind, tmp_path, transport_reads=False) as (end, peer):
        async def main():
            tr, proto = await wait(loop.connect_write_pipe(factory(loop), end))
            peer.close()
            # Before the loop notices: os.write fails with EPIPE.
            tr.write(b'into the void')
            assert tr.is_closing() is True
            exc = await proto.wait_lost()
            with caplog.at_level(logging.WARNING, logger='asyncio'):
                for _ in range(4):
                    tr.write(b'dropped')
                assert caplog.records == []
                tr.write(b'dropped, logged')
                tr.write(b'dropped, logged')
            return exc, proto
        exc, proto = run(main())
        assert type(exc) is BrokenPipeError
        assert exc.errno == errno.EPIPE
        assert proto.events == ['connection_made', 'connection_lost']
        msgs = [r.getMessage() for r in caplog.records if r.name == 'asyncio']
        assert msgs == ['pipe closed by peer or os.write(pipe, data) raised exception.'] * 2
        assert is_closed(end)


# ---------------------------------------------------------------------------
# both sides on the loop, and fds
# ---------------------------------------------------------------------------

def test_transfer_between_write_and_read_transports(loop, run, kind, tmp_path):
    data = payload(4 << 20)
    with channel(kind, tmp_path, transport_reads=True) as (end, peer):
        async def main():
            rtr, rproto = await wait(loop.connect_read_pipe(factory(loop), end))
            wtr, wproto = await wait(loop.connect_write_pipe(factory(loop), peer))
            step = 65536 + 17
            for off in range(0, len(data), step):
                wtr.write(data[off:off + step])
                if wtr.get_write_buffer_size() > (1 << 20):
                    await wait_until(lambda: wtr.get_write_buffer_size() < (1 << 18))
            await rproto.wait_bytes(len(data))
            wtr.close()
            assert await wproto.wait_lost() is None
            rexc = await rproto.wait_lost()
            return rproto, rexc
        rproto, rexc = run(main())
        assert len(rproto.data) == len(data)
        assert sha256(rproto.data) == sha256(data)
        if kind == 'pty':
            assert isinstance(rexc, OSError) and rexc.errno == errno.EIO
        else:
            assert rexc is None
            assert rproto.events[-2:] == ['eof_received', 'connection_lost']


def test_no_fd_leaks(loop, run, kind, tmp_path):
    """A full read and write cycle per kind leaves the fd count as it was."""
    before = fd_count()
    for reads in (True, False):
        sub = tmp_path / ('read' if reads else 'write')
        sub.mkdir()
        with channel(kind, sub, reads) as (end, peer):
            async def main(reads=reads):
                if reads:
                    tr, proto = await wait(loop.connect_read_pipe(factory(loop), end))
                    os.write(peer.fileno(), b'ping')
                    await proto.wait_bytes(4)
                    tr.close()
                else:
                    tr, proto = await wait(loop.connect_write_pipe(factory(loop), end))
                    tr.write(b'ping')
                    assert await peer_read(loop, peer, 4) == b'ping'
                    tr.abort()
                await proto.wait_lost()
            run(main())
            assert is_closed(end)
    assert fd_count() == before


# ---------------------------------------------------------------------------
# a child process's stdin / stdout
# ---------------------------------------------------------------------------

async def wait_proc(proc, timeout=TIMEOUT):
    try:
        await wait_until(lambda: proc.poll() is not None, timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode


def test_read_pipe_on_child_stdout(loop, run):
    code = 'import sys; sys.stdout.buffer.write(bytes(range(256)) * 4000)'
    proc = subprocess.Popen([sys.executable, '-c', code],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        async def main():
            tr, proto = await wait(loop.connect_read_pipe(factory(loop), proc.stdout))
            assert tr.get_extra_info('pipe') is proc.stdout
            assert await proto.wait_lost() is None
            assert await wait_proc(proc) == 0
            return proto
        proto = run(main())
        assert bytes(proto.data) == bytes(range(256)) * 4000
        assert proto.events[-2:] == ['eof_received', 'connection_lost']
        assert proc.stdout.closed
    finally:
        proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_write_pipe_on_child_stdin(loop, run):
    data = payload(3 << 20)
    code = ('import hashlib, sys; '
            'print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
    proc = subprocess.Popen([sys.executable, '-c', code],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        async def main():
            tr, proto = await wait(loop.connect_write_pipe(factory(loop), proc.stdin))
            tr.write(data)
            tr.close()
            assert await proto.wait_lost() is None
            assert await wait_proc(proc) == 0
        run(main())
        assert proc.stdout.read().decode().strip() == sha256(data)
        assert proc.stdin.closed
    finally:
        proc.stdin.close()
        proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
