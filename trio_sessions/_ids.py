"""The one id policy shared by every backend."""

from __future__ import annotations

import re
import secrets

from ._errors import InvalidSessionId

__all__ = ["SESSION_ID_PATTERN", "check_session_id", "checked_ids", "new_session_id"]

#: Every backend accepts exactly the ids that match this pattern (URL-safe base64 alphabet).
SESSION_ID_PATTERN = r"[A-Za-z0-9_-]{1,256}"
_fullmatch = re.compile(SESSION_ID_PATTERN, re.ASCII).fullmatch

#: Ids (plain `str` only) that passed the check recently. A valid id pays for the pattern
#: once: the hot paths test membership here first (``type(i) is str and i in
#: checked_ids``), a hash lookup on a hash the string already carries. Bounded: emptied
#: when full, so a flood of fresh ids costs no more than checking each of them.
checked_ids: set[str] = set()
_CHECKED_MAX = 4096


def new_session_id() -> str:
    """Return a fresh session id: 256 bits from :mod:`secrets`, URL-safe (43 characters)."""
    return secrets.token_urlsafe(32)


def check_session_id(session_id: object) -> str:
    """Return *session_id* if it follows the id policy, else raise `InvalidSessionId`.

    The message describes the problem without echoing the value (which may be hostile,
    huge, or a credential).
    """
    if type(session_id) is str:
        if session_id in checked_ids:
            return session_id
        if _fullmatch(session_id) is not None:
            if len(checked_ids) >= _CHECKED_MAX:
                checked_ids.clear()
            checked_ids.add(session_id)
            return session_id
    elif isinstance(session_id, str) and _fullmatch(session_id) is not None:
        return str(session_id)  # a str subclass: store the plain value
    if not isinstance(session_id, str):
        raise InvalidSessionId(f"session id must be a str, not {type(session_id).__name__}")
    raise InvalidSessionId(
        f"session id must match {SESSION_ID_PATTERN} (got {len(session_id)} characters)"
    )
