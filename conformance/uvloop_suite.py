"""Run uvloop's own test suite against ferroloop.

Usage (from the repository root, with the project venv):

    .venv/bin/python -m conformance.uvloop_suite          # part of make conformance
    .venv/bin/python -m conformance.uvloop_suite --modules test_base,test_dns
    .venv/bin/python -m conformance.uvloop_suite --loop asyncio   # control run

At run time the uvloop sdist of the installed uvloop version is downloaded
with pip into a scratch directory (never into the repository), its ``tests/``
directory is extracted there, and the selected test modules are run, one
child process per module, under the watchdog of ``conformance.run``
(``ModuleRunner``: per-test timeout, crash/timeout recovery, restart at the
next test).

Retargeting (inside each child, before the test module is imported; the
downloaded files are not edited):

* ``uvloop._testbase.UVTestCase.new_loop`` returns ``ferroloop.new_event_loop()``
  and ``new_policy`` returns ``ferroloop.EventLoopPolicy()``;
* the ``uvloop`` module's ``new_event_loop``, ``Loop``, ``EventLoopPolicy`` and
  ``run`` are replaced by ferroloop's, for the few test bodies that use them
  directly (``class Loop(uvloop.Loop)`` in test_base, ``uvloop.new_event_loop()``
  in test_regr1's server thread/process).

Only the tests of ``UVTestCase`` subclasses run (the ``*_AIO_*`` classes run
asyncio's own loop and are not collected).  ``implementation`` stays
``'uvloop'``, so the tests take their uvloop branches.  The TLS classes of
test_tcp and test_unix run too (their pyOpenSSL tests need pyOpenSSL, a
requirements-dev package); with ``--no-tls`` they are reported as ``tls``
(not run).  Tests listed in
``uvloop_exclusions.txt`` (they test uvloop internals or uvloop-only
behaviour) are reported as ``excluded``; tests that resolve non-local host
names are reported as ``skip`` unless ``--network``.

``--loop asyncio`` retargets the same classes to asyncio's own loop instead
(a control run: a test that fails there too asserts uvloop-only behaviour).

Output: ``conformance/UVLOOP_RESULTS.md`` (full ferroloop run; other runs
write under ``conformance/out/``), ``conformance/out/uvloop*/results.jsonl``
and per-module logs in ``conformance/out/uvloop*/logs/``.
"""

import argparse
import collections
import datetime
import faulthandler
import fnmatch
import glob
import hashlib
import importlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import types
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:          # also runnable as conformance/uvloop_suite.py
    sys.path.insert(0, ROOT)

from conformance import run as base  # noqa: E402

MODULES = ["test_tcp", "test_unix", "test_sockets", "test_dns", "test_base",
           "test_context", "test_aiohttp", "test_regr1", "test_udp",
           "test_pipes", "test_process", "test_process_spawning",
           "test_signals"]
# long modules first when running in parallel
WEIGHT = {"test_tcp": 30, "test_context": 20, "test_base": 15,
          "test_unix": 10, "test_sockets": 10, "test_regr1": 8}

# TLS classes: run unless --no-tls.
TLS_CLASSES = ("test_tcp.Test_UV_TCPSSL", "test_unix.Test_UV_UnixSSL")
TLS_REASON = "TLS test class: not run (--no-tls)"

# Tests that resolve host names other than localhost/IP literals, i.e. make
# DNS queries that leave the machine.  Skipped unless --network (the run is
# loopback-only by default).
NETWORK_TESTS = [
    "test_dns.Test_UV_DNS.test_getaddrinfo_1",
    "test_dns.Test_UV_DNS.test_getaddrinfo_2",
    "test_dns.Test_UV_DNS.test_getaddrinfo_3",
    "test_dns.Test_UV_DNS.test_getaddrinfo_4",
    "test_dns.Test_UV_DNS.test_getaddrinfo_5",
    "test_dns.Test_UV_DNS.test_getaddrinfo_6",
    "test_dns.Test_UV_DNS.test_getaddrinfo_11",
    "test_dns.Test_UV_DNS.test_getaddrinfo_21",
    "test_dns.Test_UV_DNS.test_getaddrinfo_22",
    "test_dns.Test_UV_DNS.test_getaddrinfo_close_loop",
]
NETWORK_REASON = ("resolves a non-local host name (DNS query leaves the "
                  "machine); loopback-only run, --network runs it")

