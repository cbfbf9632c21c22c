"""Versioned schema migrations of the service's database (SQLite or PostgreSQL): one list of
steps for every table of the service.

``MIGRATIONS`` holds the steps in order; ``schema_versions`` records how many have run, in the
row named ``jobs`` (the list began as the job tables' own: databases of every earlier version
read their version there). ``migrate`` runs once per opened database, from the service's
factory before anything else reads it: the missing steps run in one transaction with their
version bumps, so an old database is upgraded in place, never recreated, and a failed upgrade
leaves it as it was. Append new steps; never edit one that has shipped. Steps are written in
SQLite's words; on PostgreSQL they run translated by ``database.postgres_ddl`` (REAL is DOUBLE
PRECISION, BLOB is BYTEA), under an advisory lock so that processes starting together migrate
one after the other.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable

from .database import Connection, Database, postgres_ddl

logger = logging.getLogger(__name__)
_LOCK = threading.Lock()
# The databases this process has migrated (each is migrated once, however many parts open it).
_MIGRATED: weakref.WeakSet[Database] = weakref.WeakSet()

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

# The outbox's own list of steps, as it shipped before it joined this one (see add_outbox).
OUTBOX_STEPS = (DELIVERIES_V1_SCHEMA, DELIVERIES_V2_SCHEMA)


def add_outbox(connection: Connection, database: Database) -> None:
    """Version 5: the outbox (webhooks and avatar forwarding). It had a list of its own (the
    component ``deliveries``, run when an outbox was first used), so a database may hold its
    tables at any version of that list: the steps it lacks run here. The old row is left as
    it is; nothing reads it any more."""
    row = connection.execute(
        "SELECT version FROM schema_versions WHERE component = 'deliveries'"
    ).fetchone()
    if row is not None:
        done = int(row[0])
    else:  # made before versions were recorded, or never used
        done = 1 if database.table_exists(connection, "webhook_deliveries") else 0
    for script in OUTBOX_STEPS[done:]:
        _run_statements(connection, database, script)


# Version 6: the small tables of the HTTP layer and of retention, which were created when the
# service started (``CREATE ... IF NOT EXISTS``, as here: a database may have them already).
# ``job_owners``: which API key made a job; ``idempotency_keys``: an Idempotency-Key and the
# job it made; ``deleted_avatars``: avatars that retention deleted (GET answers 410).
V6_SCHEMA = """
CREATE TABLE IF NOT EXISTS job_owners (
    job_id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    body_hash TEXT NOT NULL,
    job_id TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE TABLE IF NOT EXISTS deleted_avatars (
    file_name TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    deleted_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deleted_avatars_job ON deleted_avatars(job_id);
"""

# Version 7: how often a job's prompt stalled on a server (no message, no queue change for
# COMFYUI_STALL_TIMEOUT) and was moved to another.
V7_SCHEMA = """
ALTER TABLE jobs ADD COLUMN stalls INTEGER NOT NULL DEFAULT 0;
"""

# Version 8: which API key uploaded a photo (with keys on, a photo is its key's own). Photos
# stored before have no row, and stay reachable by any key.
V8_SCHEMA = """
CREATE TABLE IF NOT EXISTS photo_owners (
    image_name TEXT PRIMARY KEY,
    key_id TEXT NOT NULL
);
"""

# Version 9: the index on jobs(status) alone goes; jobs_waiting (status, server, queue_order)
# serves every query by status, and each change of a job's status wrote both.
V9_SCHEMA = """
DROP INDEX IF EXISTS jobs_status;
"""

MIGRATIONS: tuple[Step, ...] = (
    V1_SCHEMA,
    V2_SCHEMA,
    add_crop_column,
    V4_SCHEMA,
    add_outbox,
    V6_SCHEMA,
    V7_SCHEMA,
    V8_SCHEMA,
    V9_SCHEMA,
)


def migrate(database: Database) -> int:
    """Bring every table to the newest version (once per database); return the version found."""
    with _LOCK:  # parts of one process may open the database at once
        if database in _MIGRATED:
            return len(MIGRATIONS)
        with database.transaction() as db:
            database.lock_for_migration(db)
            db.execute(_VERSIONS_TABLE)
            before = _version(db, database)
            for version, step in enumerate(MIGRATIONS[before:], start=before + 1):
                logger.info("database: migrating to schema version %d", version)
                if callable(step):
                    step(db, database)
                else:
                    _run_statements(db, database, step)
                db.execute(_BUMP, (version,))
        _MIGRATED.add(database)
    return before


def _run_statements(connection: Connection, database: Database, script: str) -> None:
    """Run the statements of a step written in SQLite's words, one by one (no literal holds
    a semicolon), in the engine's words."""
    if database.dialect.shared:
        script = postgres_ddl(script)
    for statement in script.split(";"):
        if statement.strip():
            connection.execute(statement)


_VERSIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_versions "
    "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
)
_BUMP = (
    "INSERT INTO schema_versions (component, version) VALUES ('jobs', ?) "
    "ON CONFLICT (component) DO UPDATE SET version = excluded.version"
)


def _version(connection: Connection, database: Database) -> int:
    row = connection.execute(
        "SELECT version FROM schema_versions WHERE component = 'jobs'"
    ).fetchone()
    if row is not None:
        return int(row[0])
    # made before versions were recorded
    return 1 if database.table_exists(connection, "jobs") else 0
