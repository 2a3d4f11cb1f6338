"""Alembic environment: runs migrations on the connection handed over by rlhf.labeling_app.db.upgrade_schema
(or on sqlalchemy.url when run by the alembic command line)."""

from alembic import context
from sqlalchemy import create_engine

from rlhf.labeling_app.tables import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    connection = create_engine(config.get_main_option("sqlalchemy.url")).connect()
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
