"""Third-party frameworks (tornado, anyio) on ferroloop vs the stdlib loop.

Runs are made the way users make them:

* asyncio            -- ``asyncio.run()`` with the default policy;
* ferroloop          -- ``ferroloop.install()`` then ``asyncio.run()``
                        (anyio: ``anyio.run(..., backend_options=
                        {'loop_factory': ferroloop.new_event_loop})``);
* ferroloop-compat   -- an ``asyncio.Runner`` / anyio ``loop_factory`` using
                        ``ferroloop.new_event_loop(native_tasks=False)``.

Every run also checks that the loop's exception handler was never called.
"""

import asyncio
import datetime
import inspect
import threading
import time

import pytest
from conftest import ferroloop, make_loop_factory

tornado = pytest.importorskip('tornado', reason='tornado is not installed')
anyio = pytest.importorskip('anyio', reason='anyio is not installed')

import tornado.locks  # noqa: E402
import tornado.queues  # noqa: E402
import tornado.util  # noqa: E402
from tornado import gen  # noqa: E402
from tornado.ioloop import IOLoop  # noqa: E402


def _check_loop_kind(lp, kind):
    if kind == 'asyncio':
        assert ferroloop is None or not isinstance(lp, ferroloop.Loop)
        assert isinstance(lp, asyncio.BaseEventLoop)
    else:
        assert isinstance(lp, ferroloop.Loop)


def arun(kind, main, *args):
    """Run ``main(*args)`` on a fresh loop of ``kind``; return its result."""
    errors = []

    async def wrapper():
        lp = asyncio.get_running_loop()
        _check_loop_kind(lp, kind)
        lp.set_exception_handler(lambda _, ctx: errors.append(ctx))
        return await main(*args)

    if kind == 'asyncio':
        result = asyncio.run(wrapper())
    elif kind == 'ferroloop':
        ferroloop.install()  # the autouse fixture restores the policy
        result = asyncio.run(wrapper())
    else:
        with asyncio.Runner(loop_factory=make_loop_factory(kind)) as runner:
            result = runner.run(wrapper())
    assert errors == [], errors
    return result


def _anyio_supports_loop_factory():
    from anyio._backends import _asyncio as backend
    return 'loop_factory' in inspect.getsource(backend.AsyncIOBackend.run)


def anyio_run(kind, main, *args):
    """Run an anyio program on a loop of ``kind``."""
    errors = []

    async def wrapper():
        lp = asyncio.get_running_loop()
        _check_loop_kind(lp, kind)
        lp.set_exception_handler(lambda _, ctx: errors.append(ctx))
        return await main(*args)

    if kind == 'asyncio':
        result = anyio.run(wrapper, backend='asyncio')
    elif _anyio_supports_loop_factory():
        result = anyio.run(
            wrapper, backend='asyncio',
            backend_options={'loop_factory': make_loop_factory(kind)})
    elif kind == 'ferroloop':
        ferroloop.install()
        result = anyio.run(wrapper, backend='asyncio')
    else:
        pytest.skip('installed anyio has no loop_factory backend option')
    assert errors == [], errors
    return result


@pytest.fixture
def kind(loop_kind):
    return loop_kind


# ---------------------------------------------------------------------------
# tornado
# ---------------------------------------------------------------------------

def test_tornado_ioloop_wraps_running_loop(kind):
    async def main():
        io = IOLoop.current()
        return io.asyncio_loop is asyncio.get_running_loop()

    assert arun(kind, main) is True


def test_tornado_gen_multi(kind):
    async def value(x, delay):
        await gen.sleep(delay)
        return x

    async def main():
        as_list = await gen.multi([value(1, 0.01), value(2, 0), value(3, 0)])
        as_dict = await gen.multi({'a': value('A', 0), 'b': value('B', 0.01)})
        fut = asyncio.get_running_loop().create_future()
        fut.set_result('fut')
        mixed = await gen.multi([fut, value('coro', 0)])
        return as_list, as_dict, mixed

    assert arun(kind, main) == ([1, 2, 3], {'a': 'A', 'b': 'B'},
                                ['fut', 'coro'])


def test_tornado_gen_multi_exception(kind):
    async def bad():
        await gen.sleep(0)
        raise ValueError('multi failed')

    async def good():
        return 1

    async def main():
        with pytest.raises(ValueError, match='multi failed'):
            await gen.multi([good(), bad()])
        return 'ok'

    assert arun(kind, main) == 'ok'


def test_tornado_with_timeout(kind):
    async def main():
        lp = asyncio.get_running_loop()
        never = lp.create_future()
        t0 = lp.time()
        with pytest.raises(tornado.util.TimeoutError):
            await gen.with_timeout(datetime.timedelta(seconds=0.02), never)
        assert lp.time() - t0 >= 0.02 - 1e-3
        assert not never.done()  # with_timeout does not cancel
        never.cancel()

        soon = lp.create_future()
        lp.call_later(0.001, soon.set_result, 'in time')
        got = await gen.with_timeout(datetime.timedelta(seconds=30), soon)

        async def coro():
            await gen.sleep(0)
            return 'coro result'

        got2 = await gen.with_timeout(IOLoop.current().time() + 30, coro())
        return got, got2

    assert arun(kind, main) == ('in time', 'coro result')


