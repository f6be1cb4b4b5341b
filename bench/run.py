"""ferroloop benchmark suite (make bench).

    .venv/bin/python bench/run.py                 # 5 runs per loop, full sizes
    .venv/bin/python bench/run.py --quick         # 3 runs, sizes / 10
    .venv/bin/python bench/run.py --runs 9 -w sleep0 -w gather_tasks

Every (workload, loop) measurement is a fresh process
(`python bench/workloads.py WORKLOAD LOOP --n N`, which times only the workload,
not interpreter start-up or loop creation). Loops are interleaved -- round r runs
every workload on asyncio, uvloop, rloop, ferroloop, ferroloop-compat (the start of the
order rotates each round) -- and the table shows medians, because the machine is
small and noisy. Ratios are speed-ups of ferroloop: asyncio_time / ferroloop_time
(> 1: ferroloop is faster).

Loops that cannot be created (ferroloop not built yet, uvloop or rloop missing) are
skipped with a note. The table goes to stdout and, unless --no-save, to
bench/results.md with a machine description.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from workloads import LOOPS, WORKLOADS  # noqa: E402

COLS = LOOPS  # asyncio, uvloop, rloop, ferroloop, ferroloop-compat


def loop_available(python: str, loop: str) -> str | None:
    """None if `loop` can be created in a fresh process, else the reason."""
    code = f"import sys; sys.path.insert(0, {str(HERE)!r})\nfrom workloads import make_loop\nmake_loop({loop!r}).close()\n"
    p = subprocess.run([python, "-c", code], check=False, capture_output=True, text=True)
    if p.returncode == 0:
        return None
    return (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]


def select_loops(
    ap: argparse.ArgumentParser, python: str, spec: str, known: tuple[str, ...]
) -> tuple[list[str], list[str]]:
    """The loops of the comma-separated `spec` that can be created here, and
    a note for each that cannot (an unknown name is a usage error)."""
    notes: list[str] = []
    loops: list[str] = []
    for loop in [x for x in spec.split(",") if x]:
        if loop not in known:
            ap.error(f"unknown loop {loop!r}")
        why = loop_available(python, loop)
        if why:
            notes.append(f"{loop}: skipped ({why})")
        else:
            loops.append(loop)
    return loops, notes


def measure(
    python: str, workload: str, loop: str, n: int, gc_off: bool, timeout: float
) -> float | str:
    cmd = [python, str(HERE / "workloads.py"), workload, loop, "--n", str(n)]
    if gc_off:
        cmd.append("--no-gc")
    try:
        p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timeout > {timeout:.0f}s"
    if p.returncode != 0:
        return (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
    return float(json.loads(p.stdout.strip().splitlines()[-1])["seconds"])


def fmt_t(t: float | None) -> str:
    if t is None:
        return "n/a"
    return f"{t * 1000:.0f} ms" if t >= 0.1 else f"{t * 1000:.1f} ms"


def fmt_r(a: float | None, b: float | None) -> str:
    if a is None or b is None or b <= 0:
        return "n/a"
    return f"{a / b:.2f}x"


def fmt_load(la: tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.2f}" for x in la)


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu}; "
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.release()}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick", action="store_true", help="3 runs (unless --runs), sizes divided by 10"
    )
    ap.add_argument(
        "--runs", type=int, default=None, help="runs per (workload, loop); default 5, --quick 3"
    )
    ap.add_argument(
        "-w",
        "--workload",
        action="append",
        choices=list(WORKLOADS),
        help="only these workloads (repeatable; the floor always runs)",
    )
    ap.add_argument(
        "--loops", default=",".join(COLS), help="comma-separated subset of " + ",".join(COLS)
    )
    ap.add_argument(
        "--no-gc",
        action="store_true",
        help="gc.disable() during the timed part (default: GC on, as users run)",
    )
    ap.add_argument("--no-save", action="store_true", help="do not write bench/results.md")
    ap.add_argument("--timeout", type=float, default=300.0, help="per-process timeout, seconds")
    args = ap.parse_args()

    python = sys.executable
    runs = args.runs or (3 if args.quick else 5)
    div = 10 if args.quick else 1
    floors = ("floor", "floor_tasks")
    names = [w for w in WORKLOADS if w not in floors and (not args.workload or w in args.workload)]
    sizes = {w: max(1, WORKLOADS[w][1] // div) for w in [*names, "floor"]}

    loops, notes = select_loops(ap, python, args.loops, COLS)
    for note in notes:
        print("note:", note, file=sys.stderr)
    if not loops:
        print("no loop available", file=sys.stderr)
        return 2

    load_before = os.getloadavg()
    times: dict[tuple[str, str], list[float]] = {}
    errors: dict[tuple[str, str], str] = {}
    t_start = time.monotonic()
    total = runs * (len(names) * len(loops) + 1)
    done = 0
    for r in range(runs):
        order = loops[r % len(loops) :] + loops[: r % len(loops)]  # rotate the start each round
        for w in names:
            for loop in order:
                if (w, loop) in errors:
                    done += 1
                    continue
                res = measure(python, w, loop, sizes[w], args.no_gc, args.timeout)
                if isinstance(res, str):
                    errors[(w, loop)] = res
                else:
                    times.setdefault((w, loop), []).append(res)
                done += 1
        res = measure(python, "floor", "none", sizes["floor"], args.no_gc, args.timeout)
        if isinstance(res, float):
            times.setdefault(("floor", "none"), []).append(res)
        done += 1
        print(
            f"  round {r + 1}/{runs} done ({done}/{total} processes, {time.monotonic() - t_start:.0f}s)",
            file=sys.stderr,
            flush=True,
        )

    def med(w: str, loop: str) -> float | None:
        v = times.get((w, loop))
        return statistics.median(v) if v else None

    ferro = "ferroloop" if "ferroloop" in loops else None
    hdr = [
        "workload",
        "n",
        *[f"{x}" for x in COLS],
        "asyncio/ferroloop",
        "uvloop/ferroloop",
        "rloop/ferroloop",
        "asyncio/ferroloop-compat",
    ]
    rows = []
    for i, w in enumerate(names, 1):
        label = WORKLOADS[w][2]
        cells = [f"{i}. {label} (`{w}`)", f"{sizes[w]:,}"]
        for loop in COLS:
            if (w, loop) in errors:
                cells.append("ERROR")
            else:
                cells.append(fmt_t(med(w, loop)) if loop in loops else "n/a")
        cells.append(fmt_r(med(w, "asyncio"), med(w, "ferroloop")))
        cells.append(fmt_r(med(w, "uvloop"), med(w, "ferroloop")))
        cells.append(fmt_r(med(w, "rloop"), med(w, "ferroloop")))
        cells.append(fmt_r(med(w, "asyncio"), med(w, "ferroloop-compat")))
        rows.append(cells)
    fl = med("floor", "none")
    rows.append(
        [
            f"floor: {WORKLOADS['floor'][2]} (`floor`)",
            f"{sizes['floor']:,}",
            fmt_t(fl),
            *[""] * (len(hdr) - 3),
        ]
    )

    lines = [
        "| " + " | ".join(hdr) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(hdr) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(c) + " |" for c in rows]
    table = "\n".join(lines)

    foot = []
    if fl and "call_soon_chain" in names:
        parts = [
            f"{loop} {med('call_soon_chain', loop) / fl:.1f}x"
            for loop in loops
            if med("call_soon_chain", loop)
        ]
        foot.append(
            f"Floor: a bare Python deque loop runs {sizes['floor']:,} chained callbacks in {fmt_t(fl)}; "
            f"chained call_soon costs, relative to that floor: {', '.join(parts)}."
        )
    if ferro is None:
        foot.append("ferroloop columns are n/a: " + "; ".join(notes))
    elif notes:
        foot += ["Skipped: " + "; ".join(notes)]
    for (w, loop), msg in sorted(errors.items()):
        foot.append(f"ERROR {w} on {loop}: {msg}")
    foot.append(
        f"Times are medians of {runs} fresh-process runs per cell (loops interleaved); "
        f"ratios > 1 mean ferroloop is faster. GC {'disabled' if args.no_gc else 'enabled'} "
        f"during the timed part."
    )
    out = table + "\n\n" + "\n".join(f"- {x}" for x in foot)
    print(out)

    if not args.no_save:
        raw = ["| workload | loop | runs (s) |", "|---|---|---|"]
        for (w, loop), v in sorted(times.items()):
            raw.append(f"| {w} | {loop} | {', '.join(f'{x:.4f}' for x in v)} |")
        doc = (
            f"# ferroloop benchmark results\n\n"
            f"- Date: {_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}\n"
            f"- Machine: {machine()}\n"
            f"- Load average (1/5/15 min) before: {fmt_load(load_before)}; "
            f"after: {fmt_load(os.getloadavg())} (machine noise indicator)\n"
            f"- Command: `{' '.join([Path(python).name, 'bench/run.py', *sys.argv[1:]])}`"
            f" ({'quick: sizes / 10, ' if args.quick else ''}{runs} runs per cell)\n\n"
            f"{out}\n\n<details><summary>Raw times</summary>\n\n"
            + "\n".join(raw)
            + "\n\n</details>\n"
        )
        (HERE / "results.md").write_text(doc)
        print(f"\n(written to {HERE / 'results.md'})", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
