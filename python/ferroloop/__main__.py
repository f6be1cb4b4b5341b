"""``python -m ferroloop script.py [args...]`` / ``python -m ferroloop -m module [args...]``.

Runs an unmodified asyncio program on ferroloop: the policy is installed
first, then the script runs as ``__main__`` with ``sys.argv`` as
``python script.py args...`` would give it.
"""

from __future__ import annotations

import os
import runpy
import sys

import ferroloop

USAGE = "usage: python -m ferroloop script.py [args...] | -m module [args...]"


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    ferroloop.install()
    if argv[0] == "-m":
        if len(argv) < 2:
            print(USAGE, file=sys.stderr)
            return 2
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return 0
    script = argv[0]
    sys.argv = argv
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
