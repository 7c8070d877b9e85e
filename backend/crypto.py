"""Secrets at rest and one-way hashes of high-entropy tokens.

The server key (32 random bytes, file mode 0600) encrypts TOTP seeds and other secrets with
AES-256-GCM. Every ciphertext is bound to what it protects through the associated data, so a
seed copied from one row to another does not decrypt. Activation codes and API tokens carry at
least 128 bits of entropy and are stored as SHA-256 digests: guessing is hopeless, and a fast
hash keeps the lookup cheap. PINs and passwords use argon2id instead (see passwords.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from backend.errors import ServerKeyError
from backend.files import fsync_directory

KEY_BYTES = 32
_VERSION = b"\x01"
KEY_FILE_HEADER = (
    "# OpenMFA server key. Keep it secret, keep a backup; without it no seed decrypts.\n"
)


def _read_key(path: Path) -> bytes:
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ServerKeyError(f"cannot read the server key {path}: {exc}") from exc
    body = "".join(line for line in lines if line and not line.startswith("#"))
    try:
        key = base64.b64decode(body, validate=True)
    except ValueError as exc:
        raise ServerKeyError(f"the server key file {path} is not valid base64") from exc
    if len(key) != KEY_BYTES:
        raise ServerKeyError(f"the server key file {path} does not hold a 32-byte key")
    return key


def read_key(path: Path) -> bytes:
    """Read an existing key file, never creating one; :class:`ServerKeyError` if unusable."""
    return _read_key(path)


def load_or_create_key(path: Path, create: bool) -> bytes:
    """Read the key; create it (mode 0600, atomically) only when ``create`` is true."""
    if path.exists():
        return _read_key(path)
    if not create:
        raise ServerKeyError(
            f"the server key {path} is missing but the database holds secrets encrypted with "
            "it; restore the key from your backup (see docs/operations.md)"
        )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_bytes(KEY_BYTES)
    tmp = path.with_suffix(".tmp")
    # A temporary file left by a crash keeps its old mode under O_TRUNC: start afresh.
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(KEY_FILE_HEADER + base64.b64encode(key).decode("ascii") + "\n")
        # On disk before the rename and before the database records the key's fingerprint:
        # after a power cut the database must never name a key that was lost.
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_directory(path.parent)
    return key


def key_fingerprint(key: bytes) -> str:
    """A non-secret identifier of the key, recorded in the database to detect a wrong key."""
    return hashlib.sha256(b"openmfa-key-id" + key).hexdigest()[:32]


class SecretBox:
    """AES-256-GCM with a random 96-bit nonce per message: ``version | nonce | ciphertext``."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, purpose: str) -> bytes:
        """Encrypt ``plaintext``; ``purpose`` (e.g. ``"seed:<device id>"``) must match on open."""
        nonce = secrets.token_bytes(12)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, purpose.encode())

    def open(self, sealed: bytes, purpose: str) -> bytes:
        """Decrypt, raising :class:`ServerKeyError` when the key or purpose does not match."""
        if len(sealed) < 29 or sealed[:1] != _VERSION:
            raise ServerKeyError("an encrypted value is damaged")
        try:
            return self._aead.decrypt(sealed[1:13], sealed[13:], purpose.encode())
        except InvalidTag as exc:
            raise ServerKeyError(
                "an encrypted value does not decrypt with this server key"
            ) from exc


def new_token(prefix: str = "") -> str:
    """A 160-bit random token, URL-safe."""
    return prefix + secrets.token_urlsafe(20)


def token_digest(token: str) -> str:
    """SHA-256 hex of a high-entropy token, for storage and lookup."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def same(a: str | bytes, b: str | bytes) -> bool:
    """Constant-time equality."""
    left = a.encode() if isinstance(a, str) else a
    right = b.encode() if isinstance(b, str) else b
    return hmac.compare_digest(left, right)
