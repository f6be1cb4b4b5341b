"""Bad input and misuse raise asyncio 3.11's exceptions with its messages."""

import asyncio
import math
import re
import threading
import types

import pytest


async def _noop():
    pass


def _closing(coro):
    """Close a coroutine object so it does not warn 'never awaited'."""
    coro.close()


# ---------------------------------------------------------------------------
# callables
# ---------------------------------------------------------------------------

SCHEDULERS = {
    'call_soon': lambda loop, cb: loop.call_soon(cb),
    'call_soon_threadsafe': lambda loop, cb: loop.call_soon_threadsafe(cb),
    'call_later': lambda loop, cb: loop.call_later(10, cb),
    'call_at': lambda loop, cb: loop.call_at(loop.time() + 10, cb),
}
# stdlib's call_later delegates to call_at and reports that name.
REPORTED_NAME = {
    'call_soon': 'call_soon',
    'call_soon_threadsafe': 'call_soon_threadsafe',
    'call_later': 'call_at',
    'call_at': 'call_at',
}


@pytest.mark.parametrize('debug', [True, False], ids=['debug', 'nodebug'])
@pytest.mark.parametrize('method', list(SCHEDULERS))
def test_non_callable_rejected(loop, loop_kind, method, debug):
    if loop_kind == 'asyncio' and not debug:
        pytest.skip('stdlib only checks callables in debug mode')
    loop.set_debug(debug)
    name = REPORTED_NAME[method]
    with pytest.raises(TypeError, match=re.escape(
            f'a callable object was expected by {name}(), got 1')):
        SCHEDULERS[method](loop, 1)
    with pytest.raises(TypeError, match=re.escape(
            f"a callable object was expected by {name}(), got 'str'")):
        SCHEDULERS[method](loop, 'str')


@pytest.mark.parametrize('method', list(SCHEDULERS))
def test_coroutine_rejected_as_callback_in_debug_mode(loop, method):
    loop.set_debug(True)
    name = REPORTED_NAME[method]
    coro = _noop()
    try:
        with pytest.raises(TypeError, match=re.escape(
                f'coroutines cannot be used with {name}()')):
            SCHEDULERS[method](loop, coro)
    finally:
        coro.close()
    with pytest.raises(TypeError, match=re.escape(
            f'coroutines cannot be used with {name}()')):
        SCHEDULERS[method](loop, _noop)


@pytest.mark.parametrize('method', list(SCHEDULERS))
def test_coroutine_object_rejected_without_debug(loop, loop_kind, method):
    # stdlib does not check at all outside debug mode; ferroloop always
    # rejects non-callables (a coroutine object is not callable).
    if loop_kind == 'asyncio':
        pytest.skip('stdlib only checks callables in debug mode')
    coro = _noop()
    try:
        with pytest.raises(TypeError):
            SCHEDULERS[method](loop, coro)
    finally:
        coro.close()


def test_nothing_scheduled_after_rejected_callback(loop):
    loop.set_debug(True)
    with pytest.raises(TypeError):
        loop.call_soon(None)
    loop.call_soon(loop.stop)
    loop.run_forever()  # would raise TypeError if None had been queued


# ---------------------------------------------------------------------------
# closed loop
# ---------------------------------------------------------------------------

CLOSED_OPS = {
    'call_soon': lambda loop: loop.call_soon(print),
    'call_soon_threadsafe': lambda loop: loop.call_soon_threadsafe(print),
    'call_later': lambda loop: loop.call_later(1, print),
    'call_at': lambda loop: loop.call_at(1, print),
    'run_forever': lambda loop: loop.run_forever(),
    'run_in_executor': lambda loop: loop.run_in_executor(None, print),
}


@pytest.mark.parametrize('op', list(CLOSED_OPS))
def test_closed_loop_rejects(loop, op):
    loop.close()
    with pytest.raises(RuntimeError, match='^Event loop is closed$'):
        CLOSED_OPS[op](loop)


def test_closed_loop_rejects_create_task(loop):
    loop.close()
    coro = _noop()
    try:
        with pytest.raises(RuntimeError, match='^Event loop is closed$'):
            loop.create_task(coro)
    finally:
        coro.close()


def test_closed_loop_rejects_run_until_complete(loop):
    loop.close()
    coro = _noop()
    try:
        with pytest.raises(RuntimeError, match='^Event loop is closed$'):
            loop.run_until_complete(coro)
    finally:
        coro.close()


def test_closed_loop_checks_none_delay_first(loop):
    loop.close()
    with pytest.raises(TypeError, match='delay must not be None'):
        loop.call_later(None, print)


# ---------------------------------------------------------------------------
# re-entrancy
# ---------------------------------------------------------------------------

