"""Callbacks, timers, handles and the run/stop/close life cycle.

Every test runs on the stdlib loop and on both ferroloop flavours (see the
``loop`` fixture in conftest.py); the expected values are those of CPython
3.11's asyncio (base_events.py / events.py).
"""

import asyncio
import concurrent.futures
import contextvars
import functools
import logging
import math
import re
import sys
import threading
import time
from asyncio import format_helpers

import pytest

THIS_FILE = __file__

# Timer precision tolerance: stdlib runs a timer when
# ``when < loop.time() + clock_resolution`` (1 ns on Linux).
EPS = 1e-6

# Optional '<function>.<locals>.' qualname prefix of nested callbacks.
LOCALS = r'(?:\w+\.<locals>\.)?'


def lineno():
    """Line number of the caller."""
    return sys._getframe(1).f_lineno


# ---------------------------------------------------------------------------
# call_soon
# ---------------------------------------------------------------------------

def test_call_soon_fifo_order(loop):
    out = []
    for i in range(200):
        loop.call_soon(out.append, i)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == list(range(200))


def test_call_soon_passes_positional_args(loop):
    calls = []

    def cb(*args):
        calls.append(args)

    loop.call_soon(cb)
    loop.call_soon(cb, 1)
    loop.call_soon(cb, 1, 'a', None, (2, 3))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == [(), (1,), (1, 'a', None, (2, 3))]


def test_call_soon_rejects_unknown_keyword(loop):
    with pytest.raises(TypeError, match="unexpected keyword argument 'x'"):
        loop.call_soon(print, x=1)


def test_call_soon_argument_binding(loop):
    # asyncio's signature: call_soon(callback, *args, context=None).
    calls = []
    ctx = contextvars.copy_context()
    loop.call_soon(callback=lambda: calls.append('by keyword'), context=None)
    loop.call_soon(calls.append, 'with context', context=ctx)
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'callback'"):
        loop.call_soon()
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'callback'"):
        loop.call_soon(context=None)
    with pytest.raises(TypeError, match="multiple values for argument 'callback'"):
        loop.call_soon(print, callback=print)
    with pytest.raises(TypeError, match="unexpected keyword argument 'context_'"):
        loop.call_soon(print, context_=None)
    loop.run_until_complete(asyncio.sleep(0))
    assert calls == ['by keyword', 'with context']


def test_call_soon_returns_not_yet_run_handle(loop):
    out = []
    h = loop.call_soon(out.append, 1)
    assert out == []  # never called synchronously
    assert not h.cancelled()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == [1]


def test_handle_types(loop):
    h = loop.call_soon(print)
    th = loop.call_later(10, print)
    try:
        assert isinstance(h, asyncio.Handle)
        assert isinstance(th, asyncio.TimerHandle)
        assert isinstance(th, asyncio.Handle)
    finally:
        h.cancel()
        th.cancel()


# ---------------------------------------------------------------------------
# contexts
# ---------------------------------------------------------------------------

def test_call_soon_runs_in_given_context(loop):
    var = contextvars.ContextVar('var', default='default')
    ctx = contextvars.copy_context()
    ctx.run(var.set, 'in-ctx')
    seen = []

    def cb():
        seen.append(var.get())
        var.set('changed-by-cb')

    loop.call_soon(cb, context=ctx)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ['in-ctx']
    # The callback ran *in* ctx (not in a copy of it) ...
    assert ctx[var] == 'changed-by-cb'
    # ... and not in the caller's context.
    assert var.get() == 'default'


def test_call_later_and_call_at_run_in_given_context(loop):
    var = contextvars.ContextVar('var', default='default')
    ctx = contextvars.copy_context()
    ctx.run(var.set, 'timer-ctx')
    seen = []
    loop.call_later(0.001, lambda: seen.append(('later', var.get())),
                    context=ctx)
    loop.call_at(loop.time() + 0.002,
                 lambda: seen.append(('at', var.get())), context=ctx)
    loop.call_soon_threadsafe(lambda: seen.append(('ts', var.get())),
                              context=ctx)
    loop.run_until_complete(asyncio.sleep(0.05))
    assert sorted(seen) == [('at', 'timer-ctx'), ('later', 'timer-ctx'),
                            ('ts', 'timer-ctx')]


def test_each_callback_gets_its_own_context_copy(loop):
    var = contextvars.ContextVar('var', default='default')
    token = var.set('outer')
    try:
        seen = []

        def setter(value):
            seen.append(('setter-saw', var.get()))
            var.set(value)

        def getter():
            seen.append(('getter-saw', var.get()))

        loop.call_soon(setter, 'x')
        loop.call_soon(getter)
        loop.call_soon(setter, 'y')
        loop.call_soon(getter)
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert seen == [('setter-saw', 'outer'), ('getter-saw', 'outer'),
                        ('setter-saw', 'outer'), ('getter-saw', 'outer')]
        assert var.get() == 'outer'
    finally:
        var.reset(token)


