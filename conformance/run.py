"""Run CPython's test.test_asyncio against ferroloop.

Usage (from the repository root, with the project venv):

    .venv/bin/python -m conformance.run            # full run  (make conformance)
    .venv/bin/python -m conformance.run --fast     # fast subset (make test)
    .venv/bin/python -m conformance.run --loop asyncio --modules test_futures
                                                   # harness self-check on stdlib

Every module runs in its own child process (``conformance.child``), at most
``--jobs`` (default 2) at a time.  The parent is the watchdog: a test that
does not finish within ``--timeout`` seconds is recorded as ``timeout``, the
child's process group is killed and a new child resumes at the next test; a
child that dies during a test records ``crash`` for it and is restarted the
same way.  See conformance/README.md.
"""

import argparse
import collections
import datetime
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:          # also runnable as conformance/run.py
    sys.path.insert(0, ROOT)

FAST_MODULES = [
    "test_futures", "test_futures2", "test_tasks", "test_taskgroups",
    "test_timeouts", "test_waitfor", "test_locks", "test_queues",
    "test_context", "test_threads", "test_pep492", "test_runners",
]
IO_MODULES = [
    "test_events", "test_streams", "test_sock_lowlevel", "test_sendfile",
    "test_server", "test_ssl", "test_sslproto", "test_subprocess",
    "test_unix_events", "test_buffered_proto",
]
# rough relative cost, to start the long modules first
WEIGHT = {"test_tasks": 50, "test_events": 60, "test_ssl": 40,
          "test_subprocess": 40, "test_streams": 30, "test_sendfile": 25,
          "test_sock_lowlevel": 25, "test_unix_events": 20,
          "test_base_events": 20, "test_sslproto": 20, "test_futures": 15,
          "test_locks": 12, "test_selector_events": 10,
          "test_taskgroups": 10, "test_queues": 8, "test_timeouts": 8}

STATUSES = ["pass", "fail", "error", "timeout", "crash", "skip", "excluded",
            "notrun"]
BAD = ("fail", "error", "timeout", "crash", "notrun")


def all_modules():
    import test.test_asyncio as pkg
    d = os.path.dirname(pkg.__file__)
    return sorted(f[:-3] for f in os.listdir(d)
                  if f.startswith("test_") and f.endswith(".py"))


