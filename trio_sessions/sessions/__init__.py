"""The session layer: a `Session` per request, loaded, checked, saved and rotated.

`SessionManager` turns the id a client sends (in a cookie) into a `Session`, a dict that
loads lazily, and saves what the request changed. The integrations
(:mod:`trio_sessions.quart`, :mod:`trio_sessions.asgi`) call it around each request.
"""

from ._cookies import CookieOptions as CookieOptions
from ._lifecycle import UNOPENED as UNOPENED
from ._lifecycle import StorageSource as StorageSource
from ._lifecycle import check_source as check_source
from ._lifecycle import open_storage_source as open_storage_source
from ._manager import SessionDataError as SessionDataError
from ._manager import SessionManager as SessionManager
from ._serializers import JSONSerializer as JSONSerializer
from ._serializers import Serializer as Serializer
from ._session import Session as Session
from ._session import SessionNotLoaded as SessionNotLoaded

__all__ = [
    "UNOPENED",
    "CookieOptions",
    "JSONSerializer",
    "Serializer",
    "Session",
    "SessionDataError",
    "SessionManager",
    "SessionNotLoaded",
    "StorageSource",
    "check_source",
    "open_storage_source",
]