def test_context_is_copied_at_scheduling_time(loop):
    var = contextvars.ContextVar('var', default='default')
    seen = []
    token = var.set('a')
    try:
        loop.call_soon(lambda: seen.append(var.get()))
        var.set('b')
        loop.call_soon(lambda: seen.append(var.get()))
        loop.call_soon(loop.stop)
        loop.run_forever()
    finally:
        var.reset(token)
    assert seen == ['a', 'b']


def test_handle_get_context(loop, loop_kind):
    ctx = contextvars.copy_context()
    h = loop.call_soon(print, context=ctx)
    th = loop.call_later(10, print, context=ctx)
    h2 = loop.call_soon(print)
    try:
        if not hasattr(h, 'get_context'):
            # Handle.get_context() only appeared in CPython 3.12.
            assert loop_kind == 'asyncio', \
                'ferroloop handles must provide get_context()'
            pytest.skip('stdlib 3.11 Handle has no get_context()')
        assert h.get_context() is ctx
        assert th.get_context() is ctx
        other = h2.get_context()
        assert isinstance(other, contextvars.Context)
        assert other is not ctx
    finally:
        h.cancel()
        th.cancel()
        h2.cancel()


# ---------------------------------------------------------------------------
# iteration / batch semantics
# ---------------------------------------------------------------------------

def test_callbacks_scheduled_by_callbacks_run_next_iteration(loop):
    out = []

    def first():
        out.append('first')
        loop.call_soon(second)

    def second():
        out.append('second')

    loop.call_soon(first)
    loop.call_soon(loop.stop)  # runs in the same iteration as first()
    loop.run_forever()
    assert out == ['first']
    # second() is still queued and runs on the next run.
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == ['first', 'second']


def test_stop_lets_the_current_batch_finish(loop):
    out = []
    loop.call_soon(out.append, 'a')
    loop.call_soon(loop.stop)
    loop.call_soon(out.append, 'b')
    loop.run_forever()
    assert out == ['a', 'b']


def test_stop_before_run_forever_runs_one_iteration(loop):
    out = []

    def cb():
        out.append('cb')
        loop.call_soon(out.append, 'next-iteration')

    loop.stop()
    loop.call_soon(cb)
    loop.run_forever()
    assert out == ['cb']
    assert not loop.is_running()
    # _stopping was reset: a new run_forever needs another stop().
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == ['cb', 'next-iteration']


def test_stop_before_run_forever_with_nothing_scheduled_returns(loop):
    loop.stop()
    loop.run_forever()  # must not block
    assert not loop.is_running()


def test_expired_timers_run_after_ready_callbacks(loop):
    out = []
    loop.call_later(0, out.append, 'timer')
    loop.call_soon(out.append, 'soon')
    loop.call_soon(loop.stop)
    loop.run_forever()
    # The expired timer joins the ready queue behind already-ready callbacks
    # and still runs in the same iteration.
    assert out == ['soon', 'timer']


# ---------------------------------------------------------------------------
# timers
# ---------------------------------------------------------------------------

def test_call_at_ordering(loop):
    out = []
    base = loop.time() + 0.02
    loop.call_at(base + 0.02, out.append, 'c')
    loop.call_at(base, out.append, 'a')
    loop.call_at(base + 0.03, loop.stop)
    loop.call_at(base + 0.01, out.append, 'b')
    loop.run_forever()
    assert out == ['a', 'b', 'c']


def test_call_later_ordering_follows_deadlines(loop):
    fired = []
    handles = {}
    for name, delay in [('c', 0.03), ('a', 0.01), ('d', 0.04), ('b', 0.02),
                        ('zero', 0), ('neg', -1)]:
        t0 = loop.time()
        h = loop.call_later(delay, fired.append, name)
        t1 = loop.time()
        assert t0 + delay - EPS <= h.when() <= t1 + delay + EPS
        handles[name] = h
    done = loop.create_future()
    loop.call_later(0.06, done.set_result, None)
    loop.run_until_complete(done)
    expected = sorted(handles, key=lambda n: handles[n].when())
    assert fired == expected
    assert set(fired) == {'a', 'b', 'c', 'd', 'zero', 'neg'}


def test_equal_deadlines_all_fire_together(loop):
    out = []
    when = loop.time() + 0.01
    for i in range(20):
        loop.call_at(when, out.append, i)
    loop.call_at(when, loop.stop)
    loop.call_at(when + 10, out.append, 'late')
    loop.run_forever()
    # All timers with the same deadline fire in one iteration.
    assert sorted(out) == list(range(20))


def test_equal_deadlines_fire_in_scheduling_order(loop, loop_kind):
    if loop_kind == 'asyncio':
        pytest.skip('stdlib keeps timers in a heapq, which is not stable: '
                    'equal deadlines fire in unspecified order')
    out = []
    when = loop.time() + 0.01
    for i in range(50):
        loop.call_at(when, out.append, i)
    loop.call_at(when + 0.01, loop.stop)
    loop.run_forever()
    assert out == list(range(50))


