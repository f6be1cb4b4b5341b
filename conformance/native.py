"""ferroloop's native Future/Task as a third implementation (runs in a child).

CPython parametrizes its Future/Task test mixins over the C (``_CFuture``,
``_CTask``) and pure-Python (``_PyFuture``, ``_PyTask``) classes through class
attributes.  This module generates, without touching CPython's files, the same
test classes with ferroloop's native classes ("Ferro") plugged in, and adds
them to the imported test module so the normal loader picks them up:

test_futures
    FerroFutureTests, FerroSubFutureTests           (BaseFutureTests; ``cls``)
    FerroFutureDoneCallbackTests,
    FerroSubFutureDoneCallbackTests                 (``_new_future``)
    FerroFutureInheritanceTests                     (``_get_future_cls``)
    The C-only extra tests of the C classes (e.g. ``test_future_del_segfault``)
    are copied into the Ferro classes: they probe native-implementation
    robustness, which applies to ferroloop as much as to ``_asyncio``.
test_futures2
    FerroFutureTests                                (``cls = ferroloop.Task``)
test_tasks
    {T}Task_{F}Future_Tests and {T}Task_{F}Future_SubclassTests for every
    (T, F) with at least one Ferro:  Ferro/Ferro, Ferro/C, Ferro/Py, C/Ferro,
    Py/Ferro.  The ``_SubclassTests`` variants go through CPython's own
    ``add_subclass_tests`` decorator (Python subclasses of both classes that
    count ``add_done_callback`` calls).  Ferro/Ferro also gets
    ``SetMethodsTest`` and the C-only extras of ``CTask_CFuture_Tests``, as
    the same-implementation C/C and Py/Py pairs do.
    FerroCurrentLoopTests                           (``new_task``)
    FerroIntrospectionTests, only if ferroloop exposes ``_register_task``,
    ``_unregister_task``, ``_enter_task`` and ``_leave_task``.

Every generated class carries ``_ferroloop_native = True`` (recorded per test
as ``native`` in results.jsonl).  If a class cannot be built (e.g. the native
type is not subclassable) a stand-in class with one failing test,
``test_native_class_generation``, reports why.

Replace mode (``--replace-future-task``): before any test module is imported,
``asyncio.Future``, ``asyncio.futures.Future``, ``asyncio.Task`` and
``asyncio.tasks.Task`` are replaced by ferroloop's classes, so every test in
the suite (including those on ``test_utils.TestLoop``, whose
``create_future``/``create_task`` look these names up at call time) uses them.
The ``_CFuture``/``_PyFuture``/``_CTask``/``_PyTask`` names stay untouched.
"""

import asyncio
import asyncio.futures
import asyncio.tasks
import unittest

NATIVE_MODULES = ("test_futures", "test_futures2", "test_tasks")


def replace_future_task(ferroloop):
    asyncio.Future = asyncio.futures.Future = ferroloop.Future
    asyncio.Task = asyncio.tasks.Task = ferroloop.Task


def _extra_tests(cls, base_classes):
    """test_* methods defined on cls itself but not on any of base_classes."""
    out = {}
    for name, val in cls.__dict__.items():
        if name.startswith("test") and callable(val):
            if not any(hasattr(b, name) for b in base_classes):
                out[name] = val
    return out


class _Generator:
    def __init__(self, module, ferroloop):
        self.module = module
        self.modname = module.__name__
        self.ferroloop = ferroloop
        self.made = []

    def add(self, name, bases, ns, decorate=None):
        ns = dict(ns)
        ns.setdefault("__module__", self.modname)
        ns.setdefault("__qualname__", name)
        ns["_ferroloop_native"] = True
        try:
            cls = type(name, bases, ns)
            if decorate is not None:
                cls = decorate(cls)
        except Exception as exc:  # report instead of dropping silently
            cls = self.failed(name, bases, exc)
        setattr(self.module, name, cls)
        self.made.append(name)
        return cls

    def failed(self, name, bases, exc):
        msg = (f"conformance: could not build native test class {name}: "
               f"{type(exc).__name__}: {exc}")

        def test_native_class_generation(self):
            raise RuntimeError(msg)

        tc = [b for b in bases if isinstance(b, type)
              and issubclass(b, unittest.TestCase)] or [unittest.TestCase]
        return type(name, (tc[-1],), {
            "__module__": self.modname, "__qualname__": name,
            "_ferroloop_native": True,
            "test_native_class_generation": test_native_class_generation})

    def subclass_of(self, base, name):
        return type(name, (base,), {"__module__": self.modname})


