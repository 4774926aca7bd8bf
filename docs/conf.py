"""Sphinx configuration for the trio-sessions documentation."""

from __future__ import annotations

from importlib.metadata import version as _version

project = "trio-sessions"
author = "the trio-sessions contributors"
copyright = "2026, the trio-sessions contributors"
release = _version("trio-sessions")
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinxcontrib_trio",
]

# No intersphinx: the build must work offline, and -W turns a failed
# inventory fetch into an error.

autodoc_member_order = "bysource"
autodoc_typehints = "description"
default_role = "obj"
exclude_patterns = ["_build"]

html_theme = "furo"
html_title = "trio-sessions"
