"""The FreeRADIUS harness on its own, without the bridge: Debian's radclient against the
upstream PAP server (:meth:`FreeRadius.upstream`), and through the proxy
(:meth:`FreeRadius.proxy`) to that server and to a scripted home server that records what
the proxy forwards. The bridge's own interop tests build on these two roles, so what they
promise is checked here: attributes that come back, Message-Authenticator enforced, a
forwarded request that carries Message-Authenticator and Proxy-State, retransmissions passed
on, and a late answer still delivered."""

from __future__ import annotations

import hashlib
import hmac
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.support.freeradius import (
    AttributeValue,
    FreeRadius,
    RadclientError,
    free_udp_port,
    parse_radclient_output,
    radclient,
    unavailable_reason,
)

REASON = unavailable_reason()
needs_freeradius = pytest.mark.skipif(REASON is not None, reason=f"FreeRADIUS tests: {REASON}")

PASSWORD = 'pa\'ss "w\\rd" ${confdir} %{User-Name}'  # quotes, backslash and both expansions
REPLY: list[tuple[str, AttributeValue]] = [
    ("Class", b"upstream-class"),
    ("Filter-Id", "vpn-users"),
    ("Cisco-AVPair", "shell:priv-lvl=15"),
    ("Cisco-AVPair", "ip:inacl#1=permit ip any any"),
]
SECRET_UP = "up-s3cret with $pace"
SECRET_IN = "gateway-secret"
SECRET_HOME = "bridge-secret"

ACCESS_REQUEST, ACCESS_ACCEPT, ACCESS_REJECT, ACCESS_CHALLENGE = 1, 2, 3, 11
USER_NAME, REPLY_MESSAGE, STATE, PROXY_STATE, MESSAGE_AUTHENTICATOR = 1, 18, 24, 33, 80


@pytest.fixture(scope="module")
def upstream() -> Iterator[FreeRadius]:
    """One upstream PAP server for the module (starting one takes ~0.1 s, but why repeat)."""
    if REASON is not None:
        pytest.skip(f"FreeRADIUS tests: {REASON}")
    users = {"alice": PASSWORD, "CONTOSO\\bob": "bobs-password", "carol": "carols-password"}
    with FreeRadius.upstream(
        free_udp_port(),
        users=users,
        reply=REPLY,
        user_reply={"carol": [("Session-Timeout", 3600), ("Filter-Id", "carol-extra")]},
        secret=SECRET_UP,
    ) as server:
        yield server


# -- upstream on its own ----------------------------------------------------------------------


@needs_freeradius
def test_upstream_accepts_the_right_password_with_its_reply_attributes(
    upstream: FreeRadius,
) -> None:
    reply = radclient(upstream.port, SECRET_UP, {"User-Name": "alice", "User-Password": PASSWORD})

    assert reply.code == "Access-Accept", reply.output
    assert reply.octets("Class") == b"upstream-class"
    assert reply.get("Filter-Id") == "vpn-users"
    assert reply.all("Cisco-AVPair") == ["shell:priv-lvl=15", "ip:inacl#1=permit ip any any"]


@needs_freeradius
def test_upstream_adds_per_user_reply_attributes_and_matches_domain_names(
    upstream: FreeRadius,
) -> None:
    carol = radclient(
        upstream.port, SECRET_UP, {"User-Name": "carol", "User-Password": "carols-password"}
    )
    bob = radclient(
        upstream.port, SECRET_UP, {"User-Name": "CONTOSO\\bob", "User-Password": "bobs-password"}
    )

    assert carol.code == "Access-Accept", carol.output
    assert carol.all("Filter-Id") == ["vpn-users", "carol-extra"]
    assert carol.get("Session-Timeout") == "3600"
    assert bob.code == "Access-Accept", bob.output


@needs_freeradius
@pytest.mark.parametrize(
    ("user", "password"),
    [
        ("alice", "wrong"),
        ("alice", PASSWORD + "x"),
        ("mallory", PASSWORD),
        ("bob", "bobs-password"),
    ],
)
def test_upstream_rejects_wrong_passwords_and_unknown_users_without_attributes(
    upstream: FreeRadius, user: str, password: str
) -> None:
    reply = radclient(upstream.port, SECRET_UP, {"User-Name": user, "User-Password": password})

    assert reply.code == "Access-Reject", reply.output
    assert reply.attributes == ()  # no Class / Filter-Id / VSA leaks onto a reject


