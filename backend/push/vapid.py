"""The server's VAPID key (RFC 8292) and the JWTs that identify it to push services.

The key pair (P-256) is made on the first start with Web Push on and kept in the database's
``meta`` table, its private half sealed with the server key (:class:`backend.crypto.SecretBox`)
like every other secret at rest. So it is in every database backup, it needs the server key
to be read (a copied database alone gives nothing away), and all nodes of a cluster sign with
the same key, which the browsers' subscriptions are bound to: a new key would silently orphan
every subscription.

Each push carries ``Authorization: vapid t=<JWT>, k=<public key>``; the JWT (ES256) names the
push service's origin (``aud``), an expiry (``exp``, 12 hours at most here; services refuse
more than 24) and a contact (``sub``). Signing costs an ECDSA signature, so
:class:`VapidSigner` keeps one JWT per origin until an hour before it expires.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from backend.crypto import SecretBox
from backend.domain.webpush import b64u
from backend.errors import ServerKeyError
from backend.store.database import Database
from backend.store.tables import meta_t

META_KEY = "webpush_vapid_key"
_PURPOSE = "webpush-vapid"
#: JWT lifetime and how long before its expiry a cached one is replaced.
JWT_LIFETIME = 12 * 3600
JWT_RENEW_BEFORE = 3600


@dataclass(frozen=True, slots=True)
class VapidKey:
    """The server's VAPID key pair."""

    private_key: ec.EllipticCurvePrivateKey

    @property
    def public_bytes(self) -> bytes:
        """The uncompressed point (65 bytes): the app's ``applicationServerKey``."""
        return self.private_key.public_key().public_bytes(
            Encoding.X962, PublicFormat.UncompressedPoint
        )

    @property
    def public_b64u(self) -> str:
        """:attr:`public_bytes` in base64url, as the app and the ``k=`` parameter want it."""
        return b64u(self.public_bytes)

    @classmethod
    def generate(cls) -> VapidKey:
        """A fresh P-256 key pair."""
        return cls(ec.generate_private_key(ec.SECP256R1()))

    def seal(self, box: SecretBox) -> str:
        """The private scalar sealed with the server key, base64 (for the meta table)."""
        scalar = self.private_key.private_numbers().private_value.to_bytes(32, "big")
        return base64.b64encode(box.seal(scalar, _PURPOSE)).decode("ascii")

    @classmethod
    def unseal(cls, text: str, box: SecretBox) -> VapidKey:
        """Inverse of :meth:`seal`; :class:`ServerKeyError` when it does not decrypt."""
        try:
            sealed = base64.b64decode(text, validate=True)
        except ValueError:
            raise ServerKeyError("the stored VAPID key is damaged") from None
        scalar = box.open(sealed, _PURPOSE)
        return cls(ec.derive_private_key(int.from_bytes(scalar, "big"), ec.SECP256R1()))


async def load_or_create_vapid_key(db: Database, box: SecretBox) -> VapidKey:
    """The stored key; made and stored first when there is none (safe against several nodes
    starting at once: the first insert wins and everybody reads it back)."""
    stored = await db.get_meta(META_KEY)
    if stored is None:
        try:
            async with db.write() as conn:
                await conn.execute(
                    insert(meta_t).values(key=META_KEY, value=VapidKey.generate().seal(box))
                )
        except IntegrityError:
            pass  # another node stored one meanwhile: use theirs
        stored = await db.get_meta(META_KEY)
        if stored is None:
            raise ServerKeyError("the VAPID key could not be stored")
    return VapidKey.unseal(stored, box)


class VapidSigner:
    """Makes (and caches per push-service origin) the ``Authorization`` header value."""

    def __init__(
        self,
        key: VapidKey,
        subject: str,
        lifetime: int = JWT_LIFETIME,
        renew_before: int = JWT_RENEW_BEFORE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = key
        self._subject = subject
        self._lifetime = lifetime
        self._renew_before = min(renew_before, lifetime // 2)
        self._clock = clock
        self._k = key.public_b64u
        self._cache: dict[str, tuple[float, str]] = {}  # origin -> (exp, header value)
        self.signed = 0  # JWTs signed so far (tests and metrics see the cache work)

    def authorization(self, origin: str) -> str:
        """``vapid t=<JWT>, k=<key>`` for a push service origin (``https://host[:port]``)."""
        now = self._clock()
        cached = self._cache.get(origin)
        if cached is not None and cached[0] - now > self._renew_before:
            return cached[1]
        exp = int(now) + self._lifetime
        value = f"vapid t={self._jwt(origin, exp)}, k={self._k}"
        self._cache[origin] = (float(exp), value)
        return value

    def forget(self, origin: str) -> None:
        """Drop the cached JWT for ``origin`` (the service refused it: sign a new one)."""
        self._cache.pop(origin, None)

    def _jwt(self, audience: str, exp: int) -> str:
        header = b64u(json.dumps({"typ": "JWT", "alg": "ES256"}, separators=(",", ":")).encode())
        claims = b64u(
            json.dumps(
                {"aud": audience, "exp": exp, "sub": self._subject}, separators=(",", ":")
            ).encode()
        )
        signing_input = f"{header}.{claims}".encode("ascii")
        der = self._key.private_key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        self.signed += 1
        # JWS wants r||s (32 bytes each), not the DER that cryptography returns.
        return f"{header}.{claims}.{b64u(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
