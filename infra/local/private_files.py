"""Files of the local stack that hold its secrets (the database's password, the service token, the command-signing
key): their user's only from their first byte, and whole whenever read."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, text: str) -> None:
    """``text`` into ``path``, readable by its owner only (0600): written to a new file beside it, created 0600 and
    never a link, then renamed over it, so a reader sees the file before or after, never an empty or a partial one,
    and a link or a file of another user there is replaced, not written through or emptied. The ready file was left
    as the umask made it, 0644, readable by every user of the machine, and the others were for an instant (attack run
    53; a review: writing in place emptied a file it could then not make private, and followed a link)."""
    new = path.with_name(f".{path.name}.{os.getpid()}.new")
    fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(new, path)
    except BaseException:
        new.unlink(missing_ok=True)
        raise
