"""Seed-examples demo: every runnable example of the project's seed tutorials,
run on stdlib asyncio and on ferroloop, outputs compared.

    .venv/bin/python examples/demo.py            # examples + quick benchmark (make demo)
    .venv/bin/python examples/demo.py --quick    # examples only (make test)
    .venv/bin/python examples/demo.py -k 13 -v   # only examples whose name contains "13", show outputs

Each examples/seeds/NN_*.py runs twice as a subprocess, through
examples/_seeded_run.py (seeds `random` with 0, identically for both runs):

    python SCRIPT                  (stdlib asyncio)
    python -m ferroloop SCRIPT     (ferroloop)

stdout, stderr and the exit status must match after normalisation:
  * memory addresses (0x7f...)            -> 0x?
  * measured durations ("3.00 seconds", "1.5s") -> <T>s; the numbers themselves
    must agree within --tolerance seconds (catches a loop whose timers are off)
  * the repository path                   -> <repo>
  * lines printed while iterating a set of tasks (example 13's
    `for task in pending:`) come out in id()/address order, which differs from
    run to run on any loop: such runs of lines are sorted before comparing.

The runs go in parallel (they mostly sleep), so the whole demo takes about as
long as its slowest example. Exit status: 0 all PASS, 1 any FAIL, 2 setup error
(e.g. ferroloop not built).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import difflib
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SEEDS = HERE / "seeds"
RUNNER = HERE / "_seeded_run.py"

# Rough wall time of each example on stdlib asyncio (seconds); only used to start
# the longest ones first so the parallel run ends as early as possible.
EXPECTED = {
    "01": 0.6,
    "02": 5,
    "03": 5,
    "04": 2,
    "05": 3,
    "06": 3,
    "07": 3,
    "08": 3,
    "09": 3,
    "10": 0.1,
    "11": 2,
    "12": 1.2,
    "13": 2,
    "14": 3.6,
    "15": 6.8,
    "16": 2,
    "17": 6.2,
    "18": 1,
    "19": 2,
    "20": 1,
    "21": 2,
    "22": 2,
    "23": 1,
    "24": 1,
}

# Lines whose relative order is not defined by the program (set iteration order
# depends on object addresses): contiguous runs of matching lines are sorted.
UNORDERED = {
    "13": [re.compile(r"^Cancelled task: ")],
}

ADDR_RE = re.compile(r"0x[0-9a-fA-F]+")
# a float immediately followed by "s"/" seconds"/" sec": a measured duration
DUR_RE = re.compile(r"(?<![\w.])(\d+\.\d+)(?=\s?(?:s|sec|secs|seconds)\b)")

LOOP_CMD = {
    "asyncio": "python {script}",
    "ferroloop": "python -m ferroloop {script}",
    "uvloop": "python {script}  [uvloop.install()]",
}


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    wall: float
    durations: list[float] = field(default_factory=list)
    text: str = ""  # normalised stdout+stderr+rc, what gets compared


def normalise(example: str, out: str, err: str, rc: int) -> tuple[str, list[float]]:
    durations: list[float] = []

    def dur(m: re.Match) -> str:
        durations.append(float(m.group(1)))
        return "<T>"

    def norm(s: str) -> list[str]:
        s = s.replace(str(REPO), "<repo>")
        s = ADDR_RE.sub("0x?", s)
        s = DUR_RE.sub(dur, s)
        lines = s.splitlines()
        for pat in UNORDERED.get(example[:2], []):
            res, i = [], 0
            while i < len(lines):
                if pat.search(lines[i]):
                    j = i
                    while j < len(lines) and pat.search(lines[j]):
                        j += 1
                    res.extend(sorted(lines[i:j]))
                    i = j
                else:
                    res.append(lines[i])
                    i += 1
            lines = res
        return lines

    o, e = norm(out), norm(err)
    parts = [f"[stdout] {line}" for line in o] + [f"[stderr] {line}" for line in e]
    parts.append(f"[exit status] {rc}")
    return "\n".join(parts) + "\n", durations


def run_one(python: str, loop: str, script: Path, timeout: float) -> Run:
    env = dict(os.environ)
    env.pop("PYTHONASYNCIODEBUG", None)
    env["PYTHONUNBUFFERED"] = "1"
    t0 = time.monotonic()
    try:
        p = subprocess.run(
            [python, str(RUNNER), loop, str(script)],
            check=False,
            cwd=str(SEEDS),
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:

        def dec(b):
            return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")

        rc, out, err = -9, dec(exc.stdout), dec(exc.stderr) + f"\n<timed out after {timeout:.0f}s>"
    wall = time.monotonic() - t0
    text, durations = normalise(script.name, out, err, rc)
    return Run(rc, out, err, wall, durations, text)


def check_import(python: str, module: str) -> str | None:
    p = subprocess.run(
        [python, "-c", f"import {module}"], check=False, capture_output=True, text=True
    )
    if p.returncode == 0:
        return None
    return (p.stderr.strip().splitlines() or ["?"])[-1]


def compare(a: Run, b: Run, tol: float) -> list[str]:
    """Reasons why b differs from a (empty list: PASS)."""
    why = []
    if a.text != b.text:
        why.append("output differs")
    if len(a.durations) == len(b.durations):
        bad = [(x, y) for x, y in zip(a.durations, b.durations, strict=True) if abs(x - y) > tol]
        if bad:
            why.append("durations differ: " + ", ".join(f"{x:g}s vs {y:g}s" for x, y in bad))
    return why


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="examples only, skip the benchmark part")
    ap.add_argument(
        "--against",
        default="ferroloop",
        choices=["ferroloop", "uvloop", "asyncio"],
        help="loop compared with stdlib asyncio (uvloop/asyncio: harness self-checks)",
    )
    ap.add_argument(
        "-k", dest="select", default="", help="only examples whose file name contains this"
    )
    ap.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=16,
        help="parallel subprocesses (they mostly sleep; default 16)",
    )
    ap.add_argument(
        "--tolerance",
        type=float,
        default=0.3,
        help="max difference of measured durations, seconds (default 0.3)",
    )
    ap.add_argument("--timeout", type=float, default=60.0, help="per-run timeout, seconds")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every example's output")
    args = ap.parse_args()

    python = sys.executable
    other = args.against
    missing = check_import(python, other) if other != "asyncio" else None
    if missing:
        print(f"demo: cannot run on {other}: `{python} -c 'import {other}'` failed: {missing}")
        if other == "ferroloop":
            print(
                "demo: build it first (maturin develop); `--against uvloop` checks the harness meanwhile"
            )
        return 2

    examples = sorted(p for p in SEEDS.glob("[0-9][0-9]_*.py") if args.select in p.name)
    if not examples:
        print("demo: no examples selected")
        return 2
    print(
        f"Seed examples: {len(examples)} scripts from {SEEDS.relative_to(HERE.parent)}/ "
        "(the examples of the project's seed tutorials), "
        f"each run as `{LOOP_CMD['asyncio'].format(script='X.py')}` and "
        f"`{LOOP_CMD[other].format(script='X.py')}` (random seeded with 0), {args.jobs} in parallel"
    )

    # Show (and check) what each side really runs on, so a misconfigured run
    # cannot compare asyncio with itself.
    for loop in ("asyncio", other):
        p = subprocess.run(
            [python, str(RUNNER), loop, str(HERE / "_probe_loop.py")],
            check=False,
            capture_output=True,
            text=True,
        )
        probe = p.stdout.strip() or (p.stderr.strip().splitlines() or ["?"])[-1]
        print(f"  {loop:>9}: {probe}")
        if p.returncode != 0 or (loop != "asyncio" and f"loop={loop}." not in probe):
            print(f"demo: {loop} side does not run on {loop}")
            return 2
    print()

    # (example, side, loop): side 0 = stdlib asyncio, side 1 = the loop under test
    jobs = [
        (ex, side, loop)
        for ex in sorted(examples, key=lambda p: -EXPECTED.get(p.name[:2], 1))
        for side, loop in enumerate(("asyncio", other))
    ]
    results: dict[tuple[Path, int], Run] = {}
    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futs = {
            pool.submit(run_one, python, loop, ex, args.timeout): (ex, side)
            for ex, side, loop in jobs
        }
        for f in cf.as_completed(futs):
            results[futs[f]] = f.result()
    elapsed = time.monotonic() - t0

    w = max(len(p.stem) for p in examples)
    head = f"{'example':<{w}}  {'asyncio':>8}  {other:>9}  result"
    print(head)
    print("-" * len(head))
    failed = []
    for ex in examples:
        a, b = results[(ex, 0)], results[(ex, 1)]
        why = compare(a, b, args.tolerance)
        status = "PASS" if not why else "FAIL"
        if a.rc != 0 and not why:
            status = f"PASS (both exit {a.rc})"
        print(
            f"{ex.stem:<{w}}  {a.wall:7.2f}s  {b.wall:8.2f}s  {status}"
            + (f"  ({'; '.join(why)})" if why else "")
        )
        if why:
            failed.append((ex, a, b, why))
        elif args.verbose:
            print("    " + a.text.rstrip("\n").replace("\n", "\n    "))
    print("-" * len(head))
    print(
        f"{len(examples) - len(failed)}/{len(examples)} PASS  (wall time {elapsed:.1f}s, "
        f"slowest single run {max(r.wall for r in results.values()):.1f}s)"
    )

    for ex, a, b, why in failed:
        print(f"\n=== FAIL {ex.name}: {'; '.join(why)}")
        if a.text != b.text:
            diff = difflib.unified_diff(
                a.text.splitlines(),
                b.text.splitlines(),
                f"asyncio   ({LOOP_CMD['asyncio'].format(script=ex.name)})",
                f"{other} ({LOOP_CMD[other].format(script=ex.name)})",
                lineterm="",
                n=3,
            )
            print("\n".join(diff))
        print(f"measured durations: asyncio {a.durations}  {other} {b.durations}")

    if not args.quick:
        print(
            "\n=== Speed: bench/run.py --quick (median of 3 fresh-process runs per loop) ===\n",
            flush=True,
        )
        p = subprocess.run(
            [python, str(REPO / "bench" / "run.py"), "--quick", "--no-save"],
            check=False,
            cwd=str(REPO),
        )
        if p.returncode != 0:
            print(f"demo: benchmark run failed (exit {p.returncode})")
            return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
