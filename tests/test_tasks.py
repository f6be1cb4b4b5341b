"""Tasks, cancellation, combinators and synchronisation primitives.

Expected behaviour is CPython 3.11's asyncio (tasks.py and the C Task in
_asynciomodule.c).  Reprs are compared with a *twin* task created directly
with ``asyncio.Task(coro, loop=loop)`` in the same state.
"""

import asyncio
import contextvars
import gc
import io
import re
import types
import weakref

import pytest
from conftest import ferroloop


def iterate(loop, n=1):
    """Run exactly ``n`` loop iterations."""
    for _ in range(n):
        loop.call_soon(loop.stop)
        loop.run_forever()


def norm(r):
    """Normalise a task repr: auto-generated names and addresses."""
    r = re.sub(r"name='Task-\d+'", "name='Task-N'", r)
    return re.sub(r'0x[0-9a-f]+', '0xADDR', r)


async def _ret(value=None):
    return value


async def _boom(msg='boom'):
    raise ValueError(msg)


async def _waiter(fut):
    return await fut


# ---------------------------------------------------------------------------
# types and creation
# ---------------------------------------------------------------------------

def test_create_task_type(loop, loop_kind):
    t = loop.create_task(_ret())
    expected = {
        'asyncio': asyncio.Task,
        'ferroloop': ferroloop and ferroloop.Task,
        'ferroloop-compat': asyncio.Task,
    }[loop_kind]
    assert type(t) is expected
    loop.run_until_complete(t)


def test_task_is_instance_of_stdlib_classes(loop):
    t = loop.create_task(_ret())
    assert isinstance(t, asyncio.Task)
    assert isinstance(t, asyncio.Future)
    assert t.__class__ is asyncio.Task
    assert asyncio.isfuture(t)
    assert t.get_loop() is loop
    assert t._loop is loop
    loop.run_until_complete(t)


def test_all_ways_of_creating_tasks_agree(loop):
    types_seen = []

    async def main():
        types_seen.append(type(asyncio.current_task()))
        t1 = asyncio.create_task(_ret())
        t2 = asyncio.ensure_future(_ret())
        t3 = loop.create_task(_ret())
        types_seen.extend([type(t1), type(t2), type(t3)])
        await asyncio.gather(t1, t2, t3)

    loop.run_until_complete(main())
    t4 = asyncio.ensure_future(_ret(), loop=loop)
    types_seen.append(type(t4))
    loop.run_until_complete(t4)
    assert len(set(types_seen)) == 1


def test_task_result(loop):
    t = loop.create_task(_ret(42))
    assert not t.done()
    with pytest.raises(asyncio.InvalidStateError):
        t.result()
    assert loop.run_until_complete(t) == 42
    assert t.done() and not t.cancelled()
    assert t.result() == 42
    assert t.exception() is None
    assert t._state == 'FINISHED'


def test_task_exception(loop):
    t = loop.create_task(_boom('x'))
    with pytest.raises(ValueError, match='x'):
        loop.run_until_complete(t)
    assert isinstance(t.exception(), ValueError)
    assert t._state == 'FINISHED'


def test_task_does_not_start_synchronously(loop):
    started = []

    async def coro():
        started.append(True)

    t = loop.create_task(coro())
    assert started == []
    iterate(loop)
    assert started == [True]
    assert t.done()


def test_task_steps_are_scheduled_fifo(loop):
    order = []

    async def coro(i):
        order.append(i)

    tasks = [loop.create_task(coro(i)) for i in range(10)]
    loop.run_until_complete(asyncio.gather(*tasks))
    assert order == list(range(10))


def test_task_done_callback(loop):
    calls = []
    t = loop.create_task(_ret(1))
    t.add_done_callback(calls.append)
    loop.run_until_complete(t)
    iterate(loop)
    assert calls == [t]


# ---------------------------------------------------------------------------
# names, coroutine, context
# ---------------------------------------------------------------------------

def test_default_task_names(loop):
    t1 = loop.create_task(_ret())
    t2 = loop.create_task(_ret())
    m1 = re.fullmatch(r'Task-(\d+)', t1.get_name())
    m2 = re.fullmatch(r'Task-(\d+)', t2.get_name())
    assert m1 and m2
    assert int(m2.group(1)) == int(m1.group(1)) + 1
    loop.run_until_complete(asyncio.gather(t1, t2))


def test_task_name_kwarg_and_set_name(loop):
    t = loop.create_task(_ret(), name='first')
    assert t.get_name() == 'first'
    t.set_name('second')
    assert t.get_name() == 'second'
    t.set_name(42)
    assert t.get_name() == '42'
    t2 = loop.create_task(_ret(), name=3.5)
    assert t2.get_name() == '3.5'
    loop.run_until_complete(asyncio.gather(t, t2))
    t.set_name('after-done')
    assert t.get_name() == 'after-done'


def test_create_task_name_via_module_create_task(loop):
    async def main():
        t = asyncio.create_task(_ret(), name='via-asyncio')
        await t
        return t.get_name()

    assert loop.run_until_complete(main()) == 'via-asyncio'


def test_get_coro(loop):
    coro = _ret()
    t = loop.create_task(coro)
    assert t.get_coro() is coro
    assert t._coro is coro
    loop.run_until_complete(t)
    assert t.get_coro() is coro


def test_task_get_context(loop):
    ctx = contextvars.copy_context()
    t = loop.create_task(_ret(), context=ctx)
    try:
        if not hasattr(t, 'get_context'):
            # Task.get_context() only appeared in CPython 3.12.
            assert type(t) is asyncio.Task, \
                'native ferroloop tasks must provide get_context()'
            pytest.skip('stdlib 3.11 Task has no get_context()')
        assert t.get_context() is ctx
    finally:
        loop.run_until_complete(t)


def test_create_task_context_kwarg(loop):
    var = contextvars.ContextVar('var', default='default')
    ctx = contextvars.copy_context()
    ctx.run(var.set, 'given')

    async def coro():
        before = var.get()
        var.set('set-in-task')
        await asyncio.sleep(0)
        return before, var.get()

    t = loop.create_task(coro(), context=ctx)
    assert loop.run_until_complete(t) == ('given', 'set-in-task')
    assert ctx[var] == 'set-in-task'
    assert var.get() == 'default'


