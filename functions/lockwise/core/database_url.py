"""A database URL (``DATABASE_URL``) split as it was meant, or refused in words that quote none of it: read by the
settings at start and by the pool's parser."""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit

#: why a database URL is refused, in words that quote none of it
MISREAD_URL = (
    "DATABASE_URL is not read as it was meant: percent-encode the password (urllib.parse.quote(password, safe='')):"
    " a '/', '?', '#' or '@' in it ends the address there, and the rest is read as the port, the database or the query"
)


def split_url(url: str) -> SplitResult:
    """``url`` split, its port read; ``ValueError`` (``MISREAD_URL``, chained from nothing) when a password that is not
    percent-encoded ends the address early: the rest read as a port that is no number (urllib's error quoted it, and
    it was logged with every request's 500: attack run 53), or as a port that is one (a password whose first part is
    digits), the rest of it then in the database's name or the query (an ``@`` after the address: a review)."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # read on access: an error only then
    except ValueError:
        raise ValueError(MISREAD_URL) from None  # its message quotes what it took for a port: a part of the password
    if "@" in parts.path + parts.query + parts.fragment:
        raise ValueError(MISREAD_URL)
    return parts
