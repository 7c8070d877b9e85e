"""The import arrows between the top-level packages point one way (docs/radius-bridge.md,
"Packages and layers").

``radius_vocabulary`` (what backend and bridge must agree on) imports only the standard
library; ``radius_bridge`` imports nothing from ``backend`` or ``webportal`` (it talks to the
backend over HTTP); ``backend/domain`` is pure: nothing from the bridge, the console or
Starlette. Read from the source with :mod:`ast`, so an import inside a function or under
``TYPE_CHECKING`` counts as much as one at the top.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path = ROOT) -> set[str]:
    """Every module ``path`` imports (absolute names; relative imports resolved against
    its package, ``path`` relative to ``root``)."""
    tree = ast.parse(path.read_text("utf-8"), str(path))
    package = _module_name(path, root).split(".")
    if path.name != "__init__.py":
        package.pop()
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.add(name)
            # ``from pkg import module`` imports pkg.module as well
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def imports_under(folder: str) -> dict[str, set[str]]:
    """Imports of every module under ``folder`` (relative to the repository root)."""
    return {
        path.relative_to(ROOT).as_posix(): imports_of(path)
        for path in sorted((ROOT / folder).rglob("*.py"))
    }


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def test_the_reader_sees_imports_of_every_kind(tmp_path: Path) -> None:
    """The checks below pass vacuously if the reader misses imports: it must see absolute,
    relative, nested and TYPE_CHECKING ones."""
    package = ROOT / "radius_bridge"
    assert "radius_vocabulary.settings" in imports_of(package / "model.py")
    assert "radius_vocabulary.dictionary" in imports_of(ROOT / "backend/domain/radius.py")
    module = tmp_path / "probe.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import backend.services\n"
        "def f():\n    from webportal import app\n"
    )
    assert {"backend.services", "webportal", "webportal.app"} <= imports_of(module, tmp_path)
    nested = tmp_path / "pkg" / "sub" / "mod.py"
    nested.parent.mkdir(parents=True)
    nested.write_text("from ..other import x\nfrom . import y\n")
    assert imports_of(nested, tmp_path) == {"pkg.other", "pkg.other.x", "pkg.sub", "pkg.sub.y"}


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("radius_bridge", {"backend", "webportal"}),
        ("backend/domain", {"radius_bridge", "webportal", "starlette"}),
    ],
)
def test_no_import_points_the_wrong_way(folder: str, forbidden: set[str]) -> None:
    wrong = {
        module: sorted(name for name in names if _top(name) in forbidden)
        for module, names in imports_under(folder).items()
    }
    assert {m: n for m, n in wrong.items() if n} == {}


def test_the_vocabulary_imports_only_the_standard_library() -> None:
    """Both sides import it, so it may import neither (nor webportal), and no third-party
    package a bridge-only install would lack."""
    allowed = set(sys.stdlib_module_names) | {"__future__", "radius_vocabulary"}
    found = imports_under("radius_vocabulary")
    assert found  # the package is where the test looks
    wrong = {m: sorted(n for n in names if _top(n) not in allowed) for m, names in found.items()}
    assert {m: n for m, n in wrong.items() if n} == {}
