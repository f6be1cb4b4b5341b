"""Signals: ``loop.add_signal_handler`` / ``remove_signal_handler``, Ctrl-C
under ``asyncio.run`` and ``run_forever``, and ``os.fork()`` in a running loop.

Expected behaviour: CPython 3.11's Unix loop (unix_events.py
_UnixSelectorEventLoop.add_signal_handler / _handle_signal /
remove_signal_handler / _check_signal / close, selector_events.py
_read_from_self / _process_self_data, events.py Handle, runners.py
Runner.run / _on_sigint):

* ``add_signal_handler(sig, cb, *args)`` checks, in this order: a coroutine
  (function) -> TypeError; ``sig`` not an int -> TypeError, not in
  ``signal.valid_signals()`` -> ValueError('invalid signal number N'); a
  closed loop -> RuntimeError('Event loop is closed'); not the main thread
  (``signal.set_wakeup_fd`` refuses) -> RuntimeError (not ValueError);
  SIGKILL / SIGSTOP -> RuntimeError('sig N cannot be caught').
* The callback is an ``events.Handle`` made at add time (so it runs in one
  copy of the context current at that time, the same copy on every
  delivery), queued on the loop when the signal number is read from the
  wake-up socket: never inside the Python signal handler.
* The loop owns ``signal.set_wakeup_fd`` while it has handlers; removing the
  last one (or closing the loop) sets it back to -1 -- not to a wake-up fd
  installed before (asyncio does not save it).
* ``remove_signal_handler`` returns True/False and restores
  ``signal.default_int_handler`` for SIGINT, ``SIG_DFL`` otherwise.
* ``asyncio.run``: the first SIGINT cancels the main task; if it ends
  cancelled, ``KeyboardInterrupt`` is raised (an uncaught one makes the
  interpreter exit by SIGINT, returncode -2).  A second SIGINT raises
  ``KeyboardInterrupt`` at once.  A loop in ``run_forever`` with no SIGINT
  handler raises ``KeyboardInterrupt`` from ``signal.default_int_handler``.
* After ``os.fork()`` in a coroutine, the child has no running loop (the
  running-loop holder records the pid) and can run a new loop.

The Ctrl-C and burst tests run child processes (``python script.py`` for
asyncio, ``python -m ferroloop script.py`` / ``ferroloop.run`` for
ferroloop), each bounded in time.

A signal that does not interrupt the loop's poll -- it lands in the
microseconds between the loop's last signal check and its blocking poll, or
it is delivered to another thread (the main thread blocks it) -- only sets
CPython's "tripped" flag. asyncio's loop sets no wake-up fd unless it has a
signal handler, so its poll sleeps on until its timeout (a probe sending
SIGINT from a thread at random instants around the poll saw that 18 times
in 6,000). While ferroloop's loop runs in the main thread with no other
wake-up fd set, it gives ``signal.set_wakeup_fd`` its reactor's pipe, and
any signal ends the poll (0 in 6,000). ``test_signal_that_does_not_interrupt
_the_poll`` makes the second case deterministic (the main thread blocks the
signal); on asyncio it documents the sleep.
"""

import asyncio
import contextvars
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from conftest import LOOP_KINDS, make_loop_factory, open_fds, require_ferroloop
from io_helpers import TIMEOUT

SIGUSR1 = signal.SIGUSR1
SIGUSR2 = signal.SIGUSR2
SIGINT = signal.SIGINT

# Signals whose disposition a test may change; restored after every test.
TOUCHED = (signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP)


@pytest.fixture(autouse=True)
def _restore_signal_state():
    """Every test starts with no wake-up fd and ends with this process's
    signal dispositions and wake-up fd as they were (even when it fails)."""
    saved = {sig: signal.getsignal(sig) for sig in TOUCHED}
    saved_wakeup = signal.set_wakeup_fd(-1)
    yield
    signal.set_wakeup_fd(saved_wakeup)
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def wakeup_fd():
    """The current ``signal.set_wakeup_fd`` fd, left unchanged."""
    fd = signal.set_wakeup_fd(-1)
    if fd != -1:
        signal.set_wakeup_fd(fd)
    return fd


def wait(aw, timeout=TIMEOUT):
    return asyncio.wait_for(aw, timeout)


async def wait_until(predicate, timeout=TIMEOUT, interval=0.005):
    async def _poll():
        while not predicate():
            await asyncio.sleep(interval)
    await asyncio.wait_for(_poll(), timeout)


def in_thread(func, *args):
    """Run ``func(*args)`` in a new thread; return ('ok', result) or the
    exception it raised."""
    out = []

    def target():
        try:
            out.append(('ok', func(*args)))
        except BaseException as exc:
            out.append(('exc', exc))

    t = threading.Thread(target=target)
    t.start()
    t.join(TIMEOUT)
    assert not t.is_alive()
    return out[0]


def kill_self(sig=SIGUSR1):
    os.kill(os.getpid(), sig)


