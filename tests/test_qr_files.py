"""QR code files hold activation codes and OATH seeds (issue 13, finding 22): they are written
mode 0600 whatever the umask, never through a symbolic link, and replace only a regular file
of ours."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend import qr
from backend.authenticator.client import StoredDevice, load_store, save_store
from backend.errors import OpenMFAError
from tests.support.process import Cli

WRITERS = [qr.write_png, qr.write_svg]
SECRET = "otpauth://totp/OpenMFA:alice?secret=JBSWY3DPEHPK3PXP&issuer=OpenMFA"


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("umask_022")
@pytest.mark.parametrize("write", WRITERS, ids=["png", "svg"])
def test_a_new_file_is_private_whatever_the_umask(tmp_path: Path, write: qr.Writer) -> None:
    target = tmp_path / "alice.qr"
    write(SECRET, target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.stat().st_size > 100
    assert [p.name for p in tmp_path.iterdir()] == ["alice.qr"]  # no temporary file left


@pytest.mark.usefixtures("umask_022")
@pytest.mark.parametrize("write", WRITERS, ids=["png", "svg"])
def test_an_existing_readable_file_is_replaced_by_a_private_one(
    tmp_path: Path, write: qr.Writer
) -> None:
    target = tmp_path / "alice.qr"
    target.write_bytes(b"old")
    target.chmod(0o644)
    write(SECRET, target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_bytes() != b"old"


@pytest.mark.parametrize("write", WRITERS, ids=["png", "svg"])
def test_a_symlink_at_the_path_is_refused_and_its_target_untouched(
    tmp_path: Path, write: qr.Writer
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    victim.chmod(0o644)
    link = tmp_path / "alice.qr"
    link.symlink_to(victim)
    dangling = tmp_path / "dangling.qr"
    dangling.symlink_to(tmp_path / "would-be-created")
    for path in (link, dangling):
        with pytest.raises(OpenMFAError, match="symbolic link"):
            write(SECRET, path)
    assert victim.read_bytes() == b"precious"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert link.is_symlink()
    assert not (tmp_path / "would-be-created").exists()


def test_a_directory_or_device_at_the_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(OpenMFAError, match="not a regular file"):
        qr.write_png(SECRET, tmp_path / "dir.png")
    with pytest.raises(OpenMFAError, match="not a regular file"):
        qr.write_png(SECRET, Path("/dev/null"))


def test_the_cli_refuses_a_symlink_before_it_creates_a_secret(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home")
    cli("db", "upgrade")
    cli("user", "add", "alice")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = tmp_path / "alice.png"
    link.symlink_to(victim)
    error = cli.fails("activation", "create", "alice", "--oath", "--qr-png", str(link))
    assert "symbolic link" in error
    assert victim.read_text() == "precious"
    # Nothing was created: an OATH secret is shown only once.
    assert "oath.enrol" not in cli("audit").stdout
    created = cli("activation", "create", "alice", "--oath", "--qr-png", str(tmp_path / "a.png"))
    assert "QR code written to" in created.stdout
    assert stat.S_IMODE((tmp_path / "a.png").stat().st_mode) == 0o600


def test_the_reference_authenticator_store_never_writes_through_a_planted_link(
    tmp_path: Path, umask_022: None
) -> None:
    # The same class of bug: the store (device key and seed) went through a predictable
    # ``NAME.tmp`` opened without O_EXCL, so a link planted there received the key, and a
    # stale readable ``.tmp`` kept its mode.
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    store = tmp_path / "alice.json"
    (tmp_path / "alice.json.tmp").symlink_to(victim)
    device = StoredDevice("http://127.0.0.1:1", "dev_1", "alice", "a2V5", "SEED")
    save_store(store, device)
    assert victim.read_text() == "precious"
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert load_store(store) == device
    store.write_text("{}")
    store.chmod(0o644)
    save_store(store, device)
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
