"""Packaging: every room installs under `ponder`, imports go one way, `import ponder` is light."""

import ast
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
ROOMS = {"sdk": "ponder", "search": "ponder.search", "modalities": "ponder.modalities", "kernels": "ponder.kernels",
         "demos": "ponder.demos"}
# demos -> sdk -> modalities -> search -> kernels; ponder.errors (a leaf) may be imported by every room
ORDER = ["ponder.demos", "ponder", "ponder.modalities", "ponder.search", "ponder.kernels"]


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _package_of(folder: Path) -> str:
    rel = folder.relative_to(ROOT)
    return ".".join([ROOMS[rel.parts[0]], *rel.parts[1:]])


def test_every_room_is_mapped_by_package_dir():
    assert _pyproject()["package-dir"] == {v: k for k, v in ROOMS.items()}


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(_pyproject()["packages"])
    found = {_package_of(p.parent) for room in ROOMS for p in (ROOT / room).rglob("__init__.py")}
    assert found - listed == set(), f"package folders missing from pyproject packages: {found - listed}"
    assert listed - found == set(), f"pyproject lists packages with no folder: {listed - found}"


def _room(module: str) -> str:
    for room in sorted(ORDER, key=len, reverse=True):
        if module == room or module.startswith(room + "."):
            return room
    return ""


def test_imports_go_one_way():
    bad = []
    for folder, package in ROOMS.items():
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                for name in names:
                    if not name.startswith("ponder") or name == "ponder.errors":
                        continue
                    if folder == "kernels" and not name.startswith("ponder.kernels"):
                        bad.append(f"{path.relative_to(ROOT)} imports {name}")
                        continue
                    src, dst = ORDER.index(package), ORDER.index(_room(name))
                    if dst < src:
                        bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert bad == []


def test_import_ponder_is_light():
    code = ("import sys, ponder; heavy = [m for m in ('torch', 'transformers', 'diffusers', 'gradio', 'ray') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_api_is_reachable_from_ponder():
    import ponder

    assert callable(ponder.load) and callable(ponder.generate)
    assert issubclass(ponder.ConfigError, ponder.PonderError)
    assert issubclass(ponder.ModelLoadError, ponder.PonderError)