def nop(*args):
    pass


# ---------------------------------------------------------------------------
# argument and state errors
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('sig', [signal.SIGKILL, signal.SIGSTOP])
def test_uncatchable_signal_is_runtime_error(loop, sig):
    with pytest.raises(RuntimeError, match=rf'^sig {int(sig)} cannot be caught$'):
        loop.add_signal_handler(sig, nop)
    # Nothing is left behind: no wake-up fd, no handler to remove.
    assert wakeup_fd() == -1
    assert loop.remove_signal_handler(sig) is False


def test_uncatchable_signal_keeps_the_other_handlers(loop, run):
    got = []
    loop.add_signal_handler(SIGUSR1, got.append, 'usr1')
    fd = wakeup_fd()
    assert fd != -1
    with pytest.raises(RuntimeError, match='cannot be caught'):
        loop.add_signal_handler(signal.SIGKILL, nop)
    # The wake-up fd stays the loop's while a handler exists.
    assert wakeup_fd() == fd
    kill_self()
    run(wait_until(lambda: got))
    assert got == ['usr1']


@pytest.mark.parametrize('sig', [0, -1, 65, 1000, signal.NSIG])
def test_invalid_signal_number_is_value_error(loop, sig):
    with pytest.raises(ValueError, match=rf'^invalid signal number {sig}$'):
        loop.add_signal_handler(sig, nop)
    with pytest.raises(ValueError, match=rf'^invalid signal number {sig}$'):
        loop.remove_signal_handler(sig)
    assert wakeup_fd() == -1


@pytest.mark.parametrize('sig', ['SIGUSR1', 10.0, None])
def test_signal_that_is_not_an_int_is_type_error(loop, sig):
    with pytest.raises(TypeError, match=r'^sig must be an int, not '):
        loop.add_signal_handler(sig, nop)
    with pytest.raises(TypeError, match=r'^sig must be an int, not '):
        loop.remove_signal_handler(sig)


def test_signals_enum_and_plain_int_are_accepted(loop, run):
    got = []
    loop.add_signal_handler(int(SIGUSR1), got.append, 1)
    kill_self()
    run(wait_until(lambda: got))
    # The enum member names the same handler.
    assert loop.remove_signal_handler(signal.Signals.SIGUSR1) is True
    assert loop.remove_signal_handler(int(SIGUSR1)) is False


def test_coroutine_callback_is_type_error(loop):
    async def handler():
        pass

    msg = r'^coroutines cannot be used with add_signal_handler\(\)$'
    with pytest.raises(TypeError, match=msg):
        loop.add_signal_handler(SIGUSR1, handler)
    coro = handler()
    try:
        with pytest.raises(TypeError, match=msg):
            loop.add_signal_handler(SIGUSR1, coro)
    finally:
        coro.close()
    assert signal.getsignal(SIGUSR1) is signal.SIG_DFL
    assert wakeup_fd() == -1


def test_checks_order_coroutine_then_signal_then_closed(loop):
    async def handler():
        pass

    loop.close()
    with pytest.raises(TypeError, match='coroutines cannot be used'):
        loop.add_signal_handler(0, handler)
    with pytest.raises(ValueError, match='invalid signal number 0'):
        loop.add_signal_handler(0, nop)
    with pytest.raises(RuntimeError, match=r'^Event loop is closed$'):
        loop.add_signal_handler(SIGUSR1, nop)
    assert signal.getsignal(SIGUSR1) is signal.SIG_DFL
    assert wakeup_fd() == -1
    # remove_signal_handler does not check for a closed loop.
    assert loop.remove_signal_handler(SIGUSR1) is False


def test_add_from_another_thread_is_runtime_error(loop):
    kind, exc = in_thread(loop.add_signal_handler, SIGUSR1, nop)
    assert kind == 'exc'
    # asyncio turns set_wakeup_fd's ValueError into a RuntimeError.
    assert type(exc) is RuntimeError
    assert str(exc) == 'set_wakeup_fd only works in main thread of the main interpreter'
    assert signal.getsignal(SIGUSR1) is signal.SIG_DFL
    assert wakeup_fd() == -1
    assert loop.remove_signal_handler(SIGUSR1) is False


def test_add_from_another_thread_while_the_loop_runs_there(loop_factory):
    """A loop running in a non-main thread cannot add a signal handler."""
    lp = loop_factory()
    try:
        def runner():
            async def main():
                try:
                    lp.add_signal_handler(SIGUSR1, nop)
                except RuntimeError as exc:
                    return exc
            return lp.run_until_complete(main())

        kind, exc = in_thread(runner)
        assert kind == 'ok'
        assert isinstance(exc, RuntimeError)
        assert 'main thread' in str(exc)
    finally:
        lp.close()
    assert signal.getsignal(SIGUSR1) is signal.SIG_DFL
    assert wakeup_fd() == -1


