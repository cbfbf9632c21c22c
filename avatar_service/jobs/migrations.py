"""Versioned schema migrations of the job database (SQLite ``PRAGMA user_version``).

Each migration runs once, in order, in one transaction with the version bump: an old database is
upgraded in place, never recreated. Append new steps; never edit one that has shipped.
"""

from __future__ import annotations

import logging
import sqlite3

logger = logging.getLogger(__name__)

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

MIGRATIONS: tuple[str, ...] = (V1_SCHEMA, V2_SCHEMA)


def migrate(connection: sqlite3.Connection) -> int:
    """Bring the database to the newest version; return the version it had before."""
    (before,) = connection.execute("PRAGMA user_version").fetchone()
    if before == 0 and _has_jobs_table(connection):
        before = 1  # a database made before versions were recorded has the version 1 schema
    for version, script in enumerate(MIGRATIONS[before:], start=before + 1):
        logger.info("job database: migrating to schema version %d", version)
        # executescript commits first; the statements and the version bump then run together.
        try:
            connection.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {version};\nCOMMIT;")
        except sqlite3.Error:
            if connection.in_transaction:
                connection.rollback()
            raise
    return before


def _has_jobs_table(connection: sqlite3.Connection) -> bool:
    row = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs'"
    ).fetchone()
    return row is not None
