"""Files are written with the mode the umask gives (not 0600 whatever it is): the service's
photos and avatars, and the avatars the ``avatar`` command saves; the token secret stays 0600."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_photo
from tests.service_process import ServiceProcess

AVATAR = Path(sys.executable).with_name("avatar")


def mode_of(path: Path) -> int:
    """The permission bits of a file."""
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("umask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_follow_the_umask(standin, tmp_path, umask, expected):
    """Under umask 022 files are 0644, under 077 0600: service and command alike."""
    service = ServiceProcess(tmp_path, standin.url, umask=umask)
    service.start()
    try:
        photo = tmp_path / "me.png"
        photo.write_bytes(make_photo((10, 140, 90)))
        env = {k: v for k, v in os.environ.items() if k not in {"AVATAR_SERVER", "AVATAR_KEY"}}
        done = subprocess.run(
            [str(AVATAR), "generate", str(photo), "--server", service.url, "--out", "out"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            umask=umask,
        )
    finally:
        service.kill()
    assert done.returncode == 0, done.stderr
    stored = [p for p in (tmp_path / "uploads").iterdir() if p.suffix == ".png"]
    faces = [p for p in (tmp_path / "uploads").iterdir() if p.suffix == ".json"]
    written = {
        "photo": stored,
        "faces": faces,
        "avatar": list((tmp_path / "generated_avatar").iterdir()),
        "saved": list((tmp_path / "out").iterdir()),
    }
    assert {name: len(paths) for name, paths in written.items()} == dict.fromkeys(written, 1)
    modes = {name: oct(mode_of(paths[0])) for name, paths in written.items()}
    assert modes == dict.fromkeys(written, oct(expected))
    assert oct(mode_of(tmp_path / "instance" / "token_secret")) == oct(0o600)


def test_write_atomic_takes_an_explicit_mode(tmp_path):
    """An explicit mode wins over the umask's (the token secret is written 0600)."""
    from avatar_service.storage.avatars import write_atomic

    write_atomic(tmp_path / "secret", b"s", mode=0o600)
    write_atomic(tmp_path / "shared", b"s", mode=0o640)
    assert oct(mode_of(tmp_path / "secret")) == oct(0o600)
    assert oct(mode_of(tmp_path / "shared")) == oct(0o640)
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []


@pytest.mark.parametrize("module", ["avatar_service.storage.avatars", "avatar_cli.client"])
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o027])
def test_umask_is_read_without_changing_it(module, umask):
    """read_umask answers the process's umask and leaves it as it was."""
    code = (
        f"import os, {module} as m; "
        "before = m.read_umask(); after = os.umask(0); "
        "print(oct(before), oct(after), oct(m.FILE_MODE))"
    )
    answer = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, umask=umask
    )
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.split() == [oct(umask), oct(umask), oct(0o666 & ~umask)]
