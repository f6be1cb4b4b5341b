"""Loop routing, loop counting and test-utility shims (runs inside a child).

Everything that makes CPython's unmodified ``test.test_asyncio`` run on
ferroloop lives here or in ``native.py``.  CPython's files are never edited;
all adaptation is done by patching objects in the child process after (or,
for asyncio itself, before) the test module is imported.

Routing (``--loop ferroloop``)
------------------------------
R1  Default policy.  ``asyncio.events._init_event_loop_policy`` is replaced so
    that whenever the policy is (re)initialised -- first use, and after every
    ``asyncio.set_event_loop_policy(None)`` done by each module's
    ``tearDownModule`` and by many tests -- a ``ferroloop.EventLoopPolicy()``
    is installed.  ``asyncio.new_event_loop``, ``asyncio.run``,
    ``asyncio.Runner``, ``IsolatedAsyncioTestCase`` and ``get_event_loop``
    therefore all create ferroloop loops.
R2  Explicit stdlib policies.  Tests that instantiate
    ``asyncio.DefaultEventLoopPolicy()`` themselves (test_events policy tests,
    test_ssl, test_unix_events) keep the stdlib policy object (its child
    watcher logic is what they test) but its ``_loop_factory`` is set to the
    ferroloop factory, so ``policy.new_event_loop()`` returns a ferroloop loop.
R3  Hard-coded loops.  Test classes whose own ``create_event_loop``/``new_loop``
    method mentions ``SelectorEventLoop`` get that method replaced by the
    ferroloop factory.  Where a module has one such class per selector
    (Epoll/Poll/Select variants in test_events, test_sendfile,
    test_sock_lowlevel) the variants would be identical runs on ferroloop, so
    only the most preferred one (epoll) runs; the others are skipped with a
    reason (``--selector-variants all`` runs them all).
R4  Bare mocked BaseEventLoops used only to have *a* runnable loop:
    ``test_pep492.BaseTest.setUp`` (``asyncio.BaseEventLoop()`` with a mocked
    ``_selector``/``_process_events``) and ``test_runners.BaseTest.new_loop``
    (same, plus a stub ``shutdown_asyncgens`` that records
    ``loop.shutdown_ag_run = True`` which ``tearDown`` asserts).  They are
    retargeted to ferroloop; for test_runners a Python subclass of
    ``ferroloop.Loop`` wraps ``shutdown_asyncgens`` to set the same flag
    (and then calls ferroloop's real ``shutdown_asyncgens``).  If
    ``ferroloop.Loop`` cannot be subclassed the original mocked loop is kept
    and a warning is printed to the module log.

Everything else that builds a ``BaseEventLoop`` (``test_utils.TestLoop`` with
its fake clock, test_base_events, test_selector_events, ...) is left alone:
those tests exercise stdlib internals and are reported as "did not create a
ferroloop loop".

Shims (only where a test utility reads stdlib-private state)
-----------------------------------------------------------
S1  ``test.test_asyncio.utils.TestCase.close_loop`` reads
    ``loop._default_executor``.  For loops without that attribute the shim
    calls the public ``loop.shutdown_default_executor()`` (if the loop is not
    closed) and then ``loop.close()``; the child-watcher part is unchanged.
    Loops that do have ``_default_executor`` go through the original.

Counting
--------
Every test records how many distinct ferroloop loops were created while it
ran (``ferro_loops``).  Creation is seen through (a) a wrapper around
``ferroloop.Loop.__init__`` when the class allows it, and (b) every factory
the harness routes through (policy, retargeted methods,
``ferroloop.new_event_loop``); loops are de-duplicated by ``id()``.
"""

import asyncio
import asyncio.events
import sys
import types
import unittest

SELECTOR_PREFERENCE = ("EpollSelector", "KqueueSelector", "DevpollSelector",
                       "PollSelector", "SelectSelector")


class LoopCounter:
    """Per-test set of ids of ferroloop loops created."""

    def __init__(self):
        self.loop_types = ()
        self.ids = set()
        self.total = 0
        self.hooked_init = False

    def reset(self):
        self.ids = set()

    def note(self, loop):
        if self.loop_types and isinstance(loop, self.loop_types):
            i = id(loop)
            if i not in self.ids:
                self.ids.add(i)
                self.total += 1
        return loop

    @property
    def count(self):
        return len(self.ids)


