"""at most one open Andon pull per run

Revision ID: 0003
Revises: 0001
Create Date: 2026-12-06

Concurrent pulls could open several pulls for one run, and releasing one left the others on show. Pulls
already duplicated are closed first (all but the newest open one of each run, released by nobody), then a
partial unique index keeps it to one: on andon_pulls(run_id) where released_at is null (SQLite and PostgreSQL).
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

OPEN = sa.text('released_at IS NULL')


def upgrade() -> None:
    op.execute(
        "UPDATE andon_pulls SET released_at = pulled_at WHERE released_at IS NULL AND id NOT IN "
        "(SELECT MAX(id) FROM andon_pulls WHERE released_at IS NULL GROUP BY run_id)"
    )
    op.create_index(
        'uq_andon_pulls_one_open', 'andon_pulls', ['run_id'], unique=True, sqlite_where=OPEN, postgresql_where=OPEN
    )


def downgrade() -> None:
    op.drop_index('uq_andon_pulls_one_open', table_name='andon_pulls')