def test_module_create_task_context_kwarg(loop):
    var = contextvars.ContextVar('var', default='default')
    ctx = contextvars.copy_context()
    ctx.run(var.set, 'given')

    async def child():
        return var.get()

    async def main():
        return await asyncio.create_task(child(), context=ctx)

    assert loop.run_until_complete(main()) == 'given'


def test_task_context_copied_at_creation(loop):
    var = contextvars.ContextVar('var', default='default')

    async def coro():
        await asyncio.sleep(0)
        return var.get()

    token = var.set('at-creation')
    try:
        t = loop.create_task(coro())
        var.set('later')
    finally:
        var.reset(token)
    assert loop.run_until_complete(t) == 'at-creation'


def test_tasks_have_isolated_contexts(loop):
    var = contextvars.ContextVar('var', default='default')

    async def coro(name):
        var.set(name)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return var.get()

    async def main():
        return await asyncio.gather(coro('a'), coro('b'), coro('c'))

    assert loop.run_until_complete(main()) == ['a', 'b', 'c']
    assert var.get() == 'default'


def test_done_callback_context_of_task(loop):
    var = contextvars.ContextVar('var', default='default')
    ctx = contextvars.copy_context()
    ctx.run(var.set, 'cb-ctx')
    seen = []
    t = loop.create_task(_ret())
    t.add_done_callback(lambda _: seen.append(var.get()), context=ctx)
    loop.run_until_complete(t)
    iterate(loop)
    assert seen == ['cb-ctx']


# ---------------------------------------------------------------------------
# private attributes used by third-party libraries (anyio, tornado, ...)
# ---------------------------------------------------------------------------

def test_private_task_attributes_match_stdlib(loop):
    fut1 = loop.create_future()
    fut2 = loop.create_future()
    coro1 = _waiter(fut1)
    coro2 = _waiter(fut2)
    t = loop.create_task(coro1)
    ref = asyncio.Task(coro2, loop=loop)
    for task, coro in ((t, coro1), (ref, coro2)):
        assert task._coro is coro
        assert task._fut_waiter is None
        assert task._must_cancel is False
        assert task._log_destroy_pending is True
        assert task._state == 'PENDING'
    iterate(loop)
    assert t._fut_waiter is fut1
    assert ref._fut_waiter is fut2
    t.cancel()
    ref.cancel()
    for task, fut in ((t, fut1), (ref, fut2)):
        # cancel() cancelled the awaited future directly
        assert task._must_cancel is False
        assert task._fut_waiter is fut
        assert fut.cancelled()
    loop.run_until_complete(asyncio.wait([t, ref]))
    assert t.cancelled() and ref.cancelled()


def test_must_cancel_before_first_step(loop):
    t = loop.create_task(_ret())
    ref = asyncio.Task(_ret(), loop=loop)
    t.cancel()
    ref.cancel()
    assert t._must_cancel is True
    assert ref._must_cancel is True
    loop.run_until_complete(asyncio.wait([t, ref]))
    assert t._must_cancel is False
    assert t.cancelled()


# ---------------------------------------------------------------------------
# cancellation
# ---------------------------------------------------------------------------

def test_eager_cancellation_before_first_step(loop):
    ran = []

    async def coro():
        ran.append(True)

    t = loop.create_task(coro())
    assert t.cancel() is True
    assert not t.cancelled()  # not yet: the step has to run
    assert t.cancelling() == 1
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(t)
    assert ran == []
    assert t.cancelled()
    assert t._state == 'CANCELLED'


def test_eager_cancellation_keeps_message(loop):
    t = loop.create_task(_ret())
    t.cancel('early')
    with pytest.raises(asyncio.CancelledError) as ei:
        loop.run_until_complete(t)
    assert ei.value.args == ('early',)
    # Like stdlib: the saved CancelledError (carrying the message) is handed
    # out once; later retrievals build a fresh one without the message.
    with pytest.raises(asyncio.CancelledError) as ei:
        t.result()
    assert ei.value.args == ()


def test_cancel_while_awaiting_future_cancels_future(loop):
    fut = loop.create_future()
    t = loop.create_task(_waiter(fut))
    iterate(loop)
    assert t.cancel() is True
    assert fut.cancelled()  # synchronously
    assert not t.done()
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(t)
    assert t.cancelled()


def test_cancel_while_awaiting_stdlib_future(loop):
    fut = asyncio.Future(loop=loop)
    t = loop.create_task(_waiter(fut))
    iterate(loop)
    t.cancel()
    assert fut.cancelled()
    loop.run_until_complete(asyncio.wait([t]))
    assert t.cancelled()


def test_cancel_message_propagates(loop):
    async def sleeper():
        await asyncio.sleep(10)

    t = loop.create_task(sleeper())
    iterate(loop)
    t.cancel('bye')

    async def observer():
        try:
            await t
        except asyncio.CancelledError as exc:
            return exc.args

    assert loop.run_until_complete(observer()) == ('bye',)
    # The saved CancelledError is consumed by the first retrieval (stdlib's
    # _make_cancelled_error); later ones carry no message.
    with pytest.raises(asyncio.CancelledError) as ei:
        t.result()
    assert ei.value.args == ()
    with pytest.raises(asyncio.CancelledError) as ei:
        t.exception()
    assert ei.value.args == ()


def test_cancel_message_seen_inside_coroutine(loop):
    async def coro():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError as exc:
            return exc.args

    t = loop.create_task(coro())
    iterate(loop)
    t.cancel(msg='kw-message')
    assert loop.run_until_complete(t) == ('kw-message',)
    assert not t.cancelled()


def test_cancel_done_task_returns_false(loop):
    t = loop.create_task(_ret(1))
    loop.run_until_complete(t)
    assert t.cancel() is False
    assert t.cancelling() == 0
    assert t.result() == 1


def test_cancelling_and_uncancel(loop):
    async def coro():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass
        return 'swallowed'

    t = loop.create_task(coro())
    assert t.cancelling() == 0
    assert t.uncancel() == 0
    iterate(loop)
    assert t.cancel() is True
    assert t.cancelling() == 1
    assert t.cancel() is True
    assert t.cancelling() == 2
    assert t.uncancel() == 1
    assert t.cancelling() == 1
    assert loop.run_until_complete(t) == 'swallowed'
    assert not t.cancelled()
    assert t.cancelling() == 1
    assert t.uncancel() == 0
    assert t.uncancel() == 0