STATUSES = ["pass", "fail", "error", "timeout", "crash", "skip", "excluded",
            "tls", "notrun"]
BAD = base.BAD


# --------------------------------------------------------------------------
# uvloop_exclusions.txt

EXCLUDE = "exclude"
ASYNCIO_BRANCH = "asyncio-branch"


def load_list(path):
    """Entries of uvloop_exclusions.txt: ``<id glob>  # reason`` (excluded),
    or ``[asyncio-branch] <id glob>  # reason`` (run with
    ``implementation = 'asyncio'``, i.e. the test's own asyncio branch).
    Returns a list of (kind, glob, reason)."""
    out = []
    if not path or not os.path.exists(path):
        return out
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            pat, sep, reason = line.partition("#")
            pat, reason = pat.strip(), reason.strip()
            kind = EXCLUDE
            if pat.startswith("["):
                kind, _, pat = pat[1:].partition("]")
                kind, pat = kind.strip(), pat.strip()
            if kind not in (EXCLUDE, ASYNCIO_BRANCH) or not pat:
                raise SystemExit(f"{path}:{lineno}: bad entry {line!r}")
            if not sep or not reason:
                raise SystemExit(f"{path}:{lineno}: entry without a reason")
            out.append((kind, pat, reason))
    return out


def match(entries, tid, kind):
    """The reason of the first entry of ``kind`` matching ``tid``, or None."""
    for k, pat, reason in entries:
        if k == kind and fnmatch.fnmatchcase(tid, pat):
            return reason
    return None


# --------------------------------------------------------------------------
# sdist download (parent)

def uvloop_version():
    return importlib.metadata.version("uvloop")


