"""The image's HEALTHCHECK: exit 0 when this container's server answers ``/readyz`` with 200.

Standard library only (the slim base has no curl) and no ``openmfa`` import, so a check costs
a few milliseconds of CPU every interval. It asks the address the server listens on, as the
``OPENMFA_HOST`` / ``OPENMFA_PORT`` variables say (every-address hosts mean loopback), over
HTTPS when ``OPENMFA_TLS_CERT_FILE`` is set.
"""

from __future__ import annotations

import os
import ssl
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
    scheme = "https" if environ.get("OPENMFA_TLS_CERT_FILE") else "http"
    return f"{scheme}://{host}:{port}/readyz"


def tls_context(environ: dict[str, str]) -> ssl.SSLContext | None:
    """For HTTPS: trust exactly the server's own certificate file. The certificate names the
    public host, not the loopback address asked here, so the name is not checked; the
    certificate itself still is (a partial chain: the leaf alone is the trust anchor)."""
    cert = environ.get("OPENMFA_TLS_CERT_FILE")
    if not cert:
        return None
    context = ssl.create_default_context(cafile=cert)
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def main() -> int:
    """0 when ready, 1 otherwise (with the reason on standard error, kept by the runtime)."""
    environ = dict(os.environ)
    url = readyz_url(environ)
    try:
        context = tls_context(environ)
        # The URL is built above from the server's own settings: http(s) to this container.
        with urllib.request.urlopen(url, timeout=4, context=context) as response:  # noqa: S310
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
        sys.stderr.write(f"openmfa-healthcheck: {url}: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
