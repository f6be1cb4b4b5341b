# ruff: noqa -- verbatim seed code (see below), intentionally not linted or reformatted
# Seed: /work/shared/seeds/003_78da268977e4f56f.txt -- Understanding Tasks and Futures in Python AsyncIO: From First Principles
# Code block lines 554-606 of the seed, verbatim (nothing added).
# "Performance Comparison": imports requests, never uses the network

import asyncio
import time
import requests  # For sync comparison (install with: pip install requests)

# Synchronous version
def sync_fetch_simulation(url, delay=1):
    """Simulate synchronous web request"""
    time.sleep(delay)  # This blocks everything
    return f"Sync result from {url}"

def sync_main():
    urls = [f"https://api{i}.example.com" for i in range(5)]
  
    start_time = time.time()
    results = []
  
    for url in urls:
        result = sync_fetch_simulation(url, 1)
        results.append(result)
  
    end_time = time.time()
    print(f"Sync version took: {end_time - start_time:.2f} seconds")
    return results

# Asynchronous version
async def async_fetch_simulation(url, delay=1):
    """Simulate asynchronous web request"""
    await asyncio.sleep(delay)  # This doesn't block other operations
    return f"Async result from {url}"

async def async_main():
    urls = [f"https://api{i}.example.com" for i in range(5)]
  
    start_time = time.time()
  
    # Create tasks for concurrent execution
    tasks = [
        asyncio.create_task(async_fetch_simulation(url, 1))
        for url in urls
    ]
  
    results = await asyncio.gather(*tasks)
  
    end_time = time.time()
    print(f"Async version took: {end_time - start_time:.2f} seconds")
    return results

# Run comparison
print("=== Performance Comparison ===")
sync_results = sync_main()
async_results = asyncio.run(async_main())

print(f"Both produced {len(sync_results)} results")
