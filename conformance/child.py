"""Child process: run (part of) one test_asyncio module and stream events.

Started by ``conformance.run``; one child per module (restarted after a crash
or a timeout at the test after the one that died).  Events are JSON lines
written to the file descriptor given by ``--events-fd``:

    {"ev": "hello", "notes": [...], "native_classes": [...], ...}
    {"ev": "tests", "ids": [...]}           full ordered list of test ids
    {"ev": "start", "i": N, "id": ...}
    {"ev": "result", "i": N, "id": ..., "status": ..., ...}
    {"ev": "done"}

The test's own stdout/stderr go to the module log (the parent redirects them).
A faulthandler watchdog thread dumps all tracebacks to ``--hang-file`` shortly
before the parent's per-test deadline, so a ``timeout`` record shows where the
test was stuck; SIGALRM stays free for test_events.
"""

import argparse
import faulthandler
import importlib
import json
import os
import sys
import time
import traceback
import unittest

TB_LIMIT = 6000

_events_fd = None


def emit(**ev):
    data = (json.dumps(ev, default=repr) + "\n").encode()
    while data:
        n = os.write(_events_fd, data)
        data = data[n:]


def short_id(test):
    tid = test.id()
    prefix = "test.test_asyncio."
    return tid[len(prefix):] if tid.startswith(prefix) else tid


def flatten(suite):
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from flatten(t)
        else:
            yield t


def exc_summary(err):
    etype, value, _ = err
    name = getattr(etype, "__qualname__", str(etype))
    msg = str(value).strip().splitlines()
    return f"{name}: {msg[0][:300]}" if msg else name


class StreamingResult(unittest.TestResult):
    def __init__(self, ids, start_index, counter, hang_timeout, hang_file,
                 to_run=(), module_short=""):
        super().__init__()
        self.to_run = list(to_run)
        self.module_short = module_short
        self.index = {tid: i for i, tid in enumerate(ids)}
        self.counter = counter
        self.hang_timeout = hang_timeout
        self.hang_file = hang_file
        self.cur = None
        self.reported = set()

    # -- per test --------------------------------------------------------
    def startTest(self, test):
        super().startTest(test)
        tid = short_id(test)
        self.cur = {"id": tid, "i": self.index.get(tid, -1),
                    "t0": time.monotonic(), "status": None, "summary": "",
                    "tb": "", "sub_fail": None}
        self.counter.reset()
        emit(ev="start", i=self.cur["i"], id=tid)
        if self.hang_timeout and self.hang_file is not None:
            faulthandler.dump_traceback_later(self.hang_timeout, exit=False,
                                              file=self.hang_file)

    def _set(self, status, err=None, test=None, summary=None):
        if self.cur is None:
            return
        self.cur["status"] = status
        if err is not None:
            self.cur["summary"] = exc_summary(err)
            self.cur["tb"] = self._exc_info_to_string(err, test)[-TB_LIMIT:]
        elif summary is not None:
            self.cur["summary"] = summary

    def addSuccess(self, test):
        super().addSuccess(test)
        self._set("pass")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._set("fail", err, test)

    def addError(self, test, err):
        if not isinstance(test, unittest.TestCase):   # _ErrorHolder: fixture
            super().addError(test, err)
            self.fixture_outcome(getattr(test, "description", str(test)),
                                 "error", exc_summary(err),
                                 "".join(traceback.format_exception(*err)))
            return
        super().addError(test, err)
        self._set("error", err, test)

    def fixture_outcome(self, desc, status, summ, tb):
        """setUpClass/setUpModule failed or skipped: its tests will never
        start, so report them now; other fixture errors become extra
        records."""
        tb = tb[-TB_LIMIT:]
        if desc.startswith(("setUpClass", "setUpModule")):
            scope = desc.partition(" (")[2].rstrip(")")
            for t in self.to_run:
                tid = short_id(t)
                if tid in self.reported:
                    continue
                full = t.id()
                if desc.startswith("setUpClass"):
                    hit = full.rsplit(".", 1)[0] == scope
                else:
                    hit = type(t).__module__ == scope
                if hit:
                    self.reported.add(tid)
                    what = "failed" if status == "error" else "skipped"
                    emit(ev="result", i=self.index.get(tid, -1), id=tid,
                         status=status,
                         summary=f"{desc.split()[0]} {what}: {summ}",
                         tb=tb, dur=0.0, ferro_loops=0)
        elif status == "error":
            emit(ev="fixture", id=f"{self.module_short}.<{desc}>",
                 status="error", summary=summ, tb=tb)

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        if not isinstance(test, unittest.TestCase):   # skipped fixture
            self.fixture_outcome(getattr(test, "description", str(test)),
                                 "skip", str(reason)[:300], "")
            return
        if self.cur is None or short_id(test) != self.cur["id"]:
            # class-level skip reported without startTest (not in 3.11, but
            # be safe): report directly
            tid = short_id(test)
            if tid not in self.reported:
                self.reported.add(tid)
                emit(ev="result", i=self.index.get(tid, -1), id=tid,
                     status="skip", summary=str(reason)[:300], dur=0.0,
                     ferro_loops=0)
            return
        self._set("skip", summary=str(reason)[:300])

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._set("pass", summary="expected failure")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._set("fail", summary="unexpected success")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None and self.cur is not None:
            kind = ("fail" if issubclass(err[0], test.failureException)
                    else "error")
            if self.cur["sub_fail"] is None or kind == "error":
                self.cur["sub_fail"] = kind
            if not self.cur["summary"]:
                self.cur["summary"] = (f"{subtest._subDescription()}: "
                                       f"{exc_summary(err)}")
                self.cur["tb"] = self._exc_info_to_string(err, test)[
                    -TB_LIMIT:]

    def stopTest(self, test):
        if self.hang_timeout and self.hang_file is not None:
            faulthandler.cancel_dump_traceback_later()
        cur = self.cur
        self.cur = None
        if cur is not None:
            status = cur["status"]
            if cur["sub_fail"] and status in (None, "pass"):
                status = cur["sub_fail"]
            if status is None:
                status = "error"
                cur["summary"] = cur["summary"] or "no outcome reported"
            self.reported.add(cur["id"])
            emit(ev="result", i=cur["i"], id=cur["id"], status=status,
                 summary=cur["summary"], tb=cur["tb"],
                 dur=round(time.monotonic() - cur["t0"], 3),
                 ferro_loops=self.counter.count,
                 native=bool(getattr(type(test), "_ferroloop_native", False)))
        super().stopTest(test)


