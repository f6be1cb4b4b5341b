# ruff: noqa -- verbatim seed code (see below), intentionally not linted or reformatted
# Seed: /work/shared/seeds/003_78da268977e4f56f.txt -- Understanding Tasks and Futures in Python AsyncIO: From First Principles
# Code block lines 125-154 of the seed, verbatim (nothing added).
# "What Are Tasks?": three create_task + gather

import asyncio
import time

# Let's see how Tasks work
async def cooking_step(step_name, duration):
    print(f"Starting: {step_name}")
    await asyncio.sleep(duration)
    print(f"Completed: {step_name}")
    return f"{step_name} done in {duration}s"

async def demonstrate_tasks():
    # Creating tasks explicitly
    task1 = asyncio.create_task(cooking_step("Boiling water", 2))
    task2 = asyncio.create_task(cooking_step("Chopping onions", 1))
    task3 = asyncio.create_task(cooking_step("Heating pan", 1.5))
  
    print("All tasks created and started!")
    print(f"Task 1 done? {task1.done()}")
    print(f"Task 2 done? {task2.done()}")
    print(f"Task 3 done? {task3.done()}")
  
    # Wait for all tasks to complete
    results = await asyncio.gather(task1, task2, task3)
  
    print("Final results:", results)
    print(f"Task 1 done? {task1.done()}")
    print(f"Task 2 done? {task2.done()}")
    print(f"Task 3 done? {task3.done()}")

asyncio.run(demonstrate_tasks())
