"""Two nodes starting at the same moment on a database that has no server key yet (issue 18:
several nodes). Each makes a key of its own; the database can record only one. The node that
loses must stop with the message that says what to do (copy the other node's key), not with
a database error."""

from __future__ import annotations

import asyncio
from pathlib import Path

from backend.config import load_settings
from backend.errors import ServerKeyError
from backend.services import Services


def test_two_nodes_making_a_key_at_once_one_wins_the_other_is_told(
    tmp_path: Path, database_url: str
) -> None:
    # Two homes (two hosts), one database.
    first, second = (
        load_settings(
            config_file=None,
            home=tmp_path / name,
            database_url=database_url,
            key_file=tmp_path / name / "server.key",
        )
        for name in ("a", "b")
    )

    async def both() -> list[Services | BaseException]:
        results = await asyncio.gather(
            Services.open(first, push=False),
            Services.open(second, push=False),
            return_exceptions=True,
        )
        for result in results:  # closed on the loop they were opened on
            if isinstance(result, Services):
                await result.close()
        return list(results)

    results = asyncio.run(both())
    opened = [r for r in results if isinstance(r, Services)]
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(opened) == 1, results
    [error] = failed
    assert isinstance(error, ServerKeyError), repr(error)
    # Which message depends on whether the loser read the meta row before or after the
    # winner wrote it; both tell the operator to put the recorded key in place.
    assert "is not the key this database was encrypted with" in str(error) or (
        "is missing but the database holds secrets encrypted with it" in str(error)
    ), str(error)