def load_exclusions(path, pass_name):
    """Lines: ``[pass] <id glob>  # reason`` (the [pass] tag is optional)."""
    import fnmatch
    out = []
    if not path or not os.path.exists(path):
        return lambda tid: None
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            pat, sep, reason = line.partition("#")
            pat, reason = pat.strip(), reason.strip()
            if not sep or not reason:
                raise SystemExit(f"{path}:{lineno}: exclusion without a "
                                 "reason")
            only = None
            if pat.startswith("["):
                only, _, pat = pat[1:].partition("]")
                pat = pat.strip()
            out.append((only, pat, reason))

    def match(tid):
        for only, pat, reason in out:
            if only and only != pass_name:
                continue
            if fnmatch.fnmatchcase(tid, pat):
                return reason
        return None
    return match


def main():
    global _events_fd
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", required=True)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--events-fd", type=int, required=True)
    ap.add_argument("--loop", choices=("ferroloop", "asyncio"),
                    default="ferroloop")
    ap.add_argument("--pass-name", default="loop")
    ap.add_argument("--native-param", action="store_true")
    ap.add_argument("--replace-future-task", action="store_true")
    ap.add_argument("--native-tasks", choices=("default", "true", "false"),
                    default="default")
    ap.add_argument("--policy", choices=("ferroloop", "stdlib"),
                    default="ferroloop")
    ap.add_argument("--selector-variants", choices=("one", "all"),
                    default="one")
    ap.add_argument("--exclusions")
    ap.add_argument("--hang-file")
    ap.add_argument("--hang-after", type=float, default=0)
    ap.add_argument("--skip-class", action="append", default=[])
    ap.add_argument("--only", action="append", default=[],
                    help="fnmatch pattern(s) of test ids to run")
    args = ap.parse_args()
    _events_fd = args.events_fd
    faulthandler.enable(file=sys.stderr, all_threads=True)

    import asyncio  # noqa: F401

    from conformance import native, routing

    notes = []
    ferroloop = None
    if args.loop == "ferroloop" or args.replace_future_task:
        try:
            import ferroloop
        except Exception as exc:
            emit(ev="fatal", error=f"import ferroloop failed: {exc!r}")
            sys.exit(3)
    if args.replace_future_task:
        native.replace_future_task(ferroloop)
        notes.append("asyncio.Future/Task replaced by ferroloop's")
    factory = None
    if args.loop == "ferroloop":
        nt = {"default": None, "true": True, "false": False}[args.native_tasks]
        factory = routing.install(ferroloop, native_tasks=nt,
                                  policy=args.policy)

    modname = (args.module if "." in args.module
               else "test.test_asyncio." + args.module)
    try:
        module = importlib.import_module(modname)
    except unittest.SkipTest as exc:
        emit(ev="hello", notes=notes, module_skip=str(exc))
        emit(ev="tests", ids=[args.module + ".<module>"])
        emit(ev="result", i=0, id=args.module + ".<module>", status="skip",
             summary=f"module skipped: {exc}", dur=0.0, ferro_loops=0)
        emit(ev="done")
        os._exit(0)

    native_classes = []
    if args.loop == "ferroloop":
        from test.test_asyncio import utils as test_utils
        routing.shim_close_loop(test_utils)
        for cls_name, action in routing.retarget_selector_classes(
                module, factory, args.selector_variants):
            notes.append(f"{cls_name}: {action}")
        notes.extend(routing.retarget_mocked_base_loops(module, factory))
    if args.native_param and ferroloop is not None:
        native_classes = native.add_native_classes(module, ferroloop)
    notes.extend(routing.STATE.notes)

    suite = unittest.defaultTestLoader.loadTestsFromModule(module)
    tests = list(flatten(suite))
    ids = [short_id(t) for t in tests]
    emit(ev="hello", notes=notes, native_classes=native_classes,
         hooked_init=routing.COUNTER.hooked_init, pid=os.getpid())
    emit(ev="tests", ids=ids)

    excluded = load_exclusions(args.exclusions, args.pass_name)
    skip_classes = set(args.skip_class)
    import fnmatch
    to_run = []
    for i in range(args.start, len(tests)):
        t, tid = tests[i], ids[i]
        cls_id = tid.rsplit(".", 1)[0]
        if args.only and not any(fnmatch.fnmatchcase(tid, p)
                                 for p in args.only):
            continue
        reason = excluded(tid) if ferroloop is not None else None
        if reason:
            emit(ev="result", i=i, id=tid, status="excluded", summary=reason,
                 dur=0.0, ferro_loops=0)
            continue
        if cls_id in skip_classes:
            emit(ev="result", i=i, id=tid, status="notrun",
                 summary="not run: earlier tests of this class kept timing "
                         "out (circuit breaker)", dur=0.0, ferro_loops=0)
            continue
        to_run.append(t)

    hang_file = open(args.hang_file, "a") if args.hang_file else None
    result = StreamingResult(ids, args.start, routing.COUNTER,
                             args.hang_after, hang_file, to_run, args.module)
    run_and_finish(result, to_run, ids, short_id, hang_file, "conformance")


def run_and_finish(result, to_run, ids, id_of, hang_file, banner):
    """Runs the planned tests, gives every one a record, then leaves through
    a normal interpreter shutdown, so that crashes in finalizers at exit
    (objects freed during Py_FinalizeEx) are seen: the parent records a
    non-zero exit after "done" as a <module>.<interpreter shutdown> crash.
    """
    unittest.TestSuite(to_run).run(result)
    for t in to_run:     # safety net: every planned test gets a record
        tid = id_of(t)
        if tid not in result.reported:
            emit(ev="result", i=ids.index(tid), id=tid, status="error",
                 summary="not run (no outcome reported by unittest)",
                 dur=0.0, ferro_loops=0)
    emit(ev="done")
    sys.stdout.flush()
    sys.stderr.flush()
    if hang_file is not None:
        hang_file.close()
    print(f"===== {banner}: tests done, interpreter shutdown =====",
          flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