@needs_freeradius
def test_upstream_drops_requests_without_message_authenticator(upstream: FreeRadius) -> None:
    reply = radclient(
        upstream.port,
        SECRET_UP,
        {"User-Name": "alice", "User-Password": PASSWORD},
        message_authenticator=False,
        timeout=0.5,
    )

    assert reply.code is None, reply.output
    assert "does not contain required Message-Authenticator" in upstream.log


@needs_freeradius
def test_upstream_without_the_requirement_accepts_requests_lacking_it() -> None:
    # The counterpart of the test above: the same request is answered once the server is
    # told not to insist, so the drop there was the Message-Authenticator rule at work.
    with FreeRadius.upstream(
        free_udp_port(), users={"alice": "pw"}, require_message_authenticator=False
    ) as server:
        reply = radclient(
            server.port,
            "upstream-secret",
            {"User-Name": "alice", "User-Password": "pw"},
            message_authenticator=False,
        )
    assert reply.code == "Access-Accept", reply.output


@needs_freeradius
def test_upstream_drops_a_request_signed_with_the_wrong_secret(upstream: FreeRadius) -> None:
    reply = radclient(
        upstream.port,
        "not-the-secret",
        {"User-Name": "alice", "User-Password": PASSWORD},
        timeout=0.5,
    )

    assert reply.code is None, reply.output


@needs_freeradius
def test_upstream_answers_status_server(upstream: FreeRadius) -> None:
    reply = radclient(upstream.port, SECRET_UP, {}, code="status")

    assert reply.code == "Access-Accept", reply.output


@needs_freeradius
def test_upstream_on_ipv6_loopback() -> None:
    port = free_udp_port("::1")
    with FreeRadius.upstream(port, users={"alice": "pw"}, host="::1") as server:
        good = radclient(
            port, "upstream-secret", {"User-Name": "alice", "User-Password": "pw"}, host="::1"
        )
        bad = radclient(
            port, "upstream-secret", {"User-Name": "alice", "User-Password": "no"}, host="::1"
        )
        assert server.address == ("::1", port)
    assert (good.code, bad.code) == ("Access-Accept", "Access-Reject")


@needs_freeradius
def test_leaving_the_block_stops_the_process_and_frees_the_port() -> None:
    port = free_udp_port()
    server = FreeRadius.upstream(port, users={"alice": "pw"})
    with server:
        assert server.running()
        directory = server.directory
        assert directory is not None
        assert (directory / "radiusd.conf").exists()
    assert not server.running()
    assert server.process is not None
    assert server.process.returncode is not None
    assert not directory.exists()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", port))  # raises if anything still holds the port


@needs_freeradius
def test_a_server_that_cannot_start_fails_with_its_log() -> None:
    port = free_udp_port()
    with (
        FreeRadius.upstream(port, users={"alice": "pw"}),
        pytest.raises(RuntimeError, match="exited 1 during start-up"),
        FreeRadius.upstream(port, users={"bob": "pw"}),  # same port: cannot bind
    ):
        pass


# -- the proxy --------------------------------------------------------------------------------


@needs_freeradius
def test_proxy_chain_reaches_the_upstream_and_brings_its_attributes_back(
    upstream: FreeRadius,
) -> None:
    port = free_udp_port()
    with FreeRadius.proxy(
        port, home=upstream.address, secret_in=SECRET_IN, secret_home=SECRET_UP
    ) as proxy:
        accepted = radclient(port, SECRET_IN, {"User-Name": "alice", "User-Password": PASSWORD})
        rejected = radclient(port, SECRET_IN, {"User-Name": "alice", "User-Password": "wrong"})
        wrong_secret = radclient(
            port, SECRET_UP, {"User-Name": "alice", "User-Password": PASSWORD}, timeout=0.5
        )
        assert "Proxying request to home server" in proxy.log
        # FreeRADIUS quietly shortens response_window to max_request_time when the latter
        # is smaller ("Ignoring ... forcing to ..."): the harness must not be caught by it.
        assert "forcing to" not in proxy.log
        assert "response_window = 60" in proxy.log

    assert accepted.code == "Access-Accept", accepted.output
    assert accepted.octets("Class") == b"upstream-class"
    assert accepted.get("Filter-Id") == "vpn-users"
    assert accepted.all("Cisco-AVPair") == ["shell:priv-lvl=15", "ip:inacl#1=permit ip any any"]
    assert "Proxy-State" not in accepted.names  # the proxy keeps its own Proxy-State
    assert (rejected.code, rejected.attributes) == ("Access-Reject", ())
    assert wrong_secret.code is None  # the gateway's secret is not the home server's


# -- the proxy in front of a scripted home server ---------------------------------------------