def test_timers_never_fire_early(loop):
    results = []

    def cb(name, t_sched, delay, h_box):
        results.append((name, t_sched, delay, h_box[0].when(), loop.time()))

    for rep in range(3):
        for delay in (0.001, 0.005, 0.01, 0.02):
            box = []
            t_sched = loop.time()
            box.append(loop.call_later(delay, cb, (rep, delay), t_sched,
                                       delay, box))
    loop.run_until_complete(asyncio.sleep(0.1))
    assert len(results) == 12
    for name, t_sched, delay, when, t_fired in results:
        assert t_fired >= when - EPS, name
        assert t_fired - t_sched >= delay - EPS, name


def test_sleep_never_returns_early(loop):
    async def main():
        for delay in (0.001, 0.01, 0.02):
            t0 = loop.time()
            await asyncio.sleep(delay)
            assert loop.time() - t0 >= delay - EPS

    loop.run_until_complete(main())


def test_call_later_with_nan_delay_runs_like_stdlib(loop):
    out = []
    h = loop.call_later(float('nan'), out.append, 'nan')
    assert math.isnan(h.when())
    loop.call_soon(loop.stop)
    loop.run_forever()
    # stdlib: NaN never compares >= end_time, so the timer is due at once.
    assert out == ['nan']


def test_call_later_with_infinite_delay_never_fires(loop):
    out = []
    h = loop.call_later(float('inf'), out.append, 'inf')
    assert h.when() == float('inf')
    loop.run_until_complete(asyncio.sleep(0.01))
    assert out == []
    h.cancel()


def test_timer_handle_cancel(loop):
    out = []
    h = loop.call_later(0.001, out.append, 'cancelled')
    h2 = loop.call_later(0.001, out.append, 'kept')
    assert not h.cancelled()
    h.cancel()
    assert h.cancelled()
    h.cancel()  # idempotent
    assert h.cancelled()
    loop.run_until_complete(asyncio.sleep(0.02))
    assert out == ['kept']
    assert not h2.cancelled()


def test_handle_cancel(loop):
    out = []
    h = loop.call_soon(out.append, 1)
    loop.call_soon(out.append, 2)
    h.cancel()
    assert h.cancelled()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == [2]


def test_handle_cancel_after_it_ran(loop):
    out = []
    h = loop.call_soon(out.append, 1)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == [1]
    assert not h.cancelled()
    h.cancel()
    assert h.cancelled()


def test_cancel_from_earlier_callback_in_same_batch(loop):
    out = []
    handles = []
    loop.call_soon(lambda: handles[0].cancel())
    handles.append(loop.call_soon(out.append, 'x'))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == []


def test_many_cancelled_timers(loop):
    out = []
    hs = [loop.call_later(0.001 + i * 1e-5, out.append, i) for i in range(500)]
    for h in hs[::2]:
        h.cancel()
    loop.run_until_complete(asyncio.sleep(0.05))
    assert out == list(range(1, 500, 2))


# ---------------------------------------------------------------------------
# reprs
# ---------------------------------------------------------------------------

def _cb(*args):
    pass


def test_handle_repr_matches_stdlib(loop):
    h = loop.call_soon(_cb, 1, 'a')
    ref = asyncio.Handle(_cb, (1, 'a'), loop)
    assert repr(h) == repr(ref)
    assert re.fullmatch(r"<Handle _cb\(1, 'a'\) at .*test_callbacks\.py:\d+>",
                        repr(h))
    h.cancel()
    ref.cancel()
    assert repr(h) == repr(ref) == '<Handle cancelled>'


def test_handle_repr_of_builtin_and_partial(loop):
    h1 = loop.call_soon(print, 1)
    h2 = loop.call_soon(functools.partial(_cb, 1), 2)
    try:
        assert repr(h1) == repr(asyncio.Handle(print, (1,), loop)) \
            == '<Handle print(1)>'
        assert repr(h2) == repr(asyncio.Handle(functools.partial(_cb, 1),
                                               (2,), loop))
        assert re.fullmatch(r'<Handle _cb\(1\)\(2\) at .*:\d+>', repr(h2))
    finally:
        h1.cancel()
        h2.cancel()


def test_timer_handle_repr_matches_stdlib(loop):
    h = loop.call_later(10, _cb, 'x')
    ref = asyncio.TimerHandle(h.when(), _cb, ('x',), loop)
    assert repr(h) == repr(ref)
    assert re.fullmatch(
        r"<TimerHandle when=\d+\.\d+ _cb\('x'\) at .*test_callbacks\.py:\d+>",
        repr(h))
    h.cancel()
    ref.cancel()
    assert repr(h) == repr(ref)
    assert re.fullmatch(r'<TimerHandle cancelled when=\d+\.\d+>', repr(h))


def test_handle_repr_in_debug_mode(loop):
    loop.set_debug(True)
    line = lineno() + 1
    h = loop.call_soon(_cb)
    pat = (r'<Handle _cb\(\) at .*test_callbacks\.py:\d+ created at '
           + re.escape(THIS_FILE) + ':' + str(line) + '>')
    assert re.fullmatch(pat, repr(h)), repr(h)
    h.cancel()
    # In debug mode a cancelled handle keeps its callback in the repr.
    pat = (r'<Handle cancelled _cb\(\) at .*test_callbacks\.py:\d+ '
           r'created at ' + re.escape(THIS_FILE) + ':' + str(line) + '>')
    assert re.fullmatch(pat, repr(h)), repr(h)