def add_native_classes(module, ferroloop):
    short = module.__name__.rsplit(".", 1)[-1]
    gen = _Generator(module, ferroloop)
    if short == "test_futures":
        _futures(module, gen)
    elif short == "test_futures2":
        _futures2(module, gen)
    elif short == "test_tasks":
        _tasks(module, gen)
    return gen.made


def _futures(m, gen):
    from test.test_asyncio import utils as test_utils
    TC = test_utils.TestCase
    F = gen.ferroloop.Future
    extras = _extra_tests(m.CFutureTests, (m.BaseFutureTests, TC))
    gen.add("FerroFutureTests", (m.BaseFutureTests, TC),
            dict(extras, cls=F))
    try:
        sub = gen.subclass_of(F, "FerroSubFuture")
    except Exception as exc:
        m.FerroSubFutureTests = gen.failed("FerroSubFutureTests", (TC,), exc)
        gen.made.append("FerroSubFutureTests")
    else:
        gen.add("FerroSubFutureTests", (m.BaseFutureTests, TC),
                dict(cls=sub))

    gen.add("FerroFutureDoneCallbackTests",
            (m.BaseFutureDoneCallbackTests, TC),
            {"_new_future": lambda self: F(loop=self.loop)})

    def _new_sub_future(self):
        class FerroSubFuture(F):
            pass
        return FerroSubFuture(loop=self.loop)
    gen.add("FerroSubFutureDoneCallbackTests",
            (m.BaseFutureDoneCallbackTests, TC),
            {"_new_future": _new_sub_future})

    gen.add("FerroFutureInheritanceTests",
            (m.BaseFutureInheritanceTests, TC),
            {"_get_future_cls": lambda self: F})


def _futures2(m, gen):
    gen.add("FerroFutureTests",
            (m.FutureTests, unittest.IsolatedAsyncioTestCase),
            {"cls": gen.ferroloop.Task})


def _tasks(m, gen):
    from test.test_asyncio import utils as test_utils
    TC = test_utils.TestCase
    fl = gen.ferroloop
    impls = {
        "Ferro": (fl.Task, fl.Future),
        "C": (getattr(asyncio.tasks, "_CTask", None),
              getattr(asyncio.futures, "_CFuture", None)),
        "Py": (asyncio.tasks._PyTask, asyncio.futures._PyFuture),
    }
    c_extras = {}
    if hasattr(m, "CTask_CFuture_Tests"):
        c_extras = _extra_tests(m.CTask_CFuture_Tests,
                                (m.BaseTaskTests, m.SetMethodsTest, TC))
    combos = [("Ferro", "Ferro"), ("Ferro", "C"), ("Ferro", "Py"),
              ("C", "Ferro"), ("Py", "Ferro")]
    for t, f in combos:
        Task = impls[t][0]
        Future = impls[f][1]
        if Task is None or Future is None:
            continue  # C accelerator missing: CPython skips those too
        ns = {"Task": Task, "Future": Future}
        if t == f == "Ferro":
            bases = (m.BaseTaskTests, m.SetMethodsTest, TC)
            ns.update(c_extras)
        else:
            bases = (m.BaseTaskTests, TC)
        gen.add(f"{t}Task_{f}Future_Tests", bases, ns)
        gen.add(f"{t}Task_{f}Future_SubclassTests", (m.BaseTaskTests, TC),
                {"Task": Task, "Future": Future},
                decorate=m.add_subclass_tests)

    gen.add("FerroCurrentLoopTests", (m.BaseCurrentLoopTests, TC),
            {"new_task": lambda self, coro: fl.Task(coro, loop=self.loop)})

    names = ("_register_task", "_unregister_task", "_enter_task",
             "_leave_task")
    if all(hasattr(fl, n) for n in names):
        gen.add("FerroIntrospectionTests",
                (TC, m.BaseTaskIntrospectionTests),
                {n: staticmethod(getattr(fl, n)) for n in names})