def test_remove_from_another_thread(loop):
    # No handler: False, from any thread.
    assert in_thread(loop.remove_signal_handler, SIGUSR1) == ('ok', False)
    loop.add_signal_handler(SIGUSR1, nop)
    kind, exc = in_thread(loop.remove_signal_handler, SIGUSR1)
    assert kind == 'exc'
    # signal.signal's own error: asyncio does not wrap it ...
    assert type(exc) is ValueError
    assert str(exc) == 'signal only works in main thread of the main interpreter'
    # ... and had already forgotten the handler.
    assert loop.remove_signal_handler(SIGUSR1) is False


# ---------------------------------------------------------------------------
# delivery
# ---------------------------------------------------------------------------

def test_callback_runs_on_the_loop_with_args(loop, run):
    calls = []

    def handler(*args):
        calls.append((args, asyncio.get_running_loop(), threading.get_ident()))

    loop.add_signal_handler(SIGUSR1, handler, 'a', 2, None)
    kill_self()
    # Queued, not run inside the Python-level signal handler.
    assert calls == []
    run(wait_until(lambda: calls))
    assert calls == [(('a', 2, None), loop, threading.get_ident())]


def test_signal_while_not_running_is_handled_on_next_run(loop, run):
    calls = []
    loop.add_signal_handler(SIGUSR1, calls.append, 'x')
    kill_self()
    kill_self()
    kill_self()
    time.sleep(0.01)
    assert calls == []
    run(asyncio.sleep(0.05))
    # Each os.kill() to this process is delivered before it returns, so
    # each writes one byte to the wake-up socket: three callbacks.
    assert calls == ['x', 'x', 'x']


def test_signal_from_another_thread_wakes_a_blocked_loop(loop, run):
    async def main():
        fut = loop.create_future()
        loop.add_signal_handler(SIGUSR1, fut.set_result, 'woken')
        t = threading.Timer(0.05, kill_self)
        t.start()
        try:
            # Nothing else to do: the loop blocks in its poll.
            t0 = time.monotonic()
            assert await wait(fut) == 'woken'
            return time.monotonic() - t0
        finally:
            t.join(TIMEOUT)

    elapsed = run(main())
    assert elapsed < 2.0


def test_signal_directed_at_the_main_thread_wakes_a_blocked_loop(loop, run):
    main_id = threading.main_thread().ident

    async def main():
        fut = loop.create_future()
        loop.add_signal_handler(SIGUSR2, fut.set_result, 'woken')
        t = threading.Timer(0.05, signal.pthread_kill, (main_id, SIGUSR2))
        t.start()
        try:
            assert await wait(fut) == 'woken'
        finally:
            t.join(TIMEOUT)

    run(main())


@pytest.mark.skipif(not hasattr(signal, 'pthread_sigmask'), reason='no pthread_sigmask')
def test_signal_that_does_not_interrupt_the_poll(loop, run, loop_kind):
    """A signal.signal handler's signal delivered to another thread (the
    main thread blocks it): no EINTR ends the main thread's poll. ferroloop
    is woken through its wake-up fd at once; asyncio's loop (no wake-up fd
    without add_signal_handler) sleeps until its next timer."""
    got = []

    def handler(signum, frame):
        got.append(time.monotonic())
        loop.stop()

    signal.signal(SIGUSR2, handler)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {SIGUSR2})
    sent = []

    def send():
        time.sleep(0.1)  # the loop blocks in its poll by then
        sent.append(time.monotonic())
        os.kill(os.getpid(), SIGUSR2)  # only this thread takes it

    guard = loop.call_later(1.5, loop.stop)
    t = threading.Thread(target=send)
    try:
        loop.call_soon(t.start)
        loop.run_forever()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        guard.cancel()
        t.join(TIMEOUT)
    assert got, 'the Python handler never ran'
    latency = got[0] - sent[0]
    if loop_kind == 'asyncio':
        assert latency > 1.0  # woken by the guard timer, not by the signal
    else:
        assert latency < 0.5


class SignalRaised(Exception):
    pass


def test_python_signal_handler_exception_propagates_out_of_the_poll(loop, run):
    """A ``signal.signal`` handler that raises while the loop blocks in its
    poll: the exception leaves ``run_until_complete`` (PEP 475: the poll is
    retried only when the handlers return normally); the loop stays usable."""
    def raiser(signum, frame):
        raise SignalRaised(signum)

    signal.signal(SIGUSR2, raiser)
    task = loop.create_task(asyncio.sleep(TIMEOUT))
    t = threading.Timer(0.05, kill_self, (SIGUSR2,))
    t.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(SignalRaised) as info:
            run(task)
    finally:
        t.join(TIMEOUT)
    assert time.monotonic() - t0 < TIMEOUT / 2
    assert info.value.args == (SIGUSR2,)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        run(task)
    assert run(asyncio.sleep(0.01, 'usable')) == 'usable'


