"""Versioned schema migrations of the service's database (SQLite or PostgreSQL).

Two components keep tables in it: ``jobs`` (job records, the service's queue) and
``deliveries`` (the outbox of webhooks and avatar forwarding). Each has its own list of steps
and its version in ``schema_versions``. A step runs once, in order, in one transaction with
its version bump: an old database is upgraded in place, never recreated. Append new steps;
never edit one that has shipped. Steps are written in SQLite's words; on PostgreSQL they run
translated by ``database.postgres_ddl`` (REAL is DOUBLE PRECISION, BLOB is BYTEA), under an
advisory lock so that processes starting together migrate one after the other.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

from .database import Connection, Database, postgres_ddl

logger = logging.getLogger(__name__)
_LOCK = threading.Lock()

# Version 1 is the schema the service shipped before the service's own queue existed.
V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    style TEXT NOT NULL,
    image_name TEXT NOT NULL,
    gender TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    seed TEXT NOT NULL,
    base_url TEXT NOT NULL,
    callback_url TEXT,
    server TEXT,
    prompt_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    deadline REAL NOT NULL,
    queue_position INTEGER,
    progress TEXT,
    error TEXT,
    avatars TEXT NOT NULL DEFAULT '[]',
    timings TEXT NOT NULL DEFAULT '{}',
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
"""

# Version 2: the service's own queue. ``queue_order`` orders waiting jobs (a job sent back by a
# failover gets a smaller one, so it goes to the head); ``owner`` and ``lease_expires`` name the
# worker holding a claimed job; prompts left on a server that was given up are kept so they can
# be removed when it comes back (one avatar per job, never two).
V2_SCHEMA = """
ALTER TABLE jobs ADD COLUMN queue_order REAL;
ALTER TABLE jobs ADD COLUMN owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_expires REAL;
ALTER TABLE jobs ADD COLUMN dispatched_at REAL;
ALTER TABLE jobs ADD COLUMN estimated_start_at REAL;
UPDATE jobs SET queue_order = created_at;
CREATE INDEX IF NOT EXISTS jobs_waiting ON jobs(status, server, queue_order);
CREATE TABLE IF NOT EXISTS abandoned_prompts (
    server TEXT NOT NULL,
    prompt_id TEXT NOT NULL,
    job_id TEXT NOT NULL,
    abandoned_at REAL NOT NULL,
    PRIMARY KEY (server, prompt_id)
);
"""


def add_crop_column(connection: Connection, database: Database) -> None:
    """Version 3: the part of the photo a job uses (``crop``, JSON). Some databases already
    have the column (a release added it when the store was opened), so it is added only when
    missing."""
    if "crop" not in database.columns(connection, "jobs"):
        connection.execute("ALTER TABLE jobs ADD COLUMN crop TEXT")


# A step is an SQL script, or a function of the connection (and the database, which knows its
# engine's words) for a step that must look first.
Step = str | Callable[[Connection, Database], None]


# Version 4: processes that share the database (PostgreSQL). ``workers`` is the registry of the
# live fleet: one row per worker (one ComfyUI server driven by one process), renewed by its
# heartbeat; a row whose lease has passed belongs to a process that is gone. ``job_previews``
# keeps the latest live preview of a running job, so any process can serve it.
V4_SCHEMA = """
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    process TEXT NOT NULL,
    server TEXT NOT NULL,
    slots INTEGER NOT NULL,
    jobs INTEGER NOT NULL DEFAULT 0,
    usable INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    withheld TEXT NOT NULL DEFAULT '[]',
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    lease_expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS workers_server ON workers(server, lease_expires);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner);
CREATE TABLE IF NOT EXISTS job_previews (
    job_id TEXT PRIMARY KEY,
    content_type TEXT NOT NULL,
    data BLOB NOT NULL,
    updated_at REAL NOT NULL
);
"""

MIGRATIONS: tuple[Step, ...] = (V1_SCHEMA, V2_SCHEMA, add_crop_column, V4_SCHEMA)

