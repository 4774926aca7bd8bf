"""The session layer: a `~trio_sessions.Session` per request, loaded, checked, saved, rotated.

Implementation only: import the public names from :mod:`trio_sessions` (one import
path each). `~trio_sessions.SessionManager` turns the id a client sends (in a cookie or a
header) into a session, a dict that loads lazily, and saves what the request changed;
the integrations (:mod:`trio_sessions.quart`, :mod:`trio_sessions.asgi`) call it around
each request.

* ``_session``: `Session`; ``_manager``: `SessionManager`, the record format, saving by
  conditional writes; ``_cookies``, ``_signing``, ``_serializers``: the pieces it uses;
* ``_lifecycle``: opening a storage when a server starts; ``_web``: what the
  integrations share.
"""