def clip(text, n, status):
    """Trim a traceback/log to n chars: hang dumps keep their head (the
    stuck frames), crashes keep head and tail (panic message, backtrace
    end), exceptions keep their tail (the exception line)."""
    text = text or ""
    if len(text) <= n:
        return text
    if status == "timeout":
        return text[:n]
    if status == "crash":
        return text[:n // 2] + "\n[...]\n" + text[-n // 2:]
    return text[-n:]


def crash_hint(log):
    """A short cause from a crash log: Rust panic or fatal Python error."""
    lines = (log or "").splitlines()
    for i, line in enumerate(lines):
        if "panicked at" in line:
            msg = " ".join(x.strip() for x in lines[i + 1:i + 3]
                           if x.strip() and not x.startswith("stack"))
            return f"Rust panic: {msg[:200]}"
    for line in lines:
        if line.startswith("Fatal Python error"):
            return line[:200]
    return ""


class Deadline:
    def __init__(self, seconds):
        self.t = time.monotonic() + seconds if seconds else None

    def expired(self):
        return self.t is not None and time.monotonic() > self.t


class ModuleRunner:
    """Supervise the child process(es) for one (pass, module)."""

    def __init__(self, opts, pass_cfg, module, log_dir, deadline):
        self.o = opts
        self.p = pass_cfg
        self.module = module
        self.deadline = deadline
        tag = f"{pass_cfg['name']}-{module}"
        self.log_path = os.path.join(log_dir, tag + ".log")
        self.hang_path = os.path.join(log_dir, tag + ".hang")
        self.ids = None
        self.results = {}          # id -> record
        self.extra = []            # fixture / module-level records
        self.notes = []
        self.native_classes = []
        self.hooked_init = None
        self.skip_classes = set()
        self.consec_timeouts = collections.Counter()
        self.starts = 0
        self.t_start = None

    # -- helpers ---------------------------------------------------------
    def record(self, tid, status, summary="", tb="", dur=0.0,
               ferro_loops=0, native=False, extra=False):
        rec = {"pass": self.p["name"], "module": self.module, "id": tid,
               "status": status, "summary": summary,
               "tb": clip(tb, self.o.tb_chars, status)
                     if status in BAD else "",
               "dur": dur, "ferro_loops": ferro_loops, "native": native}
        if extra:
            self.extra.append(rec)
        else:
            self.results[tid] = rec
        return rec

    def child_cmd(self, start, events_fd):
        p = self.p
        cmd = [sys.executable, "-m", "conformance.child",
               "--module", self.module, "--start", str(start),
               "--events-fd", str(events_fd), "--loop", p["loop"],
               "--pass-name", p["name"],
               "--native-tasks", p.get("native_tasks", self.o.native_tasks),
               "--policy", self.o.policy,
               "--selector-variants", self.o.selector_variants,
               "--hang-file", self.hang_path,
               "--hang-after", str(max(1.0, self.o.timeout - 2.0))]
        if p.get("native_param"):
            cmd.append("--native-param")
        if p.get("replace"):
            cmd.append("--replace-future-task")
        if self.o.exclusions:
            cmd += ["--exclusions", self.o.exclusions]
        for c in sorted(self.skip_classes):
            cmd += ["--skip-class", c]
        for pat in self.o.only or ():
            cmd += ["--only", pat]
        return cmd

    def hang_tail(self, offset):
        try:
            with open(self.hang_path, errors="replace") as f:
                f.seek(offset)
                # innermost frames of the stuck thread come first
                return f.read()[:self.o.tb_chars * 2]
        except OSError:
            return ""

    def log_since(self, offset):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n=3000):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(0, size - n))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    # -- main loop -------------------------------------------------------
    def run(self):
        self.t_start = time.monotonic()
        budget = Deadline(self.o.module_budget)
        for path in (self.log_path, self.hang_path):
            open(path, "w").close()
        start = 0
        no_progress = 0
        while True:
            if self.ids is not None and start >= len(self.ids):
                break
            if budget.expired() or self.deadline.expired():
                self.mark_rest("notrun", "not run: time budget exhausted "
                               "(module budget or global deadline)")
                break
            outcome, nxt, progressed = self.run_child(start, budget)
            if outcome == "done":
                break
            if outcome == "fatal":
                break
            no_progress = 0 if progressed else no_progress + 1
            if no_progress >= 2:
                self.mark_rest("crash", "not run: child keeps dying before "
                               "running a test; see log",
                               tb=self.log_tail())
                break
            start = nxt
        if self.ids is not None:
            self.mark_rest("notrun", "not run (no outcome reported)")
        return self

    def mark_rest(self, status, summary, tb=""):
        if self.ids is None:
            self.record(f"{self.module}.<module>", status, summary, tb)
            self.ids = [f"{self.module}.<module>"]
            return
        for tid in self.ids:
            if tid not in self.results:
                self.record(tid, status, summary, tb)

    def run_child(self, start, budget):
        """Run one child from index ``start``.

        Returns (outcome, next_start, progressed)."""
        r, w = os.pipe()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            self.o.extra_path + [ROOT] +
            ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env.setdefault("PYTHONUNBUFFERED", "1")
        cwd = tempfile.mkdtemp(prefix=f"conformance-{self.module}-")
        logf = open(self.log_path, "ab")
        logf.write(f"\n===== child start at index {start} =====\n".encode())
        logf.flush()
        self.starts += 1
        proc = subprocess.Popen(
            self.child_cmd(start, w), stdin=subprocess.DEVNULL, stdout=logf,
            stderr=subprocess.STDOUT, pass_fds=(w,), cwd=cwd, env=env,
            start_new_session=True)
        os.close(w)
        logf.close()
        buf = b""
        cur = None            # (index, id, t0, hang_offset)
        last_done = start - 1
        last_activity = time.monotonic()
        progressed = False
        outcome = None
        eof = False

        def handle(ev):
            nonlocal cur, last_done, progressed, outcome, last_activity
            kind = ev.get("ev")
            last_activity = time.monotonic()
            if kind == "tests":
                if self.ids is None:
                    self.ids = ev["ids"]
                elif self.ids != ev["ids"]:
                    self.notes.append("WARNING: test list changed between "
                                      "child restarts")
            elif kind == "hello":
                self.notes = ev.get("notes", []) or self.notes
                self.native_classes = ev.get("native_classes", [])
                self.hooked_init = ev.get("hooked_init")
            elif kind == "start":
                try:
                    off = os.path.getsize(self.hang_path)
                except OSError:
                    off = 0
                try:
                    loff = os.path.getsize(self.log_path)
                except OSError:
                    loff = 0
                cur = (ev["i"], ev["id"], time.monotonic(), off, loff)
                progressed = True
            elif kind == "result":
                st = ev["status"]
                self.record(ev["id"], st, ev.get("summary", ""),
                            ev.get("tb", ""), ev.get("dur", 0.0),
                            ev.get("ferro_loops", 0), ev.get("native", False))
                cls = ev["id"].rsplit(".", 1)[0]
                if st not in ("excluded", "notrun"):
                    self.consec_timeouts[cls] = 0
                if ev.get("i", -1) >= 0:
                    last_done = max(last_done, ev["i"])
                if cur and cur[1] == ev["id"]:
                    cur = None
            elif kind == "fixture":
                self.record(ev["id"], ev["status"], ev.get("summary", ""),
                            ev.get("tb", ""), extra=True)
            elif kind == "done":
                outcome = "done"
            elif kind == "fatal":
                outcome = "fatal"
                self.record(f"{self.module}.<module>", "error",
                            ev.get("error", "fatal"), extra=True)

        try:
            while outcome is None:
                now = time.monotonic()
                if cur is not None and now - cur[2] > self.o.timeout:
                    self.kill(proc)
                    idx, tid, t0, off, _ = cur
                    time.sleep(0.2)
                    self.drain(r, buf, handle)
                    if tid not in self.results:
                        cls = tid.rsplit(".", 1)[0]
                        self.consec_timeouts[cls] += 1
                        if (self.o.circuit_breaker and
                                self.consec_timeouts[cls] >=
                                self.o.circuit_breaker):
                            self.skip_classes.add(cls)
                        rec = self.record(
                            tid, "timeout",
                            f"no result after {self.o.timeout:.0f}s",
                            self.hang_tail(off),
                            dur=round(now - t0, 1))
                        del rec
                    return "timeout", idx + 1, True
                if cur is None and now - last_activity > self.o.idle_timeout:
                    self.kill(proc)
                    self.record(f"{self.module}.<after index {last_done}>",
                                "timeout", "child idle outside any test "
                                "(import, fixture or teardown hang)",
                                self.log_tail(), extra=True)
                    return "idle", last_done + 1, progressed
                if budget.expired() or self.deadline.expired():
                    self.kill(proc)
                    if cur is not None:
                        self.record(cur[1], "notrun", "interrupted: time "
                                    "budget exhausted")
                    return "budget", (cur[0] + 1 if cur else last_done + 1), \
                        progressed
                ready, _, _ = select.select([r], [], [], 0.5)
                if ready:
                    chunk = os.read(r, 65536)
                    if not chunk:
                        eof = True
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        if line.strip():
                            handle(json.loads(line))
                if not ready and proc.poll() is not None:
                    # exited, but a forked grandchild may still hold the
                    # pipe open: read what is there and treat it as EOF
                    time.sleep(0.1)
                    buf = self.drain(r, buf, handle)
                    if outcome is None:
                        eof = True
                if eof:
                    break
            if outcome == "done":
                try:
                    loff = os.path.getsize(self.log_path)
                except OSError:
                    loff = 0
                try:
                    rc = proc.wait(timeout=self.o.exit_timeout)
                except subprocess.TimeoutExpired:
                    self.kill(proc)
                    self.record(f"{self.module}.<interpreter shutdown>",
                                "timeout", "child did not exit within "
                                f"{self.o.exit_timeout:.0f}s after its last "
                                "test (non-daemon thread? hang in a "
                                "finalizer?)", self.log_since(loff),
                                extra=True)
                else:
                    if rc != 0:
                        why = (f"killed by signal {signal.Signals(-rc).name}"
                               if rc < 0 else f"exit status {rc}")
                        log = self.log_since(loff)
                        hint = crash_hint(log)
                        self.record(f"{self.module}.<interpreter shutdown>",
                                    "crash", "child died at interpreter "
                                    f"shutdown after its last test ({why})"
                                    + (f"; {hint}" if hint else ""),
                                    log, extra=True)
                return "done", None, progressed
            if outcome == "fatal":
                self.kill(proc)
                self.mark_rest("error", "child could not start: see log",
                               self.log_tail())
                return "fatal", None, progressed
            # EOF without "done": the child died
            try:
                rc = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill(proc)
                rc = proc.wait()
            why = (f"killed by signal {signal.Signals(-rc).name}"
                   if rc < 0 else f"exit status {rc}")
            if cur is not None:
                idx, tid, t0, off, loff = cur
                log = self.log_since(loff)
                hint = crash_hint(log)
                self.record(tid, "crash", f"child died during the test "
                            f"({why})" + (f"; {hint}" if hint else ""), log,
                            dur=round(time.monotonic() - t0, 1))
                return "crash", idx + 1, True
            self.record(f"{self.module}.<after index {last_done}>", "crash",
                        f"child died outside any test ({why})",
                        self.log_tail(), extra=True)
            return "crash", last_done + 1, progressed
        finally:
            os.close(r)
            # also reaps grandchildren left in the child's process group
            self.kill(proc)
            shutil.rmtree(cwd, ignore_errors=True)

    @staticmethod
    def drain(r, buf, handle):
        while True:
            ready, _, _ = select.select([r], [], [], 0)
            if not ready:
                return buf
            chunk = os.read(r, 65536)
            if not chunk:
                return buf
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.strip():
                    try:
                        handle(json.loads(line))
                    except ValueError:
                        pass

    @staticmethod
    def kill(proc):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def summary(self):
        c = collections.Counter(r["status"] for r in self.all_records())
        return c

    def all_records(self):
        order = {tid: i for i, tid in enumerate(self.ids or [])}
        recs = sorted(self.results.values(),
                      key=lambda r: order.get(r["id"], 1 << 30))
        return recs + self.extra


