# ruff: noqa -- verbatim seed code (see below), intentionally not linted or reformatted
# Seed: /work/shared/seeds/000_70eabce99ac4345c.txt -- "[python] Understanding the role of tasks and futures in Asyncio"
# Code block lines 32-49 of the seed, verbatim (nothing added).
# "Example Usage": create_task, check task.done() after 0.5 s

import asyncio

async def my_async_function():
    # perform some asynchronous operations
    await asyncio.sleep(1)
    return "Async task completed"

async def main():
    task = asyncio.create_task(my_async_function())
    print("Task created")

    await asyncio.sleep(0.5)

    if task.done():
        result = task.result()
        print(f"Task result: {result}")

asyncio.run(main())
