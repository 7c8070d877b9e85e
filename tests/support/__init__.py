"""Test helpers: a live uvicorn server on loopback, a controllable clock, database URLs."""