def test_run_until_complete_while_running(loop):
    async def main():
        coro = _noop()
        try:
            with pytest.raises(RuntimeError,
                               match='^This event loop is already running$'):
                loop.run_until_complete(coro)
        finally:
            coro.close()
        return 'ok'

    assert loop.run_until_complete(main()) == 'ok'


def test_run_forever_while_running(loop):
    errors = []

    def cb():
        try:
            loop.run_forever()
        except RuntimeError as exc:
            errors.append(str(exc))

    loop.call_soon(cb)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert errors == ['This event loop is already running']


def test_running_another_loop_inside_a_running_loop(loop, loop_factory):
    other = loop_factory()
    try:
        async def main():
            coro = _noop()
            try:
                with pytest.raises(
                        RuntimeError,
                        match='^Cannot run the event loop while another '
                              'loop is running$'):
                    other.run_until_complete(coro)
            finally:
                coro.close()
            with pytest.raises(
                    RuntimeError,
                    match='^Cannot run the event loop while another '
                          'loop is running$'):
                other.run_forever()

        loop.run_until_complete(main())
        assert not other.is_running()
    finally:
        other.close()


def test_close_running_loop(loop):
    errors = []

    def cb():
        try:
            loop.close()
        except RuntimeError as exc:
            errors.append(str(exc))

    loop.call_soon(cb)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert errors == ['Cannot close a running event loop']
    assert not loop.is_closed()


def test_call_soon_from_other_thread_in_debug_mode(loop):
    loop.set_debug(True)
    errors = []

    def in_thread():
        try:
            loop.call_soon(print)
        except RuntimeError as exc:
            errors.append(str(exc))

    async def main():
        t = threading.Thread(target=in_thread)
        t.start()
        while t.is_alive():
            await asyncio.sleep(0.001)
        t.join()

    loop.run_until_complete(main())
    assert errors == ['Non-thread-safe operation invoked on an event loop '
                      'other than the current one']


# ---------------------------------------------------------------------------
# timers
# ---------------------------------------------------------------------------

def test_call_later_none_delay(loop):
    with pytest.raises(TypeError, match='^delay must not be None$'):
        loop.call_later(None, print)


def test_call_at_none_when(loop):
    with pytest.raises(TypeError, match='^when cannot be None$'):
        loop.call_at(None, print)


def test_call_later_non_number_delay(loop):
    with pytest.raises(TypeError):
        loop.call_later('1', print)


def test_nan_delay_fires_on_next_iteration(loop):
    out = []
    loop.call_later(math.nan, out.append, 'nan')
    loop.call_later(1000, out.append, 'far')
    loop.run_until_complete(asyncio.sleep(0.01))
    assert out == ['nan']


# ---------------------------------------------------------------------------
# futures and tasks
# ---------------------------------------------------------------------------

def test_set_result_on_done_future(loop):
    f = loop.create_future()
    f.set_result(1)
    with pytest.raises(asyncio.InvalidStateError, match='^invalid state$'):
        f.set_result(2)
    with pytest.raises(asyncio.InvalidStateError, match='^invalid state$'):
        f.set_exception(ValueError())
    assert f.result() == 1


def test_set_result_on_cancelled_future(loop):
    f = loop.create_future()
    f.cancel()
    with pytest.raises(asyncio.InvalidStateError):
        f.set_result(2)
    with pytest.raises(asyncio.InvalidStateError):
        f.set_exception(ValueError())
    assert f.cancelled()


def test_result_of_pending_future(loop):
    f = loop.create_future()
    with pytest.raises(asyncio.InvalidStateError, match='^Result is not set.$'):
        f.result()
    with pytest.raises(asyncio.InvalidStateError,
                       match='^Exception is not set.$'):
        f.exception()
    f.cancel()


def test_invalid_state_error_is_stdlib_class(loop):
    assert issubclass(asyncio.InvalidStateError, Exception)
    f = loop.create_future()
    f.set_result(None)
    try:
        f.set_result(None)
    except Exception as exc:
        assert type(exc) is asyncio.InvalidStateError
    else:
        pytest.fail('no exception')


def test_set_exception_stop_iteration(loop):
    msg = ('^StopIteration interacts badly with generators and cannot be '
           'raised into a Future$')
    f = loop.create_future()
    with pytest.raises(TypeError, match=msg):
        f.set_exception(StopIteration())
    with pytest.raises(TypeError, match=msg):
        f.set_exception(StopIteration)
    assert not f.done()
    f.cancel()


def test_set_exception_non_exception(loop):
    f = loop.create_future()
    with pytest.raises(TypeError, match='^invalid exception object$'):
        f.set_exception(1)
    assert not f.done()
    f.cancel()


def test_set_exception_with_class_instantiates(loop):
    f = loop.create_future()
    f.set_exception(ValueError)
    exc = f.exception()
    assert type(exc) is ValueError
    assert exc.args == ()


