"""FreeRADIUS as an EAP and MS-CHAPv2 upstream, and ``eapol_test`` (Debian ``eapoltest``,
from wpa_supplicant) as the supplicant.

:func:`eap_upstream` builds a :class:`~tests.support.freeradius.FreeRadius` that checks
passwords four ways, all against one users file of cleartext passwords:

* PEAP with EAP-MSCHAPv2 inside and EAP-TTLS with PAP inside (the ``eap`` module with a
  throw-away CA and server certificate written next to the configuration; TLS 1.2, as
  FreeRADIUS 3.2 does PEAP);
* MS-CHAPv2 without EAP (the ``mschap`` module: MS-CHAP2-Success and MPPE keys);
* CHAP (the ``chap`` module);
* PAP, as :meth:`FreeRadius.upstream`.

With ``return_inner_name`` the inner tunnel copies the inner User-Name to the outer reply
(``outer.session-state``, the FreeRADIUS 3.2 replacement for ``use_tunneled_reply``), the way
an operator makes NPS or FreeRADIUS name the inner user to the bridge.

:func:`eapol_test` runs one sign-in and reports what eapol_test said: SUCCESS / FAILURE and
its own check of the MPPE keys ("MPPE keys OK: 1  mismatch: 0": the keys it derived from the
TLS tunnel equal the MS-MPPE-Send/Recv-Key it received -- only right if whoever answered
encrypted them with the secret and Request Authenticator of *this* hop).
"""

from __future__ import annotations

import datetime
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.fakes.tls import ca_certificate, write_private_key
from tests.support.freeradius import (
    UPSTREAM_SECRET,
    FreeRadius,
    _clients,
    _listen,
    _single_quoted,
    _user_name,
)
from tests.support.process import system_program


def eapol_test_binary() -> str | None:
    """Path of ``eapol_test`` (Debian installs it in /usr/bin or /usr/sbin), or None."""
    return system_program("eapol_test")


def write_certificates(directory: Path) -> Path:
    """A throw-away CA and a server certificate signed by it (P-256, a day long):
    ``ca.pem``, ``server.pem``, ``server.key`` in ``directory``. Returns the CA path."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "OpenMFA test CA")])
    ca = ca_certificate(
        ca_key, ca_name, now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "radius.test")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    write_private_key(directory / "server.key", key)
    return directory / "ca.pem"


def _users(users: Mapping[str, str]) -> str:
    return (
        "\n\n".join(
            f"{_user_name(name)}\tCleartext-Password := {_single_quoted(password)}"
            for name, password in users.items()
        )
        + "\n"
    )


def eap_upstream(
    port: int,
    directory: Path,
    *,
    users: Mapping[str, str],
    secret: str = UPSTREAM_SECRET,
    return_inner_name: bool = True,
    host: str = "127.0.0.1",
    debug: bool = False,
) -> FreeRadius:
    """FreeRADIUS on ``host:port`` answering PEAP/MSCHAPv2, TTLS/PAP, MS-CHAPv2 and PAP for
    ``users`` (name -> cleartext password); clients on loopback share ``secret``. The
    certificates go into ``directory`` (also the configuration directory)."""
    write_certificates(directory)
    inner_name = (
        "\t\tupdate outer.session-state {\n\t\t\t&User-Name := &User-Name\n\t\t}\n"
        if return_inner_name
        else ""
    )
    body = (
        _clients(secret, True)
        + f"""
modules {{
	files {{
		filename = ${{confdir}}/users
	}}
	pap {{
		normalise = no
	}}
	chap {{
	}}
	mschap {{
		use_mppe = yes
		require_encryption = no
		require_strong = no
	}}
	eap {{
		default_eap_type = peap
		timer_expire = 60
		ignore_unknown_eap_types = no
		max_sessions = 4096
		md5 {{
		}}
		mschapv2 {{
		}}
		tls-config tls-common {{
			private_key_file = ${{confdir}}/server.key
			certificate_file = ${{confdir}}/server.pem
			ca_file = ${{confdir}}/ca.pem
			cipher_list = "DEFAULT"
			tls_min_version = "1.2"
			tls_max_version = "1.2"
			ecdh_curve = "prime256v1"
			cache {{
				enable = no
			}}
		}}
		tls {{
			tls = tls-common
		}}
		peap {{
			tls = tls-common
			default_eap_type = mschapv2
			virtual_server = inner-tunnel
		}}
		ttls {{
			tls = tls-common
			default_eap_type = md5
			virtual_server = inner-tunnel
		}}
	}}
}}

