# ruff: noqa -- verbatim seed code (see below), intentionally not linted or reformatted
# Seed: /work/shared/seeds/002_a88662326e646512.txt -- "Future & Tasks" (educative.io lesson, HTML-stripped page; code blocks are intact)
# Code block lines 49-75 of the seed, verbatim (nothing added).
# same, via loop.run_until_complete

import asyncio
from asyncio import Future

async def bar(future):
    print("bar will sleep for 3 seconds")
    await asyncio.sleep(3)
    print("bar resolving the future")
    future.done()
    future.set_result("future is resolved")

async def foo(future):
    print("foo will await the future")
    await future
    print("foo finds the future resolved")

async def main():
    future = Future()
    results = await asyncio.gather(foo(future), bar(future))

if __name__ == "__main__":
    loop = asyncio.get_event_loop()
    loop.run_until_complete(main())
    print("main exiting")

    # syntax for Python 3.7
    # asyncio.run(main())
    # print("main exiting")
