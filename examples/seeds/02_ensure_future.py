# ruff: noqa -- verbatim seed code (see below), intentionally not linted or reformatted
# Seed: /work/shared/seeds/001_441b8b02ba9fc374.txt -- "Using Futures and Tasks in Python Asyncio"
# Code block lines 18-29 of the seed, verbatim (nothing added).
# "Futures": asyncio.ensure_future + await

import asyncio

async def compute_result():
    await asyncio.sleep(5)
    return 42

async def main():
    future = asyncio.ensure_future(compute_result())
    result = await future
    print(result)

asyncio.run(main())
