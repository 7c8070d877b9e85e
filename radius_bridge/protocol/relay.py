"""Relaying MS-CHAPv2 and EAP to the upstream, packet side (sans-IO, pure functions).

With ``primary = radius`` a gateway that proves the password with MS-CHAPv2 (RRAS, most
VPNs' "MS-CHAPv2" setting) or with EAP (PEAP, EAP-TTLS: Always On VPN, 802.1X) cannot be
answered from User-Password: there is none. The bridge passes such a request on to the
upstream (NPS, FreeRADIUS) attribute for attribute, and the upstream's answer back, with
each hop signed under its own secret:

* to the upstream: the gateway's attributes less Message-Authenticator (recomputed for the
  upstream hop), Proxy-State (the gateway's, not ours to forward) and anything hidden with
  the gateway's secret (User-Password, Tunnel-Password, vendor attributes the dictionary
  marks encrypted), under a new Request Authenticator (:func:`upstream_attributes`);
* back to the gateway: EAP-Message (every fragment, in order), State, MS-CHAP2-Success or
  MS-CHAP-Error, Reply-Message, and the MPPE keys *decrypted here* so that the core can
  encrypt them again for the gateway (:func:`interpret`, :mod:`.salt`).

The bridge looks inside EAP only to learn who signs in: the EAP code and Identifier of a
reply (an EAP-Failure replacing an EAP-Success takes its Identifier, RFC 3748 4.2) and the
Type-Data of an EAP-Response/Identity (the outer identity, RFC 3748 5.1).

CHAP (RFC 1994 as RFC 2865 carries it) is relayed too: without a CHAP-Challenge attribute
the challenge *is* the gateway's Request Authenticator, which the upstream hop does not
keep, so it is sent along as CHAP-Challenge (RFC 2865 5.40). MS-CHAPv1 is refused
(:func:`classify` still names it, so that the refusal is audited with a clear reason).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from radius_bridge.model import RelayAnswer, Relayed, RelayKind
from radius_bridge.protocol import packet as codec
from radius_bridge.protocol import salt
from radius_vocabulary.dictionary import VENDOR_SPECIFIC, Attribute, Dictionary

CHAP_PASSWORD: Final = 3
TUNNEL_PASSWORD: Final = 69
CHAP_CHALLENGE: Final = 60
EAP_MESSAGE: Final = 79
NAS_IPV6_ADDRESS: Final = 95

MICROSOFT: Final = 311
MS_CHAP_RESPONSE: Final = 1
MS_CHAP_ERROR: Final = 2
MS_CHAP_CHALLENGE: Final = 11
MS_MPPE_SEND_KEY: Final = 16
MS_MPPE_RECV_KEY: Final = 17
MS_CHAP2_RESPONSE: Final = 25
MS_CHAP2_SUCCESS: Final = 26
#: The keys relayed (re-encrypted). MS-CHAP-MPPE-Keys (12, MS-CHAPv1 and LEAP) is not.
MPPE_KEYS: Final = (MS_MPPE_SEND_KEY, MS_MPPE_RECV_KEY)

EAP_REQUEST: Final = 1
EAP_RESPONSE: Final = 2
EAP_SUCCESS: Final = 3
EAP_FAILURE: Final = 4
EAP_TYPE_IDENTITY: Final = 1
#: EAP methods that run the real authentication inside a TLS tunnel, behind an outer
#: identity nobody checks: TTLS (21), PEAP (25), FAST (43), TEAP (55).
TUNNELLED_TYPES: Final = frozenset({21, 25, 43, 55})

#: Never forwarded to the upstream: the hop's own signature and Proxy-State, and values
#: hidden with the gateway's secret (useless, and a leak, under another one).
_NOT_FORWARDED: Final = frozenset(
    {codec.MESSAGE_AUTHENTICATOR, codec.PROXY_STATE, codec.USER_PASSWORD, TUNNEL_PASSWORD}
)
#: Never relayed back to the gateway as they came: the hop's signature, Proxy-State (the
#: codec already refuses replies carrying one we did not send) and values hidden with the
#: upstream's secret.
_NOT_RELAYED: Final = frozenset(
    {codec.MESSAGE_AUTHENTICATOR, codec.PROXY_STATE, TUNNEL_PASSWORD, VENDOR_SPECIFIC}
)
_NAS_ADDRESSING: Final = frozenset({codec.NAS_IP_ADDRESS, codec.NAS_IDENTIFIER, NAS_IPV6_ADDRESS})


def _microsoft(value: bytes) -> list[tuple[int, bytes]] | None:
    """The sub-attributes of a Microsoft Vendor-Specific value, or None for another vendor
    or a value not in the RFC 2865 sub-attribute format."""
    if len(value) < 6 or int.from_bytes(value[:4], "big") != MICROSOFT:
        return None
    subs: list[tuple[int, bytes]] = []
    pos = 4
    while pos < len(value):
        if pos + 2 > len(value):
            return None
        kind, size = value[pos], value[pos + 1]
        if size < 2 or pos + size > len(value):
            return None
        subs.append((kind, value[pos + 2 : pos + size]))
        pos += size
    return subs


def microsoft_attribute(kind: int, value: bytes) -> bytes:
    """One Microsoft sub-attribute wrapped in its own Vendor-Specific, wire form."""
    inner = MICROSOFT.to_bytes(4, "big") + bytes((kind, len(value) + 2)) + value
    return codec.encode_attribute(VENDOR_SPECIFIC, inner)


def classify(attributes: Iterable[tuple[int, bytes]]) -> RelayKind | None:
    """How a request without User-Password proves the password: ``eap`` (EAP-Message),
    ``mschapv2`` (MS-CHAP2-Response), ``mschapv1`` (MS-CHAP-Response), ``chap``
    (CHAP-Password), or None (nothing: RD Gateway through NPS, a push-only request)."""
    kind: RelayKind | None = None
    for attr_type, value in attributes:
        if attr_type == EAP_MESSAGE:
            return "eap"  # EAP wins whatever else the request carries
        if attr_type == CHAP_PASSWORD and kind is None:
            kind = "chap"
        elif attr_type == VENDOR_SPECIFIC:
            for sub_type, _ in _microsoft(value) or ():
                if sub_type == MS_CHAP2_RESPONSE:
                    kind = "mschapv2"
                elif sub_type == MS_CHAP_RESPONSE and kind != "mschapv2":
                    kind = "mschapv1"
    return kind


def upstream_attributes(
    packet: codec.Packet, dictionary: Dictionary, nas_identifier: str = "openmfa-bridge"
) -> bytes:
    """The attributes of the upstream request for the gateway's ``packet``, wire form (see
    the module docstring). Adds NAS-Identifier when the gateway sent no NAS address (NPS
    refuses requests without, RFC 2865 section 4.1) and CHAP-Challenge for CHAP."""
    out = bytearray()
    has_nas = False
    chap = False
    has_chap_challenge = False
    for kind, value in packet.attributes:
        if kind in _NOT_FORWARDED:
            continue
        if kind == VENDOR_SPECIFIC and codec._vsa_is_encrypted(value, dictionary):
            continue
        has_nas = has_nas or kind in _NAS_ADDRESSING
        chap = chap or kind == CHAP_PASSWORD
        has_chap_challenge = has_chap_challenge or kind == CHAP_CHALLENGE
        out += codec.encode_attribute(kind, value)
    if chap and not has_chap_challenge:
        # RFC 2865 5.3: without CHAP-Challenge the Request Authenticator is the challenge.
        out += codec.encode_attribute(CHAP_CHALLENGE, packet.authenticator)
    if not has_nas:
        out += codec.encode_attribute(codec.NAS_IDENTIFIER, nas_identifier.encode("utf-8"))
    return bytes(out)


def eap_message(attributes: Iterable[tuple[int, bytes]]) -> bytes:
    """Every EAP-Message value joined, in order (RFC 3579 3.1: one EAP packet may be split
    across several attributes)."""
    return b"".join(value for kind, value in attributes if kind == EAP_MESSAGE)


def eap_identity(eap: bytes) -> str | None:
    """The identity in an EAP-Response/Identity (RFC 3748 5.1), or None for anything else
    (other EAP packets, a truncated one). Undecodable octets are replaced, not trusted."""
    if len(eap) < 5 or eap[0] != EAP_RESPONSE or eap[4] != EAP_TYPE_IDENTITY:
        return None
    length = int.from_bytes(eap[2:4], "big")
    if length < 5 or length > len(eap):
        return None
    return eap[5:length].decode("utf-8", "replace")


def tunnelled(eap: bytes) -> bool:
    """Whether ``eap`` is an EAP-Response of a tunnelled method (PEAP, TTLS, FAST, TEAP),
    whose outer identity proves nothing (RFC 3748 7.3 and the PEAP / TTLS drafts: the inner
    identity is the authenticated one)."""
    return len(eap) >= 5 and eap[0] == EAP_RESPONSE and eap[4] in TUNNELLED_TYPES


def eap_failure(identifier: int) -> Relayed:
    """An EAP-Failure (code 4, length 4) with ``identifier``, as relayed attributes."""
    return Relayed(attributes=((EAP_MESSAGE, bytes((EAP_FAILURE, identifier & 0xFF, 0, 4))),))


def mschap_error(ident: int, message: str) -> Relayed:
    """MS-CHAP-Error (RFC 2548 2.1.5, RFC 2759 6) for an MS-CHAPv2 sign-in the bridge
    refuses after the upstream accepted the password: error 691 (access denied), no retry,
    and the reason as the message the client may show."""
    text = f"E=691 R=0 V=3 M={message}".encode()[:200]
    inner = MICROSOFT.to_bytes(4, "big") + bytes((MS_CHAP_ERROR, len(text) + 3, ident)) + text
    return Relayed(attributes=((VENDOR_SPECIFIC, inner),))


def mschap_ident(attributes: Iterable[tuple[int, bytes]]) -> int | None:
    """The Ident octet of the request's MS-CHAP2-Response (echoed in MS-CHAP-Error)."""
    for kind, value in attributes:
        if kind == VENDOR_SPECIFIC:
            for sub_type, sub_value in _microsoft(value) or ():
                if sub_type == MS_CHAP2_RESPONSE and sub_value:
                    return sub_value[0]
    return None