@dataclass(frozen=True)
class Received:
    """One datagram the scripted home server got."""

    at: float
    data: bytes
    message_authenticator_ok: bool

    @property
    def identifier(self) -> int:
        return self.data[1]

    @property
    def authenticator(self) -> bytes:
        return self.data[4:20]

    def attributes(self) -> list[tuple[int, bytes]]:
        found, offset = [], 20
        while offset + 2 <= len(self.data):
            kind, length = self.data[offset], self.data[offset + 1]
            found.append((kind, self.data[offset + 2 : offset + length]))
            offset += length
        return found

    def values(self, kind: int) -> list[bytes]:
        return [value for k, value in self.attributes() if k == kind]


class ScriptedHome:
    """A bare RADIUS home server on 127.0.0.1 (a thread): records each datagram, checks its
    Message-Authenticator with ``secret``, and answers the request the way ``decide`` says
    (``None``: not yet) -- with Message-Authenticator first, Proxy-State copied back and a
    correct Response Authenticator -- ``hold`` seconds after the request arrived (the
    scenario's own delay, cut short when the server stops). Kept deliberately apart from the
    bridge's own codec."""

    def __init__(
        self,
        secret: bytes,
        decide: Callable[[list[Received]], tuple[int, list[tuple[int, bytes]]] | None],
        hold: float = 0.0,
    ) -> None:
        self.secret = secret
        self.decide = decide
        self.hold = hold
        self._answers: list[threading.Thread] = []
        self.received: list[Received] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)  # lets the loop notice stop(); not a synchronisation sleep
        self.port: int = self.sock.getsockname()[1]
        self.changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> ScriptedHome:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for answer in self._answers:
            answer.join(timeout=5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            with self.changed:
                self.received.append(Received(time.monotonic(), data, self._ma_ok(data)))
                answer = self.decide(self.received)
                self.changed.notify_all()
            if answer is None:
                continue
            response = self._response(data, *answer)
            if self.hold <= 0:
                self.sock.sendto(response, peer)
                continue
            held = threading.Thread(target=self._send_later, args=(response, peer), daemon=True)
            self._answers.append(held)
            held.start()

    def _send_later(self, response: bytes, peer: tuple[str, int]) -> None:
        if not self._stop.wait(self.hold):
            self.sock.sendto(response, peer)

    def wait_for_copies(self, count: int, timeout: float) -> None:
        """Block until ``count`` datagrams have arrived."""
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.received) >= count, timeout), (
                f"home server got {len(self.received)} datagrams, expected {count}"
            )

    def _ma_ok(self, data: bytes) -> bool:
        offset = 20
        while offset + 2 <= len(data):
            kind, length = data[offset], data[offset + 1]
            if kind == MESSAGE_AUTHENTICATOR and length == 18:
                zeroed = data[: offset + 2] + bytes(16) + data[offset + 18 :]
                expected = hmac.new(self.secret, zeroed, hashlib.md5).digest()
                return hmac.compare_digest(expected, data[offset + 2 : offset + 18])
            offset += max(length, 2)
        return False

    def _response(self, request: bytes, code: int, attributes: list[tuple[int, bytes]]) -> bytes:
        proxy_states = [
            bytes([PROXY_STATE, len(v) + 2]) + v
            for v in Received(0, request, False).values(PROXY_STATE)
        ]
        body = b"".join(bytes([kind, len(v) + 2]) + v for kind, v in attributes)
        body = bytes([MESSAGE_AUTHENTICATOR, 18]) + bytes(16) + body + b"".join(proxy_states)
        header = struct.pack("!BBH", code, request[1], 20 + len(body))
        mac = hmac.new(self.secret, header + request[4:20] + body, hashlib.md5).digest()
        body = body[:2] + mac + body[18:]
        response_authenticator = hashlib.md5(  # noqa: S324 - RADIUS defines it so
            header + request[4:20] + body + self.secret
        ).digest()
        return header + response_authenticator + body


