"""A RADIUS client's settings: the choices each may take and the limits both sides enforce.

The backend's domain (:mod:`backend.domain.radius`) checks these when an administrator adds
or changes a client; the bridge (:mod:`radius_bridge.clients`) checks them again when it
reads the clients document (it may come from a file). One list for both, so a value the
backend stores is always one the bridge understands.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

Mode = Literal["push", "challenge", "otp"]
Primary = Literal["none", "local", "radius", "ldap"]
FailMode = Literal["secure", "safe"]
Unenrolled = Literal["reject", "allow"]
NameFormat = Literal["strip", "keep", "map"]
#: Number matching per client: the user's policy decides, or this gateway forces it on / off.
NumberMatching = Literal["policy", "on", "off"]

MODES: Final[tuple[str, ...]] = get_args(Mode)
PRIMARIES: Final[tuple[str, ...]] = get_args(Primary)
FAILMODES: Final[tuple[str, ...]] = get_args(FailMode)
UNENROLLED: Final[tuple[str, ...]] = get_args(Unenrolled)
NAME_FORMATS: Final[tuple[str, ...]] = get_args(NameFormat)
NUMBER_MATCHING: Final[tuple[str, ...]] = get_args(NumberMatching)

DEFAULT_PROMPT: Final = "Approve the sign-in on your phone, or type the code from the app"
#: The prompt goes out in one Reply-Message attribute.
MAX_PROMPT_BYTES: Final = 253
#: Seconds a held sign-in waits for the phone: the bounds, and the default.
PUSH_TIMEOUT: Final = (5.0, 600.0)
DEFAULT_PUSH_TIMEOUT: Final = 55.0
#: The longest code the gateway API takes: a longer challenge answer is not sent as a code,
#: and the backend client refuses longer input itself.
MAX_CODE_CHARS: Final = 16