def test_handler_can_stop_run_forever(loop):
    loop.add_signal_handler(SIGUSR1, loop.stop)
    fallback = loop.call_later(TIMEOUT, loop.stop)
    loop.call_later(0.02, kill_self)
    t0 = time.monotonic()
    loop.run_forever()
    assert time.monotonic() - t0 < TIMEOUT / 2
    fallback.cancel()


def test_second_add_replaces_the_handler(loop, run):
    calls = []
    loop.add_signal_handler(SIGUSR1, calls.append, 'first')
    loop.add_signal_handler(SIGUSR1, calls.append, 'second')
    kill_self()
    run(wait_until(lambda: calls))
    run(asyncio.sleep(0.02))
    assert calls == ['second']


def test_removed_before_the_loop_reads_the_signal(loop, run):
    calls = []
    loop.add_signal_handler(SIGUSR1, calls.append, 'x')
    kill_self()  # the wake-up byte is written now ...
    assert loop.remove_signal_handler(SIGUSR1) is True
    # ... and read by a loop that no longer has a handler for it.
    run(asyncio.sleep(0.05))
    assert calls == []


def test_handler_removing_itself(loop, run):
    calls = []

    def handler():
        calls.append(loop.remove_signal_handler(SIGUSR1))

    loop.add_signal_handler(SIGUSR1, handler)
    kill_self()
    run(wait_until(lambda: calls))
    assert calls == [True]
    assert signal.getsignal(SIGUSR1) is signal.SIG_DFL
    assert wakeup_fd() == -1


def test_exception_in_handler_goes_to_exception_handler(loop, run, loop_errors):
    boom = ZeroDivisionError('boom')
    calls = []

    def handler():
        calls.append(1)
        raise boom

    loop.add_signal_handler(SIGUSR1, handler)
    kill_self()
    run(wait_until(lambda: loop_errors))
    # The loop goes on and the handler stays installed.
    kill_self()
    run(wait_until(lambda: len(calls) == 2))
    assert len(loop_errors) == 2
    for ctx in loop_errors:
        assert ctx['message'].startswith('Exception in callback ')
        assert ctx['exception'] is boom
        assert isinstance(ctx['handle'], asyncio.Handle)


cvar = contextvars.ContextVar('cvar', default='unset')


def test_callback_runs_in_one_context_copy_made_at_add_time(loop, run):
    seen = []

    def handler():
        seen.append(cvar.get())
        cvar.set('set by the handler')

    def add():
        cvar.set('at add time')
        loop.add_signal_handler(SIGUSR1, handler)
        cvar.set('after add')

    contextvars.copy_context().run(add)
    for n in (1, 2):
        kill_self()
        run(wait_until(lambda n=n: len(seen) == n))
    # The same copy on every delivery: the second sees the first's change.
    assert seen == ['at add time', 'set by the handler']
    assert cvar.get() == 'unset'


def test_sigint_handler_replaces_keyboard_interrupt(loop, run):
    calls = []
    loop.add_signal_handler(SIGINT, calls.append, 'int')
    kill_self(SIGINT)  # no KeyboardInterrupt here
    run(wait_until(lambda: calls))
    assert calls == ['int']


# ---------------------------------------------------------------------------
# removal, dispositions, the wake-up fd
# ---------------------------------------------------------------------------

def test_remove_restores_default_dispositions(loop):
    for sig in (SIGINT, SIGUSR1, signal.SIGHUP):
        loop.add_signal_handler(sig, nop)
        assert signal.getsignal(sig) not in (signal.SIG_DFL, signal.default_int_handler)
    assert loop.remove_signal_handler(SIGINT) is True
    assert signal.getsignal(SIGINT) is signal.default_int_handler
    assert loop.remove_signal_handler(SIGUSR1) is True
    assert signal.getsignal(SIGUSR1) is signal.SIG_DFL
    assert loop.remove_signal_handler(SIGUSR1) is False
    assert loop.remove_signal_handler(SIGUSR2) is False
    loop.close()
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
    assert loop.remove_signal_handler(signal.SIGHUP) is False


def test_remove_restores_default_not_previous_handler(loop):
    def mine(signum, frame):
        pass

    signal.signal(SIGUSR1, mine)
    signal.signal(SIGINT, signal.SIG_IGN)
    loop.add_signal_handler(SIGUSR1, nop)
    loop.add_signal_handler(SIGINT, nop)
    assert loop.remove_signal_handler(SIGUSR1) is True
    assert loop.remove_signal_handler(SIGINT) is True
    assert signal.getsignal(SIGUSR1) is signal.SIG_DFL
    assert signal.getsignal(SIGINT) is signal.default_int_handler


def test_close_removes_every_handler(loop):
    for sig in (SIGINT, SIGUSR1, SIGUSR2):
        loop.add_signal_handler(sig, nop)
    loop.close()
    assert signal.getsignal(SIGINT) is signal.default_int_handler
    assert signal.getsignal(SIGUSR1) is signal.SIG_DFL
    assert signal.getsignal(SIGUSR2) is signal.SIG_DFL
    assert wakeup_fd() == -1
    for sig in (SIGINT, SIGUSR1, SIGUSR2):
        assert loop.remove_signal_handler(sig) is False


