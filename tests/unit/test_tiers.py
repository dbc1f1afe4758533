"""The test tiers are enforced at collection (tests/conftest.py): tests/model is the ``model`` tier whatever a file
says, and tests/unit refuses a test that needs a model or a service."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, pytest_collection_modifyitems


@dataclass
class Item:
    fspath: Path
    fixturenames: tuple[str, ...] = ()
    markers: list[str] = field(default_factory=list)

    @property
    def nodeid(self) -> str:
        return f"{self.fspath.relative_to(REPO)}::test_x"

    def add_marker(self, marker: Any) -> None:
        self.markers.append(marker.name)

    def get_closest_marker(self, name: str) -> Any:
        return name if name in self.markers else None


def collect(*items: Item) -> None:
    pytest_collection_modifyitems(None, list(items))  # type: ignore[arg-type]


def test_everything_in_the_model_folder_is_a_model_test() -> None:
    item = Item(REPO / "tests" / "model" / "test_x.py")
    collect(item)
    assert item.markers == ["model"]


@pytest.mark.parametrize(
    "item",
    [
        Item(REPO / "tests" / "unit" / "test_x.py", markers=["model"]),
        Item(REPO / "tests" / "unit" / "test_x.py", fixturenames=("tmp_path", "stack_env")),
        Item(REPO / "tests" / "unit" / "test_x.py", fixturenames=("postgres",)),
        Item(REPO / "tests" / "unit" / "test_x.py", fixturenames=("model_dir",)),
    ],
    ids=["model", "stack", "database", "model-directory"],
)
def test_a_unit_test_that_needs_a_model_or_a_service_is_refused(item: Item) -> None:
    with pytest.raises(pytest.UsageError, match="tests/unit"):
        collect(item)


def test_unit_and_integration_tests_that_need_what_their_tier_gives_pass() -> None:
    unit = Item(REPO / "tests" / "unit" / "test_x.py", fixturenames=("tmp_path",))
    integration = Item(REPO / "tests" / "integration" / "test_x.py", fixturenames=("stack_env",), markers=["model"])
    collect(unit, integration)
    assert unit.markers == [] and integration.markers == ["model"]
