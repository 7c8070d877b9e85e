"""push delivery status, fraud report notification and review, per-client number matching

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('push_status', sqlmodel.sql.sqltypes.AutoString(length=16), server_default='', nullable=False))
        batch_op.add_column(sa.Column('push_error', sqlmodel.sql.sqltypes.AutoString(length=128), server_default='', nullable=False))
        batch_op.add_column(sa.Column('push_status_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('fraud_reports', schema=None) as batch_op:
        batch_op.add_column(sa.Column('notify_state', sqlmodel.sql.sqltypes.AutoString(length=16), server_default='none', nullable=False))
        batch_op.add_column(sa.Column('notify_attempts', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('notified_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('reviewed_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('reviewed_by', sqlmodel.sql.sqltypes.AutoString(length=128), server_default='', nullable=False))
        batch_op.create_index('ix_fraud_reports_state', ['state'])
    with op.batch_alter_table('radius_clients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('number_matching', sqlmodel.sql.sqltypes.AutoString(length=16), server_default='policy', nullable=False))
    with op.batch_alter_table('challenges', schema=None) as batch_op:
        batch_op.create_index('ix_challenges_user_created', ['user_id', 'created_at'])


def downgrade() -> None:
    with op.batch_alter_table('challenges', schema=None) as batch_op:
        batch_op.drop_index('ix_challenges_user_created')
    with op.batch_alter_table('radius_clients', schema=None) as batch_op:
        batch_op.drop_column('number_matching')
    with op.batch_alter_table('fraud_reports', schema=None) as batch_op:
        batch_op.drop_index('ix_fraud_reports_state')
        batch_op.drop_column('reviewed_by')
        batch_op.drop_column('reviewed_at')
        batch_op.drop_column('notified_at')
        batch_op.drop_column('notify_attempts')
        batch_op.drop_column('notify_state')
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_column('push_status_at')
        batch_op.drop_column('push_error')
        batch_op.drop_column('push_status')
