"""The Future contract, checked against the stdlib (C) asyncio.Future.

Many tests build a *twin*: ``asyncio.Future(loop=loop)`` -- stdlib's own
future bound to the same loop -- drive it through the same operations as
``loop.create_future()`` and compare observable state and reprs.
"""

import asyncio
import concurrent.futures
import contextvars
import gc
import re
import sys
import threading
import types
import weakref

import pytest
from conftest import ferroloop

THIS_FILE = __file__


def lineno():
    return sys._getframe(1).f_lineno


def _cb(fut):
    pass


def _cb2(fut):
    pass


def _state(f):
    return (f.done(), f.cancelled(), f._state)


def iterate(loop, n=1):
    """Run exactly ``n`` loop iterations."""
    for _ in range(n):
        loop.call_soon(loop.stop)
        loop.run_forever()


# ---------------------------------------------------------------------------
# types
# ---------------------------------------------------------------------------

def test_create_future_type(loop, loop_kind):
    f = loop.create_future()
    expected = {
        'asyncio': asyncio.Future,
        'ferroloop': ferroloop and ferroloop.Future,
        'ferroloop-compat': asyncio.Future,
    }[loop_kind]
    assert type(f) is expected
    f.cancel()


def test_future_is_instance_of_stdlib_future(loop):
    f = loop.create_future()
    assert isinstance(f, asyncio.Future)
    assert f.__class__ is asyncio.Future
    assert asyncio.isfuture(f)
    assert asyncio.futures.isfuture(f)
    assert not asyncio.iscoroutine(f)
    assert hasattr(type(f), '_asyncio_future_blocking')
    assert hasattr(f.__class__, '_asyncio_future_blocking')
    f.cancel()


def test_ensure_future_and_wrap_future_return_future_unchanged(loop):
    f = loop.create_future()
    assert asyncio.ensure_future(f) is f
    assert asyncio.ensure_future(f, loop=loop) is f
    assert asyncio.wrap_future(f) is f
    f.cancel()


# ---------------------------------------------------------------------------
# state
# ---------------------------------------------------------------------------

def test_initial_state_matches_stdlib(loop):
    f = loop.create_future()
    ref = asyncio.Future(loop=loop)
    for obj in (f, ref):
        assert obj.done() is False
        assert obj.cancelled() is False
        assert obj._state == 'PENDING'
        assert obj._result is None
        assert obj._exception is None
        assert obj._loop is loop
        assert obj.get_loop() is loop
        assert obj._asyncio_future_blocking is False
        assert obj._log_traceback is False
        assert obj._source_traceback is None
        assert obj._cancel_message is None
    assert f._callbacks == ref._callbacks
    f.cancel()
    ref.cancel()


def test_set_result(loop):
    f = loop.create_future()
    ref = asyncio.Future(loop=loop)
    value = object()
    for obj in (f, ref):
        assert obj.set_result(value) is None
        assert obj.done() and not obj.cancelled()
        assert obj._state == 'FINISHED'
        assert obj._result is value
        assert obj.result() is value
        assert obj.exception() is None
        assert obj._log_traceback is False
    assert f._callbacks == ref._callbacks


def test_set_result_none(loop):
    f = loop.create_future()
    f.set_result(None)
    assert f.done()
    assert f.result() is None


def test_set_exception(loop):
    f = loop.create_future()
    ref = asyncio.Future(loop=loop)
    exc = ValueError('bad')
    for obj in (f, ref):
        obj.set_exception(exc)
        assert obj.done() and not obj.cancelled()
        assert obj._state == 'FINISHED'
        assert obj._exception is exc
        assert obj._result is None
        assert obj._log_traceback is True
        assert obj.exception() is exc
        assert obj._log_traceback is False
        with pytest.raises(ValueError) as ei:
            obj.result()
        assert ei.value is exc


def test_result_reraises_same_exception_each_time(loop):
    f = loop.create_future()
    exc = KeyError('k')
    f.set_exception(exc)
    for _ in range(3):
        with pytest.raises(KeyError) as ei:
            f.result()
        assert ei.value is exc


