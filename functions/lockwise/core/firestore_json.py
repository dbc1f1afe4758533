"""Firestore's REST JSON: the ``Write`` messages a commit carries, field paths as the API reads them, and values.

The writes mean what Google's client library means by ``batch.set``, ``set(..., merge=True)`` and
``set(..., merge=[fields])``: same update masks, same field-path quoting (``tests/unit/test_firestore_rest.py``
compares each with the protobuf the library makes). The mirror's data is JSON, so JSON's types are all the values
need, and one more: a timestamp, written as the one-key map ``timestamp`` makes.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from typing import Any

_NON_FINITE = {"inf": "Infinity", "-inf": "-Infinity", "nan": "NaN"}
_SIMPLE_FIELD = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")


def set_write(name: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """Replace the document with ``data``."""
    return {"update": {"name": name, "fields": encode_fields(data)}}


def merge_write(name: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """Write every leaf of ``data`` and keep the document's other fields (the client library's ``merge=True``: a
    nested map merges into the stored map; an empty map is a leaf)."""
    return _masked(name, data, [render_path(path) for path in leaf_paths(data)])


def replace_fields_write(name: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``data``'s top-level fields whole (a map loses the keys it no longer has) and keep the others."""
    return _masked(name, data, [render_path((key,)) for key in sorted(data)])


def delete_write(name: str) -> dict[str, Any]:
    return {"delete": name}


def at_version(write: dict[str, Any], version: str | None) -> dict[str, Any]:
    """``write``, taken only while its document is at ``version`` (its ``updateTime``), or does not exist when None:
    a commit that arrives after a later one changed the document is refused (``FAILED_PRECONDITION``,
    ``ALREADY_EXISTS``) instead of undoing it."""
    return {**write, "currentDocument": {"exists": False} if version is None else {"updateTime": version}}


def stamped(write: dict[str, Any], field: str) -> dict[str, Any]:
    """``write`` (an update) that also sets ``field`` to the commit's time on the server (``REQUEST_TIME``)."""
    return {**write, "updateTransforms": [{"fieldPath": render_path((field,)), "setToServerValue": "REQUEST_TIME"}]}


def _masked(name: str, data: Mapping[str, Any], paths: list[str]) -> dict[str, Any]:
    return {"update": {"name": name, "fields": encode_fields(data)}, "updateMask": {"fieldPaths": paths}}


def leaf_paths(data: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The field path of every leaf value, depth first in key order; a non-empty map is not a leaf."""
    paths: list[tuple[str, ...]] = []
    for key, value in sorted(data.items()):
        if isinstance(value, Mapping) and value:
            paths += leaf_paths(value, (*prefix, key))
        else:
            paths.append((*prefix, key))
    return paths


def render_path(parts: tuple[str, ...]) -> str:
    """A field path as the API reads it: dotted, with a name that is not a plain identifier in backquotes."""
    return ".".join(
        part if _SIMPLE_FIELD.fullmatch(part) else "`" + part.replace("\\", "\\\\").replace("`", "\\`") + "`"
        for part in parts
    )


def encode_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    return {str(key): encode(value) for key, value in data.items()}


#: the key of a map that stands for a Firestore timestamp (``timestamp``): mirror rows pass through JSON in the
#: queue, which has no timestamps (Firestore reserves field names of the form ``__*__``: no data has this one)
TIMESTAMP = "__timestamp__"


def iso_ms(when: dt.datetime) -> str:
    """``when`` (aware) in UTC to the millisecond, as Firestore writes times (``...T03:04:05.678Z``)."""
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def timestamp(when: dt.datetime) -> dict[str, str]:
    """``when`` (aware) as a value ``encode`` makes a Firestore timestamp of (a TTL policy reads only those)."""
    return {TIMESTAMP: iso_ms(when)}


def encode(value: Any) -> dict[str, Any]:
    if value is None:
        return {"nullValue": None}
    if isinstance(value, bool):
        return {"booleanValue": value}
    if isinstance(value, int):
        return {"integerValue": str(value)}
    if isinstance(value, float):  # JSON has no infinities or NaN: the API reads them as these strings
        return {"doubleValue": value if math.isfinite(value) else _NON_FINITE[str(value)]}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, Mapping):
        if value.keys() == {TIMESTAMP}:
            return {"timestampValue": str(value[TIMESTAMP])}
        return {"mapValue": {"fields": encode_fields(value)}}
    if isinstance(value, list | tuple):
        return {"arrayValue": {"values": [encode(item) for item in value]}}
    raise TypeError(f"no Firestore value for {type(value).__name__}")


def decode_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {key: decode(value) for key, value in fields.items()}


def decode(value: Mapping[str, Any]) -> Any:
    """A REST ``Value`` as a plain value (timestamps stay RFC 3339 strings, references full names)."""
    kind, inner = next(iter(value.items()))
    if kind == "integerValue":
        return int(inner)
    if kind == "doubleValue":
        return float(inner)
    if kind == "mapValue":
        return decode_fields(inner.get("fields", {}))
    if kind == "arrayValue":
        return [decode(item) for item in inner.get("values", [])]
    return inner  # nullValue, booleanValue, stringValue, timestampValue, referenceValue, bytesValue (base64)
