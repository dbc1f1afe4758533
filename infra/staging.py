"""Build a directory beside its final place and swap it in only when complete: a crash or a failed check never
leaves a half-written model, export or corpus where a loader would find it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """Yield a fresh hidden folder next to ``out``; if the block succeeds it replaces ``out`` (mode 755: whoever
    serves it can read it), otherwise it is removed and ``out`` is left as it was. Creates ``out``'s parent."""
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))  # same file system: rename is atomic
    try:
        yield staging
        staging.chmod(0o755)  # mkdtemp makes it private
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
