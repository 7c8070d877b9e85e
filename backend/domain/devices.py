"""What a device is, as far as every layer needs to know."""

from __future__ import annotations

#: States in which a device can answer: ``pending`` until its first round trip, then ``active``.
LIVE_STATES = ("pending", "active")
#: Platforms an app declares at activation; ``reference`` is the Python reference authenticator.
PLATFORMS = ("ios", "android", "reference")