def test_cancelling_shown_in_repr(loop):
    fut = loop.create_future()
    t = loop.create_task(_waiter(fut), name='C')
    iterate(loop)
    t.cancel()
    assert repr(t).startswith("<Task cancelling name='C' ")
    loop.run_until_complete(asyncio.wait([t]))


def test_task_swallowing_cancellation_continues(loop):
    async def coro():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass
        await asyncio.sleep(0)
        return 'continued'

    t = loop.create_task(coro())
    iterate(loop)
    t.cancel()
    assert loop.run_until_complete(t) == 'continued'


def test_cancel_propagates_to_awaited_task(loop):
    inner_log = []

    async def inner():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            inner_log.append('inner cancelled')
            raise

    inner_task = loop.create_task(inner())

    async def outer():
        await inner_task

    outer_task = loop.create_task(outer())
    iterate(loop, 2)
    outer_task.cancel()
    loop.run_until_complete(asyncio.wait([outer_task]))
    assert inner_task.cancelled()
    assert outer_task.cancelled()
    assert inner_log == ['inner cancelled']


def test_cancelled_inner_task_cancels_awaiting_outer(loop):
    inner_task = loop.create_task(asyncio.sleep(10))

    async def outer():
        await inner_task

    outer_task = loop.create_task(outer())
    iterate(loop, 2)
    inner_task.cancel()
    loop.run_until_complete(asyncio.wait([outer_task]))
    assert outer_task.cancelled()


def test_cancel_self_then_return(loop):
    async def coro():
        asyncio.current_task().cancel()
        return 1

    t = loop.create_task(coro())
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(t)
    assert t.cancelled()


def test_cancel_self_then_bare_yield(loop):
    async def coro():
        asyncio.current_task().cancel('self')
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError as exc:
            return ('caught', exc.args)
        return 'not cancelled'

    assert loop.run_until_complete(coro()) == ('caught', ('self',))


def test_cancel_self_then_await_future(loop):
    fut = loop.create_future()

    async def coro():
        asyncio.current_task().cancel()
        try:
            await fut
        except asyncio.CancelledError:
            return 'caught'

    assert loop.run_until_complete(coro()) == 'caught'
    assert fut.cancelled()


def test_cancelled_error_chaining(loop):
    async def coro():
        try:
            await asyncio.sleep(10)
        finally:
            pass

    t = loop.create_task(coro())
    iterate(loop)
    t.cancel('why')
    with pytest.raises(asyncio.CancelledError) as ei:
        loop.run_until_complete(t)
    assert ei.value.args == ('why',)


# ---------------------------------------------------------------------------
# generator-based coroutines, bare yield
# ---------------------------------------------------------------------------

def test_bare_yield_relinquishes_one_iteration(loop):
    order = []

    @types.coroutine
    def relinquish():
        yield

    async def coro():
        order.append('a')
        loop.call_soon(order.append, 'cb')
        await relinquish()
        order.append('b')

    loop.run_until_complete(coro())
    assert order == ['a', 'cb', 'b']


def test_generator_as_task(loop):
    @types.coroutine
    def gen():
        yield
        yield
        return 'gen-result'

    assert loop.run_until_complete(gen()) == 'gen-result'


def test_sleep_zero_round_robin(loop):
    order = []

    async def worker(name):
        for i in range(3):
            order.append((name, i))
            await asyncio.sleep(0)

    async def main():
        await asyncio.gather(worker('a'), worker('b'))

    loop.run_until_complete(main())
    assert order == [('a', 0), ('b', 0), ('a', 1), ('b', 1), ('a', 2), ('b', 2)]


def test_sleep_delay_ordering(loop):
    order = []

    async def sleeper(name, delay):
        await asyncio.sleep(delay)
        order.append(name)

    async def main():
        await asyncio.gather(sleeper('slow', 0.3), sleeper('fast', 0.02),
                             sleeper('zero', 0), sleeper('neg', -1))

    loop.run_until_complete(main())
    assert order[:2] in (['zero', 'neg'], ['neg', 'zero'])
    assert order[2:] == ['fast', 'slow']


def test_sleep_result(loop):
    assert loop.run_until_complete(asyncio.sleep(0, 'zero')) == 'zero'
    assert loop.run_until_complete(asyncio.sleep(0.001, result='r')) == 'r'


# ---------------------------------------------------------------------------
# gather
# ---------------------------------------------------------------------------

def test_gather_results_in_argument_order(loop):
    futs = [loop.create_future() for _ in range(3)]

    async def main():
        loop.call_soon(futs[2].set_result, 'c')
        loop.call_soon(futs[0].set_result, 'a')
        loop.call_soon(futs[1].set_result, 'b')
        return await asyncio.gather(_waiter(futs[0]), futs[1], _ret('x'),
                                    futs[2])

    assert loop.run_until_complete(main()) == ['a', 'b', 'x', 'c']


def test_gather_empty(loop):
    async def main():
        return await asyncio.gather()

    assert loop.run_until_complete(main()) == []


def test_gather_return_exceptions_true(loop):
    async def main():
        return await asyncio.gather(_ret(1), _boom('e'), _ret(3),
                                    return_exceptions=True)

    res = loop.run_until_complete(main())
    assert res[0] == 1 and res[2] == 3
    assert isinstance(res[1], ValueError) and res[1].args == ('e',)


def test_gather_return_exceptions_false(loop):
    finished = []

    async def slow():
        await asyncio.sleep(0.01)
        finished.append('slow')
        return 'slow'

    async def main():
        slow_task = asyncio.ensure_future(slow())
        with pytest.raises(ValueError, match='first'):
            await asyncio.gather(slow_task, _boom('first'))
        assert not slow_task.done()  # siblings are not cancelled
        return await slow_task

    assert loop.run_until_complete(main()) == 'slow'
    assert finished == ['slow']


def test_gather_cancel_cancels_children(loop):
    children = [loop.create_task(asyncio.sleep(10)) for _ in range(3)]

    async def main():
        g = asyncio.gather(*children)
        await asyncio.sleep(0)
        assert g.cancel() is True
        with pytest.raises(asyncio.CancelledError):
            await g
        return g

    g = loop.run_until_complete(main())
    assert g.done()
    assert all(c.cancelled() for c in children)


def test_gather_child_cancelled_with_return_exceptions(loop):
    fut = loop.create_future()

    async def main():
        g = asyncio.gather(fut, _ret(2), return_exceptions=True)
        fut.cancel()
        return await g

    res = loop.run_until_complete(main())
    assert isinstance(res[0], asyncio.CancelledError)
    assert res[1] == 2


