"""Conformance harness: CPython's test.test_asyncio run against ferroloop."""