server inner-tunnel {{
	authorize {{
		files
		mschap
		eap {{
			ok = return
		}}
		pap
	}}
	authenticate {{
		Auth-Type PAP {{
			pap
		}}
		Auth-Type MS-CHAP {{
			mschap
		}}
		eap
	}}
	post-auth {{
{inner_name}		Post-Auth-Type REJECT {{
			update outer.session-state {{
				&User-Name !* ANY
			}}
		}}
	}}
}}

server upstream {{
{_listen(host, port)}
	authorize {{
		chap
		mschap
		eap {{
			ok = return
		}}
		files
		pap
	}}
	authenticate {{
		Auth-Type PAP {{
			pap
		}}
		Auth-Type CHAP {{
			chap
		}}
		Auth-Type MS-CHAP {{
			mschap
		}}
		eap
	}}
	post-auth {{
		# What the inner tunnel put there (the inner User-Name) goes on the Accept.
		update {{
			&reply: += &session-state:
		}}
		Post-Auth-Type REJECT {{
			eap
		}}
	}}
}}
"""
    )
    return FreeRadius(
        role="eap-upstream",
        host=host,
        port=port,
        body=body,
        files={"users": _users(users)},
        debug=debug,
        directory=directory,
    )


Method = Literal["peap", "ttls"]


@dataclass(frozen=True)
class EapolResult:
    """What eapol_test reported: its exit status, SUCCESS / FAILURE, the MPPE check."""

    returncode: int
    output: str

    @property
    def success(self) -> bool:
        """eapol_test printed SUCCESS (exit status 0)."""
        return self.returncode == 0 and self.output.rstrip().endswith("SUCCESS")

    @property
    def mppe_ok(self) -> bool:
        """The keys eapol_test derived equal the MS-MPPE keys in the Access-Accept."""
        return re.search(r"^MPPE keys OK: 1\s+mismatch: 0$", self.output, re.MULTILINE) is not None

    @property
    def mppe_mismatch(self) -> bool:
        """eapol_test received keys that differ from the ones it derived."""
        return re.search(r"mismatch: [1-9]", self.output) is not None


def eapol_config(
    path: Path,
    method: Method,
    *,
    identity: str,
    password: str,
    ca_cert: Path,
    anonymous_identity: str | None = None,
) -> Path:
    """A wpa_supplicant network block for one PEAP/MSCHAPv2 or TTLS/PAP sign-in."""
    eap, phase2 = ("PEAP", "auth=MSCHAPV2") if method == "peap" else ("TTLS", "auth=PAP")

    def quoted(text: str) -> str:
        if '"' in text or "\n" in text:
            raise ValueError("no quotes or newlines in an eapol_test value")
        return f'"{text}"'

    lines = [
        "network={",
        "\tkey_mgmt=IEEE8021X",
        f"\teap={eap}",
        f"\tidentity={quoted(identity)}",
        f"\tpassword={quoted(password)}",
        f"\tca_cert={quoted(str(ca_cert))}",
        f"\tphase2={quoted(phase2)}",
        '\tphase1="tls_disable_tlsv1_3=1"',
    ]
    if anonymous_identity is not None:
        lines.append(f"\tanonymous_identity={quoted(anonymous_identity)}")
    lines.append("}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def eapol_test(
    config: Path,
    port: int,
    secret: str,
    *,
    host: str = "127.0.0.1",
    source: str | None = None,
    timeout: int = 30,
    mac: str | None = None,
) -> EapolResult:
    """Run ``eapol_test`` once against ``host:port`` (sending from ``source``; ``mac`` is
    the Calling-Station-Id, 02:00:00:00:00:01 unless given)."""
    binary = eapol_test_binary()
    if binary is None:
        raise RuntimeError("eapol_test not installed (Debian package eapoltest)")
    command = [binary, "-c", str(config), "-a", host, "-p", str(port), "-s", secret]
    command += ["-t", str(timeout)]
    if source is not None:
        command += ["-A", source]
    if mac is not None:
        command += ["-M", mac]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout + 15, check=False
    )
    return EapolResult(result.returncode, result.stdout + result.stderr)