def test_gather_child_cancelled_without_return_exceptions(loop):
    fut = loop.create_future()

    async def main():
        g = asyncio.gather(fut, _ret(2))
        fut.cancel()
        try:
            await g
        except asyncio.CancelledError:
            return 'cancelled'

    assert loop.run_until_complete(main()) == 'cancelled'


# ---------------------------------------------------------------------------
# wait / wait_for / timeout
# ---------------------------------------------------------------------------

def test_wait_first_completed(loop):
    futs = [loop.create_future() for _ in range(3)]
    tasks = [loop.create_task(_waiter(f)) for f in futs]

    async def main():
        loop.call_soon(futs[1].set_result, 'one')
        done, pending = await asyncio.wait(
            tasks, return_when=asyncio.FIRST_COMPLETED)
        return done, pending

    done, pending = loop.run_until_complete(main())
    assert done == {tasks[1]}
    assert pending == {tasks[0], tasks[2]}
    for f in futs:
        f.cancel()
    loop.run_until_complete(asyncio.wait(tasks))


def test_wait_first_exception(loop):
    f_ok = loop.create_future()
    f_slow = loop.create_future()
    t_ok = loop.create_task(_waiter(f_ok))
    t_slow = loop.create_task(_waiter(f_slow))
    t_bad = loop.create_task(_boom())

    async def main():
        loop.call_soon(f_ok.set_result, 1)
        return await asyncio.wait([t_ok, t_slow, t_bad],
                                  return_when=asyncio.FIRST_EXCEPTION)

    done, pending = loop.run_until_complete(main())
    assert t_bad in done
    assert pending == {t_slow}
    assert isinstance(t_bad.exception(), ValueError)
    f_slow.set_result(2)
    loop.run_until_complete(t_slow)


def test_wait_first_exception_without_exception_waits_all(loop):
    tasks = [loop.create_task(_ret(i)) for i in range(3)]

    async def main():
        return await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)

    done, pending = loop.run_until_complete(main())
    assert done == set(tasks) and pending == set()


def test_wait_all_completed(loop):
    tasks = [loop.create_task(asyncio.sleep(0.001 * i, i)) for i in range(4)]
    done, pending = loop.run_until_complete(asyncio.wait(tasks))
    assert done == set(tasks) and pending == set()
    assert sorted(t.result() for t in done) == [0, 1, 2, 3]


def test_wait_timeout(loop):
    fut = loop.create_future()
    t = loop.create_task(_waiter(fut))

    async def main():
        return await asyncio.wait([t], timeout=0.01)

    done, pending = loop.run_until_complete(main())
    assert done == set() and pending == {t}
    assert not t.done()  # wait() does not cancel
    fut.set_result(None)
    loop.run_until_complete(t)


def test_wait_for_timeout_cancels_inner(loop):
    log = []

    async def inner():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            log.append('inner cancelled')
            raise

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(inner(), timeout=0.01)
        return 'after'

    assert loop.run_until_complete(main()) == 'after'
    assert log == ['inner cancelled']
    assert asyncio.TimeoutError is TimeoutError


def test_wait_for_no_timeout(loop):
    async def main():
        a = await asyncio.wait_for(_ret('none'), timeout=None)
        b = await asyncio.wait_for(asyncio.sleep(0.001, 'fast'), timeout=10)
        return a, b

    assert loop.run_until_complete(main()) == ('none', 'fast')


def test_wait_for_zero_timeout(loop):
    done = loop.create_future()
    done.set_result('ready')
    pending = loop.create_future()

    async def main():
        a = await asyncio.wait_for(done, 0)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(pending, 0)
        return a

    assert loop.run_until_complete(main()) == 'ready'
    assert pending.cancelled()


def test_wait_for_propagates_exception(loop):
    async def main():
        with pytest.raises(ValueError, match='inner'):
            await asyncio.wait_for(_boom('inner'), timeout=10)

    loop.run_until_complete(main())


def test_timeout_context_manager_expires(loop):
    async def main():
        task = asyncio.current_task()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01) as cm:
                await asyncio.sleep(10)
        assert cm.expired()
        assert task.cancelling() == 0
        return 'survived'

    assert loop.run_until_complete(main()) == 'survived'


def test_timeout_context_manager_not_expired(loop):
    async def main():
        async with asyncio.timeout(10) as cm:
            await asyncio.sleep(0)
        assert not cm.expired()
        async with asyncio.timeout(None) as cm2:
            await asyncio.sleep(0)
        assert cm2.when() is None
        return 'ok'

    assert loop.run_until_complete(main()) == 'ok'


def test_timeout_at_and_reschedule(loop):
    async def main():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout_at(loop.time() + 10) as cm:
                cm.reschedule(loop.time() + 0.01)
                await asyncio.sleep(10)
        assert cm.expired()

    loop.run_until_complete(main())


def test_nested_timeouts(loop):
    async def main():
        async with asyncio.timeout(10) as outer:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.01) as inner:
                    await asyncio.sleep(10)
            assert inner.expired()
        assert not outer.expired()
        assert asyncio.current_task().cancelling() == 0

    loop.run_until_complete(main())


def test_timeout_does_not_swallow_external_cancel(loop):
    async def main():
        async with asyncio.timeout(10):
            await asyncio.sleep(10)

    t = loop.create_task(main())
    iterate(loop, 2)
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(t)
    assert t.cancelled()


# ---------------------------------------------------------------------------
# TaskGroup, shield, as_completed
# ---------------------------------------------------------------------------

def test_task_group_results(loop):
    async def main():
        async with asyncio.TaskGroup() as tg:
            t1 = tg.create_task(asyncio.sleep(0.001, 1))
            t2 = tg.create_task(_ret(2), name='named')
        assert t2.get_name() == 'named'
        return t1.result(), t2.result()

    assert loop.run_until_complete(main()) == (1, 2)


def test_task_group_child_failure_cancels_siblings(loop):
    log = []

    async def sibling():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            log.append('sibling cancelled')
            raise

    async def failing():
        await asyncio.sleep(0)
        raise ValueError('child failed')

    async def main():
        with pytest.raises(ExceptionGroup) as ei:
            async with asyncio.TaskGroup() as tg:
                s = tg.create_task(sibling())
                tg.create_task(failing())
        eg = ei.value
        assert len(eg.exceptions) == 1
        assert type(eg.exceptions[0]) is ValueError
        assert eg.exceptions[0].args == ('child failed',)
        return s.cancelled(), asyncio.current_task().cancelling()

    # 3.11's TaskGroup leaves the parent's cancel request counted (1).
    assert loop.run_until_complete(main()) == (True, 1)
    assert log == ['sibling cancelled']