# --------------------------------------------------------------------------
# reporting

def count(recs):
    c = collections.Counter(r["status"] for r in recs)
    c["total"] = len(recs)
    c["ferro"] = sum(1 for r in recs if r.get("ferro_loops"))
    c["ferro_ran"] = sum(1 for r in recs if r.get("ferro_loops")
                         and r["status"] in ("pass", "fail", "error",
                                             "timeout", "crash"))
    return c


def fmt_row(name, c, dur=None):
    cells = [name, c["total"]] + [c[s] for s in STATUSES] + [c["ferro"]]
    if dur is not None:
        cells.append(f"{dur:.0f}s")
    return "| " + " | ".join(str(x) for x in cells) + " |"


def header(with_time=True):
    cols = ["module", "tests", "pass", "fail", "error", "timeout", "crash",
            "skip", "excluded", "not run", "created a ferroloop loop"]
    if with_time:
        cols.append("time")
    return ("| " + " | ".join(cols) + " |\n|" +
            "|".join("---" if i == 0 else "--:" for i in range(len(cols)))
            + "|")


_NORMALIZE = [
    (re.compile(r"0x[0-9a-fA-F]+"), "0x…"),
    (re.compile(r"<[^<>]* at 0x…>"), "<…>"),
    (re.compile(r"\b\d+(\.\d+)?\b"), "N"),
    (re.compile(r"'[^']{40,}'"), "'…'"),
]


