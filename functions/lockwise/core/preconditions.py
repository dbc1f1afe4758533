"""``If-Unmodified-Since`` (RFC 9110 section 13.1.4) on a deletion: the caller names when it last read what it
deletes, and a deletion sent again after its answer was lost does not delete what took that thing's place since.

A removal sent again after the member had been removed and had joined again removed her again; a voice deletion
sent again after its owner had enrolled again erased the new voice (attack run 108). With the header, such a retry
is 412 and nothing is deleted; without it, a deletion is done as before. A value that is not an HTTP date is 400
``invalid_if_unmodified_since`` (the RFC has a server ignore it: a client whose dates are malformed would then
delete, unguarded, what it meant to guard).
"""

from __future__ import annotations

import datetime as dt
import email.utils

from lockwise.core import errors

HEADER = "If-Unmodified-Since"


def unmodified_since(value: str | None) -> dt.datetime | None:
    """The header's moment (UTC), or None when it was not sent."""
    if value is None:
        return None
    try:
        moment = email.utils.parsedate_to_datetime(value)
        # in UTC within the try: the last day of year 9999 at an offset west of it is past what a date holds, an
        # OverflowError, a 500 from any deletion the header guards (attack run 119)
        return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)
    except (TypeError, ValueError, IndexError, OverflowError) as exc:
        raise errors.BadRequest(
            f"{HEADER} must be an HTTP date (RFC 9110), as 'Sun, 06 Nov 1994 08:49:37 GMT'",
            code="invalid_if_unmodified_since",
        ) from exc


def refuse_if_changed(changed_at: dt.datetime | None, since: dt.datetime | None, what: str, code: str) -> None:
    """412 ``code`` when ``what`` changed (began anew) at ``changed_at``, after ``since`` (an HTTP date: whole
    seconds)."""
    if since is None or changed_at is None or changed_at.replace(microsecond=0) <= since:
        return
    raise errors.PreconditionFailed(
        f"{what} changed after {HEADER}; read it again before deleting it",
        code=code,
        details={"changed_at": changed_at.isoformat()},
    )
