"""The collector sees the same object graph on ferroloop as on asyncio.

ferroloop takes queued Handles and Tasks out of the cyclic GC's lists while
the loop holds them ("pinning"), and lets a task or handle stand in for the
context copy or coroutine only it references ("adoption"; see
crates/ferroloop-python/src/gc.rs). These tests check the cases where that
could go wrong: objects handed out while pinned or adopted, cycles formed
through them, coroutines the caller still holds, loops closed with work
queued, and asyncio's task registry.
"""

import asyncio
import contextvars
import gc
import sys
import weakref

import pytest


def _collected(wr):
    for _ in range(3):
        gc.collect()
    return wr() is None


class Box:
    def method(self):
        pass


async def _leaf():
    return 1


def test_handle_in_cycle_collected_after_it_ran(loop):
    box = Box()
    h = loop.call_soon(box.method)  # handle -> bound method -> box
    box.handle = h                  # box -> handle
    loop.run_until_complete(asyncio.sleep(0))
    wr = weakref.ref(box)
    del box, h
    assert _collected(wr)


def test_timer_handle_in_cycle_collected_after_cancel(loop):
    box = Box()
    box.handle = loop.call_later(3600, box.method)
    box.handle.cancel()
    loop.run_until_complete(asyncio.sleep(0))
    wr = weakref.ref(box)
    del box
    assert _collected(wr)


def test_queued_handle_in_cycle_collected_after_close(loop_factory):
    lp = loop_factory()
    box = Box()
    box.handle = lp.call_soon(box.method)
    box.timer = lp.call_later(3600, box.method)
    lp.close()
    wr = weakref.ref(box)
    del box
    assert _collected(wr)


def test_handle_cycle_through_its_context(loop):
    var = contextvars.ContextVar('var')
    box = Box()
    var.set(box)                      # the copied context -> box
    box.handle = loop.call_soon(box.method)
    var.set(None)
    loop.run_until_complete(asyncio.sleep(0))
    wr = weakref.ref(box)
    del box
    assert _collected(wr)


def test_handle_context_handed_out_is_tracked(loop):
    h = loop.call_soon(Box().method)
    assert gc.is_tracked(h._context)
    assert h._context is h._context
    loop.run_until_complete(asyncio.sleep(0))


def test_context_of_handle_keeps_its_values(loop):
    var = contextvars.ContextVar('var')
    seen = []
    var.set(['payload'])
    loop.call_soon(lambda: seen.append(var.get()))
    var.set(None)
    gc.collect()
    loop.run_until_complete(asyncio.sleep(0))
    assert seen == [['payload']]


def test_task_coroutine_and_context_handed_out_are_tracked(loop):
    async def work():
        await asyncio.sleep(0)

    t = loop.create_task(work())
    loop.run_until_complete(asyncio.sleep(0))
    assert gc.is_tracked(t.get_coro())
    if sys.version_info >= (3, 12):
        assert gc.is_tracked(t.get_context())
    loop.run_until_complete(t)


def test_pending_task_cycle_collected_and_coroutine_closed(loop, loop_errors):
    closed = []
    fut = loop.create_future()

    async def worker():
        me = asyncio.current_task()  # noqa: F841  frame -> task -> coroutine
        try:
            await fut
        finally:
            closed.append('finally')

    t = loop.create_task(worker())
    loop.run_until_complete(asyncio.sleep(0))
    wr = weakref.ref(t)
    del t, fut
    assert _collected(wr)
    assert closed == ['finally']
    assert [c['message'] for c in loop_errors] == \
        ['Task was destroyed but it is pending!']


def test_coroutine_held_by_caller_is_not_cleared(loop, loop_errors):
    # task -> coroutine -> frame -> box -> task, and the caller also holds
    # the coroutine: nothing in the cycle is garbage.
    fut = loop.create_future()

    async def worker(box, fut):
        await fut

    box = {'payload': [1, 2, 3]}
    coro = worker(box, fut)
    t = loop.create_task(coro)
    box['task'] = t
    loop.run_until_complete(asyncio.sleep(0))
    del t, box, fut
    gc.collect()
    frame_box = coro.cr_frame.f_locals['box']
    assert frame_box['payload'] == [1, 2, 3]
    assert not frame_box['task'].done()
    del frame_box
    del coro
    gc.collect()
    assert [c['message'] for c in loop_errors] == \
        ['Task was destroyed but it is pending!']