# Version 1 of the outbox: the webhook tables as first shipped.
DELIVERIES_V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id              TEXT PRIMARY KEY,
    job_id          TEXT NOT NULL,
    url             TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    body            BLOB NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempt_count   INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due
    ON webhook_deliveries (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS webhook_deliveries_job ON webhook_deliveries (job_id);
CREATE TABLE IF NOT EXISTS webhook_attempts (
    delivery_id TEXT NOT NULL REFERENCES webhook_deliveries (id),
    attempt     INTEGER NOT NULL,
    at          REAL NOT NULL,
    status      INTEGER,
    error       TEXT,
    duration_ms INTEGER NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);
"""

# Version 2: one outbox for webhooks and avatar forwarding. ``kind`` says which; ``deadline``
# bounds the retries of a delivery; an attempt keeps the receiver's (short) answer.
DELIVERIES_V2_SCHEMA = """
ALTER TABLE webhook_deliveries RENAME TO deliveries;
ALTER TABLE webhook_attempts RENAME TO delivery_attempts;
ALTER TABLE deliveries ADD COLUMN kind TEXT NOT NULL DEFAULT 'webhook';
ALTER TABLE deliveries ADD COLUMN deadline REAL;
ALTER TABLE delivery_attempts ADD COLUMN response TEXT;
CREATE INDEX IF NOT EXISTS deliveries_kind_due ON deliveries (kind, state, next_attempt_at);
"""

COMPONENTS: dict[str, tuple[Step, ...]] = {
    "jobs": MIGRATIONS,
    "deliveries": (DELIVERIES_V1_SCHEMA, DELIVERIES_V2_SCHEMA),
}
# The table whose presence, without a recorded version, means a database of version 1.
_FIRST_TABLE = {"jobs": "jobs", "deliveries": "webhook_deliveries"}


def migrate(database: Database, component: str = "jobs") -> int:
    """Bring a component's tables to their newest version; return the version they had."""
    with _LOCK:  # two stores of one process may open the database at once
        if database.dialect.shared:
            return _migrate_postgres(database, component)
        with database.connection() as connection:  # type: ignore[attr-defined]
            return _migrate_sqlite(connection, database, component)


def _migrate_sqlite(connection: sqlite3.Connection, database: Database, component: str) -> int:
    steps = COMPONENTS[component]
    connection.execute(_VERSIONS_TABLE)
    connection.commit()
    before = _version(connection, database, component)
    for version, script in enumerate(steps[before:], start=before + 1):
        logger.info("database: migrating %s to schema version %d", component, version)
        bump = _BUMP.replace("?", f"'{component}'", 1).replace("?", str(version), 1)
        # executescript commits first; the statements and the version bump then run together.
        try:
            if callable(script):
                connection.execute("BEGIN")
                script(connection, database)
                connection.execute(bump)
                connection.execute("COMMIT")
            else:
                connection.executescript(f"BEGIN;\n{script}\n{bump};\nCOMMIT;")
        except sqlite3.Error:
            if connection.in_transaction:
                connection.rollback()
            raise
    return before


def _migrate_postgres(database: Database, component: str) -> int:
    steps = COMPONENTS[component]
    with database.transaction() as db:
        database.lock_for_migration(db)
        db.execute(_VERSIONS_TABLE)
        before = _version(db, database, component)
        for version, script in enumerate(steps[before:], start=before + 1):
            logger.info("database: migrating %s to schema version %d", component, version)
            if callable(script):
                script(db, database)
            else:
                db.execute(postgres_ddl(script))
            db.execute(_BUMP, (component, version))
    return before


_VERSIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_versions "
    "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
)
_BUMP = (
    "INSERT INTO schema_versions (component, version) VALUES (?, ?) "
    "ON CONFLICT (component) DO UPDATE SET version = excluded.version"
)


def _version(connection, database: Database, component: str) -> int:
    row = connection.execute(
        "SELECT version FROM schema_versions WHERE component = ?", (component,)
    ).fetchone()
    if row is not None:
        return int(row[0])
    # made before versions were recorded
    return 1 if database.table_exists(connection, _FIRST_TABLE[component]) else 0
