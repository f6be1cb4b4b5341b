# ruff: noqa -- verbatim seed code (see below), intentionally not linted or reformatted
# Seed: /work/shared/seeds/003_78da268977e4f56f.txt -- Understanding Tasks and Futures in Python AsyncIO: From First Principles
# Code block lines 262-327 of the seed, verbatim (nothing added).
# "Advanced Task Management": asyncio.wait FIRST_COMPLETED, cancel, wait_for timeout (uses random)

import asyncio
import random

async def unreliable_operation(name, failure_chance=0.3):
    """An operation that might fail or take variable time"""
    await asyncio.sleep(random.uniform(0.5, 2.0))
  
    if random.random() < failure_chance:
        raise Exception(f"Operation {name} failed!")
  
    return f"Success: {name}"

async def advanced_task_management():
    print("=== Advanced Task Management ===")
  
    # Create multiple tasks
    tasks = [
        asyncio.create_task(unreliable_operation(f"Task-{i}"))
        for i in range(5)
    ]
  
    print(f"Created {len(tasks)} tasks")
  
    # Method 1: Wait for first completion
    print("\n--- Waiting for first completion ---")
    done, pending = await asyncio.wait(
        tasks, 
        return_when=asyncio.FIRST_COMPLETED
    )
  
    print(f"First task completed: {len(done)} done, {len(pending)} pending")
  
    # Handle the completed task
    for task in done:
        try:
            result = await task
            print(f"First result: {result}")
        except Exception as e:
            print(f"First task failed: {e}")
  
    # Cancel remaining tasks
    for task in pending:
        task.cancel()
        print(f"Cancelled task: {task}")
  
    # Wait for cancellations to complete
    await asyncio.gather(*pending, return_exceptions=True)
    print("All remaining tasks cancelled")

# Example of task timeout
async def task_with_timeout():
    print("\n=== Task with Timeout ===")
  
    async def slow_operation():
        await asyncio.sleep(3)
        return "Finally done!"
  
    try:
        # This will timeout after 1 second
        result = await asyncio.wait_for(slow_operation(), timeout=1.0)
        print(f"Result: {result}")
    except asyncio.TimeoutError:
        print("Operation timed out!")

asyncio.run(advanced_task_management())
asyncio.run(task_with_timeout())