_FRAME = re.compile(r'File "([^"]+)", line \d+, in (\S+)')


def innermost_frame(tb):
    """'file.py:function' of the innermost frame outside unittest."""
    frames = [f for f in _FRAME.findall(tb or "")
              if "/unittest/" not in f[0] and "/conformance/" not in f[0]]
    if not frames:
        return ""
    path, func = frames[-1]
    return f"{os.path.basename(path)}:{func}"


def cluster_key(rec):
    s = rec["summary"] or rec["status"]
    for rx, rep in _NORMALIZE:
        s = rx.sub(rep, s)
    s = s[:160]
    if rec["status"] == "error":
        where = innermost_frame(rec.get("tb"))
        if where:
            s += f" @ {where}"
    return s


def write_results(opts, runners, wall, md_path, jsonl_path):
    records = [r for mr in runners for r in mr.all_records()]
    with open(jsonl_path, "w") as f:
        for r in records:
            # compact: drop empty fields (tb/summary of passing tests, ...)
            r = {k: v for k, v in r.items()
                 if v not in ("", False, None) or k in ("id", "status")}
            f.write(json.dumps(r, sort_keys=True) + "\n")

    by_pass = collections.OrderedDict()
    for mr in runners:
        by_pass.setdefault(mr.p["name"], []).append(mr)
    out = []
    w = out.append
    w("# ferroloop conformance: CPython test.test_asyncio\n")
    w(f"Generated {datetime.datetime.now().isoformat(timespec='seconds')} "
      f"by `{' '.join(opts.argv)}` in {wall:.0f}s wall time, "
      f"{opts.jobs} worker(s), per-test timeout {opts.timeout:.0f}s.  ")
    w(f"Python {sys.version.split()[0]}; ferroloop: {opts.ferro_version}.  ")
    w("Per-test results: "
      f"`{os.path.relpath(jsonl_path, ROOT)}` (JSON lines).\n")
    w("Status meanings: *timeout* = killed by the watchdog; *crash* = the "
      "child process died during the test; *not run* = skipped by the "
      "harness (time budget, or a class whose tests kept timing out); "
      "*created a ferroloop loop* = tests during which at least one "
      "`ferroloop.Loop` was created (the others did not test ferroloop's "
      "loop, e.g. `test_utils.TestLoop`/`BaseEventLoop` based tests).\n")
    w("## Summary\n")
    w(header(with_time=False).replace("| module |", "| pass |"))
    for pname, mrs in by_pass.items():
        w(fmt_row(f"`{pname}`", count([r for mr in mrs
                                        for r in mr.all_records()])))
    w("")
    for pname, mrs in by_pass.items():
        pc = opts.passes_cfg[pname]
        w(f"\n## Pass `{pname}`: {pc['title']}\n")
        dup = sum(1 for mr in mrs for r in mr.all_records()
                  if r["status"] == "skip" and "duplicate selector variant"
                  in r["summary"])
        if dup:
            w(f"{dup} of the skips are retargeted Poll/Select selector "
              "variants of test classes, identical on ferroloop to the epoll "
              "variant that runs (`--selector-variants all` runs them).\n")
        if pc.get("replace") and pc["loop"] == "asyncio":
            w("The loops are stdlib loops in this pass, so the ferroloop-loop "
              "column is 0 by design; every Future/Task the suite creates "
              "through `asyncio.Future`/`asyncio.Task` or a loop's "
              "`create_future`/`create_task` is ferroloop's.\n")
        total = collections.Counter()
        groups = [("Core modules (fast subset)", FAST_MODULES),
                  ("I/O modules (asyncio's transports on ferroloop's native fd watches)",
                   IO_MODULES),
                  ("Other modules (mostly stdlib internals)", None)]
        seen = set()
        for title, mods in groups:
            sel = [mr for mr in mrs
                   if (mr.module in mods if mods is not None
                       else mr.module not in seen)]
            seen.update(mr.module for mr in sel)
            if not sel:
                continue
            w(f"\n### {title}\n")
            w(header())
            sub = collections.Counter()
            for mr in sorted(sel, key=lambda m: m.module):
                c = count(mr.all_records())
                sub.update(c)
                w(fmt_row(mr.module, c, mr.elapsed))
            w(fmt_row("**subtotal**", sub))
            total.update(sub)
        w("\n" + header(with_time=False))
        w(fmt_row(f"**all modules, pass {pname}**", total))
        # native parametrization table
        nat = collections.OrderedDict()
        for mr in mrs:
            for r in mr.all_records():
                if r.get("native"):
                    cls = r["id"].rsplit(".", 1)[0]
                    nat.setdefault(cls, []).append(r)
        if nat:
            w("\n### Native Future/Task parametrization (generated classes)"
              "\n")
            w(header(with_time=False).replace("| module |", "| class |"))
            ntot = collections.Counter()
            for cls, recs in nat.items():
                c = count(recs)
                ntot.update(c)
                w(fmt_row(cls, c))
            w(fmt_row("**subtotal**", ntot))
        # failure clusters
        bad = [r for mr in mrs for r in mr.all_records()
               if r["status"] in BAD]
        if bad:
            clusters = collections.defaultdict(list)
            for r in bad:
                clusters[(r["status"], cluster_key(r))].append(r)
            top = sorted(clusters.items(), key=lambda kv: -len(kv[1]))
            w(f"\n### Top failure clusters ({len(bad)} failing tests, "
              f"{len(clusters)} distinct messages)\n")
            w("| # | status | tests | message | examples |\n"
              "|--:|---|--:|---|---|")
            for n, ((st, key), recs) in enumerate(top[:opts.clusters], 1):
                ex = ", ".join(f"`{r['id']}`" for r in recs[:3])
                key = key.replace("|", "\\|").replace("\n", " ")
                w(f"| {n} | {st} | {len(recs)} | {key} | {ex} |")
        notes = sorted({f"{mr.module}: {n}" for mr in mrs for n in mr.notes})
        if notes:
            w("\n<details><summary>Harness adaptations applied in this "
              "pass</summary>\n")
            for n in notes:
                w(f"- {n}")
            w("\n</details>")
    w("")
    with open(md_path, "w") as f:
        f.write("\n".join(out))
    return records