# ---------------------------------------------------------------------------
# loop.time()
# ---------------------------------------------------------------------------

def test_time_is_monotonic_and_close_to_time_monotonic(loop):
    a = time.monotonic()
    b = loop.time()
    c = time.monotonic()
    assert a - 0.05 <= b <= c + 0.05
    values = [loop.time() for _ in range(2000)]
    assert values == sorted(values)
    assert isinstance(b, float)


def test_time_advances_while_running(loop):
    seen = []

    async def main():
        seen.append((time.monotonic(), loop.time()))
        await asyncio.sleep(0.02)
        seen.append((time.monotonic(), loop.time()))
        time.sleep(0.02)  # blocking: loop.time() must still be live
        seen.append((time.monotonic(), loop.time()))

    loop.run_until_complete(main())
    (m0, l0), (m1, l1), (m2, l2) = seen
    assert l1 - l0 >= 0.02 - EPS
    assert l2 - l1 >= 0.02 - EPS
    for m, lt in seen:
        assert abs(m - lt) < 0.05


# ---------------------------------------------------------------------------
# threads
# ---------------------------------------------------------------------------

def test_call_soon_threadsafe_wakes_a_sleeping_loop(loop):
    fut = loop.create_future()
    # Safety net only: if the wakeup is lost the loop would sleep until this
    # timer and the assertions below fail instead of the test hanging.
    guard = loop.call_later(20, fut.cancel)

    def worker():
        time.sleep(0.1)
        loop.call_soon_threadsafe(fut.set_result, threading.get_ident())

    th = threading.Thread(target=worker)
    t0 = time.monotonic()
    th.start()
    try:
        result = loop.run_until_complete(fut)
    finally:
        th.join()
        guard.cancel()
    elapsed = time.monotonic() - t0
    assert result == th.ident
    assert elapsed < 10


def test_call_soon_threadsafe_many_threads(loop):
    n_threads, per_thread = 4, 250
    out = []
    done = loop.create_future()
    barrier = threading.Barrier(n_threads)

    def on_item(item):
        out.append(item)
        if len(out) == n_threads * per_thread and not done.done():
            done.set_result(None)

    def worker(tid):
        barrier.wait()
        for i in range(per_thread):
            loop.call_soon_threadsafe(on_item, (tid, i))

    guard = loop.call_later(20, lambda: done.done() or done.cancel())
    threads = [threading.Thread(target=worker, args=(t,))
               for t in range(n_threads)]
    for t in threads:
        t.start()
    try:
        loop.run_until_complete(done)
    finally:
        for t in threads:
            t.join()
        guard.cancel()
    assert len(out) == n_threads * per_thread
    for tid in range(n_threads):
        # FIFO per producing thread.
        assert [i for (t, i) in out if t == tid] == list(range(per_thread))


def test_call_soon_threadsafe_and_call_soon_share_one_order(loop):
    # asyncio appends both to one ready queue: what was scheduled first
    # runs first, from the loop's thread or from another one.
    out = []
    loop.call_soon_threadsafe(out.append, 'threadsafe, same thread')
    loop.call_soon(out.append, 'call_soon')
    t = threading.Thread(target=loop.call_soon_threadsafe, args=(out.append, 'other thread'))
    t.start()
    t.join()
    loop.call_soon(out.append, 'call_soon again')
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == ['threadsafe, same thread', 'call_soon', 'other thread', 'call_soon again']


def test_call_soon_threadsafe_returns_cancellable_handle(loop):
    out = []
    h = loop.call_soon_threadsafe(out.append, 1)
    assert isinstance(h, asyncio.Handle)
    h.cancel()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == []


# ---------------------------------------------------------------------------
# life cycle
# ---------------------------------------------------------------------------

