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


def _setup_kwargs() -> dict:
    """What setup.py hands setuptools (run with `setup` captured, so nothing is built)."""
    import runpy
    from unittest import mock

    with mock.patch("setuptools.setup") as setup:
        runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    return setup.call_args.kwargs


def _package_of(folder: Path) -> str:
    rel = folder.relative_to(ROOT)
    return ".".join([ROOMS[rel.parts[0]], *rel.parts[1:]])


def test_every_room_is_mapped_by_package_dir():
    assert _setup_kwargs()["package_dir"] == {v: k for k, v in ROOMS.items()}


def test_every_package_folder_is_found_without_listing_it():
    kwargs = _setup_kwargs()
    listed = set(kwargs["packages"])
    found = {_package_of(p.parent) for room in ROOMS for p in (ROOT / room).rglob("__init__.py")}
    assert found == listed, f"found but not packaged: {found - listed}; packaged with no folder: {listed - found}"
    # every modality's zoo (weights, configs, cards; diffusers subfolders too) ships as package data
    for folder in (ROOT / "modalities").glob("*/zoo"):
        assert kwargs["package_data"][_package_of(folder.parent)] == ["zoo/**/*"]
    assert "packages" not in tomllib.loads((ROOT / "pyproject.toml").read_text()).get("tool", {}).get("setuptools", {})


def test_ponders_own_modalities_register_through_the_entry_point_group():
    from ponder.modalities import registry

    points = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][registry.ENTRY_POINT_GROUP]
    assert points == {"text": "ponder.modalities.text.spec:SPEC", "image": "ponder.modalities.image.spec:SPEC",
                      "music": "ponder.modalities.music.spec:SPEC"}
    assert {"text", "image", "music"} <= set(registry.names())


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
