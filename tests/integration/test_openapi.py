"""The OpenAPI document is valid and describes exactly the routes the functions serve."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

from openapi_spec_validator import validate

from tests.openapi_check import OpenApiSpec

REPO = Path(__file__).resolve().parents[2]


def served_routes(stack_env: dict[str, str]) -> set[tuple[str, str]]:
    routes: set[tuple[str, str]] = set()
    for name in ("embed", "verify", "devices"):
        spec = importlib.util.spec_from_file_location(f"main_{name}", REPO / "functions" / name / "main.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        for rule in module.api._map.iter_rules():
            path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                routes.add((method, path))
    return routes


def test_spec_is_valid_openapi(openapi_spec: OpenApiSpec) -> None:
    validate(openapi_spec.doc)


def test_every_served_route_is_documented_and_vice_versa(openapi_spec: OpenApiSpec, stack_env: dict[str, str]) -> None:
    documented = {
        (method.upper(), path)
        for path, item in openapi_spec.doc["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }
    assert served_routes(stack_env) == documented
