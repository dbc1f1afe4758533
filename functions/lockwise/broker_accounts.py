"""Keep the broker's password file in step with the locks' credentials in PostgreSQL.

PostgreSQL is the source of truth. This sidecar runs next to Mosquitto (on the broker host; in the local stack as
its own process): it renders the active lock accounts, plus the static accounts such as the relay's, into the
password file, replaces it atomically and signals mosquitto (SIGHUP) to reload. It wakes on
``NOTIFY lockwise_credentials`` (sent by a trigger on ``lock_credentials``) and re-checks every ``poll_s`` anyway.

Run: ``python -m lockwise.broker_accounts --password-file F --static-file S --pid-file P`` (uses ``DATABASE_URL``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import signal
import sys
import threading
from pathlib import Path

from lockwise.broker_passwords import render_password_file
from lockwise.db import Connection, Database

log = logging.getLogger("lockwise.broker_accounts")


def active_accounts(con: Connection) -> dict[str, str]:
    rows = con.run("SELECT mqtt_username, mqtt_password_hash FROM lock_credentials WHERE revoked_at IS NULL")
    return {str(u): str(h) for u, h in rows}


def read_static(path: Path | None) -> dict[str, str]:
    if path is None or not path.exists():
        return {}
    entries = {}
    for line in path.read_text().splitlines():
        user, sep, hashed = line.partition(":")
        if sep and user and not user.startswith("#"):
            entries[user] = hashed
    return entries


def write_password_file(target: Path, entries: dict[str, str]) -> bool:
    """Replace ``target`` atomically with ``entries``, keeping its owner and mode; True when it changed."""
    text = render_password_file(entries)
    if target.exists() and target.read_text() == text:
        return False
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text)
    if target.exists():
        st = target.stat()
        with contextlib.suppress(PermissionError):
            os.chown(tmp, st.st_uid, st.st_gid)
        tmp.chmod(st.st_mode & 0o777)
    else:
        tmp.chmod(0o640)
    tmp.replace(target)
    return True


def reload_broker(pid_file: Path | None) -> None:
    if pid_file is None or not pid_file.exists():
        return
    try:
        os.kill(int(pid_file.read_text().strip()), signal.SIGHUP)
    except (ValueError, ProcessLookupError) as exc:
        log.warning("could not signal the broker: %s", exc)


def sync_once(db: Database, target: Path, static_file: Path | None, pid_file: Path | None) -> bool:
    with db.connection() as con:
        accounts = active_accounts(con)
    static = read_static(static_file)
    clash = set(static) & set(accounts)
    if clash:
        log.error("static broker accounts shadow lock accounts: %s", sorted(clash))
    changed = write_password_file(target, {**accounts, **static})
    if changed:
        reload_broker(pid_file)
        log.info("broker password file updated", extra={"fields": {"lock_accounts": len(accounts)}})
    return changed


def watch(
    db: Database,
    target: Path,
    static_file: Path | None,
    pid_file: Path | None,
    stop: threading.Event,
    poll_s: float = 5.0,
) -> None:
    """Sync on every credentials notification, and every ``poll_s`` seconds as a fallback."""
    listener: Connection | None = None
    while not stop.is_set():
        try:
            if listener is None:
                listener = db.connect()
                listener.run("LISTEN lockwise_credentials")
            sync_once(db, target, static_file, pid_file)
            sock = listener._usock if hasattr(listener, "_usock") else None  # noqa: SLF001 - pg8000's socket
            if sock is not None:
                select.select([sock], [], [], poll_s)
            else:
                stop.wait(poll_s)
            listener.run("SELECT 1")  # reading a reply is when pg8000 collects notifications
            notifications = getattr(listener, "notifications", None)
            if notifications is not None:
                notifications.clear()
        except Exception:  # noqa: BLE001 - keep the sidecar alive across database restarts
            log.exception("broker account sync failed; retrying")
            if listener is not None:
                with contextlib.suppress(Exception):
                    listener.close()
            listener = None
            stop.wait(min(poll_s, 2.0))
    if listener is not None:
        with contextlib.suppress(Exception):
            listener.close()


def main(argv: list[str] | None = None) -> int:
    from lockwise import log as lwlog
    from lockwise.config import DatabaseSettings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--password-file", type=Path, required=True)
    parser.add_argument("--static-file", type=Path, help="accounts that are not locks (the relay's)")
    parser.add_argument("--pid-file", type=Path, help="mosquitto's pid file, to signal a reload")
    parser.add_argument("--poll-s", type=float, default=5.0)
    args = parser.parse_args(argv)
    settings = DatabaseSettings.from_env()
    lwlog.configure("broker-accounts", settings.log_level)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    watch(
        Database(settings.database_url, pool_size=1),
        args.password_file,
        args.static_file,
        args.pid_file,
        stop,
        args.poll_s,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
