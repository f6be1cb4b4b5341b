"""Used by demo.py: print which loop, Future and Task classes asyncio.run() gets."""

import asyncio


async def main():
    loop = asyncio.get_running_loop()
    t = asyncio.current_task()
    f = loop.create_future()
    print(
        f"loop={type(loop).__module__}.{type(loop).__qualname__} "
        f"task={type(t).__module__}.{type(t).__qualname__} "
        f"future={type(f).__module__}.{type(f).__qualname__}"
    )


asyncio.run(main())
