"""What the web integrations share: when to load a session, what to add to a response."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import sniffio

from .._abc import SessionStorage
from .._errors import UNAVAILABLE, SessionNotFound
from .._ids import new_session_id
from ._manager import SessionManager
from ._session import Session

__all__ = ["Autoload", "autoload_policy", "check_trio", "probe", "response_headers"]

logger = logging.getLogger("trio_sessions")

#: When the integrations load a request's session before the view runs: ``True`` (every
#: request), ``False`` (none: views call ``await load_session(...)``), path prefixes
#: (``["/account", "/cart"]``), or a function of the request's path.
Autoload = bool | Sequence[str] | Callable[[str], bool]


def autoload_policy(autoload: Autoload) -> Callable[[str], bool]:
    """Turn an `Autoload` setting into a function of the path, refusing nonsense early."""
    if isinstance(autoload, bool):
        return (lambda path: True) if autoload else (lambda path: False)
    if isinstance(autoload, str):
        raise TypeError(f"autoload takes a list of path prefixes, not one string ({autoload!r})")
    if callable(autoload):
        return autoload
    prefixes = tuple(autoload)
    for prefix in prefixes:
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise ValueError(f"autoload path prefixes start with '/' (got {prefix!r})")
    return lambda path: path.startswith(prefixes)


def response_headers(
    manager: SessionManager, session: Session, value: str | None, cache_control: str
) -> tuple[list[tuple[str, str]], str | None]:
    """Headers to add for *session* after `SessionManager.save` returned *value*.

    Returns the headers and, if the response's ``Cache-Control`` must change (it sets
    the session's id), the new value; *cache_control* is what the app set.
    """
    headers: list[tuple[str, str]] = []
    if value is not None:
        headers.append((manager.response_header(session), value))
    if value is not None or session.accessed:
        headers.append(("Vary", manager.vary(session)))
    new_policy = None
    if value is not None and "no-store" not in cache_control.lower():
        new_policy = "private, no-store"  # never cache or replay a response that sets an id
    return headers, new_policy


def check_trio(integration: str) -> None:
    """Refuse to run outside trio, with what to do instead."""
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        library = "no event loop"
    if library != "trio":
        raise RuntimeError(
            f"{integration} runs on trio, but this server runs the app on {library}: serve "
            "it with Hypercorn's trio worker, `hypercorn --worker-class trio module:app`"
        )


async def probe(storage: SessionStorage) -> None:
    """Try the storage once at startup: a programming error fails the startup."""
    try:
        await storage.read_bytes(new_session_id())
    except SessionNotFound:
        return  # noqa: ASYNC910 (storage methods checkpoint, also when they raise)
    except UNAVAILABLE as exc:
        logger.error(
            "the session storage failed at startup; requests that need a session get 503 "
            "until it works",
            exc_info=exc,
        )
        return  # noqa: ASYNC910 (storage methods checkpoint, also when they raise)
    except Exception as exc:
        raise RuntimeError(
            f"the session storage ({type(storage).__name__}) does not work: {exc}"
        ) from exc
