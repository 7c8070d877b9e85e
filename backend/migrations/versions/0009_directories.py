"""directories: AD/LDAP directories, their sync runs, and users tied to them

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'directories',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('name_key', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=8), nullable=False),
        sa.Column('urls', sa.Text(), nullable=False),
        sa.Column('ca_pem', sa.Text(), nullable=True),
        sa.Column('bind_dn', sa.String(length=1024), nullable=False),
        sa.Column('bind_password_enc', sa.LargeBinary(), nullable=False),
        sa.Column('base_dn', sa.String(length=1024), nullable=False),
        sa.Column('user_filter', sa.String(length=1024), nullable=False),
        sa.Column('group_dn', sa.String(length=1024), nullable=False),
        sa.Column('admin_group_dn', sa.String(length=1024), nullable=False),
        sa.Column('attributes', sa.Text(), nullable=False),
        sa.Column('connect_timeout', sa.Float(), nullable=False),
        sa.Column('search_timeout', sa.Float(), nullable=False),
        sa.Column('page_size', sa.Integer(), nullable=False),
        sa.Column('sync_interval', sa.Integer(), nullable=False),
        sa.Column('disable_percent', sa.Integer(), nullable=False),
        sa.Column('disable_minimum', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name_key'),
    )
    op.create_table(
        'directory_syncs',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('directory_id', sa.Integer(), nullable=False),
        sa.Column('actor', sa.String(length=128), nullable=False),
        sa.Column('dry_run', sa.Boolean(), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created', sa.Integer(), nullable=False),
        sa.Column('updated', sa.Integer(), nullable=False),
        sa.Column('renamed', sa.Integer(), nullable=False),
        sa.Column('disabled', sa.Integer(), nullable=False),
        sa.Column('enabled', sa.Integer(), nullable=False),
        sa.Column('unchanged', sa.Integer(), nullable=False),
        sa.Column('errors', sa.Integer(), nullable=False),
        sa.Column('message', sa.String(length=1024), nullable=False),
        sa.Column('report', sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(['directory_id'], ['directories.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index(
        'ix_directory_syncs_directory_started',
        'directory_syncs',
        ['directory_id', 'started_at'],
        unique=False,
    )
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('phone', sa.String(length=64), server_default='', nullable=False))
        batch_op.add_column(
            sa.Column('disabled_reason', sa.String(length=256), server_default='', nullable=False)
        )
        batch_op.add_column(
            sa.Column('disabled_by', sa.String(length=16), server_default='', nullable=False)
        )
        batch_op.add_column(sa.Column('directory_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('external_id', sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column('directory_dn', sa.String(length=1024), server_default='', nullable=False)
        )
        batch_op.create_index('ix_users_directory_id', ['directory_id'], unique=False)
        batch_op.create_unique_constraint(
            'uq_users_directory_external_id', ['directory_id', 'external_id']
        )
        batch_op.create_foreign_key(
            'fk_users_directory_id', 'directories', ['directory_id'], ['id'], ondelete='RESTRICT'
        )
    # Users disabled before directories existed were disabled by a person.
    op.execute("UPDATE users SET disabled_by = 'admin' WHERE disabled")
    with op.batch_alter_table('radius_clients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('directory_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            'fk_radius_clients_directory_id',
            'directories',
            ['directory_id'],
            ['id'],
            ondelete='RESTRICT',
        )


def downgrade() -> None:
    with op.batch_alter_table('radius_clients', schema=None) as batch_op:
        batch_op.drop_constraint('fk_radius_clients_directory_id', type_='foreignkey')
        batch_op.drop_column('directory_id')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_constraint('fk_users_directory_id', type_='foreignkey')
        batch_op.drop_constraint('uq_users_directory_external_id', type_='unique')
        batch_op.drop_index('ix_users_directory_id')
        batch_op.drop_column('directory_dn')
        batch_op.drop_column('external_id')
        batch_op.drop_column('directory_id')
        batch_op.drop_column('disabled_by')
        batch_op.drop_column('disabled_reason')
        batch_op.drop_column('phone')
    op.drop_index('ix_directory_syncs_directory_started', table_name='directory_syncs')
    op.drop_table('directory_syncs')
    op.drop_table('directories')