def test_log_traceback_setter(loop):
    f = loop.create_future()
    f.set_exception(ValueError())
    assert f._log_traceback is True
    with pytest.raises(ValueError,
                       match='^_log_traceback can only be set to False$'):
        f._log_traceback = True
    f._log_traceback = False
    assert f._log_traceback is False
    # the fixture checks that nothing is logged at gc


def test_future_blocking_flag_is_settable(loop):
    f = loop.create_future()
    assert f._asyncio_future_blocking is False
    f._asyncio_future_blocking = True
    assert f._asyncio_future_blocking is True
    f._asyncio_future_blocking = False
    assert f._asyncio_future_blocking is False
    f._asyncio_future_blocking = 1
    assert f._asyncio_future_blocking is True
    with pytest.raises(AttributeError):
        del f._asyncio_future_blocking
    f.cancel()


def test_unknown_attribute(loop):
    f = loop.create_future()
    with pytest.raises(AttributeError):
        f.no_such_attribute
    f.cancel()


# ---------------------------------------------------------------------------
# cancellation
# ---------------------------------------------------------------------------

def test_cancel(loop):
    f = loop.create_future()
    ref = asyncio.Future(loop=loop)
    for obj in (f, ref):
        assert obj.cancel() is True
        assert obj.cancelled() and obj.done()
        assert obj._state == 'CANCELLED'
        assert obj.cancel() is False
        with pytest.raises(asyncio.CancelledError) as ei:
            obj.result()
        assert ei.value.args == ()
        with pytest.raises(asyncio.CancelledError):
            obj.exception()
        assert obj._cancel_message is None


@pytest.mark.parametrize('how', ['positional', 'keyword'])
def test_cancel_with_message(loop, how):
    f = loop.create_future()
    if how == 'positional':
        assert f.cancel('the message') is True
    else:
        assert f.cancel(msg='the message') is True
    assert f._cancel_message == 'the message'
    with pytest.raises(asyncio.CancelledError) as ei:
        f.result()
    assert ei.value.args == ('the message',)
    with pytest.raises(asyncio.CancelledError) as ei:
        f.exception()
    assert ei.value.args == ('the message',)
    assert f.cancel(msg='other') is False
    assert f._cancel_message == 'the message'


def test_cancel_message_non_string(loop):
    f = loop.create_future()
    f.cancel(42)
    with pytest.raises(asyncio.CancelledError) as ei:
        f.result()
    assert ei.value.args == (42,)


def test_cancel_done_future(loop):
    f = loop.create_future()
    f.set_result(1)
    assert f.cancel() is False
    assert not f.cancelled()
    assert f.result() == 1
    g = loop.create_future()
    g.set_exception(ValueError())
    assert g.cancel() is False
    assert isinstance(g.exception(), ValueError)


def test_cancel_silences_unretrieved_exception_flag(loop):
    f = loop.create_future()
    f.set_exception(ValueError())
    assert f._log_traceback is True
    f.cancel()  # returns False but clears the flag, like stdlib
    assert f._log_traceback is False


def test_make_cancelled_error(loop):
    f = loop.create_future()
    ref = asyncio.Future(loop=loop)
    for obj in (f, ref):
        err = obj._make_cancelled_error()
        assert type(err) is asyncio.CancelledError
        assert err.args == ()
        obj.cancel('m')
        e1 = obj._make_cancelled_error()
        e2 = obj._make_cancelled_error()
        assert type(e1) is asyncio.CancelledError
        assert e1.args == e2.args == ('m',)
        assert e1 is not e2


def test_cancel_message_attribute_is_settable(loop):
    f = loop.create_future()
    f._cancel_message = 'set directly'
    f.cancel()
    # Future.cancel() stores its msg argument (None) over it.
    assert f._cancel_message is None
    g = loop.create_future()
    g.cancel('x')
    g._cancel_message = 'y'
    with pytest.raises(asyncio.CancelledError) as ei:
        g.result()
    assert ei.value.args == ('y',)


def test_awaiting_cancelled_future_raises_message(loop):
    f = loop.create_future()

    async def waiter():
        try:
            await f
        except asyncio.CancelledError as exc:
            return ('caught', exc.args)

    t = loop.create_task(waiter())
    iterate(loop)
    f.cancel('stop it')
    assert loop.run_until_complete(t) == ('caught', ('stop it',))


