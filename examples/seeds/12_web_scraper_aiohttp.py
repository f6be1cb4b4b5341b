# ruff: noqa -- verbatim seed code (see below), intentionally not linted or reformatted
# Seed: /work/shared/seeds/003_78da268977e4f56f.txt -- Understanding Tasks and Futures in Python AsyncIO: From First Principles
# Code block lines 190-246 of the seed, verbatim (nothing added).
# "Building a Web Scraper": imports aiohttp, never uses the network

import asyncio
import aiohttp
import time

# Simulated web scraping (replace with real URLs if needed)
async def fetch_page(session, url, delay=1):
    """Simulate fetching a web page with artificial delay"""
    print(f"Starting to fetch: {url}")
  
    # Simulate network delay
    await asyncio.sleep(delay)
  
    # Simulate different response sizes
    content_length = len(url) * 100  # Fake content length
  
    print(f"Completed fetching: {url}")
    return {
        'url': url,
        'content_length': content_length,
        'status': 'success'
    }

async def scrape_websites():
    urls = [
        'https://example.com/page1',
        'https://example.com/page2',
        'https://example.com/page3',
        'https://example.com/page4',
        'https://example.com/page5'
    ]
  
    start_time = time.time()
  
    # Create a session (simulated)
    session = None  # In real code: async with aiohttp.ClientSession() as session:
  
    # Method 1: Creating tasks explicitly
    print("=== Creating Tasks Explicitly ===")
    tasks = []
    for url in urls:
        task = asyncio.create_task(
            fetch_page(session, url, delay=1)
        )
        tasks.append(task)
        print(f"Task created for {url}, Task object: {task}")
  
    # Wait for all tasks to complete
    results = await asyncio.gather(*tasks)
  
    end_time = time.time()
    print(f"\nAll pages scraped in {end_time - start_time:.2f} seconds")
  
    # Examine the results
    for result in results:
        print(f"URL: {result['url']}, Size: {result['content_length']} bytes")

asyncio.run(scrape_websites())