COUNTER = LoopCounter()

# Filled by install(); used by the shims and by native.py.
STATE = types.SimpleNamespace(ferroloop=None, factory=None, loop_type=None,
                              native_tasks=None, notes=[])


def log(msg):
    STATE.notes.append(msg)
    print(f"[conformance] {msg}", file=sys.stderr, flush=True)


def _hook_loop_init(Loop):
    """Wrap Loop.__init__ to count instances; False if the type is immutable."""
    orig = Loop.__init__
    if getattr(orig, "_conformance_counting", False):
        return True
    is_object_init = orig is object.__init__

    def __init__(self, *args, **kwargs):
        if is_object_init:
            object.__init__(self)
        else:
            orig(self, *args, **kwargs)
        COUNTER.note(self)

    __init__._conformance_counting = True
    __init__.__wrapped__ = orig
    try:
        Loop.__init__ = __init__
    except (TypeError, AttributeError):
        return False
    return True


def install(ferroloop, *, native_tasks=None, policy="ferroloop"):
    """Route all loop creation to ferroloop (R1, R2) and install counting."""
    STATE.ferroloop = ferroloop
    STATE.native_tasks = native_tasks
    Loop = ferroloop.Loop
    STATE.loop_type = Loop
    COUNTER.loop_types = (Loop,)
    COUNTER.hooked_init = _hook_loop_init(Loop)
    if not COUNTER.hooked_init:
        log("ferroloop.Loop.__init__ cannot be wrapped; counting only loops "
            "created through the harness factories")

    raw_new_event_loop = ferroloop.new_event_loop
    if native_tasks is None:
        def factory():
            return COUNTER.note(raw_new_event_loop())
    else:
        def factory():
            return COUNTER.note(raw_new_event_loop(native_tasks=native_tasks))
    factory.__name__ = "ferroloop_loop_factory"
    STATE.factory = factory

    # Wrap the package-level factory so direct users are counted too.
    def new_event_loop(*args, **kwargs):
        return COUNTER.note(raw_new_event_loop(*args, **kwargs))
    new_event_loop.__wrapped__ = raw_new_event_loop
    new_event_loop.__doc__ = raw_new_event_loop.__doc__
    ferroloop.new_event_loop = new_event_loop

    # R2: explicit stdlib DefaultEventLoopPolicy() objects make ferroloop loops.
    if sys.platform != "win32":
        import asyncio.unix_events as ue
        ue._UnixDefaultEventLoopPolicy._loop_factory = staticmethod(factory)

    # R1: the default policy (also after set_event_loop_policy(None)).
    policy_cls = _policy_class(ferroloop, factory, native_tasks, policy)
    events = asyncio.events

    def _init_event_loop_policy():
        with events._lock:
            if events._event_loop_policy is None:
                events._event_loop_policy = policy_cls()

    _init_event_loop_policy._conformance = True
    events._init_event_loop_policy = _init_event_loop_policy
    asyncio.set_event_loop_policy(None)
    return factory


def _policy_class(ferroloop, factory, native_tasks, policy):
    if policy == "stdlib":
        # stdlib policy whose _loop_factory was patched above (R2)
        return asyncio.DefaultEventLoopPolicy
    base = ferroloop.EventLoopPolicy
    if native_tasks is None and COUNTER.hooked_init:
        return base          # ferroloop's own policy, untouched
    # Need to force native_tasks or to see creations: thin subclass.
    try:
        ns = {"new_event_loop": lambda self: factory(),
              "__module__": base.__module__,
              "__qualname__": base.__qualname__,
              "__doc__": "conformance: ferroloop.EventLoopPolicy whose "
                         "new_event_loop() goes through the harness factory"}
        return type(base.__name__, (base,), ns)
    except TypeError as exc:
        log(f"cannot subclass ferroloop.EventLoopPolicy ({exc}); using it "
            "as is")
        return base


# --------------------------------------------------------------------------
# Shims and per-module retargeting (applied after the module is imported)

