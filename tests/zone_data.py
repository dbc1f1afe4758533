"""Zones as the pinned ``tzdata`` package's own files define them, read without ``zoneinfo``'s search path (which
``lockwise.core.zones`` sets): what the tests expect a zone to be, whatever the host's database says."""

from __future__ import annotations

import importlib.resources
import io
from zoneinfo import ZoneInfo


def pinned(key: str) -> ZoneInfo:
    data = importlib.resources.files("tzdata.zoneinfo").joinpath(*key.split("/")).read_bytes()
    return ZoneInfo.from_file(io.BytesIO(data), key=key)