@needs_freeradius
@pytest.mark.parametrize("client_signs", [True, False])
def test_proxy_forwards_with_message_authenticator_and_proxy_state(client_signs: bool) -> None:
    # FreeRADIUS signs what it forwards even when the gateway did not sign its request:
    # useful in front of the bridge for gateways that cannot send Message-Authenticator.
    def accept(received: list[Received]) -> tuple[int, list[tuple[int, bytes]]]:
        return ACCESS_ACCEPT, [(REPLY_MESSAGE, b"welcome")]

    port = free_udp_port()
    with (
        ScriptedHome(SECRET_HOME.encode(), accept) as home,
        FreeRadius.proxy(
            port,
            home=("127.0.0.1", home.port),
            secret_in=SECRET_IN,
            secret_home=SECRET_HOME,
            require_message_authenticator=client_signs,
        ),
    ):
        reply = radclient(
            port, SECRET_IN, {"User-Name": "CONTOSO\\alice"}, message_authenticator=client_signs
        )

    assert reply.code == "Access-Accept", reply.output
    assert reply.get("Reply-Message") == "welcome"
    [forwarded] = home.received
    assert forwarded.data[0] == ACCESS_REQUEST
    assert forwarded.message_authenticator_ok
    assert forwarded.values(USER_NAME) == [b"CONTOSO\\alice"]  # forwarded as sent
    assert len(forwarded.values(PROXY_STATE)) == 1


@needs_freeradius
def test_proxy_carries_a_challenge_round_trip_and_the_final_class() -> None:
    # Challenge mode through a proxy: the State from the first answer must reach the home
    # server in the second request, and the Class of the final accept must reach the gateway.
    state = b"state-0123456789"

    def challenge_then_accept(received: list[Received]) -> tuple[int, list[tuple[int, bytes]]]:
        if received[-1].values(STATE) == [state]:
            return ACCESS_ACCEPT, [(25, b"granted-class")]  # 25: Class
        return ACCESS_CHALLENGE, [(REPLY_MESSAGE, b"Code?"), (STATE, state)]

    port = free_udp_port()
    with (
        ScriptedHome(SECRET_HOME.encode(), challenge_then_accept) as home,
        FreeRadius.proxy(
            port, home=("127.0.0.1", home.port), secret_in=SECRET_IN, secret_home=SECRET_HOME
        ),
    ):
        first = radclient(port, SECRET_IN, {"User-Name": "alice", "User-Password": "pw"})
        assert first.code == "Access-Challenge", first.output
        returned_state = first.octets("State")
        assert returned_state is not None
        second = radclient(
            port,
            SECRET_IN,
            {"User-Name": "alice", "User-Password": "123456", "State": returned_state},
        )

    assert returned_state == state
    assert second.code == "Access-Accept", second.output
    assert second.octets("Class") == b"granted-class"
    assert [r.values(STATE) for r in home.received] == [[], [state]]


@needs_freeradius
def test_proxy_with_the_wrong_home_secret_gets_no_usable_answer() -> None:
    # The other side of the check above: signed with another secret, the forwarded request
    # fails the home server's Message-Authenticator check, and the proxy ignores an answer
    # it cannot verify, so the gateway ends up with a reject at response_window.
    def accept(received: list[Received]) -> tuple[int, list[tuple[int, bytes]]]:
        return ACCESS_ACCEPT, []

    port = free_udp_port()
    with (
        ScriptedHome(SECRET_HOME.encode(), accept) as home,
        FreeRadius.proxy(
            port,
            home=("127.0.0.1", home.port),
            secret_in=SECRET_IN,
            secret_home="some-other-secret",
            response_window=1,
        ),
    ):
        reply = radclient(port, SECRET_IN, {"User-Name": "alice"}, timeout=5)

    assert reply.code == "Access-Reject", reply.output
    assert [r.message_authenticator_ok for r in home.received] == [False]


@needs_freeradius
def test_proxy_passes_retransmissions_on_and_delivers_a_late_challenge() -> None:
    # The home server holds the request until the third copy arrives (the gateway has
    # retransmitted twice), then answers with a challenge: the proxy must have passed every
    # copy on unchanged and still deliver the answer to the gateway.
    state = bytes(range(16))

    def answer_third_copy(received: list[Received]) -> tuple[int, list[tuple[int, bytes]]] | None:
        if len(received) < 3:
            return None
        return ACCESS_CHALLENGE, [(REPLY_MESSAGE, b"Type the code"), (STATE, state)]

    port = free_udp_port()
    with (
        ScriptedHome(SECRET_HOME.encode(), answer_third_copy) as home,
        FreeRadius.proxy(
            port, home=("127.0.0.1", home.port), secret_in=SECRET_IN, secret_home=SECRET_HOME
        ),
    ):
        reply = radclient(port, SECRET_IN, {"User-Name": "alice"}, timeout=1, retries=6)

    assert reply.code == "Access-Challenge", reply.output
    assert reply.get("Reply-Message") == "Type the code"
    assert reply.octets("State") == state
    # On a loaded machine the answer to the third copy may cross a fourth one in flight.
    assert reply.output.count("Sent Access-Request") >= 3
    assert len(home.received) >= 3
    first = home.received[0]
    for copy in home.received[1:]:
        # A retransmission, not a new request: same Id, same authenticator, same bytes.
        assert (copy.identifier, copy.authenticator, copy.data) == (
            first.identifier,
            first.authenticator,
            first.data,
        )