def interpret(
    reply: codec.Packet, secret: bytes, authenticator: bytes, dictionary: Dictionary
) -> RelayAnswer:
    """The upstream's verified ``reply`` to our request with Request Authenticator
    ``authenticator``, taken apart for the flow (:class:`RelayAnswer`). MPPE keys are
    decrypted with the upstream's ``secret``; one that does not decrypt raises
    :class:`~radius_bridge.protocol.salt.SaltError` (the reply verified, so that is an
    upstream bug, and an Accept without its keys would be a tunnel that never comes up)."""
    relayed: list[tuple[int, bytes]] = []
    keys: list[tuple[int, bytes]] = []
    user_name: str | None = None
    accept = reply.code == codec.ACCESS_ACCEPT
    for kind, value in reply.attributes:
        if kind == VENDOR_SPECIFIC:
            subs = _microsoft(value)
            if subs is None:
                if not accept and not codec._vsa_is_encrypted(value, dictionary):
                    relayed.append((kind, value))  # an Accept's go through ``granted``
                continue
            for sub_type, sub_value in subs:
                if sub_type in MPPE_KEYS:
                    keys.append((sub_type, salt.decrypt(sub_value, secret, authenticator)))
                    continue
                definition = dictionary.by_code(sub_type, MICROSOFT)
                if (definition is None or not definition.encrypt) and not accept:
                    relayed.append((kind, microsoft_attribute(sub_type, sub_value)[2:]))
            continue
        if kind == codec.USER_NAME and accept:
            user_name = value.decode("utf-8", "replace")
            relayed.append((kind, value))
        elif kind == EAP_MESSAGE or (not accept and kind not in _NOT_RELAYED):
            relayed.append((kind, value))
    granted: tuple[Attribute, ...] = ()
    if accept:
        granted = codec.upstream_answer(reply, dictionary).attributes
    eap = eap_message(reply.attributes)
    return RelayAnswer(
        code=reply.code,
        granted=granted,
        relayed=Relayed(tuple(relayed), tuple(keys)),
        user_name=user_name,
        eap_identifier=eap[1] if len(eap) >= 4 else None,
    )


def encode_relayed(relayed: Relayed, secret: bytes, authenticator: bytes) -> bytes:
    """``relayed`` in wire form for the gateway: attributes as they are, MPPE keys
    salt-encrypted under the gateway's ``secret`` and its Request ``authenticator``, each
    with a fresh salt (RFC 2548 2.4.2)."""
    out = b"".join(codec.encode_attribute(kind, value) for kind, value in relayed.attributes)
    for sub_type, key in relayed.keys:
        out += microsoft_attribute(sub_type, salt.encrypt(key, secret, authenticator))
    return out
