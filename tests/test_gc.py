"""Memory: finished tasks/futures/handles are freed, reference cycles through
ferroloop's native objects are collectable.

The volume tests are slow-ish by design (about 4 s for a million tasks on the
stdlib loop); they carry the ``gc`` marker so they can be deselected with
``-m 'not gc'``.
"""

import asyncio
import gc
import os
import tracemalloc
import weakref

import pytest

# A per-task leak of more than this many bytes fails the RSS tests.
LEAK_BYTES_PER_OBJECT = 16


def rss_bytes():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


async def _leaf(i):
    return i


async def _batch_plain(loop, n):
    tasks = [loop.create_task(_leaf(i)) for i in range(n)]
    for t in tasks:
        await t


async def _batch_futures(loop, n):
    """Tasks waiting on futures resolved by callbacks, plus timers."""
    async def waiter(fut):
        return await fut

    futs = [loop.create_future() for _ in range(n)]
    tasks = [loop.create_task(waiter(f)) for f in futs]
    timers = [loop.call_later(3600, print) for _ in range(n)]
    await asyncio.sleep(0)
    for i, f in enumerate(futs):
        loop.call_soon(f.set_result, i)
    for t in tasks:
        await t
    for h in timers:
        h.cancel()


async def _batch_errors(loop, n):
    async def boom(i):
        raise ValueError(i)

    async def sleeper():
        await asyncio.sleep(3600)

    failing = [loop.create_task(boom(i)) for i in range(n // 2)]
    cancelled = [loop.create_task(sleeper()) for _ in range(n // 2)]
    await asyncio.sleep(0)
    for t in cancelled:
        t.cancel()
    for t in failing + cancelled:
        try:
            await t
        except (ValueError, asyncio.CancelledError):
            pass


BATCHES = {
    'plain': (_batch_plain, 1_000_000),
    'futures+timers': (_batch_futures, 200_000),
    'errors+cancel': (_batch_errors, 200_000),
}


def _drive(loop, batch_fn, total, batch=1000):
    for _ in range(total // batch):
        loop.run_until_complete(batch_fn(loop, batch))


def _growth_per_phase(loop, batch_fn, total, measure, warmup):
    """Memory growth over two equal phases of ``total // 2`` tasks each.

    A per-task leak grows memory in *both* phases; a one-off resize of some
    internal table (dict, free list, arena) shows up in at most one of them,
    so tests assert on the smaller of the two growths.
    """
    _drive(loop, batch_fn, warmup)
    gc.collect()
    growths = []
    for _ in range(2):
        before = measure()
        _drive(loop, batch_fn, total // 2)
        gc.collect()
        growths.append(measure() - before)
    return growths


@pytest.mark.gc
@pytest.mark.timeout(180)
@pytest.mark.parametrize('kind', list(BATCHES))
def test_finished_objects_release_rss(loop, kind):
    batch_fn, total = BATCHES[kind]
    growths = _growth_per_phase(loop, batch_fn, total, rss_bytes, 20_000)
    per_phase = total // 2
    assert min(growths) < LEAK_BYTES_PER_OBJECT * per_phase, (
        f'RSS grew by {[g / 1e6 for g in growths]} MB in two phases of '
        f'{per_phase} tasks ({min(growths) / per_phase:.1f} bytes per task)')


@pytest.mark.gc
@pytest.mark.timeout(120)
@pytest.mark.parametrize('kind', list(BATCHES))
def test_finished_objects_release_python_memory(loop, kind):
    batch_fn, _ = BATCHES[kind]
    total = 60_000
    tracemalloc.start()
    try:
        growths = _growth_per_phase(
            loop, batch_fn, total,
            lambda: tracemalloc.get_traced_memory()[0], 10_000)
    finally:
        tracemalloc.stop()
    # One leaked Python object per task would be >= 1.6 MB per phase.
    assert min(growths) < 256 * 1024, (
        f'traced Python memory grew by {growths} bytes in two phases of '
        f'{total // 2} tasks')


# ---------------------------------------------------------------------------
# reference cycles
# ---------------------------------------------------------------------------

def _collected(wr):
    for _ in range(3):
        gc.collect()
    return wr() is None


def test_cycle_task_result_is_task(loop):
    async def coro():
        return asyncio.current_task()  # task._result -> task

    t = loop.create_task(coro())
    loop.run_until_complete(t)
    assert t.result() is t
    wr = weakref.ref(t)
    del t
    assert _collected(wr)


def test_cycle_task_exception_traceback(loop):
    async def coro():
        me = asyncio.current_task()  # noqa: F841  frame -> task
        raise ValueError('cycle')

    t = loop.create_task(coro())
    with pytest.raises(ValueError):
        loop.run_until_complete(t)
    # task -> exception -> traceback -> frame -> locals -> task
    wr = weakref.ref(t)
    del t
    assert _collected(wr)


def test_cycle_pending_task_and_its_coroutine(loop, loop_errors):
    fut = loop.create_future()

    async def coro():
        me = asyncio.current_task()  # noqa: F841  coro frame -> task
        await fut

    t = loop.create_task(coro())
    loop.run_until_complete(asyncio.sleep(0))
    assert not t.done()
    wr_task = weakref.ref(t)
    wr_fut = weakref.ref(fut)
    del t, fut
    assert _collected(wr_task)
    assert _collected(wr_fut)
    # Destroying a pending task is reported, like stdlib does.
    assert [c['message'] for c in loop_errors] == \
        ['Task was destroyed but it is pending!']


def test_cycle_task_done_callback_references_task(loop):
    t = loop.create_task(asyncio.sleep(3600))
    t.add_done_callback(lambda _, t=t: None)  # task -> callbacks -> task
    loop.run_until_complete(asyncio.sleep(0))
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(t)
    wr = weakref.ref(t)
    del t
    loop.run_until_complete(asyncio.sleep(0))  # run the done callback
    assert _collected(wr)


def test_cycle_future_callback_and_context(loop):
    import contextvars
    var = contextvars.ContextVar('var')
    f = loop.create_future()
    ctx = contextvars.copy_context()
    ctx.run(var.set, f)  # future -> callbacks -> context -> future
    f.add_done_callback(print, context=ctx)
    wr = weakref.ref(f)
    del f, ctx
    assert _collected(wr)


def test_finished_task_without_cycle_freed_by_refcount(loop):
    t = loop.create_task(_leaf(1))
    loop.run_until_complete(t)
    wr = weakref.ref(t)
    gc.disable()
    try:
        del t
        assert wr() is None
    finally:
        gc.enable()


def test_coroutine_of_finished_task_released(loop):
    async def coro():
        return 1

    c = coro()
    wr = weakref.ref(c)
    t = loop.create_task(c)
    del c
    loop.run_until_complete(t)
    del t
    assert _collected(wr)


def test_handle_callback_released_after_run(loop):
    class Callback:
        def __call__(self):
            pass

    cb = Callback()
    wr = weakref.ref(cb)
    h = loop.call_soon(cb)
    th = loop.call_later(0.001, cb)
    del cb
    loop.run_until_complete(asyncio.sleep(0.01))
    del h, th
    assert _collected(wr)


def test_cancelled_timer_callback_released(loop):
    class Callback:
        def __call__(self):
            pass

    cb = Callback()
    wr = weakref.ref(cb)
    h = loop.call_later(3600, cb)
    del cb
    h.cancel()
    del h
    loop.run_until_complete(asyncio.sleep(0))
    assert _collected(wr)


def test_closed_loop_releases_pending_callbacks(loop_factory):
    class Callback:
        def __call__(self):
            pass

    lp = loop_factory()
    cb = Callback()
    wr = weakref.ref(cb)
    lp.call_soon(cb)
    lp.call_later(3600, cb)
    del cb
    lp.close()
    assert _collected(wr)


def test_loop_itself_is_collectable(loop_factory):
    lp = loop_factory()

    async def coro():
        await asyncio.sleep(0)
        return 1

    assert lp.run_until_complete(coro()) == 1
    lp.close()
    wr = weakref.ref(lp)
    del lp
    assert _collected(wr)
