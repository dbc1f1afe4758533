"""The local stack's secret files (``infra.local.private_files``): their user's only, whole whenever read."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from infra.local.private_files import write_private


def test_a_secret_file_is_its_users_only_whatever_the_umask_and_whatever_was_there(tmp_path: Path) -> None:
    """Attack run 53: the ready file (the database's password, the service token, the signing key) was 0644 by the
    umask. A review: written in place, a file there already of another mode was emptied before it was made private,
    and a link was written through. Now a new 0600 file is renamed over whatever was there."""
    old_umask = os.umask(0o022)
    try:
        fresh = tmp_path / "ready.json"
        write_private(fresh, '{"a": 1}')
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o600 and fresh.read_text() == '{"a": 1}'
        loose = tmp_path / "stack.env"
        loose.write_text("OLD=1\n")
        loose.chmod(0o644)
        write_private(loose, "NEW=2\n")
        assert stat.S_IMODE(loose.stat().st_mode) == 0o600 and loose.read_text() == "NEW=2\n"
        target = tmp_path / "elsewhere"
        target.write_text("not the stack's")
        target.chmod(0o644)
        link = tmp_path / "secrets.json"
        link.symlink_to(target)
        write_private(link, "{}")
        assert not link.is_symlink() and stat.S_IMODE(link.stat().st_mode) == 0o600 and link.read_text() == "{}"
        assert target.read_text() == "not the stack's" and stat.S_IMODE(target.stat().st_mode) == 0o644
    finally:
        os.umask(old_umask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "ready.json", "secrets.json", "stack.env"]
