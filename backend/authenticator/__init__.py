"""The reference authenticator: a small app-protocol client that behaves like a phone app.

It talks to the backend only over HTTP, exactly as the iOS / Android apps do, and keeps its
key and seed in a JSON file (mode 0600). Tests, docs and curious administrators use it.
"""
