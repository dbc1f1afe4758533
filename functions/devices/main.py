"""HTTP entry point of the devices function: locks, members, commands and lock state.

Handlers only parse the request, call the domain and shape the response; ``lockwise.http.Api`` maps errors.
"""

from __future__ import annotations

import flask
import functions_framework

from lockwise import health, users
from lockwise.http import Api, Ctx, JsonBody
from lockwise.runtime import get_runtime

rt = get_runtime("devices")
api = Api("devices")


@api.route("GET", "/devices/health")
def get_health(ctx: Ctx) -> tuple[JsonBody, int]:
    return health.check(rt.probes(), "devices", rt.settings.release)


@api.route("GET", "/devices/me")
def get_me(ctx: Ctx) -> JsonBody:
    user = rt.verifier.verify(ctx.bearer_token())
    with rt.db.transaction() as con:
        users.upsert(con, user)
    return {"uid": user.uid, "email": user.email}


@functions_framework.http
def devices(request: flask.Request) -> flask.Response:
    return api(request)
