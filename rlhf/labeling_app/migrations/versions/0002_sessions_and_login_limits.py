"""server-side sessions, login limits in the database, case-insensitive user names

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""
import unicodedata

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def _name_key(name: str) -> str:
    """NFKC, stripped, case-folded (the same rule as rlhf.labeling_app.auth.name_key at this revision)."""
    return unicodedata.normalize('NFKC', unicodedata.normalize('NFKC', name).strip().casefold())


def upgrade() -> None:
    _add_user_name_keys()
    op.create_table('login_sessions',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('login_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_login_sessions_user_id'), ['user_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_login_sessions_expires_at'), ['expires_at'], unique=False)
    op.create_table('login_limits',
    sa.Column('bucket', sa.String(length=80), nullable=False),
    sa.Column('stamps', sa.JSON(), nullable=False),
    sa.Column('last_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('bucket')
    )
    with op.batch_alter_table('login_limits', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_login_limits_last_at'), ['last_at'], unique=False)


def _add_user_name_keys() -> None:
    """users.name_key for every account; refuses (names listed) when two existing names differ only in case."""
    # plain ADD COLUMN and CREATE INDEX: a batch table copy on SQLite would drop `users`, which the foreign keys of
    # existing judgments, assignments and Andon pulls refuse
    op.add_column('users', sa.Column('name_key', sa.String(length=255), nullable=True))
    users = sa.table('users', sa.column('id', sa.Integer()), sa.column('name', sa.String()),
                     sa.column('name_key', sa.String()))
    connection = op.get_bind()
    seen: dict[str, str] = {}
    for user_id, name in connection.execute(sa.select(users.c.id, users.c.name).order_by(users.c.id)).all():
        key = _name_key(name)
        if key in seen:
            raise RuntimeError(
                f"users {seen[key]!r} and {name!r} differ only in case or Unicode form, which user names may no "
                "longer do; rename one of them (UPDATE users SET name = ... WHERE id = ...) and start again"
            )
        seen[key] = name
        connection.execute(sa.update(users).where(users.c.id == user_id).values(name_key=key))
    op.create_index('uq_users_name_key', 'users', ['name_key'], unique=True)
    if connection.dialect.name != 'sqlite':  # SQLite cannot add NOT NULL to an existing column in place
        op.alter_column('users', 'name_key', existing_type=sa.String(length=255), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('login_limits', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_login_limits_last_at'))
    op.drop_table('login_limits')
    with op.batch_alter_table('login_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_login_sessions_expires_at'))
        batch_op.drop_index(batch_op.f('ix_login_sessions_user_id'))
    op.drop_table('login_sessions')
    op.drop_index('uq_users_name_key', table_name='users')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('name_key')