def test_task_group_multiple_failures(loop):
    async def fail(msg):
        await asyncio.sleep(0)
        raise KeyError(msg)

    async def main():
        with pytest.raises(ExceptionGroup) as ei:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(fail('a'))
                tg.create_task(fail('b'))
        return sorted(e.args[0] for e in ei.value.exceptions)

    assert loop.run_until_complete(main()) == ['a', 'b']


def test_task_group_external_cancel(loop):
    log = []

    async def child():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            log.append('child cancelled')
            raise

    async def main():
        async with asyncio.TaskGroup() as tg:
            tg.create_task(child())
            await asyncio.sleep(10)

    t = loop.create_task(main())
    iterate(loop, 3)
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(t)
    assert log == ['child cancelled']


def test_shield(loop):
    inner_done = []

    async def inner():
        await asyncio.sleep(0.01)
        inner_done.append(True)
        return 'inner'

    inner_task = loop.create_task(inner())

    async def outer():
        return await asyncio.shield(inner_task)

    outer_task = loop.create_task(outer())
    iterate(loop, 2)
    outer_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(outer_task)
    assert not inner_task.cancelled()
    assert loop.run_until_complete(inner_task) == 'inner'
    assert inner_done == [True]


def test_shield_passes_result_and_exception(loop):
    async def main():
        a = await asyncio.shield(_ret('shielded'))
        with pytest.raises(ValueError):
            await asyncio.shield(_boom())
        return a

    assert loop.run_until_complete(main()) == 'shielded'


def test_as_completed_order(loop):
    futs = [loop.create_future() for _ in range(3)]

    async def main():
        for i in (2, 0, 1):
            loop.call_soon(futs[i].set_result, i)
        out = []
        for aw in asyncio.as_completed(futs):
            out.append(await aw)
        return out

    assert loop.run_until_complete(main()) == [2, 0, 1]


def test_as_completed_timeout(loop):
    fut = loop.create_future()

    async def main():
        for aw in asyncio.as_completed([fut], timeout=0.01):
            with pytest.raises(asyncio.TimeoutError):
                await aw

    loop.run_until_complete(main())
    fut.cancel()


# ---------------------------------------------------------------------------
# current_task / all_tasks
# ---------------------------------------------------------------------------

def test_current_task(loop):
    seen = {}

    async def coro():
        seen['inside'] = asyncio.current_task()
        seen['inside_loop_arg'] = asyncio.current_task(loop)
        await asyncio.sleep(0)
        seen['after_suspend'] = asyncio.current_task()

    t = loop.create_task(coro())
    loop.call_soon(lambda: seen.setdefault('callback', asyncio.current_task()))
    loop.run_until_complete(t)
    assert seen['inside'] is t
    assert seen['inside_loop_arg'] is t
    assert seen['after_suspend'] is t
    assert seen['callback'] is None
    assert asyncio.current_task(loop) is None
    with pytest.raises(RuntimeError, match='no running event loop'):
        asyncio.current_task()


def test_current_task_in_done_callback_is_none(loop):
    seen = []
    t = loop.create_task(_ret())
    t.add_done_callback(lambda _: seen.append(asyncio.current_task()))
    loop.run_until_complete(t)
    iterate(loop)
    assert seen == [None]


def test_all_tasks(loop):
    fut = loop.create_future()
    t1 = loop.create_task(_waiter(fut))
    t2 = loop.create_task(_ret())

    async def main():
        await asyncio.sleep(0)
        return asyncio.all_tasks(), asyncio.current_task()

    tasks, me = loop.run_until_complete(main())
    assert t1 in tasks
    assert me in tasks
    assert t2 not in tasks  # done
    assert asyncio.all_tasks(loop) == {t1}
    fut.set_result(None)
    loop.run_until_complete(t1)
    assert asyncio.all_tasks(loop) == set()


def test_all_tasks_is_per_loop(loop, loop_factory):
    other = loop_factory()
    try:
        fut = other.create_future()
        t_other = other.create_task(_waiter(fut))
        t_mine = loop.create_task(_ret())
        assert asyncio.all_tasks(loop) == {t_mine}
        assert asyncio.all_tasks(other) == {t_other}
        loop.run_until_complete(t_mine)
        fut.set_result(None)
        other.run_until_complete(t_other)
    finally:
        other.close()


# ---------------------------------------------------------------------------
# reprs
# ---------------------------------------------------------------------------

def _twins(loop, coro_fn, *args, name='T'):
    t = loop.create_task(coro_fn(*args), name=name)
    ref = asyncio.Task(coro_fn(*args), loop=loop, name=name)
    return t, ref


def test_repr_pending_not_started(loop):
    t, ref = _twins(loop, _ret, 1)
    assert repr(t) == repr(ref)
    assert re.fullmatch(r"<Task pending name='T' coro=<_ret\(\) running at "
                        r".*test_tasks\.py:\d+>>", repr(t))
    loop.run_until_complete(asyncio.gather(t, ref))


def test_repr_waiting_on_future(loop):
    f1 = loop.create_future()
    f2 = loop.create_future()
    t = loop.create_task(_waiter(f1), name='W')
    ref = asyncio.Task(_waiter(f2), loop=loop, name='W')
    iterate(loop)
    assert repr(f1) == repr(f2) == '<Future pending cb=[Task.task_wakeup()]>'
    assert repr(t) == repr(ref)
    assert re.fullmatch(
        r"<Task pending name='W' coro=<_waiter\(\) running at .*:\d+> "
        r"wait_for=<Future pending cb=\[Task\.task_wakeup\(\)\]>>", repr(t))
    t.cancel()
    ref.cancel()
    assert repr(t) == repr(ref)
    assert re.fullmatch(
        r"<Task cancelling name='W' coro=<_waiter\(\) running at .*:\d+> "
        r"wait_for=<Future cancelled>>", repr(t))
    loop.run_until_complete(asyncio.wait([t, ref]))
    assert repr(t) == repr(ref)
    assert re.fullmatch(
        r"<Task cancelled name='W' coro=<_waiter\(\) done, defined at "
        r".*:\d+>>", repr(t))


