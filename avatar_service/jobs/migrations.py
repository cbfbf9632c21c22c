"""Versioned schema migrations of the service's database (one SQLite file).

Two components keep tables in it: ``jobs`` (job records, the service's queue) and
``deliveries`` (the outbox of webhooks and avatar forwarding). Each has its own list of steps
and its version in ``schema_versions``. A step runs once, in order, in one transaction with
its version bump: an old database is upgraded in place, never recreated. Append new steps;
never edit one that has shipped.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

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


def add_crop_column(connection: sqlite3.Connection) -> None:
    """Version 3: the part of the photo a job uses (``crop``, JSON). Some databases already
    have the column (a release added it when the store was opened), so it is added only when
    missing."""
    present = {row[1] for row in connection.execute("PRAGMA table_info(jobs)")}
    if "crop" not in present:
        connection.execute("ALTER TABLE jobs ADD COLUMN crop TEXT")


# A step is an SQL script, or a function of the connection for a step that must look first.
Step = str | Callable[[sqlite3.Connection], None]
MIGRATIONS: tuple[Step, ...] = (V1_SCHEMA, V2_SCHEMA, add_crop_column)

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


def migrate(connection: sqlite3.Connection, component: str = "jobs") -> int:
    """Bring a component's tables to their newest version; return the version they had."""
    with _LOCK:  # two stores of one process may open the file at once
        return _migrate(connection, component)


def _migrate(connection: sqlite3.Connection, component: str) -> int:
    steps = COMPONENTS[component]
    connection.execute(
        "CREATE TABLE IF NOT EXISTS schema_versions "
        "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
    )
    connection.commit()
    before = _version(connection, component)
    for version, script in enumerate(steps[before:], start=before + 1):
        logger.info("database: migrating %s to schema version %d", component, version)
        bump = (
            "INSERT OR REPLACE INTO schema_versions (component, version) "
            f"VALUES ('{component}', {version});"
        )
        # executescript commits first; the statements and the version bump then run together.
        try:
            if callable(script):
                connection.execute("BEGIN")
                script(connection)
                connection.execute(bump)
                connection.execute("COMMIT")
            else:
                connection.executescript(f"BEGIN;\n{script}\n{bump}\nCOMMIT;")
        except sqlite3.Error:
            if connection.in_transaction:
                connection.rollback()
            raise
    return before


def _version(connection: sqlite3.Connection, component: str) -> int:
    row = connection.execute(
        "SELECT version FROM schema_versions WHERE component = ?", (component,)
    ).fetchone()
    if row is not None:
        return int(row[0])
    table = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
        (_FIRST_TABLE[component],),
    ).fetchone()
    return 1 if table is not None else 0  # made before versions were recorded