def test_wakeup_fd_is_owned_while_handlers_exist(loop):
    assert wakeup_fd() == -1
    loop.add_signal_handler(SIGUSR1, nop)
    fd = wakeup_fd()
    assert fd != -1
    assert stat.S_ISSOCK(os.fstat(fd).st_mode)
    assert os.get_blocking(fd) is False
    loop.add_signal_handler(SIGUSR2, nop)
    assert wakeup_fd() == fd
    assert loop.remove_signal_handler(SIGUSR1) is True
    assert wakeup_fd() == fd          # one handler left
    assert loop.remove_signal_handler(SIGUSR2) is True
    assert wakeup_fd() == -1          # the last one gone
    loop.add_signal_handler(SIGUSR2, nop)
    assert wakeup_fd() != -1
    loop.close()
    assert wakeup_fd() == -1


def test_previous_wakeup_fd_is_replaced_and_not_restored(loop):
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        signal.set_wakeup_fd(a.fileno())
        loop.add_signal_handler(SIGUSR1, nop)
        assert wakeup_fd() not in (-1, a.fileno())
        loop.close()
        # asyncio sets -1: the fd installed before is not put back.
        assert wakeup_fd() == -1
    finally:
        signal.set_wakeup_fd(-1)
        a.close()
        b.close()


def test_signal_module_handlers_before_and_after_keep_working(loop, run):
    before, after, loop_calls = [], [], []
    signal.signal(SIGUSR2, lambda signum, frame: before.append(signum))
    loop.add_signal_handler(SIGUSR1, loop_calls.append, 'usr1')
    signal.signal(signal.SIGHUP, lambda signum, frame: after.append(signum))

    async def main():
        kill_self(SIGUSR2)
        kill_self(signal.SIGHUP)
        kill_self(SIGUSR1)
        await wait_until(lambda: loop_calls)
        # The other signals' bytes on the wake-up socket are ignored.
        await asyncio.sleep(0.02)

    run(main())
    assert before == [SIGUSR2]
    assert after == [signal.SIGHUP]
    assert loop_calls == ['usr1']
    loop.close()
    # The loop touches only its own signals.
    kill_self(SIGUSR2)
    kill_self(signal.SIGHUP)
    assert before == [SIGUSR2, SIGUSR2]
    assert after == [signal.SIGHUP, signal.SIGHUP]


def test_signal_module_handler_over_a_loop_handler_both_run(loop, run):
    """``signal.signal`` on a signal the loop handles replaces the Python
    handler, but the C handler still writes the signal number to the loop's
    wake-up socket: both callbacks run.  Removing the loop's handler then
    sets SIG_DFL over the user's handler."""
    mine, loop_calls = [], []
    loop.add_signal_handler(SIGUSR1, loop_calls.append, 'loop')
    signal.signal(SIGUSR1, lambda signum, frame: mine.append(signum))
    kill_self()
    run(wait_until(lambda: loop_calls))
    assert mine == [SIGUSR1]
    assert loop_calls == ['loop']
    assert loop.remove_signal_handler(SIGUSR1) is True
    assert signal.getsignal(SIGUSR1) is signal.SIG_DFL


# ---------------------------------------------------------------------------
# races and load
# ---------------------------------------------------------------------------

ROUNDS = 200


def test_signal_right_after_add_is_delivered_loop_not_running(loop, run):
    for i in range(ROUNDS):
        fut = loop.create_future()
        loop.add_signal_handler(SIGUSR1, fut.set_result, i)
        kill_self()
        assert run(wait(fut, 2.0)) == i
        assert loop.remove_signal_handler(SIGUSR1) is True


def test_signal_right_after_add_is_delivered_in_a_coroutine(loop, run):
    async def main():
        for i in range(ROUNDS):
            fut = loop.create_future()
            loop.add_signal_handler(SIGUSR1, fut.set_result, i)
            kill_self()
            assert await wait(fut, 2.0) == i
            assert loop.remove_signal_handler(SIGUSR1) is True

    run(main())


def test_signal_right_after_add_on_a_fresh_loop(loop_factory):
    """The first handler of a new loop (ferroloop makes its wake-up socket
    at that moment)."""
    fds_before = open_fds()
    for i in range(50):
        lp = loop_factory()
        try:
            fut = lp.create_future()
            lp.add_signal_handler(SIGUSR1, fut.set_result, i)
            kill_self()
            assert lp.run_until_complete(wait(fut, 2.0)) == i
        finally:
            lp.close()
        assert wakeup_fd() == -1
    assert open_fds() == fds_before


BURST_CHILD = textwrap.dedent("""
    import os, signal, sys
    target = int(sys.argv[1])
    for _ in range(int(sys.argv[2])):
        os.kill(target, signal.SIGUSR1)
""")


