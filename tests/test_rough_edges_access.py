"""Signed-link tokens of any shape: a malformed one is 401 in the one error shape, never a 500."""

from __future__ import annotations

import pytest

from avatar_service.http.access import Access
from avatar_service.persistence.sqlite import SQLiteDatabase

KEY = "key-a-0123456789abcdef"
JOB_ID = "0" * 32
BAD_TOKEN = {
    "error": {
        "code": "unauthorized",
        "message": "the token is not valid for this job or has expired; "
        "read the job record again for fresh links",
    }
}
# Raw query strings: each is sent as written (percent-escapes included).
BAD_SHAPES = [
    pytest.param("", id="empty"),
    pytest.param(".", id="only-dot"),
    pytest.param("%C2%B2.x", id="superscript-digit-expiry"),
    pytest.param("%D9%A1%D9%A2%D9%A3.x", id="arabic-indic-digit-expiry"),
    pytest.param("%EF%BC%99%EF%BC%99.x", id="fullwidth-digit-expiry"),
    pytest.param("9" * 4400 + ".x", id="expiry-of-4400-digits"),
    pytest.param("9999999999.%C3%A9t%C3%A9", id="non-ascii-signature"),
    pytest.param("9999999999.%F0%9F%94%91", id="emoji-signature"),
    pytest.param("9999999999.%FF%FE", id="invalid-utf8-signature"),
    pytest.param("9999999999.%00", id="nul-signature"),
    pytest.param("-1.x", id="negative-expiry"),
    pytest.param("+9999999999.x", id="signed-expiry"),
    pytest.param("%209999999999.x", id="space-before-expiry"),
    pytest.param("9999999999", id="no-signature"),
    pytest.param("abc.def", id="letters"),
]


@pytest.fixture
def keyed(make_service):
    """A service with one API key."""
    return make_service(api_keys=KEY)


@pytest.mark.parametrize("path", [f"/jobs/{JOB_ID}/events", f"/avatars/{JOB_ID}_0.png"])
@pytest.mark.parametrize("token", BAD_SHAPES)
def test_malformed_token_is_401(keyed, path, token):
    """Every malformed token on a token route is 401 unauthorized in the error shape."""
    answer = keyed.http.get(f"{path}?token={token}")
    assert answer.status_code == 401, answer.text
    assert answer.json() == BAD_TOKEN


@pytest.mark.parametrize(
    "token",
    ["².x", "9" * 5000 + ".x", "9999999999.été", "9999999999.\udcff", "١٢٣٤٥٦٧٨٩٠.x", ""],
)
def test_check_token_refuses_any_string(tmp_path, token):
    """check_token answers False, never raises, for any string it is given."""
    database = SQLiteDatabase(tmp_path / "db.sqlite")
    access = Access(keys=[KEY], admin_keys=[], secret=b"s", token_ttl=60, database=database)
    assert access.check_token(token, JOB_ID) is False


def test_a_made_token_still_opens_its_job(tmp_path):
    """The token made for a job is accepted for that job and refused for another."""
    database = SQLiteDatabase(tmp_path / "db.sqlite")
    access = Access(keys=[KEY], admin_keys=[], secret=b"s", token_ttl=60, database=database)
    token = access.token(JOB_ID)
    assert access.check_token(token, JOB_ID) is True
    assert access.check_token(token, "1" * 32) is False
