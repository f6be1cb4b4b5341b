# ruff: noqa -- verbatim seed code (see below), intentionally not linted or reformatted
# Seed: /work/shared/seeds/004_d222d4da7895f040.txt -- "Asyncio Fundamentals: Coroutines, Tasks, and Futures"
# (HTML-stripped text: indentation and blank lines were lost; both reconstructed here,
# tokens and line order unchanged.)
# "Scheduling Multiple Tasks Concurrently".
# Glue: "import asyncio" added (the block relies on the article's first example's import).

import asyncio  # added

async def task_one():
    await asyncio.sleep(1)
    print("Task One Complete")

async def task_two():
    await asyncio.sleep(2)
    print("Task Two Complete")

async def main():
    task1 = asyncio.create_task(task_one())
    task2 = asyncio.create_task(task_two())
    await task1
    await task2

asyncio.run(main())
