"""One loop iteration under stress: signals that arrive just before the poll,
timer handles compared with themselves, and the cancelled-timer count.

The scenarios that can hang or kill the interpreter (a self-deadlock with the
GIL held, a KeyboardInterrupt raised inside the loop) run in a child process
with a time limit, so a regression fails the test instead of the suite.
"""

import asyncio
import subprocess
import sys
import textwrap

import pytest
from conftest import LOOP_KINDS, require_ferroloop

CHILD_PRELUDE = textwrap.dedent(
    """
    import asyncio, sys
    kind = sys.argv[1]
    if kind == 'asyncio':
        loop = asyncio.SelectorEventLoop()
    else:
        import ferroloop
        loop = ferroloop.new_event_loop(native_tasks=(kind == 'ferroloop'))
    asyncio.set_event_loop(loop)
    """
)


def run_child(kind, body, timeout=20):
    if kind != 'asyncio':
        require_ferroloop()
    code = CHILD_PRELUDE + textwrap.dedent(body)
    try:
        p = subprocess.run(
            [sys.executable, '-c', code, kind],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f'child process hung for {timeout}s (deadlock?)')
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.mark.parametrize('kind', LOOP_KINDS)
def test_timer_handle_equals_itself_without_deadlock(kind):
    out = run_child(
        kind,
        """
        h = loop.call_later(10, print)
        print(h == h, h != h, h <= h, h >= h)
        h.cancel()
        print(h == h)
        loop.close()
        """,
    )
    assert out.split() == ['True', 'False', 'True', 'True', 'True']


@pytest.mark.parametrize('kind', LOOP_KINDS)
def test_timer_handle_eq_may_cancel_from_the_callbacks_eq(kind):
    # The callbacks' own __eq__ runs during the comparison; it may touch the
    # handles (here: cancel one), which must not deadlock.
    out = run_child(
        kind,
        """
        class Cb:
            handles = []
            def __call__(self):
                pass
            def __eq__(self, other):
                for h in Cb.handles:
                    h.cancel()
                return True
            __hash__ = object.__hash__
        when = loop.time() + 10
        a = loop.call_at(when, Cb())
        b = loop.call_at(when, Cb())
        Cb.handles[:] = [a]
        print(a == b, a.cancelled())
        loop.close()
        """,
    )
    # asyncio compares when, callback, args, then the cancelled flags (read
    # after the callbacks' __eq__ ran): a was cancelled meanwhile.
    assert out.split() == ['False', 'True']


@pytest.mark.parametrize('kind', LOOP_KINDS)
def test_sigint_before_a_blocking_poll_keeps_the_loop_polling(kind):
    # A SIGINT that arrives while a callback runs C code only (no bytecode
    # checks for signals) is seen by the loop's own check just before it
    # blocks on the pending timer. After the KeyboardInterrupt, the loop must
    # still block in its poll (no CPU burnt) and still fire timers.
    out = run_child(
        kind,
        """
        import ctypes, os, signal, time
        libc = ctypes.CDLL(None, use_errno=True)
        loop.call_later(30, print, 'unreachable')
        loop.call_soon(libc.kill, os.getpid(), signal.SIGINT)
        try:
            loop.run_forever()
        except KeyboardInterrupt:
            print('interrupted')
        cpu0, t0 = time.process_time(), time.monotonic()
        loop.run_until_complete(asyncio.sleep(0.5))
        cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
        print(f'{cpu:.3f} {wall:.3f}')
        fired = []
        loop.call_later(0.05, fired.append, 1)
        loop.run_until_complete(asyncio.sleep(0.2))
        print(fired)
        loop.close()
        """,
    )
    lines = out.splitlines()
    assert lines[0] == 'interrupted'
    cpu, wall = map(float, lines[1].split())
    assert wall >= 0.45
    assert cpu < 0.25, f'the loop spun instead of polling: {cpu:.3f}s CPU in {wall:.3f}s'
    assert lines[2] == '[1]'


def test_timer_cancelled_count_ignores_unscheduled_handles(loop):
    # asyncio counts a cancelled TimerHandle only if it was scheduled
    # (`handle._scheduled`), which decides when the timer heap is compacted.
    def cb():
        pass

    unscheduled = asyncio.TimerHandle(loop.time() + 10, cb, (), loop)
    unscheduled.cancel()
    assert loop._timer_cancelled_count == 0
    h = loop.call_later(10, cb)
    h.cancel()
    assert loop._timer_cancelled_count == 1
    h.cancel()  # a second cancel is a no-op
    assert loop._timer_cancelled_count == 1

