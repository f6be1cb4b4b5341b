# ruff: noqa -- verbatim seed code (see below), intentionally not linted or reformatted
# Seed: /work/shared/seeds/003_78da268977e4f56f.txt -- Understanding Tasks and Futures in Python AsyncIO: From First Principles
# Code block lines 500-546 of the seed, verbatim (nothing added).
# "Error Handling with Tasks and Futures"

import asyncio

async def error_handling_patterns():
    print("=== Error Handling Patterns ===")
  
    async def operation_that_fails():
        await asyncio.sleep(0.5)
        raise ValueError("Something went wrong!")
  
    async def operation_that_succeeds():
        await asyncio.sleep(1)
        return "Success!"
  
    # Pattern 1: Individual task error handling
    print("--- Individual Task Error Handling ---")
    task1 = asyncio.create_task(operation_that_fails())
    task2 = asyncio.create_task(operation_that_succeeds())
  
    # Handle each task individually
    try:
        result1 = await task1
    except ValueError as e:
        print(f"Task 1 failed: {e}")
  
    try:
        result2 = await task2
        print(f"Task 2 succeeded: {result2}")
    except Exception as e:
        print(f"Task 2 failed: {e}")
  
    # Pattern 2: Gather with return_exceptions
    print("\n--- Gather with Exception Handling ---")
    tasks = [
        asyncio.create_task(operation_that_fails()),
        asyncio.create_task(operation_that_succeeds()),
        asyncio.create_task(operation_that_fails())
    ]
  
    results = await asyncio.gather(*tasks, return_exceptions=True)
  
    for i, result in enumerate(results):
        if isinstance(result, Exception):
            print(f"Task {i} failed: {result}")
        else:
            print(f"Task {i} succeeded: {result}")

asyncio.run(error_handling_patterns())
