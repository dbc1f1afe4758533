"""HTTP entry point of the verify function."""

from __future__ import annotations

import flask
import functions_framework

from lockwise import health
from lockwise.http import Api, Ctx, JsonBody
from lockwise.runtime import get_runtime

rt = get_runtime("verify")
api = Api("verify")


@api.route("GET", "/verify/health")
def get_health(ctx: Ctx) -> tuple[JsonBody, int]:
    return health.check(rt.probes(), "verify", rt.settings.release)


@functions_framework.http
def verify(request: flask.Request) -> flask.Response:
    return api(request)