def test_coroutine_released_by_caller_after_first_step(loop):
    # The caller's reference goes away while the task runs: the task then
    # holds the coroutine alone; cycles through it still get collected.
    async def worker():
        me = asyncio.current_task()  # noqa: F841
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return 'done'

    coro = worker()
    t = loop.create_task(coro)
    loop.run_until_complete(asyncio.sleep(0))
    del coro
    assert loop.run_until_complete(t) == 'done'
    wr = weakref.ref(t)
    del t
    assert _collected(wr)


def test_unstarted_task_coroutine_after_close(loop_factory):
    lp = loop_factory()
    errors = []
    lp.set_exception_handler(lambda _loop, ctx: errors.append(ctx['message']))

    async def work():
        return 1

    coro = work()
    t = lp.create_task(coro)
    lp.close()
    assert gc.is_tracked(coro)
    del t
    gc.collect()
    coro.close()
    assert errors == ['Task was destroyed but it is pending!']


def test_many_tasks_in_cycles_collected(loop, loop_errors):
    futs = [loop.create_future() for _ in range(200)]

    async def worker(fut):
        me = asyncio.current_task()  # noqa: F841
        await fut

    tasks = [loop.create_task(worker(f)) for f in futs]
    loop.run_until_complete(asyncio.sleep(0))
    wrs = [weakref.ref(t) for t in tasks]
    del tasks, futs
    gc.collect()
    assert all(w() is None for w in wrs)
    assert len(loop_errors) == 200


def test_task_rescheduling_itself_stays_collectable(loop):
    # A task that only yields (sleep(0)) stays in the ready queue between
    # steps; once done it is an ordinary object again.
    async def spin(n):
        for _ in range(n):
            await asyncio.sleep(0)
        return asyncio.current_task()  # result -> task: a cycle

    t = loop.create_task(spin(50))
    assert loop.run_until_complete(t) is t
    wr = weakref.ref(t)
    del t
    assert _collected(wr)


def test_all_tasks_lists_only_live_tasks(loop):
    async def main():
        tasks = [asyncio.create_task(_leaf()) for _ in range(100)]
        pending = asyncio.all_tasks()
        assert set(tasks) <= pending
        await asyncio.gather(*tasks)
        return len(asyncio.all_tasks())

    assert loop.run_until_complete(main()) == 1  # main itself


@pytest.mark.skipif(sys.version_info >= (3, 12),
                    reason='_all_tasks is a WeakSet of every task only on 3.11')
def test_dead_tasks_leave_the_registry(loop):
    registry = asyncio.tasks._all_tasks
    before = len(registry.data)

    async def main():
        await asyncio.gather(*[asyncio.create_task(_leaf()) for _ in range(100)])

    loop.run_until_complete(main())
    gc.collect()
    assert len(registry.data) == before


@pytest.mark.skipif(sys.version_info >= (3, 12),
                    reason='_all_tasks is a WeakSet of every task only on 3.11')
def test_tasks_dying_while_registry_iterated(loop):
    registry = asyncio.tasks._all_tasks
    before = len(registry.data)

    tasks = [loop.create_task(_leaf()) for _ in range(20)]
    loop.run_until_complete(asyncio.gather(*tasks))
    it = iter(registry)
    next(it)
    del tasks
    gc.collect()
    list(it)  # no "set changed size during iteration"
    del it
    gc.collect()
    assert len(registry.data) == before


_SHUTDOWN_SCRIPT = '''
import asyncio, sys
kind = sys.argv[1]
if kind == 'asyncio':
    loop = asyncio.SelectorEventLoop()
else:
    import ferroloop
    loop = ferroloop.new_event_loop(native_tasks=(kind == 'ferroloop'))

async def worker(fut):
    me = asyncio.current_task()  # a cycle the collector meets at shutdown
    await fut

futs = [loop.create_future() for _ in range(10)]
tasks = [loop.create_task(worker(f)) for f in futs]
loop.run_until_complete(asyncio.sleep(0))
del tasks, futs
print('done')
'''


def test_pending_task_cycles_at_interpreter_shutdown(loop_kind):
    # The last collection runs inside Py_FinalizeEx, where PyO3 refuses to
    # attach: tearing down native tasks there must not panic or crash.
    import subprocess
    p = subprocess.run([sys.executable, '-c', _SHUTDOWN_SCRIPT, loop_kind],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout == 'done\n'
    assert 'panicked' not in p.stderr
    assert 'Traceback' not in p.stderr
