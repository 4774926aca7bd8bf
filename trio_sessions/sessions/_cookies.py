"""The session cookie: its attributes, and its values in a request's ``Cookie`` header."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal, final

__all__ = ["CookieOptions"]

_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", re.ASCII).fullmatch
_COOKIE_ATTRIBUTE = re.compile(r"[\x21-\x3a\x3c-\x7e]*", re.ASCII).fullmatch


@final
@dataclass(frozen=True, slots=True)
class CookieOptions:
    """How the session cookie is set. The defaults follow OWASP's advice.

    :param name: the cookie's name. By default ``__Host-session`` when the other options
        allow it (``secure``, ``path="/"``, no ``domain``), else ``session``. A ``__Host-``
        name makes browsers refuse the cookie unless it is ``Secure``, has ``Path=/`` and
        no ``Domain``, so a sibling subdomain cannot plant or shadow it; those settings
        are checked here.
    :param secure: send the cookie over HTTPS only. Browsers treat ``http://localhost`` and
        ``http://127.0.0.1`` as secure, so development works without turning it off.
    :param httponly: hide the cookie from JavaScript.
    :param samesite: ``"lax"``, ``"strict"`` or ``"none"`` (which requires ``secure``).
    :param path: the cookie's path.
    :param domain: the cookie's domain; ``None`` (the default) means this host only.
    :param persistent: give every session cookie a ``Max-Age`` (the absolute timeout, which
        then must be set) so it survives a browser restart. By default it is a
        browser-session cookie, and only sessions made persistent with
        `Session.set_lifetime` ("remember me") get a ``Max-Age``.
    """

    name: str = ""
    secure: bool = True
    httponly: bool = True
    samesite: Literal["lax", "strict", "none"] = "lax"
    path: str = "/"
    domain: str | None = None
    persistent: bool = False

    def __post_init__(self) -> None:
        for flag in ("secure", "httponly", "persistent"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} must be True or False, not {getattr(self, flag)!r}")
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise ValueError(f"the cookie path must start with '/' (got {self.path!r})")
        if not _COOKIE_ATTRIBUTE(self.path):
            raise ValueError(f"invalid cookie path {self.path!r}")
        if self.domain is not None and (
            not isinstance(self.domain, str)
            or not self.domain
            or not _COOKIE_ATTRIBUTE(self.domain)
        ):
            raise ValueError(f"invalid cookie domain {self.domain!r}")
        if self.name == "":
            host_ok = self.secure and self.path == "/" and self.domain is None
            object.__setattr__(self, "name", "__Host-session" if host_ok else "session")
        if not isinstance(self.name, str) or not _COOKIE_NAME(self.name):
            raise ValueError(f"invalid cookie name {self.name!r}")
        if self.samesite not in ("lax", "strict", "none"):
            raise ValueError(f"samesite must be 'lax', 'strict' or 'none' (got {self.samesite!r})")
        if self.samesite == "none" and not self.secure:
            raise ValueError("samesite='none' requires secure=True (browsers drop the cookie)")
        lowered = self.name.lower()
        if lowered.startswith("__host-"):
            if not self.secure or self.path != "/" or self.domain is not None:
                raise ValueError(
                    "a __Host- cookie requires secure=True, path='/' and domain=None "
                    "(browsers drop it otherwise); choose another name, e.g. 'session'"
                )
        elif lowered.startswith("__secure-") and not self.secure:
            raise ValueError("a __Secure- cookie requires secure=True (browsers drop it)")

    def _attributes(self) -> str:
        parts = [f"Path={self.path}"]
        if self.domain is not None:
            parts.append(f"Domain={self.domain}")
        if self.secure:
            parts.append("Secure")
        if self.httponly:
            parts.append("HttpOnly")
        parts.append(f"SameSite={self.samesite.capitalize()}")
        return "; ".join(parts)

    def set_cookie(self, value: str, max_age: float | None = None) -> str:
        """Return a ``Set-Cookie`` header value that sets the cookie to *value*."""
        age = "" if max_age is None else f"; Max-Age={max(0, math.floor(max_age))}"
        return f"{self.name}={value}{age}; {self._attributes()}"

    def delete_cookie(self) -> str:
        """Return a ``Set-Cookie`` header value that deletes the cookie."""
        return (
            f"{self.name}=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; {self._attributes()}"
        )

    def find_all(self, cookie_header: str | None) -> list[str]:
        """Every value of this cookie in a request's ``Cookie`` header, in order.

        Several cookies of one name arrive when they were set for different paths or
        domains (or planted by a sibling subdomain); browsers send the most specific first.
        """
        if not cookie_header:
            return []
        values = []
        for part in cookie_header.split(";"):
            name, sep, value = part.strip().partition("=")
            if sep and name == self.name:
                values.append(value.strip().strip('"'))
        return values

    def find(self, cookie_header: str | None) -> str | None:
        """The first value of this cookie in a ``Cookie`` header, or ``None``."""
        values = self.find_all(cookie_header)
        return values[0] if values else None
