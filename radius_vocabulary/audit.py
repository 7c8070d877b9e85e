"""What a RADIUS bridge may write to the backend's audit trail.

The bridge records through ``POST /gateway/v1/audit`` the decisions it takes alone (an
exempt user let in, a fail-safe accept, a relayed sign-in refused...); the backend accepts
only these actions. One list for both sides: the bridge's ``Audit`` effect is typed with
:data:`BridgeAuditAction`, the backend checks against :data:`BRIDGE_AUDIT_ACTIONS`.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

BridgeAuditAction = Literal[
    "radius.exempt_user",
    "radius.exempt_network",
    "radius.unenrolled_allowed",
    "radius.failsafe_accept",
    "radius.invalid_attribute",
    "radius.relay_refused",
    "radius.radsec_refused",
]
BRIDGE_AUDIT_ACTIONS: Final[tuple[str, ...]] = get_args(BridgeAuditAction)
#: Of those, the refusals (the rest record a sign-in the bridge let through).
BRIDGE_AUDIT_REFUSALS: Final[tuple[str, ...]] = (
    "radius.invalid_attribute",
    "radius.relay_refused",
    "radius.radsec_refused",
)