@needs_freeradius
def test_proxy_rejects_once_the_home_server_stays_silent_past_response_window() -> None:
    # What an operator sees when the bridge holds a push longer than the proxy waits: a
    # reject from the proxy at response_window, whatever the bridge decides later.
    port = free_udp_port()
    with (
        ScriptedHome(SECRET_HOME.encode(), lambda received: None) as home,
        FreeRadius.proxy(
            port,
            home=("127.0.0.1", home.port),
            secret_in=SECRET_IN,
            secret_home=SECRET_HOME,
            response_window=2,
        ) as proxy,
    ):
        started = time.monotonic()
        reply = radclient(port, SECRET_IN, {"User-Name": "alice"}, timeout=10)
        elapsed = time.monotonic() - started
        assert "lack of any response from home server" in proxy.log

    assert reply.code == "Access-Reject", reply.output
    assert 1.5 <= elapsed < 8, elapsed
    assert len(home.received) == 1


@needs_freeradius
@pytest.mark.slow
def test_proxy_waits_the_full_minute_for_a_held_request() -> None:
    """Soak: an answer after 50 s (past FreeRADIUS's stock 30 s max_request_time and 20 s
    response_window) still reaches the gateway. Runs only with ``-m slow``."""

    def approve(received: list[Received]) -> tuple[int, list[tuple[int, bytes]]]:
        return ACCESS_ACCEPT, [(REPLY_MESSAGE, b"approved")]

    port = free_udp_port()
    with (
        ScriptedHome(SECRET_HOME.encode(), approve, hold=50) as home,
        FreeRadius.proxy(
            port, home=("127.0.0.1", home.port), secret_in=SECRET_IN, secret_home=SECRET_HOME
        ),
    ):
        started = time.monotonic()
        reply = radclient(port, SECRET_IN, {"User-Name": "alice"}, timeout=70, retries=1)
        elapsed = time.monotonic() - started

    assert reply.code == "Access-Accept", reply.output
    assert elapsed >= 49, elapsed


# -- configuration and output parsing (no processes) ------------------------------------------


def test_parse_radclient_output_reads_codes_attributes_and_escapes() -> None:
    output = (
        "Sent Access-Request Id 7 from 0.0.0.0:5000 to 127.0.0.1:1812 length 40\n"
        '\tUser-Name = "alice"\n'
        '\tCleartext-Password = "secret"\n'
        "Received Access-Challenge Id 7 from 127.0.0.1:1812 to 127.0.0.1:5000 length 60\n"
        "\tMessage-Authenticator = 0x00112233445566778899aabbccddeeff\n"
        '\tReply-Message = "say \\"yes\\"\\\\no\\n\\303\\251"\n'
        "\tState = 0x0102\n"
        "\tSession-Timeout = 30\n"
        "(0) -: Expected Access-Accept got Access-Challenge\n"
    )
    reply = parse_radclient_output(output)

    assert reply.code == "Access-Challenge"
    assert reply.get("Reply-Message") == 'say "yes"\\no\né'
    assert reply.octets("State") == b"\x01\x02"
    assert reply.get("Session-Timeout") == "30"
    assert "Cleartext-Password" not in reply.names  # what radclient sent is not the reply
    assert reply.get("Class") is None


def test_parse_radclient_output_no_reply_and_nothing_sent() -> None:
    silent = parse_radclient_output(
        "Sent Access-Request Id 9 from 0.0.0.0:5000 to 127.0.0.1:1812 length 40\n"
        '\tUser-Name = "alice"\n'
        "(0) No reply from server for ID 9 socket 3\n"
    )
    assert (silent.code, silent.attributes) == (None, ())
    with pytest.raises(RadclientError):
        parse_radclient_output("radclient: Unknown attribute 'Usr-Name'\n")


@needs_freeradius
def test_radclient_refuses_a_misspelt_attribute_instead_of_reporting_a_drop() -> None:
    with pytest.raises(RadclientError):
        radclient(free_udp_port(), "x", {"Usr-Name": "alice"}, timeout=0.5)


def test_proxy_refuses_a_response_window_freeradius_would_reject() -> None:
    with pytest.raises(ValueError, match="1 to 60"):
        FreeRadius.proxy(1812, home=("127.0.0.1", 1813), response_window=61)
