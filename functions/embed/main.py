"""HTTP entry point of the embed function."""

from __future__ import annotations

import flask
import functions_framework

from lockwise import health
from lockwise.http import Api, Ctx, JsonBody
from lockwise.runtime import get_runtime

rt = get_runtime("embed")
api = Api("embed")


@api.route("GET", "/embed/health")
def get_health(ctx: Ctx) -> tuple[JsonBody, int]:
    return health.check(rt.probes(), "embed", rt.settings.release)


@functions_framework.http
def embed(request: flask.Request) -> flask.Response:
    return api(request)
