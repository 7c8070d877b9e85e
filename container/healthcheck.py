"""The image's HEALTHCHECK: exit 0 when this container's server answers ``/readyz`` with 200.

Standard library only (the slim base has no curl) and no ``openmfa`` import, so a check costs
a few milliseconds of CPU every interval. It asks the address the server listens on, as the
``OPENMFA_HOST`` / ``OPENMFA_PORT`` variables say; every-address hosts mean loopback.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

ANY_ADDRESS = {"", "0.0.0.0", "::"}  # noqa: S104 - compared against, never bound


def readyz_url(environ: dict[str, str]) -> str:
    """The ``/readyz`` URL of the server configured by ``environ``."""
    host = environ.get("OPENMFA_HOST", "")
    if host in ANY_ADDRESS:
        host = "::1" if host == "::" else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    port = environ.get("OPENMFA_PORT", "") or "8080"
    return f"http://{host}:{port}/readyz"


def main() -> int:
    """0 when ready, 1 otherwise (with the reason on standard error, kept by the runtime)."""
    url = readyz_url(dict(os.environ))
    try:
        with urllib.request.urlopen(url, timeout=4) as response:  # noqa: S310 - http:// only
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        sys.stderr.write(f"openmfa-healthcheck: {url}: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
