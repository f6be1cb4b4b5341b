# ruff: noqa -- verbatim seed code (see below), intentionally not linted or reformatted
# Seed: /work/shared/seeds/001_441b8b02ba9fc374.txt -- "Using Futures and Tasks in Python Asyncio"
# Code block lines 60-73 of the seed, verbatim (nothing added).
# "Cancelling Tasks": task.cancel() after 2 s

import asyncio

async def compute_result():
    try:
        await asyncio.sleep(5)
    except asyncio.CancelledError:
        print("Computation cancelled!")

async def main():
    task = asyncio.create_task(compute_result())
    await asyncio.sleep(2)
    task.cancel()

asyncio.run(main())
