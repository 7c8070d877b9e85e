"""privacyIDEA Authenticator push tokens: device serial and server key, per-challenge nonces

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('serial', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
        batch_op.add_column(sa.Column('server_key_enc', sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column('app_lock', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.create_unique_constraint('uq_devices_serial', ['serial'])
    op.create_table('pipush_nonces',
    sa.Column('nonce', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('challenge_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('device_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('options', sqlmodel.sql.sqltypes.AutoString(length=64), server_default='', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['challenge_id'], ['challenges.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['device_id'], ['devices.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('nonce'),
    sa.UniqueConstraint('challenge_id', 'device_id', name='uq_pipush_nonces_challenge_device')
    )
    with op.batch_alter_table('pipush_nonces', schema=None) as batch_op:
        batch_op.create_index('ix_pipush_nonces_expires_at', ['expires_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('pipush_nonces', schema=None) as batch_op:
        batch_op.drop_index('ix_pipush_nonces_expires_at')
    op.drop_table('pipush_nonces')
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_constraint('uq_devices_serial', type_='unique')
        batch_op.drop_column('app_lock')
        batch_op.drop_column('server_key_enc')
        batch_op.drop_column('serial')
