# ruff: noqa -- verbatim seed code (see below), intentionally not linted or reformatted
# Seed: /work/shared/seeds/003_78da268977e4f56f.txt -- Understanding Tasks and Futures in Python AsyncIO: From First Principles
# Code block lines 31-58 of the seed, verbatim (nothing added).
# "Understanding the Event Loop": gather of three sleeps

import asyncio
import time

# Let's see the event loop in action
async def simple_task(name, delay):
    print(f"Task {name} starting...")
    await asyncio.sleep(delay)  # This simulates a slow operation
    print(f"Task {name} completed after {delay} seconds")
    return f"Result from {name}"

# Running tasks with the event loop
async def main():
    print("Event loop demonstration:")
    start_time = time.time()
  
    # This will run tasks concurrently
    results = await asyncio.gather(
        simple_task("A", 2),
        simple_task("B", 1),
        simple_task("C", 3)
    )
  
    end_time = time.time()
    print(f"All tasks completed in {end_time - start_time:.2f} seconds")
    print("Results:", results)

# Run the event loop
asyncio.run(main())
