"""The relays' shared-subscription group is named from their private keys: the same for every replica holding the
bundle, another for other keys, and never the fixed name a lock could join (``mqtt_relay.sessions``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mqtt_relay import sessions


def bundle(directory: Path, keys: dict[str, str]) -> str:
    path = directory / f"bundle-{len(list(directory.iterdir()))}.json"
    path.write_text(json.dumps({name: {"cert": "CERT", "key": key} for name, key in keys.items()}))
    return str(path)


def test_every_replica_names_the_same_group_and_other_keys_another(tmp_path: Path) -> None:
    keys = {"lockwise-relay-1": "KEY-1", "lockwise-relay-2": "KEY-2"}
    first = sessions.event_topics(bundle(tmp_path, keys))
    assert first == sessions.event_topics(bundle(tmp_path, dict(reversed(keys.items()))))  # order of the bundle
    group = first[0].split("/")[1]
    assert len(group) == len("lockwise-relay-") + 32 and all(t.split("/")[1] == group for t in first)
    assert [t.split("/", 2)[2] for t in first] == ["lockwise/+/state", "lockwise/+/ack", "lockwise/+/status"]
    assert first != sessions.event_topics(bundle(tmp_path, {**keys, "lockwise-relay-2": "KEY-2b"}))
    assert not set(first) & set(sessions.LEGACY_EVENT_TOPICS)


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '{"lockwise-relay-1": {"cert": "C"}}'])
def test_a_bundle_that_is_not_one_is_refused_by_name(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bundle.json"
    path.write_text(content)
    with pytest.raises(sessions.MissingIdentity, match="MQTT_CLIENT_CERTS"):
        sessions.event_topics(str(path))
