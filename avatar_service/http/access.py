"""API keys, who owns which job and which photo, and the short-lived signed tokens for browser GETs.

Keys are never stored or logged: an owner is recorded as the key's id (a hash prefix),
and keys are compared in constant time. A token is ``<expiry>.<HMAC(secret, jobId.expiry)>``:
it grants the event stream, preview and avatars of one job until it expires.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..persistence.database import Database
from ..storage.avatars import write_atomic

# A token's expiry: ASCII digits, bounded far beyond any clock plus TOKEN_TTL (int() refuses
# strings of over 4,300 digits, and a long one costs time to convert).
_EXPIRY = re.compile(r"[0-9]{1,64}")


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the id of its key (never the key), and whether it is an admin."""

    key_id: str
    admin: bool = False


def key_id(key: str) -> str:
    """A stable, non-secret name of a key, for records, limits and logs."""
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def read_keys_file(path: Path) -> tuple[list[str], list[str]]:
    """Keys from a file: one per line, ``<key>`` or ``<key> admin``; ``#`` starts a comment."""
    keys: list[str] = []
    admins: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        (admins if words[1:] == ["admin"] else keys).append(words[0])
    return keys, admins


class Access:
    """Authenticates keys and tokens, and records and checks job ownership."""

    def __init__(
        self,
        *,
        keys: Iterable[str],
        admin_keys: Iterable[str],
        secret: bytes,
        token_ttl: float,
        database: Database,
        clock=time.time,
    ) -> None:
        self._keys = [(key.encode(), Caller(key_id(key))) for key in keys]
        self._keys += [(key.encode(), Caller(key_id(key), admin=True)) for key in admin_keys]
        self._secret = secret
        self.token_ttl = token_ttl
        self._db = database
        self._clock = clock

    @property
    def enabled(self) -> bool:
        """Whether keys are configured (else every route is open, as on a trusted network)."""
        return bool(self._keys)

    def authenticate(self, presented: str) -> Caller | None:
        """The caller of a key, or None; every key is compared, in constant time."""
        found = None
        candidate = presented.encode()
        for key, caller in self._keys:
            if hmac.compare_digest(key, candidate):
                found = caller
        return found

    def claim(self, job_id: str, caller: Caller) -> None:
        """Record the key that created a job."""
        with self._db.transaction() as db:
            db.execute(
                "INSERT INTO job_owners (job_id, key_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (job_id, caller.key_id),
            )

    def owner(self, job_id: str) -> str | None:
        """The id of the key that created a job (None: unknown job, or made without keys)."""
        with self._db.transaction() as db:
            row = db.execute("SELECT key_id FROM job_owners WHERE job_id = ?", (job_id,)).fetchone()
        return row[0] if row else None

    def claim_photo(self, image_name: str, caller: Caller) -> None:
        """Record the key that uploaded a photo."""
        with self._db.transaction() as db:
            db.execute(
                "INSERT INTO photo_owners (image_name, key_id) VALUES (?, ?) "
                "ON CONFLICT DO NOTHING",
                (image_name, caller.key_id),
            )

    def may_use_photo(self, image_name: object, caller: Caller | None) -> bool:
        """Whether a caller may use a photo: without keys, as an admin, as the key that
        uploaded it, or when no key is recorded for it (stored before owners were)."""
        if caller is None or caller.admin or not isinstance(image_name, str):
            return True
        with self._db.transaction() as db:
            row = db.execute(
                "SELECT key_id FROM photo_owners WHERE image_name = ?", (image_name,)
            ).fetchone()
        return row is None or row[0] == caller.key_id

    def token(self, job_id: str) -> str:
        """A token for one job's events, preview and avatars, valid for TOKEN_TTL seconds."""
        expires = int(self._clock() + self.token_ttl)
        return f"{expires}.{self._sign(job_id, expires)}"

    def check_token(self, token: str, job_id: str) -> bool:
        """Whether a token was made here for this job and has not expired (never raises)."""
        expires, _, signature = token.partition(".")
        # Only the shape token() makes: str.isdigit() also takes "²" and other digits int()
        # refuses, and int() refuses more than 4,300 digits.
        if not _EXPIRY.fullmatch(expires) or int(expires) < self._clock():
            return False
        # As bytes: compare_digest refuses str with non-ASCII characters.
        presented = signature.encode("utf-8", "surrogateescape")
        return hmac.compare_digest(presented, self._sign(job_id, int(expires)).encode())

    def _sign(self, job_id: str, expires: int) -> str:
        digest = hmac.new(self._secret, f"{job_id}.{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def token_secret(configured: str, instance_path: Path) -> bytes:
    """TOKEN_SECRET, or a random secret made once and kept in the instance folder."""
    if configured:
        return configured.encode()
    path = instance_path / "token_secret"
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        secret = ""
    if not secret:
        secret = secrets.token_hex(32)
        write_atomic(path, secret.encode(), mode=0o600)  # readable by the service's user alone
    return secret.encode()
