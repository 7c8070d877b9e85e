"""radius clients and API token scopes

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""
import secrets
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REVISION_KEY = 'radius_clients_revision'


def upgrade() -> None:
    op.create_table('radius_clients',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('name_key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('addresses', sa.Text(), nullable=False),
    sa.Column('secret_enc', sa.LargeBinary(), nullable=False),
    sa.Column('mode', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('primary_auth', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('upstream_host', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.Column('upstream_port', sa.Integer(), nullable=True),
    sa.Column('upstream_timeout', sa.Float(), nullable=True),
    sa.Column('upstream_secret_enc', sa.LargeBinary(), nullable=True),
    sa.Column('require_message_authenticator', sa.Boolean(), nullable=False),
    sa.Column('failmode', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('unenrolled', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('push_timeout', sa.Float(), nullable=False),
    sa.Column('prompt', sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
    sa.Column('name_format', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('realm_map', sa.Text(), nullable=False),
    sa.Column('exempt_users', sa.Text(), nullable=False),
    sa.Column('exempt_networks', sa.Text(), nullable=False),
    sa.Column('password_separator', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('reply_attributes', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name_key')
    )
    # Existing tokens keep what they could do: the gateway API only.
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scope', sqlmodel.sql.sqltypes.AutoString(length=16), server_default='gateway', nullable=False))

    # The clients document's revision: bumped with every client change. The random part keeps
    # a database rebuilt from scratch from ever reusing a revision a bridge still caches.
    meta = sa.table('meta', sa.column('key', sa.String()), sa.column('value', sa.String()))
    op.bulk_insert(meta, [{'key': REVISION_KEY, 'value': f'0.{secrets.token_hex(4)}'}])


def downgrade() -> None:
    op.execute(sa.text('DELETE FROM meta WHERE key = :key').bindparams(key=REVISION_KEY))
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.drop_column('scope')

    op.drop_table('radius_clients')