def test_repr_waiting_on_task(loop):
    inner1 = loop.create_task(asyncio.sleep(10), name='inner')
    inner2 = loop.create_task(asyncio.sleep(10), name='inner')
    t = loop.create_task(_waiter(inner1), name='outer')
    ref = asyncio.Task(_waiter(inner2), loop=loop, name='outer')
    iterate(loop)
    assert norm(repr(t)).replace('inner1', 'innerX') == \
        norm(repr(ref)).replace('inner2', 'innerX')
    assert 'wait_for=<Task pending name=' in repr(t)
    inner1.cancel()
    inner2.cancel()
    loop.run_until_complete(asyncio.wait([t, ref]))


def test_repr_finished_result(loop):
    t, ref = _twins(loop, _ret, 'value')
    loop.run_until_complete(asyncio.gather(t, ref))
    assert repr(t) == repr(ref)
    assert re.fullmatch(r"<Task finished name='T' coro=<_ret\(\) done, "
                        r"defined at .*:\d+> result='value'>", repr(t))


def test_repr_finished_exception(loop):
    t, ref = _twins(loop, _boom, 'bad')
    loop.run_until_complete(asyncio.wait([t, ref]))
    assert repr(t) == repr(ref)
    assert re.fullmatch(r"<Task finished name='T' coro=<_boom\(\) done, "
                        r"defined at .*:\d+> exception=ValueError\('bad'\)>",
                        repr(t))
    t.exception()
    ref.exception()


def test_repr_cancelled_before_start(loop):
    t, ref = _twins(loop, _ret)
    t.cancel()
    ref.cancel()
    assert repr(t) == repr(ref)
    loop.run_until_complete(asyncio.wait([t, ref]))
    assert repr(t) == repr(ref)
    assert repr(t).startswith("<Task cancelled name='T' coro=<_ret() ")


def test_repr_default_name_normalised(loop):
    t = loop.create_task(_ret())
    ref = asyncio.Task(_ret(), loop=loop)
    assert norm(repr(t)) == norm(repr(ref))
    assert "name='Task-N'" in norm(repr(t))
    loop.run_until_complete(asyncio.gather(t, ref))
    assert norm(repr(t)) == norm(repr(ref))


def test_repr_with_done_callbacks(loop):
    def cb(_):
        pass

    t, ref = _twins(loop, _ret)
    t.add_done_callback(cb)
    ref.add_done_callback(cb)
    assert repr(t) == repr(ref)
    assert ' cb=[' in repr(t)
    loop.run_until_complete(asyncio.gather(t, ref))
    iterate(loop)


def test_get_stack_and_print_stack(loop):
    fut = loop.create_future()
    t = loop.create_task(_waiter(fut))
    iterate(loop)
    frames = t.get_stack()
    assert len(frames) == 1
    assert frames[0].f_code.co_name == '_waiter'
    buf = io.StringIO()
    t.print_stack(file=buf)
    assert buf.getvalue().startswith('Stack for <Task pending ')
    assert '_waiter' in buf.getvalue()
    fut.set_result(None)
    loop.run_until_complete(t)
    assert t.get_stack() == []


# ---------------------------------------------------------------------------
# task factory
# ---------------------------------------------------------------------------

def test_task_factory(loop):
    calls = []

    def factory(lp, coro, **kwargs):
        calls.append((lp, kwargs))
        return asyncio.Task(coro, loop=lp, **kwargs)

    assert loop.get_task_factory() is None
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory
    t = loop.create_task(_ret(1), name='from-factory')
    assert type(t) is asyncio.Task
    assert t.get_name() == 'from-factory'
    assert calls == [(loop, {})]  # name is applied by create_task itself
    ctx = contextvars.copy_context()
    t2 = loop.create_task(_ret(2), context=ctx)
    assert calls[1] == (loop, {'context': ctx})

    async def main():
        t3 = asyncio.create_task(_ret(3))
        return await t3

    assert loop.run_until_complete(main()) == 3
    assert len(calls) == 4  # + the main() task and t3
    assert loop.run_until_complete(asyncio.gather(t, t2)) == [1, 2]
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None
    t4 = loop.create_task(_ret())
    assert len(calls) == 4
    loop.run_until_complete(t4)


def test_task_factory_returning_custom_subclass(loop):
    class MyTask(asyncio.Task):
        pass

    loop.set_task_factory(lambda lp, coro, **kw: MyTask(coro, loop=lp, **kw))

    async def main():
        return type(asyncio.current_task())

    assert loop.run_until_complete(main()) is MyTask


# ---------------------------------------------------------------------------
# gc and logging
# ---------------------------------------------------------------------------

def test_task_exception_never_retrieved(loop, loop_errors):
    t = loop.create_task(_boom('lost'))
    iterate(loop)
    assert t.done()
    exc = t._exception
    del t
    gc.collect()
    assert len(loop_errors) == 1
    ctx = loop_errors[0]
    assert ctx['message'] == 'Task exception was never retrieved'
    assert ctx['exception'] is exc
    assert set(ctx) == {'message', 'exception', 'future'}
    assert re.fullmatch(
        r"<Task finished name='Task-\d+' coro=<_boom\(\) done, defined at "
        r".*:\d+> exception=ValueError\('lost'\)>", repr(ctx['future']))


def test_task_destroyed_while_pending(loop, loop_errors):
    fut = loop.create_future()
    t = loop.create_task(_waiter(fut))
    iterate(loop)
    wr = weakref.ref(t)
    del t, fut  # the task <-> future cycle is now garbage
    gc.collect()
    assert len(loop_errors) == 1
    ctx = loop_errors[0]
    assert ctx['message'] == 'Task was destroyed but it is pending!'
    assert set(ctx) == {'message', 'task'}
    assert re.match(r"<Task pending name='Task-\d+' coro=<_waiter\(\) ",
                    repr(ctx['task']))
    del ctx
    loop_errors.clear()
    gc.collect()
    assert wr() is None


def test_task_destroyed_pending_silenced_by_flag(loop):
    fut = loop.create_future()
    t = loop.create_task(_waiter(fut))
    iterate(loop)
    t._log_destroy_pending = False
    assert t._log_destroy_pending is False
    del t, fut
    gc.collect()
    # the fixture fails the test if anything was reported


