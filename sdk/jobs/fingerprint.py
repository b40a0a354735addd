"""Weight fingerprints: resume re-renders an item whose model, draft or verifier weights changed.

Rule: an item's fingerprint is sha256 over the fingerprints of every folder its specs resolve to —
the model, a ``draft`` option, each verifier part — where a spec resolves when it is ``zoo:NAME`` (or
a bare zoo name, as ``--verifier prm``) with built weights, or a local folder. A folder's fingerprint
is sha256 over its files' relative paths and contents (every regular file, sorted), so replacing
weights under the same name changes it, and copying or touching the files does not. Specs that name
no folder (``exact``, ``self``) add nothing; an item with no folder at all has no fingerprint. The
data an item's options name — a guide's ``corpus`` or ``datastore``, the rag strategy's
``retriever`` index (a folder or a file) — counts too, so changed documents re-render the item.

Contents are hashed once per (path, size, mtime) and remembered in ``$PONDER_HOME/fingerprints.json``
(default ``~/.cache/ponder``), so a resumed job of large models does not re-read their weights.

The manifest records the fingerprint beside the config hash; a line written before fingerprints
existed (no ``weights`` key) still counts as done for the same config hash.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ponder.jobs.spec import Item
from ponder.jobs.state import read_state, write_state

_CACHE_NAME = "fingerprints.json"


def _file_digest(path: Path, cache: dict) -> str:
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    if key not in cache:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        cache[key] = digest.hexdigest()
    return cache[key]


def folder_fingerprint(folder: str | Path) -> str:
    """sha256 over `folder`'s files (relative paths and contents), hidden files and caches excluded."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(
        part.startswith(".") or part == "__pycache__" for part in p.relative_to(folder).parts))
    cache = read_state(_CACHE_NAME)
    before = dict(cache)
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(folder).as_posix()}\0{_file_digest(path, cache)}\n".encode())
    if cache != before:
        write_state(_CACHE_NAME, cache)
    return digest.hexdigest()


def spec_folder(spec: str) -> Path | None:
    """The folder a model / draft / verifier spec names: a local folder, or a built zoo entry."""
    from ponder import zoo
    from ponder.errors import ZooError

    if Path(spec).expanduser().is_dir():
        return Path(spec).expanduser()
    try:
        entry = zoo.entry(spec)
        return entry.weights() if entry.root is not None and entry.built else None
    except ZooError:
        return None


def item_specs(item: Item) -> list[str]:
    """The model, draft and verifier specs an item names."""
    specs = [item.model]
    draft = item.options.get("draft")
    if isinstance(draft, str):
        specs.append(draft)
    if item.verifier:
        from ponder.modalities import registry
        from ponder.request import verifier_parts

        specs += verifier_parts(registry.get(item.modality), item.verifier)
    return specs


DATA_OPTIONS = ("corpus", "datastore", "retriever")  # options naming data a render reads (guides, rag)


def _data_paths(item: Item) -> list[Path]:
    """The corpus / datastore / index paths an item's options name (a guide's or the rag strategy's)."""
    found = []
    for options in (item.options, item.options.get("guide_options") or {}):
        if not isinstance(options, dict):
            continue
        for name in DATA_OPTIONS:
            value = options.get(name)
            if isinstance(value, str) and Path(value).expanduser().exists():
                found.append(Path(value).expanduser())
    return found


def _path_fingerprint(path: Path) -> str:
    if path.is_dir():
        return folder_fingerprint(path)
    cache = read_state(_CACHE_NAME)
    before = dict(cache)
    digest = _file_digest(path, cache)
    if cache != before:
        write_state(_CACHE_NAME, cache)
    return digest


def item_fingerprint(item: Item, memo: dict[str, str] | None = None) -> str | None:
    """The item's weights fingerprint (see the module docstring), or None when no spec names a folder.

    memo: folder -> fingerprint, shared by the items of one job run so each folder is walked once."""
    memo = {} if memo is None else memo
    parts = []
    for spec in item_specs(item):
        folder = spec_folder(spec)
        if folder is None:
            continue
        key = str(folder.resolve())
        if key not in memo:
            memo[key] = folder_fingerprint(folder)
        parts.append(f"{spec}={memo[key]}")
    for path in _data_paths(item):  # the data a guide or rag reads: new documents re-render the item
        key = str(path.resolve())
        if key not in memo:
            memo[key] = _path_fingerprint(path)
        parts.append(f"data:{path}={memo[key]}")
    if not parts:
        return None
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


__all__ = ["folder_fingerprint", "item_fingerprint", "item_specs", "spec_folder"]