def test_burst_of_signals_from_another_process(loop, run):
    n = 1000
    calls = []
    loop.add_signal_handler(SIGUSR1, calls.append, 1)

    async def main():
        proc = subprocess.Popen(
            [sys.executable, '-c', BURST_CHILD, str(os.getpid()), str(n)],
            stdin=subprocess.DEVNULL)
        try:
            await wait_until(lambda: proc.poll() is not None, timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0
        # Every signal of the child reached this process before it exited.
        await wait_until(lambda: calls)
        # Still responsive: a call_soon round-trip, a timer, a thread wake-up.
        for _ in range(3):
            fut = loop.create_future()
            loop.call_soon(fut.set_result, 'pong')
            assert await wait(fut, 2.0) == 'pong'
        await wait(asyncio.sleep(0.01), 2.0)
        fut = loop.create_future()
        threading.Thread(
            target=loop.call_soon_threadsafe, args=(fut.set_result, 't')).start()
        assert await wait(fut, 2.0) == 't'
        # Standard signals coalesce: between 1 and n callbacks.
        await asyncio.sleep(0.05)

    run(main())
    assert 1 <= len(calls) <= n
    # The handler still works after the burst.
    before = len(calls)
    kill_self()
    run(wait_until(lambda: len(calls) > before))


# ---------------------------------------------------------------------------
# Ctrl-C in a child process
# ---------------------------------------------------------------------------

def _sigint_default():
    # A child started from a shell's background job may inherit SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Child:
    """A child Python process whose stdout is read line by line, bounded."""

    def __init__(self, argv):
        # faulthandler: a hung child dumps its stack when _fail aborts it.
        env = dict(os.environ, PYTHONFAULTHANDLER='1')
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, preexec_fn=_sigint_default, env=env)
        self.buf = b''
        self.lines = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()

    def wait_line(self, prefix, timeout=TIMEOUT):
        """Read stdout until a line starting with ``prefix``; return it."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            for i, line in enumerate(self.lines):
                if line.startswith(prefix):
                    del self.lines[:i + 1]
                    return line
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self._fail(f'no line {prefix!r} within {timeout}s')
            data = os.read(fd, 65536)
            if not data:
                self._fail(f'stdout closed before a line {prefix!r}')
            self.buf += data
            *done, self.buf = self.buf.split(b'\n')
            self.lines += [x.decode() for x in done]

    def finish(self, timeout=TIMEOUT):
        """Wait for exit; return (returncode, remaining stdout lines, stderr)."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._fail(f'child did not exit within {timeout}s')
        rest = (self.buf + out).decode().splitlines()
        return self.proc.returncode, self.lines + rest, err.decode()

    def _fail(self, why):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGABRT)
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        out, err = self.proc.communicate()
        pytest.fail(f'{why}\nstdout: {self.buf + out!r}\nstderr:\n{err.decode()}')


CHILD_KINDS = ('asyncio', 'ferroloop', 'ferroloop.run')


def child_argv(kind, script):
    """``python script`` (asyncio), ``python -m ferroloop script``, or
    ``python script ferroloop.run`` (the script calls ferroloop.run)."""
    if kind == 'asyncio':
        return [sys.executable, str(script), 'asyncio.run']
    require_ferroloop()
    if kind == 'ferroloop':
        return [sys.executable, '-m', 'ferroloop', str(script), 'asyncio.run']
    return [sys.executable, str(script), 'ferroloop.run']


def expected_loop_module(kind):
    return 'asyncio.unix_events' if kind == 'asyncio' else 'ferroloop'


RUN_PRELUDE = textwrap.dedent("""
    import asyncio, sys, time

    def run(coro):
        if sys.argv[1] == 'ferroloop.run':
            import ferroloop
            return ferroloop.run(coro)
        return asyncio.run(coro)

    def say(*words):
        print(*words, flush=True)

    def busy(seconds):
        # Python bytecode only: a signal arriving now is handled at once.
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass
""")

RUN_CANCELLED = RUN_PRELUDE + textwrap.dedent("""
    async def main():
        say('loop', type(asyncio.get_running_loop()).__module__)
        say('ready')
        if sys.argv[2] == 'busy':
            busy(0.5)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            say('cancelled', time.monotonic())
            raise
        say('not cancelled')

    run(main())
    say('not interrupted')
""")


def write_script(tmp_path, source):
    path = tmp_path / 'child_script.py'
    path.write_text(source)
    return path


# When SIGINT arrives: 'busy' -- while main() runs Python code (before it
# awaits); 'blocked' -- 0.1 s after main() awaited, the loop blocked in its
# poll.  (Not "just before the poll": with no wake-up fd -- asyncio.run and
# run_forever set none -- a signal landing between the loop's last check and
# the blocking poll syscall waits for the poll's timeout, in asyncio's loop
# and in ferroloop alike: a race of a few microseconds.)
WHEN = ('busy', 'blocked')
BLOCKED_DELAY = 0.1


