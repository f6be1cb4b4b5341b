"""Self-test of the harness mechanics: ``python -m conformance.selftest``.

Runs ``conformance.selftest.mechanics`` (synthetic tests that pass, fail,
hang, hang with SIGALRM blocked, segfault, exit, break fixtures, create
loops) through the real parent/child machinery, with a FAKE ferroloop
(``selftest/fake``, stdlib-based) on the path, and checks every outcome.
Takes about 25 s.
"""
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

EXPECTED = {
    # id suffix: (status, ferro_loops)
    "A_Basic.test_1_pass": ("pass", 0),
    "A_Basic.test_2_fail": ("fail", 0),
    "A_Basic.test_3_error": ("error", 0),
    "A_Basic.test_4_skip": ("skip", 0),
    "A_Basic.test_5_subtest_fail": ("fail", 0),
    "A_Basic.test_6_xfail": ("pass", 0),
    "B_Hang.test_1_hang": ("timeout", 0),
    "B_Hang.test_2_hang_with_sigalrm": ("timeout", 0),
    "B_Hang.test_3_after_hangs": ("pass", 0),
    "C_Crash.test_1_segfault": ("crash", 0),
    "C_Crash.test_2_exit": ("crash", 0),
    "C_Crash.test_3_after_crash": ("pass", 0),
    "D_SetUpClassFails.test_1": ("error", 0),
    "D_SetUpClassFails.test_2": ("error", 0),
    "E_Loops.test_1_new_event_loop": ("pass", 1),
    "E_Loops.test_2_run": ("pass", 1),
    "E_Loops.test_3_no_loop": ("pass", 0),
    "E_Loops.test_4_after_policy_reset": ("pass", 1),
    "E_Loops.test_5_stdlib_policy": ("pass", 1),
    "F_Isolated.test_1": ("pass", 1),
    "G_TearDownClassFails.test_1": ("pass", 0),
    "<tearDownClass (conformance.selftest.mechanics.G_TearDownClassFails)>":
        ("error", 0),
    "H_Hangs.test_1": ("timeout", 0),
    "H_Hangs.test_2": ("timeout", 0),
    "H_Hangs.test_3": ("timeout", 0),
    "H_Hangs.test_4": ("notrun", 0),
    "I_Last.test_1": ("pass", 0),
    "J_SetUpClassSkips.test_1": ("skip", 0),
    "K_ForkThenCrash.test_1_forked_grandchild_keeps_pipe": ("crash", 0),
    "K_ForkThenCrash.test_2_after": ("pass", 0),
}


def main():
    out = tempfile.mkdtemp(prefix="conformance-selftest-")
    jsonl = os.path.join(out, "r.jsonl")
    cmd = [sys.executable, "-m", "conformance.run",
           "--modules", "conformance.selftest.mechanics",
           "--extra-path", os.path.join(HERE, "fake"),
           "--timeout", "4", "--passes", "loop", "-q",
           "--log-dir", os.path.join(out, "logs"),
           "--results-md", os.path.join(out, "RESULTS.md"),
           "--results-jsonl", jsonl]
    subprocess.run(cmd, cwd=ROOT)
    got = {}
    with open(jsonl) as f:
        for line in f:
            r = json.loads(line)
            got[r["id"].split("mechanics.", 1)[1]] = r
    bad = 0
    for key, (status, loops) in EXPECTED.items():
        r = got.pop(key, None)
        if r is None:
            print(f"MISSING  {key}")
            bad += 1
        elif r["status"] != status or bool(r.get("ferro_loops")) != bool(loops):
            print(f"WRONG    {key}: {r['status']} loops={r['ferro_loops']} "
                  f"(expected {status} loops={loops})")
            bad += 1
        elif status == "timeout" and "test_" not in r.get("tb", ""):
            print(f"WRONG    {key}: timeout without a faulthandler dump")
            bad += 1
    for key in got:
        print(f"UNEXPECTED {key}")
        bad += 1
    n = len(EXPECTED)
    print(f"selftest: {n - bad} passed, {bad} failed")
    if not bad:
        import shutil
        shutil.rmtree(out, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