# ---------------------------------------------------------------------------
# done callbacks
# ---------------------------------------------------------------------------

def test_done_callbacks_called_soon_in_order(loop):
    f = loop.create_future()
    calls = []
    for i in range(5):
        f.add_done_callback(lambda fut, i=i: calls.append((i, fut)))
    f.set_result('r')
    assert calls == []  # never synchronously
    iterate(loop)
    assert calls == [(i, f) for i in range(5)]


def test_done_callbacks_run_in_next_iteration(loop):
    f = loop.create_future()
    calls = []
    f.add_done_callback(lambda fut: calls.append('done-cb'))
    loop.call_soon(f.set_result, 1)
    loop.call_soon(loop.stop)  # same batch as set_result
    loop.run_forever()
    assert calls == []
    iterate(loop)
    assert calls == ['done-cb']


def test_add_done_callback_on_done_future_is_scheduled(loop):
    f = loop.create_future()
    f.set_result(1)
    calls = []
    f.add_done_callback(calls.append)
    assert calls == []
    iterate(loop)
    assert calls == [f]


def test_done_callbacks_on_cancel_and_exception(loop):
    calls = []
    f1 = loop.create_future()
    f2 = loop.create_future()
    f1.add_done_callback(lambda fut: calls.append(('f1', fut.cancelled())))
    f2.add_done_callback(
        lambda fut: calls.append(('f2', type(fut.exception()))))
    f1.cancel()
    f2.set_exception(KeyError())
    iterate(loop)
    assert calls == [('f1', True), ('f2', KeyError)]


def test_done_callback_runs_once(loop):
    f = loop.create_future()
    calls = []
    f.add_done_callback(calls.append)
    f.set_result(1)
    iterate(loop, 3)
    assert calls == [f]


def test_done_callback_context(loop):
    var = contextvars.ContextVar('var', default='default')
    ctx = contextvars.copy_context()
    ctx.run(var.set, 'explicit')
    f = loop.create_future()
    seen = []

    def cb(fut):
        seen.append(var.get())
        var.set('changed')

    f.add_done_callback(cb, context=ctx)
    token = var.set('implicit')
    try:
        f.add_done_callback(cb)  # copies the current context
    finally:
        var.reset(token)
    f.set_result(None)
    iterate(loop)
    assert seen == ['explicit', 'implicit']
    assert ctx[var] == 'changed'
    assert var.get() == 'default'


def test_done_callback_context_on_done_future(loop):
    var = contextvars.ContextVar('var', default='default')
    ctx = contextvars.copy_context()
    ctx.run(var.set, 'explicit')
    f = loop.create_future()
    f.set_result(None)
    seen = []
    f.add_done_callback(lambda fut: seen.append(var.get()), context=ctx)
    iterate(loop)
    assert seen == ['explicit']


def test_callbacks_attribute(loop):
    f = loop.create_future()
    ref = asyncio.Future(loop=loop)
    ctx = contextvars.copy_context()
    for obj in (f, ref):
        obj.add_done_callback(_cb)
        obj.add_done_callback(_cb2, context=ctx)
    cbs = f._callbacks
    assert isinstance(cbs, list)
    assert len(cbs) == 2
    assert all(isinstance(item, tuple) and len(item) == 2 for item in cbs)
    assert cbs[0][0] is _cb
    assert isinstance(cbs[0][1], contextvars.Context)
    assert cbs[1] == (_cb2, ctx)
    assert [fn for fn, _ in cbs] == [fn for fn, _ in ref._callbacks]
    f.set_result(1)
    ref.set_result(1)
    assert f._callbacks == ref._callbacks
    iterate(loop)


def test_remove_done_callback(loop):
    f = loop.create_future()
    calls = []

    def a(fut):
        calls.append('a')

    def b(fut):
        calls.append('b')

    f.add_done_callback(a)
    f.add_done_callback(b)
    f.add_done_callback(a)
    f.add_done_callback(b)
    f.add_done_callback(a)
    assert f.remove_done_callback(a) == 3
    assert f.remove_done_callback(a) == 0
    assert [fn for fn, _ in f._callbacks] == [b, b]
    assert f.remove_done_callback(b) == 2
    assert not f._callbacks
    f.add_done_callback(b)
    f.set_result(None)
    iterate(loop)
    assert calls == ['b']


