"""HTTP header names shared by every bundle, the relay's included (no flask here: the relay does not carry it)."""

from __future__ import annotations

#: the trusted caller's shared secret (``Authorization`` stays free for the platform's IAM identity token)
SERVICE_TOKEN_HEADER = "X-LockWise-Service-Token"
