"""Who is calling: an app user (a Firebase ID token, verified by ``lockwise.core.id_tokens``), or a trusted back-end
caller presenting the shared service token."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lockwise.core import errors

#: the custom claim (``admin.auth().setCustomUserClaims(uid, {lockwise_operator: true})``) that makes an operator
#: (``lockwise.devices.ownerless``)
OPERATOR_CLAIM = "lockwise_operator"


@dataclass(frozen=True)
class User:
    """An authenticated app user."""

    uid: str
    email: str | None
    email_verified: bool
    claims: Mapping[str, Any] = field(default_factory=dict)


def check_service_token(presented: str, expected: str | None) -> None:
    """Trusted back-end callers (the relay, service callers of the original contracts) present a shared secret.

    ``expected`` is None where the function holds no token (it serves no trusted caller): everyone is refused."""
    if not holds_service_token(presented, expected):
        raise errors.Unauthenticated("invalid service credential", code="invalid_service_token")


def holds_service_token(presented: str, expected: str | None) -> bool:
    """Whether ``presented`` is the trusted callers' secret (``check_service_token`` without the refusal)."""
    return expected is not None and bool(presented) and hmac.compare_digest(presented.encode(), expected.encode())