def test_retrieved_or_cancelled_tasks_not_logged(loop):
    t1 = loop.create_task(_boom())
    t2 = loop.create_task(_ret())
    t3 = loop.create_task(asyncio.sleep(10))
    t4 = loop.create_task(_boom())
    iterate(loop)
    t1.exception()
    t3.cancel()
    t4.cancel()  # done already: cancel() still clears the log flag
    iterate(loop)
    del t1, t2, t3, t4
    gc.collect()


def test_task_weakref_and_hash(loop):
    t1 = loop.create_task(_ret())
    t2 = loop.create_task(_ret())
    wr = weakref.ref(t1)
    assert wr() is t1
    assert isinstance(hash(t1), int)
    assert len({t1, t2, t1}) == 2
    d = {t1: 'one', t2: 'two'}
    assert d[t1] == 'one'
    assert t1 == t1 and t1 != t2
    ws = weakref.WeakSet([t1, t2])
    assert len(ws) == 2
    loop.run_until_complete(asyncio.gather(t1, t2))
    del t1, d, ws
    gc.collect()
    assert wr() is None


# ---------------------------------------------------------------------------
# interop with stdlib Future/Task objects on the same loop
# ---------------------------------------------------------------------------

def test_loop_task_awaits_stdlib_future(loop):
    fut = asyncio.Future(loop=loop)
    t = loop.create_task(_waiter(fut))
    iterate(loop)
    assert t._fut_waiter is fut
    fut.set_result('stdlib')
    assert loop.run_until_complete(t) == 'stdlib'


def test_stdlib_task_awaits_loop_future(loop):
    fut = loop.create_future()
    t = asyncio.Task(_waiter(fut), loop=loop)
    iterate(loop)
    fut.set_result('native')
    assert loop.run_until_complete(t) == 'native'


def test_stdlib_task_awaits_loop_task(loop):
    inner = loop.create_task(asyncio.sleep(0.001, 'inner'))
    outer = asyncio.Task(_waiter(inner), loop=loop)
    assert loop.run_until_complete(outer) == 'inner'


def test_loop_task_awaits_stdlib_task(loop):
    inner = asyncio.Task(asyncio.sleep(0.001, 'inner'), loop=loop)
    outer = loop.create_task(_waiter(inner))
    assert loop.run_until_complete(outer) == 'inner'


def test_stdlib_task_cancel_cancels_loop_future(loop):
    fut = loop.create_future()
    t = asyncio.Task(_waiter(fut), loop=loop)
    iterate(loop)
    t.cancel('x')
    assert fut.cancelled()
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(t)


def test_current_task_inside_stdlib_task(loop):
    async def coro():
        await asyncio.sleep(0)
        return asyncio.current_task()

    t = asyncio.Task(coro(), loop=loop)
    assert loop.run_until_complete(t) is t


def test_mixed_gather(loop):
    async def main():
        return await asyncio.gather(
            loop.create_task(_ret(1)),
            asyncio.Task(_ret(2), loop=loop),
            asyncio.ensure_future(_ret(3)),
            _ret(4))

    assert loop.run_until_complete(main()) == [1, 2, 3, 4]


def test_exception_crosses_task_types(loop):
    inner = asyncio.Task(_boom('from stdlib task'), loop=loop)

    async def outer():
        try:
            await inner
        except ValueError as exc:
            return exc.args

    assert loop.run_until_complete(loop.create_task(outer())) == \
        ('from stdlib task',)


# ---------------------------------------------------------------------------
# synchronisation primitives
# ---------------------------------------------------------------------------

def test_queue_task_done_and_join(loop):
    processed = []

    async def worker(q):
        while True:
            item = await q.get()
            await asyncio.sleep(0)
            processed.append(item)
            q.task_done()

    async def main():
        q = asyncio.Queue()
        workers = [asyncio.create_task(worker(q)) for _ in range(3)]
        for i in range(20):
            q.put_nowait(i)
        await q.join()
        assert q.empty()
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        with pytest.raises(ValueError):
            q.task_done()

    loop.run_until_complete(main())
    assert sorted(processed) == list(range(20))


def test_queue_fifo_and_maxsize(loop):
    async def main():
        q = asyncio.Queue(maxsize=2)
        await q.put(1)
        await q.put(2)
        assert q.full()
        put3 = asyncio.create_task(q.put(3))
        await asyncio.sleep(0)
        assert not put3.done()  # blocked on a full queue
        assert await q.get() == 1
        await put3
        assert [q.get_nowait(), q.get_nowait()] == [2, 3]
        with pytest.raises(asyncio.QueueEmpty):
            q.get_nowait()
        getter = asyncio.create_task(q.get())
        await asyncio.sleep(0)
        q.put_nowait('wake')
        return await getter

    assert loop.run_until_complete(main()) == 'wake'


def test_semaphore_limits_concurrency(loop):
    active = []
    peak = []

    async def worker(sem):
        async with sem:
            active.append(1)
            peak.append(len(active))
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            active.pop()

    async def main():
        sem = asyncio.Semaphore(2)
        await asyncio.gather(*(worker(sem) for _ in range(6)))
        assert not sem.locked()

    loop.run_until_complete(main())
    assert max(peak) == 2


def test_lock_mutual_exclusion_and_fifo(loop):
    order = []

    async def worker(lock, name):
        async with lock:
            order.append(('enter', name))
            await asyncio.sleep(0)
            order.append(('exit', name))

    async def main():
        lock = asyncio.Lock()
        await asyncio.gather(*(worker(lock, n) for n in 'abc'))
        assert not lock.locked()

    loop.run_until_complete(main())
    assert order == [('enter', 'a'), ('exit', 'a'), ('enter', 'b'),
                     ('exit', 'b'), ('enter', 'c'), ('exit', 'c')]