# --------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m conformance.run",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--fast", action="store_true",
                    help="fast subset (make test): core modules, pass "
                         "'loop' only, exit 1 on any failing test")
    ap.add_argument("--loop", choices=("ferroloop", "asyncio"),
                    default="ferroloop",
                    help="'asyncio' routes nothing (harness self-check)")
    ap.add_argument("--passes", default=None,
                    help="comma list of: loop, replace, stdtasks "
                         "(default: loop,replace; --fast: loop)")
    ap.add_argument("--replace-loop", choices=("asyncio", "ferroloop"),
                    default="asyncio",
                    help="loop used by the 'replace' pass (default: stdlib "
                         "loops, so the whole suite, networking included, "
                         "exercises ferroloop's Future/Task)")
    ap.add_argument("--modules", default=None,
                    help="comma list of modules (default: all, or the fast "
                         "subset with --fast)")
    ap.add_argument("--only", action="append",
                    help="fnmatch pattern on test ids, e.g. "
                         "'test_tasks.FerroTask_*' (repeatable)")
    ap.add_argument("-j", "--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=None,
                    help="per-test watchdog in seconds (default 30; 60 "
                         "with --loop asyncio)")
    ap.add_argument("--idle-timeout", type=float, default=120,
                    help="child silent outside a test (import/teardown)")
    ap.add_argument("--exit-timeout", type=float, default=30,
                    help="seconds a child may take to shut down after its "
                         "last test")
    ap.add_argument("--module-budget", type=float, default=None,
                    help="seconds per (pass, module); default 900 full, "
                         "none --fast")
    ap.add_argument("--deadline", type=float, default=None,
                    help="seconds for the whole run; later tests are "
                         "'not run' (default 3600 full, 900 --fast)")
    ap.add_argument("--circuit-breaker", type=int, default=3,
                    help="after N consecutive timeouts in a class, mark "
                         "its remaining tests 'not run' (0 = off)")
    ap.add_argument("--no-native-param", action="store_true",
                    help="do not add the ferroloop Future/Task classes to "
                         "test_futures/test_futures2/test_tasks")
    ap.add_argument("--native-tasks", choices=("default", "true", "false"),
                    default="default",
                    help="native_tasks= for ferroloop.new_event_loop()")
    ap.add_argument("--policy", choices=("ferroloop", "stdlib"),
                    default="ferroloop",
                    help="default policy: ferroloop.EventLoopPolicy, or the "
                         "stdlib one with its loop factory routed")
    ap.add_argument("--selector-variants", choices=("one", "all"),
                    default="one")
    ap.add_argument("--exclusions",
                    default=os.path.join(HERE, "exclusions.txt"))
    ap.add_argument("--no-exclusions", action="store_true")
    ap.add_argument("--results-md", default=None)
    ap.add_argument("--results-jsonl", default=None)
    ap.add_argument("--log-dir", default=None)
    ap.add_argument("--tb-chars", type=int, default=2000)
    ap.add_argument("--clusters", type=int, default=30)
    ap.add_argument("--check", action="store_true",
                    help="exit 1 if any test fails (implied by --fast)")
    ap.add_argument("--extra-path", action="append", default=[],
                    help="directory prepended to the children's PYTHONPATH "
                         "(the self-test uses it for a fake ferroloop)")
    ap.add_argument("-q", "--quiet", action="store_true")
    o = ap.parse_args(argv)
    o.argv = ["python -m conformance.run"] + list(argv)
    o.extra_path = [os.path.abspath(p) for p in o.extra_path]
    if o.timeout is None:
        o.timeout = 60.0 if o.loop == "asyncio" else 30.0
    if o.no_exclusions:
        o.exclusions = None
    if o.fast:
        o.check = True
    if o.module_budget is None:
        o.module_budget = None if o.fast else 900
    if o.deadline is None:
        o.deadline = 900 if o.fast else 3600
    tag = "fast" if o.fast else "full"
    if o.loop == "asyncio":
        tag += "-asyncio"
    if o.log_dir is None:
        o.log_dir = os.path.join(HERE, "out", tag, "logs")
    if o.results_md is None:
        o.results_md = (os.path.join(HERE, "RESULTS.md") if tag == "full"
                        else os.path.join(HERE, "out", tag, "RESULTS.md"))
    if o.results_jsonl is None:
        o.results_jsonl = (os.path.join(HERE, "results.jsonl")
                           if tag == "full"
                           else os.path.join(HERE, "out", tag,
                                             "results.jsonl"))
    return o


