"""How fast could any loop be on a workload? An instruction-count ceiling.

    .venv/bin/python bench/ceiling.py                     # rows 5-8
    .venv/bin/python bench/ceiling.py -w queue_pingpong --n 20000

Runs a workload under ``valgrind --tool=callgrind`` on uvloop and on
ferroloop, counting instructions only while the loop runs (callgrind's
``--toggle-collect`` on each loop's run method), and splits the count per
operation into:

* the CPython work common to both loops -- for every CPython function, the
  smaller of its two self counts: the interpreter running the same asyncio
  and benchmark code (coroutine frames, ``asyncio.sleep``, ``Queue``'s
  methods, ``gather``'s callbacks), allocations both make;
* the rest, which is the loop's own.

``ceiling = uvloop / common``: the speed-up over uvloop of a loop whose own
work cost nothing. A target above it cannot be met by any event loop that
runs asyncio's code on this interpreter. The cyclic GC is on by default, as
in ``make bench``; the collector's work counts as CPython work, so the
common part holds the smaller of the two loops' GC costs. Instruction counts are exact and
repeatable on a noisy machine; time follows them only roughly (uvloop also
makes an epoll syscall per iteration, which callgrind does not count).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# callgrind --toggle-collect patterns: each loop's `run_forever` core.
TOGGLE = {
    "uvloop": "*uvloop_4loop_4Loop_*run_forever*",
    "ferroloop": "*Loop>::__pymethod__run__*",
}
# Workloads that do all their work inside the loop, and sizes that keep a
# callgrind run under a minute.
SIZES = {
    "future_roundtrip": 20_000,
    "gather_tasks": 10_000,
    "queue_pingpong": 20_000,
    "many_tasks_sleep0": 20_000,  # the benchmark's size: GC work grows with it
}
TARGETS = {
    "future_roundtrip": 2.0,
    "gather_tasks": 2.0,
    "queue_pingpong": 1.5,
    "many_tasks_sleep0": 2.0,
}

LINE = re.compile(r"\s*([\d,]+)\s+\([^)]*\)\s+(\S+)(?:\s+\[(.*)\])?")


def profile(workload: str, loop: str, n: int, out: str, no_gc: bool) -> dict[str, int]:
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--collect-atstart=no",
        f"--toggle-collect={TOGGLE[loop]}",
        f"--callgrind-out-file={out}",
        sys.executable,
        os.path.join(HERE, "workloads.py"),
        workload,
        loop,
        "--n",
        str(n),
        *(["--no-gc"] if no_gc else []),
    ]
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    text = subprocess.run(
        ["callgrind_annotate", "--threshold=100", out], check=True, capture_output=True, text=True
    ).stdout
    costs: dict[str, int] = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        count = int(m.group(1).replace(",", ""))
        name = m.group(2)
        if name == "PROGRAM":
            costs["<total>"] = count
            continue
        name = re.sub(r"'\d+$", "", name)  # recursion levels are one function
        if "libpython" in (m.group(3) or ""):
            name = "libpython:" + name
        costs[name] = costs.get(name, 0) + count
    if not costs.get("<total>"):
        raise SystemExit(f"{loop}: nothing collected (is the toggle pattern right?)")
    return costs


def is_cpython(name: str) -> bool:
    # Functions and inlined headers compiled from CPython's source tree.
    return name.startswith("libpython:") or "/Python-3." in name


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-w", "--workload", action="append", choices=list(SIZES))
    ap.add_argument("--n", type=int, help="size (default: per workload)")
    ap.add_argument(
        "--no-gc",
        action="store_true",
        help="gc.disable() in the workload (default: GC on, as make bench runs)",
    )
    args = ap.parse_args()
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is needed (apt install valgrind)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in args.workload or list(SIZES):
            n = args.n or SIZES[w]
            c = {
                lp: profile(w, lp, n, os.path.join(tmp, f"{w}.{lp}.out"), args.no_gc)
                for lp in TOGGLE
            }
            f, u = c["ferroloop"], c["uvloop"]
            common = sum(min(v, u.get(k, 0)) for k, v in f.items() if is_cpython(k))
            rows.append((w, n, u["<total>"] / n, f["<total>"] / n, common / n))
            print(f"  {w}: done", file=sys.stderr)
    print(
        "| workload | n | uvloop instr/op | ferroloop instr/op | common CPython instr/op "
        "| × uvloop (instr) | ceiling | target |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for w, n, u, f, common in rows:
        print(
            f"| {w} | {n:,} | {u:,.0f} | {f:,.0f} | {common:,.0f} | {u / f:.2f} "
            f"| {u / common:.2f} | {TARGETS[w]:.1f} |"
        )


if __name__ == "__main__":
    main()
