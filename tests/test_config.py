"""Settings: every bad value stops the service with a message naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from avatar_service.config import ConfigError, Settings


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"PORT": "abc"}, "PORT"),
        ({"PORT": "99999"}, "PORT"),
        ({"PORT": "0"}, "PORT"),
        ({"HOST": " "}, "HOST"),
        ({"JOB_TIMEOUT": "nan"}, "JOB_TIMEOUT"),
        ({"JOB_TIMEOUT": "inf"}, "JOB_TIMEOUT"),
        ({"JOB_TIMEOUT": "0"}, "JOB_TIMEOUT"),
        ({"SYNC_WAIT": "-1"}, "SYNC_WAIT"),
        ({"MAX_IMAGE_PIXELS": "0"}, "MAX_IMAGE_PIXELS"),
        ({"MIN_IMAGE_SIDE": "-5"}, "MIN_IMAGE_SIDE"),
        ({"THREADS": "2"}, "THREADS"),
        ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL"),
        ({"DEBUG": "maybe"}, "DEBUG"),
        ({"COMFYUI_URL": "ftp://x"}, "COMFYUI_URL"),
        ({"COMFYUI_URL": "http://"}, "COMFYUI_URL"),
        ({"COMFYUI_URL": " , "}, "COMFYUI_URL"),
        ({"UPLOAD_URL": "localhost:9000/upload"}, "UPLOAD_URL"),
        ({"WEBHOOK_MAX_ATTEMPTS": "0"}, "WEBHOOK_MAX_ATTEMPTS"),
        ({"FACE_POLICY": "always"}, "FACE_POLICY"),
        ({"FACE_MULTIPLE": "all"}, "FACE_MULTIPLE"),
        ({"FACE_MARGIN": "-0.1"}, "FACE_MARGIN"),
        ({"FACE_MARGIN": "nan"}, "FACE_MARGIN"),
        ({"FACE_MARGIN": "11"}, "FACE_MARGIN"),
    ],
)
def test_bad_settings_are_refused_by_name(environ, variable):
    """Each bad value raises ConfigError whose message names its variable."""
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env(environ)


def test_defaults_and_parsing():
    """Unset variables take their defaults; lists, booleans, paths and numbers are parsed."""
    settings = Settings.from_env(
        {
            "COMFYUI_URL": "http://gpu1:8188, http://gpu2:8188",
            "DEBUG": "yes",
            "UPLOAD_DIR": "/data/up",
            "JOB_TIMEOUT": "90",
        }
    )
    assert settings.comfyui_url == ("http://gpu1:8188", "http://gpu2:8188")
    assert settings.debug is True
    assert settings.upload_dir == Path("/data/up")
    assert settings.job_timeout == 90.0
    assert settings.sync_wait == Settings().sync_wait
    assert settings.max_upload_bytes == 10 * 1024 * 1024


def test_unknown_override_is_refused():
    """An override naming no setting is a mistake, not silently ignored."""
    with pytest.raises(ConfigError, match="NOPE"):
        Settings.from_env({}, overrides={"NOPE": 1})
