"""Sphinx configuration for the trio-sessions documentation."""

from __future__ import annotations

import builtins
from importlib.metadata import version as _version
from pathlib import Path
from typing import Any

from sphinx.addnodes import pending_xref

project = "trio-sessions"
author = "the trio-sessions contributors"
copyright = "2026, the trio-sessions contributors"
release = _version("trio-sessions")
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    # Docstrings use Google-style "Args:" sections.
    "sphinx.ext.napoleon",
    "sphinxcontrib_trio",
    # Renders the changelog fragments not released yet (runs towncrier locally).
    "sphinxcontrib.towncrier.ext",
]

# No intersphinx: the build must work offline, and -W turns a failed
# inventory fetch into an error.

napoleon_numpy_docstring = False

towncrier_draft_autoversion_mode = "draft"
towncrier_draft_include_empty = True
towncrier_draft_working_directory = Path(__file__).parent.parent

autodoc_member_order = "bysource"
# Show defaults as written (``clock=trio.current_time``), not as their repr.
autodoc_preserve_defaults = True
autodoc_typehints = "description"
default_role = "obj"
exclude_patterns = ["_build"]

html_theme = "furo"
html_title = "trio-sessions"


# Without intersphinx, a type hint such as ``bytes`` finds no target of its own, and
# Sphinx's fuzzy search would link it to an attribute of ours that has the same name
# (``MemoryStorageStatistics.bytes``). Builtin names get an exact lookup instead: they
# resolve to nothing and render as plain text.
_BUILTINS = frozenset(dir(builtins))


def _unlink_builtins(app: Any, doctree: Any) -> None:
    for node in doctree.findall(pending_xref):
        if node.get("refdomain") == "py" and node.get("reftarget") in _BUILTINS:
            node.attributes.pop("refspecific", None)


def _protocol_signature(
    app: Any, what: str, name: str, obj: Any, options: Any, signature: Any, annotation: Any
) -> tuple[str, Any] | None:
    # A Protocol is described, not instantiated: its ``(*args, **kwargs)`` says nothing.
    if what == "class" and getattr(obj, "_is_protocol", False):
        return "", annotation
    return None


def setup(app: Any) -> None:
    app.connect("doctree-read", _unlink_builtins)
    app.connect("autodoc-process-signature", _protocol_signature)
