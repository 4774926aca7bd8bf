"""Check that the built docs document every public name.

Reads the object inventory of an HTML build (``docs/_build/html/objects.inv`` unless a
path is given) and fails, listing them, if any public module or any name in the
``__all__`` of the public modules is missing from it. Run it after ``sphinx-build``:

    python docs/check_inventory.py [path/to/objects.inv]
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from sphinx.util.inventory import InventoryFile

PUBLIC_MODULES = (
    "trio_sessions",
    "trio_sessions.testing",
    "trio_sessions.testing.servers",
    "trio_sessions.quart",
    "trio_sessions.asgi",
    "trio_sessions.asyncio",
)
DEFAULT_INVENTORY = Path(__file__).parent / "_build" / "html" / "objects.inv"


def documented_names(inventory_path: Path) -> set[str]:
    """Every Python object name in the inventory, whatever its role."""
    with inventory_path.open("rb") as file:
        inventory = InventoryFile.load(file, "", lambda base, uri: uri)
    names: set[str] = set()
    for role, objects in inventory.items():
        if role.startswith("py:"):
            names.update(objects)
    return names


def public_names() -> list[str]:
    """The public modules and the full name of everything in their ``__all__``."""
    names = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        names.append(module_name)
        names.extend(f"{module_name}.{name}" for name in module.__all__)
    return names


def main(argv: list[str]) -> int:
    inventory_path = Path(argv[1]) if len(argv) > 1 else DEFAULT_INVENTORY
    if not inventory_path.is_file():
        print(f"error: no inventory at {inventory_path}: build the docs first", file=sys.stderr)
        return 2
    documented = documented_names(inventory_path)
    expected = public_names()
    missing = [name for name in expected if name not in documented]
    if missing:
        print(f"{len(missing)} public names are not documented:", file=sys.stderr)
        for name in missing:
            print(f"  {name}", file=sys.stderr)
        return 1
    print(f"all {len(expected)} public names are documented ({inventory_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
