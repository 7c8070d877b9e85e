"""The last clients document, kept on disk so a restarted bridge can serve while the backend
is down.

Without it, a bridge that starts while the backend is unreachable knows no client, so it
drops every request, and even ``failmode = safe`` cannot help. The document carries the
clients' shared secrets, so the file is sealed with AES-256-GCM under a key derived (HKDF-SHA256)
from the bridge's token. A stolen cache file alone reveals nothing; with the token file beside
it, the token itself is the bigger loss. Written atomically with mode 0600. A file that does not
decrypt (another token, truncated, tampered) is ignored with a warning, never trusted.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_MAGIC = b"OMFA-CLIENTS-1\n"
_NONCE = 12


class CacheError(Exception):
    """The cache cannot be read or written; the message names the file, never a secret."""


@dataclass(frozen=True, slots=True)
class CachedDocument:
    """A clients document as fetched from the backend (and saved here): its revision (the
    ETag) and the parsed JSON."""

    revision: str
    data: dict[str, Any]


def _key(token: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"openmfa bridge clients cache"
    ).derive(token.encode("utf-8"))


class ClientsCache:
    """Save and load the clients document in ``path``, sealed with a key from ``token``."""

    def __init__(self, path: Path, token: str) -> None:
        self.path = path
        self._aead = AESGCM(_key(token))

    def save(self, document: CachedDocument) -> None:
        """Write the document atomically (a temporary file renamed over the old one)."""
        plain = json.dumps({"revision": document.revision, "data": document.data}).encode()
        nonce = secrets.token_bytes(_NONCE)
        sealed = _MAGIC + nonce + self._aead.encrypt(nonce, plain, _MAGIC)
        temporary: Path | None = None
        try:
            # mkstemp: a new file (O_EXCL, never a link planted at a predictable name), 0600.
            descriptor, name = tempfile.mkstemp(
                dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
            )
            temporary = Path(name)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(sealed)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except OSError as exc:
            if temporary is not None:
                temporary.unlink(missing_ok=True)
            raise CacheError(f"cannot write the clients cache {self.path}: {exc}") from None

    def discard(self) -> None:
        """Delete the file (the backend refused the token it is sealed with)."""
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot delete the clients cache {self.path}: {exc}") from None

    def load(self) -> CachedDocument | None:
        """The saved document; ``None`` when there is no file. Raises :class:`CacheError`
        for a file that cannot be read or does not open with this token."""
        try:
            sealed = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CacheError(f"cannot read the clients cache {self.path}: {exc}") from None
        if not sealed.startswith(_MAGIC) or len(sealed) < len(_MAGIC) + _NONCE + 16:
            raise CacheError(f"{self.path} is not an OpenMFA clients cache")
        nonce = sealed[len(_MAGIC) : len(_MAGIC) + _NONCE]
        try:
            plain = self._aead.decrypt(nonce, sealed[len(_MAGIC) + _NONCE :], _MAGIC)
        except InvalidTag:
            raise CacheError(
                f"the clients cache {self.path} does not open with this bridge's token "
                "(saved with another token, or damaged)"
            ) from None
        try:
            content = json.loads(plain)
            revision, data = content["revision"], content["data"]
        except (ValueError, KeyError, TypeError):
            raise CacheError(f"the clients cache {self.path} is damaged") from None
        if not isinstance(revision, str) or not isinstance(data, dict):
            raise CacheError(f"the clients cache {self.path} is damaged")
        return CachedDocument(revision, data)