def fetch_tests(version, scratch, sdist=None, quiet=False):
    """Download uvloop's sdist into ``scratch`` (unless ``sdist`` is given)
    and extract its ``tests/`` directory there.  Returns (tests_dir, info)."""
    if sdist is None:
        dl = os.path.join(scratch, "download")
        os.makedirs(dl)
        # --no-binary uvloop: the sdist of uvloop; its build requirements
        # (needed by pip to read the sdist's metadata) may come as wheels --
        # with ':all:' pip would compile Cython from source first (minutes).
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
               "--no-binary", "uvloop", "--disable-pip-version-check",
               "-q", "-d", dl, f"uvloop=={version}"]
        if not quiet:
            print("uvloop suite: " + " ".join(cmd[2:]), flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, cwd=scratch)
        if proc.returncode != 0:
            raise RuntimeError("pip download failed:\n" +
                               (proc.stdout + proc.stderr)[-3000:])
        found = glob.glob(os.path.join(dl, "uvloop-*.tar.gz"))
        if len(found) != 1:
            raise RuntimeError(f"expected one uvloop sdist in {dl}, found "
                               f"{os.listdir(dl)}")
        sdist = found[0]
    with open(sdist, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    out = os.path.join(scratch, "src")
    os.makedirs(out)
    with tarfile.open(sdist) as tf:
        members = []
        top = None
        for m in tf.getmembers():
            parts = m.name.split("/")
            if len(parts) >= 3 and parts[1] == "tests":
                top = parts[0]
                members.append(m)
        if not members:
            raise RuntimeError(f"no tests/ directory in {sdist}")
        tf.extractall(out, members=members, filter="data")
    tests_dir = os.path.join(out, top, "tests")
    return tests_dir, {"sdist": os.path.basename(sdist), "sha256": sha}


# --------------------------------------------------------------------------
# child process

def _stub_openssl(notes):
    """test_tcp imports pyOpenSSL at module level; only its TLS tests use it."""
    try:
        import OpenSSL.SSL  # noqa: F401
    except ImportError:
        pkg = types.ModuleType("OpenSSL")
        pkg.__path__ = []
        ssl_mod = types.ModuleType("OpenSSL.SSL")
        pkg.SSL = ssl_mod
        sys.modules["OpenSSL"] = pkg
        sys.modules["OpenSSL.SSL"] = ssl_mod
        notes.append("pyOpenSSL is not installed: an empty `OpenSSL.SSL` stub "
                     "module lets test_tcp import (only its TLS tests use "
                     "pyOpenSSL, and they are not run)")


def retarget(loop_kind, notes):
    """Point uvloop's UVTestCase (and the uvloop module's loop factories) at
    ferroloop, or at asyncio's own loop for the control run."""
    import asyncio

    import uvloop
    from uvloop import _testbase as tb

    from conformance import routing

    if loop_kind == "uvloop":            # harness self-check: no retargeting
        routing.COUNTER.loop_types = (uvloop.Loop,)
        routing.COUNTER.hooked_init = False
        notes.append("uvloop's own loop (no retargeting; harness self-check)")
        return tb
    if loop_kind == "ferroloop":
        import ferroloop
        loop_cls = ferroloop.Loop
        routing.COUNTER.loop_types = (loop_cls,)
        routing.COUNTER.hooked_init = routing._hook_loop_init(loop_cls)
        raw_new = ferroloop.new_event_loop
        policy_cls = ferroloop.EventLoopPolicy
        run = ferroloop.run
    else:
        loop_cls = asyncio.SelectorEventLoop
        raw_new = asyncio.SelectorEventLoop
        policy_cls = asyncio.DefaultEventLoopPolicy
        run = asyncio.run

    def new_event_loop():
        return routing.COUNTER.note(raw_new())

    def new_loop(self):
        return new_event_loop()

    def new_policy(self):
        return policy_cls()

    tb.UVTestCase.new_loop = new_loop
    tb.UVTestCase.new_policy = new_policy
    uvloop.new_event_loop = new_event_loop
    uvloop.Loop = loop_cls
    uvloop.EventLoopPolicy = policy_cls
    uvloop.run = run
    notes.append(f"uvloop._testbase.UVTestCase.new_loop/new_policy and "
                 f"uvloop.new_event_loop/Loop/EventLoopPolicy/run -> "
                 f"{loop_kind}")
    return tb


def _result_class():
    from conformance import child

    class UVResult(child.StreamingResult):
        """Adds the first unexpected exception-handler call to the summary
        of uvloop's tearDown failure 'unexpected calls to
        loop.call_exception_handler()' (the contexts are otherwise only
        printed to the log)."""

        def addFailure(self, test, err):
            super().addFailure(test, err)
            ctxs = getattr(test, "_BaseTestCase__unhandled_exceptions", None)
            cur = self.cur
            if (ctxs and cur is not None
                    and "call_exception_handler" in cur["summary"]):
                first = ctxs[0]
                cur["summary"] += (
                    f" -- {len(ctxs)} call(s), first: "
                    f"{str(first.get('message'))[:120]!r}"
                    + (f" {first['exception']!r}"[:200]
                       if first.get("exception") is not None else ""))

    return UVResult


def child_main(argv):
    from conformance import child, routing

    ap = argparse.ArgumentParser()
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--tests-dir", required=True)
    ap.add_argument("--module", required=True)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--events-fd", type=int, required=True)
    ap.add_argument("--loop", choices=("ferroloop", "asyncio", "uvloop"),
                    default="ferroloop")
    ap.add_argument("--exclusions")
    ap.add_argument("--network", action="store_true")
    ap.add_argument("--hang-file")
    ap.add_argument("--hang-after", type=float, default=0)
    ap.add_argument("--skip-class", action="append", default=[])
    ap.add_argument("--only", action="append", default=[])
    ap.add_argument("--no-tls", action="store_true")
    args = ap.parse_args(argv)
    child._events_fd = args.events_fd
    emit = child.emit
    UVResult = _result_class()
    faulthandler.enable(file=sys.stderr, all_threads=True)

    notes = []
    try:
        tb = retarget(args.loop, notes)
    except Exception as exc:
        emit(ev="fatal", error=f"retargeting failed: {exc!r}")
        sys.exit(3)
    _stub_openssl(notes)
    sys.path.insert(0, args.tests_dir)
    try:
        module = importlib.import_module(args.module)
    except unittest.SkipTest as exc:
        tid = args.module + ".<module>"
        emit(ev="hello", notes=notes)
        emit(ev="tests", ids=[tid])
        emit(ev="result", i=0, id=tid, status="skip",
             summary=f"module skipped: {exc}", dur=0.0, ferro_loops=0)
        emit(ev="done")
        os._exit(0)

    suite = unittest.defaultTestLoader.loadTestsFromModule(module)
    tests = [t for t in child.flatten(suite)
             if isinstance(t, tb.UVTestCase)
             and (not args.only or any(fnmatch.fnmatchcase(t.id(), p)
                                       for p in args.only))]
    ids = [t.id() for t in tests]
    emit(ev="hello", notes=notes, hooked_init=routing.COUNTER.hooked_init,
         pid=os.getpid())
    emit(ev="tests", ids=ids)

    entries = load_list(args.exclusions)
    to_run = []
    for i in range(args.start, len(tests)):
        t, tid = tests[i], ids[i]
        cls_id = tid.rsplit(".", 1)[0]
        status = reason = None
        if args.no_tls and cls_id in TLS_CLASSES:
            status, reason = "tls", TLS_REASON
        elif match(entries, tid, EXCLUDE):
            status, reason = "excluded", match(entries, tid, EXCLUDE)
        elif tid in NETWORK_TESTS and not args.network:
            status, reason = "skip", NETWORK_REASON
        elif cls_id in args.skip_class:
            status, reason = "notrun", ("not run: earlier tests of this "
                                        "class kept timing out (circuit "
                                        "breaker)")
        if status:
            emit(ev="result", i=i, id=tid, status=status, summary=reason,
                 dur=0.0, ferro_loops=0)
            continue
        if match(entries, tid, ASYNCIO_BRANCH):
            t.implementation = "asyncio"      # instance attribute
        to_run.append(t)

    hang_file = open(args.hang_file, "a") if args.hang_file else None
    result = UVResult(ids, args.start, routing.COUNTER, args.hang_after,
                      hang_file, to_run, args.module)
    child.run_and_finish(result, to_run, ids, lambda t: t.id(), hang_file,
                         "uvloop suite")


# --------------------------------------------------------------------------
# parent: supervision (conformance.run's ModuleRunner) and report

class UVModuleRunner(base.ModuleRunner):
    def child_cmd(self, start, events_fd):
        o = self.o
        cmd = [sys.executable, "-m", "conformance.uvloop_suite", "--child",
               "--tests-dir", o.tests_dir, "--module", self.module,
               "--start", str(start), "--events-fd", str(events_fd),
               "--loop", o.loop, "--hang-file", self.hang_path,
               "--hang-after", str(max(1.0, o.timeout - 2.0))]
        if o.exclusions:
            cmd += ["--exclusions", o.exclusions]
        if o.network:
            cmd.append("--network")
        if o.no_tls:
            cmd.append("--no-tls")
        for c in sorted(self.skip_classes):
            cmd += ["--skip-class", c]
        for pat in o.only or ():
            cmd += ["--only", pat]
        return cmd


def count(recs):
    c = collections.Counter(r["status"] for r in recs)
    c["total"] = len(recs)
    c["ferro"] = sum(1 for r in recs if r.get("ferro_loops"))
    c["ab"] = sum(1 for r in recs if r.get("asyncio_branch"))
    return c


def cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def one_line(rec):
    """The one-line reason of a failing record."""
    s = (rec.get("summary") or rec["status"]).strip().splitlines()
    s = s[0] if s else rec["status"]
    if rec["status"] in ("timeout", "crash", "error"):
        where = base.innermost_frame(rec.get("tb"))
        if where and where not in s:
            s += f" (at {where})"
    return s[:300]


def write_report(o, runners, wall, fetch_info):
    records = [r for mr in runners for r in mr.all_records()]
    entries = load_list(o.exclusions)
    for r in records:
        if (r["status"] not in ("excluded", "tls")
                and match(entries, r["id"], ASYNCIO_BRANCH)):
            r["asyncio_branch"] = True
    os.makedirs(os.path.dirname(o.results_jsonl), exist_ok=True)
    with open(o.results_jsonl, "w") as f:
        for r in records:
            r = {k: v for k, v in r.items()
                 if v not in ("", False, None) or k in ("id", "status")}
            f.write(json.dumps(r, sort_keys=True) + "\n")

    loop_name = {"ferroloop": "ferroloop",
                 "asyncio": "asyncio's own loop (control run)",
                 "uvloop": "uvloop, not retargeted (harness self-check)"}[
        o.loop]
    out = []
    w = out.append
    w("# ferroloop conformance: uvloop's test suite\n")
    w(f"Generated {datetime.datetime.now().isoformat(timespec='seconds')} by "
      f"`{' '.join(o.argv)}` in {wall:.0f}s wall time (sdist download "
      f"included), {o.jobs} worker(s), per-test timeout {o.timeout:.0f}s.  ")
    w(f"Python {sys.version.split()[0]}; ferroloop: {o.ferro_version}; "
      f"uvloop {o.uvloop_version} tests from `{fetch_info['sdist']}` "
      f"(sha256 `{fetch_info['sha256'][:16]}…`, downloaded from PyPI at run "
      "time into a scratch directory; not part of this repository).  ")
    w(f"Loop under test: **{loop_name}**.  Per-test results: "
      f"`{os.path.relpath(o.results_jsonl, ROOT)}`.\n")
    w("Only the `UVTestCase` classes run (`Test_UV_*`, `TestUVSockets`, "
      "`TestBaseUV`, `TestIssue39Regr`), retargeted: "
      "`UVTestCase.new_loop`/`new_policy` and the `uvloop` module's "
      "`new_event_loop`/`Loop`/`EventLoopPolicy`/`run` are the loop under "
      "test's (patched in the test process; the downloaded files are "
      "unmodified).  `implementation` stays `'uvloop'`, so tests take their "
      "uvloop branches, except the `[asyncio-branch]` entries of "
      "`conformance/uvloop_exclusions.txt` (column *asyncio branch*), whose "
      "uvloop branch asserts uvloop-only behaviour: they run with "
      "`implementation = 'asyncio'`.  Status meanings: *excluded* = listed "
      "in `conformance/uvloop_exclusions.txt` (tests of uvloop internals or "
      "uvloop-only behaviour); *tls* = TLS class not run (`--no-tls`); *skip* = skipped by the test itself, or needs external "
      "DNS (loopback-only run); *timeout* = killed by the watchdog; *crash* "
      "= the test process died; *ferroloop loop* = tests during which a "
      "ferroloop loop was created.\n")
    cols = ["module", "tests"] + [
        {"notrun": "not run"}.get(s, s) for s in STATUSES] + [
        "asyncio branch", "ferroloop loop", "time"]
    w("| " + " | ".join(cols) + " |")
    w("|" + "|".join("---" if i == 0 else "--:" for i in range(len(cols)))
      + "|")
    total = collections.Counter()
    for mr in runners:
        c = count(mr.all_records())
        total.update(c)
        w("| " + " | ".join(str(x) for x in (
            [mr.module, c["total"]] + [c[s] for s in STATUSES] +
            [c["ab"], c["ferro"], f"{mr.elapsed:.0f}s"])) + " |")
    w("| " + " | ".join(str(x) for x in (
        ["**total**", total["total"]] + [total[s] for s in STATUSES] +
        [total["ab"], total["ferro"], f"{wall:.0f}s"])) + " |")

    def section(title, rows, header, cells):
        """A "## title (n)" section: a table of `cells(r)` per row, or None."""
        w(f"\n## {title} ({len(rows)})\n")
        if not rows:
            w("None.")
            return
        w("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        for r in rows:
            w("| " + " | ".join(cells(r)) + " |")

    def branch_result(r):
        extra = f" ({cell(r['summary'][:80])})" if r["status"] == "skip" else ""
        return r["status"] + extra

    section("Failures and errors", [r for r in records if r["status"] in BAD],
            ("test", "status", "reason"),
            lambda r: (f"`{r['id']}`", r["status"], cell(one_line(r))))
    section("Excluded", [r for r in records if r["status"] == "excluded"],
            ("test", "reason"),
            lambda r: (f"`{r['id']}`", cell(r["summary"])))
    section("Run with the test's asyncio branch",
            [r for r in records if r.get("asyncio_branch")],
            ("test", "result", "why the uvloop branch is not used"),
            lambda r: (f"`{r['id']}`", branch_result(r),
                       cell(match(entries, r["id"], ASYNCIO_BRANCH))))
    section("Skipped", [r for r in records if r["status"] == "skip"],
            ("test", "reason"),
            lambda r: (f"`{r['id']}`", cell(r["summary"][:200])))
    notes = sorted({n for mr in runners for n in mr.notes})
    if notes:
        w("\n## Harness adaptations\n")
        for n in notes:
            w(f"- {n}")
    w("")
    os.makedirs(os.path.dirname(o.results_md), exist_ok=True)
    with open(o.results_md, "w") as f:
        f.write("\n".join(out))
    return records


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m conformance.uvloop_suite",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--modules", default=None,
                    help="comma list of uvloop test modules (default: "
                         + ",".join(MODULES) + ")")
    ap.add_argument("--timeout", type=float, default=30.0,
                    help="per-test watchdog in seconds (default 30)")
    ap.add_argument("--only", action="append",
                    help="fnmatch pattern on test ids, e.g. "
                         "'test_tcp.Test_UV_TCP.test_create_server_*' "
                         "(repeatable)")
    ap.add_argument("--loop", choices=("ferroloop", "asyncio", "uvloop"),
                    default="ferroloop",
                    help="'asyncio' retargets the UV classes to asyncio's "
                         "own loop (control run); 'uvloop' runs them "
                         "unchanged on uvloop (harness self-check)")
    ap.add_argument("-j", "--jobs", type=int, default=1,
                    help="modules run in parallel (default 1: several "
                         "tests assert tight timings)")
    ap.add_argument("--network", action="store_true",
                    help="also run the tests that resolve non-local host "
                         "names")
    ap.add_argument("--no-tls", action="store_true",
                    help="report the TLS classes as not run")
    ap.add_argument("--sdist", default=None,
                    help="use this uvloop sdist instead of downloading it")
    ap.add_argument("--keep-scratch", action="store_true",
                    help="keep the scratch directory (sdist, tests)")
    ap.add_argument("--exclusions",
                    default=os.path.join(HERE, "uvloop_exclusions.txt"))
    ap.add_argument("--no-exclusions", action="store_true")
    ap.add_argument("--idle-timeout", type=float, default=120)
    ap.add_argument("--exit-timeout", type=float, default=30)
    ap.add_argument("--module-budget", type=float, default=300,
                    help="seconds per module (default 300)")
    ap.add_argument("--deadline", type=float, default=900,
                    help="seconds for the whole run (default 900)")
    ap.add_argument("--circuit-breaker", type=int, default=3)
    ap.add_argument("--tb-chars", type=int, default=2000)
    ap.add_argument("--results-md", default=None)
    ap.add_argument("--results-jsonl", default=None)
    ap.add_argument("--log-dir", default=None)
    ap.add_argument("--check", action="store_true",
                    help="exit 1 if any test fails, errors, times out or "
                         "crashes")
    ap.add_argument("-q", "--quiet", action="store_true")
    o = ap.parse_args(argv)
    o.argv = ["python -m conformance.uvloop_suite"] + list(argv)
    o.extra_path = []
    if o.no_exclusions:
        o.exclusions = None
    o.modules = ([m.strip() for m in o.modules.split(",") if m.strip()]
                 if o.modules else list(MODULES))
    full = (o.loop == "ferroloop" and o.modules == MODULES and not o.only
            and o.exclusions is not None and not o.no_tls)
    tag = "uvloop" if o.loop == "ferroloop" else f"uvloop-{o.loop}"
    outdir = os.path.join(HERE, "out", tag)
    if o.log_dir is None:
        o.log_dir = os.path.join(outdir, "logs")
    if o.results_md is None:
        o.results_md = (os.path.join(HERE, "UVLOOP_RESULTS.md") if full
                        else os.path.join(outdir, "UVLOOP_RESULTS.md"))
    if o.results_jsonl is None:
        o.results_jsonl = os.path.join(outdir, "results.jsonl")
    return o


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child_main(argv)
    o = parse_args(argv)
    t0 = time.monotonic()
    o.uvloop_version = uvloop_version()
    o.ferro_version = "not used"
    if o.loop == "ferroloop":
        probe = subprocess.run(
            [sys.executable, "-c", "import ferroloop; print(getattr("
             "ferroloop, '__version__', '(no __version__)'))"],
            capture_output=True, text=True, cwd=tempfile.gettempdir())
        if probe.returncode != 0:
            print("uvloop suite: cannot import ferroloop with "
                  f"{sys.executable}:\n{probe.stderr.strip()[-2000:]}",
                  file=sys.stderr)
            return 2
        o.ferro_version = probe.stdout.strip()
    for m in o.modules:
        if m not in MODULES:
            print(f"uvloop suite: unknown module {m!r} (choose from "
                  f"{', '.join(MODULES)})", file=sys.stderr)
            return 2

    scratch = tempfile.mkdtemp(prefix="ferroloop-uvloop-suite-")
    try:
        try:
            o.tests_dir, info = fetch_tests(o.uvloop_version, scratch,
                                            o.sdist, o.quiet)
        except (RuntimeError, OSError, tarfile.TarError) as exc:
            print(f"uvloop suite: cannot get uvloop {o.uvloop_version}'s "
                  f"tests: {exc}", file=sys.stderr)
            return 3
        if not o.quiet:
            print(f"uvloop suite: {info['sdist']} tests in {o.tests_dir} "
                  f"({time.monotonic() - t0:.0f}s)", flush=True)
        os.makedirs(o.log_dir, exist_ok=True)
        deadline = base.Deadline(o.deadline)
        jobs = sorted(o.modules, key=lambda m: -WEIGHT.get(m, 5))
        runners = []
        lock = threading.Lock()
        pass_cfg = {"name": "uvloop", "loop": o.loop}

        def worker():
            while True:
                with lock:
                    if not jobs:
                        return
                    mod = jobs.pop(0)
                mr = UVModuleRunner(o, pass_cfg, mod, o.log_dir, deadline)
                base.run_module(mr)
                with lock:
                    runners.append(mr)
                    if not o.quiet:
                        c = count(mr.all_records())
                        parts = " ".join(f"{s}={c[s]}" for s in STATUSES
                                         if c[s])
                        print(f"[{time.monotonic() - t0:5.0f}s] {mod:13s} "
                              f"{c['total']:4d} tests  {parts}  "
                              f"({mr.elapsed:.0f}s)", flush=True)

        threads = [threading.Thread(target=worker, daemon=True)
                   for _ in range(max(1, o.jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        if o.keep_scratch:
            print(f"uvloop suite: scratch kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    wall = time.monotonic() - t0
    order = {m: i for i, m in enumerate(MODULES)}
    runners.sort(key=lambda mr: order[mr.module])
    records = write_report(o, runners, wall, info)
    c = collections.Counter(r["status"] for r in records)
    failed = sum(c[s] for s in BAD)
    if not o.quiet:
        for r in records:
            if r["status"] in BAD:
                print(f"  {r['status']:8s} {r['id']}: {one_line(r)[:160]}")
    print(f"\nwrote {os.path.relpath(o.results_md)} and "
          f"{os.path.relpath(o.results_jsonl)} ({wall:.0f}s)")
    print("uvloop suite report: " + ", ".join(
        f"{s}={c[s]}" for s in STATUSES))
    return 1 if (o.check and failed) else 0


if __name__ == "__main__":
    sys.exit(main())
