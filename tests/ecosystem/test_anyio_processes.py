"""anyio's subprocess and signal APIs (asyncio backend) on the test's loop:
``run_process`` (captured output, input, shell commands, return codes,
``CalledProcessError``), ``open_process`` (interactive stdin/stdout,
terminate / kill / send_signal, cancellation), ``open_signal_receiver``
(SIGUSR1 / SIGUSR2 from this process and from a child).

anyio's asyncio backend runs on whichever loop is running (its processes
are ``loop.subprocess_exec`` / ``subprocess_shell``, its signal receiver
``loop.add_signal_handler``), so each test is one
``loop.run_until_complete`` of anyio code.  The children are real
processes (this interpreter, ``/bin/sh``); every wait is bounded.
"""

import hashlib
import os
import signal
import subprocess
import sys

import pytest
from io_helpers import payload

anyio = pytest.importorskip('anyio')

PY = sys.executable

# A child that upper-cases stdin line by line, flushing each line.
UPPER = ('import sys\n'
         'for line in sys.stdin:\n'
         '    sys.stdout.write(line.upper()); sys.stdout.flush()\n'
         'sys.stderr.write("stdin closed\\n")\n')

# A child that says "ready", then sleeps (optionally reporting SIGUSR1).
SLEEPER = ('import signal, sys, time\n'
           'def usr1(signum, frame):\n'
           '    print("got SIGUSR1", flush=True)\n'
           'signal.signal(signal.SIGUSR1, usr1)\n'
           'print("ready", flush=True)\n'
           'for _ in range(600):\n'
           '    time.sleep(0.1)\n')


async def read_until(stream, needle, limit=1 << 20):
    """Receives from an anyio byte stream until ``needle`` arrives."""
    data = b''
    while needle not in data:
        with anyio.fail_after(10):
            data += await stream.receive()
        assert len(data) < limit
    return data


