"""A FAKE ferroloop for the harness self-test only.

It mimics the public API contract (Loop, new_event_loop(native_tasks=...),
EventLoopPolicy, Future, Task, install) on top of the stdlib, so the routing,
counting and native parametrization of the harness can be checked before/
without the real build.  Never installed; only put on PYTHONPATH by
``python -m conformance.selftest``.
"""
import asyncio
import asyncio.futures
import asyncio.tasks

__version__ = "fake-for-selftest"


class Future(asyncio.futures._PyFuture):
    pass


class Task(asyncio.tasks._PyTask):
    pass


class Loop(asyncio.SelectorEventLoop):
    def __init__(self, native_tasks=True):
        super().__init__()
        self._native_tasks = native_tasks


def new_event_loop(*, native_tasks=True):
    return Loop(native_tasks=native_tasks)


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self):
        return new_event_loop()


def install():
    asyncio.set_event_loop_policy(EventLoopPolicy())