def test_remove_done_callback_uses_equality(loop):
    class Obj:
        def cb(self, fut):
            pass

    o = Obj()
    f = loop.create_future()
    f.add_done_callback(o.cb)
    f.add_done_callback(o.cb)
    assert f.remove_done_callback(o.cb) == 2  # a new but equal bound method
    f.cancel()


def test_remove_done_callback_after_done(loop):
    f = loop.create_future()
    calls = []
    f.add_done_callback(calls.append)
    f.set_result(1)
    # Callbacks were already handed to the loop.
    assert f.remove_done_callback(calls.append) == 0
    iterate(loop)
    assert calls == [f]


def test_remove_callback_from_within_callback(loop):
    f = loop.create_future()
    calls = []

    def first(fut):
        calls.append('first')

    def second(fut):
        calls.append('second')

    f.add_done_callback(first)
    f.add_done_callback(second)
    f.remove_done_callback(first)
    f.set_result(None)
    iterate(loop)
    assert calls == ['second']


def test_exception_in_done_callback_goes_to_handler(loop, loop_errors):
    f = loop.create_future()

    def bad(fut):
        raise ZeroDivisionError

    f.add_done_callback(bad)
    f.set_result(1)
    iterate(loop)
    assert len(loop_errors) == 1
    assert loop_errors[0]['message'].startswith('Exception in callback ')
    assert 'bad(<Future finished result=1>)' in loop_errors[0]['message']
    assert isinstance(loop_errors[0]['exception'], ZeroDivisionError)


# ---------------------------------------------------------------------------
# await / iteration protocol
# ---------------------------------------------------------------------------

def test_await_future(loop):
    f = loop.create_future()

    async def main():
        loop.call_soon(f.set_result, 'value')
        return await f

    assert loop.run_until_complete(main()) == 'value'


def test_await_future_with_exception(loop):
    f = loop.create_future()

    async def main():
        loop.call_soon(f.set_exception, KeyError('x'))
        try:
            await f
        except KeyError as exc:
            return exc.args

    assert loop.run_until_complete(main()) == ('x',)


def test_await_done_future_does_not_suspend(loop):
    f = loop.create_future()
    f.set_result(5)
    order = []

    async def main():
        loop.call_soon(order.append, 'callback')
        value = await f  # done: no suspension
        order.append('after-await')
        return value

    assert loop.run_until_complete(main()) == 5
    assert order == ['after-await', 'callback']


def test_yield_from_future_in_generator_coroutine(loop):
    f = loop.create_future()

    @types.coroutine
    def gen_coro():
        value = yield from f
        return value * 2

    async def main():
        loop.call_soon(f.set_result, 21)
        return await gen_coro()

    assert loop.run_until_complete(main()) == 42


def test_future_iter_protocol(loop):
    f = loop.create_future()
    it = iter(f)
    assert next(it) is f
    assert f._asyncio_future_blocking is True
    f.set_result('done')
    with pytest.raises(StopIteration) as ei:
        next(it)
    assert ei.value.value == 'done'


def test_future_await_protocol(loop):
    f = loop.create_future()
    it = f.__await__()
    assert it.send(None) is f
    f.set_exception(ValueError('v'))
    with pytest.raises(ValueError, match='v'):
        it.send(None)


def test_future_iter_on_done_future(loop):
    f = loop.create_future()
    f.set_result(7)
    with pytest.raises(StopIteration) as ei:
        next(iter(f))
    assert ei.value.value == 7
    g = loop.create_future()
    g.cancel('c')
    with pytest.raises(asyncio.CancelledError):
        next(g.__await__())


def test_future_iter_throw(loop):
    f = loop.create_future()
    it = f.__await__()
    assert next(it) is f
    with pytest.raises(KeyError):
        it.throw(KeyError('thrown'))
    f.cancel()


# ---------------------------------------------------------------------------
# debug mode
# ---------------------------------------------------------------------------

def test_source_traceback_in_debug_mode(loop):
    loop.set_debug(True)
    line = lineno() + 1
    f = loop.create_future()
    tb = f._source_traceback
    assert isinstance(tb, list)
    assert len(tb) > 0
    assert (THIS_FILE, line) in [(fr.filename, fr.lineno) for fr in tb]
    assert re.fullmatch(r'<Future pending created at .*:\d+>', repr(f))
    f.cancel()