def test_is_running_and_is_closed(loop):
    seen = []
    assert not loop.is_running()
    assert not loop.is_closed()
    loop.call_soon(lambda: seen.append(loop.is_running()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [True]
    assert not loop.is_running()

    async def coro():
        return loop.is_running(), asyncio.get_running_loop()

    assert loop.run_until_complete(coro()) == (True, loop)
    assert not loop.is_running()
    loop.close()
    assert loop.is_closed()
    loop.close()  # idempotent
    assert loop.is_closed()


def test_get_running_loop_outside_and_inside(loop):
    with pytest.raises(RuntimeError, match='no running event loop'):
        asyncio.get_running_loop()
    seen = []
    loop.call_soon(lambda: seen.append(asyncio.get_running_loop()))
    loop.call_soon(lambda: seen.append(asyncio._get_running_loop()))
    loop.call_soon(lambda: seen.append(asyncio.get_event_loop()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [loop, loop, loop]
    assert asyncio._get_running_loop() is None


def test_run_until_complete_returns_result(loop):
    async def coro(x):
        await asyncio.sleep(0)
        return x * 2

    assert loop.run_until_complete(coro(21)) == 42
    fut = loop.create_future()
    loop.call_soon(fut.set_result, 'fut')
    assert loop.run_until_complete(fut) == 'fut'
    # already-done future
    assert loop.run_until_complete(fut) == 'fut'
    task = loop.create_task(coro(1))
    assert loop.run_until_complete(task) == 2


def test_run_until_complete_accepts_awaitable(loop):
    class Awaitable:
        def __await__(self):
            yield from asyncio.sleep(0).__await__()
            return 'awaited'

    assert loop.run_until_complete(Awaitable()) == 'awaited'


def test_run_until_complete_raises_coroutine_exception(loop):
    async def coro():
        await asyncio.sleep(0)
        raise ValueError('boom')

    with pytest.raises(ValueError, match='boom'):
        loop.run_until_complete(coro())
    # Still usable, and the exception was not reported as unretrieved
    # (checked by the fixture).
    assert loop.run_until_complete(asyncio.sleep(0, 'ok')) == 'ok'


def test_run_until_complete_propagates_system_exit(loop):
    async def coro():
        await asyncio.sleep(0)
        raise SystemExit(3)

    with pytest.raises(SystemExit) as ei:
        loop.run_until_complete(coro())
    assert ei.value.code == 3
    assert not loop.is_running()
    assert loop.run_until_complete(asyncio.sleep(0, 'again')) == 'again'


def test_system_exit_in_callback_leaves_run_forever(loop):
    out = []

    def cb():
        raise SystemExit(5)

    loop.call_soon(cb)
    loop.call_soon(out.append, 'after')
    with pytest.raises(SystemExit):
        loop.run_forever()
    assert not loop.is_running()
    # The remaining callback is still queued.
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == ['after']


def test_run_until_complete_stopped_early(loop):
    fut = loop.create_future()
    loop.call_soon(loop.stop)
    with pytest.raises(RuntimeError,
                       match='Event loop stopped before Future completed.'):
        loop.run_until_complete(fut)
    fut.cancel()


def test_run_forever_can_be_restarted(loop):
    out = []
    for i in range(3):
        loop.call_soon(out.append, i)
        loop.call_soon(loop.stop)
        loop.run_forever()
    assert out == [0, 1, 2]


def test_close_discards_pending_callbacks(loop):
    out = []
    loop.call_soon(out.append, 'soon')
    loop.call_later(0.001, out.append, 'later')
    loop.close()
    assert out == []
    assert loop.is_closed()


def test_repr_of_loop_mentions_state(loop):
    r = repr(loop)
    assert 'running=False' in r
    assert 'closed=False' in r
    assert 'debug=False' in r
    loop.close()
    assert 'closed=True' in repr(loop)


# ---------------------------------------------------------------------------
# exception handling
# ---------------------------------------------------------------------------

def test_exception_in_callback_goes_to_exception_handler(loop, loop_errors):
    out = []
    exc = ZeroDivisionError('zde')

    def bad():
        raise exc

    h = loop.call_soon(bad)
    loop.call_soon(out.append, 'still running')
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == ['still running']
    assert len(loop_errors) == 1
    ctx = loop_errors[0]
    assert set(ctx) == {'message', 'exception', 'handle'}
    assert ctx['message'] == ('Exception in callback '
                              + format_helpers._format_callback_source(bad, ()))
    assert re.match(r'Exception in callback ' + LOCALS + r'bad\(\) at ',
                    ctx['message'])
    assert ctx['exception'] is exc
    assert ctx['handle'] is h


def test_exception_in_timer_callback(loop, loop_errors):
    def bad(x):
        raise KeyError(x)

    h = loop.call_later(0.001, bad, 'k')
    loop.run_until_complete(asyncio.sleep(0.02))
    assert len(loop_errors) == 1
    ctx = loop_errors[0]
    assert re.match(r"Exception in callback " + LOCALS + r"bad\('k'\) at ",
                    ctx['message'])
    assert isinstance(ctx['exception'], KeyError)
    assert ctx['handle'] is h


def test_exception_in_callback_debug_has_source_traceback(loop, loop_errors):
    loop.set_debug(True)

    def bad():
        raise ValueError

    line = lineno() + 1
    loop.call_soon(bad)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(loop_errors) == 1
    tb = loop_errors[0]['source_traceback']
    assert (tb[-1].filename, tb[-1].lineno) == (THIS_FILE, line)


def test_exception_handler_get_set(loop):
    def handler(lp, ctx):
        pass

    original = loop.get_exception_handler()
    assert callable(original)  # the fixture's recorder
    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None
    with pytest.raises(TypeError,
                       match='A callable object or None is expected, got 1'):
        loop.set_exception_handler(1)
    assert loop.get_exception_handler() is None
    loop.set_exception_handler(original)


def test_call_exception_handler_calls_handler(loop):
    calls = []

    def handler(lp, ctx):
        calls.append((lp, ctx))

    loop.set_exception_handler(handler)
    ctx = {'message': 'hi', 'x': 1}
    loop.call_exception_handler(ctx)
    assert calls == [(loop, ctx)]
    assert calls[0][1] is ctx


def test_default_exception_handler_logs(loop, caplog):
    exc = ValueError('v')
    with caplog.at_level(logging.ERROR, logger='asyncio'):
        loop.default_exception_handler(
            {'message': 'hello', 'exception': exc, 'extra': 1})
        loop.default_exception_handler({})
    recs = [r for r in caplog.records if r.name == 'asyncio']
    assert len(recs) == 2
    assert recs[0].levelno == logging.ERROR
    assert recs[0].getMessage() == 'hello\nextra: 1'
    assert recs[0].exc_info[1] is exc
    assert recs[1].getMessage() == 'Unhandled exception in event loop'
    assert not recs[1].exc_info


def test_call_exception_handler_without_handler_logs(loop, caplog):
    loop.set_exception_handler(None)
    with caplog.at_level(logging.ERROR, logger='asyncio'):
        loop.call_exception_handler({'message': 'via default'})
    msgs = [r.getMessage() for r in caplog.records if r.name == 'asyncio']
    assert msgs == ['via default']


def test_failing_exception_handler_falls_back_to_default(loop, caplog):
    boom = RuntimeError('handler failed')

    def handler(lp, ctx):
        raise boom

    loop.set_exception_handler(handler)
    with caplog.at_level(logging.ERROR, logger='asyncio'):
        loop.call_exception_handler({'message': 'original'})
    recs = [r for r in caplog.records if r.name == 'asyncio']
    assert len(recs) == 1
    msg = recs[0].getMessage()
    assert msg.startswith('Unhandled error in exception handler\n')
    assert "'message': 'original'" in msg
    assert recs[0].exc_info[1] is boom


def test_exception_in_callback_with_default_handler_logs(loop, caplog):
    loop.set_exception_handler(None)

    def bad():
        raise ValueError('logged')

    loop.call_soon(bad)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.ERROR, logger='asyncio'):
        loop.run_forever()
    recs = [r for r in caplog.records if r.name == 'asyncio']
    assert len(recs) == 1
    msg = recs[0].getMessage()
    assert re.match(r'Exception in callback ' + LOCALS + r'bad\(\) at ', msg)
    assert re.search(r'\nhandle: <Handle ' + LOCALS + r'bad\(\) at ', msg)
    assert isinstance(recs[0].exc_info[1], ValueError)


# ---------------------------------------------------------------------------
# debug mode
# ---------------------------------------------------------------------------

def test_debug_flag(loop):
    assert loop.get_debug() is False
    loop.set_debug(True)
    assert loop.get_debug() is True
    assert 'debug=True' in repr(loop)
    loop.set_debug(False)
    assert loop.get_debug() is False


def test_slow_callback_warning_in_debug_mode(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.05

    def slow_cb():
        time.sleep(0.1)

    def fast_cb():
        pass

    loop.call_soon(slow_cb)
    loop.call_soon(fast_cb)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.WARNING, logger='asyncio'):
        loop.run_forever()
    msgs = [r.getMessage() for r in caplog.records
            if r.name == 'asyncio' and r.levelno == logging.WARNING]
    assert len(msgs) == 1, msgs
    assert re.fullmatch(
        r'Executing <Handle ' + LOCALS + r'slow_cb\(\) at .*test_callbacks\.py:\d+ '
        r'created at .*test_callbacks\.py:\d+> took \d+\.\d{3} seconds',
        msgs[0]), msgs[0]
    took = float(re.search(r'took (\d+\.\d+) seconds', msgs[0]).group(1))
    assert took >= 0.1 - 0.001


def test_slow_task_step_warning_in_debug_mode(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.05

    async def slow_coro():
        time.sleep(0.1)

    with caplog.at_level(logging.WARNING, logger='asyncio'):
        loop.run_until_complete(loop.create_task(slow_coro(), name='slowtask'))
    msgs = [r.getMessage() for r in caplog.records
            if r.name == 'asyncio' and r.levelno == logging.WARNING]
    assert len(msgs) == 1, msgs
    assert re.fullmatch(
        r"Executing <Task finished name='slowtask' coro=<" + LOCALS
        + r"slow_coro\(\) done, "
        r"defined at .*test_callbacks\.py:\d+> result=None "
        r"created at .*:\d+> took \d+\.\d{3} seconds", msgs[0]), msgs[0]


def test_no_slow_callback_warning_without_debug(loop, caplog):
    loop.slow_callback_duration = 0.01
    loop.call_soon(time.sleep, 0.05)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.DEBUG, logger='asyncio'):
        loop.run_forever()
    assert [r for r in caplog.records if r.name == 'asyncio'] == []


# ---------------------------------------------------------------------------
# executors
# ---------------------------------------------------------------------------

def test_run_in_executor_default(loop):
    main_thread = threading.get_ident()

    def work(a, b):
        return a + b, threading.get_ident()

    async def main():
        fut = loop.run_in_executor(None, work, 1, 2)
        assert isinstance(fut, asyncio.Future)
        assert asyncio.isfuture(fut)
        return await fut

    result, tid = loop.run_until_complete(main())
    assert result == 3
    assert tid != main_thread
    loop.run_until_complete(loop.shutdown_default_executor())


def test_run_in_executor_exception(loop):
    def work():
        raise KeyError('in thread')

    with pytest.raises(KeyError, match='in thread'):
        loop.run_until_complete(loop.run_in_executor(None, work))
    loop.run_until_complete(loop.shutdown_default_executor())


def test_run_in_executor_explicit_executor(loop):
    with concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix='explicit') as ex:
        name = loop.run_until_complete(
            loop.run_in_executor(ex, lambda: threading.current_thread().name))
    assert name.startswith('explicit')


def test_set_default_executor(loop):
    ex = concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix='custom-default')
    try:
        loop.set_default_executor(ex)
        name = loop.run_until_complete(
            loop.run_in_executor(None, lambda: threading.current_thread().name))
        assert name.startswith('custom-default')
    finally:
        ex.shutdown(wait=True)


def test_set_default_executor_rejects_non_thread_pool(loop):
    with pytest.raises(TypeError,
                       match='executor must be ThreadPoolExecutor instance'):
        loop.set_default_executor(object())


def test_shutdown_default_executor(loop):
    threads = []

    def work():
        threads.append(threading.current_thread())
        return 1

    assert loop.run_until_complete(loop.run_in_executor(None, work)) == 1
    loop.run_until_complete(loop.shutdown_default_executor())
    assert not threads[0].is_alive()  # waited for the worker threads
    with pytest.raises(RuntimeError, match='Executor shutdown has been called'):
        loop.run_in_executor(None, work)
    # An explicit executor still works.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as ex:
        assert loop.run_until_complete(loop.run_in_executor(ex, work)) == 1


def test_shutdown_default_executor_without_executor(loop):
    assert loop.run_until_complete(loop.shutdown_default_executor()) is None


# ---------------------------------------------------------------------------
# async generators
# ---------------------------------------------------------------------------

def test_shutdown_asyncgens_closes_unfinished_generator(loop):
    log = []
    keep = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            await asyncio.sleep(0)
            log.append(('closed', asyncio.get_running_loop() is loop))

    async def main():
        g = agen()
        assert await g.__anext__() == 1
        keep.append(g)

    loop.run_until_complete(main())
    assert log == []
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert log == [('closed', True)]


def test_runner_acloses_unfinished_async_generator(loop_factory):
    log = []
    keep = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            await asyncio.sleep(0)
            log.append(type(asyncio.get_running_loop()))

    async def main():
        g = agen()
        assert await g.__anext__() == 1
        keep.append(g)  # still referenced: only shutdown_asyncgens closes it
        return type(asyncio.get_running_loop())

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        loop_type = runner.run(main())
        assert log == []
    assert log == [loop_type]


def test_async_generator_finalizer_hook(loop):
    log = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            log.append('finalized')

    async def main():
        g = agen()
        assert await g.__anext__() == 1
        del g  # the loop's finalizer hook schedules aclose()
        for _ in range(10):
            if log:
                break
            await asyncio.sleep(0)
        return list(log)

    assert loop.run_until_complete(main()) == ['finalized']
    loop.run_until_complete(loop.shutdown_asyncgens())


def test_asyncgen_hooks_restored_after_run(loop):
    before = sys.get_asyncgen_hooks()
    seen = []
    loop.call_soon(lambda: seen.append(sys.get_asyncgen_hooks()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert sys.get_asyncgen_hooks() == before
    assert seen[0].firstiter is not None
    assert seen[0].finalizer is not None


# ---------------------------------------------------------------------------
# more debug-mode details
# ---------------------------------------------------------------------------

def test_debug_mode_tracks_coroutine_origins_while_running(loop):
    from asyncio import constants
    before = sys.get_coroutine_origin_tracking_depth()

    async def depth():
        return sys.get_coroutine_origin_tracking_depth()

    assert loop.run_until_complete(depth()) == before
    loop.set_debug(True)
    assert loop.run_until_complete(depth()) == constants.DEBUG_STACK_DEPTH
    assert sys.get_coroutine_origin_tracking_depth() == before


def test_timer_handle_source_traceback_points_at_caller(loop):
    loop.set_debug(True)
    line = lineno() + 1
    h = loop.call_later(10, _cb)
    line_at = lineno() + 1
    h2 = loop.call_at(loop.time() + 10, _cb)
    try:
        tb = h._source_traceback
        assert (tb[-1].filename, tb[-1].lineno) == (THIS_FILE, line)
        tb2 = h2._source_traceback
        assert (tb2[-1].filename, tb2[-1].lineno) == (THIS_FILE, line_at)
    finally:
        h.cancel()
        h2.cancel()


def test_call_at_keeps_integer_deadline(loop):
    when = int(loop.time()) + 1000
    h = loop.call_at(when, _cb)
    try:
        assert h.when() == when
        assert repr(h) == repr(asyncio.TimerHandle(when, _cb, (), loop))
    finally:
        h.cancel()


def test_run_until_complete_removes_its_done_callback(loop):
    fut = loop.create_future()
    loop.call_soon(loop.stop)
    with pytest.raises(RuntimeError):
        loop.run_until_complete(fut)
    assert not fut._callbacks
    fut2 = loop.create_future()
    loop.call_soon(fut2.set_result, 1)
    loop.run_until_complete(fut2)
    assert not fut2._callbacks
    fut.cancel()


# ---------------------------------------------------------------------------
# several loops in several threads
# ---------------------------------------------------------------------------

def test_loops_in_parallel_threads(loop_factory):
    n_threads = 4
    results = {}
    errors = []

    def worker(i):
        lp = loop_factory()
        try:
            async def child(j):
                await asyncio.sleep(0.001 * (j % 3))
                return (j, asyncio.current_task().get_name(),
                        asyncio.get_running_loop() is lp)

            async def main():
                me = asyncio.current_task()
                tasks = [asyncio.create_task(child(j), name=f't{i}-{j}')
                         for j in range(50)]
                mine = asyncio.all_tasks()
                out = await asyncio.gather(*tasks)
                return me is asyncio.current_task(), mine, out

            same_task, mine, out = lp.run_until_complete(main())
            results[i] = (same_task, all(t.get_loop() is lp for t in mine),
                          out)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            lp.close()

    threads = [threading.Thread(target=worker, args=(i,))
               for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for i in range(n_threads):
        same_task, own_loop_only, out = results[i]
        assert same_task and own_loop_only
        assert out == [(j, f't{i}-{j}', True) for j in range(50)]


def test_ping_pong_between_loops_in_two_threads(loop, loop_factory):
    other = loop_factory()
    rounds = 200
    other_ready = threading.Event()

    def other_main():
        async def serve():
            other_ready.set()
            await other.create_future()  # runs until cancelled

        task = other.create_task(serve())
        try:
            other.run_until_complete(task)
        except asyncio.CancelledError:
            pass

    th = threading.Thread(target=other_main)
    th.start()
    try:
        assert other_ready.wait(20)

        async def main():
            for i in range(rounds):
                reply = loop.create_future()

                def on_other(i=i, reply=reply):
                    # runs in the other thread's loop
                    assert asyncio.get_running_loop() is other
                    loop.call_soon_threadsafe(reply.set_result, i * 2)

                other.call_soon_threadsafe(on_other)
                assert await asyncio.wait_for(reply, 20) == i * 2
            return rounds

        assert loop.run_until_complete(main()) == rounds
    finally:
        def cancel_all():
            for t in asyncio.all_tasks(other):
                t.cancel()
        other.call_soon_threadsafe(cancel_all)
        th.join(30)
        other.close()
    assert not th.is_alive()


def test_call_soon_set_result_twice_reports_like_asyncio(loop, loop_errors):
    # ferroloop runs `call_soon(fut.set_result, v)` without the Python call
    # machinery; the failure must still be reported as a callback error.
    fut = loop.create_future()
    h1 = loop.call_soon(fut.set_result, 1)
    h2 = loop.call_soon(fut.set_result, 2)
    loop.run_until_complete(asyncio.sleep(0))
    assert fut.result() == 1
    assert len(loop_errors) == 1
    ctx = loop_errors[0]
    assert ctx['message'].startswith('Exception in callback ')
    assert 'set_result(2)' in ctx['message']
    assert isinstance(ctx['exception'], asyncio.InvalidStateError)
    assert ctx['handle'] is h2
    assert h1 is not h2


def test_call_soon_set_result_of_subclass_and_wrong_arity(loop, loop_errors):
    class MyFuture(asyncio.Future):
        def set_result(self, result):
            super().set_result(('wrapped', result))

    sub = MyFuture(loop=loop)
    fut = loop.create_future()
    loop.call_soon(sub.set_result, 1)
    loop.call_soon(fut.set_result)         # missing argument
    loop.call_soon(fut.set_result, 1, 2)   # one too many
    loop.run_until_complete(asyncio.sleep(0))
    assert sub.result() == ('wrapped', 1)
    assert not fut.done()
    assert [type(c['exception']) for c in loop_errors] == [TypeError, TypeError]


def test_call_soon_set_result_in_an_entered_context(loop, loop_errors):
    # The handle's context is entered around the callback, even on
    # ferroloop's direct `set_result` path: a context that is already entered
    # (here: the one running the loop) cannot be entered again, so the
    # callback fails and is reported; a fresh copy works.
    ctx = contextvars.copy_context()
    fut_entered = loop.create_future()
    fut_copy = loop.create_future()

    async def main():
        h = loop.call_soon(fut_entered.set_result, 1, context=ctx)
        loop.call_soon(fut_copy.set_result, 2)
        await asyncio.sleep(0)
        return h

    h = ctx.run(loop.run_until_complete, main())
    assert not fut_entered.done()
    assert fut_copy.result() == 2
    assert len(loop_errors) == 1
    assert loop_errors[0]['handle'] is h
    assert isinstance(loop_errors[0]['exception'], RuntimeError)
    assert 'already entered' in str(loop_errors[0]['exception'])


def test_call_soon_set_result_after_get_context(loop):
    # Asking a handle for its context (`get_context()` from 3.12, `_context`
    # before) does not change how it runs.
    var = contextvars.ContextVar('var', default='unset')
    fut = loop.create_future()
    var.set('at call_soon')
    h = loop.call_soon(fut.set_result, 5)
    var.set('later')
    assert h._context[var] == 'at call_soon'
    loop.run_until_complete(asyncio.sleep(0))
    assert fut.result() == 5
