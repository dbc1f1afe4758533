"""What every speaker encoder shares about its files: the load error and how weights are named.

Torch-free on purpose: the verify bundle serves an exported model without torch and still raises these.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

#: the shortest clip any encoder embeds: 40 ms at 16 kHz (fewer than 5 frames starve ECAPA's dilated convolutions)
MIN_SAMPLES_16K = 640


class ModelError(RuntimeError):
    """A model's files are missing, incomplete or corrupt (raised at start-up; names the directory and file)."""


def file_identity(prefix: str, path: Path) -> str:
    """``prefix-`` + the first 16 hex digits of the SHA-256 of ``path``: names a set of weights.

    Stored next to each enrolled embedding, so embeddings made by different weights are never compared.
    """
    return f"{prefix}-{file_sha256(path)[:16]}"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a model file; ``ModelError`` naming it when it cannot be read."""
    try:
        with Path(path).open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as exc:
        raise ModelError(f"cannot read model file {path} ({exc})") from exc


def read_manifest(path: Path, what: str, how_to_make: str) -> dict[str, Any]:
    """The JSON object in ``path``, the manifest of ``what``; ``ModelError`` naming it when it is missing (with
    ``how_to_make`` it), unreadable, not JSON or not an object."""
    try:
        manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(f"{what} {path} is missing ({how_to_make})") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{what} {path} is not readable JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise ModelError(f"{what} {path}: expected a JSON object")
    return manifest