def test_no_source_traceback_without_debug(loop):
    f = loop.create_future()
    assert f._source_traceback is None
    f.cancel()


# ---------------------------------------------------------------------------
# reprs
# ---------------------------------------------------------------------------

def test_repr_pending(loop):
    f = loop.create_future()
    ref = asyncio.Future(loop=loop)
    assert repr(f) == repr(ref) == '<Future pending>'
    f.cancel()
    ref.cancel()


def test_repr_with_callbacks(loop):
    f = loop.create_future()
    ref = asyncio.Future(loop=loop)
    expected = []
    for n in range(1, 5):
        f.add_done_callback(_cb if n % 2 else _cb2)
        ref.add_done_callback(_cb if n % 2 else _cb2)
        assert repr(f) == repr(ref)
        expected.append(repr(f))
    assert re.fullmatch(r'<Future pending cb=\[_cb\(\) at .*:\d+\]>',
                        expected[0])
    assert re.fullmatch(
        r'<Future pending cb=\[_cb\(\) at .*:\d+, <2 more>, _cb2\(\) at .*\]>',
        expected[3])
    f.cancel()
    ref.cancel()
    iterate(loop)


def test_repr_finished(loop):
    f = loop.create_future()
    ref = asyncio.Future(loop=loop)
    f.set_result(1)
    ref.set_result(1)
    assert repr(f) == repr(ref) == '<Future finished result=1>'


def test_repr_finished_long_result(loop):
    f = loop.create_future()
    ref = asyncio.Future(loop=loop)
    f.set_result('x' * 500)
    ref.set_result('x' * 500)
    assert repr(f) == repr(ref)
    assert len(repr(f)) < 100  # reprlib-truncated


def test_repr_exception(loop):
    f = loop.create_future()
    ref = asyncio.Future(loop=loop)
    f.set_exception(ValueError('bad'))
    ref.set_exception(ValueError('bad'))
    assert repr(f) == repr(ref) == \
        "<Future finished exception=ValueError('bad')>"
    f.exception()
    ref.exception()


def test_repr_cancelled(loop):
    f = loop.create_future()
    ref = asyncio.Future(loop=loop)
    f.cancel('msg')
    ref.cancel('msg')
    assert repr(f) == repr(ref) == '<Future cancelled>'


def test_repr_recursive(loop):
    f = loop.create_future()
    ref = asyncio.Future(loop=loop)
    f.set_result([f])
    ref.set_result([ref])
    assert repr(f) == repr(ref)
    f._result.clear()
    ref._result.clear()


# ---------------------------------------------------------------------------
# wrap_future / threads
# ---------------------------------------------------------------------------

def test_wrap_concurrent_future_result(loop):
    cf = concurrent.futures.Future()
    af = asyncio.wrap_future(cf, loop=loop)
    assert isinstance(af, asyncio.Future)
    assert af.get_loop() is loop

    def worker():
        cf.set_result('from-thread')

    th = threading.Thread(target=worker)
    th.start()
    try:
        assert loop.run_until_complete(af) == 'from-thread'
    finally:
        th.join()


def test_wrap_concurrent_future_exception(loop):
    cf = concurrent.futures.Future()
    af = asyncio.wrap_future(cf, loop=loop)
    th = threading.Thread(target=cf.set_exception, args=(KeyError('t'),))
    th.start()
    try:
        with pytest.raises(KeyError):
            loop.run_until_complete(af)
    finally:
        th.join()


def test_wrap_concurrent_future_cancel_propagates(loop):
    cf = concurrent.futures.Future()
    af = asyncio.wrap_future(cf, loop=loop)
    af.cancel()
    iterate(loop, 2)
    assert cf.cancelled()


def test_wrap_future_uses_current_loop(loop):
    cf = concurrent.futures.Future()
    af = asyncio.wrap_future(cf)
    assert af.get_loop() is loop
    cf.set_result(3)
    assert loop.run_until_complete(af) == 3


