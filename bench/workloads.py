"""One benchmark workload, timed, in this (fresh) process.

    python bench/workloads.py WORKLOAD LOOP [--n N]

LOOP: asyncio | uvloop | ferroloop | ferroloop-compat | none (only for "floor").
Prints one JSON line: {"workload", "loop", "n", "seconds"}; "seconds" covers the
timed part only (loop creation, setup of inputs and loop.close() are outside).
Every workload checks its own result and exits non-zero if the loop got it wrong,
so a broken loop cannot post a fast time.

bench/run.py runs these in interleaved fresh processes and takes medians.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import sys
from time import perf_counter

LOOPS = ("asyncio", "uvloop", "rloop", "ferroloop", "ferroloop-compat")


def make_loop(name: str) -> asyncio.AbstractEventLoop:
    if name == "asyncio":
        return asyncio.new_event_loop()
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    if name == "rloop":
        import rloop

        return rloop.new_event_loop()
    if name == "ferroloop":
        import ferroloop

        return ferroloop.new_event_loop()
    if name == "ferroloop-compat":
        import ferroloop

        return ferroloop.new_event_loop(native_tasks=False)
    raise SystemExit(f"unknown loop {name!r}")


def check(cond: bool, what: str) -> None:
    if not cond:
        raise SystemExit(f"workload result wrong: {what}")


# Each workload: fn(loop, n) -> elapsed seconds of the timed part.


def run_timed(loop, coro, expected, what: str) -> float:
    """Times `run_until_complete(coro)` and checks its result is `expected`."""
    t0 = perf_counter()
    r = loop.run_until_complete(coro)
    t = perf_counter() - t0
    check(r == expected, f"{what}: {r!r} != {expected!r}")
    return t


def call_soon_chain(loop, n):
    """n chained call_soon: each callback schedules the next; the last stops the loop."""
    count = 0
    call_soon = loop.call_soon

    def cb():
        nonlocal count
        count += 1
        if count < n:
            call_soon(cb)
        else:
            loop.stop()

    t0 = perf_counter()
    call_soon(cb)
    loop.run_forever()
    t = perf_counter() - t0
    check(count == n, f"count {count} != {n}")
    return t


def call_soon_args(loop, n):
    """Schedule n call_soon(cb, i, j), then run them all."""
    total = 0

    def cb(i, j):
        nonlocal total
        total += j - i

    call_soon = loop.call_soon
    t0 = perf_counter()
    for i in range(n):
        call_soon(cb, i, i + 1)
    call_soon(loop.stop)
    loop.run_forever()
    t = perf_counter() - t0
    check(total == n, f"total {total} != {n}")
    return t


def timers_cancel(loop, n):
    """Schedule n call_later with varied delays, cancel them all, run the loop once."""
    fired = 0

    def cb():
        nonlocal fired
        fired += 1

    delays = [1.0 + (i * 7919 % 10007) / 1000.0 for i in range(n)]  # 1 s .. 11 s, shuffled
    call_later = loop.call_later
    t0 = perf_counter()
    handles = [call_later(d, cb) for d in delays]
    for h in handles:
        h.cancel()
    loop.call_soon(loop.stop)
    loop.run_forever()
    t = perf_counter() - t0
    check(fired == 0 and all(h.cancelled() for h in handles[:100]), "a cancelled timer fired")
    return t


def sleep0(loop, n):
    """n x `await asyncio.sleep(0)` in one task."""

    async def main():
        for _ in range(n):
            await asyncio.sleep(0)
        return n

    return run_timed(loop, main(), n, "result")


def future_roundtrip(loop, n):
    """n x: fut = loop.create_future(); call_soon(fut.set_result, i); await fut."""

    async def main():
        create_future = loop.create_future
        call_soon = loop.call_soon
        total = 0
        for i in range(n):
            fut = create_future()
            call_soon(fut.set_result, i)
            total += await fut
        return total

    return run_timed(loop, main(), n * (n - 1) // 2, "sum")


def gather_tasks(loop, n):
    """create_task of n trivial coroutines + gather (GC left on)."""

    async def trivial(i):
        return i

    async def main():
        tasks = [asyncio.create_task(trivial(i)) for i in range(n)]
        res = await asyncio.gather(*tasks)
        return sum(res)

    return run_timed(loop, main(), n * (n - 1) // 2, "sum")


def queue_pingpong(loop, n):
    """Producer/consumer tasks passing n items through asyncio.Queue(maxsize=1)."""

    async def producer(q):
        for i in range(n):
            await q.put(i)
        await q.put(None)

    async def consumer(q):
        total = 0
        while (item := await q.get()) is not None:
            total += item
        return total

    async def main():
        q = asyncio.Queue(maxsize=1)
        p = asyncio.create_task(producer(q))
        total = await consumer(q)
        await p
        return total

    return run_timed(loop, main(), n * (n - 1) // 2, "sum")


def many_tasks_sleep0(loop, n):
    """n tasks x 10 `await asyncio.sleep(0)` each, gathered."""

    async def worker():
        for _ in range(10):
            await asyncio.sleep(0)
        return 1

    async def main():
        return sum(await asyncio.gather(*[asyncio.create_task(worker()) for _ in range(n)]))

    return run_timed(loop, main(), n, "count")


def floor(_loop, n):
    """No event loop: a bare Python loop popping n chained callbacks from a deque."""
    q = collections.deque()
    count = 0

    def cb():
        nonlocal count
        count += 1
        if count < n:
            q.append(cb)

    t0 = perf_counter()
    q.append(cb)
    popleft = q.popleft
    while q:
        popleft()()
    t = perf_counter() - t0
    check(count == n, "count")
    return t


def floor_tasks(_loop, n):
    """No event loop: `many_tasks_sleep0`'s coroutines driven by a bare deque.

    What is left of row 8 with the loop taken away: the coroutines'
    own Python code (`asyncio.sleep(0)` included), sends and a deque.
    """

    async def worker():
        for _ in range(10):
            await asyncio.sleep(0)
        return 1

    coros = [worker() for _ in range(n)]
    t0 = perf_counter()
    q = collections.deque(coros)
    total = 0
    popleft, append = q.popleft, q.append
    while q:
        c = popleft()
        try:
            c.send(None)
        except StopIteration as e:
            total += e.value
        else:
            append(c)
    t = perf_counter() - t0
    check(total == n, "count")
    return t


# name -> (function, full size, table label)
WORKLOADS = {
    "call_soon_chain": (call_soon_chain, 1_000_000, "chained call_soon"),
    "call_soon_args": (call_soon_args, 1_000_000, "call_soon(cb, i, j)"),
    "timers_cancel": (timers_cancel, 200_000, "call_later + cancel, run once"),
    "sleep0": (sleep0, 1_000_000, "await sleep(0), one task"),
    "future_roundtrip": (future_roundtrip, 200_000, "future set via call_soon, awaited"),
    "gather_tasks": (gather_tasks, 100_000, "create_task + gather"),
    "queue_pingpong": (queue_pingpong, 200_000, "Queue(maxsize=1) producer/consumer"),
    "many_tasks_sleep0": (many_tasks_sleep0, 20_000, "tasks x 10 sleep(0)"),
    "floor": (floor, 1_000_000, "bare deque loop of chained callbacks, no event loop"),
    "floor_tasks": (floor_tasks, 20_000, "row 8's coroutines driven by a bare deque, no event loop"),
}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("workload", choices=list(WORKLOADS))
    ap.add_argument("loop", choices=[*LOOPS, "none"])
    ap.add_argument("--n", type=int, default=None, help="size (default: the workload's full size)")
    ap.add_argument(
        "--no-gc", action="store_true", help="gc.disable() for the workload (default: GC on)"
    )
    args = ap.parse_args()
    if args.no_gc:
        gc.collect()
        gc.disable()
    fn, size, _ = WORKLOADS[args.workload]
    n = args.n or size
    if args.workload in ("floor", "floor_tasks"):
        t = fn(None, n)
    else:
        if args.loop == "none":
            raise SystemExit("loop 'none' is only for the floor workloads")
        loop = make_loop(args.loop)
        asyncio.set_event_loop(loop)
        try:
            t = fn(loop, n)
        finally:
            asyncio.set_event_loop(None)
            loop.close()
    print(json.dumps({"workload": args.workload, "loop": args.loop, "n": n, "seconds": t}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
