"""Child processes: loop.subprocess_exec / subprocess_shell with a
SubprocessProtocol, asyncio.create_subprocess_exec / _shell and Process,
stdio redirections and Popen options, spawn failures, signals, reaping
(no zombies, no leaked fds), and ferroloop's own reaper (pidfd or a thread).

Expected behaviour: CPython 3.11's asyncio subprocess.py (Process,
SubprocessStreamProtocol), base_subprocess.py (BaseSubprocessTransport:
callback order, ``_check_proc``, ``close()`` killing a running child,
``_pending_calls`` before connection_made), unix_events.py
(_UnixSubprocessTransport, ThreadedChildWatcher and its "skip one
iteration" callback) and base_events.subprocess_exec / subprocess_shell
(their argument checks, in their order, with their exact messages).

What asyncio guarantees about the protocol callbacks: connection_made
first; pipe_data_received(fd, ...) only before pipe_connection_lost(fd);
process_exited and the pipe_connection_lost calls in any order (they come
from independent sources); connection_lost(None) last, exactly once, after
process_exited and after every pipe's pipe_connection_lost.

A note on signals after exit (BaseSubprocessTransport.send_signal /
terminate / kill): ``_check_proc`` raises ProcessLookupError only once
``_proc`` is cleared, i.e. after connection_lost (which is also when
``Process.wait()`` returns).  Between process_exited and that point the
call reaches ``Popen.send_signal``, which polls first and does nothing for
a process known to be dead.  A child that exited but whose exit the loop
has not delivered yet is polled by Popen too: the status asyncio's watcher
already collected stays the transport's return code.

Reaping: with 3.11's default ThreadedChildWatcher every child is reaped by
a waitpid thread, even one that exits after its loop closed (the thread
then only logs "Loop ... that handles pid ... is closed"): no zombie.

Not tested: the ResourceWarning of an unclosed subprocess transport
(BaseSubprocessTransport.__del__), only the absence of one; debug-mode
logging of subprocess_exec / _shell.

ferroloop reaps its children itself (python/ferroloop/_children.py): a
pidfd watched by the reactor, or a daemon thread per child when pidfd_open
is unusable (``_children._pidfd_usable``); the last tests check both paths.
"""

import asyncio
import gc
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from io_helpers import TIMEOUT, fd_count

SH = shutil.which('sh') or '/bin/sh'
TRUE = shutil.which('true') or '/bin/true'
CAT = shutil.which('cat') or '/bin/cat'
SLEEP = shutil.which('sleep') or '/bin/sleep'
YES = shutil.which('yes') or '/usr/bin/yes'

# /proc (children, zombies, fds, sessions) is read throughout.
pytestmark = pytest.mark.skipif(sys.platform != 'linux', reason='Linux only')

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
STDOUT = subprocess.STDOUT


def wait(aw, timeout=TIMEOUT):
    return asyncio.wait_for(aw, timeout)


def skip_unless_ferroloop(loop_kind):
    if loop_kind == 'asyncio':
        pytest.skip('ferroloop reaper internals (_children.py)')


# ---------------------------------------------------------------------------
# /proc helpers
# ---------------------------------------------------------------------------

