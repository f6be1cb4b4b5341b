"""Shared fixtures for the ferroloop behaviour suite.

This is uvloop's ``_testbase`` idiom expressed as pytest fixtures: every
behaviour test takes the ``loop`` fixture and therefore runs three times,

* ``asyncio``           -- the stdlib selector loop (the reference behaviour),
* ``ferroloop``         -- ``ferroloop.new_event_loop()`` (native Future/Task),
* ``ferroloop-compat``  -- ``ferroloop.new_event_loop(native_tasks=False)``
                           (asyncio's own Future/Task classes).

The ``loop`` fixture installs the loop as the current event loop, records
every call of the loop's exception handler, closes the loop after the test,
garbage-collects, and fails the test if the exception handler was called
unexpectedly.  A test that *expects* exception-handler calls requests the
``loop_errors`` fixture (a list of the recorded contexts) and asserts on it,
or installs its own handler with ``loop.set_exception_handler``.

If ``import ferroloop`` fails, the ferroloop params skip with the import
error as the reason.  Set ``FERROLOOP_REQUIRED=1`` (e.g. in CI) to turn that
skip into a failure.
"""

import asyncio
import functools
import gc
import os
import pprint

import pytest

try:
    import ferroloop
except ImportError as exc:  # the extension is not built / installed
    ferroloop = None
    FERROLOOP_IMPORT_ERROR = f'{type(exc).__name__}: {exc}'
else:
    FERROLOOP_IMPORT_ERROR = None


LOOP_KINDS = ('asyncio', 'ferroloop', 'ferroloop-compat')
FERRO_KINDS = ('ferroloop', 'ferroloop-compat')


def require_ferroloop():
    """Skip (or fail, with FERROLOOP_REQUIRED=1) when ferroloop is missing."""
    if ferroloop is None:
        msg = f'ferroloop is not importable ({FERROLOOP_IMPORT_ERROR})'
        if os.environ.get('FERROLOOP_REQUIRED'):
            pytest.fail(msg)
        pytest.skip(msg)
    return ferroloop


def stdlib_loop_factory():
    # Not asyncio.new_event_loop(): that goes through the current policy,
    # which some tests replace with ferroloop's.
    return asyncio.SelectorEventLoop()


def make_loop_factory(kind):
    """Return a zero-argument callable creating a new loop of ``kind``."""
    if kind == 'asyncio':
        return stdlib_loop_factory
    fl = require_ferroloop()
    if kind == 'ferroloop':
        return fl.new_event_loop
    if kind == 'ferroloop-compat':
        return functools.partial(fl.new_event_loop, native_tasks=False)
    raise ValueError(kind)


def pytest_configure(config):
    config.addinivalue_line(
        'markers', 'gc: slow memory/garbage-collection volume tests')


def pytest_collection_finish(session):
    # What exists once collection ends (imported modules, test items) lives
    # for the whole run: freeze it out of the cyclic GC's generations, so the
    # gc.collect() calls of the ``loop`` fixture (three per test) traverse
    # only what tests create. With the whole suite collected a full
    # collection took 37 ms, about 6 minutes of ``make test`` in all.
    # Objects made by tests are collected (and reported) as before.
    gc.collect()
    gc.freeze()


class LoopState:
    def __init__(self):
        self.errors = []
        self.expected = False


_STATE_KEY = pytest.StashKey[LoopState]()


@pytest.fixture(autouse=True)
def _restore_policy():
    """Every test starts and ends with a fresh default event loop policy."""
    asyncio.set_event_loop_policy(None)
    yield
    asyncio.set_event_loop_policy(None)


@pytest.fixture(params=LOOP_KINDS)
def loop_kind(request):
    """'asyncio', 'ferroloop' or 'ferroloop-compat' (skips if unavailable)."""
    if request.param != 'asyncio':
        require_ferroloop()
    return request.param


@pytest.fixture
def loop_factory(loop_kind):
    """A callable that creates a new, unconfigured loop of the param's kind."""
    return make_loop_factory(loop_kind)


def open_fds():
    """This process's open file descriptors: number -> what it points to."""
    fds = {}
    for name in os.listdir('/proc/self/fd'):
        try:
            fds[int(name)] = os.readlink(f'/proc/self/fd/{name}')
        except OSError:  # the directory's own fd, closed by now
            pass
    return fds


@pytest.fixture
def loop(request, loop_factory):
    gc.collect()
    fds_before = open_fds()
    lp = loop_factory()
    state = LoopState()
    request.node.stash[_STATE_KEY] = state

    def record(the_loop, context):
        state.errors.append(context)

    lp.set_exception_handler(record)
    asyncio.set_event_loop(lp)
    try:
        yield lp
    finally:
        try:
            if not lp.is_closed():
                lp.close()
        finally:
            asyncio.set_event_loop(None)
        # Collect garbage so that "never retrieved" / "destroyed but
        # pending" reports of objects of this test land in ``state.errors``.
        gc.collect()
        lp.set_exception_handler(None)
        if state.errors and not state.expected:
            pytest.fail(
                'unexpected calls to loop.call_exception_handler():\n'
                + pprint.pformat(state.errors),
                pytrace=False)
        # Nothing outlives the loop: no fd the reactor still watches, no
        # fd the test's objects left open (transports, servers, sockets).
        sources = getattr(lp, '_io_source_count', None)
        if sources is not None and sources():
            pytest.fail(f'closed loop still watches {sources()} fds', pytrace=False)
        gc.collect()
        leaked = {fd: what for fd, what in open_fds().items() if fds_before.get(fd) != what}
        if leaked:
            pytest.fail(f'file descriptors leaked: {leaked}', pytrace=False)


@pytest.fixture
def loop_errors(request, loop):
    """Recorded exception-handler contexts; marks them as expected."""
    state = request.node.stash[_STATE_KEY]
    state.expected = True
    return state.errors


@pytest.fixture
def run(loop):
    """``run(aw)`` is ``loop.run_until_complete(aw)``."""
    return loop.run_until_complete


@pytest.fixture
def native(loop_kind):
    """True when the loop uses ferroloop's native Future/Task types."""
    return loop_kind == 'ferroloop'
