# ruff: noqa -- verbatim seed code (see below), intentionally not linted or reformatted
# Seed: /work/shared/seeds/003_78da268977e4f56f.txt -- Understanding Tasks and Futures in Python AsyncIO: From First Principles
# Code block lines 406-492 of the seed, verbatim (nothing added).
# "Common Patterns": Queue producer/consumer + Semaphore batch

import asyncio
from typing import List, Any

# Pattern 1: Producer-Consumer with Tasks
async def producer_consumer_pattern():
    print("=== Producer-Consumer Pattern ===")
  
    async def producer(queue: asyncio.Queue, name: str):
        for i in range(5):
            await asyncio.sleep(0.5)  # Simulate work
            item = f"{name}-item-{i}"
            await queue.put(item)
            print(f"Produced: {item}")
        await queue.put(None)  # Signal completion
  
    async def consumer(queue: asyncio.Queue, name: str):
        while True:
            item = await queue.get()
            if item is None:
                queue.task_done()
                break
          
            # Simulate processing
            await asyncio.sleep(0.2)
            print(f"Consumer {name} processed: {item}")
            queue.task_done()
  
    # Create queue and tasks
    queue = asyncio.Queue(maxsize=3)
  
    # Create tasks for concurrent execution
    producer_task = asyncio.create_task(
        producer(queue, "Producer-1")
    )
    consumer_task1 = asyncio.create_task(
        consumer(queue, "Consumer-1")
    )
    consumer_task2 = asyncio.create_task(
        consumer(queue, "Consumer-2")
    )
  
    # Wait for producer to finish
    await producer_task
  
    # Wait for queue to be processed
    await queue.join()
  
    # Cancel consumers
    consumer_task1.cancel()
    consumer_task2.cancel()
  
    # Wait for cancellation
    await asyncio.gather(
        consumer_task1, 
        consumer_task2, 
        return_exceptions=True
    )

# Pattern 2: Batch processing with limited concurrency
async def batch_processing_pattern():
    print("\n=== Batch Processing with Semaphore ===")
  
    # Limit concurrent operations
    semaphore = asyncio.Semaphore(3)  # Max 3 concurrent operations
  
    async def process_item(item: str):
        async with semaphore:  # Acquire semaphore
            print(f"Processing {item}...")
            await asyncio.sleep(1)  # Simulate work
            print(f"Completed {item}")
            return f"Result for {item}"
  
    # Create many items to process
    items = [f"item-{i}" for i in range(10)]
  
    # Create tasks for all items
    tasks = [
        asyncio.create_task(process_item(item))
        for item in items
    ]
  
    # Wait for all to complete
    results = await asyncio.gather(*tasks)
    print(f"Processed {len(results)} items")

asyncio.run(producer_consumer_pattern())
asyncio.run(batch_processing_pattern())
