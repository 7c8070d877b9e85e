"""``openmfa directory sync`` and ``directory syncs`` as an operator runs them (in process),
against a fake directory standing in for the DC (the real one: tests/test_directory_e2e.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from backend.config import load_settings
from backend.directory.reader import DirectoryReader
from backend.services import Services
from backend.services.directories import DirectoryService
from tests.conftest import openmfa
from tests.fakes.directory import FakeDirectory
from tests.support.database import migrated_sqlite
from tests.support.directories import add_directory_row


@pytest.fixture
def corp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeDirectory:
    """A data directory with directory ``corp``; its reader is a fake with three users."""
    migrated_sqlite(tmp_path)
    settings = load_settings(config_file=None, home=tmp_path)

    async def setup() -> None:
        services = await Services.open(settings, push=False, notify=False)
        try:
            await add_directory_row(services, "corp")
        finally:
            await services.close()

    asyncio.run(setup())
    fake = FakeDirectory(page_size=2)
    for name in ("alice", "bob", "carol"):
        fake.add(name, email=f"{name}@corp.example")

    async def reader(self: DirectoryService, directory_id: int) -> DirectoryReader:
        return fake

    # The command opens its own services: their reader source hands out the fake.
    monkeypatch.setattr(DirectoryService, "reader", reader)
    return fake


def test_dry_run_then_sync_then_history(tmp_path: Path, corp: FakeDirectory) -> None:
    dry = openmfa(tmp_path, "directory", "sync", "corp", "--dry-run")
    assert "dry run of corp: done" in dry.stdout
    assert "created    3" in dry.stdout
    listed = dry.stdout.split("created:\n", 1)[1].split()
    assert sorted(listed) == ["alice", "bob", "carol"]  # a dry run lists the names
    assert dry.stderr == ""  # not a terminal: progress only every 10 s, and this took less
    assert "alice" not in openmfa(tmp_path, "user", "list").stdout
    done = openmfa(tmp_path, "directory", "sync", "corp")
    assert "sync of corp: done" in done.stdout
    assert "alice" not in done.stdout  # names only with --verbose
    assert "alice" in openmfa(tmp_path, "user", "list").stdout
    corp.rename("bob", "robert")
    verbose = openmfa(tmp_path, "directory", "sync", "corp", "--verbose", "--json")
    report = json.loads(verbose.stdout)
    assert (report["renamed"], report["details"]["renamed"]) == (1, ["bob -> robert"])
    history = openmfa(tmp_path, "directory", "syncs", "corp").stdout.splitlines()
    assert history[0].split()[0] == "STARTED"
    assert [line.split()[4] for line in history[1:]] == ["sync", "sync", "dry"]  # newest first


def test_a_sync_stopped_by_the_threshold_exits_3_and_says_why(
    tmp_path: Path, corp: FakeDirectory
) -> None:
    for number in range(7):
        corp.add(f"user{number}")
    openmfa(tmp_path, "directory", "sync", "corp")
    corp.entries.clear()  # a DC answering empty
    stopped = openmfa(tmp_path, "directory", "sync", "corp", check=False)
    assert stopped.returncode == 3
    assert "would disable 10 of 10 users" in stopped.stderr
    assert "--force" in stopped.stderr
    assert "would disable:\n" in stopped.stdout
    assert "  alice (gone)\n" in stopped.stdout
    assert "disabled" not in openmfa(tmp_path, "user", "list").stdout
    forced = openmfa(tmp_path, "directory", "sync", "corp", "--force")
    assert "disabled   10" in forced.stdout


def test_an_unknown_directory_is_an_error(tmp_path: Path, corp: FakeDirectory) -> None:
    missing = openmfa(tmp_path, "directory", "sync", "nope", check=False)
    assert missing.returncode == 1
    assert "no directory named 'nope'" in missing.stderr
