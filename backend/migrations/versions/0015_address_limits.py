"""limits: per-address web sign-in failures in the database, shared by every node

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06

One compact row per source address that failed a web sign-in step: the failures counted in
the current window and when that window started. The address limit was a sliding window in
each process's memory, so with several nodes an address had the limit once per node.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0015'
down_revision: str | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'address_limits',
        sa.Column('address', sa.String(length=64), nullable=False),
        sa.Column('failures', sa.Integer(), nullable=False),
        sa.Column('window_started_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('address'),
    )
    op.create_index(
        'ix_address_limits_window_started_at', 'address_limits', ['window_started_at']
    )


def downgrade() -> None:
    op.drop_index('ix_address_limits_window_started_at', table_name='address_limits')
    op.drop_table('address_limits')
