"""A directory row for the sync's tests, written straight into the table.

The directory settings service (``openmfa directory add``) is another part's; the sync needs
only the row (its id, name, admin group and threshold) and a reader, which the tests fake.
"""

from __future__ import annotations

import json

from sqlalchemy import insert

from backend.directory.config import (
    DEFAULT_DISABLE_MINIMUM,
    DEFAULT_DISABLE_PERCENT,
    DEFAULT_SYNC_INTERVAL,
)
from backend.services import Services
from backend.store.tables import directories_t


async def add_directory_row(
    services: Services,
    name: str = "corp",
    *,
    admin_group_dn: str = "",
    disable_percent: int = DEFAULT_DISABLE_PERCENT,
    disable_minimum: int = DEFAULT_DISABLE_MINIMUM,
    sync_interval: int = DEFAULT_SYNC_INTERVAL,
) -> int:
    """Insert a directory named ``name``: its id."""
    now = services.clock()
    async with services.db.write() as conn:
        result = await conn.execute(
            insert(directories_t)
            .values(
                name=name,
                name_key=name.casefold(),
                kind="ad",
                urls=json.dumps(["ldaps://dc.invalid"]),
                ca_pem=None,
                bind_dn="CN=svc,DC=corp,DC=example",
                bind_password_enc=b"not used by the fake reader",
                base_dn="DC=corp,DC=example",
                user_filter="",
                group_dn="",
                admin_group_dn=admin_group_dn,
                attributes=json.dumps({"name": "sAMAccountName"}),
                connect_timeout=5.0,
                search_timeout=30.0,
                page_size=3,
                sync_interval=sync_interval,
                disable_percent=disable_percent,
                disable_minimum=disable_minimum,
                created_at=now,
                updated_at=now,
            )
            .returning(directories_t.c.id)
        )
        return int(result.scalar_one())