@pytest.mark.parametrize('when', WHEN)
@pytest.mark.parametrize('kind', CHILD_KINDS)
def test_ctrl_c_under_run_cancels_main_and_raises_keyboard_interrupt(
        kind, when, tmp_path):
    script = write_script(tmp_path, RUN_CANCELLED)
    with Child(child_argv(kind, script) + [when]) as child:
        assert child.wait_line('loop ') == f'loop {expected_loop_module(kind)}'
        child.wait_line('ready')
        if when == 'blocked':
            time.sleep(BLOCKED_DELAY)
        t_kill = time.monotonic()
        os.kill(child.proc.pid, SIGINT)
        line = child.wait_line('cancelled')
        latency = float(line.split()[1]) - t_kill
        rc, rest, err = child.finish()
    print(f'{kind} ({when}): SIGINT -> main task cancelled in {latency * 1e3:.2f} ms')
    assert rest == []
    # As stdlib asyncio.run: the uncaught KeyboardInterrupt makes the
    # interpreter exit by SIGINT, after printing the traceback.
    assert rc == -SIGINT, err
    assert 'Traceback (most recent call last):' in err
    assert err.splitlines()[-1] == 'KeyboardInterrupt'
    # ... chained to the main task's CancelledError, as Runner.run raises
    # it while handling that.
    assert 'asyncio.exceptions.CancelledError' in err
    assert 'During handling of the above exception, another exception occurred' in err
    if when == 'blocked':
        assert latency < 0.5


RUN_SURVIVES = RUN_PRELUDE + textwrap.dedent("""
    async def main():
        say('ready')
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            say('cancelled')
        # The loop goes on after the first Ctrl-C, blocking (not spinning)
        # in its poll between timers.
        cpu0, t0 = time.process_time(), time.monotonic()
        for _ in range(5):
            await asyncio.sleep(0.1)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        loop.call_later(0.05, fut.set_result, 'timer')
        got = await fut
        cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
        say('after', got, f'{cpu:.4f}', f'{wall:.4f}')
        if sys.argv[2] == 'second':   # wait for a second Ctrl-C
            say('waiting')
            await asyncio.sleep(60)
            say('not interrupted')
        return 'result'

    say('returned', run(main()))
""")


@pytest.mark.parametrize('kind', CHILD_KINDS)
def test_loop_keeps_working_without_spinning_after_first_ctrl_c(kind, tmp_path):
    script = write_script(tmp_path, RUN_SURVIVES)
    with Child(child_argv(kind, script) + ['survive']) as child:
        child.wait_line('ready')
        time.sleep(BLOCKED_DELAY)
        os.kill(child.proc.pid, SIGINT)
        child.wait_line('cancelled')
        after = child.wait_line('after ', timeout=TIMEOUT).split()
        rc, rest, err = child.finish()
    got, cpu, wall = after[1], float(after[2]), float(after[3])
    print(f'{kind}: {cpu:.4f} s CPU in {wall:.4f} s after the first Ctrl-C')
    assert got == 'timer'
    assert wall >= 0.5
    assert cpu < 0.25, f'the loop spun: {cpu:.3f} s CPU in {wall:.3f} s'
    # main() swallowed the cancellation: asyncio.run returns its result.
    assert (rc, rest) == (0, ['returned result']), err


@pytest.mark.parametrize('kind', CHILD_KINDS)
def test_second_ctrl_c_raises_keyboard_interrupt_at_once(kind, tmp_path):
    script = write_script(tmp_path, RUN_SURVIVES)
    argv = child_argv(kind, script) + ['second']
    with Child(argv) as child:
        child.wait_line('ready')
        time.sleep(BLOCKED_DELAY)
        os.kill(child.proc.pid, SIGINT)
        child.wait_line('cancelled')
        child.wait_line('waiting')
        time.sleep(BLOCKED_DELAY)
        t_kill = time.monotonic()
        os.kill(child.proc.pid, SIGINT)
        rc, rest, err = child.finish()
        elapsed = time.monotonic() - t_kill
    assert rest == []
    assert rc == -SIGINT, err
    assert err.splitlines()[-1] == 'KeyboardInterrupt'
    assert elapsed < 5


RUN_FOREVER = textwrap.dedent("""
    import asyncio, sys, time
    # Under python -m ferroloop the installed policy makes a ferroloop loop.
    loop = asyncio.new_event_loop()
    print('loop', type(loop).__module__, flush=True)
    if sys.argv[1] == 'far-timer':
        loop.call_later(60, print, 'timer fired')
    def ready():
        print('ready', flush=True)
        if sys.argv[2] == 'busy':
            # Python bytecode only: the KeyboardInterrupt is raised here
            # and leaves run_forever.
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                pass
    loop.call_soon(ready)
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        print('interrupted', time.monotonic(), flush=True)
    # The loop is still usable afterwards.
    print('still', loop.run_until_complete(asyncio.sleep(0.01, 'works')), flush=True)
    loop.close()
""")


