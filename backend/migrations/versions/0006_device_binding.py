"""app and gateway API binding: one device per public key, challenges know who started them

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A key registered for several devices (possible before this revision) stays with the
    # oldest; the others lose it and, if live, are removed: they must activate again with a
    # new key. Without the key they cannot sign, so nothing else about them changes.
    op.execute(
        "UPDATE devices SET public_key = NULL, "
        "state = CASE WHEN state IN ('pending', 'active') THEN 'removed' ELSE state END "
        "WHERE public_key IS NOT NULL AND EXISTS ("
        "SELECT 1 FROM devices AS older WHERE older.public_key = devices.public_key "
        "AND (older.created_at < devices.created_at "
        "OR (older.created_at = devices.created_at AND older.id < devices.id)))"
    )
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.create_index('uq_devices_public_key', ['public_key'], unique=True)
    # Who started a challenge: "token:<id>" for a stored API token, "ephemeral:<name>" for the
    # in-process bridge, NULL for the web portal and console (no gateway token may see those).
    with op.batch_alter_table('challenges', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('started_by', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
        )
    op.execute(
        "UPDATE challenges SET started_by = 'token:' || CAST(token_id AS VARCHAR(20)) "
        "WHERE token_id IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table('challenges', schema=None) as batch_op:
        batch_op.drop_column('started_by')
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_index('uq_devices_public_key')