def proc_stat(pid):
    """state, ppid, pgrp, session of ``pid`` from /proc (None if gone)."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm is in parentheses and may contain anything: split after it.
    rest = stat[stat.rindex(')') + 2:].split()
    return {'state': rest[0], 'ppid': int(rest[1]), 'pgrp': int(rest[2]),
            'session': int(rest[3])}


def children_of_this_process():
    """pid -> state of every child of this process still in /proc."""
    me = os.getpid()
    out = {}
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        st = proc_stat(name)
        if st is not None and st['ppid'] == me:
            out[int(name)] = st['state']
    return out


def zombie_children():
    return sorted(pid for pid, state in children_of_this_process().items()
                  if state == 'Z')


def wait_exited_unnoticed(pid, timeout=TIMEOUT):
    """Block (the loop too) until ``pid`` exited: it is a zombie or already
    reaped (by asyncio's watcher thread).  A zombie is given 0.5 s to be
    reaped by a watcher thread, which asyncio's does in microseconds."""
    deadline = time.monotonic() + timeout
    zombie_since = None
    while True:
        st = proc_stat(pid)
        if st is None:
            return
        if st['state'] == 'Z':
            zombie_since = zombie_since or time.monotonic()
            if time.monotonic() - zombie_since > 0.5:
                return
        assert time.monotonic() < deadline, f'pid {pid} still running: {st}'
        time.sleep(0.005)


# ---------------------------------------------------------------------------
# a recording SubprocessProtocol
# ---------------------------------------------------------------------------

# (loop, transport, protocol) of every SubprocRecorder connected: a test
# that fails half-way leaves no running child (and no "unclosed transport"
# warning) behind for the tests after it.
_live = []
# Zombie children present when the current test started (left by an earlier
# failed test, say): new_zombies() reports only the others.
_zombies_at_start = set()


def new_zombies():
    return sorted(set(zombie_children()) - _zombies_at_start)


@pytest.fixture(autouse=True)
def _close_leftover_transports(loop):
    _zombies_at_start.clear()
    _zombies_at_start.update(zombie_children())
    yield
    mine = [(t, p) for lp, t, p in _live if lp is loop]
    _live.clear()
    if loop.is_closed() or not mine:
        return
    for t, _ in mine:
        t.close()
    pending = [p.done for _, p in mine if not p.done.done()]
    if pending:
        loop.run_until_complete(asyncio.wait(pending, timeout=TIMEOUT))


class SubprocRecorder(asyncio.SubprocessProtocol):
    """Records every callback; ``done`` resolves on connection_lost."""

    def __init__(self, loop):
        self.loop = loop
        self.events = []
        self.transport = None
        self.data = {0: bytearray(), 1: bytearray(), 2: bytearray()}
        self.done = loop.create_future()
        self.exited = loop.create_future()
        self.in_process_exited = None   # hook: called in process_exited

    def connection_made(self, transport):
        self.transport = transport
        self.events.append(('connection_made',))
        _live.append((self.loop, transport, self))

    def pipe_data_received(self, fd, data):
        assert isinstance(data, bytes)
        self.events.append(('pipe_data_received', fd))
        self.data[fd] += data

    def pipe_connection_lost(self, fd, exc):
        self.events.append(('pipe_connection_lost', fd, exc))

    def process_exited(self):
        self.events.append(('process_exited', self.transport.get_returncode()))
        if self.in_process_exited is not None:
            self.in_process_exited()
        if not self.exited.done():
            self.exited.set_result(self.transport.get_returncode())

    def connection_lost(self, exc):
        self.events.append(('connection_lost', exc))
        if not self.done.done():
            self.done.set_result(exc)

    def out(self, fd=1):
        return bytes(self.data[fd])


class Factory:
    """A protocol factory counting its calls."""

    def __init__(self, loop):
        self.loop = loop
        self.protocols = []

    def __call__(self):
        p = SubprocRecorder(self.loop)
        self.protocols.append(p)
        return p


def check_order(events, pipe_fds, returncode):
    """asyncio's guarantees on the order of SubprocessProtocol callbacks."""
    names = [e[0] for e in events]
    assert names[0] == 'connection_made', events
    assert names.count('connection_made') == 1, events
    assert events[-1] == ('connection_lost', None), events
    assert names.count('connection_lost') == 1, events
    assert names.count('process_exited') == 1, events
    assert ('process_exited', returncode) in events, events
    lost = [e for e in events if e[0] == 'pipe_connection_lost']
    assert sorted(e[1] for e in lost) == sorted(pipe_fds), events
    assert all(e[2] is None for e in lost), events
    for fd in pipe_fds:
        i_lost = events.index(('pipe_connection_lost', fd, None))
        for i, e in enumerate(events):
            if e == ('pipe_data_received', fd):
                assert i < i_lost, events
    data_fds = {e[1] for e in events if e[0] == 'pipe_data_received'}
    # Nothing is ever received from stdin, or from a non-pipe.
    assert data_fds <= set(pipe_fds) - {0}, events


async def spawn_exec(loop, *args, **kwargs):
    transport, proto = await wait(loop.subprocess_exec(
        lambda: SubprocRecorder(loop), *args, **kwargs))
    return transport, proto


# ---------------------------------------------------------------------------
# protocol callbacks and their order
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('api', ['exec', 'shell', 'shell-bytes'])
def test_protocol_callbacks_order(loop, run, api):
    """stdin written and closed, stdout and stderr read, exit code 5."""
    script = 'cat; echo err >&2; exit 5'

    async def main():
        factory = Factory(loop)
        if api == 'exec':
            coro = loop.subprocess_exec(factory, SH, '-c', script)
        elif api == 'shell':
            coro = loop.subprocess_shell(factory, script)
        else:
            coro = loop.subprocess_shell(factory, script.encode())
        transport, proto = await wait(coro)
        assert factory.protocols == [proto]
        # subprocess_* returns once connection_made ran.
        assert proto.events[0] == ('connection_made',)
        assert proto.transport is transport
        assert isinstance(transport, asyncio.SubprocessTransport)
        stdin = transport.get_pipe_transport(0)
        stdin.write(b'in-')
        stdin.write(b'data\n')
        stdin.close()
        assert await wait(proto.done) is None
        check_order(proto.events, [0, 1, 2], 5)
        assert proto.out(1) == b'in-data\n'
        assert proto.out(2) == b'err\n'
        assert transport.get_returncode() == 5
        transport.close()
    run(main())


def test_process_exits_before_pipes_close(loop, run):
    """A grandchild holding stdout: process_exited comes first, the pipe's
    data and its pipe_connection_lost later, connection_lost last."""
    async def main():
        transport, proto = await spawn_exec(
            loop, SH, '-c', '(sleep 0.8; echo late) & echo early',
            stdin=DEVNULL, stderr=DEVNULL)
        assert await wait(proto.exited) == 0
        # The child exited but its stdout is still open in the grandchild.
        assert not proto.done.done()
        assert ('pipe_connection_lost', 1, None) not in proto.events
        await wait(proto.done)
        check_order(proto.events, [1], 0)
        names = [e[0] for e in proto.events]
        assert names.index('process_exited') < names.index('pipe_connection_lost')
        assert proto.out() == b'early\nlate\n'
        transport.close()
    run(main())


def test_pipes_close_before_process_exits(loop, run):
    """The child closes stdout and stderr and lives on: both
    pipe_connection_lost calls precede process_exited."""
    async def main():
        transport, proto = await spawn_exec(
            loop, SH, '-c', 'echo x; exec >&- 2>&-; sleep 0.4; exit 2',
            stdin=DEVNULL)
        await wait(proto.done)
        check_order(proto.events, [1, 2], 2)
        names = [e[0] for e in proto.events]
        i_exit = names.index('process_exited')
        assert all(i < i_exit for i, n in enumerate(names)
                   if n == 'pipe_connection_lost'), proto.events
        assert proto.out() == b'x\n'
        transport.close()
    run(main())


def test_stdin_pipe_left_open_child_exits(loop, run):
    """The parent never closes stdin: the pipe is still reported lost when
    the child (its reader) exits, so connection_lost and wait() complete."""
    async def main():
        transport, proto = await spawn_exec(loop, SH, '-c', 'exit 4')
        await wait(proto.done)
        check_order(proto.events, [0, 1, 2], 4)
        assert transport.get_pipe_transport(0).is_closing()
        transport.close()
    run(main())


def test_no_pipes_at_all(loop, run):
    """With no pipe, connection_lost follows process_exited."""
    async def main():
        transport, proto = await spawn_exec(
            loop, SH, '-c', 'exit 6', stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL)
        await wait(proto.done)
        check_order(proto.events, [], 6)
        assert [e[0] for e in proto.events] == [
            'connection_made', 'process_exited', 'connection_lost']
        for fd in (0, 1, 2):
            assert transport.get_pipe_transport(fd) is None
        transport.close()
    run(main())


def test_pipe_data_comes_in_order(loop, run):
    """Several writes of the child arrive complete and in order."""
    async def main():
        script = 'i=0; while [ $i -lt 200 ]; do echo "line $i"; i=$((i+1)); done'
        transport, proto = await spawn_exec(loop, SH, '-c', script, stdin=DEVNULL)
        await wait(proto.done)
        check_order(proto.events, [1, 2], 0)
        expected = b''.join(b'line %d\n' % i for i in range(200))
        assert proto.out() == expected
        assert proto.out(2) == b''
        transport.close()
    run(main())


# ---------------------------------------------------------------------------
# argument checks (base_events.subprocess_exec / subprocess_shell)
# ---------------------------------------------------------------------------

EXEC_BAD_ARGS = [
    ({'universal_newlines': True}, 'universal_newlines must be False'),
    ({'shell': True}, 'shell must be False'),
    ({'bufsize': 1}, 'bufsize must be 0'),
    ({'bufsize': -1}, 'bufsize must be 0'),
    ({'text': True}, 'text must be False'),
    ({'encoding': 'utf-8'}, 'encoding must be None'),
    ({'errors': 'strict'}, 'errors must be None'),
    # The checks run in this order; the first failing one is reported.
    ({'universal_newlines': True, 'shell': True, 'bufsize': 1, 'text': True,
      'encoding': 'utf-8', 'errors': 'strict'}, 'universal_newlines must be False'),
    ({'shell': True, 'bufsize': 1, 'text': True}, 'shell must be False'),
    ({'bufsize': 1, 'text': True, 'errors': 'strict'}, 'bufsize must be 0'),
    ({'text': True, 'encoding': 'utf-8'}, 'text must be False'),
    ({'encoding': 'utf-8', 'errors': 'strict'}, 'encoding must be None'),
]

SHELL_BAD_ARGS = [
    ({'cmd': ['true']}, 'cmd must be a string'),
    ({'cmd': None}, 'cmd must be a string'),
    ({'cmd': 42}, 'cmd must be a string'),
    ({'cmd': bytearray(b'true')}, 'cmd must be a string'),
    ({'universal_newlines': True}, 'universal_newlines must be False'),
    ({'shell': False}, 'shell must be True'),
    ({'bufsize': 1}, 'bufsize must be 0'),
    ({'text': True}, 'text must be False'),
    ({'encoding': 'utf-8'}, 'encoding must be None'),
    ({'errors': 'strict'}, 'errors must be None'),
    ({'cmd': ['true'], 'universal_newlines': True, 'shell': False},
     'cmd must be a string'),
    ({'universal_newlines': True, 'shell': False, 'bufsize': 1},
     'universal_newlines must be False'),
    ({'shell': False, 'bufsize': 1, 'text': True}, 'shell must be True'),
    ({'bufsize': 1, 'encoding': 'utf-8'}, 'bufsize must be 0'),
]


def _ids(cases):
    return ['-'.join(f'{k}={v!r}' for k, v in kw.items()) for kw, _ in cases]


@pytest.mark.parametrize('api', ['loop', 'create'])
@pytest.mark.parametrize('kwargs, message', EXEC_BAD_ARGS, ids=_ids(EXEC_BAD_ARGS))
def test_exec_argument_checks(loop, run, api, kwargs, message):
    async def main():
        factory = Factory(loop)
        with pytest.raises(ValueError) as ei:
            if api == 'loop':
                await loop.subprocess_exec(factory, TRUE, **kwargs)
            else:
                await asyncio.create_subprocess_exec(TRUE, **kwargs)
        assert type(ei.value) is ValueError
        assert str(ei.value) == message
        # Checked before the protocol is made and before any fork.
        assert factory.protocols == []
    # The same children (by pid: an unrelated child, a test server, may go
    # from sleeping to running meanwhile).
    before = set(children_of_this_process())
    run(main())
    assert set(children_of_this_process()) == before


@pytest.mark.parametrize('api', ['loop', 'create'])
@pytest.mark.parametrize('kwargs, message', SHELL_BAD_ARGS, ids=_ids(SHELL_BAD_ARGS))
def test_shell_argument_checks(loop, run, api, kwargs, message):
    kwargs = dict(kwargs)
    cmd = kwargs.pop('cmd', 'true')

    async def main():
        factory = Factory(loop)
        with pytest.raises(ValueError) as ei:
            if api == 'loop':
                await loop.subprocess_shell(factory, cmd, **kwargs)
            else:
                await asyncio.create_subprocess_shell(cmd, **kwargs)
        assert type(ei.value) is ValueError
        assert str(ei.value) == message
        assert factory.protocols == []
    # The same children (by pid: an unrelated child, a test server, may go
    # from sleeping to running meanwhile).
    before = set(children_of_this_process())
    run(main())
    assert set(children_of_this_process()) == before


def test_explicit_default_arguments_accepted(loop, run):
    """The allowed values, passed explicitly, are accepted."""
    ok = {'universal_newlines': False, 'bufsize': 0, 'text': False,
          'encoding': None, 'errors': None}

    async def main():
        t1, p1 = await wait(loop.subprocess_exec(
            lambda: SubprocRecorder(loop), SH, '-c', 'exit 1', shell=False, **ok))
        t2, p2 = await wait(loop.subprocess_shell(
            lambda: SubprocRecorder(loop), 'exit 2', shell=True, **ok))
        p3 = await wait(asyncio.create_subprocess_exec(SH, '-c', 'exit 3', **ok))
        p4 = await wait(asyncio.create_subprocess_shell('exit 4', text=None, **{
            k: v for k, v in ok.items() if k != 'text'}))
        await wait(p1.done)
        await wait(p2.done)
        assert (t1.get_returncode(), t2.get_returncode()) == (1, 2)
        assert await wait(p3.wait()) == 3
        assert await wait(p4.wait()) == 4
        t1.close()
        t2.close()
    run(main())


# ---------------------------------------------------------------------------
# stdio redirections and Popen options
# ---------------------------------------------------------------------------

def test_stderr_to_stdout(loop, run):
    async def main():
        proc = await wait(asyncio.create_subprocess_exec(
            SH, '-c', 'echo out; echo err >&2', stdout=PIPE, stderr=STDOUT))
        assert proc.stderr is None
        assert proc.stdin is None
        assert proc._transport.get_pipe_transport(2) is None
        out, err = await wait(proc.communicate())
        assert (out, err) == (b'out\nerr\n', None)
        assert proc.returncode == 0
    run(main())


def test_devnull(loop, run):
    async def main():
        transport, proto = await spawn_exec(
            loop, SH, '-c', 'cat; echo gone; echo err >&2',
            stdin=DEVNULL, stdout=DEVNULL, stderr=PIPE)
        assert transport.get_pipe_transport(0) is None
        assert transport.get_pipe_transport(1) is None
        assert transport.get_pipe_transport(2) is not None
        await wait(proto.done)
        check_order(proto.events, [2], 0)
        assert proto.out(1) == b''
        assert proto.out(2) == b'err\n'
        transport.close()
    run(main())


def test_fd_numbers(loop, run):
    """stdin and stdout given as raw fd numbers (pipe ends)."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        os.write(in_w, b'via fd\n')
        os.close(in_w)
        in_w = -1

        async def main():
            proc = await wait(asyncio.create_subprocess_exec(
                CAT, stdin=in_r, stdout=out_w))
            assert (proc.stdin, proc.stdout, proc.stderr) == (None, None, None)
            assert await wait(proc.wait()) == 0
        run(main())
        os.close(out_w)
        out_w = -1
        data = b''
        while chunk := os.read(out_r, 4096):
            data += chunk
        assert data == b'via fd\n'
    finally:
        for fd in (in_r, in_w, out_r, out_w):
            if fd >= 0:
                os.close(fd)


def test_file_objects(loop, run, tmp_path):
    src = tmp_path / 'in.txt'
    src.write_bytes(b'from a file\n' * 100)
    dst = tmp_path / 'out.txt'

    async def main():
        with open(src, 'rb') as fin, open(dst, 'wb') as fout:
            transport, proto = await spawn_exec(
                loop, CAT, stdin=fin, stdout=fout, stderr=PIPE)
            await wait(proto.done)
            check_order(proto.events, [2], 0)
            transport.close()
    run(main())
    assert dst.read_bytes() == b'from a file\n' * 100


def test_env(loop, run):
    async def main():
        proc = await wait(asyncio.create_subprocess_exec(
            SH, '-c', 'echo "$FERRO_T"; echo "${FERRO_UNSET-unset}"',
            stdout=PIPE, env={'FERRO_T': 'x y'}))
        out, _ = await wait(proc.communicate())
        assert out == b'x y\nunset\n'
        proc = await wait(asyncio.create_subprocess_shell(
            'echo "$FERRO_T"', stdout=PIPE, env={'FERRO_T': 'shell'}))
        out, _ = await wait(proc.communicate())
        assert out == b'shell\n'
    run(main())


def test_cwd(loop, run, tmp_path):
    async def main():
        proc = await wait(asyncio.create_subprocess_exec(
            SH, '-c', 'pwd -P', stdout=PIPE, cwd=tmp_path))
        out, _ = await wait(proc.communicate())
        assert out.decode().strip() == os.path.realpath(tmp_path)
        assert proc.returncode == 0
    run(main())


def test_pass_fds(loop, run):
    r, w = os.pipe()
    try:
        async def main(pass_fds):
            proc = await wait(asyncio.create_subprocess_exec(
                # /dev/fd/N: dash's ">&N" takes one digit only.
                SH, '-c', f'echo passed > /dev/fd/{w}', stderr=DEVNULL,
                pass_fds=pass_fds))
            return await wait(proc.wait())

        assert run(main((w,))) == 0
        # Not passed: close_fds closes it in the child, the shell fails.
        assert run(main(())) != 0
        os.close(w)
        w = -1
        data = b''
        while chunk := os.read(r, 4096):
            data += chunk
        assert data == b'passed\n'
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


@pytest.mark.parametrize('new_session', [True, False])
def test_start_new_session(loop, run, new_session):
    async def main():
        proc = await wait(asyncio.create_subprocess_exec(
            SLEEP, '30', start_new_session=new_session))
        try:
            st = proc_stat(proc.pid)
            assert st is not None and st['ppid'] == os.getpid()
            if new_session:
                assert st['session'] == proc.pid
                assert st['session'] != os.getsid(0)
                assert st['pgrp'] == proc.pid
            else:
                assert st['session'] == os.getsid(0)
        finally:
            proc.kill()
            assert await wait(proc.wait()) == -signal.SIGKILL
    run(main())


def test_preexec_fn(loop, run):
    calls = []

    def preexec():
        os.umask(0o027)
        calls.append('child only')

    async def main():
        proc = await wait(asyncio.create_subprocess_exec(
            SH, '-c', 'umask', stdout=PIPE, preexec_fn=preexec))
        out, _ = await wait(proc.communicate())
        assert out.strip() == b'0027'
        assert proc.returncode == 0
    run(main())
    assert calls == []   # ran in the forked child, not here


# ---------------------------------------------------------------------------
# Process: communicate, wait, streams
# ---------------------------------------------------------------------------

def test_communicate_with_input(loop, run):
    data = random.Random(1).randbytes(1 << 20)

    async def main():
        proc = await wait(asyncio.create_subprocess_exec(
            CAT, stdin=PIPE, stdout=PIPE))
        out, err = await wait(proc.communicate(data))
        assert err is None
        assert len(out) == len(data)
        assert out == data
        assert proc.returncode == 0
    run(main())


def test_communicate_shell_all_pipes(loop, run):
    async def main():
        proc = await wait(asyncio.create_subprocess_shell(
            'cat; echo err >&2; exit 7', stdin=PIPE, stdout=PIPE, stderr=PIPE))
        assert proc.returncode is None
        out, err = await wait(proc.communicate(b'abc'))
        assert (out, err) == (b'abc', b'err\n')
        assert proc.returncode == 7
    run(main())


def test_communicate_input_child_not_reading(loop, run):
    """The child exits without reading stdin: communicate() ignores the
    BrokenPipeError / ConnectionResetError of feeding it."""
    async def main():
        proc = await wait(asyncio.create_subprocess_exec(
            SH, '-c', 'exit 0', stdin=PIPE, stdout=PIPE))
        await asyncio.sleep(0.1)
        out, err = await wait(proc.communicate(b'x' * (1 << 20)))
        assert (out, err) == (b'', None)
        assert proc.returncode == 0
    run(main())


def test_wait_and_returncode(loop, run):
    async def main():
        proc = await wait(asyncio.create_subprocess_exec(SH, '-c', 'sleep 0.1; exit 3'))
        assert proc.returncode is None
        assert proc.pid == proc._transport.get_pid()
        w1 = asyncio.ensure_future(proc.wait())
        w2 = asyncio.ensure_future(proc.wait())
        assert await wait(w1) == 3
        assert await wait(w2) == 3
        assert await wait(proc.wait()) == 3
        assert proc.returncode == 3
    run(main())


def test_stdin_write_drain_megabytes_through_cat(loop, run):
    size = 4 << 20
    data = random.Random(2).randbytes(size)

    async def main():
        proc = await wait(asyncio.create_subprocess_exec(
            CAT, stdin=PIPE, stdout=PIPE))

        async def reader():
            h = hashlib.sha256()
            n = 0
            while chunk := await proc.stdout.read(1 << 16):
                h.update(chunk)
                n += len(chunk)
            return n, h.hexdigest()

        rtask = asyncio.ensure_future(reader())
        step = 256 * 1024
        for i in range(0, size, step):
            proc.stdin.write(data[i:i + step])
            await wait(proc.stdin.drain())
        proc.stdin.close()
        await wait(proc.stdin.wait_closed())
        n, digest = await wait(rtask)
        assert n == size
        assert digest == hashlib.sha256(data).hexdigest()
        assert await wait(proc.wait()) == 0
    run(main())


def test_stdout_readline_and_eof(loop, run):
    async def main():
        proc = await wait(asyncio.create_subprocess_exec(
            SH, '-c', 'echo one; echo two', stdout=PIPE))
        assert await wait(proc.stdout.readline()) == b'one\n'
        assert await wait(proc.stdout.readline()) == b'two\n'
        assert await wait(proc.stdout.readline()) == b''
        assert proc.stdout.at_eof()
        assert await wait(proc.wait()) == 0
    run(main())


# ---------------------------------------------------------------------------
# signals
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('how, expected', [
    ('terminate', -signal.SIGTERM),
    ('kill', -signal.SIGKILL),
    ('send_signal', -signal.SIGUSR1),
])
def test_signal_running_child(loop, run, how, expected):
    async def main():
        proc = await wait(asyncio.create_subprocess_exec(SLEEP, '30'))
        if how == 'send_signal':
            proc.send_signal(signal.SIGUSR1)
        else:
            getattr(proc, how)()
        assert await wait(proc.wait()) == expected
        assert proc.returncode == expected
    run(main())


@pytest.mark.parametrize('how', ['send_signal', 'terminate', 'kill'])
def test_signal_after_wait_raises_process_lookup_error(loop, run, how):
    """After wait() returned (connection_lost ran, ``_proc`` is cleared),
    _check_proc raises ProcessLookupError."""
    async def main():
        proc = await wait(asyncio.create_subprocess_exec(TRUE))
        assert await wait(proc.wait()) == 0
        with pytest.raises(ProcessLookupError):
            if how == 'send_signal':
                proc.send_signal(signal.SIGTERM)
            else:
                getattr(proc, how)()
        assert proc.returncode == 0
    run(main())


def test_signal_in_process_exited_is_a_no_op(loop, run):
    """In process_exited (``_proc`` still set, its returncode known) the
    signal is skipped by Popen.send_signal: no error, nothing changes."""
    async def main():
        transport, proto = await spawn_exec(
            loop, SH, '-c', 'exit 9', stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL)
        results = []

        def hook():
            for call in (lambda: transport.send_signal(signal.SIGTERM),
                         transport.terminate, transport.kill):
                try:
                    call()
                except BaseException as exc:   # recorded, asserted below
                    results.append(exc)
                else:
                    results.append(None)
        proto.in_process_exited = hook
        await wait(proto.done)
        assert results == [None, None, None]
        assert transport.get_returncode() == 9
        check_order(proto.events, [], 9)
        with pytest.raises(ProcessLookupError):
            transport.send_signal(signal.SIGTERM)
        with pytest.raises(ProcessLookupError):
            transport.kill()
        transport.close()
    run(main())


@pytest.mark.parametrize('how', ['kill', 'terminate', 'send_signal', 'close'])
def test_signal_or_close_after_unnoticed_exit(loop, run, how):
    """The child exited, the loop has not delivered it yet (it is blocked):
    kill()/terminate()/send_signal()/close() do not fail and the return
    code stays the child's own (3), not a killed one and not 255.

    asyncio 3.11: the ThreadedChildWatcher thread reaped the child already
    and queued ``_process_exited(3)``; Popen.send_signal / close() poll the
    child, get ECHILD, skip the signal; the transport keeps 3.

    The child waits for EOF on a pipe the test closes while the loop is
    blocked, so its exit cannot be seen by the loop before the call."""
    r, w = os.pipe()
    still_open = {r, w}

    def close(fd):
        still_open.discard(fd)
        os.close(fd)

    async def main():
        transport, proto = await spawn_exec(
            loop, SH, '-c', 'read x; exit 3', stdin=r, stdout=DEVNULL, stderr=DEVNULL)
        close(r)
        try:
            # From here to the call the loop does not run.
            assert proc_stat(transport.get_pid())['state'] != 'Z'
            close(w)
            wait_exited_unnoticed(transport.get_pid())
            if how == 'send_signal':
                transport.send_signal(signal.SIGTERM)
            else:
                getattr(transport, how)()
            await wait(proto.done)
            assert proto.events[-2:] == [('process_exited', 3), ('connection_lost', None)]
            assert transport.get_returncode() == 3
        finally:
            transport.close()
    try:
        run(main())
    finally:
        for fd in list(still_open):
            close(fd)


# ---------------------------------------------------------------------------
# transport accessors and close()
# ---------------------------------------------------------------------------

def test_transport_accessors(loop, run):
    async def main():
        transport, proto = await spawn_exec(
            loop, SH, '-c', 'read x; exit 0', stdin=PIPE, stdout=DEVNULL, stderr=PIPE)
        pid = transport.get_pid()
        assert isinstance(pid, int) and pid > 0
        assert proc_stat(pid)['ppid'] == os.getpid()
        assert transport.get_returncode() is None
        popen = transport.get_extra_info('subprocess')
        assert isinstance(popen, subprocess.Popen)
        assert popen.pid == pid
        t0 = transport.get_pipe_transport(0)
        t2 = transport.get_pipe_transport(2)
        assert isinstance(t0, asyncio.WriteTransport)
        assert isinstance(t2, asyncio.ReadTransport)
        assert transport.get_pipe_transport(1) is None
        assert transport.get_pipe_transport(3) is None
        assert not transport.is_closing()
        assert transport.get_protocol() is proto
        t0.write(b'line\n')
        await wait(proto.done)
        assert transport.get_returncode() == 0
        assert transport.get_pid() == pid
        assert popen.returncode == 0
        transport.close()
        assert transport.is_closing()
        transport.close()   # idempotent
    run(main())


def test_close_running_child_kills_it(loop, run):
    async def main():
        transport, proto = await spawn_exec(loop, SLEEP, '30')
        pid = transport.get_pid()
        assert transport.get_returncode() is None
        transport.close()
        assert transport.is_closing()
        # The pipes are closed at once; the child gets SIGKILL.
        for fd in (0, 1, 2):
            assert transport.get_pipe_transport(fd).is_closing()
        await wait(proto.done)
        assert transport.get_returncode() == -signal.SIGKILL
        check_order(proto.events, [0, 1, 2], -signal.SIGKILL)
        assert proc_stat(pid) is None   # reaped
    run(main())


def test_close_after_exit_does_not_kill(loop, run):
    async def main():
        transport, proto = await spawn_exec(
            loop, SH, '-c', 'exit 2', stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL)
        await wait(proto.exited)
        transport.close()
        await wait(proto.done)
        assert transport.get_returncode() == 2
    run(main())


def test_kill_child_blocked_on_full_pipe(loop, run):
    """A child blocked writing into a full stdout pipe (the StreamReader
    paused reading at its limit) is killed; communicate() drains the pipe to
    its EOF and returns.  (wait() alone would wait for that EOF forever: the
    deadlock asyncio documents for wait() with stdout=PIPE.)"""
    async def main():
        proc = await wait(asyncio.create_subprocess_exec(YES, stdout=PIPE))
        assert await wait(proc.stdout.readexactly(1 << 16)) == b'y\n' * (1 << 15)
        await asyncio.sleep(0.05)
        proc.kill()
        out, err = await wait(proc.communicate())
        assert err is None
        assert len(out) % 2 == 0 and out == b'y\n' * (len(out) // 2)
        assert proc.returncode == -signal.SIGKILL
    run(main())


# ---------------------------------------------------------------------------
# spawn failures
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('api', ['loop', 'create'])
def test_nonexistent_executable(loop, run, api):
    async def main():
        factory = Factory(loop)
        with pytest.raises(FileNotFoundError):
            if api == 'loop':
                await loop.subprocess_exec(factory, '/nonexistent/ferroloop-prog')
            else:
                await asyncio.create_subprocess_exec(
                    '/nonexistent/ferroloop-prog', stdin=PIPE, stdout=PIPE,
                    stderr=PIPE)
        if api == 'loop':
            # asyncio makes the protocol first; it never gets connection_made.
            assert len(factory.protocols) == 1
            assert factory.protocols[0].events == []
    before_fds = fd_count()
    before_children = set(children_of_this_process())
    for _ in range(20):
        run(main())
    assert fd_count() == before_fds
    assert set(children_of_this_process()) == before_children
    assert new_zombies() == []


def test_nonexistent_cwd(loop, run, tmp_path):
    async def main():
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec(
                TRUE, cwd=tmp_path / 'missing', stdout=PIPE)
    before = fd_count()
    run(main())
    assert fd_count() == before
    assert new_zombies() == []


def test_not_executable(loop, run, tmp_path):
    script = tmp_path / 'script.sh'
    script.write_text('#!/bin/sh\nexit 0\n')
    script.chmod(0o644)

    async def main():
        with pytest.raises(PermissionError):
            await asyncio.create_subprocess_exec(str(script), stdout=PIPE)
    before = fd_count()
    run(main())
    assert fd_count() == before
    assert new_zombies() == []


def test_preexec_fn_raising(loop, run):
    def boom():
        raise RuntimeError('in the child')

    async def main():
        with pytest.raises(subprocess.SubprocessError,
                           match='Exception occurred in preexec_fn'):
            await asyncio.create_subprocess_exec(
                TRUE, stdin=PIPE, stdout=PIPE, stderr=PIPE, preexec_fn=boom)
    before = fd_count()
    run(main())
    assert fd_count() == before
    assert new_zombies() == []


def test_shell_nonexistent_command_is_exit_127(loop, run):
    async def main():
        proc = await wait(asyncio.create_subprocess_shell(
            'ferroloop-no-such-command-xyz', stderr=PIPE))
        _, err = await wait(proc.communicate())
        assert proc.returncode == 127
        assert b'not found' in err
    run(main())


# ---------------------------------------------------------------------------
# a loop in a non-main thread
# ---------------------------------------------------------------------------

def test_subprocess_in_non_main_thread(loop, loop_factory):
    """``loop`` (the fixture) checks for fd leaks; a second loop runs in a
    worker thread and spawns, talks to, kills and reaps children there."""
    outcome = {}

    async def main():
        proc = await wait(asyncio.create_subprocess_exec(
            CAT, stdin=PIPE, stdout=PIPE))
        out, _ = await wait(proc.communicate(b'thread'))
        p2 = await wait(asyncio.create_subprocess_shell('exit 5'))
        p3 = await wait(asyncio.create_subprocess_exec(SLEEP, '30'))
        p3.terminate()
        return out, proc.returncode, await wait(p2.wait()), await wait(p3.wait())

    def worker():
        lp = loop_factory()
        try:
            outcome['result'] = lp.run_until_complete(main())
        except BaseException as exc:   # reported by the main thread
            outcome['error'] = exc
        finally:
            lp.close()

    t = threading.Thread(target=worker, name='subprocess-loop-thread')
    t.start()
    t.join(TIMEOUT * 2)
    assert not t.is_alive()
    if 'error' in outcome:
        raise outcome['error']
    assert outcome['result'] == (b'thread', 0, 5, -signal.SIGTERM)
    assert new_zombies() == []


def test_child_outliving_its_loop_is_reaped(loop, loop_factory):
    """A child still running when its loop closes, exiting afterwards, is
    reaped all the same: no zombie is left.  (3.11's ThreadedChildWatcher:
    the waitpid thread reaps it and only logs "Loop ... that handles pid
    ... is closed".)  ``loop`` (the fixture) checks for fd leaks."""
    r, w = os.pipe()
    still_open = {r, w}

    def close(fd):
        still_open.discard(fd)
        os.close(fd)

    lp = loop_factory()
    transport = None
    try:
        transport, _ = lp.run_until_complete(lp.subprocess_exec(
            lambda: SubprocRecorder(lp), SH, '-c', 'read x; exit 0',
            stdin=r, stdout=DEVNULL, stderr=DEVNULL))
        close(r)
        pid = transport.get_pid()
        lp.close()
        close(w)   # the child exits now, its loop closed
        deadline = time.monotonic() + 2.0
        while proc_stat(pid) is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc_stat(pid) is None, (
            f'child {pid} is left a zombie after its loop closed: {proc_stat(pid)}')
    finally:
        if not lp.is_closed():
            lp.close()
        if transport is not None:
            transport.close()   # (its Popen.poll() reaps a zombie)
        for fd in list(still_open):
            close(fd)


# ---------------------------------------------------------------------------
# 1,000 children: no zombies, no leaked fds
# ---------------------------------------------------------------------------

def test_thousand_children_no_zombies_no_fd_leak(loop, run):
    total, batch = 1000, 50

    async def exits_0():
        proc = await asyncio.create_subprocess_exec(TRUE)
        return await proc.wait()

    async def exits_3():
        proc = await asyncio.create_subprocess_exec(SH, '-c', 'exit 3')
        return await proc.wait()

    async def killed():
        proc = await asyncio.create_subprocess_exec(SLEEP, '30')
        proc.kill()
        return await proc.wait()

    async def read_side_closed_writer():
        # ``yes`` writes into a pipe whose read side the parent closed:
        # SIGPIPE (restored to SIG_DFL by Popen in the child).
        transport, proto = await loop.subprocess_exec(
            lambda: SubprocRecorder(loop), YES, stdin=DEVNULL, stderr=DEVNULL)
        transport.get_pipe_transport(1).close()
        await proto.done
        transport.close()
        return transport.get_returncode()

    async def all_pipes_closed_early():
        transport, proto = await loop.subprocess_exec(
            lambda: SubprocRecorder(loop), TRUE)
        for fd in (0, 1, 2):
            transport.get_pipe_transport(fd).close()
        await proto.done
        transport.close()
        return transport.get_returncode()

    kinds = [(exits_0, 0), (exits_3, 3), (killed, -signal.SIGKILL),
             (read_side_closed_writer, -signal.SIGPIPE), (exits_0, 0),
             (all_pipes_closed_early, 0), (exits_0, 0), (exits_0, 0)]
    plan = [kinds[i % len(kinds)] for i in range(total)]

    async def main():
        results = []
        for start in range(0, total, batch):
            chunk = plan[start:start + batch]
            results += await wait(
                asyncio.gather(*(fn() for fn, _ in chunk)), timeout=30)
        return results

    gc.collect()
    fds_before = fd_count()
    children_before = set(children_of_this_process())
    t0 = time.monotonic()
    results = run(main())
    elapsed = time.monotonic() - t0
    expected = [rc for _, rc in plan]
    bad = [(i, plan[i][0].__name__, r, e)
           for i, (r, e) in enumerate(zip(results, expected, strict=True)) if r != e]
    assert bad == [], bad[:10]
    # (Relative to before: a child some earlier failed test left behind is
    # not this test's.)
    assert set(zombie_children()) - children_before == set()
    assert set(children_of_this_process()) - children_before == set()
    assert fd_count() == fds_before
    if hasattr(loop, '_child_pidfds'):
        assert loop._child_pidfds == {}
    assert elapsed < 30, f'{elapsed:.1f} s for {total} children'


# ---------------------------------------------------------------------------
# ferroloop's reaper: pidfd (no thread) or the thread fallback
# ---------------------------------------------------------------------------

def _waitpid_threads():
    return [t for t in threading.enumerate() if t.name.startswith('ferroloop-waitpid-')]


def test_ferroloop_pidfd_path_starts_no_thread(loop, run, loop_kind):
    skip_unless_ferroloop(loop_kind)
    import ferroloop._children as children
    if not children._pidfd_usable:
        pytest.skip('pidfd_open is not usable here')

    async def main():
        n_threads = threading.active_count()
        idents = {t.ident for t in threading.enumerate()}
        procs = [await wait(asyncio.create_subprocess_exec(SLEEP, '0.3'))
                 for _ in range(3)]
        await asyncio.sleep(0.05)
        assert threading.active_count() == n_threads
        assert {t.ident for t in threading.enumerate()} == idents
        # Each child is watched through a pidfd owned by the loop.
        assert sorted(pid for pid, _ in loop._child_pidfds.values()) == sorted(
            p.pid for p in procs)
        for pidfd in loop._child_pidfds:
            assert os.readlink(f'/proc/self/fd/{pidfd}') == 'anon_inode:[pidfd]'
        for p in procs:
            assert await wait(p.wait()) == 0
        assert loop._child_pidfds == {}
        assert threading.active_count() == n_threads
    run(main())
    assert new_zombies() == []


def test_ferroloop_thread_fallback_reaps(loop, run, loop_kind, monkeypatch):
    skip_unless_ferroloop(loop_kind)
    import ferroloop._children as children
    monkeypatch.setattr(children, '_pidfd_usable', False)

    async def main():
        proc = await wait(asyncio.create_subprocess_exec(
            SH, '-c', 'cat; exit 4', stdin=PIPE, stdout=PIPE))
        # A waiter thread for this child, no pidfd.
        names = [t.name for t in _waitpid_threads()]
        assert f'ferroloop-waitpid-{proc.pid}' in names
        assert loop._child_pidfds == {}
        out, _ = await wait(proc.communicate(b'fallback'))
        assert out == b'fallback'
        assert proc.returncode == 4
        killed = await wait(asyncio.create_subprocess_exec(SLEEP, '30'))
        killed.kill()
        assert await wait(killed.wait()) == -signal.SIGKILL
        return proc.pid, killed.pid

    pids = run(main())
    for t in _waitpid_threads():
        if t.name in {f'ferroloop-waitpid-{pid}' for pid in pids}:
            t.join(TIMEOUT)
            assert not t.is_alive()
    assert proc_stat(pids[0]) is None and proc_stat(pids[1]) is None
    assert new_zombies() == []
    assert children._pidfd_usable is False   # monkeypatch restores it after


def test_ferroloop_loop_closed_with_running_child_closes_pidfd(loop_factory, loop_kind):
    """Closing the loop while a child runs closes the child's pidfd (the
    loop owns it); nothing the reactor watches is left."""
    skip_unless_ferroloop(loop_kind)
    import ferroloop._children as children
    if not children._pidfd_usable:
        pytest.skip('pidfd_open is not usable here')
    before = fd_count()
    lp = loop_factory()

    async def main():
        transport, proto = await spawn_exec(
            lp, SLEEP, '30', stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL)
        return transport

    try:
        transport = lp.run_until_complete(main())
        popen = transport.get_extra_info('subprocess')
        pidfds = list(lp._child_pidfds)
        assert len(pidfds) == 1
    finally:
        lp.close()
    assert lp._child_pidfds == {}
    sources = getattr(lp, '_io_source_count', None)
    assert sources is None or sources() == 0
    assert fd_count() == before
    # Clean up the child ourselves (the transport's loop is gone).
    popen.kill()
    popen.wait()
    transport._closed = True   # silence its "unclosed transport" warning
    del transport
    gc.collect()
