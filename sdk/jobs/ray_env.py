"""What a Ray cluster's nodes get so that they need nothing installed by hand: ponder and its zoo
through Ray's runtime environment.

`runtime_env(items, ship)` builds the ``runtime_env`` the render actors start with:

- ``"code"``: the installed ponder as a wheel in ``py_modules`` — every room (``ponder``,
  ``ponder.search``, ``ponder.modalities``, ``ponder.kernels``, ``ponder.demos``) merged into one
  ``ponder/`` folder as the installed package lays them out, with only the zoo folders the job's
  items name (models, drafts, verifiers), and ponder's entry points (the modality registry reads
  them); Ray uploads it once, pip-installs it into each node's runtime folder, and puts that first on
  the workers' ``sys.path``. The wheel lists no requirements: nodes use their Python's own torch,
  transformers and the rest.
- ``"all"``: the same plus ponder's requirements as ``pip`` packages, which Ray installs into a
  virtual environment per node (once, then cached), for nodes with a bare Python.
- ``"none"``: nothing (nodes have ponder installed).

``"auto"`` (the default) is ``"all"`` for a cluster given by ``--address`` and ``"none"`` for a Ray
started on this machine, which already has everything. A model given as a local folder is not
shipped: it must be at the same path on every node (shared storage), as Ray's own docs advise for
data.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import shutil
from pathlib import Path

from ponder.errors import ConfigError
from ponder.jobs.fingerprint import item_specs, spec_folder
from ponder.jobs.spec import Item

SHIP_MODES = ("auto", "code", "all", "none")
# the rooms of the installed package, and where each sits inside the one ``ponder/`` folder
ROOMS = {"ponder": "", "ponder.search": "search", "ponder.modalities": "modalities", "ponder.kernels": "kernels",
         "ponder.demos": "demos"}


def ship_mode(ship: str, address: str | None) -> str:
    """The mode `ship` means for a run on `address` ("auto": all for a cluster address, else none)."""
    if ship not in SHIP_MODES:
        raise ConfigError(f"unknown ship mode {ship!r}; use one of {', '.join(SHIP_MODES)}")
    if ship == "auto":
        return "all" if address else "none"
    return ship


def check_can_ship(mode: str, ship: str, ray) -> None:
    """A ConfigError when `mode` ships files but this process joined Ray already (Ray takes a job's
    files only through its own ``ray.init``)."""
    if mode != "none" and ray.is_initialized():
        raise ConfigError(f"ship={ship!r} needs ponder to start the Ray connection (Ray uploads files only "
                          "through ray.init); this process joined Ray already: pass ship='none', or give "
                          "ray.init a runtime_env yourself")


def _room_folder(module: str) -> Path:
    return Path(importlib.import_module(module).__file__).resolve().parent


def stage_package(items: list[Item], into: Path) -> Path:
    """Copy the installed ponder, with only the zoo folders `items` name, into ``into/ponder``; return it."""
    target = into / "ponder"
    modalities = _room_folder("ponder.modalities")

    def skip(folder: str, names: list[str]) -> set[str]:
        """Caches, hidden files, and each modality's zoo folder (the job's own models are added after)."""
        zoo = {"zoo"} if Path(folder).resolve().parent == modalities else set()
        return {n for n in names if n == "__pycache__" or n.startswith(".") or n.endswith(".pyc") or n in zoo}

    for name, place in ROOMS.items():
        shutil.copytree(_room_folder(name), target / place if place else target, dirs_exist_ok=True, ignore=skip)
    for item in items:
        for spec in item_specs(item):
            folder = spec_folder(spec)
            if folder is not None and modalities in folder.resolve().parents:  # a zoo model: ships where ponder looks
                folder = folder.resolve()
                shutil.copytree(folder, target / "modalities" / folder.relative_to(modalities), dirs_exist_ok=True,
                                ignore=skip)
    return target


def build_wheel(items: list[Item], scratch: Path) -> Path:
    """`stage_package`'s folder as ``ponder-VERSION-py3-none-any.whl`` under `scratch` (with METADATA,
    WHEEL, entry_points.txt and RECORD, so ``pip install --target`` gives a folder Python and
    `importlib.metadata` both find)."""
    import base64
    import hashlib
    import zipfile

    stage = stage_package(items, scratch / "stage")
    dist = importlib.metadata.distribution("ponder")
    version = dist.version
    info = f"ponder-{version}.dist-info"
    points = "".join(f"[{group}]\n" + "".join(f"{p.name} = {p.value}\n" for p in dist.entry_points if p.group == group)
                     + "\n" for group in sorted({p.group for p in dist.entry_points}))
    extra = {f"{info}/METADATA": f"Metadata-Version: 2.1\nName: ponder\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: ponder.jobs.ray_env\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n",
             f"{info}/entry_points.txt": points}
    wheel = scratch / f"ponder-{version}-py3-none-any.whl"
    record = []

    def digest(data: bytes) -> str:
        return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    files = [(path.relative_to(stage.parent).as_posix(), path.read_bytes())
             for path in sorted(p for p in stage.rglob("*") if p.is_file())]
    files += [(name, text.encode()) for name, text in extra.items()]
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files:
            archive.writestr(name, data)
            record.append(f"{name},{digest(data)},{len(data)}")
        record.append(f"{info}/RECORD,,")
        archive.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return wheel


def requirements() -> list[str]:
    """ponder's own requirements (no extras), as pip lines."""
    from packaging.requirements import Requirement

    lines = []
    for line in importlib.metadata.requires("ponder") or []:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        lines.append(str(requirement))
    return lines


def runtime_env(items: list[Item], mode: str, scratch: Path) -> dict | None:
    """The actors' ``runtime_env`` for `mode` ("code", "all" or "none"), staging files under `scratch`."""
    if mode == "none":
        return None
    env: dict = {"py_modules": [str(build_wheel(items, scratch))]}
    if mode == "all":
        env["pip"] = requirements()
    return env


__all__ = ["SHIP_MODES", "build_wheel", "check_can_ship", "requirements", "runtime_env", "ship_mode", "stage_package"]
