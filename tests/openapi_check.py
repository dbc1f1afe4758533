"""Checks handler responses against ``functions/openapi.yaml``: the status must be documented for the operation and
the JSON body must match its schema. Used by the ``client`` fixture on every response of the integration tests."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).resolve().parents[1] / "functions" / "openapi.yaml"
_SPEC_URI = "urn:lockwise:openapi"


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


@dataclass
class OpenApiSpec:
    path: Path = SPEC_PATH
    checked: set[tuple[str, str, str]] = field(default_factory=set)

    @cached_property
    def doc(self) -> dict[str, Any]:
        loaded: dict[str, Any] = yaml.safe_load(self.path.read_text())
        return loaded

    @cached_property
    def _registry(self) -> Registry[Any]:
        resource = Resource.from_contents(self.doc, default_specification=DRAFT202012)
        registry: Registry[Any] = Registry().with_resource(_SPEC_URI, resource)
        return registry

    def operation_path(self, method: str, path: str) -> str:
        """The spec's path template that ``path`` matches (AssertionError if none documents ``method``)."""
        for template, item in self.doc["paths"].items():
            pattern = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "/?$"
            if re.match(pattern, path) and method.lower() in item:
                return str(template)
        raise AssertionError(f"{method} {path} is not described in {self.path.name}")

    def check(self, method: str, path: str, status: int, body: bytes, content_type: str | None) -> None:
        template = self.operation_path(method, path)
        operation = self.doc["paths"][template][method.lower()]
        responses = operation["responses"]
        key = str(status) if str(status) in responses else "default"
        if key not in responses:
            raise AssertionError(f"{method} {template} answered {status}, which the spec does not document")
        pointer = f"/paths/{_escape(template)}/{method.lower()}/responses/{key}"
        response = self._resolve(responses[key])
        content = response.get("content", {})
        if "application/json" in content:
            assert content_type and content_type.startswith("application/json"), (
                f"{method} {template} {status}: expected JSON, got {content_type}"
            )
            schema_ref = {"$ref": f"{_SPEC_URI}#{pointer}/content/application~1json/schema"}
            if "$ref" in responses[key]:
                ref = responses[key]["$ref"].lstrip("#")
                schema_ref = {"$ref": f"{_SPEC_URI}#{ref}/content/application~1json/schema"}
            validator = Draft202012Validator(schema_ref, registry=self._registry)
            errors = sorted(validator.iter_errors(json.loads(body)), key=lambda e: list(e.path))
            if errors:
                raise AssertionError(
                    f"{method} {template} {status} body does not match the spec: "
                    + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])
                )
        self.checked.add((method.upper(), template, str(status)))

    def _resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            target: Any = self.doc
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            node = target
        return node
