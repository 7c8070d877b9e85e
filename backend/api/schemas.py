"""Request and response bodies of the app and gateway APIs (also the OpenAPI schemas)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from backend.directory.reader import PasswordReason
from radius_vocabulary.audit import BridgeAuditAction
from radius_vocabulary.settings import (
    FailMode,
    Mode,
    NameFormat,
    NumberMatching,
    Primary,
    Unenrolled,
)


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- app API ----------------------------------------------------------------------------------


class ActivateRequest(Body):
    code: str = Field(min_length=1, max_length=128)
    public_key: str = Field(
        description="base64url of a raw 32-byte Ed25519 public key or of a 65-byte "
        "uncompressed P-256 point (0x04 || X || Y); the length decides the key type",
        max_length=88,
    )
    platform: Literal["ios", "android", "reference", "web"]
    push_token: str | None = Field(
        default=None,
        max_length=2048,
        description="APNs / FCM token; for platform web the PushSubscription JSON",
    )
    name: str = Field(default="", max_length=128)
    pin: str | None = Field(default=None, max_length=16)


class TotpParameters(Body):
    secret: str = Field(description="base32 seed for offline codes; shown once")
    algorithm: Literal["SHA1"] = "SHA1"
    digits: int = 6
    period: int = 30


class ActivateResponse(Body):
    device_id: str
    user: str
    totp: TotpParameters
    require_pin: bool
    has_pin: bool


class ChallengeContext(Body):
    """Where and when the sign-in happens, for the user to judge whether it is theirs."""

    client_name: str = Field(description="the application or gateway (may be empty)")
    client_ip: str = Field(description="the address the sign-in comes from (may be empty)")
    nas_identifier: str = Field(description="the gateway's NAS-Identifier (may be empty)")
    time: datetime = Field(description="when the sign-in started (the challenge's created_at)")
    city: str | None = Field(
        description="from the server's offline GeoIP database; null when unknown or not set up"
    )
    country: str | None = Field(
        description="from the server's offline GeoIP database; null when unknown or not set up"
    )


class DeviceChallenge(Body):
    id: str
    state: str
    display: str
    client_name: str = Field(description="same as context.client_name (kept for older apps)")
    client_ip: str = Field(description="same as context.client_ip (kept for older apps)")
    nas_identifier: str = Field(description="same as context.nas_identifier (kept for older apps)")
    created_at: datetime
    expires_at: datetime
    number_required: bool = Field(description="the approval must carry the number shown at sign-in")
    context: ChallengeContext


class ChallengeList(Body):
    challenges: list[DeviceChallenge]


class AnswerRequest(Body):
    answer: Literal["approve", "deny", "fraud"]
    pin: str | None = Field(default=None, max_length=16)
    number: int | None = Field(default=None, ge=0, le=99)


class AnswerResponse(Body):
    id: str
    state: str


class PushTokenRequest(Body):
    push_token: str | None = Field(
        max_length=2048, description="APNs / FCM token; for platform web the PushSubscription JSON"
    )


class WebPushKey(Body):
    vapid_public_key: str = Field(
        description="the server's VAPID public key: the 65-byte uncompressed P-256 point, "
        "base64url (pushManager.subscribe's applicationServerKey)"
    )


# -- gateway API ------------------------------------------------------------------------------


class SignInContextBody(Body):
    client_name: str = Field(default="", max_length=128)
    client_ip: str = Field(default="", max_length=64)
    nas_identifier: str = Field(default="", max_length=128)
    display: str = Field(default="", max_length=256)


class StartRequest(Body):
    user: str = Field(min_length=1, max_length=128)
    method: Literal["push", "otp", "auto"] = "auto"
    context: SignInContextBody = SignInContextBody()
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=128)
    # Strict: a security switch takes JSON true / false only, not "yes" or 1.
    number_matching: bool | None = Field(
        default=None,
        strict=True,
        description="number matching for this gateway: true or false overrides the user's "
        "policy, null (default) follows it",
    )
    can_show_number: bool = Field(
        default=True,
        strict=True,
        description="false when the gateway cannot display the number (RADIUS push mode); "
        "the policy number_matching_fallback then decides",
    )


class Authentication(Body):
    id: str
    user: str
    method: Literal["push", "otp"]
    state: Literal["pending", "approved", "denied", "fraud", "expired", "cancelled"]
    created_at: datetime
    expires_at: datetime
    answered_at: datetime | None
    number: int | None = Field(description="number to show at sign-in when number matching is on")


class CodeRequest(Body):
    code: str = Field(min_length=1, max_length=16)


class CodeResponse(Body):
    result: Literal["accept", "reject"]
    reason: str
    authentication: Authentication


class VerifyRequest(Body):
    user: str = Field(min_length=1, max_length=128)
    code: str = Field(min_length=1, max_length=16)
    context: SignInContextBody = SignInContextBody()


class VerifyResponse(Body):
    result: Literal["accept", "reject"]
    reason: str
    user: str


# -- the RADIUS bridge's part of the gateway API (tokens of scope "bridge") -------------------


class RadiusUpstream(Body):
    host: str
    port: int = Field(ge=1, le=65535)
    secret: str = Field(description="the upstream server's shared secret, UTF-8")
    timeout: float = Field(description="seconds")


class RadiusUserNames(Body):
    format: NameFormat
    realm_map: dict[str, str] = Field(
        description="lower-case realm -> template holding {user}, for format map"
    )


class RadiusClient(Body):
    name: str
    addresses: list[str] = Field(description="addresses and CIDR networks the client sends from")
    secret: str | None = Field(
        default=None,
        description="the shared secret, UTF-8; absent for a RadSec-only client (RadSec uses "
        "the fixed secret radsec, RFC 6614)",
    )
    mode: Mode
    primary: Primary
    upstream: RadiusUpstream | None = Field(description="set for, and only for, primary radius")
    require_message_authenticator: bool
    failmode: FailMode
    unenrolled: Unenrolled
    push_timeout: float = Field(description="seconds, 5 to 600")
    prompt: str = Field(description="Reply-Message of a challenge, at most 253 bytes of UTF-8")
    user_names: RadiusUserNames
    exempt_users: list[str] = Field(description="canonical (lower-case) user names")
    exempt_networks: list[str] = Field(description="matched against Calling-Station-Id")
    password_separator: str = Field(description="one character between password and code")
    reply_attributes: list[tuple[str, str]] = Field(
        description="[dictionary name, value as text] pairs added to every Access-Accept"
    )
    number_matching: NumberMatching = Field(
        description="policy: the user's policy decides; on / off: this gateway overrides it"
    )
    directory: str | None = Field(
        default=None,
        description="primary ldap: the directory whose passwords the backend checks (by a "
        "bind as the user); the bridge only sends the password with the client's name",
    )
    radsec_fingerprints: list[str] = Field(
        default_factory=list,
        description="RadSec: SHA-256 fingerprints (SHA256:AB:CD:...) of the client "
        "certificates bound to this client; empty: UDP only",
    )


class RadiusClients(Body):
    revision: str = Field(description="changes whenever any client changes; also the ETag")
    clients: list[RadiusClient]


class PasswordVerifyRequest(Body):
    user: str = Field(min_length=1, max_length=128)
    password: str = Field(max_length=1024)
    context: SignInContextBody = SignInContextBody()
    #: The RADIUS client that asks: with primary ldap, its directory checks the password.
    client: str | None = Field(default=None, min_length=1, max_length=128)


class PasswordVerifyResponse(Body):
    result: Literal["accept", "reject"]
    #: ``no-password``: a local user with none set; the rest but ``wrong-password`` concern
    #: users from a directory (the directory's answer, or it could not be reached).
    reason: PasswordReason


class BridgeAuditRequest(Body):
    action: BridgeAuditAction
    user: str = Field(default="", max_length=128)
    detail: str = Field(default="", max_length=1024)


# -- shared -----------------------------------------------------------------------------------


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    request_id: str = ""


class Health(Body):
    status: Literal["ok", "unavailable"]
    detail: str = ""
