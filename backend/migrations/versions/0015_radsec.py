"""radsec: certificate fingerprints binding RadSec connections to RADIUS clients

Revision ID: 0015
Revises: 0009
Create Date: 2026-12-06
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0015'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('radius_clients') as batch:
        batch.add_column(
            sa.Column('radsec_fingerprints', sa.Text(), nullable=False, server_default='[]')
        )


def downgrade() -> None:
    with op.batch_alter_table('radius_clients') as batch:
        batch.drop_column('radsec_fingerprints')
