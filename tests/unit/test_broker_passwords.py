"""Broker password hashes made in Python are the ones mosquitto's own tool makes and checks."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from lockwise.broker_passwords import check_password, hash_password, render_password_file


def test_hash_round_trip_and_wrong_password() -> None:
    hashed = hash_password("s3cret")
    assert hashed.startswith("$7$101$")
    assert check_password("s3cret", hashed)
    assert not check_password("s3cret!", hashed)
    assert hash_password("s3cret") != hashed  # salted


def test_we_verify_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd")
    assert tool, "mosquitto_passwd missing: apt-get install mosquitto"
    pwfile = tmp_path / "pw"
    subprocess.run([tool, "-c", "-b", str(pwfile), "lock-one", "hunter22"], check=True)
    user, _, hashed = pwfile.read_text().strip().partition(":")
    assert user == "lock-one"
    assert check_password("hunter22", hashed)
    assert not check_password("hunter23", hashed)


def test_password_file_refuses_usernames_that_would_break_it() -> None:
    assert render_password_file({"b": "$7$x", "a": "$7$y"}) == "a:$7$y\nb:$7$x\n"
    for bad in ("", "a:b", "a\nb"):
        try:
            render_password_file({bad: "$7$x"})
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")
