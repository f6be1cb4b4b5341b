# ruff: noqa -- verbatim seed code (see below), intentionally not linted or reformatted
# Seed: /work/shared/seeds/004_d222d4da7895f040.txt -- "Asyncio Fundamentals: Coroutines, Tasks, and Futures"
# (HTML-stripped text: indentation and blank lines were lost; both reconstructed here,
# tokens and line order unchanged.)
# "Declaring and Running Coroutines": the say_hello() block.
# Glue: the final asyncio.run(say_hello()) line is the one-line block given right
# after it in the text ("You must schedule it in the event loop").

import asyncio

async def say_hello():
    print("Hello")
    await asyncio.sleep(1)
    print("World")

asyncio.run(say_hello())  # added: from the following sentence/block of the seed
