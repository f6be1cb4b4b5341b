# ruff: noqa -- verbatim seed code (see below), intentionally not linted or reformatted
# Seed: /work/shared/seeds/001_441b8b02ba9fc374.txt -- "Using Futures and Tasks in Python Asyncio"
# Code block lines 39-50 of the seed, verbatim (nothing added).
# "Tasks": asyncio.create_task + await

import asyncio

async def compute_result():
    await asyncio.sleep(5)
    return 42

async def main():
    task = asyncio.create_task(compute_result())
    result = await task
    print(result)

asyncio.run(main())
