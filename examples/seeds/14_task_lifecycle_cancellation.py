# ruff: noqa -- verbatim seed code (see below), intentionally not linted or reformatted
# Seed: /work/shared/seeds/003_78da268977e4f56f.txt -- Understanding Tasks and Futures in Python AsyncIO: From First Principles
# Code block lines 350-398 of the seed, verbatim (nothing added).
# "Task States and Lifecycle": lifecycle + cancellation

import asyncio

async def task_lifecycle_demo():
    print("=== Task Lifecycle Demonstration ===")
  
    async def sample_work():
        print("Work starting...")
        await asyncio.sleep(2)
        print("Work completed!")
        return "Work result"
  
    # Create task
    task = asyncio.create_task(sample_work())
    print(f"1. Task created - Done: {task.done()}, Cancelled: {task.cancelled()}")
  
    # Check status during execution
    await asyncio.sleep(0.1)  # Let it start
    print(f"2. Task running - Done: {task.done()}, Cancelled: {task.cancelled()}")
  
    # Wait for completion
    result = await task
    print(f"3. Task completed - Done: {task.done()}, Result: {result}")

# Demonstration of task cancellation
async def cancellation_demo():
    print("\n=== Task Cancellation ===")
  
    async def long_running_task():
        for i in range(10):
            print(f"Working... step {i}")
            await asyncio.sleep(0.5)
        return "All done!"
  
    task = asyncio.create_task(long_running_task())
  
    # Let it run for a bit
    await asyncio.sleep(1.5)
  
    # Cancel the task
    task.cancel()
    print("Task cancellation requested")
  
    try:
        await task
    except asyncio.CancelledError:
        print("Task was successfully cancelled")

asyncio.run(task_lifecycle_demo())
asyncio.run(cancellation_demo())
