"""nodes: several nodes on one database (node heartbeats, duty leases, push handover, one
idempotency scope for every bridge)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'nodes',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('host', sa.String(length=255), nullable=False),
        sa.Column('pid', sa.Integer(), nullable=False),
        sa.Column('version', sa.String(length=32), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('stopped_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_table(
        'leases',
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('node_id', sa.String(length=64), nullable=False),
        sa.Column('acquired_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )
    with op.batch_alter_table('challenges') as batch:
        batch.add_column(sa.Column('idempotency_scope', sa.String(length=80), nullable=True))
        batch.add_column(sa.Column('push_node', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('push_sent_at', sa.DateTime(timezone=True), nullable=True))
    # Existing keys keep their meaning: scoped to the token that sent them. Finished pushes
    # are marked sent, so no node takes them over after the upgrade.
    op.execute(
        "UPDATE challenges SET idempotency_scope = 'token:' || CAST(token_id AS VARCHAR(20)) "
        "WHERE idempotency_key IS NOT NULL AND token_id IS NOT NULL"
    )
    op.execute(
        "UPDATE challenges SET idempotency_scope = 'bridge' "
        "WHERE idempotency_key IS NOT NULL AND token_id IS NULL"
    )
    op.execute("UPDATE challenges SET push_sent_at = created_at WHERE method = 'push'")
    with op.batch_alter_table('challenges') as batch:
        batch.drop_constraint('uq_challenges_idempotency', type_='unique')
        batch.create_unique_constraint(
            'uq_challenges_idempotency', ['idempotency_scope', 'idempotency_key']
        )


def downgrade() -> None:
    with op.batch_alter_table('challenges') as batch:
        batch.drop_constraint('uq_challenges_idempotency', type_='unique')
        batch.create_unique_constraint(
            'uq_challenges_idempotency', ['token_id', 'idempotency_key']
        )
        batch.drop_column('push_sent_at')
        batch.drop_column('push_node')
        batch.drop_column('idempotency_scope')
    op.drop_table('leases')
    op.drop_table('nodes')
