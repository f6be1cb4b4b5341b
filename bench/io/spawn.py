"""Subprocess spawn-and-wait for the I/O benchmarks, one loop per process.

    python bench/io/spawn.py LOOP [--duration 2] [--warmup 0.5] [--max-count 20000]

On a new LOOP (bench/workloads.py's make_loop), runs
``await (await asyncio.create_subprocess_exec('true')).wait()`` one after
another: first for --warmup seconds, then for --duration seconds (at most
--max-count processes), and prints one JSON line for the measured part:
``{"messages": processes, "seconds": wall, "server_cpu_s": this process's
CPU (all its threads), "children_cpu_s": the children's CPU}``. Every
child's return code is checked (0). A loop without subprocess support
fails with its NotImplementedError on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from workloads import make_loop  # noqa: E402


def cpu(who: int) -> float:
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


async def spawn_until(exe: str, seconds: float, max_count: int) -> int:
    n = 0
    end = time.monotonic() + seconds
    # Bounded in time (end) and count (max_count).
    while n < max_count and time.monotonic() < end:
        p = await asyncio.create_subprocess_exec(exe)
        rc = await p.wait()
        if rc != 0:
            raise SystemExit(f"child exited with {rc}")
        n += 1
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("loop")
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--max-count", type=int, default=20000)
    args = ap.parse_args()
    exe = shutil.which("true") or "/bin/true"
    loop = make_loop(args.loop)
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(spawn_until(exe, args.warmup, args.max_count))
        t0, c0, k0 = time.monotonic(), cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
        n = loop.run_until_complete(spawn_until(exe, args.duration, args.max_count))
        t1, c1, k1 = time.monotonic(), cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
    finally:
        loop.close()
    print(
        json.dumps(
            {
                "messages": n,
                "seconds": t1 - t0,
                "server_cpu_s": c1 - c0,
                "children_cpu_s": k1 - k0,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