def shim_close_loop(test_utils):
    """S1: TestCase.close_loop without reading loop._default_executor."""
    orig = test_utils.TestCase.__dict__["close_loop"].__func__
    support = test_utils.support

    def close_loop(loop):
        if hasattr(loop, "_default_executor"):
            return orig(loop)
        if not loop.is_closed():
            loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
        # unchanged from test_asyncio/utils.py
        policy = support.maybe_get_event_loop_policy()
        if policy is not None:
            try:
                watcher = policy.get_child_watcher()
            except NotImplementedError:
                pass
            else:
                if isinstance(watcher, asyncio.ThreadedChildWatcher):
                    for thread in list(watcher._threads.values()):
                        thread.join(timeout=support.SHORT_TIMEOUT)
                        if thread.is_alive():
                            raise RuntimeError(
                                f"thread {thread} still alive: "
                                "subprocess still running")

    close_loop.__wrapped__ = orig
    test_utils.TestCase.close_loop = staticmethod(close_loop)


def _test_classes(module):
    for name, obj in sorted(vars(module).items()):
        if (isinstance(obj, type) and issubclass(obj, unittest.TestCase)
                and obj.__module__ == module.__name__):
            yield name, obj


def retarget_selector_classes(module, factory, selector_variants="one"):
    """R3.  Returns the list of (class name, action) for the log."""
    found = []   # (cls, meth, preference)
    for _name, cls in _test_classes(module):
        for meth in ("create_event_loop", "new_loop"):
            fn = cls.__dict__.get(meth)
            code = getattr(fn, "__code__", None)
            if code is None or "SelectorEventLoop" not in code.co_names:
                continue
            pref = len(SELECTOR_PREFERENCE)
            for i, sel in enumerate(SELECTOR_PREFERENCE):
                if sel in code.co_names:
                    pref = i
                    break
            found.append((cls, meth, pref))
    actions = []
    best = min((p for _, _, p in found), default=None)
    for cls, meth, pref in found:
        def retargeted(self, _factory=factory):
            return _factory()
        retargeted.__name__ = meth
        retargeted.__qualname__ = f"{cls.__qualname__}.{meth}"
        retargeted._conformance_retargeted = True
        setattr(cls, meth, retargeted)
        if selector_variants == "one" and pref != best:
            keep = SELECTOR_PREFERENCE[best] if best < len(
                SELECTOR_PREFERENCE) else "default"
            cls.__unittest_skip__ = True
            cls.__unittest_skip_why__ = (
                f"conformance: duplicate selector variant; on ferroloop it is "
                f"identical to the {keep} variant (--selector-variants all "
                f"runs it)")
            actions.append((cls.__name__, "retargeted+skipped-duplicate"))
        else:
            actions.append((cls.__name__, "retargeted"))
    return actions


def retarget_mocked_base_loops(module, factory):
    """R4 for test_pep492 and test_runners."""
    short = module.__name__.rsplit(".", 1)[-1]
    if short == "test_pep492":
        BaseTest = module.BaseTest

        def setUp(self, _factory=factory):
            super(BaseTest, self).setUp()
            self.loop = _factory()
            self.set_event_loop(self.loop)

        BaseTest.setUp = setUp
        return ["test_pep492.BaseTest.setUp -> ferroloop"]
    if short == "test_runners":
        Loop = STATE.loop_type
        kwargs = ({} if STATE.native_tasks is None
                  else {"native_tasks": STATE.native_tasks})
        try:
            class RunnerTestLoop(Loop):
                """conformance R4: records that shutdown_asyncgens ran."""
                shutdown_ag_run = False

                async def shutdown_asyncgens(self):
                    self.shutdown_ag_run = True
                    return await super().shutdown_asyncgens()
        except TypeError as exc:
            log(f"test_runners: cannot subclass ferroloop.Loop ({exc}); "
                "BaseTest.new_loop keeps the mocked asyncio.BaseEventLoop")
            return []

        def new_loop(self):
            return COUNTER.note(RunnerTestLoop(**kwargs))

        module.BaseTest.new_loop = new_loop
        return ["test_runners.BaseTest.new_loop -> ferroloop.Loop subclass"]
    return []
