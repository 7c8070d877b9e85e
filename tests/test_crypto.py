"""The server key file and AES-GCM secrets at rest; token digests."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend import crypto
from backend.crypto import (
    KEY_BYTES,
    SecretBox,
    key_fingerprint,
    load_or_create_key,
    new_token,
    same,
    token_digest,
)
from backend.errors import ServerKeyError

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """Mode 0600 must come from the code, not from a strict umask of whoever runs it."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# -- SecretBox --------------------------------------------------------------------------------


def test_seal_open_round_trip() -> None:
    box = SecretBox(KEY)
    for plaintext in (b"", b"JBSWY3DPEHPK3PXP", os.urandom(1000)):
        assert box.open(box.seal(plaintext, "seed:dev_1"), "seed:dev_1") == plaintext


def test_ciphertext_hides_the_plaintext_and_never_repeats() -> None:
    box = SecretBox(KEY)
    plaintext = b"JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    sealed = [box.seal(plaintext, "seed:dev_1") for _ in range(50)]
    assert len(set(sealed)) == 50  # a fresh nonce every time
    assert len({s[1:13] for s in sealed}) == 50
    for s in sealed:
        assert plaintext not in s
        assert len(s) == 1 + 12 + len(plaintext) + 16  # version, nonce, ciphertext, tag
        assert s[:1] == b"\x01"


def test_purpose_binding() -> None:
    """A seed copied from one device row to another does not decrypt there."""
    box = SecretBox(KEY)
    sealed = box.seal(b"secret", "seed:dev_1")
    for wrong in ("seed:dev_2", "seed:dev_1 ", "SEED:dev_1", "", "radius:dev_1"):
        with pytest.raises(ServerKeyError, match="does not decrypt"):
            box.open(sealed, wrong)


def test_another_key_does_not_open_it() -> None:
    sealed = SecretBox(KEY).seal(b"secret", "seed:dev_1")
    with pytest.raises(ServerKeyError, match="does not decrypt with this server key"):
        SecretBox(OTHER_KEY).open(sealed, "seed:dev_1")


@pytest.mark.parametrize("position", [0, 1, 12, 13, 20, -1])
def test_any_flipped_bit_is_detected(position: int) -> None:
    box = SecretBox(KEY)
    sealed = bytearray(box.seal(b"a secret of some length", "seed:dev_1"))
    sealed[position] ^= 0x40
    with pytest.raises(ServerKeyError):
        box.open(bytes(sealed), "seed:dev_1")


@pytest.mark.parametrize(
    "damaged",
    [b"", b"\x01", b"\x01" + b"\x00" * 27, b"\x02" + b"\x00" * 40, b"\x00" * 64],
    ids=["empty", "version-only", "too-short", "unknown-version", "zeros"],
)
def test_damaged_values_raise_server_key_error(damaged: bytes) -> None:
    with pytest.raises(ServerKeyError):
        SecretBox(KEY).open(damaged, "seed:dev_1")


def test_truncated_ciphertext_is_refused() -> None:
    box = SecretBox(KEY)
    sealed = box.seal(b"a secret", "seed:dev_1")
    for cut in (1, 8, 16, len(sealed) - 29):
        with pytest.raises(ServerKeyError):
            box.open(sealed[:-cut], "seed:dev_1")


# -- the key file -----------------------------------------------------------------------------


def test_key_file_is_created_0600_in_a_0700_directory(
    tmp_path: Path, permissive_umask: None
) -> None:
    path = tmp_path / "home" / "server.key"

    key = load_or_create_key(path, create=True)

    assert len(key) == KEY_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert not list(path.parent.glob("*.tmp"))  # no temporary file left behind
    text = path.read_text(encoding="ascii")
    assert text.startswith("#")  # explains itself to whoever opens it
    assert base64.b64encode(key).decode() in text


def test_key_file_is_reused(tmp_path: Path) -> None:
    path = tmp_path / "server.key"
    first = load_or_create_key(path, create=True)
    assert load_or_create_key(path, create=True) == first
    assert load_or_create_key(path, create=False) == first


