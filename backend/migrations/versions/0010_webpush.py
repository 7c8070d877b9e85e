"""webpush: room for a web device's push subscription in devices.push_token

Revision ID: 0010
Revises: 0008
Create Date: 2026-12-06
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A Web Push subscription (endpoint URL and keys, as JSON) is longer than an APNs or FCM
    # token. SQLite ignores VARCHAR lengths; PostgreSQL widens in place (no rewrite).
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.alter_column(
            'push_token',
            existing_type=sa.String(length=512),
            type_=sa.String(length=2048),
            existing_nullable=True,
        )


def downgrade() -> None:
    # Subscriptions longer than the old width would not fit: they are dropped (those devices
    # poll until their app registers again).
    op.execute("UPDATE devices SET push_token = NULL WHERE length(push_token) > 512")
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.alter_column(
            'push_token',
            existing_type=sa.String(length=2048),
            type_=sa.String(length=512),
            existing_nullable=True,
        )
