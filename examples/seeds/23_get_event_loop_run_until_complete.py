# ruff: noqa -- verbatim seed code (see below), intentionally not linted or reformatted
# Seed: /work/shared/seeds/004_d222d4da7895f040.txt -- "Asyncio Fundamentals: Coroutines, Tasks, and Futures"
# (HTML-stripped text: indentation and blank lines were lost; both reconstructed here,
# tokens and line order unchanged.)
# "Event Loop: The Heart of Asyncio": the two-line fragment
#     loop = asyncio.get_event_loop()
#     loop.run_until_complete(say_hello())
# Glue: "import asyncio" and say_hello() added, copied from the article's first
# example ("Declaring and Running Coroutines"), which the fragment refers to.

# --- added glue (from the seed's say_hello block) ---
import asyncio

async def say_hello():
    print("Hello")
    await asyncio.sleep(1)
    print("World")
# --- end of glue; the fragment itself: ---

loop = asyncio.get_event_loop()
loop.run_until_complete(say_hello())
