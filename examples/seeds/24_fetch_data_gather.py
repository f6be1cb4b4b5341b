# ruff: noqa -- verbatim seed code (see below), intentionally not linted or reformatted
# Seed: /work/shared/seeds/004_d222d4da7895f040.txt -- "Asyncio Fundamentals: Coroutines, Tasks, and Futures"
# (HTML-stripped text: indentation and blank lines were lost; both reconstructed here,
# tokens and line order unchanged.)
# "Practical Examples": running multiple asynchronous tasks.
# Glue: "import asyncio" added (the block relies on the article's first example's import).

import asyncio  # added

async def fetch_data(url):
    print(f"Fetching from {url}")
    await asyncio.sleep(1)
    return f"Data from {url}"

async def main():
    urls = ["site1.com", "site2.com", "site3.com"]
    tasks = [asyncio.create_task(fetch_data(url)) for url in urls]
    results = await asyncio.gather(*tasks)
    for result in results:
        print(result)

asyncio.run(main())