def assert_gone(pid):
    """The child has been reaped: its pid is no longer ours to signal."""
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_anyio_run_process(loop, bounded, tmp_path):
    async def main():
        # stdout and stderr captured separately, return code 0
        res = await anyio.run_process(
            [PY, '-c', 'import sys; print("to stdout"); print("to stderr", file=sys.stderr)'])
        assert isinstance(res, subprocess.CompletedProcess)
        assert (res.returncode, res.stdout, res.stderr) == (0, b'to stdout\n', b'to stderr\n')

        # a shell command line (loop.subprocess_shell)
        res = await anyio.run_process('echo "$FL_VALUE" && pwd && echo oops >&2',
                                      env={**os.environ, 'FL_VALUE': 'from env'},
                                      cwd=str(tmp_path))
        assert res.stdout.decode().splitlines() == ['from env', str(tmp_path)]
        assert res.stderr == b'oops\n'

        # 2 MiB through the child: input= written while both outputs drain
        data = payload(2 << 20)
        res = await anyio.run_process(
            [PY, '-c', 'import sys; d = sys.stdin.buffer.read(); '
                       'sys.stdout.buffer.write(d[::-1]); sys.stderr.buffer.write(d[:100000])'],
            input=data)
        assert hashlib.sha256(res.stdout).digest() == hashlib.sha256(data[::-1]).digest()
        assert res.stderr == data[:100000]

        # output not captured
        res = await anyio.run_process([PY, '-c', 'print("x")'], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        assert (res.returncode, res.stdout, res.stderr) == (0, None, None)

        # many children at once
        results = {}

        async def one(i):
            r = await anyio.run_process([PY, '-c', f'import sys; print({i}); sys.exit({i % 4})'],
                                        check=False)
            results[i] = (r.returncode, r.stdout)

        async with anyio.create_task_group() as tg:
            for i in range(12):
                tg.start_soon(one, i)
        assert results == {i: (i % 4, f'{i}\n'.encode()) for i in range(12)}

    bounded(main())


def test_anyio_run_process_failure(loop, bounded):
    async def main():
        cmd = [PY, '-c', 'import sys; print("partial"); print("bad", file=sys.stderr); '
                         'sys.exit(3)']
        with pytest.raises(subprocess.CalledProcessError) as info:
            await anyio.run_process(cmd)
        exc = info.value
        assert exc.returncode == 3
        assert exc.cmd == cmd
        assert (exc.stdout, exc.stderr) == (b'partial\n', b'bad\n')

        # check=False: the same command completes with its status
        res = await anyio.run_process(cmd, check=False)
        assert (res.returncode, res.stdout, res.stderr) == (3, b'partial\n', b'bad\n')

        # a shell command that fails
        with pytest.raises(subprocess.CalledProcessError) as info:
            await anyio.run_process('exit 7')
        assert info.value.returncode == 7

        # killed by a signal: a negative return code
        with pytest.raises(subprocess.CalledProcessError) as info:
            await anyio.run_process([PY, '-c', 'import os, signal; '
                                               'os.kill(os.getpid(), signal.SIGKILL)'])
        assert info.value.returncode == -signal.SIGKILL

        # no such program: the exec error, raised in the parent
        with pytest.raises(FileNotFoundError):
            await anyio.run_process(['/nonexistent/ferroloop-test-program'])

    bounded(main())


def test_anyio_open_process_streaming(loop, bounded):
    async def main():
        async with await anyio.open_process([PY, '-c', UPPER]) as proc:
            assert proc.pid > 0 and proc.returncode is None
            # one line at a time: each answer arrives before the next write
            for i in range(20):
                line = f'line {i} of the conversation\n'.encode()
                await proc.stdin.send(line)
                assert await read_until(proc.stdout, b'\n') == line.upper()
            # a large write while reading the answer concurrently
            big = b''.join(f'{i:08d} abcdefghij\n'.encode() for i in range(60_000))
            got = []

            async def reader():
                n = 0
                async for chunk in proc.stdout:
                    got.append(chunk)
                    n += len(chunk)
                    if n >= len(big):
                        return

            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                await proc.stdin.send(big)
            assert b''.join(got) == big.upper()
            # EOF on stdin ends the child
            await proc.stdin.aclose()
            assert await read_until(proc.stderr, b'\n') == b'stdin closed\n'
            with anyio.fail_after(10):
                assert await proc.wait() == 0
            assert proc.returncode == 0
            # its stdout is at EOF
            with pytest.raises(anyio.EndOfStream):
                with anyio.fail_after(10):
                    await proc.stdout.receive()
        assert_gone(proc.pid)

    bounded(main())


@pytest.mark.parametrize('how', ['terminate', 'kill', 'send_signal'])
def test_anyio_open_process_signals(loop, bounded, how):
    expected = {'terminate': -signal.SIGTERM, 'kill': -signal.SIGKILL,
                'send_signal': -signal.SIGINT}[how]

    async def main():
        async with await anyio.open_process([PY, '-c', SLEEPER]) as proc:
            await read_until(proc.stdout, b'ready\n')
            # a signal the child handles: it stays alive and reports it
            proc.send_signal(signal.SIGUSR1)
            await read_until(proc.stdout, b'got SIGUSR1\n')
            assert proc.returncode is None
            if how == 'terminate':
                proc.terminate()
            elif how == 'kill':
                proc.kill()
            else:  # SIGINT: KeyboardInterrupt in the child, then Python
                # re-raises SIGINT on exit -> killed by SIGINT
                proc.send_signal(signal.SIGINT)
            with anyio.fail_after(10):
                rc = await proc.wait()
            assert rc == expected
            assert proc.returncode == expected
        assert_gone(proc.pid)

    bounded(main())


def test_anyio_open_process_cancelled(loop, bounded):
    """Cancelling a task that waits on a process: leaving ``async with``
    kills the child (anyio closes the transport) and reaps it."""
    async def main():
        pids = []
        with anyio.move_on_after(0.5) as scope:
            async with await anyio.open_process([PY, '-c', SLEEPER]) as proc:
                pids.append(proc.pid)
                await read_until(proc.stdout, b'ready\n')
                await proc.wait()  # sleeps ~60 s: cancelled
        assert scope.cancelled_caught
        assert proc.returncode == -signal.SIGKILL
        assert_gone(pids[0])

        # run_process cancelled from outside
        with anyio.move_on_after(0.5) as scope:
            await anyio.run_process([PY, '-c', 'import time; time.sleep(60)'])
        assert scope.cancelled_caught

    bounded(main())


def test_anyio_signal_receiver(loop, bounded):
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGUSR2)}

    async def main():
        got = []
        with anyio.open_signal_receiver(signal.SIGUSR1, signal.SIGUSR2) as signals:
            # sent by this process: queued before we iterate
            for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGUSR1, signal.SIGUSR2):
                os.kill(os.getpid(), sig)
            async for sig in signals:
                got.append(sig)
                if len(got) == 4:
                    break
            assert got == [signal.SIGUSR1, signal.SIGUSR2, signal.SIGUSR1, signal.SIGUSR2]

            # sent by a child while the loop waits for I/O (its exit)
            ppid = os.getpid()
            await anyio.run_process(
                [PY, '-c', f'import os, signal, time; os.kill({ppid}, signal.SIGUSR2); '
                           f'time.sleep(0.1); os.kill({ppid}, signal.SIGUSR1)'])
            received = []
            with anyio.fail_after(10):
                async for sig in signals:
                    received.append(sig)
                    if len(received) == 2:
                        break
            assert received == [signal.SIGUSR2, signal.SIGUSR1]

            # sent while a task waits in the receiver
            async def sender():
                await anyio.sleep(0.2)
                os.kill(os.getpid(), signal.SIGUSR1)

            async with anyio.create_task_group() as tg:
                tg.start_soon(sender)
                with anyio.fail_after(10):
                    assert await signals.__anext__() == signal.SIGUSR1
            assert isinstance(got[0], signal.Signals)
        # the loop's handlers are gone again
        assert {sig: signal.getsignal(sig) for sig in before} == before

    bounded(main())