def test_tornado_add_future(kind):
    async def main():
        lp = asyncio.get_running_loop()
        io = IOLoop.current()
        fut = lp.create_future()
        done = lp.create_future()

        def callback(f):
            done.set_result((f is fut, f.result(), asyncio.get_running_loop()
                             is lp))

        io.add_future(fut, callback)
        lp.call_soon(fut.set_result, 'payload')
        return await done

    assert arun(kind, main) == (True, 'payload', True)


def test_tornado_add_future_with_task(kind):
    async def main():
        lp = asyncio.get_running_loop()
        io = IOLoop.current()
        task = asyncio.ensure_future(gen.sleep(0.001))
        done = lp.create_future()
        io.add_future(task, lambda f: done.set_result(f.done()))
        return await done

    assert arun(kind, main) is True


def test_tornado_gen_sleep(kind):
    async def main():
        lp = asyncio.get_running_loop()
        t0 = lp.time()
        await gen.sleep(0.02)
        elapsed = lp.time() - t0
        await gen.sleep(0)
        return elapsed

    assert arun(kind, main) >= 0.02 - 1e-3


def test_tornado_decorated_coroutine(kind):
    @gen.coroutine
    def value(v):
        yield gen.sleep(0)
        return v

    @gen.coroutine
    def legacy(x):
        yield gen.sleep(0.001)
        a, b = yield [value(1), value(2)]
        raise gen.Return(x + a + b)

    async def main():
        return await legacy(10)

    assert arun(kind, main) == 13


def test_tornado_callbacks_and_timeouts(kind):
    async def main():
        io = IOLoop.current()
        lp = asyncio.get_running_loop()
        done = lp.create_future()
        log = []

        io.add_callback(log.append, 'callback')
        handle = io.call_later(0.001, log.append, 'later')
        removed = io.add_timeout(io.time() + 0.001, log.append, 'removed')
        io.remove_timeout(removed)
        io.add_timeout(datetime.timedelta(seconds=0.005),
                       lambda: done.set_result(None))
        await done
        return log, handle is not None

    log, has_handle = arun(kind, main)
    assert log == ['callback', 'later']
    assert has_handle


def test_tornado_add_callback_from_thread(kind):
    async def main():
        io = IOLoop.current()
        lp = asyncio.get_running_loop()
        done = lp.create_future()

        def worker():
            time.sleep(0.01)
            io.add_callback(lambda: done.set_result(threading.get_ident()))

        th = threading.Thread(target=worker)
        th.start()
        try:
            tid = await asyncio.wait_for(done, 20)
        finally:
            th.join()
        return tid == threading.get_ident()  # ran on the loop's thread

    assert arun(kind, main) is True


def test_tornado_run_in_executor(kind):
    async def main():
        io = IOLoop.current()
        return await io.run_in_executor(None, lambda: threading.get_ident())

    assert arun(kind, main) != threading.get_ident()


def test_tornado_queue_and_event(kind):
    async def main():
        q = tornado.queues.Queue(maxsize=2)
        ev = tornado.locks.Event()
        got = []

        async def consumer():
            async for item in q:
                try:
                    if item is None:
                        ev.set()
                        return
                    got.append(item)
                finally:
                    q.task_done()

        task = asyncio.ensure_future(consumer())
        for i in range(5):
            await q.put(i)
        await q.put(None)
        await ev.wait()
        await q.join()
        await task
        return got

    assert arun(kind, main) == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------
# anyio
# ---------------------------------------------------------------------------

def test_anyio_task_group(kind):
    async def main():
        results = []

        async def child(i):
            await anyio.sleep(0.001 * i)
            results.append(i)

        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(child, i)
        return sorted(results)

    assert anyio_run(kind, main) == [0, 1, 2, 3, 4]


def test_anyio_task_group_start(kind):
    async def main():
        async def server(*, task_status=anyio.TASK_STATUS_IGNORED):
            await anyio.sleep(0)
            task_status.started('ready')
            await anyio.sleep(3600)

        async with anyio.create_task_group() as tg:
            value = await tg.start(server)
            tg.cancel_scope.cancel()
        return value

    assert anyio_run(kind, main) == 'ready'


def test_anyio_task_group_failure(kind):
    async def main():
        log = []

        async def sleeper():
            try:
                await anyio.sleep(3600)
            except anyio.get_cancelled_exc_class():
                log.append('sibling cancelled')
                raise

        async def failing():
            await anyio.sleep(0)
            raise KeyError('anyio child')

        with pytest.raises(ExceptionGroup) as ei:
            async with anyio.create_task_group() as tg:
                tg.start_soon(sleeper)
                tg.start_soon(failing)
        assert [type(e) for e in ei.value.exceptions] == [KeyError]
        return log, asyncio.current_task().cancelling()

    assert anyio_run(kind, main) == (['sibling cancelled'], 0)