def test_lock_cancelled_waiter(loop):
    async def main():
        lock = asyncio.Lock()
        await lock.acquire()
        waiter = asyncio.create_task(lock.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.sleep(0)
        assert waiter.cancelled()
        lock.release()
        assert not lock.locked()
        await asyncio.wait_for(lock.acquire(), 5)
        lock.release()

    loop.run_until_complete(main())


def test_event_wakes_all_waiters(loop):
    woken = []

    async def waiter(ev, name):
        await ev.wait()
        woken.append(name)

    async def main():
        ev = asyncio.Event()
        tasks = [asyncio.create_task(waiter(ev, n)) for n in range(3)]
        await asyncio.sleep(0)
        assert woken == []
        ev.set()
        await asyncio.gather(*tasks)
        assert ev.is_set()
        ev.clear()
        assert not ev.is_set()

    loop.run_until_complete(main())
    assert woken == [0, 1, 2]


def test_condition_notify(loop):
    woken = []

    async def waiter(cond, name):
        async with cond:
            await cond.wait()
            woken.append(name)

    async def main():
        cond = asyncio.Condition()
        tasks = [asyncio.create_task(waiter(cond, n)) for n in range(3)]
        await asyncio.sleep(0)
        async with cond:
            cond.notify(1)
        for _ in range(5):
            await asyncio.sleep(0)
        assert woken == [0]
        async with cond:
            cond.notify_all()
        await asyncio.gather(*tasks)

    loop.run_until_complete(main())
    assert woken == [0, 1, 2]


def test_condition_wait_for(loop):
    state = {'ready': False}

    async def main():
        cond = asyncio.Condition()

        async def setter():
            await asyncio.sleep(0)
            async with cond:
                state['ready'] = True
                cond.notify_all()

        t = asyncio.create_task(setter())
        async with cond:
            result = await cond.wait_for(lambda: state['ready'])
        await t
        return result

    assert loop.run_until_complete(main()) is True


# ---------------------------------------------------------------------------
# more cancellation races and protocol details
# ---------------------------------------------------------------------------

def _scenario_outcome(loop, make_task, scenario):
    """Run ``scenario`` against a task created by ``make_task``."""
    fut = loop.create_future()
    t = make_task(_waiter(fut))
    iterate(loop)
    scenario(t, fut)
    try:
        return ('result', loop.run_until_complete(t))
    except asyncio.CancelledError as exc:
        return ('cancelled', exc.args, t.cancelled())


def _both_outcomes(loop, scenario):
    native = _scenario_outcome(loop, loop.create_task, scenario)
    ref = _scenario_outcome(
        loop, lambda c: asyncio.Task(c, loop=loop), scenario)
    return native, ref


def test_double_cancel_keeps_first_message(loop):
    def scenario(t, fut):
        assert t.cancel('first') is True
        assert t.cancel('second') is True
        assert t.cancelling() == 2

    native, ref = _both_outcomes(loop, scenario)
    assert native == ref == ('cancelled', ('first',), True)


def test_cancel_after_awaited_future_completed(loop):
    # The future already has its result, but the task has not resumed yet:
    # cancel() wins and the result is discarded (stdlib semantics).
    def scenario(t, fut):
        fut.set_result('too late')
        assert t.cancel() is True

    native, ref = _both_outcomes(loop, scenario)
    assert native == ref == ('cancelled', (), True)


def test_cancel_then_future_completes(loop):
    def scenario(t, fut):
        assert t.cancel('m') is True
        assert fut.cancelled()
        with pytest.raises(asyncio.InvalidStateError):
            fut.set_result('ignored')

    native, ref = _both_outcomes(loop, scenario)
    assert native == ref == ('cancelled', ('m',), True)


def test_uncancel_then_swallow(loop):
    async def coro(fut):
        try:
            await fut
        except asyncio.CancelledError:
            asyncio.current_task().uncancel()
            return 'uncancelled'

    fut1 = loop.create_future()
    fut2 = loop.create_future()
    t = loop.create_task(coro(fut1))
    ref = asyncio.Task(coro(fut2), loop=loop)
    iterate(loop)
    t.cancel()
    ref.cancel()
    assert loop.run_until_complete(t) == loop.run_until_complete(ref) == \
        'uncancelled'
    assert t.cancelling() == ref.cancelling() == 0


def test_task_awaits_duck_typed_future(loop):
    class DuckFuture:
        _asyncio_future_blocking = False

        def __init__(self, lp):
            self._loop = lp
            self._callbacks = []
            self._done = False
            self._result = None

        def get_loop(self):
            return self._loop

        def add_done_callback(self, fn, *, context=None):
            self._callbacks.append((fn, context))

        def remove_done_callback(self, fn):
            before = len(self._callbacks)
            self._callbacks = [(f, c) for f, c in self._callbacks if f != fn]
            return before - len(self._callbacks)

        def done(self):
            return self._done

        def cancelled(self):
            return False

        def cancel(self, msg=None):
            return False

        def result(self):
            return self._result

        def exception(self):
            return None

        def set_result(self, value):
            self._done = True
            self._result = value
            for fn, ctx in self._callbacks:
                self._loop.call_soon(fn, self, context=ctx)

        def __await__(self):
            if not self._done:
                self._asyncio_future_blocking = True
                yield self
            return self.result()

    duck = DuckFuture(loop)
    assert asyncio.isfuture(duck)

    async def main():
        loop.call_soon(duck.set_result, 'quack')
        return await duck

    t = loop.create_task(main())
    assert loop.run_until_complete(t) == 'quack'


def test_yield_from_task_in_generator_coroutine(loop):
    inner = loop.create_task(asyncio.sleep(0.001, 'inner'))

    @types.coroutine
    def gen_coro():
        return (yield from inner)

    async def main():
        return await gen_coro()

    assert loop.run_until_complete(main()) == 'inner'


def test_task_source_traceback_in_debug_mode(loop):
    loop.set_debug(True)
    import sys
    line = sys._getframe().f_lineno + 1
    t = loop.create_task(_ret())
    tb = t._source_traceback
    assert (tb[-1].filename, tb[-1].lineno) == (__file__, line)
    assert re.search(r' created at .*test_tasks\.py:\d+>$', repr(t))
    loop.run_until_complete(t)


def test_task_without_debug_has_no_source_traceback(loop):
    t = loop.create_task(_ret())
    assert t._source_traceback is None
    loop.run_until_complete(t)


def test_stop_iteration_raised_in_coroutine(loop):
    async def coro():
        raise StopIteration('inside')

    with pytest.raises(RuntimeError, match='coroutine raised StopIteration'):
        loop.run_until_complete(coro())


def test_keyboard_interrupt_in_task_propagates(loop):
    async def coro():
        await asyncio.sleep(0)
        raise KeyboardInterrupt

    t = loop.create_task(coro())
    with pytest.raises(KeyboardInterrupt):
        loop.run_until_complete(t)
    assert t.done()
    assert isinstance(t.exception(), KeyboardInterrupt)
    assert not loop.is_running()
