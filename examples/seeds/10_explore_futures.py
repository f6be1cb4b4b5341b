# ruff: noqa -- verbatim seed code (see below), intentionally not linted or reformatted
# Seed: /work/shared/seeds/003_78da268977e4f56f.txt -- Understanding Tasks and Futures in Python AsyncIO: From First Principles
# Code block lines 75-108 of the seed, verbatim (nothing added).
# "What Are Futures?": manual Future, set_result / set_exception

import asyncio

# Let's create and work with Futures directly
async def explore_futures():
    # Create a Future manually
    future = asyncio.Future()
  
    print("Future created:", future)
    print("Is it done?", future.done())
    print("Is it cancelled?", future.cancelled())
  
    # Set a result for the future
    future.set_result("Hello from the future!")
  
    print("After setting result:")
    print("Is it done?", future.done())
    print("Result:", future.result())
  
    return future

# Another example: Future with exception
async def future_with_exception():
    future = asyncio.Future()
  
    # Simulate an error
    future.set_exception(ValueError("Something went wrong!"))
  
    try:
        result = future.result()
    except ValueError as e:
        print(f"Future raised exception: {e}")

asyncio.run(explore_futures())
asyncio.run(future_with_exception())
