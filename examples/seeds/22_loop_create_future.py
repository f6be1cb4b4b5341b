# ruff: noqa -- verbatim seed code (see below), intentionally not linted or reformatted
# Seed: /work/shared/seeds/004_d222d4da7895f040.txt -- "Asyncio Fundamentals: Coroutines, Tasks, and Futures"
# (HTML-stripped text: indentation and blank lines were lost; both reconstructed here,
# tokens and line order unchanged.)
# "Futures and Their Role in Asyncio": creating a Future manually (nothing added).

import asyncio

async def set_future(future):
    await asyncio.sleep(2)
    future.set_result("Future Result Ready!")

async def main():
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    asyncio.create_task(set_future(future))
    result = await future
    print(result)

asyncio.run(main())
