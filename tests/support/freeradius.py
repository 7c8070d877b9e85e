"""FreeRADIUS 3.2 (Debian ``freeradius``) and ``radclient`` (``freeradius-utils``) for the
RADIUS interop tests.

Two roles, each a real ``freeradius`` process running from a configuration written into its
own temporary directory (nothing under ``/etc/freeradius`` is read; no default sites, no
EAP/TLS modules), listening on a loopback UDP port the caller chose:

* :meth:`FreeRadius.upstream` -- a PAP server with a fixed user list, the stand-in for NPS
  checking Active Directory passwords when a client uses ``primary = radius``. Accepts carry
  the configured reply attributes (``Class``, ``Filter-Id``, vendor-specific ones) so tests
  can check that the bridge copies them back; rejects carry none. It requires
  Message-Authenticator from its clients unless told otherwise.
* :meth:`FreeRadius.proxy` -- a proxy that takes requests with one secret and forwards every
  one of them to a single home server (the bridge) with another secret, with the long
  timeouts a held push needs: the way NPS forwards to the NPS extension / MFA Server.

``with FreeRadius.upstream(port, users={"alice": "pw"}) as server:`` starts the process,
waits (bounded) for its "Ready to process requests" line, and on leaving the block stops it
(SIGTERM, then SIGKILL). :func:`radclient` sends one request with Debian's ``radclient`` and
parses the reply.

FreeRADIUS 3.2.1 quirks the configuration deals with (see the comments where they apply):

* ``response_window`` is capped at 60 s, and quietly cut to ``max_request_time`` (30 s in
  Debian's stock radiusd.conf) with only a debug line saying so;
* without ``reject_delay = 0`` every reject waits a second;
* the ``files`` module adds reply items before the password is checked, so rejects would
  carry them;
* double-quoted strings in the configuration and the users file are expanded (``${...}``,
  ``%{...}``); single-quoted ones are literal. In radiusd.conf a single-quoted string keeps
  every backslash except the one in ``\\'``; in the users file ``\\\\`` and ``\\'``
  are escapes, but the user-name field is taken without any unescaping;
* a ``listen { type = proxy }`` may not sit inside a virtual server; without one the proxy
  socket is bound to every address;
* as a proxy it adds Message-Authenticator to every forwarded Access-Request (even when the
  client sent none) plus its own Proxy-State, passes client retransmissions on unchanged,
  and answers Access-Reject when the home server stays silent for ``response_window``.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

from tests.support.process import stop_process, system_program, wait_for

AttributeValue = str | int | bytes
"""A value for :func:`radclient` and the users file: text (quoted for you; FreeRADIUS
parses quoted numbers, addresses and enumerated names such as ``"Framed-User"`` by the
attribute's type), an integer, or raw octets (written as ``0x...``)."""

Attributes = Mapping[str, AttributeValue] | Sequence[tuple[str, AttributeValue]]
"""Attribute name -> value; a sequence of pairs when a name repeats (``Cisco-AVPair``)."""

READY_LINE = "Ready to process requests"
# Default shared secrets (tests that do not care which).
UPSTREAM_SECRET = "upstream-secret"
PROXY_SECRET = "proxy-secret"
HOME_SECRET = "bridge-secret"
LOOPBACKS = ("127.0.0.1", "::1")


def freeradius_binary() -> str | None:
    """Path of the FreeRADIUS server (Debian installs it in /usr/sbin), or None."""
    return system_program("freeradius")


def radclient_binary() -> str | None:
    """Path of Debian's ``radclient``, or None."""
    return shutil.which("radclient")


def unavailable_reason() -> str | None:
    """Why the FreeRADIUS tests cannot run here (say it when skipping), or None."""
    missing = [
        name
        for name, path in (("freeradius", freeradius_binary()), ("radclient", radclient_binary()))
        if path is None
    ]
    if not missing:
        return None
    return (
        f"{' and '.join(missing)} not installed (Debian packages freeradius, freeradius-utils;"
        " `make tools` installs them as root)"
    )


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port nothing is bound to right now on ``host``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# -- quoting ------------------------------------------------------------------------------------


def _single_quoted(text: str) -> str:
    """A single-quoted string for the users file: literal, no ``%{}`` expansion; that
    parser takes ``\\\\`` and ``\\'`` as escapes."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _config_string(text: str) -> str:
    """A single-quoted string for radiusd.conf: literal, no ``${}`` expansion.

    The configuration parser unescapes only ``\\'`` there and keeps every other backslash
    as it is, so a backslash right before a quote (or at the end) cannot be written.
    """
    if re.search(r"\\('|$)", text):
        raise ValueError(
            "FreeRADIUS cannot be given a secret with a backslash before ' or at the end"
        )
    return "'" + text.replace("'", "\\'") + "'"


def _user_name(name: str) -> str:
    """The name field of a users-file entry: quoted, but read without unescaping."""
    if "'" in name or name.endswith("\\") or not name:
        raise ValueError(f"cannot write user name {name!r} into a users file")
    return f"'{name}'"


def _double_quoted(text: str) -> str:
    """A double-quoted string for radclient's input (radclient expands nothing)."""
    escaped = (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def _pairs(attributes: Attributes) -> list[tuple[str, AttributeValue]]:
    if isinstance(attributes, Mapping):
        return list(attributes.items())
    return list(attributes)


def _value(value: AttributeValue, quote: Literal["single", "double"]) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, int):
        return str(value)
    return _single_quoted(value) if quote == "single" else _double_quoted(value)


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _attribute_name(name: str) -> str:
    # A name goes into the configuration and radclient's input unquoted: refuse anything
    # that could break the syntax rather than quietly producing another request.
    if not _NAME.match(name):
        raise ValueError(f"not a RADIUS attribute name: {name!r}")
    return name


# -- configuration --------------------------------------------------------------------------


def _clients(secret: str, require_message_authenticator: bool) -> str:
    require = "yes" if require_message_authenticator else "no"
    blocks = []
    for index, address in enumerate(LOOPBACKS):
        key = "ipv6addr" if ":" in address else "ipaddr"
        blocks.append(
            f"client loopback{index} {{\n"
            f"\t{key} = {address}\n"
            f"\tsecret = {_config_string(secret)}\n"
            f"\trequire_message_authenticator = {require}\n"
            f"\tshortname = loopback{index}\n"
            "}\n"
        )
    return "".join(blocks)


def _listen(host: str, port: int) -> str:
    key = "ipv6addr" if ":" in host else "ipaddr"
    return f"\tlisten {{\n\t\ttype = auth\n\t\t{key} = {host}\n\t\tport = {port}\n\t}}\n"


def _main_config(directory: Path, body: str, *, proxy: bool) -> str:
    """radiusd.conf: every path inside ``directory`` or the Debian install, nothing from
    /etc/freeradius, then ``body`` (clients, modules, servers)."""
    d = str(directory)
    return f"""# Written by tests/support/freeradius.py for one test run.
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = {d}
sbindir = /usr/sbin
logdir = {d}
raddbdir = {d}
radacctdir = {d}
name = freeradius
confdir = {d}
modconfdir = {d}
run_dir = {d}
db_dir = {d}
libdir = /usr/lib/freeradius
pidfile = {d}/radiusd.pid
hostname_lookups = no
# response_window of a home server may not exceed max_request_time (nor 60 s); a held push
# request lives up to a minute, so give requests two.
max_request_time = 120
cleanup_delay = 5
max_requests = 65536
proxy_requests = {"yes" if proxy else "no"}

log {{
	destination = stdout
	colourise = no
	stripped_names = no
	auth = yes
	auth_badpass = no
	auth_goodpass = no
}}

security {{
	max_attributes = 200
	# The default (1 s) would delay every reject a test waits for.
	reject_delay = 0
	status_server = yes
}}

thread pool {{
	start_servers = 4
	max_servers = 32
	min_spare_servers = 2
	max_spare_servers = 8
	max_requests_per_server = 0
}}

{body}"""


def _users_file(
    users: Mapping[str, str], reply: Attributes, user_reply: Mapping[str, Attributes]
) -> str:
    lines = ["# name  check items (password)  / reply items, one per line"]
    for name, password in users.items():
        items = [*_pairs(reply), *_pairs(user_reply.get(name, ()))]
        entry = [f"{_user_name(name)}\tCleartext-Password := {_single_quoted(password)}"]
        rendered = [f"\t{_attribute_name(attr)} += {_value(v, 'single')}" for attr, v in items]
        if rendered:
            entry.append(",\n".join(rendered))
        lines.append("\n".join(entry))
    return "\n\n".join(lines) + "\n"


@dataclass
class FreeRadius:
    """One FreeRADIUS server process with its own configuration directory.

    Build it with :meth:`upstream` or :meth:`proxy` and use it as a context manager. The
    process's stdout and stderr (FreeRADIUS's debug output with ``debug=True``) go to
    ``<directory>/radiusd.log``; read them with :attr:`log`. ``directory`` defaults to a new
    temporary directory removed on exit; pass one (e.g. pytest's ``tmp_path``) to keep it.
    """

    role: str
    host: str
    port: int
    body: str  # clients, modules and servers: radiusd.conf after the common settings
    files: dict[str, str] = field(default_factory=dict)  # more files: name -> text
    debug: bool = True
    directory: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _own_directory: bool = field(default=False, init=False)

    # -- the two roles --------------------------------------------------------------------

    @classmethod
    def upstream(
        cls,
        port: int,
        *,
        users: Mapping[str, str],
        reply: Attributes = (),
        user_reply: Mapping[str, Attributes] | None = None,
        secret: str = UPSTREAM_SECRET,
        require_message_authenticator: bool = True,
        host: str = "127.0.0.1",
        debug: bool = True,
        directory: Path | None = None,
    ) -> FreeRadius:
        """A PAP server on ``host:port`` that knows ``users`` (name -> cleartext password).

        Clients on 127.0.0.1 and ::1 share ``secret``. An Access-Accept carries ``reply``
        plus ``user_reply[name]``; an Access-Reject carries nothing. Requests without a valid
        Message-Authenticator are dropped while ``require_message_authenticator`` holds.
        """
        # The files module copies a matching entry's reply items into the reply during
        # authorize, before PAP has looked at the password; the reject section empties the
        # reply again so a wrong password never carries authorization attributes.
        body = (
            _clients(secret, require_message_authenticator)
            + f"""
modules {{
	files {{
		filename = ${{confdir}}/users
	}}
	pap {{
		normalise = no
	}}
}}

server upstream {{
{_listen(host, port)}
	authorize {{
		files
		pap
	}}
	authenticate {{
		Auth-Type PAP {{
			pap
		}}
	}}
	post-auth {{
		Post-Auth-Type REJECT {{
			update {{
				&reply: !* ANY
			}}
		}}
	}}
}}
"""
        )
        return cls(
            role="upstream",
            host=host,
            port=port,
            body=body,
            files={"users": _users_file(users, reply, user_reply or {})},
            debug=debug,
            directory=directory,
        )

    @classmethod
    def proxy(
        cls,
        port: int,
        *,
        home: tuple[str, int],
        secret_in: str = PROXY_SECRET,
        secret_home: str = HOME_SECRET,
        response_window: int = 60,
        require_message_authenticator: bool = True,
        host: str = "127.0.0.1",
        debug: bool = True,
        directory: Path | None = None,
    ) -> FreeRadius:
        """A proxy on ``host:port`` (clients on loopback, secret ``secret_in``) sending every
        Access-Request to the home server ``home`` (secret ``secret_home``).

        ``response_window`` is how long it waits for the home server's answer (FreeRADIUS
        caps it at 60 s). Retransmissions from the client are passed on to the home server
        as retransmissions. Status checks of the home server are off, so the only packets
        the home server gets are the ones the client sent.
        """
        if not 1 <= response_window <= 60:
            raise ValueError("FreeRADIUS accepts a response_window of 1 to 60 seconds")
        home_host, home_port = home
        home_key = "ipv6addr" if ":" in home_host else "ipaddr"
        body = (
            _clients(secret_in, require_message_authenticator)
            + f"""
# One home server, never probed (status_check = none): a held push request must not make
# the proxy think it is dead, and a test must see only the packets it caused. zombie_period
# outlasts response_window so one slow answer does not take the server out of service.
home_server openmfa {{
	type = auth
	{home_key} = {home_host}
	port = {home_port}
	# Send from loopback, not from a socket bound to every address.
	src_ipaddr = {"::1" if ":" in home_host else "127.0.0.1"}
	proto = udp
	secret = {_config_string(secret_home)}
	response_window = {response_window}
	response_timeouts = 3
	zombie_period = 120
	revive_interval = 10
	status_check = none
	max_outstanding = 65536
}}

home_server_pool openmfa_pool {{
	type = fail-over
	home_server = openmfa
}}

realm DEFAULT {{
	auth_pool = openmfa_pool
	nostrip
}}

proxy server {{
	default_fallback = no
}}

# The socket proxied packets leave from: loopback only (left out, FreeRADIUS binds one to
# every address). It may not sit inside a virtual server.
listen {{
	type = proxy
	{"ipv6addr = ::1" if ":" in home_host else "ipaddr = 127.0.0.1"}
	port = 0
}}

server proxy {{
{_listen(host, port)}
	authorize {{
		# Everything goes to OpenMFA, whatever realm the name carries (the name is
		# forwarded as sent: normalising it is the bridge's job).
		update control {{
			&Proxy-To-Realm := 'DEFAULT'
		}}
	}}
	authenticate {{
	}}
	post-proxy {{
	}}
	post-auth {{
	}}
}}
"""
        )
        return cls(
            role="proxy",
            host=host,
            port=port,
            body=body,
            debug=debug,
            directory=directory,
        )

    # -- the process ------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens."""
        return (self.host, self.port)

    @property
    def log_path(self) -> Path:
        """File receiving the process's stdout and stderr."""
        assert self.directory is not None, "not started"
        return self.directory / "radiusd.log"

    @property
    def log(self) -> str:
        """Everything the server printed so far."""
        if self.directory is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def write_config(self) -> Path:
        """Write radiusd.conf (and the users file) into :attr:`directory`; return it."""
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix=f"openmfa-freeradius-{self.role}-"))
            self._own_directory = True
        self.directory.mkdir(parents=True, exist_ok=True)
        # FreeRADIUS refuses configuration files that others may write to.
        self.directory.chmod(0o700)
        config = _main_config(self.directory, self.body, proxy=self.role == "proxy")
        (self.directory / "radiusd.conf").write_text(config, encoding="utf-8")
        for name, text in self.files.items():
            (self.directory / name).write_text(text, encoding="utf-8")
        return self.directory

    def start(self, timeout: float = 30) -> None:
        """Start the server and wait until it says it is ready (at most ``timeout`` s)."""
        binary = freeradius_binary()
        if binary is None:
            raise RuntimeError(unavailable_reason() or "freeradius not installed")
        directory = self.write_config()
        # -f: foreground; -X: debug output to stdout, one thread; otherwise -l stdout
        # keeps the normal log (with the ready line) on stdout and the server threaded.
        flags = ["-f", "-X"] if self.debug else ["-f", "-l", "stdout"]
        with self.log_path.open("wb") as out:
            self.process = subprocess.Popen(
                [binary, *flags, "-d", str(directory), "-n", "radiusd"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"freeradius ({self.role}) exited {self.process.returncode} during"
                    f" start-up:\n{self.log[-6000:]}"
                )
            return READY_LINE in self.log

        wait_for(ready, timeout, f"freeradius ({self.role}) to be ready")

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``; its exit status."""
        if self.process is None:
            return None
        return stop_process(self.process, timeout)

    def running(self) -> bool:
        """True while the process is alive."""
        return self.process is not None and self.process.poll() is None

    def cleanup(self) -> None:
        """Stop the process; remove the directory if it was ours."""
        self.stop()
        if self._own_directory and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> FreeRadius:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


# -- radclient ------------------------------------------------------------------------------


class RadclientError(RuntimeError):
    """radclient did not send the request at all (bad attribute name, bad value...)."""


@dataclass(frozen=True)
class RadiusReply:
    """What radclient received: the code name (``Access-Accept``, ``Access-Reject``,
    ``Access-Challenge``) or ``None`` when no reply came, and the attributes in order as
    radclient printed them (strings unquoted; octets stay ``0x...``; integers and
    enumerated values as printed)."""

    code: str | None
    attributes: tuple[tuple[str, str], ...]
    output: str

    def get(self, name: str) -> str | None:
        """The first value of attribute ``name``, or None."""
        return next((value for attr, value in self.attributes if attr == name), None)

    def all(self, name: str) -> list[str]:
        """Every value of attribute ``name``, in order."""
        return [value for attr, value in self.attributes if attr == name]

    def octets(self, name: str) -> bytes | None:
        """The first value of an octets attribute (``State``, ``Class``) as bytes."""
        value = self.get(name)
        if value is None:
            return None
        if not value.startswith("0x"):
            return value.encode()
        return bytes.fromhex(value[2:])

    @property
    def names(self) -> list[str]:
        """Attribute names in the order received."""
        return [attr for attr, _ in self.attributes]


_RECEIVED = re.compile(r"^Received (\S+) Id (\d+) from ")
_ATTRIBUTE = re.compile(r"^\t(\S+) = (.*)$")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n", "r": "\r", "t": "\t"}


def _unquote(text: str) -> str:
    """radclient's printed value: a double-quoted string with C-like escapes, or bare."""
    if len(text) < 2 or not (text.startswith('"') and text.endswith('"')):
        return text
    body, out, i = text[1:-1], bytearray(), 0
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt in _ESCAPES:
                out += _ESCAPES[nxt].encode()
                i += 2
                continue
            if re.match(r"[0-7]{3}", body[i + 1 : i + 4]):
                out.append(int(body[i + 1 : i + 4], 8))
                i += 4
                continue
        out += char.encode()
        i += 1
    return out.decode("utf-8", errors="replace")


def parse_radclient_output(output: str) -> RadiusReply:
    """Parse ``radclient -x`` output for one request."""
    if not re.search(r"^Sent \S+ Id \d+ ", output, re.MULTILINE):
        raise RadclientError(f"radclient sent nothing:\n{output}")
    code: str | None = None
    attributes: list[tuple[str, str]] = []
    in_reply = False
    for line in output.splitlines():
        received = _RECEIVED.match(line)
        if received:
            code, in_reply, attributes = received.group(1), True, []
            continue
        if in_reply:
            attribute = _ATTRIBUTE.match(line)
            if attribute is None:
                in_reply = False
                continue
            attributes.append((attribute.group(1), _unquote(attribute.group(2))))
    return RadiusReply(code=code, attributes=tuple(attributes), output=output)


def radclient(
    port: int,
    secret: str,
    attributes: Attributes,
    *,
    code: Literal["auth", "status", "acct"] = "auth",
    host: str = "127.0.0.1",
    timeout: float = 3.0,
    retries: int = 1,
    message_authenticator: bool = True,
) -> RadiusReply:
    """Send one request with ``radclient -x host:port CODE SECRET`` and parse the reply.

    ``attributes`` are written on radclient's stdin. With ``message_authenticator`` (the
    default) ``Message-Authenticator = 0x00`` is added, which makes radclient compute it.
    radclient waits ``timeout`` seconds per try and tries ``retries`` times in all (each
    retry a retransmission: same Id, same authenticator). ``code`` is None on the result
    when no reply came.
    """
    binary = radclient_binary()
    if binary is None:
        raise RuntimeError(unavailable_reason() or "radclient not installed")
    if retries < 1:
        raise ValueError("retries counts every try, the first included: at least 1")
    lines = [f"{_attribute_name(name)} = {_value(v, 'double')}" for name, v in _pairs(attributes)]
    if message_authenticator and not any(
        name == "Message-Authenticator" for name, _ in _pairs(attributes)
    ):
        lines.append("Message-Authenticator = 0x00")
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    result = subprocess.run(
        [binary, "-x", "-t", f"{timeout:g}", "-r", str(retries), target, code, secret],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=timeout * retries + 15,
        check=False,
    )
    return parse_radclient_output(result.stdout + result.stderr)