def test_anyio_move_on_after(kind):
    async def main():
        lp = asyncio.get_running_loop()
        t0 = lp.time()
        reached = []
        with anyio.move_on_after(0.02) as scope:
            await anyio.sleep(3600)
            reached.append('not reached')
        elapsed = lp.time() - t0
        # The task is usable afterwards and not left cancelled.
        await anyio.sleep(0)
        return (scope.cancelled_caught, reached, elapsed >= 0.02 - 1e-3,
                asyncio.current_task().cancelling())

    assert anyio_run(kind, main) == (True, [], True, 0)


def test_anyio_move_on_after_not_triggered(kind):
    async def main():
        with anyio.move_on_after(30) as scope:
            await anyio.sleep(0)
        return scope.cancelled_caught

    assert anyio_run(kind, main) is False


def test_anyio_fail_after(kind):
    async def main():
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.01):
                await anyio.sleep(3600)
        return 'after'

    assert anyio_run(kind, main) == 'after'


def test_anyio_nested_and_shielded_scopes(kind):
    async def main():
        log = []
        with anyio.CancelScope() as outer:
            with anyio.CancelScope(shield=True):
                outer.cancel()
                await anyio.sleep(0.001)  # shielded: not cancelled
                log.append('shielded part finished')
            await anyio.sleep(3600)  # cancelled here
            log.append('not reached')
        log.append(('outer caught', outer.cancelled_caught))
        return log

    assert anyio_run(kind, main) == ['shielded part finished',
                                     ('outer caught', True)]


def test_anyio_cancel_scope_from_other_task(kind):
    async def main():
        scopes = []
        log = []

        async def victim():
            with anyio.CancelScope() as scope:
                scopes.append(scope)
                await anyio.sleep(3600)
            log.append(('victim', scope.cancelled_caught))

        async with anyio.create_task_group() as tg:
            tg.start_soon(victim)
            await anyio.wait_all_tasks_blocked()
            scopes[0].cancel()
        return log

    assert anyio_run(kind, main) == [('victim', True)]


def test_anyio_memory_stream_basic(kind):
    async def main():
        send, recv = anyio.create_memory_object_stream(5)
        got = []

        async def consumer():
            async with recv:
                async for item in recv:
                    got.append(item)

        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer)
            async with send:
                for i in range(10):
                    await send.send(i)
        return got

    assert anyio_run(kind, main) == list(range(10))


def test_anyio_memory_stream_cancelled_receiver_does_not_lose_item(kind):
    """A receiver that is cancelled while an item is sent must not swallow
    it: anyio checks the receiving task's pending cancellation through
    ``task._must_cancel`` / ``task._fut_waiter.cancelled()``."""
    async def main():
        send, recv = anyio.create_memory_object_stream(1)
        got = []
        scopes = {}

        async def receiver(tag):
            with anyio.CancelScope() as scope:
                scopes[tag] = scope
                got.append((tag, await recv.receive()))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(receiver, 'r1')
                await anyio.wait_all_tasks_blocked()
                # r1 is blocked in receive(); cancel it and, before it gets
                # a chance to run, send an item.
                scopes['r1'].cancel()
                send.send_nowait('item')
                tg.start_soon(receiver, 'r2')
        await send.aclose()
        await recv.aclose()
        return got, scopes['r1'].cancelled_caught

    got, r1_cancelled = anyio_run(kind, main)
    assert got == [('r2', 'item')]
    assert r1_cancelled


def test_anyio_memory_stream_cancel_while_sending(kind):
    """Cancel a sender blocked on a full stream: the item it was sending is
    not delivered, nothing else is lost or duplicated."""
    async def main():
        send, recv = anyio.create_memory_object_stream(0)
        got = []
        first_send_over = anyio.Event()
        async with anyio.create_task_group() as tg:
            async def sender():
                with anyio.move_on_after(0.01) as scope:
                    await send.send('dropped')
                got.append(('timed out', scope.cancelled_caught))
                first_send_over.set()
                await send.send('kept')

            tg.start_soon(sender)
            await first_send_over.wait()
            got.append(await recv.receive())
        await send.aclose()
        await recv.aclose()
        return got

    assert anyio_run(kind, main) == [('timed out', True), 'kept']


def test_anyio_to_thread(kind):
    async def main():
        return await anyio.to_thread.run_sync(threading.get_ident)

    assert anyio_run(kind, main) != threading.get_ident()


def test_anyio_sync_primitives(kind):
    async def main():
        lock = anyio.Lock()
        sem = anyio.Semaphore(2)
        ev = anyio.Event()
        order = []

        async def worker(i):
            async with sem:
                async with lock:
                    order.append(i)
                    await anyio.sleep(0)
            if len(order) == 4:
                ev.set()

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(worker, i)
            await ev.wait()
        return sorted(order)

    assert anyio_run(kind, main) == [0, 1, 2, 3]


def test_anyio_run_after_install(kind):
    if kind == 'ferroloop-compat':
        pytest.skip('install() always uses native tasks')
    if kind == 'ferroloop':
        ferroloop.install()

    async def main():
        lp = asyncio.get_running_loop()
        await anyio.sleep(0)
        return ferroloop is not None and isinstance(lp, ferroloop.Loop)

    assert anyio.run(main) is (kind == 'ferroloop')
