"""Database connection: SQLite in WAL mode by default (a file under the data directory), PostgreSQL by URL;
the schema is created and upgraded by the Alembic migrations in rlhf/labeling_app/migrations."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def default_database_url() -> str:
    """sqlite file $RLHF_LABEL_DATA/label.db (default ./data/label.db)."""
    folder = Path(os.environ.get("RLHF_LABEL_DATA", "data"))
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return f"sqlite:///{(folder / 'label.db').resolve()}"


def create_private_sqlite_file(url: str) -> None:
    """Create the SQLite file of ``url`` empty with mode 0600 if it does not exist yet, before SQLite opens it:
    SQLite gives its -wal and -shm files the database file's mode, so all three stay private to the owner."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    try:
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite connections get WAL mode, foreign keys and a 30 s busy timeout."""
    if url.startswith("sqlite"):
        create_private_sqlite_file(url)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=20, max_overflow=20
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return create_engine(url, pool_size=20, max_overflow=40, pool_pre_ping=True)


def upgrade_schema(engine: Engine) -> None:
    """Bring the database to the newest Alembic revision (creates all tables on an empty database)."""
    from alembic import command  # lazy: a heavy import, needed for schema migrations only
    from alembic.config import Config  # lazy: a heavy import, needed for schema migrations only

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def open_database(url: str | None = None) -> sessionmaker[Session]:
    """Engine + migrations + a session factory, for the app and the command line."""
    engine = make_engine(url or default_database_url())
    upgrade_schema(engine)
    return sessionmaker(engine, expire_on_commit=False)