def test_run_coroutine_threadsafe(loop):
    async def coro(x):
        await asyncio.sleep(0)
        return x + 1, type(asyncio.current_task())

    results = []

    def worker():
        cf = asyncio.run_coroutine_threadsafe(coro(1), loop)
        results.append(cf.result(timeout=20))
        loop.call_soon_threadsafe(loop.stop)

    th = threading.Thread(target=worker)
    th.start()
    try:
        loop.run_forever()
    finally:
        th.join()
    assert results[0][0] == 2


def test_future_created_without_loop_uses_current_loop(loop):
    f = asyncio.Future()
    assert f.get_loop() is loop
    f.cancel()


# ---------------------------------------------------------------------------
# garbage collection / unretrieved exceptions
# ---------------------------------------------------------------------------

def test_unretrieved_exception_logged_at_gc(loop, loop_errors):
    f = loop.create_future()
    exc = ValueError('never seen')
    f.set_exception(exc)
    wr = weakref.ref(f)
    del f
    gc.collect()
    assert len(loop_errors) == 1
    ctx = loop_errors[0]
    assert ctx['message'] == 'Future exception was never retrieved'
    assert ctx['exception'] is exc
    assert set(ctx) == {'message', 'exception', 'future'}
    assert repr(ctx['future']) == "<Future finished exception=ValueError('never seen')>"
    del ctx
    loop_errors.clear()
    gc.collect()
    assert wr() is None


def test_unretrieved_exception_logged_with_default_handler(loop, caplog):
    loop.set_exception_handler(None)
    f = loop.create_future()
    f.set_exception(ValueError('to the log'))
    del f
    with caplog.at_level('ERROR', logger='asyncio'):
        gc.collect()
    msgs = [r.getMessage() for r in caplog.records if r.name == 'asyncio']
    assert len(msgs) == 1
    assert msgs[0].startswith('Future exception was never retrieved\n')
    assert "future: <Future finished exception=ValueError('to the log')>" \
        in msgs[0]


def test_unretrieved_exception_debug_has_source_traceback(loop, loop_errors):
    loop.set_debug(True)
    f = loop.create_future()
    f.set_exception(ValueError())
    del f
    gc.collect()
    assert len(loop_errors) == 1
    assert 'source_traceback' in loop_errors[0]


@pytest.mark.parametrize('retrieve', ['exception', 'result', 'flag', 'cancel',
                                      'await'])
def test_retrieved_exception_not_logged(loop, retrieve):
    f = loop.create_future()
    f.set_exception(ValueError())
    if retrieve == 'exception':
        f.exception()
    elif retrieve == 'result':
        with pytest.raises(ValueError):
            f.result()
    elif retrieve == 'flag':
        f._log_traceback = False
    elif retrieve == 'cancel':
        f.cancel()
    else:
        async def main():
            with pytest.raises(ValueError):
                await f
        loop.run_until_complete(main())
    del f
    gc.collect()
    # The loop fixture fails the test if anything reached the handler.


def test_result_and_cancelled_futures_not_logged(loop):
    f = loop.create_future()
    f.set_result(1)
    g = loop.create_future()
    g.cancel()
    h = loop.create_future()  # pending
    del f, g, h
    gc.collect()


def test_future_is_weakrefable_and_hashable(loop):
    f = loop.create_future()
    g = loop.create_future()
    wr = weakref.ref(f)
    assert wr() is f
    assert hash(f) != hash(g) or f is not g
    assert len({f, g, f}) == 2
    assert f == f and f != g
    d = {f: 1}
    assert d[f] == 1
    f.cancel()
    g.cancel()
    del f, d
    gc.collect()
    assert wr() is None


def test_future_done_callback_cycle_collected(loop):
    f = loop.create_future()
    f.add_done_callback(lambda fut, f=f: None)  # f -> callbacks -> lambda -> f
    wr = weakref.ref(f)
    del f
    gc.collect()
    assert wr() is None


def test_future_result_cycle_collected(loop):
    f = loop.create_future()
    f.set_result([f])
    wr = weakref.ref(f)
    del f
    gc.collect()
    assert wr() is None


def test_future_exception_cycle_collected(loop):
    f = loop.create_future()
    exc = ValueError()
    exc.future = f
    f.set_exception(exc)
    f.exception()
    wr = weakref.ref(f)
    del f, exc
    gc.collect()
    assert wr() is None