def test_fresh_keys_differ(tmp_path: Path) -> None:
    a = load_or_create_key(tmp_path / "a.key", create=True)
    b = load_or_create_key(tmp_path / "b.key", create=True)
    assert a != b


def test_missing_key_without_create_raises(tmp_path: Path) -> None:
    path = tmp_path / "server.key"
    with pytest.raises(ServerKeyError) as caught:
        load_or_create_key(path, create=False)
    assert str(path) in str(caught.value)
    assert "backup" in str(caught.value)
    assert not path.exists()  # and nothing was created


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not base64 at all!\n", "not valid base64"),
        (base64.b64encode(b"x" * 16).decode() + "\n", "32-byte key"),
        (base64.b64encode(b"x" * 33).decode() + "\n", "32-byte key"),
        ("# only a comment\n", "32-byte key"),
        ("", "32-byte key"),
    ],
)
def test_damaged_key_file_raises(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "server.key"
    path.write_text(content, encoding="ascii")
    for create in (False, True):
        with pytest.raises(ServerKeyError, match=message):
            load_or_create_key(path, create=create)
    assert path.read_text(encoding="ascii") == content  # never overwritten


def test_non_ascii_key_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "server.key"
    path.write_bytes(b"\xff\xfe garbage")
    with pytest.raises(ServerKeyError, match="cannot read"):
        load_or_create_key(path, create=False)


def test_key_file_that_is_a_directory_raises(tmp_path: Path) -> None:
    path = tmp_path / "server.key"
    path.mkdir()
    with pytest.raises(ServerKeyError, match="cannot read"):
        load_or_create_key(path, create=True)


def test_key_written_by_hand_is_read(tmp_path: Path) -> None:
    """An operator restoring a backup may drop the comment or wrap the line."""
    path = tmp_path / "server.key"
    encoded = base64.b64encode(KEY).decode()
    path.write_text(f"{encoded[:20]}\n{encoded[20:]}\n", encoding="ascii")
    assert load_or_create_key(path, create=False) == KEY


def test_fingerprint_identifies_without_revealing() -> None:
    assert key_fingerprint(KEY) == key_fingerprint(bytes(KEY))
    assert key_fingerprint(KEY) != key_fingerprint(OTHER_KEY)
    assert len(key_fingerprint(KEY)) == 32
    assert KEY.hex() not in key_fingerprint(KEY)


# -- tokens -----------------------------------------------------------------------------------


def test_tokens_are_random_urlsafe_and_carry_160_bits() -> None:
    tokens = {new_token("omfa_") for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert token.startswith("omfa_")
        body = token.removeprefix("omfa_")
        assert len(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))) == 20


def test_token_digest_is_sha256_hex() -> None:
    assert token_digest("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert token_digest("abc") != token_digest("abd")


def test_same_is_plain_equality() -> None:
    assert same("abc", "abc")
    assert same(b"abc", "abc")
    assert not same("abc", "abd")
    assert not same("abc", "abcd")


def test_module_keeps_secrets_out_of_messages() -> None:
    sealed = SecretBox(KEY).seal(b"JBSWY3DPEHPK3PXP", "seed:dev_1")
    with pytest.raises(ServerKeyError) as caught:
        SecretBox(OTHER_KEY).open(sealed, "seed:dev_1")
    assert "JBSWY3DPEHPK3PXP" not in str(caught.value)
    assert crypto.KEY_BYTES == 32


def test_a_stale_temporary_file_does_not_loosen_the_mode(
    tmp_path: Path, permissive_umask: None
) -> None:
    """A crash can leave the temporary file behind, world-readable; the key must still be 0600."""
    path = tmp_path / "server.key"
    stale = path.with_suffix(".tmp")
    stale.write_text("left over\n")
    stale.chmod(0o644)

    key = load_or_create_key(path, create=True)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path, create=False) == key
    assert not stale.exists()
