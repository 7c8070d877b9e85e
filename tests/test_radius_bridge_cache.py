"""The sealed clients cache on its own: round trip, and refusal of anything not sealed by us."""

from __future__ import annotations

from pathlib import Path

import pytest

from radius_bridge.cache import CachedDocument, CacheError, ClientsCache

DOCUMENT = CachedDocument("r7", {"revision": "r7", "clients": [{"name": "a", "secret": "s3"}]})


def test_round_trip_with_the_same_token(tmp_path: Path) -> None:
    cache = ClientsCache(tmp_path / "c", "omfa_token")
    assert cache.load() is None  # nothing saved yet
    cache.save(DOCUMENT)
    assert ClientsCache(tmp_path / "c", "omfa_token").load() == DOCUMENT
    assert list(tmp_path.iterdir()) == [tmp_path / "c"]  # no temporary file left behind


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "does not open"),
        (lambda b: b[:-10], "does not open"),
        (lambda b: b"{}" + b, "not an OpenMFA clients cache"),
        (lambda b: b[:20], "not an OpenMFA clients cache"),
    ],
)
def test_a_damaged_file_is_refused(tmp_path: Path, damage: object, message: str) -> None:
    path = tmp_path / "c"
    ClientsCache(path, "omfa_token").save(DOCUMENT)
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    with pytest.raises(CacheError, match=message):
        ClientsCache(path, "omfa_token").load()


def test_another_token_cannot_open_it(tmp_path: Path) -> None:
    ClientsCache(tmp_path / "c", "omfa_token").save(DOCUMENT)
    with pytest.raises(CacheError, match="another token"):
        ClientsCache(tmp_path / "c", "omfa_other").load()


def test_an_unwritable_place_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="cannot write"):
        ClientsCache(tmp_path / "missing" / "c", "omfa_token").save(DOCUMENT)


def test_a_link_planted_at_the_old_temporary_name_is_not_followed(tmp_path: Path) -> None:
    """The cache used to be written through ``.c.<pid>.tmp``, a name anyone who can write the
    directory could guess: a symbolic link planted there received the sealed document (and
    the file it pointed to was truncated)."""
    import os

    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / f".c.{os.getpid()}.tmp").symlink_to(victim)
    os.umask(old := os.umask(0o022))
    try:
        ClientsCache(tmp_path / "c", "omfa_token").save(DOCUMENT)
    finally:
        os.umask(old)
    assert victim.read_bytes() == b"precious"
    assert (tmp_path / "c").stat().st_mode & 0o777 == 0o600
    assert ClientsCache(tmp_path / "c", "omfa_token").load() == DOCUMENT
