# ruff: noqa -- verbatim seed code (see below), intentionally not linted or reformatted
# Seed: /work/shared/seeds/004_d222d4da7895f040.txt -- "Asyncio Fundamentals: Coroutines, Tasks, and Futures"
# (HTML-stripped text: indentation and blank lines were lost; both reconstructed here,
# tokens and line order unchanged.)
# "Awaiting Coroutines".
# Glue: "import asyncio" added (the block relies on the article's first example's import).

import asyncio  # added

async def greet():
    print("Greetings...")
    await asyncio.sleep(2)
    print("Greetings completed.")

async def main():
    await greet()

asyncio.run(main())