def run_module(mr):
    """Runs one module's runner; a harness bug becomes an error record of
    the module, and the run goes on."""
    try:
        mr.run()
    except Exception as exc:
        import traceback
        mr.record(f"{mr.module}.<harness>", "error",
                  f"harness error: {exc!r}", traceback.format_exc(),
                  extra=True)
    mr.elapsed = time.monotonic() - mr.t_start


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    o = parse_args(argv)
    o.ferro_version = "not used"
    if o.loop == "ferroloop" or (o.passes and ("replace" in o.passes or
                                               "stdtasks" in o.passes)):
        penv = dict(os.environ)
        penv["PYTHONPATH"] = os.pathsep.join(
            o.extra_path + ([penv["PYTHONPATH"]] if penv.get("PYTHONPATH")
                            else []))
        probe = subprocess.run(
            [sys.executable, "-c",
             "import ferroloop; print(getattr(ferroloop, '__version__', "
             "'(no __version__)'))"],
            capture_output=True, text=True, cwd=tempfile.gettempdir(),
            env=penv)
        if probe.returncode != 0:
            print("conformance: cannot import ferroloop with "
                  f"{sys.executable}:\n{probe.stderr.strip()[-2000:]}",
                  file=sys.stderr)
            print("(build it first, e.g. maturin develop; or use --loop "
                  "asyncio for a harness self-check)", file=sys.stderr)
            return 2
        o.ferro_version = probe.stdout.strip()

    if o.passes:
        passes = [p.strip() for p in o.passes.split(",") if p.strip()]
    else:
        passes = ["loop"] if (o.fast or o.loop == "asyncio") else \
            ["loop", "replace"]
    native_ok = o.loop == "ferroloop" and not o.no_native_param
    o.passes_cfg = {
        "loop": {"name": "loop", "loop": o.loop, "native_param": native_ok,
                 "title": ("ferroloop loops everywhere (policy, "
                           "hard-coded loops retargeted) + native "
                           "Future/Task parametrization"
                           if o.loop == "ferroloop" else
                           "stdlib asyncio, nothing routed (harness "
                           "self-check)")},
        "stdtasks": {"name": "stdtasks", "loop": "ferroloop",
                     "native_tasks": "false",
                     "title": "ferroloop loops created with native_tasks="
                              "False (asyncio's own Future/Task), to tell "
                              "loop bugs from Future/Task bugs"},
        "replace": {"name": "replace", "loop": o.replace_loop,
                    "replace": True,
                    "title": ("asyncio.Future/Task (and asyncio.futures."
                              "Future, asyncio.tasks.Task) replaced by "
                              f"ferroloop's; {o.replace_loop} loops")},
    }
    for p in passes:
        if p not in o.passes_cfg:
            print(f"unknown pass {p!r}", file=sys.stderr)
            return 2

    if o.modules:
        modules = [m.strip() for m in o.modules.split(",") if m.strip()]
    else:
        modules = FAST_MODULES if o.fast else all_modules()
    os.makedirs(o.log_dir, exist_ok=True)
    for path in (o.results_md, o.results_jsonl):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    deadline = Deadline(o.deadline)
    jobs = [(p, m) for p in passes for m in modules]
    jobs.sort(key=lambda pm: -WEIGHT.get(pm[1], 5))
    runners = []
    lock = threading.Lock()
    t0 = time.monotonic()

    def worker():
        while True:
            with lock:
                if not jobs:
                    return
                pname, mod = jobs.pop(0)
            mr = ModuleRunner(o, o.passes_cfg[pname], mod, o.log_dir,
                              deadline)
            run_module(mr)
            with lock:
                runners.append(mr)
                if not o.quiet:
                    c = count(mr.all_records())
                    parts = " ".join(f"{s}={c[s]}" for s in STATUSES
                                     if c[s])
                    print(f"[{time.monotonic() - t0:6.0f}s] {pname:7s} "
                          f"{mod:22s} {c['total']:5d} tests  {parts}  "
                          f"ferroloop-loop={c['ferro']}  "
                          f"({mr.elapsed:.0f}s, {mr.starts} child"
                          f"{'ren' if mr.starts != 1 else ''})", flush=True)

    threads = [threading.Thread(target=worker, daemon=True)
               for _ in range(max(1, o.jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    order = {(p, m): i for i, (p, m) in
             enumerate((p, m) for p in passes for m in modules)}
    runners.sort(key=lambda mr: order[(mr.p["name"], mr.module)])
    records = write_results(o, runners, wall, o.results_md, o.results_jsonl)

    c = collections.Counter(r["status"] for r in records)
    failed = sum(c[s] for s in BAD)
    if o.check or not o.quiet:
        bad = [r for r in records if r["status"] in BAD]
        if bad and o.check:
            print("\nFailing tests:")
            for r in bad[:200]:
                print(f"  {r['status']:8s} [{r['pass']}] {r['id']}: "
                      f"{r['summary'][:160]}")
            if len(bad) > 200:
                print(f"  ... and {len(bad) - 200} more (see "
                      f"{o.results_jsonl})")
    print(f"\nwrote {os.path.relpath(o.results_md)} and "
          f"{os.path.relpath(o.results_jsonl)} ({wall:.0f}s)")
    if o.check:
        # the plain closing line CI reads ("N passed, N failed")
        print(f"conformance: {c['pass']} passed, {failed} failed, "
              f"{c['skip'] + c['excluded']} skipped")
    else:
        # report-only run: deliberately not in "N passed, N failed" form,
        # so that a report with failures is not taken for a failed gate
        print("conformance report: " + ", ".join(
            f"{s}={c[s]}" for s in STATUSES) + f" (see {o.results_md})")
    if o.check and failed:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
