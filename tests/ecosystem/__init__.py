"""Ecosystem tests: popular asyncio libraries on asyncio and ferroloop, against
real servers on loopback. A package, so that its conftest does not shadow
``tests/conftest.py`` (imported by the other tests as ``conftest``)."""
