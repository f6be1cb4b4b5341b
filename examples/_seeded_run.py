"""Run one example script with `random` seeded, on a chosen event loop.

Used by examples/demo.py so that both runs of an example see the same random
numbers (seed 0) and differ only in the event loop:

    python examples/_seeded_run.py asyncio   SCRIPT [ARGS...]
        == random.seed(0); python SCRIPT ARGS          (stdlib asyncio)
    python examples/_seeded_run.py ferroloop SCRIPT [ARGS...]
        == random.seed(0); python -m ferroloop SCRIPT ARGS
           (runs ferroloop's own __main__ via runpy, exactly like `-m`)
    python examples/_seeded_run.py uvloop    SCRIPT [ARGS...]
        == random.seed(0); uvloop.install(); python SCRIPT ARGS
           (harness self-check only)

Nothing else is changed: the script runs as __main__ with sys.argv[0] = SCRIPT
and its directory first on sys.path, as `python SCRIPT` would do.
"""

import os
import random
import runpy
import sys


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    loop, script, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    random.seed(0)
    if loop == "ferroloop":
        # Same as `python -m ferroloop SCRIPT ARGS`: runpy sets sys.argv[0] to
        # ferroloop/__main__.py and leaves SCRIPT ARGS in sys.argv[1:].
        sys.argv = ["-m", script, *args]
        sys.path[0] = os.getcwd()  # what `python -m` puts first on sys.path
        runpy.run_module("ferroloop", run_name="__main__", alter_sys=True)
        return
    if loop == "uvloop":
        import uvloop

        uvloop.install()
    elif loop != "asyncio":
        sys.exit(f"unknown loop {loop!r}")
    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
