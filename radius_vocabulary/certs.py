"""Certificate fingerprints for RadSec client binding: ``SHA256:AB:CD:...`` in and out.

A RadSec connection is bound to one RADIUS client by the SHA-256 digest of the peer's
certificate (DER), as radsecproxy's ``CertificateNameCheck``-less set-ups and FreeRADIUS'
``TLS-Client-Cert-Fingerprint`` do. Both the bridge (clients document) and the backend
(``openmfa client add --cert-fingerprint``) read fingerprints with :func:`parse_fingerprint`.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

DIGEST_SIZE: Final = 32
_HEX = re.compile(r"[0-9a-f]{64}")


def parse_fingerprint(text: str) -> bytes:
    """``SHA256:AB:CD:...`` (the ``openssl x509 -fingerprint -sha256`` spelling, with or
    without the ``SHA256:`` / ``sha256 Fingerprint=`` prefix and colons) -> 32 bytes.
    Raises ValueError naming what is wrong."""
    value = text.strip()
    lowered = value.lower()
    for prefix in ("sha256 fingerprint=", "sha256:", "sha-256:"):
        if lowered.startswith(prefix):
            value = value[len(prefix) :]
            break
    digits = value.replace(":", "").lower()
    if not _HEX.fullmatch(digits):
        raise ValueError(
            f"{text!r} is not a SHA-256 fingerprint (SHA256: and 32 hex pairs, as "
            "`openssl x509 -noout -fingerprint -sha256` prints it)"
        )
    return bytes.fromhex(digits)


def format_fingerprint(digest: bytes) -> str:
    """32 bytes -> ``SHA256:AB:CD:...``."""
    return "SHA256:" + ":".join(f"{b:02X}" for b in digest)


def certificate_fingerprint(der: bytes) -> bytes:
    """The SHA-256 digest of a DER certificate."""
    return hashlib.sha256(der).digest()