def test_await_future_of_another_loop(loop, loop_factory):
    other = loop_factory()
    try:
        foreign = other.create_future()

        async def main():
            await foreign

        with pytest.raises(RuntimeError,
                           match=r'^Task <Task .*> got Future <Future pending> '
                                 r'attached to a different loop$'):
            loop.run_until_complete(main())
        assert not foreign.done()
    finally:
        other.close()


def test_await_stdlib_future_of_another_loop(loop, loop_factory):
    other = loop_factory()
    try:
        foreign = asyncio.Future(loop=other)

        async def main():
            await foreign

        with pytest.raises(RuntimeError, match='attached to a different loop'):
            loop.run_until_complete(main())
    finally:
        other.close()


def test_create_task_with_coroutine_function(loop):
    with pytest.raises(TypeError,
                       match=r'^a coroutine was expected, got <function _noop'):
        loop.create_task(_noop)


@pytest.mark.parametrize('bad', [1, None, 'str', lambda: None],
                         ids=['int', 'None', 'str', 'lambda'])
def test_create_task_with_non_coroutine(loop, bad):
    with pytest.raises(TypeError, match=re.escape(
            f'a coroutine was expected, got {bad!r}')):
        loop.create_task(bad)


def test_create_task_with_future(loop):
    f = loop.create_future()
    with pytest.raises(TypeError, match='a coroutine was expected'):
        loop.create_task(f)
    f.cancel()


def test_ensure_future_rejects_non_awaitable(loop):
    with pytest.raises(TypeError, match='An asyncio.Future, a coroutine or an '
                                        'awaitable is required'):
        asyncio.ensure_future(1, loop=loop)


def test_run_until_complete_rejects_non_awaitable(loop):
    with pytest.raises(TypeError, match='An asyncio.Future, a coroutine or an '
                                        'awaitable is required'):
        loop.run_until_complete(1)


def test_task_set_result_and_set_exception(loop):
    t = loop.create_task(_noop())
    with pytest.raises(RuntimeError,
                       match='^Task does not support set_result operation$'):
        t.set_result(1)
    with pytest.raises(RuntimeError,
                       match='^Task does not support set_exception operation$'):
        t.set_exception(ValueError())
    loop.run_until_complete(t)
    assert t.result() is None


def test_task_awaiting_itself(loop):
    async def main():
        await asyncio.current_task()

    t = loop.create_task(main())
    with pytest.raises(RuntimeError,
                       match=r'^Task cannot await on itself: <Task '):
        loop.run_until_complete(t)


def test_yield_instead_of_yield_from_future(loop):
    fut = loop.create_future()

    @types.coroutine
    def bad():
        yield fut  # _asyncio_future_blocking is False: misuse

    t = loop.create_task(bad())
    with pytest.raises(RuntimeError,
                       match='^yield was used instead of yield from in task '):
        loop.run_until_complete(t)
    fut.cancel()


def test_bad_yield(loop):
    @types.coroutine
    def bad():
        yield 42

    with pytest.raises(RuntimeError, match='^Task got bad yield: 42$'):
        loop.run_until_complete(bad())


def test_yield_generator_is_an_error(loop):
    def inner():
        yield

    @types.coroutine
    def bad():
        yield inner()

    with pytest.raises(RuntimeError,
                       match='^yield was used instead of yield from for '
                             'generator in task '):
        loop.run_until_complete(bad())


def test_await_on_pending_future_without_task(loop):
    f = loop.create_future()
    it = f.__await__()
    assert next(it) is f
    with pytest.raises(RuntimeError, match="^await wasn't used with future$"):
        next(it)
    f.cancel()


def test_set_task_factory_rejects_non_callable(loop):
    with pytest.raises(TypeError,
                       match='^task factory must be a callable or None$'):
        loop.set_task_factory(1)
    assert loop.get_task_factory() is None


def test_wait_rejects_empty_and_bare_future(loop):
    async def main():
        with pytest.raises(ValueError, match='Set of Tasks/Futures is empty.'):
            await asyncio.wait([])
        f = loop.create_future()
        with pytest.raises(TypeError, match='expect a list of futures'):
            await asyncio.wait(f)
        f.cancel()

    loop.run_until_complete(main())


def test_exception_from_task_keeps_traceback(loop):
    async def inner():
        raise ValueError('deep')

    async def outer():
        await inner()

    with pytest.raises(ValueError) as ei:
        loop.run_until_complete(outer())
    names = [entry.name for entry in ei.traceback]
    assert 'inner' in names
    assert 'outer' in names


def test_run_until_complete_future_of_other_loop(loop, loop_factory):
    other = loop_factory()
    try:
        foreign = other.create_future()
        with pytest.raises(ValueError, match='The future belongs to a '
                                             'different loop than the one '
                                             'specified as the loop argument'):
            loop.run_until_complete(foreign)
        foreign.cancel()
    finally:
        other.close()