@pytest.mark.parametrize('when', WHEN)
@pytest.mark.parametrize('wait_kind', ['no-timer', 'far-timer'])
@pytest.mark.parametrize('kind', ['asyncio', 'ferroloop'])
def test_ctrl_c_in_run_forever_without_handler(kind, wait_kind, when, tmp_path):
    script = write_script(tmp_path, RUN_FOREVER)
    if kind == 'asyncio':
        argv = [sys.executable, str(script), wait_kind, when]
    else:
        require_ferroloop()
        argv = [sys.executable, '-m', 'ferroloop', str(script), wait_kind, when]
    with Child(argv) as child:
        assert child.wait_line('loop ') == f'loop {expected_loop_module(kind)}'
        child.wait_line('ready')
        if when == 'blocked':
            time.sleep(BLOCKED_DELAY)
        t_kill = time.monotonic()
        os.kill(child.proc.pid, SIGINT)
        line = child.wait_line('interrupted', timeout=TIMEOUT)
        latency = float(line.split()[1]) - t_kill
        rc, rest, err = child.finish()
    print(f'{kind} ({wait_kind}, {when}): SIGINT -> KeyboardInterrupt '
          f'in {latency * 1e3:.2f} ms')
    assert (rc, rest) == (0, ['still works']), err
    assert latency < 0.5, f'KeyboardInterrupt {latency * 1e3:.1f} ms after SIGINT'


# ---------------------------------------------------------------------------
# os.fork() in a running loop
# ---------------------------------------------------------------------------

async def wait_child(pid, timeout=TIMEOUT):
    """waitpid without blocking the loop; the child's exit code."""
    deadline = time.monotonic() + timeout
    while True:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got == pid:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f'forked child did not exit within {timeout}s')
        await asyncio.sleep(0.005)


def in_forked_child(checks):
    """Run ``checks()`` in the child of a fork and leave with its exit code
    (any exception: 99).  Never returns in the child."""
    code = 99
    try:
        code = checks()
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        os._exit(code)


def test_fork_in_a_running_loop(loop, run, loop_factory):
    def checks():
        try:
            asyncio.get_running_loop()
        except RuntimeError as exc:
            if str(exc) != 'no running event loop':
                return 1
        else:
            return 2
        if asyncio._get_running_loop() is not None:
            return 3
        new = loop_factory()
        try:
            if type(new) is not type(loop):
                return 4

            async def work():
                assert asyncio.get_running_loop() is new
                fut = new.create_future()
                new.call_soon(fut.set_result, 21)
                await asyncio.sleep(0.01)
                task = asyncio.ensure_future(asyncio.sleep(0, 2))
                return await fut * await task

            if new.run_until_complete(work()) != 42:
                return 5
        finally:
            new.close()
        return 0

    async def main():
        pid = os.fork()
        if pid == 0:
            in_forked_child(checks)
        # The parent's loop is unaffected.
        assert asyncio.get_running_loop() is loop
        return await wait_child(pid)

    assert run(main()) == 0


def test_fork_with_signal_handlers_installed(loop, run, loop_factory):
    """The child (inheriting the parent's wake-up fd) runs a new loop with
    its own signal handler; the parent's handler keeps working."""
    parent_calls = []
    loop.add_signal_handler(SIGUSR1, parent_calls.append, 'parent')

    def checks():
        new = loop_factory()
        try:
            fut = new.create_future()
            new.add_signal_handler(SIGUSR2, fut.set_result, 'child')
            kill_self(SIGUSR2)
            got = new.run_until_complete(asyncio.wait_for(fut, 5))
            return 0 if got == 'child' else 1
        finally:
            new.close()

    async def main():
        pid = os.fork()
        if pid == 0:
            in_forked_child(checks)
        assert await wait_child(pid) == 0
        kill_self()
        await wait_until(lambda: parent_calls)
        await asyncio.sleep(0.02)

    run(main())
    assert parent_calls == ['parent']


@pytest.mark.parametrize('kind', LOOP_KINDS)
def test_fork_child_can_use_asyncio_run(kind):
    """A fork from a coroutine; the child runs ``asyncio.run`` with a loop of
    the same kind through the policy (fresh process state, no fixture)."""
    factory = make_loop_factory(kind)
    lp = factory()

    def checks():
        # The parent's loop object is not running in the child.
        if asyncio._get_running_loop() is not None:
            return 1
        runner = asyncio.Runner(loop_factory=factory)
        try:
            async def work():
                await asyncio.sleep(0.01)
                return type(asyncio.get_running_loop())
            if runner.run(work()) is not type(lp):
                return 2
        finally:
            runner.close()
        return 0

    async def main():
        pid = os.fork()
        if pid == 0:
            in_forked_child(checks)
        return await wait_child(pid)

    try:
        assert lp.run_until_complete(main()) == 0
    finally:
        lp.close()

