"""The bridge's RADIUS protocol core, sans-IO: bytes and a clock in, decisions and bytes out.

- :mod:`.packet`: decode / verify / encode datagrams (RFC 2865, 2869, 3579, 5997).
- :mod:`.dictionary`: attribute names and types (the package's ``dictionary`` file).
- :mod:`.dedup`: RFC 5080 duplicate detection and response cache.
- :mod:`.state`: State values of challenge rounds.
- :mod:`.pending`: pushes in flight, so a new request for the same user joins one.
- :mod:`.flow`: the decision flow as a generator of effects.
- :mod:`.core`: the server object tying them together.

Nothing here opens a socket, starts a task or reads the clock by itself.
"""
